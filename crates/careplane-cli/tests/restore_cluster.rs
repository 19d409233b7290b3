//! `careplane backup restore-cluster` end to end (issue 16, docs/design/0010
//! "Restoring a lost cluster"): the shared cluster of two tenants lost
//! (postmaster killed, data directory corrupt or gone) and brought back from
//! its base backup and archived WAL, to the end of the archive and to a
//! time between two inserts; a run killed midway and run again; refusals
//! that leave a healthy cluster untouched.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: alpha
spec:
  tenancy: shared
  environments:
    - name: production
      kind: production
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: beta
spec:
  tenancy: shared
  environments:
    - name: production
      kind: production
"#;

const CLUSTER: &str = "pg-cluster/shared";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn root(p: &Platform) -> PathBuf {
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let rec = store.resource(CLUSTER).unwrap().unwrap();
    PathBuf::from(rec.observed["root"].as_str().unwrap())
}

fn postmaster_pid(root: &Path) -> Option<i32> {
    std::fs::read_to_string(root.join("data/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn lost_dirs(root: &Path) -> Vec<String> {
    dir_names(root)
        .into_iter()
        .filter(|n| n.starts_with("data.lost-"))
        .collect()
}

/// A table of numbered rows in `tenant`/production, as the tenant.
fn insert(p: &Platform, tenant: &str, ids: &[i32]) {
    let mut c = tenant_client(p, tenant, "production");
    c.batch_execute("CREATE TABLE IF NOT EXISTS public.visits (id int PRIMARY KEY, note text)")
        .unwrap();
    for id in ids {
        c.execute(
            "INSERT INTO public.visits VALUES ($1, $2)",
            &[id, &format!("{tenant} visit {id}")],
        )
        .unwrap();
    }
}

fn ids(p: &Platform, tenant: &str) -> Vec<i32> {
    let mut c = tenant_client(p, tenant, "production");
    c.query("SELECT id FROM public.visits ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The server's clock as RFC 3339 (UTC, microseconds).
fn server_now(p: &Platform) -> String {
    admin_client(p, CLUSTER)
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Switches WAL and waits (bounded) until that segment is archived: what
/// was committed before is in the repository.
fn archive_now(p: &Platform) {
    let mut c = admin_client(p, CLUSTER);
    let want: String = c
        .query_one(
            "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())",
            &[],
        )
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let last: String = c
            .query_one(
                "SELECT coalesce(last_archived_wal, '') FROM pg_catalog.pg_stat_archiver",
                &[],
            )
            .unwrap()
            .get(0);
        if last >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{want} was not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster is lost: its postmaster killed (no shutdown checkpoint), its
/// backends gone, then its data directory corrupted (no `pg_control`: the
/// postmaster will not start) or moved out of careplane's sight.
fn lose_cluster(p: &Platform, remove: bool) {
    let root = root(p);
    let pid = postmaster_pid(&root).expect("a running postmaster");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let data = root.join("data");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_in(&data).is_empty() {
        assert!(
            Instant::now() < deadline,
            "backends of the killed postmaster"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if remove {
        std::fs::rename(&data, root.join("gone")).unwrap();
    } else {
        std::fs::remove_file(data.join("global/pg_control")).unwrap();
        // It is lost indeed: careplane cannot start it.
        let out = p.run(&["start"]);
        assert!(!out.status.success(), "{}", text(&out));
    }
}

/// A restore-cluster run's intent on the cluster's record, while unfinished.
fn intent(p: &Platform) -> Option<Value> {
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let rec = store.resource(CLUSTER).unwrap().unwrap();
    rec.observed.get("clusterRestore").cloned()
}

fn status_server(p: &Platform) -> Value {
    let s = p.json(&["status"]);
    s["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == CLUSTER)
        .unwrap()
        .clone()
}

#[test]
fn a_lost_shared_cluster_comes_back_with_every_archived_commit_and_keeps_the_lost_directory() {
    let p = Platform::new(TENANTS);
    p.ok(&["apply"]);
    insert(&p, "alpha", &[1, 2, 3]);
    insert(&p, "beta", &[10, 20]);
    p.ok(&["backup", "create", "alpha/production"]);
    insert(&p, "alpha", &[4, 5]);
    insert(&p, "beta", &[30]);
    archive_now(&p);
    let root = root(&p);
    lose_cluster(&p, false);

    let out = p.run(&[
        "backup",
        "restore-cluster",
        "shared",
        "--confirm",
        "shared",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("restore-cluster outcome: {r}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restoring base backup"),
        "progress on stderr: {}",
        text(&out)
    );
    assert_eq!(r["cluster"], CLUSTER);
    assert_eq!(r["target"], "end of archived WAL");
    assert!(r["recoveredTo"].is_string(), "{r}");
    assert!(r["durationMs"].as_u64().unwrap() > 0, "{r}");
    assert!(r["timeline"].as_u64().unwrap() >= 2, "promoted: {r}");

    // Both tenants, every row committed before the WAL was archived.
    assert_eq!(ids(&p, "alpha"), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&p, "beta"), vec![10, 20, 30]);

    // The lost directory is kept where the outcome says, as it was.
    let lost = PathBuf::from(r["lostDataDir"].as_str().unwrap());
    assert_eq!(lost.parent().unwrap(), root);
    assert_eq!(lost_dirs(&root).len(), 1);
    assert!(lost.join("PG_VERSION").exists());
    assert!(!lost.join("global/pg_control").exists());

    // Healthy, archiving again, the evidence recorded.
    let s = status_server(&p);
    assert_eq!(s["running"], true, "{s}");
    assert_eq!(s["archiving"]["ok"], true, "{s}");
    assert_eq!(s["lastRestore"]["recoveredTo"], r["recoveredTo"], "{s}");
    assert_eq!(s["lastRestore"]["lostDataDir"], r["lostDataDir"], "{s}");
    insert(&p, "beta", &[40]);
    archive_now(&p);
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());

    // A running cluster, with --force: from the same base backup, through
    // the first restore's new timeline, to its last archived commit.
    let said = p.ok(&[
        "backup",
        "restore-cluster",
        "shared",
        "--confirm",
        "shared",
        "--force",
    ]);
    assert!(
        said.starts_with("restored pg-cluster/shared from base backup")
            && said.contains("the replaced data directory is kept at"),
        "{said}"
    );
    let again = status_server(&p)["lastRestore"].clone();
    assert_ne!(again["started"], r["started"], "{again}");
    assert!(
        again["timeline"].as_u64().unwrap() > r["timeline"].as_u64().unwrap(),
        "{again}"
    );
    assert_eq!(again["clusterBackup"], r["clusterBackup"]);
    assert_eq!(ids(&p, "beta"), vec![10, 20, 30, 40]);
    assert_eq!(ids(&p, "alpha"), vec![1, 2, 3, 4, 5]);
    assert_eq!(lost_dirs(&root).len(), 2);
    let kept = PathBuf::from(again["lostDataDir"].as_str().unwrap());
    assert!(
        kept.join("global/pg_control").exists(),
        "the healthy one, whole"
    );
}

#[test]
fn restore_cluster_to_a_time_between_two_inserts_resumes_after_being_killed() {
    let p = Platform::new(TENANTS);
    p.ok(&["apply"]);
    insert(&p, "alpha", &[1]);
    p.ok(&["backup", "create", "alpha/production"]);
    insert(&p, "alpha", &[2]);
    insert(&p, "beta", &[20]);
    let t = server_now(&p);
    insert(&p, "alpha", &[3]);
    insert(&p, "beta", &[30]);
    archive_now(&p);
    let root = root(&p);
    lose_cluster(&p, true);

    let args = [
        "backup",
        "restore-cluster",
        "shared",
        "--to-time",
        &t,
        "--confirm",
        "shared",
    ];
    // A time after the last archived WAL (the cluster archives nothing
    // more): refused, nothing changed.
    let late = p.run(&[
        "backup",
        "restore-cluster",
        "shared",
        "--to-time",
        &careplane_backup::Timestamp::now().to_string(),
        "--confirm",
        "shared",
    ]);
    assert!(!late.status.success());
    assert!(
        text(&late).contains("after the last archived WAL"),
        "{}",
        text(&late)
    );
    assert!(!root.join("data").exists() && root.join("gone").exists());
    assert!(intent(&p).is_none());
    // Killed once the base backup's files are in place, before recovery.
    crash(&p, &args, "pg-cluster/shared@restore-cluster-files");
    assert!(root.join("data/PG_VERSION").exists());
    // Killed again once promoted: that run's server runs on a timeline of
    // its own and archives it; the next run must not follow it.
    crash(&p, &args, "pg-cluster/shared@restore-cluster-promoted");
    assert!(intent(&p).is_some(), "the intent survives for the next run");
    let mut json_args = args.to_vec();
    json_args.extend(["--output", "json"]);
    let r: Value = serde_json::from_str(&p.ok(&json_args)).unwrap();
    let at = |s: &str| s.parse::<careplane_backup::Timestamp>().unwrap();
    assert_eq!(at(r["target"].as_str().unwrap()), at(&t), "{r}");
    // No data directory was there to keep.
    assert!(r["lostDataDir"].is_null(), "{r}");
    assert!(lost_dirs(&root).is_empty());
    let recovered: String = r["recoveredTo"].as_str().unwrap().to_string();
    assert!(at(&recovered) <= at(&t), "{recovered} after {t}");

    assert_eq!(ids(&p, "alpha"), vec![1, 2]);
    assert_eq!(ids(&p, "beta"), vec![20]);
    let s = status_server(&p);
    assert_eq!(s["running"], true, "{s}");
    assert_eq!(s["archiving"]["ok"], true, "{s}");
}

#[test]
fn restore_cluster_refuses_and_changes_nothing() {
    let p = Platform::new(TENANTS);
    p.ok(&["apply"]);
    insert(&p, "alpha", &[1]);
    let root = root(&p);
    let refused = |args: &[&str], why: &str| {
        let pid = postmaster_pid(&root);
        let out = p.run(args);
        let all = text(&out);
        assert!(!out.status.success(), "{args:?} must be refused: {all}");
        assert!(all.contains(why), "{args:?}: expected {why:?} in:\n{all}");
        assert_eq!(postmaster_pid(&root), pid, "{args:?} touched the cluster");
        assert!(lost_dirs(&root).is_empty(), "{args:?} moved the data");
        assert_eq!(ids(&p, "alpha"), vec![1]);
    };
    let rc = |extra: &[&'static str]| {
        let mut a = vec!["backup", "restore-cluster", "shared"];
        a.extend_from_slice(extra);
        a
    };
    refused(
        &rc(&["--confirm", "shared", "--force"]),
        "holds no base backup",
    );
    p.ok(&["backup", "create", "alpha/production"]);
    refused(&rc(&["--confirm", "shared"]), "is running and answers");
    refused(&rc(&["--confirm", "alpha", "--force"]), "--confirm shared");
    refused(
        &rc(&[
            "--to-time",
            "2000-01-01T00:00:00Z",
            "--confirm",
            "shared",
            "--force",
        ]),
        "before the oldest base backup",
    );
    refused(
        &rc(&[
            "--to-time",
            "2999-01-01T00:00:00Z",
            "--confirm",
            "shared",
            "--force",
        ]),
        "in the future",
    );
    refused(
        &rc(&["--backup", "nosuchbackup", "--confirm", "shared", "--force"]),
        "is no base backup",
    );
    refused(
        &["backup", "restore-cluster", "nosuch", "--confirm", "nosuch"],
        "holds no cluster",
    );
    // Each refusal is one audit entry.
    let log = p.json(&["audit", "log"]);
    let refusals = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "backup.restore-cluster")
        .inspect(|e| assert_eq!(e["result"]["status"], "refused", "{e}"))
        .count();
    assert_eq!(refusals, 7, "{log}");
}

#[test]
fn the_environments_odoo_is_stopped_and_started_again_around_the_restore() {
    let tenants = TENANTS.replace(
        "  tenancy: shared\n",
        "  tenancy: shared\n  modules: [base]\n",
    );
    let p = Platform::with_odoo(&tenants);
    p.ok(&["apply"]);
    insert(&p, "alpha", &[1]);
    p.ok(&["backup", "create", "alpha/production"]);
    insert(&p, "alpha", &[2]);
    archive_now(&p);
    let odoo_pids = |p: &Platform| -> Vec<Value> {
        let s = p.json_allow_fail(&["status"]);
        s["environments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["odooProcesses"].clone())
            .collect()
    };
    let before = odoo_pids(&p);
    lose_cluster(&p, false);

    let r = p.json(&["backup", "restore-cluster", "shared", "--confirm", "shared"]);
    assert_eq!(
        r["environments"],
        serde_json::json!(["alpha/production", "beta/production"]),
        "{r}"
    );
    assert_eq!(ids(&p, "alpha"), vec![1, 2]);
    let s = p.json(&["status"]);
    for e in s["environments"].as_array().unwrap() {
        assert_eq!(e["pgHealth"]["ok"], true, "{e}");
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }
    assert_ne!(odoo_pids(&p), before, "Odoo was restarted");
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
}

/// A WAL object that fails its check stops the recovery (it must not end
/// there and promote, which would silently lose what follows): the command
/// fails naming it, the lost directory stays, and once the object is good
/// again the next run finishes with everything.
#[test]
fn a_restore_that_fails_midway_keeps_the_lost_directory_and_the_next_run_finishes() {
    let p = Platform::new(TENANTS);
    p.ok(&["apply"]);
    insert(&p, "alpha", &[1, 2]);
    p.ok(&["backup", "create", "alpha/production"]);
    insert(&p, "alpha", &[3]);
    archive_now(&p);
    let root = root(&p);
    lose_cluster(&p, false);

    let wal_dir = archived_wal_dir(&p, CLUSTER);
    // The newest segment: the one with row 3.
    let newest = dir_names(&wal_dir)
        .into_iter()
        .filter(|n| n.len() == 24)
        .max()
        .unwrap();
    let path = wal_dir.join(&newest);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();

    let args = ["backup", "restore-cluster", "shared", "--confirm", "shared"];
    let out = p.run(&args);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&newest), "{}", text(&out));
    let lost = lost_dirs(&root);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(root.join(&lost[0]).join("PG_VERSION").exists());
    assert!(postmaster_pid(&root).is_none_or(|pid| unsafe { libc::kill(pid, 0) } != 0));
    assert!(intent(&p).is_some(), "the intent survives for the next run");

    std::fs::write(&path, &good).unwrap();
    let mut json_args = args.to_vec();
    json_args.extend(["--output", "json"]);
    let r: Value = serde_json::from_str(&p.ok(&json_args)).unwrap();
    assert_eq!(
        r["lostDataDir"].as_str().unwrap(),
        root.join(&lost[0]).display().to_string()
    );
    assert_eq!(lost_dirs(&root), lost);
    assert_eq!(ids(&p, "alpha"), vec![1, 2, 3]);
}

//! Backups from the CLI (issue 16, docs/design/0010) on a small platform
//! with the Odoo stand-in: WAL archiving from the first apply, `backup
//! create|list|show|verify` with their JSON parsed and checked, a flipped
//! byte named by `verify`, archiving failures in `status`, and no secret in
//! any output or file.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: gamma
spec:
  tenancy: shared
  modules: [base]
  environments:
    - name: dev
      kind: dev
"#;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn server<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no server {id} in {status}"))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Every secret careplane keeps for backups, and the tenant's passwords.
fn secrets(p: &Platform) -> Vec<String> {
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let mut out = Vec::new();
    let cluster = store.resource("pg-cluster/shared").unwrap().unwrap();
    let cluster_owner = cluster.observed["archive"]["secretOwner"]
        .as_str()
        .expect("the cluster's repository secret owner")
        .to_string();
    for (owner, name) in [
        ("backup", "identity"),
        ("backup/tenant/gamma", "backup-secret"),
        (cluster_owner.as_str(), "backup-secret"),
        ("pg-cluster/shared", "admin-password"),
    ] {
        let s = store
            .secret(owner, name)
            .unwrap()
            .unwrap_or_else(|| panic!("vault has no {name} of {owner}"));
        out.push(careplane_local::ExposeSecret::expose_secret(&s).to_string());
    }
    let c = p.json(&["credentials", "gamma", "dev"]);
    out.push(c["postgres"]["password"].as_str().unwrap().to_string());
    out
}

#[test]
fn backups_are_made_listed_shown_verified_and_a_flipped_byte_is_named() {
    let p = Platform::with_odoo(TENANTS);
    let mut outputs = vec![p.ok(&["apply"])];

    // WAL archiving is on from the first apply, through the copy of
    // careplane the service user can run.
    let st = p.json(&["status"]);
    let arch = &server(&st, "pg-cluster/shared")["archiving"];
    assert_eq!(arch["enabled"], true, "{st}");
    assert_eq!(arch["ok"], true, "{st}");
    assert!(p.data_dir().join("bin/careplane").is_file());

    // Rows and a filestore file, written as the tenant would.
    let mut c = tenant_client(&p, "gamma", "dev");
    c.batch_execute(
        "CREATE TABLE public.visits (id serial PRIMARY KEY, note text NOT NULL);
         INSERT INTO public.visits (note) SELECT 'visit ' || i FROM generate_series(1, 50) i;",
    )
    .unwrap();
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let env = store.resource("odoo-env/gamma/dev").unwrap().unwrap();
    let db = store.resource("pg-database/gamma/dev").unwrap().unwrap();
    let database = db.props["database"].as_str().unwrap().to_string();
    let sha = "ab".to_string() + &"0".repeat(38);
    let fs = Path::new(env.observed["root"].as_str().unwrap())
        .join("data/filestore")
        .join(&database)
        .join("ab");
    std::fs::create_dir_all(&fs).unwrap();
    std::fs::write(fs.join(&sha), b"a scanned referral letter").unwrap();

    // create
    let out = p.run(&["backup", "create", "gamma/dev", "--output", "json"]);
    outputs.push(text(&out));
    assert!(out.status.success(), "{}", text(&out));
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["tenant"], "gamma");
    assert_eq!(b["environment"], "dev");
    assert_eq!(b["cluster"], "pg-cluster/shared");
    assert_eq!(b["reason"], "manual");
    assert!(b["clusterBackup"].is_string(), "{b}");
    assert!(
        b["repository"]
            .as_str()
            .unwrap()
            .ends_with("/backups/tenants/gamma"),
        "{b}"
    );

    // list (all, and of the environment)
    let l = p.json(&["backup", "list"]);
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l[0]["id"], id.as_str());
    let l = p.json(&["backup", "list", "gamma/dev"]);
    assert_eq!(l[0]["id"], id.as_str());
    outputs.push(p.ok(&["backup", "list"]));

    // show: the facts read as the tenant
    let d = p.json(&["backup", "show", &id]);
    let visits = d["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.visits")
        .unwrap_or_else(|| panic!("no public.visits in {d}"));
    assert_eq!(visits["rows"], 50, "{d}");
    assert_eq!(visits["checksum"].as_str().unwrap().len(), 32, "{d}");
    assert!(
        d["postgresVersion"].as_str().unwrap().starts_with("1"),
        "{d}"
    );
    assert!(
        d["modules"].as_array().unwrap().iter().any(|m| m == "base"),
        "{d}"
    );
    let on_disk = files_under(fs.parent().unwrap()).len();
    assert!(on_disk >= 1);
    assert_eq!(d["filestoreFiles"], on_disk, "{d}");
    outputs.push(p.ok(&["backup", "show", &id]));

    // verify, shallow and deep
    let v = p.json(&["backup", "verify", &id]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["objects"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["clusterBackup"], b["clusterBackup"]);
    assert!(v["clusterObjects"].as_u64().unwrap() > 10, "{v}");
    let v = p.json(&["backup", "verify", &id, "--deep"]);
    assert_eq!(v["deep"], true, "{v}");

    // A second backup takes the cluster's unchanged files from the first.
    let b2 = p.json(&["backup", "create", "gamma/dev"]);
    assert_ne!(b2["clusterBackup"], b["clusterBackup"]);

    // status: last backup and recovery point per environment
    let st = p.json(&["status"]);
    let e = &st["environments"][0];
    assert_eq!(e["lastBackup"]["id"], b2["id"], "{st}");
    assert!(e["recoveryPoint"].is_string(), "{st}");
    outputs.push(p.ok(&["status"]));

    // Every backup operation is in the audit log.
    let audit = p.json(&["audit", "log", "--tenant", "gamma"]).to_string();
    for action in [
        "backup.create",
        "backup.list",
        "backup.show",
        "backup.verify",
    ] {
        assert!(audit.contains(action), "{action} not audited: {audit}");
    }

    // A flipped byte in a stored object of the tenant's repository: verify
    // fails, naming the backup and the object.
    let repo = p.data_dir().join("backups/tenants/gamma");
    let chunk = files_under(&repo.join("chunks"))
        .into_iter()
        .next()
        .expect("a stored chunk");
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&chunk, bytes).unwrap();
    let object = chunk.file_name().unwrap().to_string_lossy().to_string();
    let out = p.run(&["backup", "verify", &id, "--output", "json"]);
    outputs.push(text(&out));
    assert!(!out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains(&id), "{err}");
    let stem = object.split('.').next().unwrap();
    assert!(
        err.contains(stem),
        "the error names no object {stem}: {err}"
    );
    let out = p.run(&["backup", "verify", "no-such-backup"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no-such-backup"), "{}", text(&out));

    // No secret in any output, nor in clear in any file.
    let secrets = secrets(&p);
    for o in &outputs {
        for s in &secrets {
            assert!(!o.contains(s.as_str()), "a secret in output:\n{o}");
        }
    }
    for f in files_under(&p.data_dir()) {
        let data = std::fs::read(&f).unwrap_or_default();
        for s in &secrets {
            assert!(
                !data.windows(s.len()).any(|w| w == s.as_bytes()),
                "a secret in clear in {}",
                f.display()
            );
        }
    }

    // A filestore the tenant replaced with a symlink (to a directory root
    // can read and the tenant cannot) is refused, never followed.
    let secret_dir = p.dir.path().join("root-only");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("shadow"), b"root's").unwrap();
    let filestore = fs.parent().unwrap().to_path_buf();
    std::fs::rename(&filestore, filestore.with_extension("moved")).unwrap();
    std::os::unix::fs::symlink(&secret_dir, &filestore).unwrap();
    let out = p.run(&["backup", "create", "gamma/dev"]);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&format!("filestore/{database}")), "{t}");
    assert!(t.contains("symlink"), "{t}");
}

#[test]
fn a_failing_archive_command_shows_in_status() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);
    // The archiver cannot read its keys any more.
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let cluster = store.resource("pg-cluster/shared").unwrap().unwrap();
    let keys = PathBuf::from(cluster.observed["archive"]["keysFile"].as_str().unwrap());
    std::fs::write(&keys, "{}").unwrap();
    let mut c = admin_client(&p, "pg-cluster/shared");
    c.batch_execute(
        "CREATE TABLE public.churn (); DROP TABLE public.churn; SELECT pg_switch_wal();",
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = p.json_allow_fail(&["status"]);
        let a = &server(&st, "pg-cluster/shared")["archiving"];
        if a["failedCount"].as_i64().unwrap_or(0) > 0 {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "no archiving failure in status after 60 s: {st}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let a = &server(&st, "pg-cluster/shared")["archiving"];
    assert_eq!(a["ok"], false, "{st}");
    assert!(a["lastFailedWal"].is_string(), "{st}");
    let out = p.run(&["status"]);
    assert!(
        !out.status.success(),
        "status exits 0 while archiving fails"
    );
    let t = text(&out);
    assert!(t.contains("FAILING"), "{t}");
    assert!(t.contains(a["lastFailedWal"].as_str().unwrap()), "{t}");
}

/// A cluster made before WAL archiving (no `observed.archive`, no archive
/// settings, restarted that way) is drift: the plan says why, and apply
/// turns archiving on, restarting the cluster once.
#[test]
fn a_cluster_made_before_archiving_gets_it_at_the_next_apply() {
    let p = Platform::new(TENANTS);
    p.ok(&["apply"]);
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let mut rec = store.resource("pg-cluster/shared").unwrap().unwrap();
    rec.observed.as_object_mut().unwrap().remove("archive");
    store.put_resource(&rec).unwrap();
    drop(store);
    let conf = Path::new(rec.observed["root"].as_str().unwrap()).join("conf/careplane.conf");
    let old: String = std::fs::read_to_string(&conf)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("archive_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf, old).unwrap();
    p.ok(&["stop"]);
    p.ok(&["start"]);
    let st = p.json_allow_fail(&["status"]);
    assert_eq!(
        server(&st, "pg-cluster/shared")["archiving"]["enabled"],
        false,
        "{st}"
    );

    let plan = p.plan();
    let a = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "pg-cluster/shared")
        .unwrap_or_else(|| panic!("no update of the cluster in {plan}"));
    assert!(plan.to_string().contains("does not archive its WAL"), "{a}");
    p.ok(&["apply"]);
    let st = p.json(&["status"]);
    let arch = &server(&st, "pg-cluster/shared")["archiving"];
    assert_eq!(arch["enabled"], true, "{st}");
    assert_eq!(arch["ok"], true, "{st}");
    assert_eq!(p.plan()["actions"].as_array().map(Vec::len), Some(0));
    // And it backs up on its policy's schedule: `run-due` makes what is due.
    let file = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "  supportHours: business-hours",
        "  supportHours: business-hours\n  backupPolicy: minutely",
    );
    std::fs::write(&file, text).unwrap();
    std::fs::write(
        p.specs.join("policy.yaml"),
        "apiVersion: careplane.dev/v1alpha1\nkind: BackupPolicy\nmetadata:\n  name: minutely\n\
         spec:\n  schedule: \"* * * * *\"\n  keepLast: 1\n  pitrWindow: 0s\n",
    )
    .unwrap();
    let r = p.json(&["backup", "run-due"]);
    assert_eq!(r["created"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["created"][0]["reason"], "schedule", "{r}");
    assert_eq!(r["failures"].as_array().unwrap().len(), 0, "{r}");
    // A manual backup now; prune keeps the newest one only (keepLast 1,
    // no PITR window) and the cluster base backup it needs.
    let b = p.json(&["backup", "create", "gamma/dev"]);
    let pr = p.json(&["backup", "prune"]);
    let tenant = &pr["repositories"][0];
    assert_eq!(tenant["kept"], serde_json::json!([b["id"]]), "{pr}");
    assert_eq!(tenant["deleted"].as_array().unwrap().len(), 1, "{pr}");
    let l = p.json(&["backup", "list"]);
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    p.json(&["backup", "verify", b["id"].as_str().unwrap(), "--deep"]);

    // A destroy that drops the environment's data backs it up first.
    let mut c = tenant_client(&p, "gamma", "dev");
    c.batch_execute("CREATE TABLE public.notes (t text); INSERT INTO public.notes VALUES ('x');")
        .unwrap();
    drop(c);
    p.ok(&["destroy", "--tenant", "gamma", "--delete-data"]);
    let l = p.json(&["backup", "list", "gamma/dev"]);
    let last = l.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "final", "{l}");
    let d = p.json(&["backup", "show", last["id"].as_str().unwrap()]);
    assert!(d.to_string().contains("public.notes"), "{d}");
}

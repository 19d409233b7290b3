//! `careplane backup restore` end to end (issue 16, docs/design/0011) on a
//! shared cluster of two tenants with the Odoo stand-in: one environment
//! back to a point in time while the other tenant's data and open
//! connection are untouched, its filestore back to the files referenced
//! then, refusals that change nothing, and a restore into another
//! environment with a kept pre-restore database that `destroy` drops.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: alpha
spec:
  tenancy: shared
  modules: [base]
  environments:
    - name: production
      kind: production
    - name: staging
      kind: staging
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: beta
spec:
  tenancy: shared
  modules: [base]
  environments:
    - name: production
      kind: production
"#;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Rows and md5 of the rows' text in order, of the tables the tests write
/// (the stand-in writes its own probe and cron tables all the time).
fn checksums(c: &mut careplane_local::postgres::Client) -> BTreeMap<String, (i64, String)> {
    let mut out = BTreeMap::new();
    for name in ["visits", "ir_attachment"] {
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') \
                     FROM public.{name} AS x"
                ),
                &[],
            )
            .unwrap();
        out.insert(name.to_string(), (row.get(0), row.get(1)));
    }
    out
}

/// The server's clock as RFC 3339 (UTC, microseconds).
fn server_now(c: &mut careplane_local::postgres::Client) -> String {
    c.query_one(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        &[],
    )
    .unwrap()
    .get(0)
}

struct Env {
    database: String,
    root: PathBuf,
}

fn env(p: &Platform, tenant: &str, environment: &str) -> Env {
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let db = store
        .resource(&format!("pg-database/{tenant}/{environment}"))
        .unwrap()
        .unwrap();
    let odoo = store
        .resource(&format!("odoo-env/{tenant}/{environment}"))
        .unwrap()
        .unwrap();
    Env {
        database: db.props["database"].as_str().unwrap().to_string(),
        root: PathBuf::from(odoo.observed["root"].as_str().unwrap()),
    }
}

impl Env {
    fn filestore(&self) -> PathBuf {
        self.root.join("data/filestore").join(&self.database)
    }
}

/// Every stored attachment file name of the environment's database.
fn attachments(c: &mut careplane_local::postgres::Client) -> Vec<String> {
    c.query(
        "SELECT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Stores `content` the way Odoo does (named by its SHA-1 under the
/// filestore) and references it from `ir_attachment`, as the tenant.
fn attach(
    c: &mut careplane_local::postgres::Client,
    fs: &Path,
    name: &str,
    content: &str,
) -> String {
    let sha: String = c
        .query_one(
            "SELECT encode(sha256($1::bytea), 'hex')",
            &[&content.as_bytes()],
        )
        .unwrap()
        .get::<_, String>(0)[..40]
        .to_string();
    let fname = format!("{}/{sha}", &sha[..2]);
    std::fs::create_dir_all(fs.join(&sha[..2])).unwrap();
    std::fs::write(fs.join(&fname), content).unwrap();
    c.execute(
        "INSERT INTO ir_attachment (name, res_model, store_fname, file_size) VALUES ($1, 'res.partner', $2, $3)",
        &[&name, &fname, &(content.len() as i32)],
    )
    .unwrap();
    fname
}

/// Whether `/web/session/authenticate` on the environment of `creds` (`careplane
/// credentials` JSON) accepts `login`/`password`.
fn odoo_login_ok(creds: &Value, login: &str, password: &str) -> bool {
    use std::io::{Read, Write};
    let port: u16 = creds["odoo"]["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let body = serde_json::json!({"jsonrpc": "2.0", "method": "call", "id": 1, "params": {
        "db": creds["postgres"]["database"], "login": login, "password": password}})
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "POST /web/session/authenticate HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let v: Value = serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
    v["result"]["uid"].as_i64().is_some_and(|u| u > 0)
}

fn status_env<'a>(st: &'a Value, tenant: &str, environment: &str) -> &'a Value {
    st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tenant"] == tenant && e["environment"] == environment)
        .unwrap_or_else(|| panic!("no {tenant}/{environment} in {st}"))
}

fn cluster_databases(p: &Platform) -> Vec<String> {
    admin_client(p, "pg-cluster/shared")
        .query("SELECT datname::text FROM pg_database ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn one_tenant_goes_back_to_a_point_in_time_while_the_other_is_untouched() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);
    let a = env(&p, "alpha", "production");
    let mut ca = tenant_client(&p, "alpha", "production");
    ca.batch_execute(
        "CREATE TABLE public.visits (id integer PRIMARY KEY, note text NOT NULL);
         INSERT INTO public.visits SELECT i, 'visit ' || i FROM generate_series(1, 20) i;",
    )
    .unwrap();
    let before_backup = server_now(&mut ca);
    // In the backup's filestore, deleted after T: the restore brings it back.
    let in_backup = attach(&mut ca, &a.filestore(), "referral.pdf", "a referral letter");
    p.ok(&["backup", "create", "alpha/production"]);

    // After the backup, before T: only the live filestore has this file.
    let after_backup = attach(&mut ca, &a.filestore(), "lab.pdf", "a lab result");
    ca.batch_execute(
        "INSERT INTO public.visits SELECT i, 'visit ' || i FROM generate_series(21, 30) i",
    )
    .unwrap();
    let at_t = checksums(&mut ca);
    let files_at_t = attachments(&mut ca);
    let t = server_now(&mut ca);

    // After T: more rows, a deletion, an attachment gone with its file.
    ca.batch_execute(
        "INSERT INTO public.visits SELECT i, 'visit ' || i FROM generate_series(31, 40) i;
         DELETE FROM public.visits WHERE id <= 5;
         UPDATE public.visits SET note = 'changed' WHERE id = 10;",
    )
    .unwrap();
    ca.execute(
        "DELETE FROM ir_attachment WHERE store_fname = $1",
        &[&in_backup],
    )
    .unwrap();
    std::fs::remove_file(a.filestore().join(&in_backup)).unwrap();
    let changed = checksums(&mut ca);
    assert_ne!(changed, at_t);
    drop(ca);

    // The other tenant: data, and a connection held open across the restore.
    let mut cb = tenant_client(&p, "beta", "production");
    cb.batch_execute(
        "CREATE TABLE public.visits (id integer PRIMARY KEY, note text NOT NULL);
         INSERT INTO public.visits SELECT i, 'beta ' || i FROM generate_series(1, 15) i;",
    )
    .unwrap();
    let beta_before = checksums(&mut cb);
    let beta_pid: i32 = cb.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);

    // Refused before anything changes: a time before the oldest backup,
    // one in the future, a time that is no time, another tenant's env.
    let dbs_before = cluster_databases(&p);
    for (args, says) in [
        (
            vec!["--to-time", before_backup.as_str()],
            "before the oldest backup",
        ),
        (vec!["--to-time", "2999-01-01T00:00:00Z"], "in the future"),
        (vec!["--to-time", "yesterday"], "not an RFC 3339 time"),
        (
            vec!["--to-time", t.as_str(), "--as", "beta/production"],
            "stays within its tenant",
        ),
    ] {
        let mut full = vec!["backup", "restore", "alpha/production"];
        full.extend(args);
        let out = p.run(&full);
        assert!(!out.status.success(), "{full:?} succeeded:\n{}", text(&out));
        assert!(text(&out).contains(says), "{full:?}: {}", text(&out));
        assert!(text(&out).contains("nothing was changed"), "{}", text(&out));
    }
    let mut ca = tenant_client(&p, "alpha", "production");
    assert_eq!(
        checksums(&mut ca),
        changed,
        "a refused restore changed data"
    );
    drop(ca);
    assert_eq!(cluster_databases(&p), dbs_before);
    let st = p.json(&["status"]);
    assert_eq!(
        status_env(&st, "alpha", "production")["odooHealth"]["ok"],
        true,
        "{st}"
    );

    // The restore.
    let out = p.run(&[
        "backup",
        "restore",
        "alpha/production",
        "--to-time",
        &t,
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "restore failed:\n{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // No secret in what it printed, nor careplane's identity (which
    // decrypts every repository) in any file it left.
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let identity = store.secret("backup", "identity").unwrap().unwrap();
    let identity = careplane_local::ExposeSecret::expose_secret(&identity).to_string();
    drop(store);
    for (t, e) in [("alpha", "production"), ("beta", "production")] {
        let c = p.json(&["credentials", t, e]);
        let pw = c["postgres"]["password"].as_str().unwrap();
        assert!(!text(&out).contains(pw), "a password in the output");
    }
    assert!(!text(&out).contains(&identity));
    let mut stack = vec![p.data_dir()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                let data = std::fs::read(entry.path()).unwrap_or_default();
                // std's (optimised) substring search: the data dir holds
                // the clusters' files too.
                assert!(
                    !String::from_utf8_lossy(&data).contains(identity.as_str()),
                    "careplane's identity in clear in {}",
                    entry.path().display()
                );
            }
        }
    }
    assert_eq!(r["intoTenant"], "alpha", "{r}");
    assert_eq!(r["database"], a.database.as_str(), "{r}");
    let recovered = r["recoveredTo"].as_str().expect("a recovered point");
    assert!(
        recovered <= t.as_str(),
        "recovered to {recovered}, after T {t}"
    );
    assert!(r["durationMs"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["rto"], "4h", "{r}");
    assert!(r["rtoMet"].is_boolean(), "{r}");
    assert_eq!(r["preRestoreDatabase"], Value::Null, "{r}");
    assert_eq!(r["filestoreMissing"], serde_json::json!([]), "{r}");

    // Exactly the rows of T; the files referenced then are there.
    let mut ca = tenant_client(&p, "alpha", "production");
    let restored = checksums(&mut ca);
    assert_eq!(restored, at_t, "alpha is not at T");
    assert_eq!(attachments(&mut ca), files_at_t);
    for f in [&in_backup, &after_backup] {
        assert!(a.filestore().join(f).is_file(), "attachment {f} is missing");
    }
    assert_eq!(
        std::fs::read_to_string(a.filestore().join(&in_backup)).unwrap(),
        "a referral letter"
    );

    // beta: same data, same session, still usable.
    let pid: i32 = cb.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    assert_eq!(pid, beta_pid);
    assert_eq!(checksums(&mut cb), beta_before, "beta changed");
    cb.execute("INSERT INTO public.visits VALUES (16, 'after')", &[])
        .unwrap();

    // alpha's Odoo answers; the restore is evidence in status; no
    // leftover databases; nothing for apply to do; audited.
    let st = p.json(&["status"]);
    let e = status_env(&st, "alpha", "production");
    assert_eq!(e["odooHealth"]["ok"], true, "{st}");
    let ts = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    assert_eq!(
        ts(&e["lastRestore"]["target"]),
        ts(&Value::from(t.as_str())),
        "{st}"
    );
    assert_eq!(e["lastRestore"]["recoveredTo"], recovered, "{st}");
    assert_eq!(e["preRestoreDatabases"], serde_json::json!([]), "{st}");
    assert_eq!(
        status_env(&st, "beta", "production")["lastRestore"],
        Value::Null
    );
    let dbs = cluster_databases(&p);
    assert!(
        !dbs.iter()
            .any(|d| d.contains("_restoring_") || d.contains("_pre_restore_")),
        "{dbs:?}"
    );
    assert!(!p.data_dir().join("restore").join(&a.database).exists());
    assert!(
        std::fs::read_dir(p.data_dir().join("restore"))
            .unwrap()
            .next()
            .is_none(),
        "the restore's keys file or scratch directory was left"
    );
    assert_eq!(action_ids(&p.plan()), Vec::<String>::new());
    let audit = p.json(&["audit", "log", "--tenant", "alpha"]).to_string();
    assert!(audit.contains("backup.restore"), "{audit}");
    // A pre-restore backup holds what was replaced.
    let l = p.json(&["backup", "list", "alpha/production"]);
    assert!(
        l.as_array()
            .unwrap()
            .iter()
            .any(|b| b["reason"] == "pre-restore"),
        "{l}"
    );
}

#[test]
fn a_restore_into_another_environment_keeps_what_it_replaced_until_destroy() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);
    let mut ca = tenant_client(&p, "alpha", "production");
    ca.batch_execute(
        "CREATE TABLE public.visits (id integer PRIMARY KEY, note text NOT NULL);
         INSERT INTO public.visits SELECT i, 'visit ' || i FROM generate_series(1, 25) i;",
    )
    .unwrap();
    let b = p.json(&["backup", "create", "alpha/production"]);
    let at_backup = checksums(&mut ca);
    let uuid = |c: &mut careplane_local::postgres::Client| -> String {
        c.query_one(
            "SELECT value FROM ir_config_parameter WHERE key = 'database.uuid'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let prod_uuid = uuid(&mut ca);
    ca.batch_execute("DELETE FROM public.visits WHERE id > 10")
        .unwrap();
    let prod_now = checksums(&mut ca);
    drop(ca);

    // A restore killed with production's Odoo stopped, before the swap:
    // production's data is untouched, apply brings its Odoo back, and the
    // next restore drops the half-made database.
    crash(
        &p,
        &[
            "backup",
            "restore",
            "alpha/production",
            "--backup",
            b["id"].as_str().unwrap(),
        ],
        "odoo-env/alpha/production@restore-stopped",
    );
    assert!(
        cluster_databases(&p)
            .iter()
            .any(|d| d.contains("_restoring_")),
        "{:?}",
        cluster_databases(&p)
    );
    p.ok(&["apply"]);
    let st = p.json(&["status"]);
    assert_eq!(
        status_env(&st, "alpha", "production")["odooHealth"]["ok"],
        true,
        "{st}"
    );
    let mut ca = tenant_client(&p, "alpha", "production");
    assert_eq!(checksums(&mut ca), prod_now);
    drop(ca);

    let r = p.json(&[
        "backup",
        "restore",
        "alpha/production",
        "--backup",
        b["id"].as_str().unwrap(),
        "--as",
        "alpha/staging",
        "--keep-pre-restore",
    ]);
    assert_eq!(r["intoEnvironment"], "staging", "{r}");
    assert_eq!(r["newIdentity"], true, "{r}");
    let kept = r["preRestoreDatabase"]
        .as_str()
        .expect("a kept database")
        .to_string();
    let staging = env(&p, "alpha", "staging");
    assert!(
        kept.starts_with(&format!("{}_pre_restore_", staging.database)),
        "{kept}"
    );

    // staging holds production's rows of the backup, with its own identity;
    // production is as it was.
    let mut cs = tenant_client(&p, "alpha", "staging");
    assert_eq!(checksums(&mut cs), at_backup);
    assert_ne!(
        uuid(&mut cs),
        prod_uuid,
        "the copy shares production's identity"
    );
    drop(cs);
    let mut ca = tenant_client(&p, "alpha", "production");
    assert_eq!(checksums(&mut ca), prod_now);
    drop(ca);

    // The copy's probe user (production's, from the backup) answers to staging's password:
    // the restore reset it, so staging's journeys still log in.
    let creds = p.json(&["credentials", "alpha", "staging"]);
    let probe = creds["odoo"]["probe"]["password"].as_str().unwrap();
    let prod_probe = p.json(&["credentials", "alpha", "production"])["odoo"]["probe"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(probe, prod_probe);
    assert!(
        odoo_login_ok(&creds, "careplane-probe", probe),
        "staging's probe user refuses staging's password"
    );
    assert!(
        !odoo_login_ok(&creds, "careplane-probe", &prod_probe),
        "staging's probe user still has production's password"
    );

    let st = p.json(&["status"]);
    let e = status_env(&st, "alpha", "staging");
    assert_eq!(e["odooHealth"]["ok"], true, "{st}");
    assert_eq!(e["preRestoreDatabases"], serde_json::json!([kept]), "{st}");
    assert_eq!(e["lastRestore"]["from"], "alpha/production", "{st}");
    let dbs = cluster_databases(&p);
    assert!(dbs.contains(&kept));
    assert!(!dbs.iter().any(|d| d.contains("_restoring_")), "{dbs:?}");
    assert_eq!(action_ids(&p.plan()), Vec::<String>::new());

    // Every archived WAL object with a flipped byte: the scratch recovery
    // stops naming the WAL file, and production is as it was.
    let wal_dir = archived_wal_dir(&p, "pg-cluster/shared");
    let mut originals = Vec::new();
    for e in std::fs::read_dir(&wal_dir).unwrap().flatten() {
        let data = std::fs::read(e.path()).unwrap();
        let mut bad = data.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        std::fs::write(e.path(), bad).unwrap();
        originals.push((e.path(), data));
    }
    let mut ca = tenant_client(&p, "alpha", "production");
    let t = server_now(&mut ca);
    drop(ca);
    let out = p.run(&["backup", "restore", "alpha/production", "--to-time", &t]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("restoring WAL file"), "{}", text(&out));
    let mut ca = tenant_client(&p, "alpha", "production");
    assert_eq!(checksums(&mut ca), prod_now);
    drop(ca);
    let st = p.json(&["status"]);
    assert_eq!(
        status_env(&st, "alpha", "production")["odooHealth"]["ok"],
        true,
        "{st}"
    );
    let dbs = cluster_databases(&p);
    assert!(!dbs.iter().any(|d| d.contains("_restoring_")), "{dbs:?}");
    assert_eq!(
        dir_names(&p.data_dir().join("restore")),
        Vec::<String>::new()
    );
    let audit = p.json(&["audit", "log", "--tenant", "alpha"]);
    let last = audit
        .as_array()
        .unwrap()
        .iter()
        .rfind(|e| e["action"] == "backup.restore")
        .cloned()
        .unwrap_or_else(|| panic!("no backup.restore in {audit}"));
    assert_eq!(last["result"]["status"], "failed", "{last}");
    for (path, data) in originals {
        std::fs::write(path, data).unwrap();
    }

    // Killed once more, after the swap, before Odoo started again: destroy
    // still drops every database the restores made or kept.
    crash(
        &p,
        &[
            "backup",
            "restore",
            "alpha/production",
            "--to-time",
            r["finished"].as_str().unwrap(),
            "--as",
            "alpha/staging",
        ],
        "odoo-env/alpha/staging@restore-swapped",
    );
    let dbs = cluster_databases(&p);
    let pre: Vec<&String> = dbs.iter().filter(|d| d.contains("_pre_restore_")).collect();
    assert_eq!(pre.len(), 2, "{dbs:?}");
    p.ok(&[
        "destroy",
        "--tenant",
        "alpha",
        "--delete-data",
        "--no-final-backup",
        "--confirm",
        "alpha",
    ]);
    let dbs = cluster_databases(&p);
    assert!(
        !dbs.iter().any(|d| d.starts_with("alpha")),
        "alpha's databases survived destroy: {dbs:?}"
    );
}

const ONE_TENANT: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: alpha
spec:
  tenancy: shared
  modules: [base]
  environments:
    - name: production
      kind: production
"#;

/// Odoo's name for a file: `<2 hex>/<SHA-1 of the content>`.
fn odoo_name(content: &[u8]) -> String {
    use sha1::Digest;
    let sha: String = sha1::Sha1::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}/{sha}", &sha[..2])
}

/// References `fname` from `ir_attachment`, as the tenant.
fn reference(c: &mut careplane_local::postgres::Client, name: &str, fname: &str) {
    c.execute(
        "INSERT INTO ir_attachment (name, res_model, store_fname, file_size) VALUES ($1, 'res.partner', $2, 0)",
        &[&name, &fname],
    )
    .unwrap();
}

/// Every path below `dir` (relative) and whether any file's bytes contain `needle`.
fn tree(dir: &Path, needle: &[u8]) -> (Vec<String>, bool) {
    let (mut names, mut found) = (Vec::new(), false);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            names.push(path.strip_prefix(dir).unwrap().display().to_string());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let data = std::fs::read(&path).unwrap();
                found |= data.windows(needle.len()).any(|w| w == needle);
            }
        }
    }
    (names, found)
}

/// Issue 16's "filestore to the same instant": a file added after the
/// backup is shipped, deleted with its attachment, and a restore to a time
/// when it was referenced brings it back from the shipment. A symlink the
/// tenant planted is never followed: not shipped, not restored, reported.
#[test]
fn a_file_added_after_the_backup_and_deleted_before_the_restore_comes_back_from_a_shipment() {
    let p = Platform::with_odoo(ONE_TENANT);
    p.ok(&["apply"]);
    let a = env(&p, "alpha", "production");
    let ship = |p: &Platform| -> Value {
        let s = p.json(&["backup", "ship-filestore", "alpha/production"]);
        assert_eq!(s["failures"], serde_json::json!([]), "{s}");
        s["shipments"][0].clone()
    };
    // Before the first backup there is nothing to add to.
    let s = ship(&p);
    assert!(s["note"].as_str().unwrap().contains("no backup yet"), "{s}");
    let repo = p.data_dir().join("backups/tenants/alpha");
    assert!(!repo.exists(), "shipping alone made a repository");
    let b = p.json(&["backup", "create", "alpha/production"]);
    // Right after it, at most what its file state left out (written in the
    // 2 s before its walk: the stand-in's own files) is shipped once more;
    // then nothing.
    ship(&p);
    let s = ship(&p);
    assert_eq!(
        (s["files"].as_u64(), &s["id"]),
        (Some(0), &Value::Null),
        "{s}"
    );

    // After the backup: a scanned form, a file still being written (its
    // content is not yet what its name says), and a link the tenant planted
    // to a file of root's outside its filestore, named like Odoo's.
    let mut ca = tenant_client(&p, "alpha", "production");
    let scan = b"a scanned consent form, page 1 of 1".to_vec();
    let fname = odoo_name(&scan);
    std::fs::create_dir_all(a.filestore().join(&fname[..2])).unwrap();
    std::fs::write(a.filestore().join(&fname), &scan).unwrap();
    reference(&mut ca, "consent.pdf", &fname);
    let partial = odoo_name(b"a lab report, complete");
    std::fs::create_dir_all(a.filestore().join(&partial[..2])).unwrap();
    std::fs::write(a.filestore().join(&partial), b"a lab rep").unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = b"root's own file, not the tenant's";
    std::fs::write(outside.path().join("secret"), secret).unwrap();
    let link = odoo_name(secret);
    std::fs::create_dir_all(a.filestore().join(&link[..2])).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), a.filestore().join(&link)).unwrap();
    reference(&mut ca, "planted.pdf", &link);

    // Killed after the chunks, before the record: no shipment exists.
    crash(
        &p,
        &["backup", "ship-filestore", "alpha/production"],
        "odoo-env/alpha/production@ship-uploaded",
    );
    let s = ship(&p);
    assert_eq!(s["files"], 1, "{s}");
    assert_eq!(s["bytes"], scan.len(), "{s}");
    assert_eq!(s["since"], b["id"], "{s}");
    assert_eq!(s["skipped"], serde_json::json!([link]), "{s}");
    assert_eq!(s["deferred"], serde_json::json!([partial]), "{s}");
    let shipment = s["id"].as_str().expect("a shipment").to_string();
    // Shipped once: the next run has nothing new.
    let s = ship(&p);
    assert_eq!(
        (s["files"].as_u64(), &s["id"]),
        (Some(0), &Value::Null),
        "{s}"
    );
    // Nothing of it in clear in the repository: no file name, no content,
    // and the link's target was never read.
    for needle in [&fname[3..], &link[3..], &partial[3..]] {
        let (names, found) = tree(&repo, needle.as_bytes());
        assert!(!found, "{needle} in clear in the repository");
        assert!(!names.iter().any(|n| n.contains(needle)), "{names:?}");
    }
    for content in [&scan[..], &secret[..]] {
        assert!(!tree(&repo, content).1, "filestore content in clear");
    }
    let audit = p.json(&["audit", "log", "--tenant", "alpha"]).to_string();
    assert!(audit.contains("backup.ship-filestore"), "{audit}");
    assert!(!audit.contains(&fname[3..]), "a file name in the audit log");

    // T, then the attachment and its file deleted; Odoo's in-place write
    // finished meanwhile (shipped by the next run).
    let t = server_now(&mut ca);
    ca.execute(
        "DELETE FROM ir_attachment WHERE store_fname = $1",
        &[&fname],
    )
    .unwrap();
    drop(ca);
    std::fs::remove_file(a.filestore().join(&fname)).unwrap();
    assert!(!a.filestore().join(&fname).exists());

    let out = p.run(&[
        "backup",
        "restore",
        "alpha/production",
        "--to-time",
        &t,
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "restore failed:\n{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["backup"], b["id"], "{r}");
    assert_eq!(r["filestoreFromShipments"], 1, "{r}");
    // Referenced at T, never shipped (a link is not read): reported.
    assert_eq!(r["filestoreMissing"], serde_json::json!([link]), "{r}");
    assert_eq!(std::fs::read(a.filestore().join(&fname)).unwrap(), scan);
    let (names, found) = tree(&a.filestore(), secret);
    assert!(!found, "the link's target was copied into the filestore");
    assert!(!names.iter().any(|n| n.ends_with(&link[3..])), "{names:?}");
    let mut ca = tenant_client(&p, "alpha", "production");
    assert!(attachments(&mut ca).contains(&fname));
    drop(ca);
    let st = p.json(&["status"]);
    assert_eq!(
        status_env(&st, "alpha", "production")["odooHealth"]["ok"],
        true,
        "{st}"
    );

    // Prune keeps the shipment: the restore above could be asked again.
    let pr = p.json(&["backup", "prune"]);
    assert!(!pr.to_string().contains("shipmentsDeleted"), "{pr}");
    let stream = repo.join("streams/filestore-production");
    assert!(
        stream.join(format!("{shipment}.manifest")).is_file(),
        "{:?}",
        dir_names(&stream)
    );
    // Under a policy (what `run-due`, and so `serve`, ships for) with no
    // PITR window and one backup kept (the restore's pre-restore one, newer
    // than the shipment): run-due ships a new file, and its prune deletes
    // the old shipment, which no restore needs any more.
    let file = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "  supportHours: business-hours",
        "  supportHours: business-hours\n  backupPolicy: short",
    );
    std::fs::write(&file, text).unwrap();
    std::fs::write(
        p.specs.join("policy.yaml"),
        "apiVersion: careplane.dev/v1alpha1\nkind: BackupPolicy\nmetadata:\n  name: short\n\
         spec:\n  schedule: \"0 3 1 1 *\"\n  keepLast: 1\n  pitrWindow: 0s\n",
    )
    .unwrap();
    let later = b"a discharge letter".to_vec();
    let later_name = odoo_name(&later);
    std::fs::create_dir_all(a.filestore().join(&later_name[..2])).unwrap();
    std::fs::write(a.filestore().join(&later_name), &later).unwrap();
    let r = p.json(&["backup", "run-due"]);
    assert_eq!(r["created"], serde_json::json!([]), "{r}");
    assert_eq!(r["failures"], serde_json::json!([]), "{r}");
    // The new file, and the restored scan: the newest backup (the
    // restore's pre-restore one) was taken after it had been deleted.
    // Possibly also the stand-in's start-up probe file (29 bytes, rewritten
    // at each start), when that came in the 2 s before the newest backup's
    // walk, which its file state never trusts: timing, not a fault.
    let probe = b"odoo-standin filestore probe\n".len();
    let (files, bytes) = (&r["shipped"][0]["files"], &r["shipped"][0]["bytes"]);
    assert!(
        (files == 2 && bytes == later.len() + scan.len())
            || (files == 3 && bytes == later.len() + scan.len() + probe),
        "{r}"
    );
    let newer = r["shipped"][0]["id"].as_str().unwrap();
    // Every shipment before the kept backup (the scan's, and the one right
    // after the first backup) is deleted; the new one stays.
    assert!(
        r["pruned"]["repositories"][0]["shipmentsDeleted"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{r}"
    );
    let manifests: Vec<String> = dir_names(&stream)
        .into_iter()
        .filter(|n| n.ends_with(".manifest"))
        .collect();
    assert_eq!(manifests, [format!("{newer}.manifest")], "{shipment}");

    // `backup verify` of a backup checks the shipments made since it; a
    // changed shipment manifest fails it, naming the shipment.
    let since = r["shipped"][0]["since"].as_str().unwrap();
    let v = p.json(&["backup", "verify", since]);
    assert_eq!(v["shipments"], 1, "{v}");
    assert!(v["shipmentObjects"].as_u64() >= Some(2), "{v}");
    let shipped = stream.join(format!("{newer}.manifest"));
    let mut bad = std::fs::read(&shipped).unwrap();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&shipped, &bad).unwrap();
    let out = p.run(&["backup", "verify", since]);
    assert!(!out.status.success(), "a changed shipment verified");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(newer), "{said}");
}

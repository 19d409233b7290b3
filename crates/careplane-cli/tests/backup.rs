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
    // ... and proves it by a restore, whose facts become the verified ones.
    assert_eq!(r["restoreChecks"][0]["outcome"], "baseline", "{r}");
    assert_eq!(
        r["restoreChecks"][0]["backup"], r["created"][0]["id"],
        "{r}"
    );
    // A manual backup now; prune keeps the newest one only (keepLast 1,
    // no PITR window) and the cluster base backup it needs.
    let b = p.json(&["backup", "create", "gamma/dev"]);
    let pr = p.json(&["backup", "prune"]);
    let tenant = &pr["repositories"][0];
    assert_eq!(tenant["kept"], serde_json::json!([b["id"]]), "{pr}");
    assert_eq!(tenant["deleted"].as_array().unwrap().len(), 1, "{pr}");
    let l = p.json(&["backup", "list"]);
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    // The pruned backup's restore check went with it.
    let checks = tenant_repo(&p, "gamma")
        .list_backups()
        .unwrap()
        .into_iter()
        .filter(|m| m.labels.get("kind").map(String::as_str) == Some("restore-check"))
        .count();
    assert_eq!(checks, 0);
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

// ---------------------------------------------------------------------------
// s3:// from the CLI: a dedicated cluster whose tenant's policy names an S3
// repository on moto (a real S3-compatible server on loopback).

struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` on a free loopback port with bucket `bucket` (with S3
/// Object Lock enabled if `object_lock`); `None` (the reason printed) when
/// moto is not installed outside CI; in CI it fails.
fn start_moto(bucket: &str, object_lock: bool) -> Option<Moto> {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let msg = "moto_server is not installed (scripts/install-deps installs it with pip)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping the s3:// test: {msg}");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // moto does not check signatures: a plain request makes the bucket.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let lock = if object_lock {
        "x-amz-bucket-object-lock-enabled: true\r\n"
    } else {
        ""
    };
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n{lock}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "creating bucket: {answer}"
    );
    Some(moto)
}

/// The names of the bucket's objects below `prefix` (moto's ListObjects
/// XML, unsigned; enough for names without markup in them).
fn bucket_keys(port: u16, bucket: &str, prefix: &str) -> Vec<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /{bucket}?prefix={prefix}&max-keys=1000 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect()
}

const S3_TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: offsite
spec:
  schedule: "0 2 * * *"
  retention:
    daily: 7
  repository: s3://careplane-it/hospital
  endpoint: http://127.0.0.1:MOTO_PORT
  region: eu-west-1
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: offsite
spec:
  availability: 99.5
  rto: 4h
  rpo: 1h
  supportHours: business-hours
  backupPolicy: offsite
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: citylab
spec:
  tenancy: dedicated-db
  serviceTier: offsite
  modules: [base]
  environments:
    - name: production
      kind: production
"#;

fn visits(c: &mut careplane_local::postgres::Client) -> (i64, String) {
    let row = c
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') \
             FROM public.visits AS x",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn an_s3_repository_archives_backs_up_verifies_and_restores_with_no_secret_in_sight() {
    let Some(moto) = start_moto("careplane-it", false) else {
        return;
    };
    let p = Platform::with_odoo(&S3_TENANTS.replace("MOTO_PORT", &moto.port.to_string()));
    // Distinctive, so that finding it anywhere is a finding.
    let key_id = format!("CPKEY{}", std::process::id());
    let secret_key = format!("cp-s3-secret-{}-Zq9", std::process::id());
    let run = |args: &[&str]| {
        let out = p
            .cmd(args)
            .env("AWS_ACCESS_KEY_ID", &key_id)
            .env("AWS_SECRET_ACCESS_KEY", &secret_key)
            .output()
            .unwrap();
        assert!(out.status.success(), "careplane {args:?}:\n{}", text(&out));
        out
    };
    let json = |args: &[&str]| -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_slice(&run(&a).stdout).unwrap()
    };
    let mut outputs = vec![text(&run(&["apply"]))];

    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let db = store
        .resource("pg-database/citylab/production")
        .unwrap()
        .unwrap();
    let cluster_id = db.props["cluster"].as_str().unwrap().to_string();
    assert_ne!(cluster_id, "pg-cluster/shared");
    let crec = store.resource(&cluster_id).unwrap().unwrap();
    let repo = crec.observed["archive"]["repository"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        repo.starts_with("s3://careplane-it/hospital/clusters/"),
        "{repo}"
    );
    let creds = PathBuf::from(
        crec.observed["archive"]["credentialsFile"]
            .as_str()
            .expect("an s3 cluster records its archiver's credentials file"),
    );

    // The archiver's credentials: a file only the service user reads,
    // holding the S3 keys and nothing else.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&creds).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "{}", creds.display());
    let data_owner = std::fs::metadata(crec.observed["root"].as_str().unwrap())
        .unwrap()
        .uid();
    assert_eq!(meta.uid(), data_owner, "{}", creds.display());
    let c: Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(c.as_object().unwrap().len(), 2, "only the S3 keys");
    assert_eq!(c["aws_secret_access_key"], secret_key.as_str());

    let mut ca = tenant_client(&p, "citylab", "production");
    ca.batch_execute(
        "CREATE TABLE public.visits (id integer PRIMARY KEY, note text NOT NULL);
         INSERT INTO public.visits SELECT i, 'visit ' || i FROM generate_series(1, 20) i;",
    )
    .unwrap();
    let b = json(&["backup", "create", "citylab/production"]);
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(
        b["repository"], "s3://careplane-it/hospital/tenants/citylab",
        "{b}"
    );
    assert_eq!(b["clusterRepository"], repo.as_str(), "{b}");

    // After the backup: the rows at T come back only through WAL that the
    // archiver (the service user, with the file above) put into S3.
    ca.batch_execute(
        "INSERT INTO public.visits SELECT i, 'visit ' || i FROM generate_series(21, 30) i",
    )
    .unwrap();
    let at_t = visits(&mut ca);
    let t: String = ca
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .unwrap()
        .get(0);
    ca.batch_execute("DELETE FROM public.visits WHERE id <= 5")
        .unwrap();
    assert_ne!(visits(&mut ca), at_t);
    drop(ca);

    let l = json(&["backup", "list", "citylab/production"]);
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l[0]["id"], id.as_str());
    let v = json(&["backup", "verify", &id, "--deep"]);
    assert_eq!(v["ok"], true, "{v}");

    let r = json(&["backup", "restore", "citylab/production", "--to-time", &t]);
    outputs.push(r.to_string());
    let mut ca = tenant_client(&p, "citylab", "production");
    assert_eq!(visits(&mut ca), at_t, "restored to T from S3: {r}");
    drop(ca);

    // Without AWS_* in its environment (cron), careplane uses the vault's copy.
    let out = p
        .cmd(&["backup", "list", "citylab/production", "--output", "json"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let l: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        l.as_array().unwrap().len(),
        2,
        "the backup and the pre-restore one: {l}"
    );
    outputs.push(text(&out));

    // WAL really went to the bucket, by the archiver, and it is healthy.
    let prefix = repo.trim_start_matches("s3://careplane-it/");
    let wal: Vec<String> = bucket_keys(moto.port, "careplane-it", prefix)
        .into_iter()
        .filter(|k| k.contains("/wal/"))
        .collect();
    assert!(!wal.is_empty(), "no WAL object below {prefix}");
    let st = json(&["status"]);
    let arch = &server(&st, &cluster_id)["archiving"];
    assert_eq!(arch["ok"], true, "{st}");
    assert!(arch["archivedCount"].as_i64().unwrap() > 0, "{st}");
    outputs.push(st.to_string());

    // The secret: in no output, no command line, and no file but its own
    // (postgresql.conf, the managed settings, logs and the records included).
    for o in &outputs {
        assert!(!o.contains(&secret_key), "secret in output: {o}");
    }
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(&secret_key));
    let conf = Path::new(crec.observed["root"].as_str().unwrap());
    let mut looked_at = 0;
    for f in files_under(&p.data_dir()) {
        if f == creds {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap_or_default();
        let found = bytes
            .windows(secret_key.len())
            .any(|w| w == secret_key.as_bytes());
        assert!(!found, "the S3 secret is in {}", f.display());
        if f.starts_with(conf) && f.ends_with("postgresql.conf") {
            looked_at += 1;
        }
    }
    assert!(looked_at > 0, "postgresql.conf was not among the files");
    drop(moto);
}

/// The Object Lock mode moto reports for an object (lowercase), if any.
/// moto checks no signature but treats a request without Authorization as
/// anonymous, which private objects refuse.
fn lock_mode(port: u16, bucket: &str, key: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "HEAD /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=k/20260101/eu-west-1/s3/aws4_request, \
         SignedHeaders=host, Signature=0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let answer = answer.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "HEAD {key}: {answer}");
    answer.lines().find_map(|l| {
        l.strip_prefix("x-amz-object-lock-mode:")
            .map(|m| m.trim().to_string())
    })
}

/// An immutable policy (S3 Object Lock, on moto): what careplane and the
/// WAL archiver write is locked, and prune keeps a backup retention lets
/// go of while its lock lasts, saying until when.
#[test]
fn an_immutable_s3_policy_locks_backups_and_wal_and_prune_keeps_them_while_locked() {
    let Some(moto) = start_moto("careplane-lock", true) else {
        return;
    };
    let tenants = S3_TENANTS
        .replace("MOTO_PORT", &moto.port.to_string())
        .replace("careplane-it", "careplane-lock")
        .replace(
            "    daily: 7\n",
            "    daily: 1\n  keepLast: 1\n  pitrWindow: 0s\n  immutability: {mode: governance, days: 1}\n",
        );
    assert!(tenants.contains("immutability"), "{tenants}");
    let p = Platform::with_odoo(&tenants);
    let run = |args: &[&str]| {
        let out = p
            .cmd(args)
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .output()
            .unwrap();
        assert!(out.status.success(), "careplane {args:?}:\n{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let json = |args: &[&str]| -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_str(&run(&a)).unwrap()
    };
    run(&["apply"]);
    let b1 = json(&["backup", "create", "citylab/production"]);
    let b2 = json(&["backup", "create", "citylab/production"]);
    let (id1, id2) = (b1["id"].as_str().unwrap(), b2["id"].as_str().unwrap());

    // Locked: the backup's manifest, its chunks, and the WAL the archiver
    // (archive_command, as the service user) wrote.
    let keys = bucket_keys(moto.port, "careplane-lock", "hospital");
    let manifest = keys
        .iter()
        .find(|k| k.ends_with(&format!("{id1}.manifest")))
        .unwrap_or_else(|| panic!("no manifest of {id1} in {keys:?}"));
    let wal = keys
        .iter()
        .find(|k| k.contains("/wal/"))
        .unwrap_or_else(|| panic!("no WAL in {keys:?}"));
    let chunk = keys.iter().find(|k| k.contains("/chunks/")).unwrap();
    for k in [manifest, wal, chunk] {
        assert_eq!(
            lock_mode(moto.port, "careplane-lock", k).as_deref(),
            Some("governance"),
            "{k}"
        );
    }

    // Retention keeps only the newest; the lock keeps the older one whole.
    let pr = json(&["backup", "prune"]);
    let tenant = pr["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == "s3://careplane-lock/hospital/tenants/citylab")
        .unwrap_or_else(|| panic!("{pr}"));
    assert_eq!(tenant["deleted"], serde_json::json!([]), "{pr}");
    let locked = tenant["locked"].as_array().unwrap();
    assert_eq!(locked.len(), 1, "{pr}");
    assert!(
        locked[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{id1}: kept by object lock until ")),
        "{pr}"
    );
    let l = json(&["backup", "list", "citylab/production"]);
    let ids: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&id1) && ids.contains(&id2), "{l}");
    let v = json(&["backup", "verify", id1, "--deep"]);
    assert_eq!(v["ok"], true, "{v}");
    let out = run(&["backup", "prune"]);
    assert!(
        out.contains(&format!("{id1}: kept by object lock until")),
        "{out}"
    );
    drop(moto);
}

// ---------------------------------------------------------------------------
// verify --restore: a backup proven by restoring it into a scratch server.

/// The tenant repository of `tenant`, opened with careplane's own keys from
/// the vault, as careplane opens it.
fn tenant_repo(p: &Platform, tenant: &str) -> careplane_backup::Repository {
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let get = |owner: &str, name: &str| store.secret(owner, name).unwrap().unwrap();
    let keys = careplane_backup::RepoKeys {
        secret: get(&format!("backup/tenant/{tenant}"), "backup-secret"),
        recipients: vec![
            careplane_local::ExposeSecret::expose_secret(&get("backup", "recipient")).to_string(),
        ],
        identities: vec![get("backup", "identity")],
    };
    let url = format!("file://{}/backups/tenants/{tenant}", p.data_dir().display());
    careplane_backup::Repository::open_with(&url, &keys, careplane_backup::RepoOptions::default())
        .unwrap()
}

#[test]
fn verify_restore_records_the_restored_facts_then_compares_and_names_what_differs() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);
    let mut c = tenant_client(&p, "gamma", "dev");
    c.batch_execute(
        "CREATE TABLE public.visits (id serial PRIMARY KEY, note text NOT NULL);
         INSERT INTO public.visits (note) SELECT 'visit ' || i FROM generate_series(1, 50) i;",
    )
    .unwrap();
    let b1 = p.json(&["backup", "create", "gamma/dev"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Written after the backup: no restore of it may see these.
    c.batch_execute("INSERT INTO public.visits (note) SELECT 'later' FROM generate_series(1, 7)")
        .unwrap();

    // The first restore verification records what the restore holds.
    let first = p.json(&["backup", "verify", "--restore", "gamma/dev"]);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["backup"], b1.as_str(), "{first}");
    assert_eq!(first["outcome"], "baseline", "{first}");
    assert!(first["tables"].as_u64().unwrap() >= 1, "{first}");
    let evidence = first["evidence"].as_str().unwrap().to_string();
    let repo = tenant_repo(&p, "gamma");
    let facts = repo
        .index(&repo.manifest(&evidence).unwrap())
        .unwrap()
        .metadata
        .tables;
    let visits = facts
        .iter()
        .find(|t| t.table == "public.visits")
        .unwrap_or_else(|| panic!("no public.visits among {facts:?}"));
    assert_eq!(
        visits.rows, 50,
        "the restore is the backup's point, not now"
    );

    // The second restores again and compares.
    let second = p.json(&[
        "backup",
        "verify",
        "--restore",
        "gamma/dev",
        "--backup",
        &b1,
    ]);
    assert_eq!(second["outcome"], "passed", "{second}");
    assert_eq!(second["baseline"], evidence.as_str(), "{second}");
    let show = p.json(&["backup", "show", &b1]);
    let checks = show["restoreChecks"].as_array().unwrap();
    let outcomes: Vec<&str> = checks
        .iter()
        .map(|c| c["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["baseline", "passed"], "{show}");
    assert!(
        checks.iter().all(|c| c["durationMs"].as_u64().unwrap() > 0),
        "{show}"
    );
    let st = p.json(&["status"]);
    let env = st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tenant"] == "gamma")
        .unwrap();
    assert_eq!(env["lastRestoreVerification"]["outcome"], "passed", "{st}");
    let st = p.ok(&["status"]);
    assert!(
        st.contains(&format!(
            "gamma/dev: restore verification of backup {b1} passed"
        )),
        "{st}"
    );

    // Verified facts that the restore does not reproduce (signed with
    // careplane's keys, every object intact): the check fails naming the
    // table, and the failure is evidence too.
    let b2 = p.json(&["backup", "create", "gamma/dev"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let real = p.json(&[
        "backup",
        "verify",
        "--restore",
        "gamma/dev",
        "--backup",
        &b2,
    ]);
    let real_facts = repo
        .index(&repo.manifest(real["evidence"].as_str().unwrap()).unwrap())
        .unwrap()
        .metadata
        .tables;
    repo.delete_backup(real["evidence"].as_str().unwrap())
        .unwrap();
    let mut forged = real_facts.clone();
    let v = forged
        .iter_mut()
        .find(|t| t.table == "public.visits")
        .unwrap();
    assert_eq!(v.rows, 57);
    v.rows = 56;
    let labels = std::collections::BTreeMap::from(
        [
            ("kind", "restore-check"),
            ("tenant", "gamma"),
            ("environment", "dev"),
            ("backup", b2.as_str()),
            ("outcome", "baseline"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let w = repo.start_backup(labels).unwrap();
    w.commit(careplane_backup::BackupMetadata {
        tables: forged,
        ..Default::default()
    })
    .unwrap();
    let out = p.run(&[
        "backup",
        "verify",
        "--restore",
        "gamma/dev",
        "--backup",
        &b2,
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("table public.visits: verified 56 rows"), "{t}");
    assert!(t.contains("restored 57 rows"), "{t}");
    assert!(t.contains(&b2), "{t}");
    let st = p.json_allow_fail(&["status"]);
    let env = st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tenant"] == "gamma")
        .unwrap();
    assert_eq!(env["lastRestoreVerification"]["outcome"], "failed", "{st}");
    assert!(
        env["lastRestoreVerification"]["firstDifference"]
            .as_str()
            .unwrap()
            .contains("public.visits"),
        "{st}"
    );

    // A flipped byte in the base backup the restore needs: it fails before
    // any scratch server starts, naming the object.
    let b1_base = p.json(&["backup", "show", &b1])["clusterBackup"]
        .as_str()
        .unwrap()
        .to_string();
    let clusters = p.data_dir().join("backups/clusters");
    let cluster_repo = std::fs::read_dir(&clusters)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // The manifest is signed, not secret: its chunk list is in clear.
    let signed: Value = serde_json::from_slice(
        &std::fs::read(cluster_repo.join(format!("backups/{b1_base}.manifest"))).unwrap(),
    )
    .unwrap();
    let manifest: Value = serde_json::from_str(signed["manifest"].as_str().unwrap()).unwrap();
    let first = &manifest["chunks"][0];
    let (cid, hash) = (
        first["id"].as_str().unwrap(),
        first["hash"].as_str().unwrap(),
    );
    let chunk = cluster_repo.join(format!("chunks/{}/{cid}.{hash}", &cid[..2]));
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&chunk, bytes).unwrap();
    let stem = chunk
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let out = p.run(&[
        "backup",
        "verify",
        "--restore",
        "gamma/dev",
        "--backup",
        &b1,
        "--output",
        "json",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains(&stem), "the error names no object {stem}: {e}");
    assert!(e.contains(&b1), "{e}");
    let st = p.json_allow_fail(&["status"]);
    let env = st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tenant"] == "gamma")
        .unwrap();
    assert_eq!(env["lastRestoreVerification"]["outcome"], "failed", "{st}");
    assert!(
        env["lastRestoreVerification"]["error"]
            .as_str()
            .unwrap()
            .contains(&stem),
        "{st}"
    );
}

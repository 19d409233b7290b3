//! Backups only the customer can read (issue 16, `careplaneKey: false`,
//! docs/design/0010 "Customer-held keys"), on real PostgreSQL with the Odoo
//! stand-in: a dedicated tenant whose policy names only the customer's age
//! recipient. careplane backs up, lists, verifies hashes and signatures and
//! runs what is due without any private key, records its scheduled restore
//! verification as skipped, and cannot decrypt a single object with its own
//! key; restore without the customer's identity, or with another one, is
//! refused naming the backup and changes nothing; with it, the rows at the
//! point in time come back. Neither key appears in any output or file.

mod common;

use std::path::{Path, PathBuf};

use careplane_backup::{BackupError, ExposeSecret, RepoKeys, Repository, SecretString};
use common::*;
use serde_json::Value;

const SPECS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: customer-only
spec:
  schedule: "* * * * *"
  keepLast: 10
  careplaneKey: false
  recipients: [CUSTOMER_RECIPIENT]
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: customer-held
spec:
  availability: 99.5
  rto: 4h
  rpo: 1h
  supportHours: business-hours
  backupPolicy: customer-only
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: clinic
spec:
  tenancy: dedicated-db
  serviceTier: customer-held
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

/// An identity file as `age-keygen` writes it, 0600.
fn key_file(dir: &Path, name: &str, identity: &SecretString, public: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "# created: 2026-12-02T10:00:00Z\n# public key: {public}\n{}\n",
            identity.expose_secret()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

/// A repository opened as careplane would have: its secret from the vault,
/// and `identity` to decrypt with.
fn open_repo(
    url: &str,
    secret: SecretString,
    recipient: &str,
    identity: SecretString,
) -> Repository {
    let keys = RepoKeys {
        secret,
        recipients: vec![recipient.to_string()],
        identities: vec![identity],
    };
    Repository::open_with(url, &keys, careplane_backup::RepoOptions::default()).unwrap()
}

fn postmaster_pid(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join("data/postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().map(str::to_string))
}

/// Switches WAL and waits (bounded) until that segment is archived.
fn archive_now(p: &Platform, cluster_id: &str) {
    let mut c = admin_client(p, cluster_id);
    let want: String = c
        .query_one(
            "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())",
            &[],
        )
        .unwrap()
        .get(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
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
        assert!(
            std::time::Instant::now() < deadline,
            "{want} was not archived"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn status_env(st: &Value) -> &Value {
    st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tenant"] == "clinic" && e["environment"] == "production")
        .unwrap_or_else(|| panic!("no clinic/production in {st}"))
}

#[test]
fn a_customer_held_key_is_the_only_key_to_the_backups_and_restore_needs_it() {
    let (customer, customer_public) = careplane_backup::generate_identity();
    let (other, other_public) = careplane_backup::generate_identity();
    let p = Platform::with_odoo(&SPECS.replace("CUSTOMER_RECIPIENT", &customer_public));
    let keys_dir = p.dir.path().join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let right = key_file(&keys_dir, "customer.txt", &customer, &customer_public);
    let wrong = key_file(&keys_dir, "other.txt", &other, &other_public);
    let garbage = keys_dir.join("garbage.txt");
    let garbage_text = "AGE-SECRET-KEY-1NOTAKEYATALLBUTLONGENOUGHTOLOOKLIKEONE";
    std::fs::write(&garbage, format!("{garbage_text}\n")).unwrap();

    let mut outputs = Vec::new();
    let run = |args: &[&str]| {
        let out = p
            .cmd(args)
            .env_remove("CAREPLANE_BACKUP_IDENTITY_FILE")
            .output()
            .unwrap();
        (out.status.success(), text(&out), out)
    };
    let (ok, t, _) = run(&["apply"]);
    assert!(ok, "{t}");
    outputs.push(t);

    let mut c = tenant_client(&p, "clinic", "production");
    c.batch_execute(
        "CREATE TABLE public.visits (id integer PRIMARY KEY, note text NOT NULL);
         INSERT INTO public.visits SELECT i, 'visit ' || i FROM generate_series(1, 20) i;",
    )
    .unwrap();
    drop(c);

    // run-due (the schedule is due: no backup yet) backs up without any
    // private key, verifies what it can, and records the restore
    // verification as skipped, not passed.
    let (ok, t, out) = run(&["backup", "run-due", "--output", "json"]);
    assert!(ok, "{t}");
    outputs.push(t);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["created"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["failures"].as_array().unwrap().len(), 0, "{r}");
    let id = r["created"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(r["verified"][0]["id"], id.as_str(), "{r}");
    assert_eq!(r["verified"][0]["deep"], false, "{r}");
    let check = &r["restoreChecks"][0];
    assert_eq!(check["outcome"], "skipped", "{r}");
    assert!(
        check["skipped"]
            .as_str()
            .unwrap()
            .contains("customer-held key"),
        "{r}"
    );
    assert!(
        check["evidence"].is_null(),
        "a skipped check proves nothing: {r}"
    );
    let (ok, t, out) = run(&["status", "--output", "json"]);
    outputs.push(t.clone());
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &status_env(&st)["lastRestoreVerification"];
    assert_eq!(last["outcome"], "skipped", "{st}");
    assert_eq!(last["backup"], id.as_str(), "{st}");
    let _ = ok;
    let (_, t, _) = run(&["status"]);
    assert!(t.contains("SKIPPED"), "{t}");

    // What needs no private key works.
    let (ok, t, _) = run(&["backup", "list", "clinic/production"]);
    assert!(ok && t.contains(&id), "{t}");
    outputs.push(t);
    let (ok, t, _) = run(&["backup", "verify", &id]);
    assert!(ok, "{t}");
    outputs.push(t);
    // What decrypts says a customer key is needed, naming the backup.
    for args in [
        vec!["backup", "verify", id.as_str(), "--deep"],
        vec!["backup", "show", id.as_str()],
        vec!["backup", "verify", "--restore", "clinic/production"],
    ] {
        let (ok, t, _) = run(&args);
        assert!(!ok, "{args:?} succeeded: {t}");
        assert!(t.contains("a customer key is needed"), "{args:?}: {t}");
        assert!(t.contains(&format!("backup {id}")), "{args:?}: {t}");
        assert!(t.contains("--identity FILE"), "{args:?}: {t}");
        outputs.push(t);
    }
    let mut with_key = vec!["backup", "verify", id.as_str(), "--deep", "--identity"];
    with_key.push(right.to_str().unwrap());
    let (ok, t, _) = run(&with_key);
    assert!(ok, "deep verify with the customer's key: {t}");
    outputs.push(t);

    // Not one object opens with careplane's own key, in the tenant's
    // repository or the dedicated cluster's (base backup and WAL); each
    // opens with the customer's.
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let get = |owner: &str, name: &str| store.secret(owner, name).unwrap().unwrap();
    let careplane_identity = get("backup", "identity");
    let careplane_recipient = get("backup", "recipient").expose_secret().to_string();
    let db = store
        .resource("pg-database/clinic/production")
        .unwrap()
        .unwrap();
    let cluster_id = db.props["cluster"].as_str().unwrap().to_string();
    assert_ne!(cluster_id, "pg-cluster/shared");
    let crec = store.resource(&cluster_id).unwrap().unwrap();
    let cluster_url = crec.observed["archive"]["repository"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster_owner = crec.observed["archive"]["secretOwner"]
        .as_str()
        .unwrap()
        .to_string();
    let tenant_url = format!("file://{}/backups/tenants/clinic", p.data_dir().display());
    let tenant_secret = get("backup/tenant/clinic", "backup-secret");
    let cluster_secret = get(&cluster_owner, "backup-secret");
    let wrong_key = |e: Result<(), BackupError>, what: &str| match e {
        Err(BackupError::WrongKey { .. }) => {}
        other => panic!("{what} with careplane's key: {other:?}"),
    };
    let trepo = open_repo(
        &tenant_url,
        tenant_secret.clone(),
        &careplane_recipient,
        careplane_identity.clone(),
    );
    let m = trepo.manifest(&id).unwrap();
    wrong_key(trepo.index(&m).map(|_| ()), "the backup's index");
    wrong_key(trepo.verify(&id, true).map(|_| ()), "the backup's chunks");
    let base = m.labels["cluster.backup"].clone();
    let crepo = open_repo(
        &cluster_url,
        cluster_secret.clone(),
        &careplane_recipient,
        careplane_identity.clone(),
    );
    let bm = crepo.manifest(&base).unwrap();
    wrong_key(crepo.index(&bm).map(|_| ()), "the base backup's index");
    wrong_key(
        crepo.verify(&base, true).map(|_| ()),
        "the base backup's chunks",
    );
    let wal = crepo.list_wal().unwrap();
    let segments: Vec<&String> = wal.iter().filter(|w| w.len() == 24).collect();
    assert!(!segments.is_empty(), "no WAL archived: {wal:?}");
    let scratch = keys_dir.join("wal");
    for w in &segments {
        wrong_key(
            crepo.restore_wal(w, &scratch).map(|_| ()),
            &format!("WAL {w}"),
        );
    }
    let trepo = open_repo(
        &tenant_url,
        tenant_secret,
        &careplane_recipient,
        customer.clone(),
    );
    trepo.verify(&id, true).unwrap();
    let crepo = open_repo(
        &cluster_url,
        cluster_secret,
        &careplane_recipient,
        customer.clone(),
    );
    crepo.verify(&base, true).unwrap();
    assert!(crepo.restore_wal(segments[0], &scratch).unwrap());
    drop(store);

    // Rows after the backup; T; then changes a restore to T must undo.
    let mut c = tenant_client(&p, "clinic", "production");
    c.batch_execute(
        "INSERT INTO public.visits SELECT i, 'visit ' || i FROM generate_series(21, 30) i",
    )
    .unwrap();
    let at_t = visits(&mut c);
    let t: String = c
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .unwrap()
        .get(0);
    c.batch_execute("DELETE FROM public.visits WHERE id <= 5; UPDATE public.visits SET note = 'changed' WHERE id = 10")
        .unwrap();
    let changed = visits(&mut c);
    assert_ne!(changed, at_t);
    drop(c);
    let backups_before = {
        let (_, _, out) = run(&["backup", "list", "--output", "json"]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let databases = || -> Vec<String> {
        admin_client(&p, &cluster_id)
            .query("SELECT datname::text FROM pg_database ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let dbs_before = databases();

    // Without the customer's identity, with another one, with a file that
    // holds no identity: refused before anything changes (no pre-restore
    // backup, no database, the rows as they are).
    let restore = |identity: Option<&Path>| {
        let mut args = vec!["backup", "restore", "clinic/production", "--to-time", &t];
        if let Some(f) = identity {
            args.push("--identity");
            args.push(f.to_str().unwrap());
        }
        run(&args)
    };
    for (identity, says) in [
        (None, "a customer key is needed"),
        (
            Some(wrong.as_path()),
            "encrypted to neither careplane's key nor the identity given with --identity",
        ),
        (
            Some(garbage.as_path()),
            "line 1 is not an age X25519 identity",
        ),
    ] {
        let (ok, out, _) = restore(identity);
        assert!(!ok, "restore with {identity:?} succeeded: {out}");
        assert!(out.contains(says), "{identity:?}: {out}");
        if identity != Some(garbage.as_path()) {
            assert!(out.contains(&format!("backup {id}")), "{out}");
            assert!(out.contains("nothing was changed"), "{out}");
        }
        assert!(!out.contains(&garbage_text[16..]), "{out}");
        outputs.push(out);
        let mut c = tenant_client(&p, "clinic", "production");
        assert_eq!(visits(&mut c), changed, "a refused restore changed rows");
        drop(c);
        let (_, _, l) = run(&["backup", "list", "--output", "json"]);
        assert_eq!(
            serde_json::from_slice::<Value>(&l.stdout).unwrap(),
            backups_before,
            "a refused restore took a backup"
        );
        assert_eq!(databases(), dbs_before);
    }

    // With it: the rows at T.
    let (ok, out, o) = restore(Some(&right));
    assert!(ok, "restore with the customer's key: {out}");
    outputs.push(out);
    let mut c = tenant_client(&p, "clinic", "production");
    assert_eq!(visits(&mut c), at_t, "restored to T");
    drop(c);
    let _ = o;
    // The key from the environment variable works as --identity does, for
    // verification by restore too.
    let out = p
        .cmd(&[
            "backup",
            "verify",
            "--restore",
            "clinic/production",
            "--backup",
            &id,
            "--output",
            "json",
        ])
        .env("CAREPLANE_BACKUP_IDENTITY_FILE", &right)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "baseline", "{v}");
    outputs.push(text(&out));

    // The whole dedicated cluster back from its base backup and WAL (only
    // the customer's key reads them): refused without it, the postmaster
    // and data directory untouched; with it, every archived commit is back.
    let mut c = tenant_client(&p, "clinic", "production");
    c.batch_execute("INSERT INTO public.visits VALUES (1000, 'after the restore')")
        .unwrap();
    let before_cluster_restore = visits(&mut c);
    drop(c);
    archive_now(&p, &cluster_id);
    let root = PathBuf::from(crec.observed["root"].as_str().unwrap());
    let pid = postmaster_pid(&root);
    assert!(pid.is_some());
    let rc = [
        "backup",
        "restore-cluster",
        "clinic",
        "--confirm",
        "clinic",
        "--force",
    ];
    let (ok, out, _) = run(&rc);
    assert!(!ok, "restore-cluster without the key: {out}");
    assert!(out.contains("a customer key is needed"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(
        postmaster_pid(&root),
        pid,
        "a refused restore-cluster touched it"
    );
    assert!(
        !dir_names(&root).iter().any(|n| n.starts_with("data.lost-")),
        "a refused restore-cluster moved the data directory"
    );
    outputs.push(out);
    let mut with_key = rc.to_vec();
    with_key.extend(["--identity", right.to_str().unwrap()]);
    let (ok, out, _) = run(&with_key);
    assert!(ok, "restore-cluster with the customer's key: {out}");
    outputs.push(out);
    let mut c = tenant_client(&p, "clinic", "production");
    assert_eq!(visits(&mut c), before_cluster_restore);
    drop(c);

    // Neither key in any output, nor the customer's anywhere careplane
    // writes (state, audit log, repositories, the cluster's files).
    let careplane_identity = {
        let store = careplane_state::Store::open(&p.data_dir()).unwrap();
        let s = store.secret("backup", "identity").unwrap().unwrap();
        s.expose_secret().to_string()
    };
    for o in &outputs {
        assert!(
            !o.contains(customer.expose_secret()),
            "customer key in: {o}"
        );
        assert!(!o.contains(other.expose_secret()), "a key in: {o}");
        assert!(!o.contains(&careplane_identity), "careplane's key in: {o}");
    }
    let mut looked_at = 0;
    for f in files_under(&p.data_dir()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let secret = customer.expose_secret().as_bytes();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "the customer's key is in {}",
            f.display()
        );
        looked_at += 1;
    }
    assert!(looked_at > 100, "only {looked_at} files looked at");
}

//! `careplane export`: an environment as the zip Odoo's database manager
//! restores. The archive holds the database as of the export (a row the
//! tenant wrote is in `dump.sql`, and the dump loads with no error into an
//! empty database of another cluster), every attachment the database refers
//! to, and Odoo's manifest; a symlink tenant code planted in its filestore
//! is left out and reported, never followed as root; failures leave no
//! archive; no secret reaches the output.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use serde_json::Value;

const ONE: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: echo
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
"#;

/// The members of a zip archive and their contents, read by Python's
/// `zipfile` (what Odoo's restore uses), not by the crate that wrote it.
fn members(zip: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             assert z.testzip() is None\n\
             z.extractall(sys.argv[2])\n\
             print('\\n'.join(z.namelist()))",
        ])
        .arg(zip)
        .arg(dir.path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|n| !n.ends_with('/'))
        .map(|n| (n.to_string(), std::fs::read(dir.path().join(n)).unwrap()))
        .collect()
}

#[test]
fn export_writes_what_odoos_database_manager_restores() {
    let p = Platform::with_odoo(ONE);
    p.ok(&["apply"]);
    let mut c = tenant_client(&p, "echo", "dev");
    c.batch_execute(
        "CREATE TABLE public.x_patient_note (id serial PRIMARY KEY, body text);
         INSERT INTO public.x_patient_note (body) VALUES ('exported-row-7f3a');",
    )
    .unwrap();
    let attachments: Vec<String> = c
        .query(
            "SELECT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!attachments.is_empty(), "the stand-in made no attachment");
    drop(c);

    // Tenant code plants a link to a root-only file in its filestore.
    let store = p
        .data_dir()
        .join("odoo/envs/echo/dev/data/filestore/echo-dev");
    let secret_file = p.data_dir().join("root-only.txt");
    std::fs::write(&secret_file, "root-only-content-91c2").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&secret_file, store.join("zz-link")).unwrap();

    let out = p.specs.join("echo-dev.zip");
    let run = p.run(&[
        "export",
        "echo",
        "dev",
        "--out",
        out.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["format"], "odoo-zip");
    assert_eq!(report["database"], "echo-dev");
    assert_eq!(
        report["skipped"],
        serde_json::json!(["zz-link"]),
        "{report}"
    );
    // The whole filestore (as Odoo's backup copies it), at least every
    // attachment the database refers to.
    assert!(
        report["filestoreFiles"].as_u64().unwrap() as usize >= attachments.len(),
        "{report}"
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!p.specs.join("echo-dev.zip.partial").exists());

    let m = members(&out);
    let get = |name: &str| -> &Vec<u8> {
        &m.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| {
                panic!(
                    "no {name} in {:?}",
                    m.iter().map(|x| &x.0).collect::<Vec<_>>()
                )
            })
            .1
    };
    let manifest: Value = serde_json::from_slice(get("manifest.json")).unwrap();
    assert_eq!(manifest["odoo_dump"], "1");
    assert_eq!(manifest["db_name"], "echo-dev");
    assert_eq!(manifest["major_version"], "18.0");
    assert!(manifest["modules"]["base"].is_string(), "{manifest}");
    let sql = String::from_utf8_lossy(get("dump.sql")).to_string();
    assert!(
        sql.contains("CREATE TABLE public.x_patient_note"),
        "no table in dump.sql"
    );
    assert!(sql.contains("exported-row-7f3a"), "no row in dump.sql");
    // --no-owner --no-privileges: careplane's roles are not the restorer's.
    assert!(!sql.contains("OWNER TO"), "dump.sql sets owners");
    assert!(!sql.contains("GRANT "), "dump.sql grants");
    for f in &attachments {
        let on_disk = std::fs::read(store.join(f)).unwrap();
        assert_eq!(get(&format!("filestore/{f}")), &on_disk, "{f}");
    }
    let key = std::fs::read(&secret_file).unwrap();
    for (name, bytes) in &m {
        assert!(!name.contains("zz-link"), "{name}");
        assert!(
            bytes.windows(key.len()).all(|w| w != key.as_slice()),
            "{name} holds the root-only file"
        );
    }

    // No secret of the tenant's in the output.
    let creds = p.json(&["credentials", "echo", "dev"]);
    for pw in [
        creds["postgres"]["password"].as_str().unwrap(),
        creds["odoo"]["password"].as_str().unwrap(),
    ] {
        assert!(
            !stdout.contains(pw) && !stderr.contains(pw),
            "a password in the output"
        );
    }

    // The dump loads, with no error at all, into an empty database of a
    // cluster that has none of careplane's roles (what Odoo's restore does
    // with psql -f dump.sql).
    let scratch = careplane_local::testing::TestPlatform::new();
    let pg = scratch.guard_pg(scratch.pg_cluster("restore"));
    pg.init(&scratch.tls_files()).unwrap();
    pg.start().unwrap();
    pg.admin()
        .unwrap()
        .batch_execute("CREATE DATABASE restored")
        .unwrap();
    let sql_file = scratch.path().join("dump.sql");
    std::fs::write(&sql_file, get("dump.sql")).unwrap();
    std::fs::set_permissions(&sql_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let psql = Command::new(pg.bin.dir.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&sql_file)
        .arg("-h")
        .arg(pg.socket_dir())
        .arg("-p")
        .arg(pg.port.to_string())
        .args(["-U", careplane_local::pg::ADMIN_ROLE, "-d", "restored"])
        .env(
            "PGPASSWORD",
            careplane_local::ExposeSecret::expose_secret(&pg.admin_password),
        )
        .output()
        .unwrap();
    assert!(
        psql.status.success(),
        "dump.sql did not load: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    let mut r = careplane_local::postgres::Config::new()
        .host_path(pg.socket_dir())
        .port(pg.port)
        .user(careplane_local::pg::ADMIN_ROLE)
        .password(careplane_local::ExposeSecret::expose_secret(
            &pg.admin_password,
        ))
        .dbname("restored")
        .connect(careplane_local::postgres::NoTls)
        .unwrap();
    let body: String = r
        .query_one("SELECT body FROM public.x_patient_note", &[])
        .unwrap()
        .get(0);
    assert_eq!(body, "exported-row-7f3a");
}

#[test]
fn a_failed_export_leaves_no_archive() {
    let p = Platform::with_odoo(ONE);
    p.ok(&["apply"]);
    let out = p.specs.join("nope.zip");
    let run = p.run(&["export", "echo", "prod", "--out", out.to_str().unwrap()]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("careplane runs no Odoo for echo/prod"),
        "{stderr}"
    );
    assert!(!out.exists());
    // A directory is not an archive name.
    let run = p.run(&["export", "echo", "dev", "--out", p.specs.to_str().unwrap()]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("is a directory"));
    // pg_dump cannot connect (the cluster is stopped): an error naming the
    // database, and no archive, partial or not.
    p.ok(&["stop"]);
    let run = p.run(&["export", "echo", "dev", "--out", out.to_str().unwrap()]);
    assert!(!run.status.success());
    assert!(!out.exists());
    assert!(!p.specs.join("nope.zip.partial").exists());
    let mut buf = String::new();
    let _ = std::io::Cursor::new(run.stderr).read_to_string(&mut buf);
    assert!(buf.contains("echo"), "{buf}");
}

const TWO: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: echo
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
    - name: test
      kind: test
"#;

/// A copy of `zip` with `dump.sql` changed by `edit_sql` and `extra`
/// members added (written with Python's zipfile, as a foreign tool would).
fn doctored(zip: &std::path::Path, out: &std::path::Path, edit_sql: &str, extra: &[(&str, &str)]) {
    let extra = serde_json::to_string(extra).unwrap();
    let script = format!(
        "import sys, zipfile, json\n\
         src = zipfile.ZipFile(sys.argv[1])\n\
         dst = zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED)\n\
         for i in src.infolist():\n\
         \x20   data = src.read(i)\n\
         \x20   if i.filename == 'dump.sql':\n\
         \x20       data = {edit_sql}\n\
         \x20       if data is None: continue\n\
         \x20   dst.writestr(i, data)\n\
         for n, d in json.loads(sys.argv[3]): dst.writestr(n, d)\n\
         dst.close()\n"
    );
    let st = Command::new("python3")
        .args(["-c", &script])
        .arg(zip)
        .arg(out)
        .arg(extra)
        .status()
        .unwrap();
    assert!(st.success());
}

fn count_rows(p: &Platform, env: &str) -> i64 {
    tenant_client(p, "echo", env)
        .query_one("SELECT count(*) FROM public.x_patient_note", &[])
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

fn uuid(p: &Platform, env: &str) -> String {
    tenant_client(p, "echo", env)
        .query_one(
            "SELECT value FROM public.ir_config_parameter WHERE key = 'database.uuid'",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn import_replaces_an_environment_and_a_bad_archive_changes_nothing() {
    let p = Platform::with_odoo(TWO);
    p.ok(&["apply"]);
    tenant_client(&p, "echo", "dev")
        .batch_execute(
            "CREATE TABLE public.x_patient_note (id serial PRIMARY KEY, body text);
             INSERT INTO public.x_patient_note (body) VALUES ('from dev'), ('also from dev');",
        )
        .unwrap();
    tenant_client(&p, "echo", "test")
        .batch_execute(
            "CREATE TABLE public.x_patient_note (id serial PRIMARY KEY, body text);
             INSERT INTO public.x_patient_note (body) VALUES ('test only');",
        )
        .unwrap();
    let zip = p.specs.join("dev.zip");
    p.ok(&["export", "echo", "dev", "--out", zip.to_str().unwrap()]);

    // Refusals before anything changes: no --replace; no dump.sql; a member
    // that climbs out of the archive; another Odoo version; a dump that
    // fails half-way (this one after the database was moved aside).
    let run = p.run(&["import", "echo", "test", zip.to_str().unwrap()]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("pass --replace"));
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        ("no-dump", "None", vec![], "no dump.sql in it"),
        (
            "slip",
            "data",
            vec![("filestore/../../escaped.txt", "x")],
            "points outside the archive",
        ),
        (
            "v17",
            "data",
            vec![],
            "the archive is from Odoo 17.0, the environment runs Odoo 18",
        ),
        (
            "half",
            "data + b'\\nSELECT pg_catalog.no_such_function();\\n'",
            vec![],
            "loading the dump into echo-test as its tenant role failed",
        ),
    ];
    for (name, edit, extra, needle) in cases {
        let bad = p.specs.join(format!("{name}.zip"));
        doctored(&zip, &bad, edit, &extra);
        if name == "v17" {
            // Replace the manifest's version.
            let script = "import sys, zipfile, json\n\
                          src = zipfile.ZipFile(sys.argv[1]); items = [(i, src.read(i)) for i in src.infolist()]\n\
                          dst = zipfile.ZipFile(sys.argv[1], 'w')\n\
                          for i, d in items:\n\
                          \x20   if i.filename == 'manifest.json':\n\
                          \x20       m = json.loads(d); m['major_version'] = '17.0'; d = json.dumps(m)\n\
                          \x20   dst.writestr(i, d)\n\
                          dst.close()\n";
            assert!(Command::new("python3")
                .args(["-c", script])
                .arg(&bad)
                .status()
                .unwrap()
                .success());
        }
        let run = p.run(&["import", "echo", "test", bad.to_str().unwrap(), "--replace"]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert_eq!(count_rows(&p, "test"), 1, "{name}: test's data changed");
        assert!(!p.specs.join("escaped.txt").exists());
    }
    // After the failed load, Odoo serves test again and nothing is left aside.
    let st = p.json(&["status"]);
    let test = st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "test")
        .unwrap()
        .clone();
    assert_eq!(test["odooHealth"]["ok"], true, "{test}");
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());

    // The real thing: test becomes a copy of dev, with an identity of its own.
    let run = p.run(&[
        "import",
        "echo",
        "test",
        zip.to_str().unwrap(),
        "--replace",
        "--output",
        "json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["newIdentity"], true, "{report}");
    assert_eq!(report["format"], "odoo-zip");
    let previous = std::path::PathBuf::from(report["previous"].as_str().unwrap());
    assert!(previous.is_file(), "{report}");
    assert_eq!(count_rows(&p, "test"), 2);
    assert_ne!(uuid(&p, "test"), uuid(&p, "dev"));
    // dev's attachments are in test's filestore, owned by test's Odoo user.
    let dev_store = p
        .data_dir()
        .join("odoo/envs/echo/dev/data/filestore/echo-dev");
    let test_store = p
        .data_dir()
        .join("odoo/envs/echo/test/data/filestore/echo-test");
    let files: Vec<String> = tenant_client(&p, "echo", "test")
        .query(
            "SELECT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!files.is_empty());
    let owner = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().uid()
    };
    for f in &files {
        assert_eq!(
            std::fs::read(test_store.join(f)).unwrap(),
            std::fs::read(dev_store.join(f)).unwrap(),
            "{f}"
        );
        assert_eq!(owner(&test_store.join(f)), owner(&test_store), "{f}");
    }
    // Odoo answers with the imported database; careplane's admin password
    // (from `credentials`) still logs in: checked through status' health.
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }
    // The audit log has one entry per import, failed ones included.
    let log = p.json(&["audit", "log"]);
    let imports = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "import")
        .count();
    assert_eq!(imports, 5, "{log}");
}

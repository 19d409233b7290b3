//! Module install/update and database connections against a real
//! PostgreSQL (TLS required, SCRAM).

mod common;

use std::path::Path;

use common::{get, run_to_end, scalar, set, standin, write_config, PgServer};

fn sha1_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn param(c: &mut postgres::Client, key: &str) -> String {
    c.query_one(
        "SELECT value FROM ir_config_parameter WHERE key = $1",
        &[&key],
    )
    .unwrap_or_else(|e| panic!("{key}: {e}"))
    .get(0)
}

/// Runs `-c conf ARGS` to the end: (exit code, stderr).
fn odoo(work: &Path, conf: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = standin(work);
    cmd.arg("-c").arg(conf).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_to_end(cmd, work, "run")
}

#[test]
fn install_creates_odoo_tables_params_and_filestore_once() {
    let pg = PgServer::start();
    let t = pg.create_tenant("tenant_a", "");
    let work = pg.workdir("install");
    let conf = work.join("odoo.conf");
    let config = pg.config(&t, &work);
    write_config(&conf, &config);
    let rows = [("ODOO_STANDIN_ROWS_PER_MODULE", "250")];
    let init = ["-d", "tenant_a", "-i", "base,stock", "--stop-after-init"];

    let (code, stderr) = odoo(&work, &conf, &init, &rows);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("INFO tenant_a odoo.modules.loading: init db"),
        "{stderr}"
    );
    assert!(
        stderr.contains("odoo.modules.loading: Modules loaded."),
        "{stderr}"
    );

    let mut c = pg.admin("tenant_a");
    let modules: Vec<(String, String, String)> = c
        .query(
            "SELECT name, state, latest_version FROM ir_module_module ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        modules,
        [
            ("base".into(), "installed".into(), "18.0.1.0".into()),
            ("stock".into(), "installed".into(), "18.0.1.0".into())
        ]
    );
    let uuid = param(&mut c, "database.uuid");
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(&uuid[14..15], "4", "a version 4 UUID: {uuid}");
    assert!(!param(&mut c, "database.secret").is_empty());
    let created = param(&mut c, "database.create_date");
    assert_eq!(created.len(), 19, "YYYY-MM-DD HH:MM:SS: {created}");
    assert_eq!(
        param(&mut c, "web.base.url"),
        format!("http://localhost:{}", get(&config, "http_port"))
    );
    let admin: String = scalar(
        &mut c,
        "SELECT password FROM res_users WHERE login = 'admin' AND active",
    );
    assert!(admin.starts_with("$pbkdf2-sha512$25000$"), "{admin}");
    assert_eq!(
        scalar::<i64>(&mut c, "SELECT count(*) FROM standin_stock"),
        250
    );
    assert_eq!(
        scalar::<i64>(&mut c, "SELECT count(*) FROM standin_base"),
        250
    );

    // One attachment per installed module, stored by checksum.
    let filestore = work.join("data/filestore/tenant_a");
    let stored: Vec<(String, String)> = c
        .query(
            "SELECT store_fname, checksum FROM ir_attachment ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored.len(), 2);
    for (fname, checksum) in &stored {
        assert_eq!(fname, &format!("{}/{checksum}", &checksum[..2]));
        let content = std::fs::read(filestore.join(fname)).expect("filestore file");
        assert_eq!(&sha1_hex(&content), checksum);
    }

    // Again: nothing new, same identity.
    let (code, stderr) = odoo(&work, &conf, &init, &rows);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("init db"), "{stderr}");
    assert_eq!(param(&mut c, "database.uuid"), uuid);
    assert_eq!(
        scalar::<i64>(&mut c, "SELECT count(*) FROM ir_module_module"),
        2
    );
    assert_eq!(
        scalar::<i64>(
            &mut c,
            "SELECT count(*) FROM ir_config_parameter WHERE key = 'database.uuid'"
        ),
        1
    );
    assert_eq!(
        scalar::<i64>(
            &mut c,
            "SELECT count(*) FROM res_users WHERE login = 'admin'"
        ),
        1
    );
    assert_eq!(
        scalar::<i64>(&mut c, "SELECT count(*) FROM standin_stock"),
        250
    );
    assert_eq!(
        scalar::<i64>(&mut c, "SELECT count(*) FROM ir_attachment"),
        2
    );

    // -u: installed modules updated, unknown ones warned about.
    c.execute(
        "UPDATE ir_module_module SET latest_version = '17.0.1.0'",
        &[],
    )
    .unwrap();
    let (code, stderr) = odoo(
        &work,
        &conf,
        &["-u", "stock,nosuch", "--stop-after-init"],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "WARNING tenant_a odoo.modules.loading: invalid module names, ignored: nosuch"
        ),
        "{stderr}"
    );
    let version = |c: &mut postgres::Client, m: &str| -> String {
        c.query_one(
            "SELECT latest_version FROM ir_module_module WHERE name = $1",
            &[&m],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(version(&mut c, "stock"), "18.0.1.0");
    assert_eq!(version(&mut c, "base"), "17.0.1.0");
    assert_eq!(
        scalar::<i64>(
            &mut c,
            "SELECT count(*) FROM ir_module_module WHERE name = 'nosuch'"
        ),
        0
    );

    // --stop-after-init alone: connect, check, exit 0.
    let (code, stderr) = odoo(&work, &conf, &["--stop-after-init"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("Modules loaded."), "{stderr}");
}

#[test]
fn database_creation_at_start_follows_odoo() {
    let pg = PgServer::start();
    let creator = pg.create_tenant("creator", "CREATEDB");
    let plain = pg.create_tenant("plain", "");
    let work = pg.workdir("create");
    let conf = work.join("odoo.conf");

    // A role that may create databases: db_name is created and gets base.
    let mut config = pg.config(&creator, &work);
    set(&mut config, "db_name", "fresh_db");
    write_config(&conf, &config);
    let (code, stderr) = odoo(&work, &conf, &["--stop-after-init"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut c = pg.admin("fresh_db");
    assert_eq!(
        scalar::<String>(
            &mut c,
            "SELECT state FROM ir_module_module WHERE name = 'base'"
        ),
        "installed"
    );
    assert_eq!(
        scalar::<i64>(
            &mut c,
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'"
        ),
        1
    );

    // A role that may not: Odoo logs and goes on, then fails on the
    // missing database (sys.exit(-1), i.e. 255).
    let mut config = pg.config(&plain, &work);
    set(&mut config, "db_name", "missing_db");
    write_config(&conf, &config);
    let (code, stderr) = odoo(&work, &conf, &["--stop-after-init"], &[]);
    assert!(
        stderr
            .contains("Could not determine if database missing_db exists, skipping auto-creation"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "CRITICAL missing_db odoo.service.server: Failed to initialize database `missing_db`."
        ),
        "{stderr}"
    );
    assert_eq!(code, Some(255), "{stderr}");

    // Like Odoo, the stand-in needs the `postgres` maintenance database.
    pg.admin("postgres")
        .batch_execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
        .unwrap();
    let config = pg.config(&plain, &work);
    write_config(&conf, &config);
    let (code, stderr) = odoo(&work, &conf, &["--stop-after-init"], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Traceback"), "{stderr}");
    assert!(
        stderr.contains("permission denied for database"),
        "{stderr}"
    );
}

#[test]
fn tls_modes_and_password_sources() {
    let pg = PgServer::start();
    let t = pg.create_tenant("tenant_a", "");
    let work = pg.workdir("tls");
    let conf = work.join("odoo.conf");
    let other_ca = common::Ca::new("some other CA");
    let other_ca_file = work.join("other-ca.crt");
    std::fs::write(&other_ca_file, &other_ca.cert_pem).unwrap();
    let ca = pg.ca_file.to_str().unwrap();
    let other = other_ca_file.to_str().unwrap();

    let check = |changes: &[(&str, &str)], env: &[(&str, &str)]| {
        let mut config = pg.config(&t, &work);
        for (k, v) in changes {
            set(&mut config, k, v);
        }
        write_config(&conf, &config);
        odoo(&work, &conf, &["--stop-after-init"], env)
    };
    // Reaching the tenant database shows in this error line.
    let reached = "Database tenant_a not initialized, you can force it with `-i base`";

    // require over TLS (the server rejects plain TCP), password from the file.
    let (code, stderr) = check(&[("db_sslmode", "require")], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(reached), "{stderr}");

    // db_password = False: PGPASSWORD is used, as libpq does.
    let (code, stderr) = check(&[("db_password", "False")], &[("PGPASSWORD", &t.password)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(reached), "{stderr}");
    let (code, stderr) = check(&[("db_password", "False")], &[]);
    assert_eq!(code, Some(1), "no password at all: {stderr}");

    // A wrong password: error on stderr, exit 1.
    let (code, stderr) = check(&[("db_password", "wrong")], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("psycopg2.OperationalError"), "{stderr}");
    assert!(
        stderr.contains("password authentication failed for user \"tenant_a\""),
        "{stderr}"
    );

    // verify-full / verify-ca against PGSSLROOTCERT.
    for mode in ["verify-full", "verify-ca"] {
        let (code, stderr) = check(&[("db_sslmode", mode)], &[("PGSSLROOTCERT", ca)]);
        assert_eq!(code, Some(0), "{mode}: {stderr}");
        let (code, stderr) = check(&[("db_sslmode", mode)], &[("PGSSLROOTCERT", other)]);
        assert_eq!(code, Some(1), "{mode} with the wrong CA: {stderr}");
        assert!(stderr.contains("certificate"), "{stderr}");
    }
    let (code, stderr) = check(
        &[("db_sslmode", "verify-full"), ("db_host", "localhost")],
        &[("PGSSLROOTCERT", ca)],
    );
    assert_eq!(code, Some(0), "verify-full by host name: {stderr}");

    // verify-* without a root certificate fails like libpq.
    let (code, stderr) = check(&[("db_sslmode", "verify-full")], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("root.crt\" does not exist"), "{stderr}");

    // Like libpq, an existing root certificate makes require verify the chain.
    let (code, stderr) = check(&[("db_sslmode", "require")], &[("PGSSLROOTCERT", other)]);
    assert_eq!(code, Some(1), "{stderr}");

    // prefer/allow reach the TLS-only server; disable is rejected by it.
    for mode in ["prefer", "allow"] {
        let (code, stderr) = check(&[("db_sslmode", mode)], &[]);
        assert_eq!(code, Some(0), "{mode}: {stderr}");
    }
    let (code, stderr) = check(&[("db_sslmode", "disable")], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no encryption"), "{stderr}");
}

//! A shared PostgreSQL cluster with two tenants, against a real server:
//! tenant isolation, TLS-only access and the hardening settings.

use careplane_local::pg::{self, TenantDb};
use careplane_local::postgres::{self, config::SslMode, NoTls};
use careplane_local::testing::{self, TestPlatform};
use careplane_local::ExposeSecret;

fn tenant(db: &str, role: &str) -> TenantDb {
    TenantDb {
        database: db.into(),
        role: role.into(),
        password: testing::password(),
        connection_limit: Some(20),
        former_roles: Vec::new(),
    }
}

fn show(client: &mut postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .unwrap_or_else(|e| panic!("SHOW {setting}: {e}"))
        .get(0)
}

#[test]
fn shared_cluster_isolates_tenants_and_is_hardened() {
    let platform = TestPlatform::new();
    let pg = platform.start_pg("shared");
    let a = tenant("stmarys-prod", "stmarys-prod");
    let b = tenant("northside-prod", "northside-prod");
    pg.ensure_tenant_database(&a).unwrap();
    pg.ensure_tenant_database(&b).unwrap();
    pg.write_hba(&[
        (a.database.clone(), a.role.clone()),
        (b.database.clone(), b.role.clone()),
    ])
    .unwrap();
    let ca = &platform.ca.cert_pem;

    // A reaches its own database over verified TLS.
    let mut conn_a = pg::connect_tenant(pg.port, &a.database, &a.role, &a.password, ca)
        .unwrap_or_else(|e| panic!("tenant A must connect to its database: {e}"));
    let row = conn_a
        .query_one(
            "SELECT current_user::text, current_database()::text, \
             (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), a.role);
    assert_eq!(row.get::<_, String>(1), a.database);
    assert!(row.get::<_, bool>(2), "the session must be encrypted");

    // A cannot reach B's database: pg_hba has no line for that pair.
    let err = testing::refused(
        pg::connect_tenant(pg.port, &b.database, &a.role, &a.password, ca),
        "tenant A connecting to tenant B's database",
    );
    assert!(err.contains("pg_hba.conf"), "rejected by pg_hba: {err}");

    // The maintenance database is reachable (Odoo checks its database
    // there at start), but creating anything in it is not.
    let mut maint = pg::connect_tenant(pg.port, "postgres", &a.role, &a.password, ca).unwrap();
    assert!(maint
        .batch_execute("CREATE TABLE public.leak (x int)")
        .is_err());
    drop(maint);

    // Plain-text TCP is refused even with the right password.
    let err = testing::refused(
        postgres::Config::new()
            .host("127.0.0.1")
            .port(pg.port)
            .user(&a.role)
            .password(a.password.expose_secret())
            .dbname(&a.database)
            .ssl_mode(SslMode::Disable)
            .connect(NoTls),
        "a non-TLS connection",
    );
    assert!(err.contains("no encryption"), "{err}");

    // Wrong password.
    let wrong = testing::password();
    let err = testing::refused(
        pg::connect_tenant(pg.port, &a.database, &a.role, &wrong, ca),
        "a wrong password",
    );
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains(wrong.expose_secret()));

    // A server certificate from another CA is not trusted (verify-full).
    let other_ca = careplane_local::pki::generate_ca("other").unwrap();
    assert!(pg::connect_tenant(
        pg.port,
        &a.database,
        &a.role,
        &a.password,
        &other_ca.cert_pem
    )
    .is_err());

    // The admin role is socket-only: no TCP line names it.
    assert!(
        pg::connect_tenant(pg.port, "postgres", pg::ADMIN_ROLE, &pg.admin_password, ca).is_err()
    );

    // Tenant privileges.
    let row = conn_a
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolconnlimit \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap();
    for (i, attr) in [
        "superuser",
        "createdb",
        "createrole",
        "replication",
        "bypassrls",
    ]
    .iter()
    .enumerate()
    {
        assert!(!row.get::<_, bool>(i), "tenant role must not have {attr}");
    }
    assert_eq!(row.get::<_, i32>(5), 20);
    let err = conn_a.batch_execute("CREATE DATABASE sneaky").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    let err = conn_a.batch_execute("CREATE ROLE sneaky").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    assert!(conn_a.batch_execute("ALTER SYSTEM SET ssl = off").is_err());
    // The tenant owns its schema and can build its application there.
    conn_a
        .batch_execute("CREATE TABLE public.patients (id serial primary key, name text)")
        .unwrap();

    // Privileges as the catalog states them (careplane's superuser never
    // enters a tenant's database): nobody else may create in or connect to it.
    let mut admin_a = pg::connect_tenant(pg.port, &a.database, &a.role, &a.password, ca).unwrap();
    let row = admin_a
        .query_one(
            "SELECT has_schema_privilege('public', 'public', 'CREATE'), \
                    has_schema_privilege($1, 'public', 'CREATE'), \
                    has_database_privilege($1, current_database(), 'CONNECT'), \
                    has_database_privilege('public', current_database(), 'CONNECT'), \
                    (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public')",
            &[&b.role],
        )
        .unwrap();
    assert!(
        !row.get::<_, bool>(0),
        "PUBLIC must not create in A's schema public"
    );
    assert!(
        !row.get::<_, bool>(1),
        "B must not create in A's schema public"
    );
    assert!(
        !row.get::<_, bool>(2),
        "B must not have CONNECT on A's database"
    );
    assert!(
        !row.get::<_, bool>(3),
        "PUBLIC must not have CONNECT on A's database"
    );
    assert_eq!(row.get::<_, String>(4), format!("\"{}\"", a.role));

    // Hardening settings.
    let mut admin = pg.admin().unwrap();
    assert_eq!(show(&mut admin, "data_checksums"), "on");
    assert_eq!(show(&mut admin, "listen_addresses"), "127.0.0.1");
    assert_eq!(show(&mut admin, "password_encryption"), "scram-sha-256");
    assert_eq!(show(&mut admin, "ssl"), "on");
    assert_eq!(show(&mut admin, "ssl_min_protocol_version"), "TLSv1.2");
    assert_eq!(show(&mut admin, "log_connections"), "on");
    assert_eq!(show(&mut admin, "log_statement"), "ddl");
    assert_eq!(show(&mut admin, "unix_socket_permissions"), "0700");
    assert_eq!(show(&mut admin, "shared_buffers"), "32MB");
    assert_eq!(
        show(&mut admin, "hba_file"),
        pg.hba_path().display().to_string()
    );

    // The hba file holds exactly the admin socket line and, per tenant and
    // address, one hostssl line to its database and one to `postgres`.
    let hba = std::fs::read_to_string(pg.hba_path()).unwrap();
    let rules: Vec<&str> = hba
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(rules.len(), 9, "{hba}");
    assert!(
        rules
            .iter()
            .all(|l| l.starts_with("hostssl") || l.starts_with("local")),
        "{hba}"
    );

    // The server is not reachable on a non-loopback address of this machine.
    if let Some(ip) = non_loopback_ipv4() {
        assert!(
            std::net::TcpStream::connect_timeout(
                &(ip, pg.port).into(),
                std::time::Duration::from_secs(2)
            )
            .is_err(),
            "PostgreSQL must not listen on {ip}"
        );
    }
}

/// This machine's first non-loopback IPv4 address, if any (from the routing
/// decision for an arbitrary destination; no packet is sent by a UDP connect).
fn non_loopback_ipv4() -> Option<std::net::IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A superuser connection into `database` over the cluster's socket: test
/// code reading (and, for the old-template case, planting) catalog state.
/// careplane itself never does this in a database a tenant owns.
fn admin_in(pg: &pg::PgCluster, database: &str) -> postgres::Client {
    postgres::Config::new()
        .host_path(pg.socket_dir())
        .port(pg.port)
        .user(pg::ADMIN_ROLE)
        .password(pg.admin_password.expose_secret())
        .dbname(database)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("admin into {database}: {e}"))
}

/// The hidden relations and functions PUBLIC can still use in the connected
/// database (empty when the catalog is hidden there).
fn still_public(c: &mut postgres::Client) -> Vec<String> {
    let relations: Vec<&str> = pg::HIDDEN_CATALOG_RELATIONS.to_vec();
    let functions: Vec<&str> = pg::HIDDEN_CATALOG_FUNCTIONS.to_vec();
    let mut open: Vec<String> = c
        .query(
            "SELECT r FROM unnest($1::text[]) r \
             WHERE has_table_privilege('public', to_regclass('pg_catalog.' || r), 'SELECT')",
            &[&relations],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    open.extend(
        c.query(
            "SELECT f FROM unnest($1::text[]) f \
             WHERE has_function_privilege('public', to_regprocedure('pg_catalog.' || f), 'EXECUTE')",
            &[&functions],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0)),
    );
    open
}

/// Issue 14.8: on a shared cluster no tenant reads the other databases'
/// names from the catalog, in its own database (new, cloned from a template
/// made by this or an earlier careplane) or in `postgres`; `template1` and
/// copies made with `CREATE DATABASE ... TEMPLATE` are hidden too. What a
/// tenant's Odoo reads of its own database still works.
#[test]
fn tenants_cannot_read_other_databases_names() {
    let platform = TestPlatform::new();
    let pg = platform.start_pg("shared");
    let ca = &platform.ca.cert_pem;
    let a = tenant("stmarys-prod", "stmarys-prod");
    // A role name differing from its database: role names cannot be hidden
    // (any role's oid casts to `regrole`, printed without a privilege
    // check), database names can.
    let b = tenant("northside-prod", "ns-role");
    pg.ensure_tenant_database(&a).unwrap();
    pg.ensure_tenant_database(&b).unwrap();

    // A template as an earlier careplane left it: catalog readable inside.
    let tpl = tenant("tpl-odoo18-x", "tpl-odoo18-x");
    pg.ensure_tenant_database(&tpl).unwrap();
    admin_in(&pg, &tpl.database)
        .batch_execute(
            "GRANT SELECT ON pg_catalog.pg_database, pg_catalog.pg_stat_activity TO PUBLIC; \
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_describe_object(oid, oid, integer) TO PUBLIC",
        )
        .unwrap();
    let open = still_public(&mut admin_in(&pg, &tpl.database));
    assert!(open.iter().any(|r| r == "pg_database"), "{open:?}");
    pg.seal_template(&tpl.database).unwrap();
    let clone = tenant("northside-dev", "northside-dev");
    pg.ensure_tenant_role(&clone).unwrap();
    pg.clone_database(&tpl.database, &tpl.role, &clone, false, &|_| {})
        .unwrap();
    pg.ensure_tenant_database(&clone).unwrap();
    pg.write_hba(&[
        (a.database.clone(), a.role.clone()),
        (b.database.clone(), b.role.clone()),
        (clone.database.clone(), clone.role.clone()),
    ])
    .unwrap();

    // B is connected and has written about itself where its owner may.
    let mut conn_b = pg::connect_tenant(pg.port, &b.database, &b.role, &b.password, ca).unwrap();
    conn_b
        .batch_execute(
            "COMMENT ON DATABASE \"northside-prod\" IS 'northside-prod hospital'; \
             ALTER DATABASE \"northside-prod\" SET application_name = 'northside-prod'",
        )
        .unwrap();
    let _b_in_postgres = pg::connect_tenant(pg.port, "postgres", &b.role, &b.password, ca).unwrap();

    for (who, database) in [
        (&a, a.database.as_str()),
        (&a, "postgres"),
        (&clone, clone.database.as_str()),
    ] {
        let mut c = pg::connect_tenant(pg.port, database, &who.role, &who.password, ca)
            .unwrap_or_else(|e| panic!("{} into {database}: {e}", who.role));
        for probe in [
            "SELECT datname::text FROM pg_catalog.pg_database",
            "SELECT datname::text FROM pg_catalog.pg_stat_activity",
            "SELECT datname::text FROM pg_catalog.pg_stat_database",
            "SELECT description FROM pg_catalog.pg_shdescription",
            "SELECT setconfig::text FROM pg_catalog.pg_db_role_setting",
            "SELECT pg_catalog.pg_describe_object(1262, d, 0) \
             FROM pg_catalog.generate_series(1, 70000) d",
        ] {
            let err = c
                .query(probe, &[])
                .map(|rows| format!("{} rows", rows.len()))
                .expect_err(&format!("{} in {database}: {probe}", who.role));
            assert_eq!(
                err.code().map(|c| c.code()),
                Some("42501"),
                "{} in {database}: {probe}: {err}",
                who.role
            );
        }
        // What Odoo reads of its own database still answers.
        let row = c
            .query_one(
                "SELECT current_database()::text, \
                 (SELECT count(*) FROM information_schema.tables), \
                 (SELECT count(*) FROM pg_catalog.pg_indexes)",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), database);
    }
    drop(conn_b);

    // Catalog privileges are per database: every one careplane made or may
    // enter is hidden, and a template copy takes its template's.
    admin_in(&pg, "postgres")
        .batch_execute("CREATE DATABASE rawcopy TEMPLATE \"stmarys-prod\"")
        .unwrap();
    for database in [
        "postgres",
        "template1",
        "stmarys-prod",
        "northside-prod",
        "northside-dev",
        "rawcopy",
    ] {
        let open = still_public(&mut admin_in(&pg, database));
        assert!(open.is_empty(), "{database}: PUBLIC still reads {open:?}");
    }
    // Converging again changes nothing.
    pg.ensure_tenant_database(&a).unwrap();
    pg.hide_catalog().unwrap();
}

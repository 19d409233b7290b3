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

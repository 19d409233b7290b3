//! Lifecycle of real PostgreSQL clusters: idempotent re-runs, crash recovery,
//! independent dedicated clusters, and secrets never reaching disk.

use careplane_local::pg::{self, TenantDb};
use careplane_local::testing::{self, TestPlatform};
use careplane_local::{system, ExposeSecret, LocalError};

fn tenant(db: &str) -> TenantDb {
    TenantDb {
        database: db.into(),
        role: db.into(),
        password: testing::password(),
        connection_limit: None,
        former_roles: Vec::new(),
    }
}

#[test]
fn provisioning_is_idempotent_and_keeps_secrets_off_disk() {
    let platform = TestPlatform::new();
    let pg = platform.start_pg("idem");
    let tls = platform.tls_files();

    // init and start again on a running cluster: no error, same postmaster.
    let pid = pg.running_pid().expect("running after start");
    if let Some(u) = &pg.user {
        // Running as root: the postmaster runs as the service user with only its primary group.
        assert_eq!(testing::process_ids(pid), Some((u.uid, vec![u.gid])));
    }
    pg.init(&tls).unwrap();
    pg.init(&tls).unwrap();
    assert_eq!(pg.start().unwrap(), pid);
    assert_eq!(pg.start().unwrap(), pid);

    let mut t = tenant("clinic-a");
    let pairs = [(t.database.clone(), t.role.clone())];
    for _ in 0..2 {
        pg.ensure_tenant_database(&t).unwrap();
        pg.write_hba(&pairs).unwrap();
        pg.write_hba(&pairs).unwrap();
    }
    assert_eq!(pg.databases().unwrap(), vec!["clinic-a".to_string()]);
    let mut admin = pg.admin().unwrap();
    let roles: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&t.role],
        )
        .unwrap()
        .get(0);
    assert_eq!(roles, 1);
    let hba = std::fs::read_to_string(pg.hba_path()).unwrap();
    assert_eq!(
        hba.matches("hostssl").count(),
        4,
        "one line per address to the database and to `postgres`: {hba}"
    );
    assert!(!hba.lines().any(|l| l.starts_with("host ")), "{hba}");

    let ca = &platform.ca.cert_pem;
    assert!(
        !pg.tenant_database_has_data(&t, ca).unwrap(),
        "fresh database has no data"
    );
    {
        let mut c = pg::connect_tenant(pg.port, &t.database, &t.role, &t.password, ca).unwrap();
        c.batch_execute(
            "CREATE TABLE res_partner (id serial PRIMARY KEY, name text); \
                         INSERT INTO res_partner (name) VALUES ('Jane')",
        )
        .unwrap();
    }
    assert!(pg.tenant_database_has_data(&t, ca).unwrap());
    let mut absent = t.clone();
    absent.database = "no-such-db".into();
    assert!(!pg.tenant_database_has_data(&absent, ca).unwrap());
    pg::check_tenant(pg.port, &t.database, &t.role, &t.password, ca).unwrap();
    let wrong = testing::password();
    let err = pg::check_tenant(pg.port, &t.database, &t.role, &wrong, ca)
        .unwrap_err()
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");

    // A password change converges: the old one stops working, the new one works.
    let old = t.password.clone();
    t.password = testing::password();
    pg.ensure_tenant_database(&t).unwrap();
    assert!(pg::connect_tenant(pg.port, &t.database, &t.role, &old, ca).is_err());
    let mut c = pg::connect_tenant(pg.port, &t.database, &t.role, &t.password, ca).unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM res_partner", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "re-ensuring must not touch existing data");

    // Secrets: neither the tenant passwords nor the admin password nor a SCRAM
    // verifier appear in any file under the cluster root (logs, configs, data).
    for secret in [&old, &t.password, &pg.admin_password] {
        let hit = testing::find_in_files(&pg.root, secret.expose_secret());
        assert!(hit.is_none(), "a password was written to {hit:?}");
    }
    let hit = testing::find_in_files(&pg.log_dir(), "SCRAM-SHA-256$");
    assert!(hit.is_none(), "a SCRAM verifier was logged in {hit:?}");
    // ... while the logs do record connections and tenant DDL (so grepping them means something).
    let log = std::fs::read_to_string(pg.latest_log()).unwrap();
    assert!(log.contains("connection authorized"), "{log}");
    assert!(log.contains("CREATE TABLE res_partner"), "{log}");

    // The key and configs are private to the service user.
    use std::os::unix::fs::MetadataExt;
    for f in ["tls/server.key", "conf/careplane.conf", "conf/pg_hba.conf"] {
        let meta = std::fs::metadata(pg.root.join(f)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{f}");
        if let Some(user) = &pg.user {
            assert_eq!(meta.uid(), user.uid, "{f} owned by the service user");
        }
    }
    assert_eq!(std::fs::metadata(&pg.root).unwrap().mode() & 0o777, 0o700);

    // Dropping twice is fine, and the tenant is gone afterwards.
    drop(c);
    pg.drop_tenant_database(&t.database, &t.role).unwrap();
    pg.drop_tenant_database(&t.database, &t.role).unwrap();
    assert!(pg.databases().unwrap().is_empty());
    let roles: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&t.role],
        )
        .unwrap()
        .get(0);
    assert_eq!(roles, 0);
    assert!(pg::connect_tenant(pg.port, &t.database, &t.role, &t.password, ca).is_err());

    // Stop is idempotent too.
    drop(admin);
    pg.stop().unwrap();
    pg.stop().unwrap();
    assert!(pg.running_pid().is_none());
    assert!(!system::pid_alive(pid));
}

#[test]
fn dedicated_clusters_are_independent() {
    let platform = TestPlatform::new();
    let one = platform.start_pg("dedicated-one");
    let two = platform.start_pg("dedicated-two");
    let ca = &platform.ca.cert_pem;
    let (t1, t2) = (tenant("one"), tenant("two"));
    for (pg, t) in [(&one, &t1), (&two, &t2)] {
        pg.ensure_tenant_database(t).unwrap();
        pg.write_hba(&[(t.database.clone(), t.role.clone())])
            .unwrap();
        let mut c = pg::connect_tenant(pg.port, &t.database, &t.role, &t.password, ca).unwrap();
        c.batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
            .unwrap();
    }
    assert_ne!(one.port, two.port);
    // A tenant of one cluster does not exist in the other.
    assert!(pg::connect_tenant(two.port, &t1.database, &t1.role, &t1.password, ca).is_err());

    one.stop().unwrap();
    assert!(one.running_pid().is_none());
    assert!(pg::connect_tenant(one.port, &t1.database, &t1.role, &t1.password, ca).is_err());
    let mut c = pg::connect_tenant(two.port, &t2.database, &t2.role, &t2.password, ca)
        .unwrap_or_else(|e| panic!("the other cluster must keep answering: {e}"));
    let v: i32 = c.query_one("SELECT v FROM kept", &[]).unwrap().get(0);
    assert_eq!(v, 42);

    // Restarting brings the data back.
    one.start().unwrap();
    let mut c = pg::connect_tenant(one.port, &t1.database, &t1.role, &t1.password, ca).unwrap();
    let v: i32 = c.query_one("SELECT v FROM kept", &[]).unwrap().get(0);
    assert_eq!(v, 42);
}

#[test]
fn recovers_from_crashes() {
    let platform = TestPlatform::new();
    let cluster = platform.pg_cluster("crashy");
    let pg = platform.guard_pg(cluster);
    let tls = platform.tls_files();

    // A killed initdb left a non-empty data directory (even with PG_VERSION)
    // and no completion marker: init wipes it and starts over.
    std::fs::create_dir_all(pg.data_dir().join("base")).unwrap();
    std::fs::write(pg.data_dir().join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(pg.data_dir().join("base/garbage"), "half-written").unwrap();
    pg.init(&tls).unwrap();
    assert!(!pg.data_dir().join("base/garbage").exists());
    let first = pg.start().unwrap();

    let t = tenant("survivor");
    pg.ensure_tenant_database(&t).unwrap();
    pg.write_hba(&[(t.database.clone(), t.role.clone())])
        .unwrap();
    let ca = &platform.ca.cert_pem;
    pg::connect_tenant(pg.port, &t.database, &t.role, &t.password, ca)
        .unwrap()
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        .unwrap();

    // kill -9 the postmaster: a stale postmaster.pid stays behind.
    // SAFETY: plain kill(2) of the postmaster this test started.
    assert_eq!(
        unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) },
        0
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while system::pid_alive(first) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(pg.running_pid().is_none());
    assert!(pg.data_dir().join("postmaster.pid").exists());

    // Re-running the whole sequence converges.
    pg.init(&tls).unwrap();
    let second = pg.start().unwrap();
    assert_ne!(first, second);
    pg.ensure_tenant_database(&t).unwrap();
    pg.write_hba(&[(t.database.clone(), t.role.clone())])
        .unwrap();
    let v: i32 = pg::connect_tenant(pg.port, &t.database, &t.role, &t.password, ca)
        .unwrap()
        .query_one("SELECT v FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, 7);

    // A started data directory is never wiped, even if the marker is lost.
    pg.stop().unwrap();
    std::fs::remove_file(pg.root.join("conf/initdb-complete")).unwrap();
    let err = pg.init(&tls).unwrap_err().to_string();
    assert!(err.contains("refusing to wipe"), "{err}");
    assert!(pg.data_dir().join("PG_VERSION").exists());

    // Binaries of another major version are refused with a clear message.
    std::fs::write(pg.root.join("conf/initdb-complete"), "restored\n").unwrap();
    let mut other = pg.cluster.clone();
    other.bin.major_version += 1;
    let err = other.start().unwrap_err().to_string();
    assert!(err.contains("pg_upgrade"), "{err}");
}

#[test]
fn refuses_hardening_overrides_before_touching_disk() {
    let platform = TestPlatform::new();
    let mut cluster = platform.pg_cluster("strict");
    cluster.settings.insert("ssl".into(), "off".into());
    let err = cluster.init(&platform.tls_files()).unwrap_err();
    assert!(
        matches!(err, LocalError::ForbiddenSetting { ref key, .. } if key == "ssl"),
        "{err}"
    );
    assert!(!cluster.root.exists());

    // Allowed operator settings do apply.
    cluster.settings.clear();
    cluster.settings.insert("work_mem".into(), "8MB".into());
    let pg = platform.guard_pg(cluster);
    pg.init(&platform.tls_files()).unwrap();
    pg.start().unwrap();
    let v: String = pg
        .admin()
        .unwrap()
        .query_one("SHOW work_mem", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "8MB");
}

#[test]
fn explains_untraversable_parents_and_startup_failures() {
    let platform = TestPlatform::new();
    if platform.user.is_some() {
        // As root the server runs as the service user, which cannot enter a 0700 root-owned dir.
        use std::os::unix::fs::PermissionsExt;
        let private = platform.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut cluster = platform.pg_cluster("hidden");
        cluster.root = private.join("pg-hidden");
        let err = cluster.init(&platform.tls_files()).unwrap_err();
        assert!(matches!(err, LocalError::NotTraversable { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod o+x {}", private.display())),
            "{msg}"
        );
        // careplane did not chmod the directory itself.
        assert_eq!(
            std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    // A port already taken: start fails and says why, with the server's own words.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cluster = platform.pg_cluster("squatted");
    cluster.port = squatter.local_addr().unwrap().port();
    let pg = platform.guard_pg(cluster);
    pg.init(&platform.tls_files()).unwrap();
    let err = pg.start().unwrap_err().to_string();
    assert!(err.contains("PostgreSQL cluster squatted"), "{err}");
    assert!(
        err.contains("could not bind") || err.contains("Address already in use"),
        "{err}"
    );
    assert!(!err.contains(pg.admin_password.expose_secret()));
}

/// A role made under an older name (`<tenant>-<env>`) is renamed, not
/// duplicated: the database stays its, its password still works under the
/// new name, the old name is gone, and dropping removes whichever exists.
#[test]
fn a_former_role_name_is_renamed_in_place() {
    let platform = TestPlatform::new();
    let pg = platform.start_pg("rename");
    let ca = &platform.ca.cert_pem;
    let old = tenant("clinic-b");
    pg.ensure_tenant_database(&old).unwrap();
    let new = TenantDb {
        role: "r0123456789abcdef01234567".into(),
        password: old.password.clone(),
        former_roles: vec![old.role.clone()],
        ..tenant("clinic-b")
    };
    for _ in 0..2 {
        pg.ensure_tenant_database(&new).unwrap();
    }
    pg.write_hba(&[(new.database.clone(), new.role.clone())])
        .unwrap();
    let mut admin = pg.admin().unwrap();
    let names: Vec<String> = admin
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname IN ($1, $2)",
            &[&old.role, &new.role],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec![new.role.clone()]);
    assert_eq!(
        pg.database_state(&new.database).unwrap(),
        pg::DatabaseState::Open {
            owner: new.role.clone()
        }
    );
    let mut c = pg::connect_tenant(pg.port, &new.database, &new.role, &new.password, ca)
        .expect("the renamed role logs in with its password");
    let me: String = c
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(me, new.role);
    drop(c);
    pg.drop_tenant_database_and_roles(&new.database, &[&new.role, &old.role])
        .unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ($1, $2)",
            &[&old.role, &new.role],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

//! Real Redis servers: ACL isolation between tenants, disabled default user,
//! no plaintext passwords on disk, ACL reloads and persistence per role.

use careplane_local::redis::{self, AclUser, Persistence};
use careplane_local::redis_client::{self, Commands, Connection, RedisResult};
use careplane_local::testing::{self, TestPlatform};
use careplane_local::ExposeSecret;

fn user(name: &str, prefix: &str) -> AclUser {
    AclUser {
        name: name.into(),
        password: testing::password(),
        key_prefix: prefix.into(),
    }
}

/// Runs a raw command and returns the error text (panics if it succeeded).
fn denied(conn: &mut Connection, args: &[&str]) -> String {
    let mut cmd = redis_client::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let result: RedisResult<redis_client::Value> = cmd.query(conn);
    match result {
        Ok(v) => panic!("{args:?} must be refused, got {v:?}"),
        // The client renders server error codes in its own case ("NoPerm").
        Err(e) => e.to_string().to_uppercase(),
    }
}

#[test]
fn tenants_are_isolated_by_acl() {
    let platform = TestPlatform::new();
    let a = user("stmarys-prod", "a:prod:");
    let b = user("northside-prod", "b:prod:");
    let server = platform.start_redis("cache", Persistence::None, &[a.clone(), b.clone()]);

    // Idempotent: writing the config and starting again changes nothing.
    let pid = server.running_pid().unwrap();
    if let Some(u) = &server.user {
        // Running as root: the server runs as the service user with only its primary group.
        assert_eq!(testing::process_ids(pid), Some((u.uid, vec![u.gid])));
    }
    server.write_config(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(server.start().unwrap(), pid);

    let mut ca = redis::connect_user(server.port, &a.name, &a.password).unwrap();
    let _: () = ca.set("a:prod:x", "hello").unwrap();
    let v: String = ca.get("a:prod:x").unwrap();
    assert_eq!(v, "hello");
    let _: () = ca.hset("a:prod:session:1", "uid", 7).unwrap();
    let _: () = ca.expire("a:prod:session:1", 60).unwrap();

    // Other tenants' keys are out of reach.
    let mut cb = redis::connect_user(server.port, &b.name, &b.password).unwrap();
    let _: () = cb.set("b:prod:x", "secret-b").unwrap();
    for args in [
        &["GET", "b:prod:x"][..],
        &["SET", "b:prod:x", "overwritten"],
        &["DEL", "b:prod:x"],
        &["GET", "unprefixed"],
        &["MGET", "a:prod:x", "b:prod:x"],
    ] {
        let err = denied(&mut ca, args);
        assert!(err.contains("NOPERM"), "{args:?}: {err}");
    }
    let v: String = cb.get("b:prod:x").unwrap();
    assert_eq!(v, "secret-b");

    // Server-wide and key-enumerating commands are refused.
    for args in [
        &["FLUSHALL"][..],
        &["FLUSHDB"],
        &["CONFIG", "GET", "*"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["RANDOMKEY"],
        &["DBSIZE"],
        &["PUBSUB", "CHANNELS"],
        &["ACL", "LIST"],
        &["CLIENT", "LIST"],
        &["SHUTDOWN"],
        &["MONITOR"],
        &["EVAL", "return 1", "0"],
        &["SWAPDB", "0", "1"],
    ] {
        let err = denied(&mut ca, args);
        assert!(err.contains("NOPERM"), "{args:?}: {err}");
    }
    // DEBUG is disabled server-wide (enable-debug-command no), even for the admin.
    let err = denied(&mut ca, &["DEBUG", "SLEEP", "0"]);
    assert!(
        err.contains("NOPERM") || err.contains("NOT ALLOWED"),
        "{err}"
    );
    let err = denied(&mut server.admin().unwrap(), &["DEBUG", "SLEEP", "0"]);
    assert!(err.contains("NOT ALLOWED"), "{err}");
    // Pub/sub only on the tenant's channels.
    let n: i64 = ca.publish("a:prod:events", "hi").unwrap();
    assert_eq!(n, 0);
    let err = denied(&mut ca, &["PUBLISH", "b:prod:events", "hi"]);
    assert!(err.contains("NOPERM"), "{err}");

    // No access without authentication: the default user is off.
    let anon = redis_client::Client::open(format!("redis://127.0.0.1:{}/", server.port)).unwrap();
    match anon.get_connection() {
        Ok(mut conn) => {
            let err = denied(&mut conn, &["GET", "a:prod:x"]);
            assert!(err.contains("NOAUTH"), "{err}");
            let err = denied(&mut conn, &["AUTH", "default", "anything"]);
            assert!(
                err.contains("WRONGPASS") || err.contains("DISABLED"),
                "{err}"
            );
        }
        Err(e) => assert!(e.to_string().to_uppercase().contains("NOAUTH"), "{e}"),
    }
    // Wrong password, and a password for another user.
    let wrong = testing::password();
    let err = testing::refused(
        redis::connect_user(server.port, &a.name, &wrong),
        "wrong password",
    );
    assert!(!err.contains(wrong.expose_secret()));
    assert!(redis::connect_user(server.port, &a.name, &b.password).is_err());

    // Files: no plaintext password, hashes present, private modes.
    let acl = std::fs::read_to_string(server.acl_path()).unwrap();
    for secret in [&a.password, &b.password, &server.admin_password] {
        assert!(testing::find_in_files(&server.root, secret.expose_secret()).is_none());
    }
    assert!(acl.contains(&format!(
        "#{}",
        redis::sha256_hex(a.password.expose_secret())
    )));
    use std::os::unix::fs::MetadataExt;
    for f in [server.acl_path(), server.config_path()] {
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{}", f.display());
        if let Some(u) = &server.user {
            assert_eq!(meta.uid(), u.uid, "{}", f.display());
        }
    }

    // Loopback only.
    let mut admin = server.admin().unwrap();
    let bind: Vec<String> = redis_client::cmd("CONFIG")
        .arg("GET")
        .arg("bind")
        .query(&mut admin)
        .unwrap();
    assert_eq!(bind[1], "127.0.0.1");

    // ACL changes apply without a restart: add C, remove B.
    let c = user("eastside-prod", "c:prod:");
    server.write_config(&[a.clone(), c.clone()]).unwrap();
    server.reload_acl().unwrap();
    server.reload_acl().unwrap();
    assert_eq!(
        server.tenant_users().unwrap(),
        vec![c.name.clone(), a.name.clone()]
    );
    redis::check_user(server.port, &c.name, &c.password).unwrap();
    assert!(redis::check_user(server.port, &b.name, &b.password).is_err());
    let mut cc = redis::connect_user(server.port, &c.name, &c.password).unwrap();
    let _: () = cc.set("c:prod:k", 1).unwrap();
    assert!(redis::connect_user(server.port, &b.name, &b.password).is_err());
    assert_eq!(server.running_pid(), Some(pid));

    server.stop().unwrap();
    server.stop().unwrap();
    assert!(server.running_pid().is_none());
}

#[test]
fn append_only_keeps_data_across_restart_and_cache_does_not() {
    let platform = TestPlatform::new();
    let t = user("stmarys-prod", "stmarys:production:");
    let sessions = platform.start_redis(
        "sessions",
        Persistence::AppendOnly,
        std::slice::from_ref(&t),
    );
    let cache = platform.start_redis("cache", Persistence::None, std::slice::from_ref(&t));

    for server in [&sessions, &cache] {
        let mut conn = redis::connect_user(server.port, &t.name, &t.password).unwrap();
        let _: () = conn
            .set("stmarys:production:session:abc", "logged-in")
            .unwrap();
    }
    for server in [&sessions, &cache] {
        let old = server.running_pid().unwrap();
        server.stop().unwrap();
        assert!(server.running_pid().is_none());
        assert!(!careplane_local::system::pid_alive(old));
        let new = server.start().unwrap();
        assert_ne!(old, new);
    }
    let mut conn = redis::connect_user(sessions.port, &t.name, &t.password).unwrap();
    let v: Option<String> = conn.get("stmarys:production:session:abc").unwrap();
    assert_eq!(
        v.as_deref(),
        Some("logged-in"),
        "sessions survive a restart"
    );
    let mut conn = redis::connect_user(cache.port, &t.name, &t.password).unwrap();
    let v: Option<String> = conn.get("stmarys:production:session:abc").unwrap();
    assert_eq!(v, None, "the cache starts empty");

    let mut admin = sessions.admin().unwrap();
    let policy: Vec<String> = redis_client::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(&mut admin)
        .unwrap();
    assert_eq!(policy[1], "volatile-lru");
}

#[test]
fn start_failure_is_explained() {
    let platform = TestPlatform::new();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut server = platform.redis_server("squatted", Persistence::None);
    server.port = squatter.local_addr().unwrap().port();
    let server = platform.guard_redis(server);
    server.write_config(&[]).unwrap();
    let err = server.start().unwrap_err().to_string();
    assert!(err.contains("Redis server squatted"), "{err}");
    assert!(
        err.to_lowercase().contains("address already in use"),
        "{err}"
    );
}

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

/// Runs a raw command that must succeed and returns its reply.
fn allowed(conn: &mut Connection, args: &[&str]) -> redis_client::Value {
    let mut cmd = redis_client::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(conn)
        .unwrap_or_else(|e| panic!("{args:?} must be allowed: {e}"))
}

/// A bare RESP connection: sees exactly what the server sends, including
/// RESP3 pushes (tracking invalidations) that a client library would hide.
struct Raw(std::net::TcpStream);

impl Raw {
    fn connect(port: u16) -> Raw {
        Raw(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
    }

    /// Sends one command and returns everything received until the
    /// connection has been quiet for a while (pushes included).
    fn send(&mut self, args: &[&str]) -> String {
        use std::io::Write;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.write_all(out.as_bytes()).unwrap();
        self.read()
    }

    fn read(&mut self) -> String {
        use std::io::Read;
        use std::time::Duration;
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        // Up to 5 s for the first bytes, then until 300 ms of silence.
        let mut wait = Duration::from_secs(5);
        loop {
            self.0.set_read_timeout(Some(wait)).unwrap();
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    wait = Duration::from_millis(300);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => panic!("reading from Redis: {e}"),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

/// Issue 14: a tenant ACL user gets only the commands that act on named keys
/// and channels or on its own connection. Nothing that lists, watches, counts
/// or logs the shared keyspace, other connections or the server, so tenant A
/// never learns tenant B's key names (session ids) or channel names.
#[test]
fn tenant_acl_refuses_everything_that_reveals_other_tenants() {
    let platform = TestPlatform::new();
    let a = user("stmarys-prod", "a:env:");
    let b = user("northside-prod", "b:env:");
    let server = platform.start_redis("cache", Persistence::None, &[a.clone(), b.clone()]);
    let a_pass = a.password.expose_secret().to_string();

    // Make every command slow enough for SLOWLOG, so B's key names would be
    // in it; B listens on a channel, so PUBSUB CHANNELS would name it.
    let mut admin = server.admin().unwrap();
    allowed(
        &mut admin,
        &["CONFIG", "SET", "slowlog-log-slower-than", "0"],
    );
    let mut cb = redis::connect_user(server.port, &b.name, &b.password).unwrap();
    let mut b_listener = Raw::connect(server.port);
    let b_pass = b.password.expose_secret().to_string();
    assert!(b_listener
        .send(&["AUTH", &b.name, &b_pass])
        .starts_with("+OK"));
    assert!(b_listener
        .send(&["SUBSCRIBE", "b:env:events"])
        .contains("b:env:events"));

    // The reported attack, replayed: A (RESP3, as a client with
    // client-side caching would) asks for broadcast invalidations, then B
    // writes a session key. Whatever A's connection receives must not name it.
    let mut raw_a = Raw::connect(server.port);
    let hello = raw_a.send(&["HELLO", "3", "AUTH", &a.name, &a_pass, "SETNAME", "odoo"]);
    assert!(hello.contains("proto"), "{hello}");
    let mut tracking = Vec::new();
    for args in [
        &["CLIENT", "TRACKING", "ON", "BCAST"][..],
        &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "b:"],
        &["CLIENT", "TRACKING", "ON"],
    ] {
        tracking.push((args, raw_a.send(args)));
    }
    let _: () = cb.set("b:env:session:xyz", "uid=2").unwrap();
    let _: () = cb.expire("b:env:session:xyz", 60).unwrap();
    let _: i64 = cb.publish("b:env:events", "login").unwrap();
    let mut heard = raw_a.read();
    heard.push_str(&raw_a.send(&["GET", "a:env:none"]));
    for (_, reply) in &tracking {
        heard.push_str(reply);
    }
    assert!(!heard.contains("b:env"), "A learned B's names: {heard:?}");
    for (args, reply) in &tracking {
        assert!(reply.starts_with("-NOPERM"), "{args:?}: {reply:?}");
    }

    // A's own keys, so that key-checked commands are refused for the
    // command itself, not for the key.
    let mut ca = redis::connect_user(server.port, &a.name, &a.password).unwrap();
    let _: () = ca.set("a:env:k", "v").unwrap();
    let _: () = ca.rpush("a:env:l", &["3", "1", "2"]).unwrap();

    // Every command below would list, count, watch or log what other
    // tenants do, reach other databases or connections, or change the
    // server: each is refused and its error names nothing of B's.
    let refused: &[&[&str]] = &[
        // Key names, counts and sizes of the whole keyspace.
        &["KEYS", "*"],
        &["KEYS", "b:*"],
        &["SCAN", "0"],
        &["SCAN", "0", "MATCH", "b:*"],
        &["RANDOMKEY"],
        &["DBSIZE"],
        &["INFO"],
        &["INFO", "keyspace"],
        &["INFO", "clients"],
        &["INFO", "commandstats"],
        &["MEMORY", "STATS"],
        &["MEMORY", "DOCTOR"],
        &["MEMORY", "MALLOC-STATS"],
        &["MEMORY", "USAGE", "a:env:k"],
        &["MEMORY", "PURGE"],
        &["SLOWLOG", "GET"],
        &["SLOWLOG", "LEN"],
        &["SLOWLOG", "RESET"],
        &["LATENCY", "LATEST"],
        &["LATENCY", "DOCTOR"],
        &["LATENCY", "HISTOGRAM"],
        &["LATENCY", "RESET"],
        &["MONITOR"],
        // Other connections.
        &["CLIENT", "LIST"],
        &["CLIENT", "KILL", "ID", "1"],
        &["CLIENT", "KILL", "USER", "northside-prod"],
        &["CLIENT", "PAUSE", "1"],
        &["CLIENT", "UNPAUSE"],
        &["CLIENT", "UNBLOCK", "1"],
        &["CLIENT", "NO-EVICT", "on"],
        &["CLIENT", "TRACKING", "ON", "BCAST"],
        &["CLIENT", "TRACKING", "OFF"],
        &["CLIENT", "TRACKINGINFO"],
        &["CLIENT", "GETREDIR"],
        &["CLIENT", "CACHING", "yes"],
        &["CLIENT", "REPLY", "ON"],
        &["CLIENT", "HELP"],
        // Channels.
        &["PUBSUB", "CHANNELS"],
        &["PUBSUB", "CHANNELS", "b:*"],
        &["PUBSUB", "NUMSUB", "b:env:events"],
        &["PUBSUB", "NUMPAT"],
        &["PUBSUB", "SHARDCHANNELS"],
        &["PUBSUB", "SHARDNUMSUB", "b:env:events"],
        &["SUBSCRIBE", "b:env:events"],
        &["PSUBSCRIBE", "*"],
        &["PSUBSCRIBE", "b:*"],
        &["PSUBSCRIBE", "a:env:sub*"],
        &["PUBLISH", "b:env:events", "x"],
        &["SSUBSCRIBE", "a:env:events"],
        &["SPUBLISH", "a:env:events", "x"],
        // Scripts and functions: server-global, and they can block everyone.
        &["EVAL", "return 1", "0"],
        &["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"],
        &["EVAL_RO", "return 1", "0"],
        &[
            "EVALSHA_RO",
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
            "0",
        ],
        &["SCRIPT", "LOAD", "return 1"],
        &[
            "SCRIPT",
            "EXISTS",
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
        ],
        &["SCRIPT", "FLUSH"],
        &["SCRIPT", "KILL"],
        &["FUNCTION", "LIST"],
        &["FUNCTION", "DUMP"],
        &["FUNCTION", "STATS"],
        &["FUNCTION", "FLUSH"],
        &["FUNCTION", "KILL"],
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=x\nredis.register_function('f', function() return 1 end)",
        ],
        &["FCALL", "f", "0"],
        &["FCALL_RO", "f", "0"],
        // Other databases, which key patterns and prefix cleanup don't cover.
        &["SELECT", "0"],
        &["SELECT", "1"],
        &["MOVE", "a:env:k", "1"],
        &["COPY", "a:env:k", "a:env:k2"],
        &["COPY", "a:env:k", "a:env:k2", "DB", "1"],
        &["SWAPDB", "0", "1"],
        // Key commands that need no key name to reach other keys, or that
        // Odoo does not use.
        &["SORT", "a:env:l"],
        &["SORT", "a:env:l", "BY", "b:env:*", "GET", "b:env:*"],
        &["SORT_RO", "a:env:l"],
        &["OBJECT", "ENCODING", "a:env:k"],
        &["OBJECT", "FREQ", "a:env:k"],
        &["OBJECT", "IDLETIME", "a:env:k"],
        &["OBJECT", "HELP"],
        &["DUMP", "a:env:k"],
        &["RESTORE", "a:env:r", "0", "x"],
        &["MIGRATE", "127.0.0.1", "1", "a:env:k", "0", "1000"],
        &["WAIT", "0", "0"],
        &["XADD", "a:env:s", "*", "f", "v"],
        &["BLPOP", "a:env:l", "1"],
        &["PFADD", "a:env:h", "x"],
        &["SETBIT", "a:env:bits", "1", "1"],
        &["LCS", "a:env:k", "a:env:k"],
        // Server administration.
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["CONFIG", "GET", "*"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["CONFIG", "RESETSTAT"],
        &["CONFIG", "REWRITE"],
        &["COMMAND"],
        &["COMMAND", "COUNT"],
        &["COMMAND", "DOCS", "get"],
        &["COMMAND", "GETKEYS", "get", "a:env:k"],
        &["ACL", "WHOAMI"],
        &["ACL", "LIST"],
        &["ACL", "LOG"],
        &["ACL", "CAT"],
        &["MODULE", "LIST"],
        &["SAVE"],
        &["BGSAVE"],
        &["BGREWRITEAOF"],
        &["LASTSAVE"],
        &["ROLE"],
        &["TIME"],
        &["LOLWUT"],
        &["REPLICAOF", "NO", "ONE"],
        &["SLAVEOF", "NO", "ONE"],
        &["FAILOVER", "ABORT"],
        &["CLUSTER", "INFO"],
        &["READONLY"],
        &["ASKING"],
        &["SHUTDOWN", "NOSAVE"],
    ];
    for args in refused {
        let err = denied(&mut ca, args);
        assert!(err.contains("NOPERM"), "{args:?}: {err}");
        assert!(!err.contains("B:ENV"), "{args:?}: {err}");
    }
    // Newer than Redis 7.0: unknown there, refused where they exist.
    for args in [
        &["WAITAOF", "0", "0", "0"][..],
        &["CLIENT", "NO-TOUCH", "on"],
        &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"],
    ] {
        let err = denied(&mut ca, args);
        assert!(
            err.contains("NOPERM") || err.contains("UNKNOWN"),
            "{args:?}: {err}"
        );
    }
    // DEBUG is also disabled server-wide (enable-debug-command no).
    let err = denied(&mut ca, &["DEBUG", "SLEEP", "0"]);
    assert!(
        err.contains("NOPERM") || err.contains("NOT ALLOWED"),
        "{err}"
    );
    // B's data is untouched by all of the above.
    let v: String = cb.get("b:env:session:xyz").unwrap();
    assert_eq!(v, "uid=2");
    drop(b_listener);
}

/// The other side of the allow list: every command it grants works on the
/// tenant's own keys and channels, and the test names each one, so the rules
/// cannot lose a command (or gain an untested one) unnoticed.
#[test]
fn tenant_acl_allows_what_a_session_store_uses() {
    let platform = TestPlatform::new();
    let a = user("stmarys-prod", "a:env:");
    let server = platform.start_redis("cache", Persistence::None, std::slice::from_ref(&a));
    let a_pass = a.password.expose_secret().to_string();
    let mut ca = redis::connect_user(server.port, &a.name, &a.password).unwrap();
    let mut tested = std::collections::BTreeSet::new();
    let mut name = |args: &[&str]| {
        let mut n = args[0].to_ascii_lowercase();
        if n == "client" {
            n = format!("client|{}", args[1].to_ascii_lowercase());
        }
        tested.insert(n);
    };

    let own: &[&[&str]] = &[
        // Connection.
        &["PING"],
        &["ECHO", "hi"],
        &["AUTH", &a.name, &a_pass],
        &["HELLO", "2", "AUTH", &a.name, &a_pass, "SETNAME", "odoo"],
        &["CLIENT", "ID"],
        &["CLIENT", "INFO"],
        &["CLIENT", "SETNAME", "odoo-web"],
        &["CLIENT", "GETNAME"],
        // Strings: what a session store does.
        &["SET", "a:env:session:1", "{}"],
        &["EXPIRE", "a:env:session:1", "604800"],
        &["GET", "a:env:session:1"],
        &["SETEX", "a:env:session:2", "60", "{}"],
        &["PSETEX", "a:env:session:3", "60000", "{}"],
        &["SETNX", "a:env:lock", "1"],
        &["GETEX", "a:env:session:1", "EX", "60"],
        &["GETSET", "a:env:session:1", "{}"],
        &["GETDEL", "a:env:lock"],
        &["MSET", "a:env:n", "1", "a:env:m", "2"],
        &["MSETNX", "a:env:n2", "1"],
        &["MGET", "a:env:n", "a:env:m"],
        &["INCR", "a:env:n"],
        &["INCRBY", "a:env:n", "2"],
        &["INCRBYFLOAT", "a:env:m", "1.5"],
        &["DECR", "a:env:n"],
        &["DECRBY", "a:env:n", "2"],
        &["APPEND", "a:env:s", "x"],
        &["STRLEN", "a:env:s"],
        &["GETRANGE", "a:env:s", "0", "1"],
        &["SETRANGE", "a:env:s", "0", "y"],
        // Generic key commands.
        &["EXISTS", "a:env:session:1"],
        &["TYPE", "a:env:session:1"],
        &["TOUCH", "a:env:session:1"],
        &["PEXPIRE", "a:env:session:1", "60000"],
        &["EXPIREAT", "a:env:session:1", "4000000000"],
        &["PEXPIREAT", "a:env:session:1", "4000000000000"],
        &["EXPIRETIME", "a:env:session:1"],
        &["PEXPIRETIME", "a:env:session:1"],
        &["TTL", "a:env:session:1"],
        &["PTTL", "a:env:session:1"],
        &["PERSIST", "a:env:session:1"],
        &["RENAME", "a:env:session:2", "a:env:session:4"],
        &["RENAMENX", "a:env:session:4", "a:env:session:5"],
        &["DEL", "a:env:session:5"],
        &["UNLINK", "a:env:session:3"],
        // Hashes.
        &["HSET", "a:env:h", "f", "1"],
        &["HSETNX", "a:env:h", "g", "2"],
        &["HMSET", "a:env:h", "x", "1", "y", "2"],
        &["HGET", "a:env:h", "f"],
        &["HMGET", "a:env:h", "f", "g"],
        &["HDEL", "a:env:h", "y"],
        &["HEXISTS", "a:env:h", "f"],
        &["HGETALL", "a:env:h"],
        &["HKEYS", "a:env:h"],
        &["HVALS", "a:env:h"],
        &["HLEN", "a:env:h"],
        &["HINCRBY", "a:env:h", "f", "1"],
        &["HINCRBYFLOAT", "a:env:h", "x", "0.5"],
        &["HSTRLEN", "a:env:h", "f"],
        &["HSCAN", "a:env:h", "0"],
        // Lists.
        &["LPUSH", "a:env:l", "a", "b"],
        &["RPUSH", "a:env:l", "c"],
        &["LPUSHX", "a:env:l", "d"],
        &["RPUSHX", "a:env:l", "e"],
        &["LPOP", "a:env:l"],
        &["RPOP", "a:env:l"],
        &["LRANGE", "a:env:l", "0", "-1"],
        &["LLEN", "a:env:l"],
        &["LINDEX", "a:env:l", "0"],
        &["LSET", "a:env:l", "0", "x"],
        &["LREM", "a:env:l", "0", "zz"],
        &["LTRIM", "a:env:l", "0", "-1"],
        &["LINSERT", "a:env:l", "BEFORE", "x", "w"],
        &["LPOS", "a:env:l", "x"],
        &["LMOVE", "a:env:l", "a:env:l2", "LEFT", "RIGHT"],
        // Sets.
        &["SADD", "a:env:set", "a", "b", "c"],
        &["SREM", "a:env:set", "c"],
        &["SMEMBERS", "a:env:set"],
        &["SISMEMBER", "a:env:set", "a"],
        &["SMISMEMBER", "a:env:set", "a", "b"],
        &["SCARD", "a:env:set"],
        &["SRANDMEMBER", "a:env:set"],
        &["SINTER", "a:env:set", "a:env:set2"],
        &["SUNION", "a:env:set", "a:env:set2"],
        &["SDIFF", "a:env:set", "a:env:set2"],
        &["SINTERSTORE", "a:env:set3", "a:env:set", "a:env:set"],
        &["SUNIONSTORE", "a:env:set3", "a:env:set", "a:env:set2"],
        &["SDIFFSTORE", "a:env:set3", "a:env:set", "a:env:set2"],
        &["SMOVE", "a:env:set", "a:env:set2", "a"],
        &["SSCAN", "a:env:set", "0"],
        &["SPOP", "a:env:set"],
        // Sorted sets.
        &["ZADD", "a:env:z", "1", "a", "2", "b", "3", "c"],
        &["ZREM", "a:env:z", "c"],
        &["ZRANGE", "a:env:z", "0", "-1"],
        &["ZRANGEBYSCORE", "a:env:z", "0", "10"],
        &["ZREVRANGE", "a:env:z", "0", "-1"],
        &["ZREVRANGEBYSCORE", "a:env:z", "10", "0"],
        &["ZRANK", "a:env:z", "a"],
        &["ZREVRANK", "a:env:z", "a"],
        &["ZSCORE", "a:env:z", "a"],
        &["ZMSCORE", "a:env:z", "a", "b"],
        &["ZCARD", "a:env:z"],
        &["ZCOUNT", "a:env:z", "0", "10"],
        &["ZINCRBY", "a:env:z", "1", "a"],
        &["ZREMRANGEBYSCORE", "a:env:z", "100", "200"],
        &["ZREMRANGEBYRANK", "a:env:z", "5", "6"],
        &["ZSCAN", "a:env:z", "0"],
        &["ZPOPMIN", "a:env:z"],
        &["ZPOPMAX", "a:env:z"],
        // Transactions.
        &["WATCH", "a:env:session:1"],
        &["UNWATCH"],
        &["MULTI"],
        &["SET", "a:env:tx", "1"],
        &["EXEC"],
        &["MULTI"],
        &["DISCARD"],
    ];
    for args in own {
        allowed(&mut ca, args);
        name(args);
    }
    let v: String = ca.get("a:env:tx").unwrap();
    assert_eq!(v, "1", "the transaction ran");
    let v: String = ca.hget("a:env:h", "f").unwrap();
    assert_eq!(v, "2");

    // Pub/sub on the tenant's channels, the pattern being the ACL's own.
    let mut sub = Raw::connect(server.port);
    assert!(sub.send(&["AUTH", &a.name, &a_pass]).starts_with("+OK"));
    let reply = sub.send(&["SUBSCRIBE", "a:env:events"]);
    assert!(reply.contains("subscribe"), "{reply:?}");
    let reply = sub.send(&["PSUBSCRIBE", "a:env:*"]);
    assert!(reply.contains("psubscribe"), "{reply:?}");
    let receivers: i64 = ca.publish("a:env:events", "hello").unwrap();
    assert_eq!(receivers, 2);
    let reply = sub.read();
    assert!(reply.contains("hello"), "{reply:?}");
    let reply = sub.send(&["UNSUBSCRIBE", "a:env:events"]);
    assert!(reply.contains("unsubscribe"), "{reply:?}");
    let reply = sub.send(&["PUNSUBSCRIBE", "a:env:*"]);
    assert!(reply.contains("punsubscribe"), "{reply:?}");
    for n in [
        "publish",
        "subscribe",
        "psubscribe",
        "unsubscribe",
        "punsubscribe",
    ] {
        tested.insert(n.to_string());
    }

    // What redis-py sends on connect in RESP3 mode, then RESET and QUIT
    // (RESET logs the connection out: the default user is off).
    let mut raw = Raw::connect(server.port);
    let reply = raw.send(&["HELLO", "3", "AUTH", &a.name, &a_pass, "SETNAME", "odoo"]);
    assert!(reply.contains("proto"), "{reply:?}");
    let reply = raw.send(&["GET", "a:env:tx"]);
    assert!(reply.contains('1'), "{reply:?}");
    assert!(raw.send(&["RESET"]).starts_with("+RESET"));
    assert!(raw.send(&["GET", "a:env:tx"]).starts_with("-NOAUTH"));
    assert!(raw.send(&["AUTH", &a.name, &a_pass]).starts_with("+OK"));
    assert!(raw.send(&["QUIT"]).starts_with("+OK"));
    for n in ["hello", "reset", "quit"] {
        tested.insert(n.to_string());
    }

    let granted: std::collections::BTreeSet<String> = redis::TENANT_COMMAND_RULES
        .split(' ')
        .filter_map(|r| r.strip_prefix('+'))
        .map(str::to_string)
        .collect();
    assert_eq!(granted, tested, "every granted command is tested above");
}

/// Removing an environment removes its keys whatever bytes a tenant chose
/// for their names (not only UTF-8), and nobody else's.
#[test]
fn removed_prefix_takes_binary_key_names_and_only_its_own() {
    let platform = TestPlatform::new();
    let a = user("stmarys-prod", "a:prod:");
    let b = user("northside-prod", "b:prod:");
    let server = platform.start_redis("cache", Persistence::None, &[a.clone(), b.clone()]);
    let mut ca = redis::connect_user(server.port, &a.name, &a.password).unwrap();
    let _: () = ca.set(&b"a:prod:\xff\xfe"[..], "binary").unwrap();
    let _: () = ca.set("a:prod:text", "text").unwrap();
    let mut cb = redis::connect_user(server.port, &b.name, &b.password).unwrap();
    let _: () = cb.set("b:prod:keep", "b").unwrap();
    assert_eq!(server.delete_keys_with_prefix("a:prod:").unwrap(), 2);
    let left: Option<String> = cb.get("b:prod:keep").unwrap();
    assert_eq!(left.as_deref(), Some("b"));
}

/// The monitor user `careplane serve` reads memory headroom with may read the server's
/// state (`INFO`, `PING`) and nothing a tenant put there: no key, no channel, no
/// command that changes the server or watches other connections.
#[test]
fn monitor_user_reads_info_and_nothing_of_the_tenants() {
    let platform = TestPlatform::new();
    let a = user("stmarys-prod", "a:prod:");
    let server = platform.start_redis("cache", Persistence::None, std::slice::from_ref(&a));
    let mut ca = redis::connect_user(server.port, &a.name, &a.password).unwrap();
    let _: () = ca.set("a:prod:session:1", "tenant-value").unwrap();

    let monitor = server.monitor_password.clone().expect("a monitor password");
    let mut m = redis::connect_user(server.port, redis::MONITOR_USER, &monitor).unwrap();
    let info = allowed(&mut m, &["INFO", "memory"]);
    let info = match info {
        redis_client::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis_client::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO answered {other:?}"),
    };
    assert!(info.contains("used_memory:"), "{info}");
    assert!(info.contains("maxmemory:"), "{info}");
    allowed(&mut m, &["PING"]);
    for args in [
        &["GET", "a:prod:session:1"][..],
        &["SET", "a:prod:session:1", "x"],
        &["DEL", "a:prod:session:1"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["DUMP", "a:prod:session:1"],
        &["SUBSCRIBE", "a:prod:chan"],
        &["PSUBSCRIBE", "*"],
        &["MONITOR"],
        &["CLIENT", "LIST"],
        &["CLIENT", "KILL", "ID", "1"],
        &["CONFIG", "GET", "*"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["ACL", "LIST"],
        &["FLUSHALL"],
        &["DEBUG", "SLEEP", "0"],
        &["EVAL", "return 1", "0"],
        &["SLOWLOG", "GET"],
        &["SHUTDOWN"],
    ] {
        let err = denied(&mut m, args);
        // DEBUG is off in careplane's config before the ACL is even asked.
        assert!(
            err.contains("NOPERM") || err.contains("NOT ALLOWED"),
            "{args:?}: {err}"
        );
    }
    // A wrong password is refused like any other.
    let wrong = careplane_local::SecretString::from("not-the-password".to_string());
    assert!(redis::connect_user(server.port, redis::MONITOR_USER, &wrong).is_err());
    // The tenant's value was untouched by all of it.
    let v: String = ca.get("a:prod:session:1").unwrap();
    assert_eq!(v, "tenant-value");
}

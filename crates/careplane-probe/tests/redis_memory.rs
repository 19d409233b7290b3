//! The Redis probe's memory headroom against a real Redis started with careplane's own
//! configuration and ACL rules (careplane-local): the tenant's user may not run `INFO`, so
//! memory is read as careplane's admin user; the probe reports the memory in use and goes
//! down once the headroom under `maxmemory` falls below the minimum.

use std::time::Duration;

use careplane_local::redis::{self, AclUser, Persistence, ADMIN_USER};
use careplane_local::redis_client::{self, RedisResult};
use careplane_local::testing::{self, TestPlatform};
use careplane_probe::{run, Check, Outcome, RedisCheck, RedisMemory};

async fn probe(c: &Check) -> careplane_probe::Report {
    run(c, Duration::from_secs(10), jiff::Timestamp::now()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_probe_reports_memory_and_is_down_without_headroom() {
    let platform = TestPlatform::new();
    let tenant = AclUser {
        name: "stmarys-prod".into(),
        password: testing::password(),
        key_prefix: "a:prod:".into(),
    };
    // Sessions: only keys with a TTL are evicted, so keys without one fill it up.
    let mut server = platform.redis_server("sessions", Persistence::AppendOnly);
    server.max_memory = "4mb".into();
    let server = platform.guard_redis(server);
    server.write_config(std::slice::from_ref(&tenant)).unwrap();
    server.start().unwrap();

    // The tenant's own user may not read the instance's memory (nor any INFO section).
    let mut as_tenant = redis::connect_user(server.port, &tenant.name, &tenant.password).unwrap();
    let info: RedisResult<String> = redis_client::cmd("INFO")
        .arg("memory")
        .query(&mut as_tenant);
    let err = info.expect_err("INFO memory as the tenant").to_string();
    assert!(err.to_uppercase().contains("NOPERM"), "{err}");

    let check = |min: u8, user: &str, password: &secrecy::SecretString| {
        Check::Redis(RedisCheck {
            host: "127.0.0.1".into(),
            port: server.port,
            user: tenant.name.clone(),
            password: tenant.password.clone(),
            memory: Some(RedisMemory {
                user: user.into(),
                password: password.clone(),
                min_headroom_percent: min,
            }),
        })
    };
    let admin = check(10, ADMIN_USER, &server.admin_password);

    let r = probe(&admin).await;
    assert_eq!(r.outcome, Outcome::Up, "{r:?}");
    let m = r.memory.expect("memory reported");
    assert_eq!(m.max_bytes, 4 * 1024 * 1024, "{m:?}");
    assert!(m.used_bytes > 0, "{m:?}");
    let before = m.used_permille.unwrap();
    assert!(before < 900, "an empty Redis is not full: {m:?}");

    // With the tenant's credentials as the memory user the probe cannot tell: unknown,
    // not down (careplane's configuration, not the tenant's service).
    let r = probe(&check(10, &tenant.name, &tenant.password)).await;
    assert_eq!(r.outcome, Outcome::Unknown, "{r:?}");
    assert!(r.detail.contains("NOPERM"), "{r:?}");

    // Fill it as the tenant (keys without a TTL) until writes are refused for memory.
    let value = "x".repeat(64 * 1024);
    let mut full = false;
    for i in 0..200 {
        let r: RedisResult<()> = redis_client::cmd("SET")
            .arg(format!("a:prod:fill:{i}"))
            .arg(&value)
            .query(&mut as_tenant);
        if let Err(e) = r {
            assert!(e.to_string().to_uppercase().contains("OOM"), "{e}");
            full = true;
            break;
        }
    }
    assert!(full, "4 MB held 200 values of 64 KiB");

    let r = probe(&admin).await;
    assert_eq!(r.outcome, Outcome::Down, "{r:?}");
    assert!(
        r.detail.contains("memory headroom") && r.detail.contains("below the minimum 10%"),
        "{r:?}"
    );
    assert!(r.detail.contains("of maxmemory 4.0 MiB"), "{r:?}");
    for secret in [&tenant.password, &server.admin_password] {
        use secrecy::ExposeSecret;
        assert!(
            !format!("{r:?}").contains(secret.expose_secret()),
            "a password in the report"
        );
    }

    // A minimum of 0 never fails on memory; the numbers are still reported.
    let r = probe(&check(0, ADMIN_USER, &server.admin_password)).await;
    assert_eq!(r.outcome, Outcome::Up, "{r:?}");
    assert!(r.memory.unwrap().used_permille.unwrap() > before, "{r:?}");
}

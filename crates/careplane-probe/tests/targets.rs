//! Probes against real local sockets that misbehave: a target that accepts and never
//! answers, one that refuses, one that streams a body forever, wrong status and body. Each
//! run must end (its timeout bounds it) with the right outcome and a reason; nothing here
//! asserts on durations.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use careplane_probe::{run, Check, HttpCheck, Outcome, RedisCheck};

/// Serves `answer` (raw bytes, then optionally keeps writing forever) to every connection.
fn target(answer: &'static [u8], endless: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.read(&mut buf);
                if s.write_all(answer).is_err() {
                    return;
                }
                if endless {
                    // Until the probe gives up and closes.
                    while s.write_all(&[b'x'; 4096]).is_ok() {}
                }
            });
        }
    });
    port
}

/// Accepts and holds every connection without a byte.
fn hanging() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

fn refused() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn http(port: u16, body: Option<&str>) -> Check {
    Check::Http(HttpCheck {
        url: format!("http://127.0.0.1:{port}/web/health"),
        expect_status: 200,
        body_contains: body.map(str::to_string),
        ca_pem: None,
        host_header: None,
    })
}

async fn probe(c: &Check) -> careplane_probe::Report {
    run(c, Duration::from_millis(500), jiff::Timestamp::now()).await
}

#[tokio::test]
async fn http_probes_end_with_the_right_outcome_whatever_the_target_does() {
    let ok = target(
        b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n{\"status\": \"pass\"}",
        false,
    );
    let r = probe(&http(ok, Some("pass"))).await;
    assert_eq!((r.outcome, r.detail.as_str()), (Outcome::Up, "ok"), "{r:?}");

    let r = probe(&http(ok, Some("fail"))).await;
    assert_eq!(r.outcome, Outcome::Down, "{r:?}");
    assert!(r.detail.contains("does not contain"), "{r:?}");

    let e500 = target(
        b"HTTP/1.1 500 INTERNAL SERVER ERROR\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    let r = probe(&http(e500, None)).await;
    assert_eq!(r.outcome, Outcome::Down, "{r:?}");
    assert!(r.detail.contains("answered 500"), "{r:?}");

    let r = probe(&http(hanging(), None)).await;
    assert_eq!(r.outcome, Outcome::Down, "{r:?}");
    assert!(r.detail.contains("no answer within 500 ms"), "{r:?}");

    let r = probe(&http(refused(), None)).await;
    assert_eq!(r.outcome, Outcome::Down, "{r:?}");
    assert!(r.detail.contains("connecting to"), "{r:?}");

    // Headers, then a chunked body that never ends: the timeout or the body cap ends it.
    let endless = target(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", true);
    let r = probe(&http(endless, Some("pass"))).await;
    assert_eq!(r.outcome, Outcome::Down, "{r:?}");

    // An https URL without the platform CA is careplane's problem, not evidence of an outage.
    let mut c = http(ok, None);
    if let Check::Http(h) = &mut c {
        h.url = h.url.replace("http://", "https://");
    }
    let r = probe(&c).await;
    assert_eq!(r.outcome, Outcome::Unknown, "{r:?}");
}

#[tokio::test]
async fn redis_probe_fails_on_refusal_and_on_a_hang_without_leaking_the_password() {
    let password = secrecy::SecretString::from("hunter2-very-secret-password");
    let check = |port| {
        Check::Redis(RedisCheck {
            host: "127.0.0.1".into(),
            port,
            user: "alice".into(),
            password: password.clone(),
            memory: None,
        })
    };
    let wrong = target(
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        false,
    );
    for port in [wrong, hanging(), refused()] {
        let r = probe(&check(port)).await;
        assert_eq!(r.outcome, Outcome::Down, "{r:?}");
        assert!(!format!("{r:?}").contains("hunter2"), "{r:?}");
    }
    assert!(
        !format!("{:?}", check(wrong)).contains("hunter2"),
        "Debug redacts"
    );
    let ok = target(b"+OK\r\n+PONG\r\n", false);
    assert_eq!(probe(&check(ok)).await.outcome, Outcome::Up);
}

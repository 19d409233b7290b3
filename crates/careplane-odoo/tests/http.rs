//! http_get / wait_healthy against tiny in-test servers.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use careplane_odoo::{http_get, wait_healthy, OdooError};

/// Answers connection number `n` with `respond(n, request)` (`None`: keep
/// the connection open without answering); counts connections.
fn server(
    respond: impl Fn(usize, &str) -> Option<String> + Send + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            let request = String::from_utf8_lossy(&buf).to_string();
            match respond(n, &request) {
                Some(r) => {
                    let _ = s.write_all(r.as_bytes());
                }
                // Hold the connection open without answering.
                None => thread::sleep(Duration::from_secs(3)),
            }
        }
    });
    (port, count)
}

fn status(code: u16, reason: &str) -> String {
    format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
}

#[test]
fn returns_the_status_code_and_sends_a_proper_request() {
    let (port, _) = server(|_, req| {
        let first = req.lines().next().unwrap_or("");
        let host_ok = req.contains("\r\nHost: 127.0.0.1:");
        Some(if first == "GET /web/health HTTP/1.1" && host_ok {
            status(200, "OK")
        } else {
            status(400, "Bad Request")
        })
    });
    assert_eq!(
        http_get(port, "/web/health", Duration::from_secs(5)).unwrap(),
        200
    );
    let (port, _) = server(|_, _| Some(status(503, "Service Unavailable")));
    assert_eq!(
        http_get(port, "/web/login", Duration::from_secs(5)).unwrap(),
        503
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn connection_refused_names_the_url() {
    let port = free_port();
    let err = http_get(port, "/web/health", Duration::from_secs(2)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}/web/health")),
        "{text}"
    );
    assert!(matches!(err, OdooError::Http { .. }));
}

#[test]
fn a_silent_server_times_out() {
    let (port, _) = server(|_, _| None);
    let err = http_get(port, "/", Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[test]
fn garbage_is_not_a_status() {
    let (port, _) = server(|_, _| Some("SSH-2.0-OpenSSH\r\n".into()));
    let err = http_get(port, "/", Duration::from_secs(2)).unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    assert!(http_get(port, "no-slash", Duration::from_secs(1)).is_err());
    assert!(http_get(port, "/a b", Duration::from_secs(1)).is_err());
    assert!(http_get(port, "/a\r\nX: y", Duration::from_secs(1)).is_err());
}

#[test]
fn wait_healthy_polls_until_200() {
    let (port, count) = server(|n, _| {
        Some(if n < 3 {
            status(503, "Starting")
        } else {
            status(200, "OK")
        })
    });
    wait_healthy(port, "/web/health", Duration::from_secs(20)).unwrap();
    assert!(count.load(Ordering::SeqCst) >= 4);
}

#[test]
fn wait_healthy_reports_the_last_failure() {
    let (port, _) = server(|_, _| Some(status(500, "Internal Server Error")));
    let err = wait_healthy(port, "/web/health", Duration::from_millis(700)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}/web/health")),
        "{text}"
    );
    assert!(text.contains("status 500"), "{text}");

    let port = free_port();
    let err = wait_healthy(port, "/web/health", Duration::from_millis(500)).unwrap_err();
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
}

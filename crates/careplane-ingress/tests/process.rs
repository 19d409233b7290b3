//! The proxy as the engine will run it: a process of its own, reloaded with
//! SIGHUP, stopped with SIGTERM, and started again after `kill -9`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::json;

const A: &str = "prod.stmarys.careplane.localhost";
const B: &str = "uat.stmarys.careplane.localhost";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_careplane-ingress"))
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Polls the admin `/status` until `pred` holds (bounded: 10 s).
async fn wait_status(
    admin: std::net::SocketAddr,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            last = plain_get(admin, "x", "/status").await.json();
            if pred(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("status never matched; last {last}");
}

#[tokio::test]
async fn the_process_reloads_on_sighup_stops_on_sigterm_and_restarts_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (https, http, admin) = (free_port(), free_port(), free_port());
    let mut v = json!({
        "generation": 1,
        "listen": {"https": [format!("127.0.0.1:{https}")], "http": [format!("127.0.0.1:{http}")],
                   "admin": format!("127.0.0.1:{admin}")},
        "access_log": dir.path().join("access.log"),
        "workers": 2,
        "routes": [route(&ca, A, &a)],
    });
    let path = dir.path().join("ingress.json");
    write(&path, &v);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();

    let mut child = spawn(&path);
    wait_status(admin, |s| s["generation"] == 1).await;
    let mut c = Client::connect(&ca, addr, A, false).await;
    assert_eq!(
        c.get(&format!("{A}:{https}"), "/").await.status,
        StatusCode::OK
    );

    // The engine adds a route: rewrite, SIGHUP, confirm by generation.
    v["generation"] = json!(2);
    v["routes"].as_array_mut().unwrap().push(route(&ca, B, &b));
    write(&path, &v);
    signal(&child, libc::SIGHUP);
    wait_status(admin, |s| s["generation"] == 2).await;
    let mut cb = Client::connect(&ca, addr, B, true).await;
    assert_eq!(
        cb.get(&format!("{B}:{https}"), "/").await.status,
        StatusCode::OK
    );
    // The connection opened before the reload still works.
    assert_eq!(
        c.get(&format!("{A}:{https}"), "/again").await.status,
        StatusCode::OK
    );

    // A broken file is refused; generation 2 keeps serving.
    std::fs::write(&path, b"{\"generation\": 3, \"listen\": ").unwrap();
    signal(&child, libc::SIGHUP);
    let s = wait_status(admin, |s| !s["last_reload_error"].is_null()).await;
    assert_eq!(s["generation"], 2);
    assert!(
        s["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("ingress.json"),
        "{s}"
    );
    assert_eq!(
        cb.get(&format!("{B}:{https}"), "/").await.status,
        StatusCode::OK
    );

    // Lines are written within a bounded time, with no flush or shutdown:
    // the four answered so far are in the file before the process dies.
    let log_path = dir.path().join("access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .count()
        < 4
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the access log never got the first 4 lines: {:?}",
            std::fs::read_to_string(&log_path)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // kill -9, then the supervisor's restart: same file, same ports.
    write(&path, &v);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn(&path);
    wait_status(admin, |s| s["generation"] == 2).await;
    let mut c = Client::connect(&ca, addr, A, false).await;
    assert_eq!(
        c.get(&format!("{A}:{https}"), "/").await.status,
        StatusCode::OK
    );

    signal(&child, libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
}

#[test]
fn a_config_it_cannot_use_exits_non_zero_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingress.json");
    std::fs::write(
        &path,
        json!({"listen": {"https": ["127.0.0.1:0"]}, "routes": [], "rotues": []}).to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_careplane-ingress"))
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ingress.json") && err.contains("rotues"),
        "{err}"
    );
}

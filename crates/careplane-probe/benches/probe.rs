//! HTTP probe throughput, side by side with prometheus-blackbox-exporter (Debian's
//! `prometheus-blackbox-exporter`) at the same concurrency against the same local target:
//! a fresh connection per probe, status 200 and a body match, for a few seconds each.
//! Prints probes per second and the ratio. `PROBE_BENCH_SECS` (default 5) and
//! `PROBE_BENCH_CONCURRENCY` (default 32) change the run.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use careplane_probe::{run, Check, HttpCheck, Outcome};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The target: `{"status": "pass"}` like Odoo's /web/health.
async fn target() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"{\"status\": \"pass\"}",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

async fn careplane(port: u16, conc: u64, secs: u64) -> (u64, u64) {
    let check = Check::Http(HttpCheck {
        url: format!("http://127.0.0.1:{port}/web/health"),
        expect_status: 200,
        body_contains: Some("pass".into()),
        ca_pem: None,
        host_header: None,
    });
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (check, ok, failed) = (check.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let r = run(&check, Duration::from_secs(5), jiff::Timestamp::now()).await;
                if r.outcome == Outcome::Up {
                    &ok
                } else {
                    &failed
                }
                .fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

async fn blackbox(bin: &str, port: u16, conc: u64, secs: u64) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("blackbox.yml");
    std::fs::write(
        &cfg,
        "modules:\n  http_2xx:\n    prober: http\n    timeout: 5s\n    http:\n      valid_status_codes: [200]\n      fail_if_body_not_matches_regexp: [\"pass\"]\n",
    )
    .unwrap();
    let bport = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{bport}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting prometheus-blackbox-exporter");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", bport)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "blackbox exporter did not listen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = Instant::now() + Duration::from_secs(secs);
    let path = format!("/probe?module=http_2xx&target=http://127.0.0.1:{port}/web/health");
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (ok, failed, path) = (ok.clone(), failed.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            // One kept-alive connection per worker, as Prometheus scrapes: the exporter's
            // side of the work is the probe, not accepting our connections.
            let s = TcpStream::connect(("127.0.0.1", bport)).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .unwrap();
            tokio::spawn(conn);
            while Instant::now() < end {
                let req = hyper::Request::get(&path)
                    .header("host", "127.0.0.1")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let body = match tx.send_request(req).await {
                    Ok(r) => r
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default(),
                    Err(_) => break,
                };
                let success = body.windows(15).any(|w| w == b"probe_success 1");
                if success { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

fn main() {
    let secs = env_num("PROBE_BENCH_SECS", 5);
    let conc = env_num("PROBE_BENCH_CONCURRENCY", 32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let port = target().await;
        println!("HTTP probe throughput, concurrency {conc}, {secs} s each, fresh connection per probe, status + body match");
        let (ok, failed) = careplane(port, conc, secs).await;
        let ours = ok as f64 / secs as f64;
        println!("careplane-probe:              {ours:>9.0} probes/s ({ok} up, {failed} failed)");
        let bin = ["/usr/bin/prometheus-blackbox-exporter", "/usr/bin/blackbox_exporter"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        match bin {
            Some(bin) => {
                let (ok, failed) = blackbox(bin, port, conc, secs).await;
                let theirs = ok as f64 / secs as f64;
                println!("prometheus-blackbox-exporter: {theirs:>9.0} probes/s ({ok} up, {failed} failed)");
                println!("ratio: {:.2}x (goal >= 2x)", ours / theirs.max(1e-9));
            }
            None => {
                let msg = "prometheus-blackbox-exporter is not installed (apt-get install prometheus-blackbox-exporter): no comparison";
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{msg}");
                }
                println!("{msg}");
            }
        }
    });
}

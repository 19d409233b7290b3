//! Headless Chromium (Debian's) through the proxy to an environment's login
//! page over HTTPS, with the test CA trusted the way a user would trust the
//! platform CA (an NSS database), and the default `*.careplane.localhost`
//! name resolved by the browser itself (no DNS set-up).

mod common;

use std::process::Command;

use common::*;

const A: &str = "prod.stmarys.careplane.localhost";

fn tool(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The browser and NSS's certutil, or a skip (a failure when CI=true).
fn tools() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let found = (
        tool("chromium").or_else(|| tool("chromium-browser")),
        tool("certutil"),
    );
    match found {
        (Some(c), Some(u)) => Some((c, u)),
        _ => {
            let msg = "chromium and certutil are needed (apt-get install chromium libnss3-tools; scripts/install-deps does it)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("skipped: {msg}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_login_page_through_the_proxy_with_the_ca_trusted() {
    let Some((chromium, certutil)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let a = Upstream::start("a").await;
    let cfg = config(dir.path(), vec![route(&ca, A, &a)]);
    let path = dir.path().join("ingress.json");
    write(&path, &cfg);
    let running = careplane_ingress::start(&path).await.unwrap();
    let port = running.https[0].port();

    let home = dir.path().join("home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let ok = |args: &[&str]| {
        let out = Command::new(&certutil).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["-N", "-d", &db, "--empty-password"]);
    ok(&[
        "-A",
        "-d",
        &db,
        "-t",
        "C,,",
        "-n",
        "careplane test CA",
        "-i",
        ca_file.to_str().unwrap(),
    ]);

    let url = format!("https://{A}:{port}/web/login");
    let run = |url: String, home: std::path::PathBuf, profile: std::path::PathBuf| {
        let chromium = chromium.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(chromium)
                .env("HOME", &home)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--virtual-time-budget=3000",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("--dump-dom")
                .arg(url)
                .output()
                .unwrap()
        })
    };
    let out = run(url.clone(), home.clone(), dir.path().join("profile"))
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("rendered-42 https:"),
        "page did not render over HTTPS with scripts running:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = a.requests();
    assert!(seen.iter().any(|s| s.uri == "/web/login"), "{seen:?}");
    let login = seen.iter().find(|s| s.uri == "/web/login").unwrap();
    assert_eq!(login.headers["x-forwarded-proto"], vec!["https"]);

    // Without the CA trusted, the browser refuses the certificate: the page
    // above rendered because the CA was trusted, not by accident.
    let untrusted_home = dir.path().join("home2");
    std::fs::create_dir_all(&untrusted_home).unwrap();
    let out = run(url, untrusted_home, dir.path().join("profile2"))
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(!dom.contains("rendered-42"), "{dom}");
    running.shutdown().await;
}

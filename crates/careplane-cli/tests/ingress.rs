//! The ingress proxy as a resource (issue 18): `apply` starts it, `status`
//! shows `https://<env>.<tenant>.<domain>:<port>`, requests go through it to
//! Odoo with TLS from the platform CA, a new environment is added by reload
//! (same process), and a proxy that died is drift that apply repairs.
//!
//! The HTTPS client is curl (`--resolve` sends the environment's name as
//! SNI and Host while connecting to 127.0.0.1, `--cacert` trusts only the
//! platform CA).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const ONE: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: delta
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
"#;

fn with_ingress(p: &Platform) {
    let file = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replacen(
        "  defaults:",
        "  ingress: {}\n  defaults:",
        1,
    );
    std::fs::write(file, text).unwrap();
}

fn have_curl() -> bool {
    let found = Command::new("curl").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "curl is needed for the ingress test (apt-get install curl)"
        );
        eprintln!("skipped: curl not found");
    }
    found
}

/// `GET url` through the proxy: (status code, body).
fn get(p: &Platform, url: &str) -> (u16, String) {
    let rest = url.strip_prefix("https://").unwrap();
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').unwrap();
    let ca = p.data_dir().join("pki").join("ca.crt");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(&ca)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {url} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn url_of(p: &Platform, env: &str) -> String {
    let st = p.json(&["status"]);
    let e = st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == env)
        .unwrap_or_else(|| panic!("no environment {env} in {st}"));
    e["odooUrl"].as_str().unwrap().to_string()
}

fn proxy_pid(p: &Platform) -> u32 {
    std::fs::read_to_string(p.data_dir().join("ingress").join("ingress.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn drift_of(plan: &Value, id: &str) -> Option<String> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .map(|a| a["drift"].as_str().unwrap_or("").to_string())
}

#[test]
fn apply_serves_environments_through_the_proxy() {
    if !have_curl() {
        return;
    }
    let p = Platform::with_odoo(ONE);
    with_ingress(&p);
    p.ok(&["apply"]);
    assert!(
        p.plan()["actions"].as_array().unwrap().is_empty(),
        "re-plan not empty"
    );

    let url = url_of(&p, "dev");
    assert!(
        url.starts_with("https://dev.delta.careplane.localhost:") && url.ends_with("/web/login"),
        "{url}"
    );
    let (code, _) = get(&p, &url);
    assert_eq!(code, 200, "{url}");
    // `credentials` points at the same place.
    let creds = p.json(&["credentials", "delta", "dev"]);
    assert_eq!(creds["odoo"]["url"], url.as_str(), "{creds}");
    let manager = url.replace("/web/login", "/web/database/manager");
    assert_eq!(get(&p, &manager).0, 403, "{manager}");

    // A second environment: routed after a reload by the same process.
    let pid = proxy_pid(&p);
    p.write_tenants(&format!("{ONE}    - name: test\n      kind: test\n"));
    p.ok(&["apply"]);
    assert_eq!(proxy_pid(&p), pid, "the proxy was restarted, not reloaded");
    assert!(alive(pid));
    let url2 = url_of(&p, "test");
    assert!(
        url2.starts_with("https://test.delta.careplane.localhost:"),
        "{url2}"
    );
    assert_eq!(get(&p, &url2).0, 200, "{url2}");
    assert_eq!(get(&p, &url).0, 200, "{url}");

    // The proxy dies: drift, and apply brings it back.
    // SAFETY: kill(2) on the pid careplane recorded for its proxy.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    for _ in 0..200 {
        if !alive(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let plan = p.plan();
    assert_eq!(
        drift_of(&plan, "ingress/platform").as_deref(),
        Some("the ingress proxy is not running"),
        "{plan}"
    );
    p.ok(&["apply"]);
    assert_ne!(proxy_pid(&p), pid);
    assert_eq!(get(&p, &url).0, 200, "{url}");
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
}

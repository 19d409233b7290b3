//! The ingress proxy as a resource (issue 18): `apply` starts it, `status`
//! shows `https://<env>.<tenant>.<domain>:<port>`, requests go through it to
//! Odoo with TLS from the platform CA, a new environment is added by reload
//! (same process), a proxy killed with SIGKILL is brought back by its
//! supervisor, a supervisor that died is drift that apply repairs, and a
//! module upgrade puts the environment in maintenance (503) — left on by a
//! crash, it is drift that apply clears.
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

/// The proxy's pid as its supervisor reports it (`None` while it is down).
fn proxy_pid(p: &Platform) -> Option<u32> {
    let text = std::fs::read_to_string(p.data_dir().join("ingress").join("status.json")).ok()?;
    let status: Value = serde_json::from_str(&text).ok()?;
    status["processes"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "proxy")?["pid"]
        .as_u64()
        .map(|pid| pid as u32)
}

fn supervisor_pid(p: &Platform) -> u32 {
    std::fs::read_to_string(p.data_dir().join("ingress").join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on a pid careplane recorded for its proxy.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    for _ in 0..200 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{pid} did not die");
}

/// Waits (at most 30 s) until the supervisor reports a proxy other than
/// `old` and it answers `url`.
fn wait_new_proxy(p: &Platform, old: u32, url: &str) -> u32 {
    for _ in 0..300 {
        if let Some(pid) = proxy_pid(p).filter(|&pid| pid != old && alive(pid)) {
            if get(p, url).0 == 200 {
                return pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the supervisor did not bring the proxy back");
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
    let pid = proxy_pid(&p).unwrap();
    p.write_tenants(&format!("{ONE}    - name: test\n      kind: test\n"));
    p.ok(&["apply"]);
    assert_eq!(
        proxy_pid(&p),
        Some(pid),
        "the proxy was restarted, not reloaded"
    );
    assert!(alive(pid));
    let url2 = url_of(&p, "test");
    assert!(
        url2.starts_with("https://test.delta.careplane.localhost:"),
        "{url2}"
    );
    assert_eq!(get(&p, &url2).0, 200, "{url2}");
    assert_eq!(get(&p, &url).0, 200, "{url}");

    // The proxy is killed: its supervisor starts it again, no apply needed.
    kill9(pid);
    let pid = wait_new_proxy(&p, pid, &url);
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());

    // The supervisor dies too (the proxy goes with it): drift, and apply
    // brings both back.
    kill9(supervisor_pid(&p));
    for _ in 0..200 {
        if !alive(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!alive(pid), "the proxy outlived its supervisor");
    let plan = p.plan();
    assert_eq!(
        drift_of(&plan, "ingress/platform").as_deref(),
        Some("the ingress proxy is not running"),
        "{plan}"
    );
    p.ok(&["apply"]);
    let pid = wait_new_proxy(&p, pid, &url);
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());

    // A module upgrade takes the environment down: users get the
    // maintenance page (503, Retry-After) meanwhile. careplane killed in
    // the middle leaves it on; plan says so and apply clears it.
    crash(
        &p,
        &["modules", "upgrade", "delta", "dev", "base"],
        "odoo-env/delta/dev@modules-stopped",
    );
    assert_eq!(get(&p, &url).0, 503, "{url}");
    assert_eq!(
        get(&p, &url2).0,
        200,
        "only the upgraded environment is held"
    );
    let plan = p.plan();
    let drift = drift_of(&plan, "ingress/platform").unwrap_or_default();
    assert!(
        drift.starts_with("in maintenance mode (503): dev.delta.careplane.localhost"),
        "{plan}"
    );
    p.ok(&["apply"]);
    assert_eq!(get(&p, &url).0, 200, "{url}");
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
    // A complete upgrade switches it on and off by itself.
    p.ok(&["modules", "upgrade", "delta", "dev", "base"]);
    assert_eq!(get(&p, &url).0, 200, "{url}");
    assert_eq!(
        proxy_pid(&p),
        Some(pid),
        "maintenance is a reload, not a restart"
    );
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
}

/// A fixed ingress port that another program holds is refused before the
/// apply changes anything, naming the address, the spec field and why.
#[test]
fn a_taken_ingress_port_is_refused_before_anything_changes() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let p = Platform::new(ONE);
    let file = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replacen(
        "  defaults:",
        &format!("  ingress:\n    httpsPort: {port}\n  defaults:"),
        1,
    );
    std::fs::write(file, text).unwrap();
    let out = p.run(&["apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (the Platform's ingress httpsPort)"
        )),
        "{stderr}"
    );
    // Refused up front: nothing was created, the plan is still all creates.
    let plan = p.plan();
    let actions = plan["actions"].as_array().unwrap();
    assert!(
        actions.iter().any(|a| a["id"] == "ingress/platform"),
        "{plan}"
    );
    assert!(actions.iter().all(|a| a["op"] == "create"), "{plan}");
    drop(holder);
}

/// The operator's own certificate for a host is served instead of one from
/// the platform CA (and a new file is drift that apply loads); admin paths
/// answer only to the allowed addresses.
#[test]
fn operator_certificates_and_admin_allow_lists_from_the_spec() {
    if !have_curl() {
        return;
    }
    let p = Platform::with_odoo(ONE);
    let host = "dev.delta.careplane.localhost";
    let own = p.specs.join("own");
    std::fs::create_dir_all(&own).unwrap();
    let issue = |name: &str| {
        let ca = careplane_local::pki::generate_ca(name).unwrap();
        let (cert, key) =
            careplane_local::pki::issue_server_cert(&ca, host, &[host.to_string()]).unwrap();
        std::fs::write(own.join("ca.crt"), &ca.cert_pem).unwrap();
        std::fs::write(own.join("host.crt"), cert).unwrap();
        let key = careplane_local::ExposeSecret::expose_secret(&key).to_string();
        std::fs::write(own.join("host.key"), key).unwrap();
    };
    issue("operator CA one");
    let file = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replacen(
        "  defaults:",
        &format!(
            "  ingress:\n    adminPaths: [/odoo/settings]\n    adminAllow: [192.0.2.0/24]\n    \
             certificates:\n      - host: {host}\n        certFile: {}\n        keyFile: {}\n  defaults:",
            own.join("host.crt").display(),
            own.join("host.key").display()
        ),
        1,
    );
    std::fs::write(file, text).unwrap();
    p.ok(&["apply"]);
    let url = url_of(&p, "dev");
    let with_ca = |ca: &Path, url: &str| {
        let rest = url.strip_prefix("https://").unwrap();
        let port = rest.split('/').next().unwrap().rsplit_once(':').unwrap().1;
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(ca)
            .arg(url)
            .output()
            .unwrap()
    };
    let ok = with_ca(&own.join("ca.crt"), &url);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200", "{ok:?}");
    // Not the platform CA's certificate any more.
    let platform_ca = p.data_dir().join("pki").join("ca.crt");
    assert!(!with_ca(&platform_ca, &url).status.success());
    // Admin paths: 403 from 127.0.0.1, which is not in 192.0.2.0/24.
    let admin = url.replace("/web/login", "/odoo/settings");
    let denied = with_ca(&own.join("ca.crt"), &admin);
    assert_eq!(String::from_utf8_lossy(&denied.stdout), "403", "{denied:?}");
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());

    // A renewed file from the operator: drift, and apply serves it.
    issue("operator CA two");
    let plan = p.plan();
    let drift = drift_of(&plan, "ingress/platform").unwrap_or_default();
    assert!(
        drift.starts_with(&format!("the certificate for {host} in ")),
        "{plan}"
    );
    p.ok(&["apply"]);
    let ok = with_ca(&own.join("ca.crt"), &url);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200", "{ok:?}");
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
}

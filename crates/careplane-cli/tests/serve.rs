//! `careplane serve` against a small applied platform with the Odoo stand-in, real
//! PostgreSQL and Redis (issue 17): tokens, probes recording up minutes, an outage
//! opening an incident, `/metrics`, `/openapi.json`, a `kill -9` losing no acknowledged
//! result, the incident CLI and the monthly report. Results are stamped on a clock running
//! 60 times faster (`--time-scale 60`), so minutes pass in seconds; nothing asserts on time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: gamma
spec:
  tenancy: shared
  environments:
    - name: prod
      kind: production
"#;

/// The binary under test. `CAREPLANE_TEST_BIN` (and `CAREPLANE_TEST_STANDIN`) let a run
/// use copies taken right after the build, when other builds share the target directory.
fn bin() -> std::path::PathBuf {
    std::env::var_os("CAREPLANE_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_careplane").into())
}

fn cmd(p: &Platform, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.args(args).arg("-f").arg(&p.specs);
    c
}

fn run(p: &Platform, args: &[&str]) -> std::process::Output {
    cmd(p, args).output().expect("spawn careplane")
}

fn ok(p: &Platform, args: &[&str]) -> String {
    let out = run(p, args);
    assert!(
        out.status.success(),
        "careplane {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(p: &Platform, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    serde_json::from_str(&ok(p, &a)).expect("json output")
}

struct Serve {
    child: Child,
    port: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `careplane serve` with fast probes and no backup schedule of its own (the tests make
/// their backups when they need them).
fn start(p: &Platform, log: &std::path::Path) -> Serve {
    start_with(p, log, &["--backups-every", "0"])
}

fn start_with(p: &Platform, log: &std::path::Path, extra: &[&str]) -> Serve {
    let port = free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = cmd(
        p,
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--probe-interval",
            "1",
            "--probe-timeout",
            "5",
            "--refresh",
            "1",
            "--time-scale",
            "60",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    )
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("spawn careplane serve");
    let s = Serve { child, port };
    wait_for("serve to answer /healthz", 60, || {
        request(port, "GET", "/healthz", None, None)
            .map(|(c, _)| c == 200)
            .unwrap_or(false)
    });
    s
}

/// One HTTP/1.1 request; (status, body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn get_json(port: u16, path: &str, token: &str) -> Value {
    let (code, body) = request(port, "GET", path, Some(token), None).unwrap();
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "gave up after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A webhook receiver on loopback: every request body it gets, answered 200.
fn webhook() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then content-length bytes of body.
            let body = loop {
                let Ok(n) = c.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body[..len].to_string());
                    }
                }
            };
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Some(v) = body.and_then(|b| serde_json::from_str(&b).ok()) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    (port, got)
}

/// A real SMTP server on loopback: Python's aiosmtpd (PyPI, installed by
/// scripts/install-deps), plain SMTP. It refuses recipients whose address starts with
/// `refused` with a 550, and writes every message it accepts to `dir` as JSON
/// (envelope sender, recipients, the message text). Killed on drop.
struct Smtp {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SMTP_SERVER: &str = r#"
import json, os, sys, threading
from aiosmtpd.controller import Controller

port, out = int(sys.argv[1]), sys.argv[2]

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refused"):
            return "550 5.1.1 mailbox refused by the test relay"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(out, "%04d.json" % len(os.listdir(out)))
        with open(path + ".tmp", "w") as f:
            json.dump({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                       "text": envelope.content.decode("utf-8", "replace")}, f)
        os.rename(path + ".tmp", path)
        return "250 Message accepted"

c = Controller(Handler(), hostname="127.0.0.1", port=port)
c.start()
print("ready", flush=True)
threading.Event().wait()
"#;

fn smtp() -> Option<Smtp> {
    let have = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        let msg = "python3 with aiosmtpd is needed (scripts/install-deps installs it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping the SMTP channel: {msg}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("smtp.py");
    std::fs::write(&script, SMTP_SERVER).unwrap();
    let mail = dir.path().join("mail");
    std::fs::create_dir(&mail).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(&mail)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3 (aiosmtpd)");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
    Some(Smtp { child, port, dir })
}

/// The messages the SMTP server accepted, in order.
fn mails(s: &Smtp) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(s.dir.path().join("mail"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// A real Alertmanager (Debian's prometheus-alertmanager) on a free port, killed on drop.
struct Alertmanager {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alertmanager() -> Option<Alertmanager> {
    let bin = std::path::Path::new("/usr/bin/prometheus-alertmanager");
    if !bin.exists() {
        let msg = "prometheus-alertmanager is needed (scripts/install-deps installs it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipped the Alertmanager part: {msg}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("am.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: none\nreceivers:\n  - name: none\n",
    )
    .unwrap();
    let port = free_port();
    let child = std::process::Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn prometheus-alertmanager");
    let am = Alertmanager {
        child,
        port,
        _dir: dir,
    };
    wait_for("Alertmanager to answer", 60, || {
        request(port, "GET", "/-/ready", None, None)
            .map(|(c, _)| c == 200)
            .unwrap_or(false)
    });
    Some(am)
}

/// The alerts Alertmanager holds for incident `id` (active ones only).
fn alerts_for(am: &Alertmanager, id: &str) -> Vec<Value> {
    let (code, body) = request(am.port, "GET", "/api/v2/alerts?active=true", None, None).unwrap();
    assert_eq!(code, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["incident"] == id && a["status"]["state"] == "active")
        .cloned()
        .collect()
}

fn latest(port: u16, token: &str, probe: &str) -> Option<Value> {
    get_json(port, "/v1/probes", token)
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["probe"] == probe)
        .cloned()
}

fn token(p: &Platform, name: &str, scope: &str, ttl: &str) -> String {
    ok(
        p,
        &[
            "token", "create", "--name", name, "--scope", scope, "--ttl", ttl,
        ],
    )
    .trim()
    .to_string()
}

#[test]
fn serve_probes_records_opens_incidents_and_reports() {
    let p = Platform::with_odoo(TENANTS);
    if let Some(standin) = std::env::var_os("CAREPLANE_TEST_STANDIN") {
        std::fs::copy(standin, p.dir.path().join("bin/odoo-standin")).unwrap();
    }
    // The tier backs up (the `backup` probe checks the recovery point against its RPO).
    let pf = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&pf).unwrap().replacen(
        "  supportHours: business-hours\n",
        "  supportHours: business-hours\n  backupPolicy: nightly\n---\napiVersion: careplane.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {name: nightly}\nspec: {schedule: \"0 2 * * *\", retention: {daily: 7}}\n",
        1,
    );
    std::fs::write(&pf, text).unwrap();
    ok(&p, &["apply"]);
    let log = p.dir.path().join("serve.log");

    // Notification channels: a webhook, a real Alertmanager and a real SMTP server.
    let (hook_port, hooks) = webhook();
    let am = alertmanager();
    let mail = smtp();
    let mut channels = format!(
        "  notifications:\n    channels:\n      - {{name: on-call, webhook: \"http://127.0.0.1:{hook_port}/hook\"}}\n"
    );
    let mut first_step = vec!["on-call"];
    if let Some(am) = &am {
        channels.push_str(&format!(
            "      - {{name: alerts, alertmanager: \"http://127.0.0.1:{}\"}}\n",
            am.port
        ));
        first_step.push("alerts");
    }
    if let Some(m) = &mail {
        // `mail` takes the first step; the executive notice goes to a recipient the server
        // refuses (550) and to a port where nothing listens: both recorded as failed.
        let closed = free_port();
        channels.push_str(&format!(
            "      - name: mail\n        smtp: {{server: \"127.0.0.1:{p}\", tls: none, from: careplane@example.org, to: [oncall@example.org, lead@example.org]}}\n\
             \x20     - name: mail-refused\n        smtp: {{server: \"127.0.0.1:{p}\", tls: none, from: careplane@example.org, to: [refused@example.org]}}\n\
             \x20     - name: mail-down\n        smtp: {{server: \"127.0.0.1:{closed}\", tls: none, from: careplane@example.org, to: [exec@example.org]}}\n",
            p = m.port
        ));
        first_step.push("mail");
        let text = std::fs::read_to_string(&pf).unwrap().replacen(
            "  backupPolicy: nightly\n",
            &format!(
                "  backupPolicy: nightly\n  slo:\n    escalation:\n      - severity: P1\n        steps: [{{afterMinutes: 0, notify: [{}]}}]\n        executiveAfterMinutes: 1\n        executive: [mail-refused, mail-down]\n",
                first_step.join(", ")
            ),
            1,
        );
        std::fs::write(&pf, text).unwrap();
    }
    let pf = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&pf).unwrap();
    std::fs::write(
        &pf,
        text.replacen("  defaults:", &format!("{channels}  defaults:"), 1),
    )
    .unwrap();
    assert!(
        action_ids(&json(&p, &["plan"])).is_empty(),
        "channels change no resource"
    );

    let read = token(&p, "dashboard", "read", "30d");
    let operate = token(&p, "on-call", "operate", "30d");
    let revoked = token(&p, "old", "read", "30d");
    let expiring = token(&p, "short", "read", "1s");
    let list = json(&p, &["token", "list"]);
    let old_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "old")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&p, &["token", "revoke", &old_id]);
    assert!(
        !run(&p, &["token", "revoke", &old_id]).status.success(),
        "revoked twice"
    );
    let tokens_file = std::fs::read_to_string(p.data_dir().join("serve/tokens.json")).unwrap();
    for t in [&read, &operate, &revoked, &expiring] {
        assert!(t.starts_with("cpt_"), "{t}");
        assert!(
            !tokens_file.contains(t.as_str()),
            "a token is stored in clear"
        );
    }

    let s = start(&p, &log);
    let port = s.port;

    // Refused without, with a wrong, revoked or expired token; wrong scope is 403.
    let refused = |t: Option<&str>, want: &str| {
        let (code, body) = request(port, "GET", "/v1/probes", t, None).unwrap();
        assert_eq!(code, 401, "{t:?}: {body}");
        assert!(body.contains(want), "{body}");
    };
    refused(None, "required");
    refused(Some("cpt_000000000000_00"), "not valid");
    refused(Some(&format!("{}x", &read[..read.len() - 1])), "not valid");
    refused(Some(&revoked), "revoked");
    wait_for("the short token to expire", 10, || {
        request(port, "GET", "/v1/probes", Some(&expiring), None)
            .unwrap()
            .1
            .contains("expired")
    });
    let (code, body) = request(port, "GET", "/metrics", None, None).unwrap();
    assert_eq!(code, 401, "{body}");
    let (code, body) = request(port, "POST", "/v1/incidents/x/ack", Some(&read), None).unwrap();
    assert_eq!(code, 403, "{body}");

    // Every probe of the environment answers up.
    for probe in [
        "odoo-login",
        "http",
        "postgres",
        "redis",
        "odoo-cron",
        "wal-archiving",
    ] {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !last.as_ref().is_some_and(|l: &Value| l["outcome"] == "up") {
            assert!(
                Instant::now() < deadline,
                "{probe} not up within 90 s: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
            last = latest(port, &read, probe);
        }
    }
    let login = latest(port, &read, "odoo-login").unwrap();
    let steps: Vec<&str> = login["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    // Without the purchase module the journey reads partners and has no order to print.
    assert_eq!(
        steps,
        [
            "login",
            "read res.partner (purchase not installed)",
            "report skipped (purchase not installed)"
        ],
        "{login}"
    );
    let pg = latest(port, &read, "postgres").unwrap();
    assert!(pg["saturationPermille"].as_u64().unwrap() > 0, "{pg}");
    // Redis memory headroom, read as careplane's monitor user (the tenant may not INFO).
    let redis = latest(port, &read, "redis").unwrap();
    assert!(redis["memoryMaxBytes"].as_u64().unwrap() > 0, "{redis}");
    assert!(redis["memoryUsedBytes"].as_u64().unwrap() > 0, "{redis}");

    // No backup yet: the backup probe is down and says so; a backup brings it up.
    wait_for("the backup probe to report no backup", 60, || {
        latest(port, &read, "backup")
            .is_some_and(|l| l["outcome"] == "down" && l["detail"] == "no backup yet")
    });
    ok(&p, &["backup", "create", "gamma/prod"]);
    wait_for("the backup probe to be up", 60, || {
        latest(port, &read, "backup").is_some_and(|l| {
            l["outcome"] == "up"
                && l["detail"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("within the RPO of 1h"))
        })
    });

    // A scheduled action 20 minutes past its nextcall (a stuck cron worker) fails the cron
    // probe, naming it; once it has run, the probe is up again.
    let mut tenant = tenant_client(&p, "gamma", "prod");
    tenant
        .batch_execute(
            "INSERT INTO ir_cron (cron_name, nextcall) \
             VALUES ('Mail: Email Queue Manager', (now() AT TIME ZONE 'UTC') - interval '20 minutes')",
        )
        .unwrap();
    wait_for("the cron probe to see the overdue action", 60, || {
        latest(port, &read, "odoo-cron").is_some_and(|l| {
            l["outcome"] == "down"
                && l["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("1 scheduled action(s) overdue"))
        })
    });
    tenant
        .batch_execute("UPDATE ir_cron SET nextcall = now() AT TIME ZONE 'UTC' + interval '1 hour'")
        .unwrap();
    wait_for("the cron probe to be up again", 60, || {
        latest(port, &read, "odoo-cron").is_some_and(|l| l["outcome"] == "up")
    });
    let envs = get_json(port, "/v1/environments", &read);
    assert_eq!(envs[0]["kind"], "production", "{envs}");
    let status = get_json(port, "/v1/status", &read);
    assert_eq!(status["environments"][0]["tenant"], "gamma", "{status}");

    // /metrics parses as Prometheus text and says the journey is up.
    let (code, metrics) = request(port, "GET", "/metrics", Some(&read), None).unwrap();
    assert_eq!(code, 200, "{metrics}");
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line:?}");
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line:?}"
        );
        if let Some(l) = name.strip_prefix(bare).filter(|l| !l.is_empty()) {
            assert!(l.starts_with('{') && l.ends_with('}'), "{line:?}");
        }
    }
    assert!(
        metrics.contains(
            "careplane_probe_up{tenant=\"gamma\",environment=\"prod\",probe=\"odoo-login\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("careplane_sla_availability_ratio{tenant=\"gamma\",environment=\"prod\"}"),
        "{metrics}"
    );

    // The OpenAPI document lists the routes.
    let (code, doc) = request(port, "GET", "/openapi.json", None, None).unwrap();
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for path in [
        "/v1/probes",
        "/v1/incidents/{id}/ack",
        "/metrics",
        "/v1/reports",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from /openapi.json"
        );
    }

    // kill -9, restart: the last acknowledged result is in the store.
    let acked = latest(port, &read, "odoo-login").unwrap();
    let mut s = s;
    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    let _ = s.child.wait();
    drop(s);
    let s = start(&p, &log);
    let port = s.port;
    let at = acked["at"].as_str().unwrap();
    let minutes = get_json(
        port,
        &format!("/v1/series/gamma/prod/odoo-login/minutes?from={at}&minutes=1"),
        &read,
    );
    assert_eq!(
        minutes["observations"][0], "up",
        "acknowledged {acked} lost: {minutes}"
    );

    // An outage: every probe fails, and after N failed minutes an incident opens.
    ok(&p, &["stop"]);
    wait_for("the journey to be down", 60, || {
        latest(port, &read, "odoo-login").is_some_and(|l| l["outcome"] == "down")
    });
    // Each probe has its own schedule: Redis's latest result may predate
    // the stop when the journey's already shows it.
    wait_for("Redis to be down", 60, || {
        latest(port, &read, "redis").is_some_and(|l| l["outcome"] == "down")
    });
    let mut incident = Value::Null;
    wait_for("an incident to open", 90, || {
        let all = get_json(port, "/v1/incidents?open=true", &read);
        incident = all[0].clone();
        !incident.is_null()
    });
    assert_eq!(incident["severity"], "P1", "{incident}");
    assert_eq!(incident["environment"], "prod");
    let id = incident["id"].as_str().unwrap().to_string();

    // Every channel hears of it (the tier sets no escalation: all channels, on opening).
    wait_for("the webhook to be notified", 60, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h["incident"]["id"] == id.as_str() && h["notification"]["key"] == "step-0")
    });
    let first = hooks
        .lock()
        .unwrap()
        .iter()
        .find(|h| h["type"] == "careplane.incident")
        .cloned()
        .unwrap();
    assert_eq!(first["type"], "careplane.incident", "{first}");
    assert_eq!(first["incident"]["severity"], "P1", "{first}");
    if let Some(am) = &am {
        let deadline = Instant::now() + Duration::from_secs(60);
        while alerts_for(am, &id).is_empty() {
            if Instant::now() > deadline {
                let (_, all) = request(am.port, "GET", "/api/v2/alerts", None, None).unwrap();
                panic!(
                    "Alertmanager holds no alert for {id}: {all}\nserve's log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let a = &alerts_for(am, &id)[0];
        assert_eq!(a["labels"]["alertname"], "CareplaneIncident", "{a}");
        assert_eq!(a["labels"]["severity"], "P1", "{a}");
        assert_eq!(a["labels"]["tenant"], "gamma", "{a}");
    }
    wait_for(
        "the notification to be recorded on the incident",
        60,
        || {
            let i = &json(&p, &["incident", "list"])[0];
            i["notifications"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["key"] == "step-0"))
        },
    );
    assert_eq!(
        hooks
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h["notification"]["key"] == "step-0")
            .count(),
        1,
        "the webhook was told twice"
    );

    // The e-mail of the first step arrived, to both recipients, recorded as delivered;
    // the executive notice's refused recipient and unreachable relay are recorded as
    // failed with what went wrong.
    if let Some(m) = &mail {
        wait_for("the incident e-mail", 60, || !mails(m).is_empty());
        let got = mails(m);
        assert_eq!(got.len(), 1, "{got:?}");
        let e = &got[0];
        assert_eq!(e["from"], "careplane@example.org", "{e}");
        assert_eq!(
            e["to"],
            serde_json::json!(["oncall@example.org", "lead@example.org"]),
            "{e}"
        );
        let text = e["text"].as_str().unwrap();
        assert!(
            text.contains("Subject: [careplane P1] gamma/prod down\r\n"),
            "{text}"
        );
        for want in [
            "Tenant:       gamma",
            "Severity:     P1",
            "What failed:  the odoo-login probe",
            &format!("careplane incident ack {id}"),
            "Content-Type: text/plain",
        ] {
            assert!(text.contains(want), "no {want:?} in {text}");
        }
        let mut i = Value::Null;
        wait_for("the failed e-mail deliveries to be recorded", 60, || {
            i = json(&p, &["incident", "list"])[0].clone();
            let d = |c: &str| {
                i["deliveries"]
                    .as_array()
                    .and_then(|a| a.iter().find(|d| d["channel"] == c).cloned())
            };
            d("mail").is_some_and(|d| d["deliveredAt"].is_string())
                && d("mail-refused").is_some_and(|d| d["lastError"].is_string())
                && d("mail-down").is_some_and(|d| d["lastError"].is_string())
        });
        let d = |c: &str| {
            i["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["channel"] == c)
                .unwrap()
                .clone()
        };
        assert_eq!(d("mail")["key"], "step-0", "{i}");
        assert_eq!(d("mail")["attempts"], 1, "{i}");
        let refused = d("mail-refused");
        assert_eq!(refused["key"], "executive", "{i}");
        assert!(refused["deliveredAt"].is_null(), "{i}");
        let err = refused["lastError"].as_str().unwrap();
        assert!(
            err.contains("550") && err.contains("mailbox refused by the test relay"),
            "the server's reply is not in {err:?}"
        );
        let err = d("mail-down")["lastError"].as_str().unwrap().to_string();
        assert!(
            err.contains("Connection refused") && err.contains("smtp 127.0.0.1:"),
            "{err:?}"
        );
        assert!(
            !i["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["key"] == "executive"),
            "a notice no channel took is recorded as sent: {i}"
        );
    }

    // Acknowledge through the API (operate), note and resolve with the CLI.
    let (code, body) = request(
        port,
        "POST",
        &format!("/v1/incidents/{id}/ack"),
        Some(&operate),
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = request(
        port,
        "POST",
        &format!("/v1/incidents/{id}/ack"),
        Some(&operate),
        None,
    )
    .unwrap();
    assert_eq!(code, 409, "a second acknowledgement: {body}");
    ok(
        &p,
        &[
            "incident",
            "note",
            &id,
            "PostgreSQL stopped for maintenance",
        ],
    );
    ok(&p, &["start"]);
    wait_for("the journey to be up again", 90, || {
        latest(port, &read, "odoo-login").is_some_and(|l| l["outcome"] == "up")
    });
    ok(
        &p,
        &["incident", "resolve", &id, "--summary", "started again"],
    );
    let listed = json(&p, &["incident", "list"]);
    let i = &listed[0];
    assert_eq!(i["acknowledged"]["actor"], "token:on-call", "{i}");
    assert_eq!(
        i["notes"][0]["text"], "PostgreSQL stopped for maintenance",
        "{i}"
    );
    assert!(i["resolved"]["at"].is_string(), "{i}");
    assert!(ok(&p, &["incident", "list", "--open"]).trim().is_empty());

    // The channels hear that it is over; Alertmanager's alert is resolved.
    wait_for("the webhook to hear of the resolution", 60, || {
        hooks.lock().unwrap().iter().any(|h| {
            h["incident"]["id"] == id.as_str()
                && h["notification"]["key"] == "resolved"
                && h["incident"]["resolved"] == true
        })
    });
    if let Some(am) = &am {
        wait_for("Alertmanager's alert to be resolved", 60, || {
            alerts_for(am, &id).is_empty()
        });
    }
    if let Some(m) = &mail {
        wait_for("the resolution e-mail", 60, || {
            mails(m).iter().any(|e| {
                e["text"]
                    .as_str()
                    .unwrap()
                    .contains("Subject: [careplane P1] gamma/prod resolved\r\n")
            })
        });
    }

    // A clean stop flushes and compacts.
    let mut s = s;
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "serve did not stop on SIGTERM within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(s);

    // The report counts the minutes: up, down (the outage), and computes availability.
    let month = &incident["startedAt"].as_str().unwrap()[..7];
    let out = ok(
        &p,
        &[
            "sla", "report", "--month", month, "--tenant", "gamma", "--format", "json",
        ],
    );
    let r: Value = serde_json::from_str(&out).unwrap();
    let r = &r[0];
    let (up, down, unknown) = (
        r["upMinutes"].as_u64().unwrap(),
        r["downMinutes"].as_u64().unwrap(),
        r["unknownMinutes"].as_u64().unwrap(),
    );
    assert!(up > 0 && down >= 2, "{r}");
    // Unknown (no data) counts as down by default: availability = up / all valid minutes.
    let ppm = up * 1_000_000 / (up + down + unknown);
    let shown: f64 = r["availability"].as_str().unwrap().parse().unwrap();
    assert!(
        (shown * 10_000.0 - ppm as f64).abs() < 1.0,
        "{shown} vs {ppm} ppm: {r}"
    );
    assert_eq!(r["objective"], "99.5", "{r}");
    assert_eq!(r["incidents"][0]["id"], id.as_str(), "{r}");
    let html = ok(&p, &["sla", "report", "--month", month, "--format", "html"]);
    assert!(html.contains("<svg"), "no SVG timeline in the HTML report");

    // No secret in serve's log or files.
    let creds = json(&p, &["credentials", "gamma", "prod"]);
    let mut secrets = vec![read, operate, revoked, expiring];
    for s in [
        &creds["postgres"]["password"],
        &creds["redis"]["password"],
        &creds["odoo"]["password"],
    ] {
        secrets.push(s.as_str().unwrap().to_string());
    }
    let log = std::fs::read_to_string(&log).unwrap();
    let sent: Vec<Value> = mail.as_ref().map(mails).unwrap_or_default();
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret in serve's log");
        for e in &sent {
            assert!(
                !e.to_string().contains(secret.as_str()),
                "a secret in an e-mail"
            );
        }
        for dir in ["serve", "sla"] {
            let found = files_containing(&p.data_dir().join(dir), secret);
            assert!(found.is_empty(), "a secret in {found:?}");
        }
    }
}

#[test]
fn serve_prints_a_hardened_systemd_unit() {
    let p = Platform::new(TENANTS);
    let unit = ok(&p, &["serve", "--print-systemd-unit"]);
    for want in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ExecStart=",
        "serve -f ",
        "ReadWritePaths=",
        "EnvironmentFile=-/etc/careplane/serve.env",
    ] {
        assert!(unit.contains(want), "{want} missing:\n{unit}");
    }
    assert!(
        !p.data_dir().exists(),
        "printing the unit must not create the platform"
    );
}

fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if std::fs::read(&p)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(p);
        }
    }
    found
}

#[test]
fn serve_speaks_https_with_the_given_certificate() {
    use careplane_probe::{Check, HttpCheck, Outcome};
    use secrecy::ExposeSecret;
    let p = Platform::new(TENANTS);
    let ca = careplane_local::pki::generate_ca("test CA").unwrap();
    let (cert, key) = careplane_local::pki::issue_server_cert(&ca, "serve", &[]).unwrap();
    let (cert_file, key_file) = (
        p.dir.path().join("serve.crt"),
        p.dir.path().join("serve.key"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key.expose_secret()).unwrap();
    let port = free_port();
    let mut child = cmd(
        &p,
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let probe = |scheme: &str, path: &str, status: u16| {
        let check = Check::Http(HttpCheck {
            url: format!("{scheme}://127.0.0.1:{port}{path}"),
            expect_status: status,
            body_contains: None,
            ca_pem: Some(ca.cert_pem.clone()),
            host_header: None,
        });
        rt.block_on(careplane_probe::run(
            &check,
            Duration::from_secs(10),
            jiff::Timestamp::now(),
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut r = probe("https", "/healthz", 200);
    while r.outcome != Outcome::Up {
        assert!(
            Instant::now() < deadline,
            "no HTTPS answer within 60 s: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        r = probe("https", "/healthz", 200);
    }
    assert!(r.cert_days_left.unwrap() > 300, "{r:?}");
    // The API still wants a token; plain HTTP gets no answer.
    assert_eq!(probe("https", "/v1/probes", 401).outcome, Outcome::Up);
    assert_eq!(probe("http", "/healthz", 200).outcome, Outcome::Down);
    let _ = child.kill();
    let _ = child.wait();
}

/// `--tls-platform-ca`: the API's certificate comes from the platform CA at start (kept in
/// memory, audited), so clients trust the same CA as for PostgreSQL; without any TLS, serve
/// refuses to listen beyond loopback.
#[test]
fn serve_takes_its_certificate_from_the_platform_ca() {
    use careplane_probe::{Check, HttpCheck, Outcome};
    let p = Platform::new(TENANTS);
    let refused = run(&p, &["serve", "--listen", "0.0.0.0:0"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("--tls-platform-ca"), "{err}");

    ok(&p, &["apply"]);
    let creds = json(&p, &["credentials", "gamma", "prod"]);
    let ca = std::fs::read_to_string(creds["postgres"]["sslrootcert"].as_str().unwrap()).unwrap();
    let port = free_port();
    let mut child = cmd(
        &p,
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-platform-ca",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let probe = |ca: &str| {
        rt.block_on(careplane_probe::run(
            &Check::Http(HttpCheck {
                url: format!("https://127.0.0.1:{port}/healthz"),
                expect_status: 200,
                body_contains: None,
                ca_pem: Some(ca.to_string()),
                host_header: None,
            }),
            Duration::from_secs(10),
            jiff::Timestamp::now(),
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut r = probe(&ca);
    while r.outcome != Outcome::Up {
        assert!(
            Instant::now() < deadline,
            "no HTTPS answer within 60 s: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        r = probe(&ca);
    }
    // Another CA is not trusted: the certificate really is the platform's.
    let other = careplane_local::pki::generate_ca("other CA").unwrap();
    assert_eq!(probe(&other.cert_pem).outcome, Outcome::Down);
    let _ = child.kill();
    let _ = child.wait();
    let log = json(&p, &["audit", "log"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "certificate.issue" && e["result"]["status"] == "succeeded"),
        "{log}"
    );
}

/// A JSON-RPC call to an environment's Odoo; (result or error, session cookie set).
fn rpc(
    port: u16,
    path: &str,
    params: Value,
    session: Option<&str>,
) -> (Result<Value, String>, Option<String>) {
    let body = serde_json::json!({"jsonrpc": "2.0", "method": "call", "params": params, "id": 1})
        .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let cookie = session
        .map(|c| format!("Cookie: session_id={c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{cookie}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let sid = head.lines().find_map(|l| {
        l.strip_prefix("Set-Cookie: session_id=")
            .map(|c| c.split(';').next().unwrap().to_string())
    });
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    match v.get("error") {
        Some(e) => (Err(e["data"]["name"].as_str().unwrap().to_string()), sid),
        None => (Ok(v["result"].clone()), sid),
    }
}

fn odoo_login(port: u16, db: &str, login: &str, password: &str) -> String {
    let (r, sid) = rpc(
        port,
        "/web/session/authenticate",
        serde_json::json!({"db": db, "login": login, "password": password}),
        None,
    );
    r.unwrap();
    sid.unwrap()
}

fn call_kw(port: u16, sid: &str, model: &str, method: &str, args: Value) -> Result<Value, String> {
    rpc(
        port,
        &format!("/web/dataset/call_kw/{model}/{method}"),
        serde_json::json!({"model": model, "method": method, "args": args, "kwargs": {}}),
        Some(sid),
    )
    .0
}

fn latest_in(port: u16, token: &str, env: &str, probe: &str) -> Option<Value> {
    get_json(port, "/v1/probes", token)
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["probe"] == probe && l["environment"] == env)
        .cloned()
}

fn step_names(r: &Value) -> Vec<String> {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

const JOURNEY_TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: delta
spec:
  tenancy: shared
  modules: [purchase]
  environments:
    - name: prod
      kind: production
    - name: dev
      kind: dev
"#;

/// The journeys run as the `careplane-probe` user apply keeps in every environment: it
/// exists with internal and purchase user rights and no admin rights; the read journey
/// (log in, read purchase orders, print one as PDF) runs as it in every environment, the
/// write journey (create, confirm, cancel an order) only outside production; a wrong
/// probe password fails the journey with a clear detail that holds no password.
#[test]
fn serve_journeys_run_as_the_low_privilege_probe_user() {
    let p = Platform::with_odoo(JOURNEY_TENANTS);
    if let Some(standin) = std::env::var_os("CAREPLANE_TEST_STANDIN") {
        std::fs::copy(standin, p.dir.path().join("bin/odoo-standin")).unwrap();
    }
    ok(&p, &["apply"]);
    let creds = |env: &str| json(&p, &["credentials", "delta", env]);
    let prod = creds("prod");
    let probe = &prod["odoo"]["probe"];
    assert_eq!(probe["login"], "careplane-probe", "{prod}");
    let probe_pw = probe["password"].as_str().unwrap().to_string();
    assert!(probe_pw.len() >= 16, "a generated password");
    let url = prod["odoo"]["url"].as_str().unwrap();
    let oport: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{url}"));
    let db = prod["postgres"]["database"].as_str().unwrap().to_string();

    // Its groups, as the admin sees them: internal and purchase user, nothing more.
    let admin = odoo_login(
        oport,
        &db,
        "admin",
        prod["odoo"]["password"].as_str().unwrap(),
    );
    let group = |module: &str, name: &str| {
        call_kw(
            oport,
            &admin,
            "ir.model.data",
            "search_read",
            serde_json::json!([[["module", "=", module], ["name", "=", name]]]),
        )
        .unwrap()[0]["res_id"]
            .as_i64()
            .unwrap()
    };
    let user = call_kw(
        oport,
        &admin,
        "res.users",
        "search_read",
        serde_json::json!([[["login", "=", "careplane-probe"]], ["groups_id"]]),
    )
    .unwrap();
    let groups: Vec<i64> = user[0]["groups_id"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_i64().unwrap())
        .collect();
    assert!(groups.contains(&group("base", "group_user")), "{user}");
    assert!(
        groups.contains(&group("purchase", "group_purchase_user")),
        "{user}"
    );
    for admin_group in ["group_system", "group_erp_manager"] {
        assert!(
            !groups.contains(&group("base", admin_group)),
            "{admin_group}: {user}"
        );
    }
    // ... and what that means: it can not make users.
    let as_probe = odoo_login(oport, &db, "careplane-probe", &probe_pw);
    let refused = call_kw(
        oport,
        &as_probe,
        "res.users",
        "create",
        serde_json::json!([{"login": "intruder", "password": "x"}]),
    );
    assert_eq!(refused, Err("odoo.exceptions.AccessError".into()));

    let log = p.dir.path().join("serve.log");
    let s = start(&p, &log);
    let read = token(&p, "dashboard", "read", "30d");
    let wait_up = |env: &str, probe: &str| {
        let mut last = None;
        wait_for(&format!("{probe} of {env} to be up"), 90, || {
            last = latest_in(s.port, &read, env, probe);
            last.as_ref().is_some_and(|l| l["outcome"] == "up")
        });
        last.unwrap()
    };
    let r = wait_up("prod", "odoo-login");
    assert_eq!(step_names(&r), ["login", "read", "report"], "{r}");
    // dev has one web worker: a real Odoo would hang printing a PDF (wkhtmltopdf asks the
    // same, busy worker for the page's assets), so the journey names the skipped step.
    let r = wait_up("dev", "odoo-login");
    assert_eq!(
        step_names(&r),
        [
            "login",
            "read",
            "report skipped (1 web worker: Odoo cannot print PDFs)"
        ],
        "{r}"
    );
    let w = wait_up("dev", "odoo-write");
    assert_eq!(
        step_names(&w),
        ["login", "create", "confirm", "cancel", "delete"],
        "{w}"
    );
    assert!(
        latest_in(s.port, &read, "prod", "odoo-write").is_none(),
        "no write journey in production"
    );
    // Someone changes the probe user's password: the journey fails, saying who could not
    // log in, and no password appears in the detail or the log.
    let uid = user[0]["id"].as_i64().unwrap();
    call_kw(
        oport,
        &admin,
        "res.users",
        "write",
        serde_json::json!([[uid], {"password": "changed-by-someone"}]),
    )
    .unwrap();
    let mut down = None;
    wait_for("the journey to fail", 60, || {
        down = latest_in(s.port, &read, "prod", "odoo-login");
        down.as_ref().is_some_and(|l| l["outcome"] == "down")
    });
    let detail = down.unwrap()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("login as careplane-probe") && detail.contains("AccessDenied"),
        "{detail}"
    );
    // The write journey has run every second all along: its orders are deleted, not piled
    // up (the seeded one, and at most one of a run in flight, remain).
    let dev = creds("dev");
    let dport: u16 = dev["odoo"]["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let dadmin = odoo_login(
        dport,
        dev["postgres"]["database"].as_str().unwrap(),
        "admin",
        dev["odoo"]["password"].as_str().unwrap(),
    );
    let orders = call_kw(
        dport,
        &dadmin,
        "purchase.order",
        "search_read",
        serde_json::json!([[], ["name", "state"]]),
    )
    .unwrap();
    assert!(orders.as_array().unwrap().len() <= 2, "{orders}");
    assert!(
        orders
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "P00001"),
        "{orders}"
    );
    drop(s);
    for secret in [probe_pw.as_str(), "changed-by-someone"] {
        assert!(!detail.contains(secret), "{detail}");
        assert!(
            !std::fs::read_to_string(&log).unwrap().contains(secret),
            "a password in the serve log"
        );
    }
    assert!(
        files_containing(&p.data_dir(), &probe_pw).is_empty(),
        "the probe password in a file in clear"
    );
}

/// `careplane serve` runs the backup policies' schedules itself (as `backup run-due` from
/// cron would): an environment without a backup gets one, proven by a restore
/// verification, and later runs make no more until the schedule comes round again.
#[test]
fn serve_runs_the_backup_schedule() {
    let p = Platform::new(TENANTS);
    let pf = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&pf).unwrap().replacen(
        "  supportHours: business-hours\n",
        "  supportHours: business-hours\n  backupPolicy: nightly\n---\napiVersion: careplane.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {name: nightly}\nspec: {schedule: \"0 2 * * *\", retention: {daily: 7}}\n",
        1,
    );
    std::fs::write(&pf, text).unwrap();
    ok(&p, &["apply"]);
    assert_eq!(json(&p, &["backup", "list"]), serde_json::json!([]));
    let log = p.dir.path().join("serve.log");
    let s = start_with(&p, &log, &["--backups-every", "1"]);
    let runs = || {
        json(&p, &["audit", "log"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "backup.run-due" && e["result"]["status"] == "succeeded")
            .count()
    };
    let mut made = Value::Null;
    wait_for("serve's scheduled backup", 180, || {
        made = json(&p, &["backup", "list"]);
        made.as_array().is_some_and(|l| !l.is_empty())
    });
    let made = made.as_array().unwrap().clone();
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["reason"], "schedule", "{made:?}");
    assert_eq!(made[0]["tenant"], "gamma", "{made:?}");
    // Proven by a restore: the environment's last restore verification is of it.
    let id = made[0]["id"].as_str().unwrap().to_string();
    wait_for(
        "the restore verification of the scheduled backup",
        120,
        || {
            let st = json(&p, &["status"]);
            st["environments"].as_array().unwrap().iter().any(|e| {
                e["tenant"] == "gamma"
                    && e["lastRestoreVerification"]["backup"] == id.as_str()
                    && e["lastRestoreVerification"]["outcome"] == "baseline"
            })
        },
    );
    // Three more runs later, still the one backup: the nightly slot has not come again.
    let after = runs();
    wait_for("three more scheduled runs", 120, || runs() >= after + 3);
    let still = json(&p, &["backup", "list"]);
    assert_eq!(still.as_array().unwrap().len(), 1, "{still}");

    // WAL archiving is probed from the engine's status: up now; once the archiver fails
    // (it can no longer read its keys) the environment's `wal-archiving` is down, naming
    // the WAL file that failed.
    let read = token(&p, "dashboard", "read", "1d");
    wait_for("wal-archiving up", 60, || {
        latest(s.port, &read, "wal-archiving").is_some_and(|l| l["outcome"] == "up")
    });
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let cluster = store.resource("pg-cluster/shared").unwrap().unwrap();
    drop(store);
    let keys = std::path::PathBuf::from(cluster.observed["archive"]["keysFile"].as_str().unwrap());
    let saved = std::fs::read(&keys).unwrap();
    std::fs::write(&keys, "{}").unwrap();
    admin_client(&p, "pg-cluster/shared")
        .batch_execute(
            "CREATE TABLE public.churn (); DROP TABLE public.churn; SELECT pg_switch_wal();",
        )
        .unwrap();
    let mut down = None;
    wait_for("wal-archiving down", 90, || {
        down = latest(s.port, &read, "wal-archiving");
        down.as_ref().is_some_and(|l| l["outcome"] == "down")
    });
    let d = down.unwrap();
    assert!(
        d["detail"]
            .as_str()
            .is_some_and(|t| t.contains("archive_command is failing (last failed WAL 0000")),
        "{d}"
    );
    // Repaired, it archives again and the probe comes back up.
    std::fs::write(&keys, saved).unwrap();
    wait_for("wal-archiving up again", 120, || {
        latest(s.port, &read, "wal-archiving").is_some_and(|l| l["outcome"] == "up")
    });
    drop(s);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("backups: 1 made, 0 verified, 1 restore verifications"),
        "{text}"
    );
    assert!(!text.contains("backups: failed"), "{text}");
}

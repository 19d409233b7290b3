//! The CLI against a remote `careplane serve` (issue 20, M12; docs/design/0013
//! "The CLI"): `careplane login --server URL --device` signs in by device
//! code (RFC 8628) at the provider the server names, through a real OpenID
//! provider on loopback whose own pages the test fills in; then `status`
//! and `incident list|ack|note` run through the API as that user — a
//! viewer's ack is refused with the server's reason, an operator's is
//! audited with her identity — or with an API token in CAREPLANE_TOKEN.
//! Commands the API does not serve are refused by name, and no token ever
//! shows in any command's output.

mod common;
#[path = "../../careplane-identity/tests/common/mod.rs"]
mod idp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: stmarys
spec:
  tenancy: shared
  environments:
    - name: production
      kind: production
"#;

fn healthz(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// `careplane serve` on `port`, answering /healthz (bounded wait).
fn start_serve(p: &Platform, port: u16) -> Serve {
    let log = std::fs::File::create(p.dir.path().join("serve.log")).unwrap();
    let serve = Serve(
        p.cmd(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--refresh",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn careplane serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !healthz(port) {
        assert!(
            Instant::now() < deadline,
            "careplane serve did not answer /healthz within 60 s: {}",
            std::fs::read_to_string(p.dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    serve
}

/// The careplane binary as a remote user runs it: no specs, no data
/// directory, her own session file, nothing inherited from the test's
/// environment.
fn remote(session: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_careplane"));
    c.args(args)
        .env("CAREPLANE_SESSION", session)
        .env_remove("CAREPLANE_TOKEN")
        .env_remove("CAREPLANE_SERVER")
        .env_remove("CAREPLANE_CA_CERT")
        .env_remove("CAREPLANE_LOGIN_HINT");
    c
}

/// Every command's output, to check at the end that no token is in any.
#[derive(Default)]
struct Outputs(Vec<String>);

impl Outputs {
    fn run(&mut self, mut c: Command) -> (bool, String, String) {
        let out = c.output().expect("spawn careplane");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        self.0.push(format!("{o}{e}"));
        (out.status.success(), o, e)
    }

    fn ok(&mut self, c: Command) -> String {
        let what = format!("{c:?}");
        let (ok, o, e) = self.run(c);
        assert!(ok, "{what} failed:\nstdout:\n{o}\nstderr:\n{e}");
        o
    }

    fn refused(&mut self, c: Command) -> String {
        let what = format!("{c:?}");
        let (ok, o, e) = self.run(c);
        assert!(!ok, "{what} succeeded:\n{o}");
        e
    }
}

/// `careplane login --server URL --device` as `hint`: the CLI prints the
/// verification address on stderr and polls; the test plays the user in
/// the provider's pages. Returns the session's ID token.
fn device_login(outs: &mut Outputs, server: &str, session: &Path, hint: &str) -> String {
    let login = remote(session, &["login", "--server", server, "--device"]);
    device_login_with(outs, login, session, hint)
}

/// Runs `login` (a `careplane login --device` command) as `hint`.
fn device_login_with(outs: &mut Outputs, mut login: Command, session: &Path, hint: &str) -> String {
    let mut child = login
        .env("CAREPLANE_SESSION", session)
        .env("CAREPLANE_LOGIN_HINT", hint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn careplane login");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("Or open ") {
                let _ = tx.send(url.trim().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("careplane login --device printed no verification address within 60 s");
    idp::device_browse(&url, true);
    // The CLI polls every second (the provider's interval): bounded wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "careplane login --device did not finish within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let stderr = reader.join().unwrap();
    outs.0.push(format!("{stdout}{stderr}"));
    assert!(status.success(), "login failed: {stdout}{stderr}");
    assert!(
        stdout.contains(&format!("signed in as {}", hint.split(';').next().unwrap())),
        "{stdout}"
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(session).unwrap()).unwrap();
    s["id_token"].as_str().unwrap().to_string()
}

fn open_incident(p: &Platform, id: &str) {
    use careplane_sla::model::{EnvironmentKind, Impact, Severity};
    let now = jiff::Timestamp::now();
    let inc = careplane_sla::incident::Incident {
        id: id.into(),
        tenant: "stmarys".into(),
        environment: "production".into(),
        environment_kind: EnvironmentKind::Production,
        probe: "http".into(),
        impact: Impact::Down,
        severity: Severity::P1,
        started_at: now - jiff::SignedDuration::from_mins(5),
        opened_at: now - jiff::SignedDuration::from_mins(4),
        restored_at: None,
        acknowledged: None,
        resolved: None,
        notes: Vec::new(),
        notifications: Vec::new(),
        deliveries: Vec::new(),
    };
    careplane_server::incidents::update(&p.data_dir(), |all| {
        all.push(inc);
        Ok(((), true))
    })
    .unwrap();
}

#[test]
fn remote_cli_signs_in_by_device_code_and_acts_as_that_user() {
    let Some(idp) = idp::idp() else { return };
    let p = Platform::new(TENANTS);
    careplane_state::Store::open(&p.data_dir()).unwrap();
    open_incident(&p, "inc-1");
    let port = free_port();
    let _serve = start_serve(&p, port);
    let server = format!("http://127.0.0.1:{port}");
    let home = p.dir.path();
    let (alice, dave, nobody): (PathBuf, PathBuf, PathBuf) = (
        home.join("alice.session.json"),
        home.join("dave.session.json"),
        home.join("nobody.session.json"),
    );
    let mut outs = Outputs::default();

    // No identity provider configured yet: the server says so.
    let e = outs.refused(remote(&alice, &["login", "--server", &server, "--device"]));
    assert!(
        e.contains("404") && e.contains("none is configured for this platform"),
        "{e}"
    );
    std::fs::write(
        p.data_dir().join("identity.json"),
        serde_json::to_string(&idp::config(&idp.issuer, "careplane-cli")).unwrap(),
    )
    .unwrap();

    // Not signed in, no API token: a clear refusal before any request.
    let e = outs.refused(remote(&nobody, &["--server", &server, "status"]));
    assert!(
        e.contains("not signed in") && e.contains("CAREPLANE_TOKEN"),
        "{e}"
    );
    // Plain http to another host is refused before anything is sent.
    let e = outs.refused(remote(
        &nobody,
        &["--server", "http://ops.example.org:8470", "status"],
    ));
    assert!(e.contains("plain http only"), "{e}");

    // On the host, `login --device` signs in at identity.json's provider
    // and is audited there, with how.
    let carol = home.join("carol.session.json");
    device_login_with(
        &mut outs,
        p.cmd(&["login", "--device"]),
        &carol,
        "carol;mfa",
    );
    let log = p.json(&["audit", "log"]);
    let login = log.as_array().unwrap().last().unwrap().clone();
    assert_eq!(login["action"], "login", "{login}");
    assert_eq!(login["actor"]["id"], "carol");
    assert_eq!(login["actor"]["mfa"], true);
    assert_eq!(login["parameters"]["method"], "device-code");

    // alice (viewer) signs in by device code, and reads as herself.
    let alice_token = device_login(&mut outs, &server, &alice, "alice");
    let text = outs.ok(remote(&alice, &["--server", &server, "status"]));
    assert_eq!(text, p.ok(&["status"]), "the same output as on the host");
    let json: Value = serde_json::from_str(&outs.ok(remote(
        &alice,
        &["--server", &server, "status", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(json, p.json(&["status"]));
    // CAREPLANE_SERVER works as --server does.
    let list = outs.ok({
        let mut c = remote(&alice, &["incident", "list"]);
        c.env("CAREPLANE_SERVER", &server);
        c
    });
    assert!(
        list.starts_with("inc-1  P1  stmarys/production  http since ") && list.contains("open"),
        "{list}"
    );
    let json: Value = serde_json::from_str(&outs.ok(remote(
        &alice,
        &[
            "--server", &server, "incident", "list", "--open", "--output", "json",
        ],
    )))
    .unwrap();
    assert_eq!(json[0]["id"], "inc-1");
    // The SLA report of a past month: rendered here from /v1/reports,
    // byte for byte what the host renders.
    let args = ["sla", "report", "--month", "2026-01", "--format", "json"];
    let mut a = vec!["--server", server.as_str()];
    a.extend(args);
    let report = outs.ok(remote(&alice, &a));
    assert!(report.contains("\"stmarys\""), "{report}");
    assert_eq!(report, p.ok(&args));
    // A viewer may not act: the server's 403 and its reason.
    let e = outs.refused(remote(
        &alice,
        &["--server", &server, "incident", "ack", "inc-1"],
    ));
    assert!(
        e.contains("403") && e.contains("alice") && e.contains("may not incident.update"),
        "{e}"
    );

    // dave (tenant-operator of stmarys) acknowledges; the server audits it
    // with his identity.
    let dave_token = device_login(&mut outs, &server, &dave, "dave");
    let out = outs.ok(remote(
        &dave,
        &["--server", &server, "incident", "ack", "inc-1"],
    ));
    assert_eq!(out, "acknowledged inc-1\n");
    // A tenant operator reads only his tenant's series and SLO, not the
    // platform's list; alice sees the acknowledgement.
    let e = outs.refused(remote(&dave, &["--server", &server, "incident", "list"]));
    assert!(e.contains("403") && e.contains("dave may not read"), "{e}");
    let list = outs.ok(remote(&alice, &["--server", &server, "incident", "list"]));
    assert!(list.contains("acknowledged by dave (oidc)"), "{list}");
    let log = p.json(&["audit", "log"]);
    let entries = log.as_array().unwrap();
    let refused = entries
        .iter()
        .find(|e| e["action"] == "incident.ack" && e["result"]["status"] == "refused")
        .unwrap_or_else(|| panic!("alice's refusal is not in the log: {log}"));
    assert_eq!(refused["actor"]["id"], "alice");
    let acked: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "incident.ack" && e["result"]["status"] == "succeeded")
        .collect();
    assert_eq!(acked.len(), 1, "{log}");
    let acked = acked[0];
    assert_eq!(acked["actor"]["id"], "dave");
    assert_eq!(acked["actor"]["auth"], "oidc");
    assert_eq!(acked["tenant"], "stmarys");

    // An API token instead of a session (an operate token: a service
    // identity with platform-operator).
    let out = p.run(&[
        "token", "create", "--name", "pager", "--scope", "operate", "--ttl", "1h",
    ]);
    assert!(out.status.success());
    let api_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = outs.ok({
        let mut c = remote(
            &nobody,
            &["--server", &server, "incident", "note", "inc-1", "paged"],
        );
        c.env("CAREPLANE_TOKEN", &api_token);
        c
    });
    assert_eq!(out, "noted on inc-1\n");
    let log = p.json(&["audit", "log"]);
    let noted = log.as_array().unwrap().last().unwrap();
    assert_eq!(noted["action"], "incident.note", "{noted}");
    assert_eq!(noted["actor"]["id"], "token:pager");
    // A token the server does not know: its 401, with what to do.
    let e = outs.refused({
        let mut c = remote(&nobody, &["--server", &server, "status"]);
        c.env("CAREPLANE_TOKEN", "cpt_0000_notatoken");
        c
    });
    assert!(
        e.contains("401") && e.contains("careplane login --server"),
        "{e}"
    );

    // What the API does not serve is refused by name, with no -f needed.
    for (args, name) in [
        (&["apply"][..], "apply"),
        (&["credentials", "stmarys", "production"], "credentials"),
        (&["audit", "log"], "audit log"),
        (&["token", "list"], "token list"),
    ] {
        let mut a = vec!["--server", server.as_str()];
        a.extend_from_slice(args);
        let e = outs.refused(remote(&dave, &a));
        assert!(
            e.contains(&format!("careplane {name} runs on the platform's host"))
                && e.contains("not available with --server"),
            "{e}"
        );
    }

    // On the host, incident actions pass the same check and are audited
    // the same way: alice's session is refused, root without one is the
    // local root operator.
    let resolve = |session: &Path| {
        let mut c = p.cmd(&["incident", "resolve", "inc-1", "--summary", "fixed"]);
        c.env("CAREPLANE_SESSION", session);
        c
    };
    let e = outs.refused(resolve(&alice));
    assert!(e.contains("refused: alice may not incident.update"), "{e}");
    let log = p.json(&["audit", "log"]);
    let last = log.as_array().unwrap().last().unwrap();
    assert_eq!(
        (
            &last["action"],
            &last["actor"]["id"],
            &last["result"]["status"]
        ),
        (
            &"incident.resolve".into(),
            &"alice".into(),
            &"refused".into()
        ),
        "{last}"
    );
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(outs.ok(resolve(&nobody)), "resolved inc-1\n");
        let log = p.json(&["audit", "log"]);
        let last = log.as_array().unwrap().last().unwrap();
        assert_eq!(last["action"], "incident.resolve", "{last}");
        assert_eq!(last["actor"]["auth"], "local-root", "{last}");
        assert_eq!(last["result"]["status"], "succeeded", "{last}");
        assert_eq!(last["tenant"], "stmarys", "{last}");
        let list = outs.ok(remote(&alice, &["--server", &server, "incident", "list"]));
        assert!(list.contains("resolved "), "{list}");
    }

    // No token in any command's output.
    for t in [&alice_token, &dave_token, &api_token] {
        for o in &outs.0 {
            assert!(!o.contains(t.as_str()), "a token in the output: {o}");
        }
    }
}

/// `https://` is verified against the CA `--ca-cert` (or CAREPLANE_CA_CERT)
/// names, and only against it: the server's certificate from another CA,
/// or no CA given (the web PKI does not know a platform CA), is refused
/// before the token is sent.
#[test]
fn https_is_verified_against_the_given_ca_only() {
    use careplane_local::pki;
    use careplane_local::ExposeSecret as _;
    let p = Platform::new(TENANTS);
    careplane_state::Store::open(&p.data_dir()).unwrap();
    let dir = p.dir.path();
    let ca = pki::generate_ca("careplane test CA").unwrap();
    let (cert, key) = pki::issue_server_cert(&ca, "careplane serve", &[]).unwrap();
    let other = pki::generate_ca("another CA").unwrap();
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("other.crt"), &other.cert_pem).unwrap();
    std::fs::write(dir.join("not-a-cert.crt"), "hello\n").unwrap();
    std::fs::write(dir.join("serve.crt"), cert).unwrap();
    std::fs::write(dir.join("serve.key"), key.expose_secret()).unwrap();
    set_mode(&dir.join("serve.key"), 0o600);
    let out = p.run(&[
        "token",
        "create",
        "--name",
        "dashboard",
        "--scope",
        "read",
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let port = free_port();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let _serve = Serve(
        p.cmd(&["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--tls-cert", dir.join("serve.crt").to_str().unwrap()])
            .args(["--tls-key", dir.join("serve.key").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn careplane serve"),
    );
    let server = format!("https://127.0.0.1:{port}");
    let nobody = dir.join("nobody.session.json");
    let status = |ca: Option<&str>, env_ca: Option<&str>| {
        let mut c = remote(&nobody, &["--server", &server, "status"]);
        if let Some(ca) = ca {
            c.args(["--ca-cert", dir.join(ca).to_str().unwrap()]);
        }
        if let Some(ca) = env_ca {
            c.env("CAREPLANE_CA_CERT", dir.join(ca));
        }
        c.env("CAREPLANE_TOKEN", &token);
        c
    };
    let mut outs = Outputs::default();
    // Bounded wait for the server to listen, through the client itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (ok, o, e) = outs.run(status(Some("ca.crt"), None));
        if ok {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "no answer over https within 60 s: {e}\n{}",
            std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(text, p.ok(&["status"]));
    outs.ok(status(None, Some("ca.crt")));
    for (ca, want) in [
        (Some("other.crt"), "not signed by the CA"),
        (None, "not signed by the CA"),
        (Some("not-a-cert.crt"), "no PEM certificate"),
    ] {
        let e = outs.refused(status(ca, None));
        assert!(e.contains(want), "--ca-cert {ca:?}: {e}");
    }
    for o in &outs.0 {
        assert!(!o.contains(&token), "the token in the output: {o}");
    }
}

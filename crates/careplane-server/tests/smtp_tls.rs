//! The SMTP channel's TLS against a real relay: Python's aiosmtpd (PyPI, installed by
//! scripts/install-deps) on loopback with a certificate from a CA of the test's own,
//! once requiring STARTTLS and once speaking TLS from the first byte (implicit, SMTPS).
//! The channel's `caFile` is what makes the relay trusted: without it (public roots) or
//! with another CA the message is refused before anything is sent.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use careplane_spec::{SmtpChannel, SmtpTls};

const RELAY: &str = r#"
import json, os, ssl, sys, threading
from aiosmtpd.controller import Controller

mode, port, cert, key, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(out, "%04d.json" % len(os.listdir(out)))
        with open(path + ".tmp", "w") as f:
            # session.ssl is set by STARTTLS; an implicit-TLS transport has an ssl_object.
            tls = session.ssl is not None or \
                server.transport.get_extra_info("ssl_object") is not None
            json.dump({"to": envelope.rcpt_tos, "tls": tls,
                       "text": envelope.content.decode("utf-8", "replace")}, f)
        os.rename(path + ".tmp", path)
        return "250 Message accepted"

if mode == "starttls":
    c = Controller(Handler(), hostname="127.0.0.1", port=port,
                   tls_context=ctx, require_starttls=True)
else:
    c = Controller(Handler(), hostname="127.0.0.1", port=port, ssl_context=ctx)
c.start()
print("ready", flush=True)
threading.Event().wait()
"#;

struct Relay {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have_aiosmtpd() -> bool {
    let have = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        let msg = "python3 with aiosmtpd is needed (scripts/install-deps installs it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping: {msg}");
    }
    have
}

fn relay(dir: &Path, mode: &str, cert: &Path, key: &Path) -> Relay {
    let script = dir.join("relay.py");
    std::fs::write(&script, RELAY).unwrap();
    let out = dir.join(format!("mail-{mode}"));
    std::fs::create_dir(&out).unwrap();
    let port = free_port();
    let mut child = Command::new("python3")
        .arg(&script)
        .args([mode, &port.to_string()])
        .args([cert, key, &out])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3 (aiosmtpd)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "aiosmtpd ({mode}) did not start");
    Relay { child, port, out }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A CA of the test's own and the relay's certificate and key from it, written to
/// `dir`: (CA file, certificate file, key file).
fn relay_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use secrecy::ExposeSecret;
    let ca = careplane_local::pki::generate_ca("relay test CA").unwrap();
    let (cert, key) = careplane_local::pki::issue_server_cert(&ca, "relay", &[]).unwrap();
    (
        write(dir, "ca.crt", &ca.cert_pem),
        write(dir, "relay.crt", &cert),
        write(dir, "relay.key", key.expose_secret()),
    )
}

fn received(r: &Relay) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(&r.out)
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

fn channel(port: u16, tls: SmtpTls, ca_file: Option<PathBuf>) -> SmtpChannel {
    SmtpChannel {
        server: format!("127.0.0.1:{port}"),
        tls,
        from: "careplane@example.org".into(),
        to: vec!["oncall@example.org".into()],
        username: None,
        password_env: None,
        ca_file,
    }
}

async fn send(c: &SmtpChannel, subject: &str) -> Result<(), String> {
    careplane_server::mail::send(c, subject, "body".into(), Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_and_implicit_tls_trust_only_the_channels_ca() {
    if !have_aiosmtpd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca_file, cert, key) = relay_pki(d);
    let other = careplane_local::pki::generate_ca("some other CA").unwrap();
    let other_ca = write(d, "other.crt", &other.cert_pem);
    let not_pem = write(d, "not.pem", "this is not a certificate\n");

    for (mode, tls) in [
        ("starttls", SmtpTls::Starttls),
        ("implicit", SmtpTls::Implicit),
    ] {
        let r = relay(d, mode, &cert, &key);

        // Trusted through caFile: delivered, over TLS.
        send(&channel(r.port, tls, Some(ca_file.clone())), "trusted")
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let got = received(&r);
        assert_eq!(got.len(), 1, "{mode}: {got:?}");
        assert_eq!(got[0]["tls"], true, "{mode}: {got:?}");
        assert!(
            got[0]["text"]
                .as_str()
                .unwrap()
                .contains("Subject: trusted"),
            "{mode}: {got:?}"
        );

        // The public roots do not know the test CA; another CA is not the relay's.
        for (what, ca) in [
            ("public roots", None),
            ("another CA", Some(other_ca.clone())),
        ] {
            let e = send(&channel(r.port, tls, ca), "untrusted")
                .await
                .expect_err(what);
            assert!(
                e.contains(&format!("127.0.0.1:{}", r.port)),
                "{mode}, {what}: {e}"
            );
            assert!(
                e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"),
                "{mode}, {what}: {e}"
            );
        }
        // A caFile that is no certificate, or missing, is named in the error.
        let e = send(&channel(r.port, tls, Some(not_pem.clone())), "x")
            .await
            .unwrap_err();
        assert!(
            e.contains("holds no PEM certificate") && e.contains("not.pem"),
            "{e}"
        );
        let missing = d.join("missing.crt");
        let e = send(&channel(r.port, tls, Some(missing)), "x")
            .await
            .unwrap_err();
        assert!(
            e.contains("reading caFile") && e.contains("missing.crt"),
            "{e}"
        );
        // Nothing but the trusted message arrived.
        assert_eq!(received(&r).len(), 1, "{mode}");
    }
}

/// A relay requiring STARTTLS refuses a clear-text `tls: none` sender: the channel does
/// not fall back silently, and careplane does not either (the delivery fails).
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_requiring_starttls_gets_no_clear_text_message() {
    if !have_aiosmtpd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, cert, key) = relay_pki(d);
    let r = relay(d, "starttls", &cert, &key);
    let e = send(&channel(r.port, SmtpTls::None, None), "clear")
        .await
        .unwrap_err();
    assert!(
        e.contains("530") || e.to_lowercase().contains("starttls"),
        "{e}"
    );
    assert!(received(&r).is_empty());
}

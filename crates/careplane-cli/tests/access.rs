//! Issue 20 (M12), the CLI half, against a real OpenID provider on loopback
//! (provider.mjs of careplane-identity's tests): `careplane login` with
//! PKCE; alice requests an elevation, cannot approve it herself, bob
//! approves, a security officer reviews; each command is one audit entry
//! with its actor; and the audit verbs `prove` (inclusion, consistency),
//! `query` and `export --format` on that log.

mod common;
#[path = "../../careplane-identity/tests/common/mod.rs"]
mod idp;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use careplane_audit::{
    leaf_hash, verify_consistency, verify_inclusion, ConsistencyProof, InclusionProof,
    SignedCheckpoint,
};
use common::*;
use serde_json::{json, Value};

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

struct Setup {
    p: Platform,
    idp: idp::Idp,
}

/// A platform with state (the audit log's key lives in its vault) but no
/// servers: access commands need no PostgreSQL.
fn setup() -> Option<Setup> {
    let idp = idp::idp()?;
    let p = Platform::new(TENANTS);
    careplane_state::Store::open(&p.data_dir()).unwrap();
    std::fs::write(
        p.data_dir().join("identity.json"),
        serde_json::to_string(&idp::config(&idp.issuer, "careplane-cli")).unwrap(),
    )
    .unwrap();
    Some(Setup { p, idp })
}

impl Setup {
    /// A session file holding an ID token the provider signed for `user`.
    fn session(&self, user: &str, groups: &[&str], mfa: bool) -> std::path::PathBuf {
        let n = idp::now() / 1_000_000;
        let token = self.idp.sign(
            json!({"iss": self.idp.issuer, "aud": "careplane-cli", "sub": user, "groups": groups,
                   "amr": if mfa { json!(["pwd", "otp"]) } else { json!(["pwd"]) },
                   "iat": n, "exp": n + 600}),
            "RS256",
            None,
            false,
        );
        let path = self.p.dir.path().join(format!(
            "{user}-{}-{}.session.json",
            groups.join("+"),
            if mfa { "mfa" } else { "pwd" }
        ));
        std::fs::write(
            &path,
            json!({"issuer": self.idp.issuer, "id_token": token}).to_string(),
        )
        .unwrap();
        path
    }

    fn run_as(&self, session: &Path, args: &[&str]) -> Output {
        self.p
            .cmd(args)
            .env("CAREPLANE_SESSION", session)
            .output()
            .unwrap()
    }

    fn json_as(&self, session: &Path, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.run_as(session, &a);
        assert!(
            out.status.success(),
            "careplane {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn elevation_is_requested_approved_by_another_and_reviewed_each_step_audited() {
    let Some(s) = setup() else { return };
    let alice = s.session("alice", &["careplane-viewers"], true);
    let alice_officer = s.session("alice", &["careplane-security"], true);
    let bob = s.session("bob", &["careplane-security"], true);
    let bob_no_mfa = s.p.dir.path().join("bob-no-mfa.json");
    std::fs::copy(
        s.session("bob", &["careplane-security"], false),
        &bob_no_mfa,
    )
    .unwrap();

    let req = s.json_as(
        &alice,
        &[
            "access",
            "request",
            "--role",
            "platform-operator",
            "--for",
            "1h",
            "--reason",
            "INC-42 failover",
        ],
    );
    let id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["status"], "pending");

    // Alice cannot approve her own request, even as a security officer.
    let own = s.run_as(&alice_officer, &["access", "approve", &id]);
    assert!(!own.status.success());
    let err = String::from_utf8_lossy(&own.stderr);
    assert!(err.contains("cannot approve it"), "{err}");
    // Bob without MFA is refused with the reason.
    let weak = s.run_as(&bob_no_mfa, &["access", "approve", &id]);
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("multi-factor"));
    // Bob with MFA approves.
    let ok = s.json_as(&bob, &["access", "approve", &id]);
    assert_eq!(ok["status"], "approved");
    assert_eq!(ok["approver"], "bob");

    let list = s.json_as(&alice, &["access", "list"]);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "approved");

    // The review: alice (viewer) may not; bob sees the grant and revokes it.
    assert!(!s.run_as(&alice, &["access", "review"]).status.success());
    let review = s.json_as(&bob, &["access", "review"]);
    let source = format!("grant:{id}");
    assert!(
        review
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["source"] == source.as_str() && i["principal"] == "alice"),
        "{review}"
    );
    let rec = s.json_as(
        &bob,
        &[
            "access",
            "review",
            "--decide",
            "revoke",
            "--principal",
            "alice",
            "--role",
            "platform-operator",
            "--source",
            &source,
            "--note",
            "incident closed",
        ],
    );
    assert!(rec["effect"].as_str().unwrap().contains("revoked"), "{rec}");

    // An expired or foreign session is refused, and the refusal is audited too.
    let stale = s.p.dir.path().join("stale.json");
    let n = idp::now() / 1_000_000;
    let old = s.idp.sign(
        json!({"iss": s.idp.issuer, "aud": "careplane-cli", "sub": "mallory", "exp": n - 3600}),
        "RS256",
        None,
        false,
    );
    std::fs::write(
        &stale,
        json!({"issuer": s.idp.issuer, "id_token": old}).to_string(),
    )
    .unwrap();
    let out = s.run_as(&stale, &["access", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("careplane login"));
    // Guessing on: after five failures the identity is locked out for a while.
    for _ in 0..4 {
        assert!(!s.run_as(&stale, &["access", "list"]).status.success());
    }
    let locked = s.run_as(&stale, &["access", "list"]);
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("too many failed sign-ins"),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );

    // One entry per command, with its actor, in order.
    let log = s.p.json(&["audit", "log"]);
    let rows: Vec<(String, String, String, bool)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"]["id"].as_str().unwrap().to_string(),
                e["result"]["status"].as_str().unwrap().to_string(),
                e["actor"]["mfa"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = [
        ("access.request", "alice", "succeeded", true),
        ("access.approve", "alice", "refused", true),
        ("access.approve", "bob", "refused", false),
        ("access.approve", "bob", "succeeded", true),
        ("access.list", "alice", "succeeded", true),
        ("access.review", "alice", "refused", true),
        ("access.review", "bob", "succeeded", true),
        ("access.review.decide", "bob", "succeeded", true),
        ("access.list", "unauthenticated", "refused", false),
        ("access.list", "unauthenticated", "refused", false),
        ("access.list", "unauthenticated", "refused", false),
        ("access.list", "unauthenticated", "refused", false),
        ("access.list", "unauthenticated", "refused", false),
        ("access.list", "unauthenticated", "refused", false),
    ];
    let got: Vec<(&str, &str, &str, bool)> = rows
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), *d))
        .collect();
    assert_eq!(got, want);
    // After approval, alice's entries carry the elevation in force.
    assert_eq!(
        log[4]["actor"]["elevation"]["approved_by"], "bob",
        "{}",
        log[4]
    );
    assert_eq!(log[4]["actor"]["auth"], "oidc");
    assert!(log[0]["parameters"]["reason"] == "INC-42 failover");
    // No session token in the log.
    let text = std::fs::read_to_string(s.p.data_dir().join("audit/entries.jsonl")).unwrap();
    let token = serde_json::from_str::<Value>(&std::fs::read_to_string(&bob).unwrap()).unwrap()
        ["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.contains(&token[..40]));

    audit_verbs(&s.p, log.as_array().unwrap().len() as u64);
}

/// `audit prove`, `prove --consistency`, `query` and `export --format` on
/// the log the test above wrote.
fn audit_verbs(p: &Platform, size: u64) {
    // Inclusion: check with the crate's standalone verifier and the signature.
    let proof: Value = serde_json::from_str(&p.ok(&["audit", "prove", "3"])).unwrap();
    let cp: SignedCheckpoint = serde_json::from_value(proof["checkpoint"].clone()).unwrap();
    assert_eq!(cp.size, size);
    let key_bytes: [u8; 32] = hex_bytes(proof["public_key"].as_str().unwrap())
        .try_into()
        .unwrap();
    let key = careplane_audit::VerifyingKey::from_bytes(&key_bytes).unwrap();
    let root = cp.verify(&key).expect("checkpoint signature");
    let inc: InclusionProof = serde_json::from_value(proof["proof"].clone()).unwrap();
    let entry = proof["entry"].as_str().unwrap();
    assert!(entry.contains("\"seq\":3"), "{entry}");
    verify_inclusion(&leaf_hash(entry.as_bytes()), &inc, &root).expect("inclusion proof");
    // A tampered entry does not verify against the same proof.
    let forged = entry.replace("\"bob\"", "\"eve\"");
    assert!(verify_inclusion(&leaf_hash(forged.as_bytes()), &inc, &root).is_err());
    // The auditor's few lines of docs/audit.md accept it, and refuse a
    // tampered entry.
    if python_ready() {
        let file = p.dir.path().join("prove-3.json");
        std::fs::write(&file, proof.to_string()).unwrap();
        let run = |f: &Path| {
            std::process::Command::new("python3")
                .args(["-c", &doc_block("audit-prove")])
                .arg(f)
                .output()
                .unwrap()
        };
        let out = run(&file);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: entry 3"));
        let mut bad = proof.clone();
        bad["entry"] = json!(forged);
        std::fs::write(&file, bad.to_string()).unwrap();
        let out = run(&file);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("FAIL: entry 3"));
    }
    // Beyond the log: a clear error naming the sequence number.
    let out = p.run(&["audit", "prove", "999"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("entry 999"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Consistency from size 2 to now, against the old signed checkpoint.
    let c: Value = serde_json::from_str(&p.ok(&["audit", "prove", "--consistency", "2"])).unwrap();
    let old: SignedCheckpoint = serde_json::from_value(c["old_checkpoint"].clone())
        .expect("the log's own checkpoint of size 2");
    let old_root = old.verify(&key).unwrap();
    let cons: ConsistencyProof = serde_json::from_value(c["proof"].clone()).unwrap();
    assert_eq!((cons.first, cons.second), (2, size));
    verify_consistency(&cons, &old_root, &root).expect("consistency proof");

    // Query by actor, action, time and target.
    let q = p.json(&[
        "audit",
        "query",
        "--actor",
        "bob",
        "--action",
        "access.approve",
    ]);
    assert_eq!(q.as_array().unwrap().len(), 2, "{q}");
    let all = p.json(&["audit", "query"]);
    let t3 = all[3]["time"].as_str().unwrap().to_string();
    let since = p.json(&["audit", "query", "--since", &t3]);
    assert_eq!(since[0]["seq"], 3);
    let until = p.json(&["audit", "query", "--until", &t3]);
    assert_eq!(until.as_array().unwrap().len(), 3);
    let tgt = p.json(&["audit", "query", "--target", "access"]);
    assert!(tgt.as_array().unwrap().len() >= 4);
    assert_eq!(
        p.json(&["audit", "query", "--tenant", "stmarys"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let bad = p.run(&["audit", "query", "--since", "yesterday"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));

    // Syslog: one RFC 5424 line per entry, warning severity for refusals.
    let syslog = p.ok(&["audit", "export", "--format", "syslog"]);
    let lines: Vec<&str> = syslog.lines().collect();
    assert_eq!(lines.len() as u64, size);
    assert!(lines[0].starts_with("<109>1 "), "{}", lines[0]);
    assert!(lines[1].starts_with("<108>1 "), "{}", lines[1]);
    assert!(lines[1].contains("[careplane-audit@32473 seq=\"1\" actor=\"alice\" action=\"access.approve\" result=\"refused\""), "{}", lines[1]);
    let jsonl = p.ok(&["audit", "export", "--format", "jsonl"]);
    let entries = std::fs::read_to_string(p.data_dir().join("audit/entries.jsonl")).unwrap();
    assert_eq!(jsonl, entries);
}

/// A marked Python block of docs/audit.md.
fn doc_block(name: &str) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit.md"))
            .unwrap();
    let begin = format!("<!-- {name}-begin -->\n```python\n");
    let start = doc.find(&begin).expect("begin marker in docs/audit.md") + begin.len();
    let end = doc[start..]
        .find(&format!("```\n<!-- {name}-end -->"))
        .expect("end marker in docs/audit.md");
    doc[start..start + end].to_string()
}

fn python_ready() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg = "python3 with the cryptography package is needed (scripts/install-deps installs python3-cryptography)";
        assert!(std::env::var("CI").is_err(), "{msg}");
        eprintln!("skipping the Python check: {msg}");
    }
    ok
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

impl Setup {
    /// `careplane login` through the provider's browser flow (PKCE,
    /// loopback redirect) as `hint` ("carol;mfa"); returns the session file
    /// and what login printed.
    fn login(&self, hint: &str) -> (std::path::PathBuf, String) {
        let session = self
            .p
            .dir
            .path()
            .join(format!("{}.session.json", hint.replace(';', "-")));
        let mut child = self
            .p
            .cmd(&["login", "--timeout", "60s"])
            .env("CAREPLANE_SESSION", &session)
            .env("CAREPLANE_LOGIN_HINT", hint)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("http") {
                    let _ = tx.send(line);
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("careplane login printed no URL within 60 s");
        let redirect = url
            .split("redirect_uri=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .replace("%3A", ":")
            .replace("%2F", "/");
        idp::browse(&url, &redirect);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("careplane login did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        assert!(status.success(), "{out}");
        (session, out)
    }
}

#[test]
fn login_signs_in_through_the_browser_with_pkce_and_is_audited() {
    let Some(s) = setup() else { return };
    let (session, out) = s.login("carol;mfa");

    assert!(out.contains("signed in as carol (MFA)"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&session).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The session works: carol (platform-admin through her group) reviews.
    s.json_as(&session, &["access", "review"]);
    let log = s.p.json(&["audit", "log"]);
    assert_eq!(log[0]["action"], "login");
    assert_eq!(log[0]["actor"]["id"], "carol");
    assert_eq!(log[0]["actor"]["mfa"], true);
    assert_eq!(log[1]["action"], "access.review");
    assert_eq!(log[1]["actor"]["id"], "carol");
}

fn run_with_stdin(p: &Platform, args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = p
        .cmd(args)
        .env("CAREPLANE_SESSION", p.dir.path().join("no-session.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn base32_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buf, mut bits, mut out) = (0u32, 0, Vec::new());
    for c in s.bytes() {
        buf = (buf << 5) | A.iter().position(|x| *x == c).unwrap() as u32;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}

#[test]
fn break_glass_as_the_local_root_operator_is_immediate_audited_and_flagged() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var("CI").is_err(), "CI runs as root");
        eprintln!("skipping: break-glass setup is for root on the host");
        return;
    }
    let p = Platform::new(TENANTS);
    careplane_state::Store::open(&p.data_dir()).unwrap();
    let password = "a long break-glass password";
    let out = run_with_stdin(
        &p,
        &["access", "break-glass-setup", "--account", "oncall"],
        &format!("{password}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let seed = base32_decode(secret);
    assert_eq!(seed.len(), 20);

    // A wrong code is refused (and audited); the right one elevates at once.
    let bad = run_with_stdin(
        &p,
        &[
            "access",
            "break-glass",
            "--account",
            "oncall",
            "--reason",
            "IdP down, INC-7",
        ],
        &format!("{password}\n000000\n"),
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("failed"));
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut code = careplane_identity::totp::code(&seed, unix, 30, 6);
    if code == "000000" {
        code = careplane_identity::totp::code(&seed, unix + 30, 30, 6);
    }
    let out = run_with_stdin(
        &p,
        &[
            "access",
            "break-glass",
            "--account",
            "oncall",
            "--reason",
            "IdP down, INC-7",
            "--output",
            "json",
        ],
        &format!("{password}\n{code}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("flagged for review"));
    let grant: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            grant["break_glass"].as_bool(),
            grant["needs_review"].as_bool()
        ),
        (Some(true), Some(true))
    );

    // Later commands run as the break-glass account: `access break-glass`
    // left a session (0600) whose bearer secret it never printed.
    let session_file = p.dir.path().join("no-session.json");
    let session: Value =
        serde_json::from_slice(&std::fs::read(&session_file).expect("a break-glass session"))
            .unwrap();
    assert_eq!(session["kind"], "break-glass");
    let token = session["token"].as_str().unwrap().to_string();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&session_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains(&token), "the session secret was printed");
    let review: Value = serde_json::from_slice(
        &run_with_stdin(&p, &["access", "review", "--output", "json"], "").stdout,
    )
    .unwrap();
    // A session whose secret was altered is refused (and audited as such).
    let mut forged = session.clone();
    // (Its last character changed: to '0', or to '1' when it already was a
    // '0': the "forged" session was then the valid one and the test failed.)
    let last = if token.ends_with('0') { '1' } else { '0' };
    forged["token"] = Value::from(format!("{}{last}", &token[..token.len() - 1]));
    std::fs::write(&session_file, forged.to_string()).unwrap();
    let refused = run_with_stdin(&p, &["access", "list"], "");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("break-glass session token is not valid"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Without the session file, root is the local root operator again.
    std::fs::remove_file(&session_file).unwrap();
    assert!(
        review
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["principal"] == "break-glass:oncall" && i["needs_review"] == true),
        "{review}"
    );

    let log = p.json(&["audit", "log"]);
    let e: Vec<(&str, &str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"]["auth"].as_str().unwrap(),
                e["result"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        e,
        [
            ("access.break-glass.setup", "local-root", "succeeded"),
            ("access.break-glass", "break-glass", "refused"),
            ("access.break-glass", "break-glass", "succeeded"),
            ("access.review", "break-glass", "succeeded"),
            ("access.list", "none", "refused"),
        ]
    );
    // The review ran under the break-glass elevation, and says so.
    assert_eq!(log[3]["actor"]["id"], "break-glass:oncall");
    assert_eq!(log[3]["actor"]["elevation"]["break_glass"], true);
    assert!(
        !log.to_string().contains(&token),
        "the session secret is in the log"
    );
    assert_eq!(log[2]["actor"]["elevation"]["break_glass"], true);
    assert_eq!(log[2]["parameters"]["flagged_for_review"], true);
    // Neither the password nor the seed is anywhere under the data directory in clear.
    for f in walk(&p.data_dir()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(password) && !text.contains(secret) && !text.contains(&token),
            "{}",
            f.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Issue 20's "Done when": alice signs in through the provider, tries to
/// apply a production change and is refused (audited), asks for
/// platform-operator, bob approves, her sign-in without MFA is still
/// refused for production (a clear reason), with MFA she applies; the log
/// tells the whole story, verifies, and proves the apply entry.
#[test]
fn a_production_change_needs_an_approved_elevation_and_mfa_and_the_log_tells_it() {
    let Some(s) = setup() else { return };
    let (alice, out) = s.login("alice;mfa");
    assert!(out.contains("signed in as alice (MFA)"), "{out}");
    let (alice_pwd, _) = s.login("alice");
    let (bob, _) = s.login("bob;mfa");
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).to_string();

    // A session that no longer verifies: refused, audited as unauthenticated.
    let stale = s.p.dir.path().join("stale.session.json");
    let n = idp::now() / 1_000_000;
    let old = s.idp.sign(
        json!({"iss": s.idp.issuer, "aud": "careplane-cli", "sub": "alice", "exp": n - 3600}),
        "RS256",
        None,
        false,
    );
    std::fs::write(
        &stale,
        json!({"issuer": s.idp.issuer, "id_token": old}).to_string(),
    )
    .unwrap();
    let out = s.run_as(&stale, &["apply"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("run careplane login"),
        "{}",
        stderr(&out)
    );

    // A viewer may not apply; nothing is created.
    let out = s.run_as(&alice, &["apply"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "alice may not apply on the platform: it needs one of the roles \
             tenant-operator, platform-operator, platform-admin and holds viewer"
        ),
        "{}",
        stderr(&out)
    );
    assert!(s.p.plan()["actions"].as_array().unwrap().len() > 1);

    let req = s.json_as(
        &alice,
        &[
            "access",
            "request",
            "--role",
            "platform-operator",
            "--for",
            "1h",
            "--reason",
            "CHG-7 stmarys go-live",
        ],
    );
    let id = req["id"].as_str().unwrap().to_string();
    s.json_as(&bob, &["access", "approve", &id]);

    // Elevated, but signed in without MFA: production needs it.
    let out = s.run_as(&alice_pwd, &["apply"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "apply on the platform requires multi-factor authentication, and alice signed in without it"
        ),
        "{}",
        stderr(&out)
    );

    let applied = s.json_as(&alice, &["apply"]);
    assert!(
        !applied["applied"].as_array().unwrap().is_empty(),
        "{applied}"
    );

    let log = s.p.json(&["audit", "log"]);
    let rows: Vec<(&str, &str, &str, bool)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"]["id"].as_str().unwrap(),
                e["result"]["status"].as_str().unwrap(),
                e["actor"]["mfa"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("login", "alice", "succeeded", true),
            ("login", "alice", "succeeded", false),
            ("login", "bob", "succeeded", true),
            ("apply", "unauthenticated", "refused", false),
            ("apply", "alice", "refused", true),
            ("access.request", "alice", "succeeded", true),
            ("access.approve", "bob", "succeeded", true),
            ("apply", "alice", "refused", false),
            ("apply", "alice", "succeeded", true),
        ]
    );
    assert!(log[4]["result"]["message"]
        .as_str()
        .unwrap()
        .contains("holds viewer"));
    assert!(log[7]["result"]["message"]
        .as_str()
        .unwrap()
        .contains("multi-factor"));
    let apply = &log[8];
    assert_eq!(apply["actor"]["auth"], "oidc");
    assert_eq!(apply["actor"]["kind"], "user");
    assert_eq!(apply["actor"]["elevation"]["role"], "platform-operator");
    assert_eq!(apply["actor"]["elevation"]["approved_by"], "bob");
    assert_eq!(
        apply["actor"]["elevation"]["reason"],
        "CHG-7 stmarys go-live"
    );
    assert!(apply["operation"].as_str().is_some(), "{apply}");

    let verified = s.p.json(&["audit", "verify"]);
    assert_eq!(verified["entries"], 9, "{verified}");
    assert_eq!(
        verified["problems"].as_array().unwrap().len(),
        0,
        "{verified}"
    );
    // The apply entry's inclusion proof checks against the signed checkpoint.
    let seq = apply["seq"].as_u64().unwrap().to_string();
    let proof: Value = serde_json::from_str(&s.p.ok(&["audit", "prove", &seq])).unwrap();
    let cp: SignedCheckpoint = serde_json::from_value(proof["checkpoint"].clone()).unwrap();
    let key_bytes: [u8; 32] = hex_bytes(proof["public_key"].as_str().unwrap())
        .try_into()
        .unwrap();
    let key = careplane_audit::VerifyingKey::from_bytes(&key_bytes).unwrap();
    let root = cp.verify(&key).expect("checkpoint signature");
    let inc: InclusionProof = serde_json::from_value(proof["proof"].clone()).unwrap();
    let entry = proof["entry"].as_str().unwrap();
    assert!(entry.contains("\"approved_by\":\"bob\""), "{entry}");
    verify_inclusion(&leaf_hash(entry.as_bytes()), &inc, &root).expect("inclusion proof");
    let forged = entry.replace("\"bob\"", "\"eve\"");
    assert!(verify_inclusion(&leaf_hash(forged.as_bytes()), &inc, &root).is_err());
    // And every other entry of the story proves against the same checkpoint.
    for e in log.as_array().unwrap() {
        let seq = e["seq"].as_u64().unwrap().to_string();
        let proof: Value = serde_json::from_str(&s.p.ok(&["audit", "prove", &seq])).unwrap();
        let inc: InclusionProof = serde_json::from_value(proof["proof"].clone()).unwrap();
        let entry = proof["entry"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(entry).unwrap()["seq"],
            e["seq"]
        );
        verify_inclusion(&leaf_hash(entry.as_bytes()), &inc, &root)
            .unwrap_or_else(|err| panic!("entry {seq}: {err:?}"));
    }
}

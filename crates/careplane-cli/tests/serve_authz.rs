//! `careplane serve`'s API behind the one authorization check (issue 20,
//! docs/design/0013 "serve's API"): every role — API tokens of both scopes
//! and OIDC users of every role, signed by a real OpenID provider on
//! loopback — against every endpoint, over real HTTP to a running server.
//! The expected table is written out by hand from the design note's
//! matrix; every 403 is one refused audit entry with the caller's identity.

mod common;
#[path = "../../careplane-identity/tests/common/mod.rs"]
mod idp;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

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

/// One HTTP/1.1 request; (status, body).
fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    request_from([127, 0, 0, 1], port, method, path, token, body).0
}

/// One HTTP/1.1 request from the loopback address `from` (every 127/8
/// address is this host's; the server's failed-authentication limits are
/// per client address); ((status, body), the response's headers).
fn request_from(
    from: [u8; 4],
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> ((u16, String), String) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from((from, 0)).into())
        .unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or_default();
    ((code, body), head)
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
    while TcpStream::connect(("127.0.0.1", port)).is_err()
        || request(port, "GET", "/healthz", None, "").0 != 200
    {
        assert!(
            Instant::now() < deadline,
            "careplane serve did not answer /healthz within 60 s: {}",
            std::fs::read_to_string(p.dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    serve
}

/// Every route of the router (a route added without a row here fails
/// `the_table_covers_every_route`).
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", ""),
    ("GET", "/openapi.json", ""),
    ("GET", "/v1/identity", ""),
    ("GET", "/metrics", ""),
    ("GET", "/v1/status", ""),
    ("GET", "/v1/environments", ""),
    ("GET", "/v1/probes", ""),
    (
        "GET",
        "/v1/series/stmarys/production/http/minutes?from=2026-01-01T00:00:00Z&minutes=5",
        "",
    ),
    ("GET", "/v1/slo/stmarys", ""),
    ("GET", "/v1/reports", ""),
    ("GET", "/v1/incidents", ""),
    ("POST", "/v1/incidents/nope/ack", ""),
    ("POST", "/v1/incidents/nope/note", r#"{"text":"looking"}"#),
    (
        "POST",
        "/v1/incidents/nope/resolve",
        r#"{"summary":"fixed"}"#,
    ),
];

/// Expected status per caller, one column per endpoint above. Reads of the
/// platform need a role that reads everywhere (a tenant operator reads
/// only its tenant: series and SLO of stmarys); incident actions need
/// tenant-operator (of the incident's tenant), platform-operator or
/// platform-admin — and an allowed action on no such incident is a 404.
/// API tokens: read is viewer, operate is platform-operator. `/v1/identity`
/// is public (it tells `careplane login --server` where to sign in).
#[rustfmt::skip]
const MATRIX: &[(&str, [u16; 14])] = &[
    // healthz, openapi, identity, metrics, status, environments, probes, series, slo, reports,
    // incidents, ack, note, resolve
    ("none",                 [200, 200, 200, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("bad-api-token",        [200, 200, 200, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("token-read",           [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 403, 403, 403]),
    ("token-operate",        [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 404, 404, 404]),
    ("no-role",              [200, 200, 200, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403]),
    ("viewer",               [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 403, 403, 403]),
    ("tenant-operator",      [200, 200, 200, 403, 403, 403, 403, 200, 200, 403, 403, 403, 403, 403]),
    ("platform-operator",    [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 404, 404, 404]),
    ("security-officer",     [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 403, 403, 403]),
    ("platform-admin",       [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 404, 404, 404]),
    ("wrong-audience",       [200, 200, 200, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("expired",              [200, 200, 200, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
];

#[test]
fn the_table_covers_every_route() {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../careplane-server/src/api.rs"),
    )
    .unwrap();
    assert_eq!(
        src.matches(".route(").count(),
        ENDPOINTS.len(),
        "one row per route"
    );
}

#[test]
fn every_role_against_every_endpoint_with_denials_audited() {
    let Some(idp) = idp::idp() else { return };
    let p = Platform::new(TENANTS);
    careplane_state::Store::open(&p.data_dir()).unwrap();
    let mut cfg = serde_json::to_value(idp::config(&idp.issuer, "careplane-cli")).unwrap();
    cfg["apiAudience"] = json!("careplane-api");
    cfg["groups"]
        .as_array_mut()
        .unwrap()
        .push(json!({"group": "careplane-ops", "role": "platform-operator"}));
    std::fs::write(p.data_dir().join("identity.json"), cfg.to_string()).unwrap();

    let n = idp::now() / 1_000_000;
    let sign = |sub: &str, aud: &str, groups: &[&str], exp: i64| {
        idp.sign(
            json!({"iss": idp.issuer, "aud": aud, "sub": sub, "groups": groups,
                   "amr": ["pwd", "otp"], "iat": n - 10, "exp": exp}),
            "RS256",
            None,
            false,
        )
    };
    let api_token = |name: &str, scope: &str| {
        let out = p.run(&[
            "token", "create", "--name", name, "--scope", scope, "--ttl", "1h",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let callers: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("bad-api-token", Some("cpt_0000_notatoken".into())),
        ("token-read", Some(api_token("dashboard", "read"))),
        ("token-operate", Some(api_token("pager", "operate"))),
        (
            "no-role",
            Some(sign("mallory", "careplane-cli", &[], n + 600)),
        ),
        (
            "viewer",
            Some(sign(
                "alice",
                "careplane-cli",
                &["careplane-viewers"],
                n + 600,
            )),
        ),
        (
            "tenant-operator",
            Some(sign(
                "dave",
                "careplane-cli",
                &["careplane-stmarys-ops"],
                n + 600,
            )),
        ),
        // A JWT access token for the API's audience, not an ID token.
        (
            "platform-operator",
            Some(sign("olga", "careplane-api", &["careplane-ops"], n + 600)),
        ),
        (
            "security-officer",
            Some(sign(
                "bob",
                "careplane-cli",
                &["careplane-security"],
                n + 600,
            )),
        ),
        (
            "platform-admin",
            Some(sign(
                "carol",
                "careplane-cli",
                &["careplane-admins"],
                n + 600,
            )),
        ),
        (
            "wrong-audience",
            Some(sign(
                "carol",
                "somebody-else",
                &["careplane-admins"],
                n + 600,
            )),
        ),
        (
            "expired",
            Some(sign(
                "erin",
                "careplane-cli",
                &["careplane-admins"],
                n - 3600,
            )),
        ),
    ];

    let port = free_port();
    let _serve = start_serve(&p, port);

    let mut denied = Vec::new();
    let mut mismatches = Vec::new();
    for (i, ((name, token), (row, want))) in callers.iter().zip(MATRIX).enumerate() {
        assert_eq!(name, row, "callers and MATRIX rows in the same order");
        // A client address per caller: the rows that fail authentication on
        // every endpoint stay within one address's failed-auth burst.
        let from = [127, 0, 1, i as u8 + 1];
        for ((method, path, body), want) in ENDPOINTS.iter().zip(want) {
            let ((code, answer), _) =
                request_from(from, port, method, path, token.as_deref(), body);
            if code != *want {
                mismatches.push(format!(
                    "{name} {method} {path}: {code}, want {want}: {answer}"
                ));
            }
            if code == 403 {
                // The reason says who may not do what, and why.
                assert!(
                    answer.contains(" may not read") || answer.contains(" may not incident.update"),
                    "{name} {path}: {answer}"
                );
                denied.push(*name);
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // Each 403 is one refused entry, with who asked; each presented token
    // that did not authenticate is one refused entry for the identity it
    // claimed, with the client address (a request with no token is none).
    let log = p.json(&["audit", "log"]);
    let failed_auth: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"]["status"] == "refused")
        .filter(|e| {
            e["actor"]["id"]
                .as_str()
                .unwrap()
                .starts_with("unauthenticated:")
        })
        .map(|e| {
            (
                e["actor"]["id"].as_str().unwrap().to_string(),
                e["parameters"]["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want_failed = Vec::new();
    for (i, (name, _)) in callers.iter().enumerate() {
        let claimed = match *name {
            "bad-api-token" => "unauthenticated:token:0000",
            "wrong-audience" => "unauthenticated:sub:carol",
            "expired" => "unauthenticated:sub:erin",
            _ => continue,
        };
        // Every endpoint but the three public ones (healthz, openapi, identity).
        for _ in 0..ENDPOINTS.len() - 3 {
            want_failed.push((claimed.to_string(), format!("127.0.1.{}", i + 1)));
        }
    }
    assert_eq!(failed_auth, want_failed);
    let refused: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"]["status"] == "refused")
        .filter(|e| {
            !e["actor"]["id"]
                .as_str()
                .unwrap()
                .starts_with("unauthenticated:")
        })
        .map(|e| {
            (
                e["actor"]["id"].as_str().unwrap().to_string(),
                e["actor"]["auth"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(refused.len(), denied.len(), "{log}");
    let ids = |caller: &str| match caller {
        "token-read" => ("token:dashboard", "api-token"),
        "no-role" => ("mallory", "oidc"),
        "viewer" => ("alice", "oidc"),
        "tenant-operator" => ("dave", "oidc"),
        "security-officer" => ("bob", "oidc"),
        other => panic!("{other} was not expected to be refused"),
    };
    for (got, caller) in refused.iter().zip(&denied) {
        let (id, auth) = ids(caller);
        assert_eq!((got.0.as_str(), got.1.as_str()), (id, auth));
    }
    // Allowed incident actions are audited too (as failed: no such incident).
    let acted = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "incident.ack" && e["result"]["status"] == "failed")
        .count();
    assert_eq!(acted, 3, "{log}");
    // The same OIDC token counts the user's grants in force: alice asks for
    // platform-operator, bob approves, and her ack is allowed (404: no
    // such incident), recorded with the elevation.
    let session = |who: &str, token: &str| {
        let f = p.dir.path().join(format!("{who}.session.json"));
        std::fs::write(
            &f,
            json!({"issuer": idp.issuer, "id_token": token}).to_string(),
        )
        .unwrap();
        f
    };
    let alice_token = callers[5].1.clone().unwrap();
    let alice = session("alice", &alice_token);
    let bob = session("bob", callers[8].1.as_deref().unwrap());
    let out = p
        .cmd(&[
            "access",
            "request",
            "--role",
            "platform-operator",
            "--for",
            "1h",
        ])
        .args(["--reason", "INC-9", "--output", "json"])
        .env("CAREPLANE_SESSION", &alice)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = p
        .cmd(&["access", "approve", &id])
        .env("CAREPLANE_SESSION", &bob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, body) = request(
        port,
        "POST",
        "/v1/incidents/nope/ack",
        Some(&alice_token),
        "",
    );
    assert_eq!(code, 404, "{body}");
    let log = p.json(&["audit", "log"]);
    let last = log.as_array().unwrap().last().unwrap();
    assert_eq!(last["action"], "incident.ack");
    assert_eq!(last["actor"]["id"], "alice");
    assert_eq!(last["actor"]["elevation"]["approved_by"], "bob");

    // No bearer token in the log.
    let text = std::fs::read_to_string(p.data_dir().join("audit/entries.jsonl")).unwrap();
    for (_, t) in &callers {
        if let Some(t) = t {
            assert!(!text.contains(&t[..t.len().min(40)]));
        }
    }
}

/// `schemathesis` (PyPI; scripts/install-deps) fuzzes every operation of
/// `/openapi.json` with an operate token: no answer is a 5xx, and its
/// `ignored_auth` check finds no route that answers without a valid token.
#[test]
fn fuzzing_the_openapi_document_finds_no_server_error_and_no_auth_bypass() {
    let found = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let msg =
            "schemathesis is not installed: run scripts/install-deps (pip install schemathesis)";
        assert!(std::env::var("CI").is_err(), "{msg}");
        eprintln!("skipping: {msg}");
        return;
    }
    let p = Platform::new(TENANTS);
    careplane_state::Store::open(&p.data_dir()).unwrap();
    let out = p.run(&[
        "token", "create", "--name", "fuzz", "--scope", "operate", "--ttl", "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = free_port();
    let _serve = start_serve(&p, port);

    let report = p.dir.path().join("schemathesis.txt");
    let mut child = std::process::Command::new("schemathesis")
        .current_dir(p.dir.path())
        .args(["run", &format!("http://127.0.0.1:{port}/openapi.json")])
        .args(["--checks", "not_a_server_error,ignored_auth"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "15", "--generation-deterministic"])
        .args(["--request-timeout", "20"])
        .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
        .stdout(std::fs::File::create(&report).unwrap())
        .stderr(std::fs::File::create(p.dir.path().join("schemathesis.err")).unwrap())
        .spawn()
        .expect("spawn schemathesis");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&report).unwrap_or_default()
        + &std::fs::read_to_string(p.dir.path().join("schemathesis.err")).unwrap_or_default();
    assert!(status.success(), "schemathesis found problems:\n{text}");
    // It did test every documented operation (all but /healthz and
    // /openapi.json, which are not in the document).
    let tested = format!("Tested: {}", ENDPOINTS.len() - 2);
    assert!(text.contains(&tested), "{text}");
}

/// Failed authentications are limited per client address and per claimed
/// identity (a burst of 20), answered 429 with `Retry-After` before any
/// verification, and every refusal, 401 or 429, is one audit entry that
/// names the claimed identity and the address, never the token.
#[test]
fn failed_authentications_are_rate_limited_per_address_and_identity_and_audited() {
    let p = Platform::new(TENANTS);
    careplane_state::Store::open(&p.data_dir()).unwrap();
    let out = p.run(&[
        "token", "create", "--name", "board", "--scope", "read", "--ttl", "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let valid = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let valid_id = valid.split('_').nth(1).unwrap().to_string();
    let port = free_port();
    let _serve = start_serve(&p, port);
    let get = |from: [u8; 4], token: Option<&str>| {
        request_from(from, port, "GET", "/v1/probes", token, "")
    };

    // One address guessing API tokens: 20 refusals, then 429 for anything it
    // presents, a valid token included; another address is not affected.
    let guesser = [127, 0, 2, 1];
    let mut guesses = Vec::new();
    for i in 0..20 {
        let guess = format!("cpt_0000_guess{i:04}secret");
        let ((code, body), _) = get(guesser, Some(&guess));
        assert_eq!(code, 401, "guess {i}: {body}");
        guesses.push(guess);
    }
    let ((code, body), head) = get(guesser, Some("cpt_0000_guess9999secret"));
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("from this address"), "{body}");
    let retry: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no Retry-After in {head}"))
        .trim()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        get(guesser, Some(&valid)).0 .0,
        429,
        "the address is limited"
    );
    assert_eq!(get([127, 0, 2, 2], Some(&valid)).0 .0, 200);
    // A request with no token guesses nothing: a plain 401, not counted.
    assert_eq!(get(guesser, None).0 .0, 401);

    // Many addresses claiming one identity (an unverifiable JWT for `zed`):
    // the identity runs out even though no address did.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"none"}"#),
        b64.encode(r#"{"sub":"zed","aud":"careplane-cli"}"#),
        b64.encode("sig")
    );
    for i in 1..=20u8 {
        let ((code, body), _) = get([127, 0, 3, i], Some(&forged));
        assert_eq!(code, 401, "address {i}: {body}");
    }
    let ((code, body), _) = get([127, 0, 3, 21], Some(&forged));
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("for this identity"), "{body}");
    assert_eq!(get([127, 0, 3, 21], Some(&valid)).0 .0, 200);
    // Guessing the secret of a known token id, from many addresses: once
    // the id's bucket is empty a wrong secret is a 429, and the real token
    // still passes (a claim costs nothing, so it must not lock anyone out).
    for i in 1..=20u8 {
        let wrong = format!("cpt_{valid_id}_wrongsecret{i}");
        assert_eq!(get([127, 0, 4, i], Some(&wrong)).0 .0, 401);
    }
    let ((code, body), _) = get([127, 0, 4, 21], Some(&format!("cpt_{valid_id}_wrong21")));
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("for this identity"), "{body}");
    assert_eq!(get([127, 0, 4, 22], Some(&valid)).0 .0, 200);

    // The audit log: one refused entry per 401 and per 429, by claimed
    // identity and address; no presented token appears anywhere in it.
    let log = p.json(&["audit", "log"]);
    let entries = log.as_array().unwrap();
    let refused = |id: &str, source: &str| {
        entries
            .iter()
            .filter(|e| e["result"]["status"] == "refused")
            .filter(|e| e["actor"]["id"] == id && e["parameters"]["source"] == source)
            .count()
    };
    assert_eq!(refused("unauthenticated:token:0000", "127.0.2.1"), 21);
    assert_eq!(
        refused(&format!("unauthenticated:token:{valid_id}"), "127.0.2.1"),
        1
    );
    let wrong_secret: usize = (1..=21)
        .map(|i| {
            refused(
                &format!("unauthenticated:token:{valid_id}"),
                &format!("127.0.4.{i}"),
            )
        })
        .sum();
    assert_eq!(wrong_secret, 21);
    let zed: usize = (1..=21)
        .map(|i| refused("unauthenticated:sub:zed", &format!("127.0.3.{i}")))
        .sum();
    assert_eq!(zed, 21);
    let too_many = entries
        .iter()
        .filter(|e| {
            e["result"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("too many failed authentications"))
        })
        .count();
    assert_eq!(too_many, 4);
    let text = log.to_string();
    for secret in guesses.iter().chain([&valid, &forged]) {
        assert!(
            !text.contains(secret.as_str()),
            "a presented token is in the audit log"
        );
    }
}

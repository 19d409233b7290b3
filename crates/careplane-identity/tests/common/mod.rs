//! A real OpenID provider (npm `oidc-provider`, installed by
//! scripts/install-deps) on a free loopback port, killed on drop; and a
//! minimal browser that follows its redirects with cookies.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Idp {
    pub issuer: String,
    child: Child,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where scripts/install-deps puts oidc-provider (outside the repository).
pub fn oidc_dir() -> PathBuf {
    std::env::var_os("CAREPLANE_OIDC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/careplane-oidc")
        })
}

/// Starts the provider, or — when node or oidc-provider is missing — fails
/// in CI and returns None (skip, with the reason printed) locally.
pub fn idp() -> Option<Idp> {
    let dir = oidc_dir();
    let missing = if Command::new("node").arg("--version").output().is_err() {
        Some("node is not installed".to_string())
    } else if !dir.join("node_modules/oidc-provider/package.json").exists() {
        Some(format!(
            "oidc-provider is not installed under {}",
            dir.display()
        ))
    } else {
        None
    };
    if let Some(why) = missing {
        let msg = format!("{why}: run scripts/install-deps (npm install --prefix ~/.cache/careplane-oidc oidc-provider@8)");
        assert!(std::env::var("CI").is_err(), "{msg}");
        eprintln!("skipping the real-IdP test: {msg}");
        return None;
    }
    // Relative to this file, so that careplane-cli's tests can include it too.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../careplane-identity/tests/oidc/provider.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining: the provider writes notices to stdout, and a closed
        // pipe would kill it with EPIPE.
        for l in reader.lines().map_while(Result::ok) {
            eprintln!("oidc-provider: {l}");
        }
    });
    let mut idp = Idp {
        issuer: String::new(),
        child,
    };
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "the OpenID provider ({}) did not report its issuer within 30 s",
                script.display()
            )
        });
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the OpenID provider printed {line:?}, not its issuer: {e}"));
    idp.issuer = v["issuer"].as_str().unwrap().to_string();
    Some(idp)
}

impl Idp {
    /// Signs `claims` with the provider's own key for `alg` (or, with
    /// `other_key`, a fresh key under the same kid), through the test-only
    /// endpoint of provider.mjs.
    pub fn sign(
        &self,
        claims: serde_json::Value,
        alg: &str,
        kid: Option<&str>,
        other_key: bool,
    ) -> String {
        let body = serde_json::json!({
            "claims": claims, "alg": alg, "kid": kid,
            "key": if other_key { "other" } else { "provider" },
        });
        let mut resp = ureq::post(format!("{}/test/sign", self.issuer))
            .send(body.to_string())
            .expect("sign");
        let v: serde_json::Value =
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        v["token"].as_str().unwrap().to_string()
    }
}

/// Plays the browser: follows the provider's redirects with its cookies
/// until one points at the loopback redirect, then delivers it there.
pub fn browse(url: &str, redirect_uri: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into();
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    let mut url = url.to_string();
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(url.clone());
        let origin = url.split('/').take(3).collect::<Vec<_>>().join("/");
        let cookie = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = agent.get(&url);
        if !cookie.is_empty() {
            req = req.header("cookie", &cookie);
        }
        let resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        if url.starts_with(redirect_uri) {
            assert_eq!(
                resp.status(),
                200,
                "the CLI's listener answered {}",
                resp.status()
            );
            return;
        }
        for c in resp.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let kv = c.split(';').next().unwrap();
            if let Some((k, v)) = kv.split_once('=') {
                cookies.insert(k.trim().to_string(), v.to_string());
            }
        }
        let status = resp.status();
        let Some(loc) = resp.headers().get("location") else {
            let mut resp = resp;
            panic!(
                "{url} answered {status} without a redirect: {}",
                resp.body_mut().read_to_string().unwrap_or_default()
            );
        };
        let loc = loc.to_str().unwrap().to_string();
        url = if loc.starts_with('/') {
            format!("{origin}{loc}")
        } else {
            loc
        };
    }
    panic!("more than 10 redirects from the provider: {seen:#?}");
}

/// A browser session of the tests: cookies kept across requests (paths
/// ignored: each flow's cookies have their own names), no automatic
/// redirects.
struct Browser {
    agent: ureq::Agent,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            agent: ureq::Agent::config_builder()
                .max_redirects(0)
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(15)))
                .build()
                .into(),
            cookies: BTreeMap::new(),
        }
    }

    /// GET, or POST of a form; (status, absolute Location, body).
    fn send(
        &mut self,
        url: &str,
        form: Option<&[(String, String)]>,
    ) -> (u16, Option<String>, String) {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut resp = match form {
            None => {
                let mut r = self.agent.get(url);
                if !cookie.is_empty() {
                    r = r.header("cookie", &cookie);
                }
                r.call()
            }
            Some(f) => {
                let mut r = self.agent.post(url);
                if !cookie.is_empty() {
                    r = r.header("cookie", &cookie);
                }
                r.send_form(f.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
        }
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        for c in resp.headers().get_all("set-cookie") {
            let kv = c.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = kv.split_once('=') {
                self.cookies.insert(k.trim().to_string(), v.to_string());
            }
        }
        let origin = url.split('/').take(3).collect::<Vec<_>>().join("/");
        let location = resp.headers().get("location").map(|l| {
            let l = l.to_str().unwrap();
            if l.starts_with('/') {
                format!("{origin}{l}")
            } else {
                l.to_string()
            }
        });
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        (status, location, body)
    }
}

/// The first HTML form of `page`: its absolute action and hidden inputs.
fn form_of(page: &str, origin: &str) -> (String, Vec<(String, String)>) {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let end = tag[start..].find('"')? + start;
        Some(tag[start..end].replace("&amp;", "&").replace("&#x3D;", "="))
    };
    let form = page
        .split("<form")
        .nth(1)
        .unwrap_or_else(|| panic!("no form in the provider's page: {page}"));
    let action = attr(form.split('>').next().unwrap(), "action").expect("form action");
    let action = if action.starts_with('/') {
        format!("{origin}{action}")
    } else {
        action
    };
    let inputs = form
        .split("<input")
        .skip(1)
        .filter(|i| i.contains("type=\"hidden\""))
        .filter_map(|i| Some((attr(i, "name")?, attr(i, "value")?)))
        .collect();
    (action, inputs)
}

/// Plays the user of a device sign-in (RFC 8628) in the provider's own
/// pages: opens `verification_uri_complete`, submits the code, then
/// confirms (or, with `approve` false, aborts) and follows the redirects
/// through the (automatic) login to the provider's last page, which must
/// say the sign-in succeeded (or was interrupted).
pub fn device_browse(verification_uri_complete: &str, approve: bool) {
    let origin = verification_uri_complete
        .split('/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    let mut b = Browser::new();
    let (status, _, page) = b.send(verification_uri_complete, None);
    assert_eq!(status, 200, "{verification_uri_complete}: {page}");
    // The page posts the code back with its xsrf token (a script would).
    let (action, inputs) = form_of(&page, &origin);
    let (status, _, page) = b.send(&action, Some(&inputs));
    assert_eq!(status, 200, "submitting the user code: {page}");
    let (action, mut inputs) = form_of(&page, &origin);
    assert!(
        inputs.iter().any(|(k, v)| k == "confirm" && v == "yes"),
        "not the confirmation page: {page}"
    );
    if !approve {
        inputs.retain(|(k, _)| k != "confirm");
        inputs.push(("abort".into(), "yes".into()));
    }
    let (mut status, mut location, mut page) = b.send(&action, Some(&inputs));
    for _ in 0..10 {
        let Some(next) = location.take() else { break };
        (status, location, page) = b.send(&next, None);
    }
    if approve {
        assert!(
            status == 200 && page.contains("Sign-in Success"),
            "the device sign-in did not succeed ({status}): {page}"
        );
    } else {
        assert!(
            page.contains("interrupted"),
            "not aborted ({status}): {page}"
        );
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The group mapping provider.mjs's users are in.
pub fn config(issuer: &str, client_id: &str) -> careplane_identity::IdentityConfig {
    serde_json::from_value(serde_json::json!({
        "issuer": issuer,
        "clientId": client_id,
        "groups": [
            {"group": "careplane-viewers", "role": "viewer"},
            {"group": "careplane-security", "role": "security-officer"},
            {"group": "careplane-admins", "role": "platform-admin"},
            {"group": "careplane-stmarys-ops", "role": "tenant-operator", "tenants": ["stmarys"]}
        ]
    }))
    .unwrap()
}

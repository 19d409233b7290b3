//! `--server URL` (issue 20, M12; docs/design/0013, "The CLI"): the
//! commands `careplane serve`'s API answers — `status`, `incident
//! list|ack|note|resolve`, `sla report` — run against a remote server with the same
//! output, and `login --server` finds the server's identity provider. The
//! bearer token is `$CAREPLANE_TOKEN` (an API token) or the session's ID
//! token; it never appears in output or errors. Everything else works on
//! the platform's host only and is refused here, by name.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::serve::{self, IncidentCommand};
use crate::{access, print_json, print_status, write_out, Command, Output};

/// A remote `careplane serve`: its base URL and an HTTP client that trusts
/// only what `--ca-cert` names (or the web PKI without it).
pub struct Remote {
    pub base: String,
    agent: ureq::Agent,
}

/// What the API's error answers carry.
const MAX_BODY: u64 = 16 << 20;

impl Remote {
    /// Checks the URL (https, or plain http to this host only: a bearer
    /// token must not cross a network in clear) and reads the CA.
    pub fn new(server: &str, ca_cert: Option<&Path>) -> Result<Remote> {
        let base = server.trim_end_matches('/').to_string();
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            bail!("--server {server:?}: an https:// (or, on this host, http://) URL of careplane serve");
        }
        if !careplane_identity::oidc::https_or_loopback(&base) {
            bail!(
                "--server {server}: plain http only to a server on this host (loopback), bearer tokens \
                 must not cross a network in clear: use https:// (careplane serve --tls-platform-ca) \
                 with --ca-cert <the platform CA's certificate>"
            );
        }
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(120)))
            .http_status_as_error(false)
            // A redirect would carry the bearer token elsewhere.
            .max_redirects(0);
        if let (true, Some(ca)) = (https, ca_cert) {
            use ureq::tls::{PemItem, RootCerts, TlsConfig};
            let pem = std::fs::read(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                bail!(
                    "--ca-cert {}: no PEM certificate in it (the platform CA's certificate, ca.crt)",
                    ca.display()
                );
            }
            cfg = cfg.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(certs)))
                    .build(),
            );
        }
        Ok(Remote {
            base,
            agent: cfg.build().into(),
        })
    }

    /// One API call; the JSON answer of a 2xx, else an error with the
    /// server's own message (a 403 says which role or MFA is missing).
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let what = format!("careplane serve at {}: {method} {path}", self.base);
        let bearer = token.map(|t| format!("Bearer {}", t.expose_secret()));
        let resp = if method == "POST" {
            let mut r = self.agent.post(&url);
            if let Some(b) = &bearer {
                r = r.header("authorization", b);
            }
            r.header("content-type", "application/json")
                .send(body.unwrap_or(Value::Null).to_string())
        } else {
            let mut r = self.agent.get(&url);
            if let Some(b) = &bearer {
                r = r.header("authorization", b);
            }
            r.call()
        };
        // ureq's errors name the URL and the cause, never a header.
        let mut resp = resp.map_err(|e| {
            let e = e.to_string();
            let hint = if e.contains("certificate") {
                " (the server's certificate is not signed by the CA --ca-cert or CAREPLANE_CA_CERT \
                 names: give the platform CA's certificate, <dataDir>/pki/ca.crt)"
            } else {
                ""
            };
            anyhow::anyhow!("{what}: {e}{hint}")
        })?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .with_context(|| what.clone())?;
        let v: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let msg = v
                .as_ref()
                .and_then(|v| v["error"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(300).collect());
            let hint = match status.as_u16() {
                401 => format!(
                    " (sign in again: careplane login --server {}, or set CAREPLANE_TOKEN to a valid API token)",
                    self.base
                ),
                429 => " (try again later)".to_string(),
                _ => String::new(),
            };
            bail!("{what}: {status}: {msg}{hint}");
        }
        v.with_context(|| format!("{what}: the answer is not JSON"))
    }

    /// The identity provider to sign in with (unauthenticated).
    pub fn identity(&self) -> Result<(String, String)> {
        let v = self.call("GET", "/v1/identity", None, None)?;
        match (v["issuer"].as_str(), v["clientId"].as_str()) {
            (Some(i), Some(c)) => Ok((i.to_string(), c.to_string())),
            _ => bail!(
                "careplane serve at {}: /v1/identity names no issuer and clientId: {v}",
                self.base
            ),
        }
    }
}

/// The bearer token: `$CAREPLANE_TOKEN` (an API token, `careplane token
/// create`), else the session's ID token (`careplane login --server`).
fn bearer(server: &str) -> Result<SecretString> {
    if let Some(t) = std::env::var("CAREPLANE_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(SecretString::from(t.trim().to_string()));
    }
    let path = access::session_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "not signed in (no {}): run careplane login --server {server} [--device], or set \
             CAREPLANE_TOKEN to an API token",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let session: Value = serde_json::from_str(&text)
        .with_context(|| format!("session file {} is not JSON", path.display()))?;
    if session["kind"] == "break-glass" {
        bail!(
            "the session in {} is a break-glass session, valid on the platform's host only: \
             sign in with careplane login --server {server}, or set CAREPLANE_TOKEN",
            path.display()
        );
    }
    let token = session["id_token"]
        .as_str()
        .with_context(|| format!("session file {} has no id_token", path.display()))?;
    Ok(SecretString::from(token.to_string()))
}

/// Whether this run goes to a server (`--server` or `CAREPLANE_SERVER`),
/// decided before parsing: then no command needs `-f`.
pub fn requested() -> bool {
    std::env::var_os("CAREPLANE_SERVER").is_some_and(|v| !v.is_empty())
        || std::env::args_os()
            .skip(1)
            .take_while(|a| a != "--")
            .any(|a| a == "--server" || a.to_string_lossy().starts_with("--server="))
}

/// `cmd` with `-f/--file` optional in every subcommand: a remote user has
/// no specs (clap cannot make an argument of a subcommand depend on a
/// global one given before it).
pub fn without_specs(cmd: clap::Command) -> clap::Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = if cmd.get_arguments().any(|a| a.get_id() == "files") {
        cmd.mut_arg("files", |a| a.required(false))
    } else {
        cmd
    };
    for name in subs {
        cmd = cmd.mut_subcommand(name, without_specs);
    }
    cmd
}

/// The command line's subcommand path (`incident ack`), for refusals.
pub fn command_name(m: &clap::ArgMatches) -> String {
    let mut words = Vec::new();
    let mut cur = m;
    while let Some((name, sub)) = cur.subcommand() {
        words.push(name.to_string());
        cur = sub;
    }
    words.join(" ")
}

/// Runs `cmd` against the server at `server`.
pub fn run(server: &str, ca_cert: Option<&Path>, cmd: Command, name: &str) -> Result<ExitCode> {
    let remote = Remote::new(server, ca_cert)?;
    match cmd {
        Command::Login(args) => return access::login_remote(&remote, args),
        Command::Status { output, .. } => {
            let v = remote.call("GET", "/v1/status", Some(&bearer(server)?), None)?;
            let status: careplane_engine::Status = serde_json::from_value(v.clone())
                .with_context(|| {
                    format!("careplane serve at {server}: /v1/status is not a status this careplane reads")
                })?;
            match output {
                Output::Json => print_json(&v)?,
                Output::Text => print_status(&status),
            }
            if !crate::healthy(&status) {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Serve(serve::Command::Sla {
            command:
                serve::SlaCommand::Report {
                    month,
                    tenant,
                    format,
                    out,
                    ..
                },
        }) => {
            careplane_sla::Month::parse(&month)?;
            let mut path = format!("/v1/reports?month={}", path_segment(&month));
            if let Some(t) = &tenant {
                path.push_str(&format!("&tenant={}", path_segment(t)));
            }
            let v = remote.call("GET", &path, Some(&bearer(server)?), None)?;
            let reports: Vec<careplane_sla::MonthlyReport> = serde_json::from_value(v)
                .with_context(|| {
                    format!(
                        "careplane serve at {server}: /v1/reports is not a list of monthly reports"
                    )
                })?;
            serve::write_report(&reports, format, out)?;
        }
        Command::Serve(serve::Command::Incident { command }) => {
            let token = bearer(server)?;
            let act = |id: &str, verb: &str, body: Value| -> Result<Value> {
                remote.call(
                    "POST",
                    &format!("/v1/incidents/{}/{verb}", path_segment(id)),
                    Some(&token),
                    Some(body),
                )
            };
            match command {
                IncidentCommand::List { open, output, .. } => {
                    let v = remote.call(
                        "GET",
                        &format!("/v1/incidents?open={open}"),
                        Some(&token),
                        None,
                    )?;
                    let all: Vec<careplane_sla::Incident> = serde_json::from_value(v)
                        .with_context(|| {
                            format!("careplane serve at {server}: /v1/incidents is not a list of incidents")
                        })?;
                    serve::print_incidents(&all, output)?;
                }
                IncidentCommand::Ack { id, .. } => {
                    act(&id, "ack", json!({}))?;
                    outln!("acknowledged {id}");
                }
                IncidentCommand::Note { id, text, .. } => {
                    act(&id, "note", json!({ "text": text }))?;
                    outln!("noted on {id}");
                }
                IncidentCommand::Resolve { id, summary, .. } => {
                    act(&id, "resolve", json!({ "summary": summary }))?;
                    outln!("resolved {id}");
                }
            }
        }
        _ => bail!(
            "careplane {name} runs on the platform's host; not available with --server (remotely: \
             status, incident list|ack|note|resolve, sla report, login)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// An incident id as one path segment (ids are careplane's own, but a typo
/// must not become another route).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_host() {
        assert!(Remote::new("http://127.0.0.1:8470", None).is_ok());
        assert!(Remote::new("http://[::1]:8470/", None).is_ok());
        assert!(Remote::new("https://ops.example.org:8470", None).is_ok());
        let e = Remote::new("http://ops.example.org:8470", None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("plain http only"), "{e}");
        assert!(Remote::new("ops.example.org:8470", None).is_err());
    }

    #[test]
    fn incident_ids_stay_one_path_segment() {
        assert_eq!(path_segment("inc-2026-01_a"), "inc-2026-01_a");
        assert_eq!(path_segment("../status"), "%2E%2E%2Fstatus");
    }
}

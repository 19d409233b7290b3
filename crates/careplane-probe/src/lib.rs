//! careplane's probes (issue 17, docs/design/0012-serve-and-probes.md): what `careplane serve`
//! runs against every environment, and the scheduler that runs them.
//!
//! - [`Check`]: one probe's target and credentials. HTTP(S) (status, body match, latency,
//!   days left on the TLS certificate, trusting only the platform CA), the Odoo journeys
//!   over JSON-RPC as the `careplane-probe` user (log in, read purchase orders, render one
//!   as a PDF; and, where writes are allowed, create, confirm and cancel one),
//!   PostgreSQL as the tenant's own role over TLS (`SELECT 1`, connection saturation) and
//!   Redis as the tenant's ACL user (`AUTH` + `PING`), and the server's memory headroom
//!   (`INFO memory`) as careplane's own user.
//! - [`run`]: one probe run, bounded by its timeout whatever the target does (hangs, refuses,
//!   answers slowly or endlessly): a run always ends with a [`Report`].
//! - [`schedule`]: per-probe interval and timeout, jitter, bounded concurrency; the time a
//!   result is stamped with comes from a [`schedule::Clock`] the caller passes in.
//!
//! Nothing here knows of specs, the state store or the engine: the server builds the checks
//! from what the engine reports. Secrets are `SecretString` and never part of a report.

mod http;
mod odoo;
mod pg;
mod redis;
pub mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use careplane_sla::{Outcome, StepTiming};
use jiff::Timestamp;
use serde::Serialize;

pub use http::HttpCheck;
pub use odoo::{OdooLogin, OdooWrite};
pub use pg::PgCheck;
pub use redis::{RedisCheck, RedisMemory, DEFAULT_MIN_HEADROOM_PERCENT};

/// What to probe. `Debug` of every variant redacts its secrets.
#[derive(Clone, Debug)]
pub enum Check {
    Http(HttpCheck),
    OdooLogin(OdooLogin),
    Postgres(PgCheck),
    Redis(RedisCheck),
    /// Odoo's scheduled actions (and `queue_job` where installed), as the tenant's role.
    OdooCron(PgCheck),
    /// The write journey: create, confirm and cancel a purchase order.
    OdooWrite(OdooWrite),
}

impl Check {
    /// The probe kind, e.g. for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Http(_) => "http",
            Check::OdooLogin(_) => "odoo-login",
            Check::Postgres(_) => "postgres",
            Check::Redis(_) => "redis",
            Check::OdooCron(_) => "odoo-cron",
            Check::OdooWrite(_) => "odoo-write",
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub outcome: Outcome,
    /// Wall time of the run in milliseconds (the timeout when it ran out).
    pub latency_ms: u32,
    /// Timed steps of a journey (empty for single-request probes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepTiming>,
    /// `ok`, or what failed (never a secret).
    pub detail: String,
    /// Whole days until the server certificate expires (HTTPS only; negative once expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
    /// PostgreSQL: the tenant role's connections over its limit, in per mille.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saturation_permille: Option<u32>,
    /// Redis: the server's memory (when the check reads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryUse>,
}

/// A Redis server's memory: `used_memory` and `maxmemory` (0: no limit) in bytes, and the
/// share of `maxmemory` in use in per mille (none without a limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryUse {
    pub used_bytes: u64,
    pub max_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_permille: Option<u32>,
}

/// Why a run failed: `Down` is evidence against the target, `Unknown` says the prober could
/// not tell (its own configuration, e.g. an unreadable CA).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("{0}")]
    Down(String),
    #[error("{0}")]
    Unknown(String),
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;

/// POSTs `body` as JSON to `url` within `timeout` and returns the answer's status: how
/// `careplane serve` delivers notifications, with the probes' client (HTTP/1.1; https
/// trusts `ca_pem`, the platform CA, when given, else Mozilla's roots for endpoints on the
/// public web). The error names the URL and what failed.
pub async fn post_json(
    url: &str,
    body: &serde_json::Value,
    ca_pem: Option<&str>,
    timeout: Duration,
) -> std::result::Result<u16, String> {
    let headers = [("content-type", "application/json".to_string())];
    let send = http::request_trusting(
        ::http::Method::POST,
        url,
        &headers,
        Some(body.to_string().into_bytes()),
        http::Trust::PlatformOrPublic(ca_pem),
    );
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(r)) => Ok(r.status),
        Ok(Err(e)) => Err(format!("POST {url}: {e}")),
        Err(_) => Err(format!("POST {url}: no answer within {timeout:?}")),
    }
}

/// What a check found besides success.
#[derive(Default)]
pub(crate) struct Found {
    pub steps: Vec<StepTiming>,
    pub cert_days_left: Option<i64>,
    pub saturation_permille: Option<u32>,
    pub memory: Option<MemoryUse>,
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

/// Runs `check` once, at most `timeout` long. `now` dates certificate expiry.
pub async fn run(check: &Check, timeout: Duration, now: Timestamp) -> Report {
    let started = Instant::now();
    let mut steps = Vec::new();
    let fut = async {
        match check {
            Check::Http(c) => c.run(now).await,
            Check::OdooLogin(c) => c.run(now).await,
            Check::Postgres(c) => c.run().await,
            Check::Redis(c) => c.run().await,
            Check::OdooCron(c) => c.run_cron().await,
            Check::OdooWrite(c) => c.login.run_write(c).await,
        }
    };
    let r = tokio::time::timeout(timeout, fut).await;
    let latency_ms = millis(started.elapsed());
    let (outcome, detail, found) = match r {
        Ok(Ok(found)) => (Outcome::Up, "ok".to_string(), found),
        Ok(Err(Failure::Down(d))) => (Outcome::Down, d, Found::default()),
        Ok(Err(Failure::Unknown(d))) => (Outcome::Unknown, d, Found::default()),
        // A target that does not answer in time is down for its users.
        Err(_) => (
            Outcome::Down,
            format!("no answer within {} ms", timeout.as_millis()),
            Found::default(),
        ),
    };
    steps.extend(found.steps);
    Report {
        outcome,
        latency_ms,
        steps,
        detail,
        cert_days_left: found.cert_days_left,
        saturation_permille: found.saturation_permille,
        memory: found.memory,
    }
}

/// A rustls client configuration trusting only the certificates of `ca_pem` (the platform
/// CA), ring provider, TLS 1.2+.
pub fn client_tls(
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("parsing the CA certificate PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("adding the CA certificate to the trust store: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA PEM holds no certificate".into());
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("configuring TLS versions: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Where a host name connects: names under `localhost` are loopback (RFC 6761), so the
/// ingress's `<env>.<tenant>.careplane.localhost` names work without a resolver.
pub(crate) async fn resolve(host: &str, port: u16) -> Result<std::net::SocketAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<std::net::IpAddr>() {
        return Ok((ip, port).into());
    }
    if h == "localhost" || h.ends_with(".localhost") {
        return Ok(([127, 0, 0, 1], port).into());
    }
    tokio::net::lookup_host((h, port))
        .await
        .map_err(|e| Failure::Down(format!("resolving {h}: {e}")))?
        .next()
        .ok_or_else(|| Failure::Down(format!("resolving {h}: no address")))
}

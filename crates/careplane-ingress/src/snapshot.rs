//! A loaded configuration: routes with their certificates, ready to serve.
//! Immutable; a reload builds a new one and swaps the pointer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

use crate::config::{self, Config, Limits};
use crate::metrics::{Registry, RouteMetrics};
use crate::Error;

pub use careplane_model::ingress_policy::CONTENT_SECURITY_POLICY as DEFAULT_CSP;

pub struct RouteState {
    pub host: String,
    /// Stable for a host across reloads (rate-limit buckets are keyed by it).
    pub id: u32,
    pub http_port: u16,
    pub websocket_port: u16,
    pub limits: Limits,
    pub admin_paths: Vec<String>,
    pub admin_allow: Vec<ipnet::IpNet>,
    pub maintenance: bool,
    pub csp: HeaderValue,
    pub hsts: HeaderValue,
    /// Unix seconds.
    pub cert_not_after: i64,
    pub metrics: Arc<RouteMetrics>,
}

pub struct Snapshot {
    pub config: Config,
    pub routes: HashMap<String, Arc<RouteState>>,
    pub certs: HashMap<String, Arc<CertifiedKey>>,
}

impl Snapshot {
    pub fn route(&self, host: &str) -> Option<&Arc<RouteState>> {
        self.routes.get(host)
    }

    /// (host, certificate notAfter) sorted by host, for metrics.
    pub fn expiries(&self) -> Vec<(&str, i64)> {
        let mut v: Vec<_> = self
            .routes
            .values()
            .map(|r| (r.host.as_str(), r.cert_not_after))
            .collect();
        v.sort();
        v
    }
}

/// What went wrong reading a key file, without any of its content (some PEM
/// errors quote the offending line).
fn key_error(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no PRIVATE KEY block".into(),
        _ => "not a readable PEM private key".into(),
    }
}

/// Interns host names to small ids that survive reloads.
#[derive(Default)]
pub struct RouteIds(std::sync::Mutex<HashMap<String, u32>>);

impl RouteIds {
    fn get(&self, host: &str) -> u32 {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let next = m.len() as u32;
        *m.entry(host.to_owned()).or_insert(next)
    }
}

/// Loads and checks everything a configuration names: the file itself, every
/// certificate chain and key (they must match, and the certificate must be
/// valid for its host).
pub fn build(
    path: &Path,
    config: Config,
    ids: &RouteIds,
    registry: &Registry,
) -> Result<Snapshot, Error> {
    let provider = rustls::crypto::ring::default_provider();
    let mut routes = HashMap::new();
    let mut certs = HashMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}].tls");
        let bad = |m: String| Error::Config {
            path: path.to_owned(),
            field: at.clone(),
            message: m,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&r.tls.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(format!("certificate {}: {e}", r.tls.cert.display())))?;
        if chain.is_empty() {
            return Err(bad(format!(
                "certificate {}: no CERTIFICATE block",
                r.tls.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&r.tls.key)
            .map_err(|e| bad(format!("key {}: {}", r.tls.key.display(), key_error(e))))?;
        let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            bad(format!(
                "key {} does not fit certificate {}: {e}",
                r.tls.key.display(),
                r.tls.cert.display()
            ))
        })?;
        let leaf = &ck.cert[0];
        let parsed = rustls::server::ParsedCertificate::try_from(leaf)
            .map_err(|e| bad(format!("certificate {}: {e}", r.tls.cert.display())))?;
        let name = ServerName::try_from(r.host.as_str())
            .map_err(|e| bad(format!("host {}: {e}", r.host)))?;
        rustls::client::verify_server_name(&parsed, &name).map_err(|e| {
            bad(format!(
                "certificate {} is not valid for {}: {e}",
                r.tls.cert.display(),
                r.host
            ))
        })?;
        let not_after = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| c.validity().not_after.timestamp())
            .map_err(|e| bad(format!("certificate {}: {e}", r.tls.cert.display())))?;

        let limits = config.defaults.merged(r.limits.as_ref());
        let hsts = HeaderValue::from_str(&format!("max-age={}", limits.hsts_max_age_secs))
            .expect("digits");
        let csp =
            HeaderValue::from_str(r.content_security_policy.as_deref().unwrap_or(DEFAULT_CSP))
                .expect("checked when parsed");
        let admin_allow = r
            .admin_allow
            .iter()
            .map(|a| config::parse_cidr(a).expect("checked when parsed"))
            .collect();
        certs.insert(r.host.clone(), Arc::new(ck));
        routes.insert(
            r.host.clone(),
            Arc::new(RouteState {
                host: r.host.clone(),
                id: ids.get(&r.host),
                http_port: r.upstream.http,
                websocket_port: r.upstream.websocket.unwrap_or(r.upstream.http),
                limits,
                admin_paths: r.admin_paths.clone(),
                admin_allow,
                maintenance: r.maintenance,
                csp,
                hsts,
                cert_not_after: not_after,
                metrics: registry.route(&r.host),
            }),
        );
    }
    Ok(Snapshot {
        config,
        routes,
        certs,
    })
}

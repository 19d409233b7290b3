//! The file the engine writes and the proxy reads: plain serde data, refused
//! whole (with the file and the field or route named) when anything is wrong.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The whole configuration of one proxy process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Increased by the writer on every change; `/status` reports the one
    /// loaded, so the engine can tell that a reload took.
    #[serde(default)]
    pub generation: u64,
    pub listen: Listen,
    /// The HTTPS port clients use, for redirects from the HTTP listener
    /// (default: the port of the first HTTPS address; omitted from the URL
    /// when 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_https_port: Option<u16>,
    /// JSON lines access log, appended to; `None` writes to standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<PathBuf>,
    /// Tokio worker threads (default: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Limits for every route unless a route overrides them.
    #[serde(default)]
    pub defaults: Limits,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub https: Vec<SocketAddr>,
    /// Plain HTTP listeners that only redirect to HTTPS.
    #[serde(default)]
    pub http: Vec<SocketAddr>,
    /// `/metrics`, `/status` and `/health`; must be a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
}

/// One environment: `<env>.<tenant>.<domain>` to its Odoo on loopback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: String,
    pub upstream: Upstream,
    pub tls: TlsFiles,
    /// Paths (prefixes, matched on the normalized path) reachable only from
    /// `admin_allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_paths: Vec<String>,
    /// CIDRs (`10.0.0.0/8`, `::1/128`) or single addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_allow: Vec<String>,
    #[serde(default)]
    pub maintenance: bool,
    /// Overrides of `Config::defaults` for this route only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOverrides>,
    /// Replaces the default Content-Security-Policy for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_security_policy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Odoo's HTTP port on 127.0.0.1.
    pub http: u16,
    /// Odoo's evented (gevent) port on 127.0.0.1, for `/websocket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<u16>,
}

/// PEM files: a chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: how many requests may come at once.
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Odoo's own default limit is 128 MiB.
    pub max_body_bytes: u64,
    /// Largest `/jsonrpc` body buffered to look for the `db` service.
    pub max_inspected_body_bytes: u64,
    /// Request line and headers together.
    pub max_header_bytes: usize,
    /// Process-wide (taken from `defaults` only): one pool serves every route.
    pub upstream_connect_timeout_ms: u64,
    /// Until the upstream's response headers; Odoo's docs suggest 720 s for
    /// long reports.
    pub upstream_timeout_secs: u64,
    /// Per client address and route; `None` disables.
    pub rate: Option<Rate>,
    /// Per client address and route, for login attempts.
    pub login_rate: Option<Rate>,
    pub maintenance_retry_after_secs: u64,
    pub hsts_max_age_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        use careplane_model::ingress_policy as policy;
        let rate = |r: policy::Rate| Rate {
            per_second: r.per_second,
            burst: r.burst,
        };
        Limits {
            max_body_bytes: policy::MAX_BODY_BYTES,
            max_inspected_body_bytes: 16 << 20,
            max_header_bytes: 32 << 10,
            upstream_connect_timeout_ms: 5_000,
            upstream_timeout_secs: 720,
            rate: Some(rate(policy::DEFAULT_RATE)),
            login_rate: Some(rate(policy::LOGIN_RATE)),
            maintenance_retry_after_secs: 120,
            hsts_max_age_secs: policy::HSTS_MAX_AGE_SECS,
        }
    }
}

/// A field left out keeps the value from `Config::defaults`; `rate` and
/// `login_rate` replace the default buckets, `disable_rate_limits` switches
/// both off for the route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inspected_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_rate: Option<Rate>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable_rate_limits: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_retry_after_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts_max_age_secs: Option<u64>,
}

impl Limits {
    pub fn merged(&self, o: Option<&LimitOverrides>) -> Limits {
        let Some(o) = o else { return self.clone() };
        let off = o.disable_rate_limits;
        Limits {
            max_body_bytes: o.max_body_bytes.unwrap_or(self.max_body_bytes),
            max_inspected_body_bytes: o
                .max_inspected_body_bytes
                .unwrap_or(self.max_inspected_body_bytes),
            max_header_bytes: o.max_header_bytes.unwrap_or(self.max_header_bytes),
            // Process-wide: one connection pool serves every route.
            upstream_connect_timeout_ms: self.upstream_connect_timeout_ms,
            upstream_timeout_secs: o
                .upstream_timeout_secs
                .unwrap_or(self.upstream_timeout_secs),
            rate: if off { None } else { o.rate.or(self.rate) },
            login_rate: if off {
                None
            } else {
                o.login_rate.or(self.login_rate)
            },
            maintenance_retry_after_secs: o
                .maintenance_retry_after_secs
                .unwrap_or(self.maintenance_retry_after_secs),
            hsts_max_age_secs: o.hsts_max_age_secs.unwrap_or(self.hsts_max_age_secs),
        }
    }
}

/// Reads and checks `path` (syntax, unknown fields, values; not the
/// certificate files: see [`crate::load_config`] for the full check).
pub fn parse_file(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        what: "reading the ingress configuration",
        source: e,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &[u8]) -> Result<Config, Error> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        Error::Config {
            path: path.to_owned(),
            field,
            message: e.into_inner().to_string(),
        }
    })?;
    check(path, &config)?;
    Ok(config)
}

fn bad(path: &Path, field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_owned(),
        field: field.into(),
        message: message.into(),
    }
}

fn check_limits(path: &Path, field: &str, l: &Limits) -> Result<(), Error> {
    for (name, rate) in [("rate", l.rate), ("login_rate", l.login_rate)] {
        if let Some(r) = rate {
            if !(r.per_second.is_finite() && r.per_second > 0.0) || r.burst == 0 {
                return Err(bad(
                    path,
                    format!("{field}.{name}"),
                    "per_second must be a positive number and burst at least 1",
                ));
            }
        }
    }
    if l.max_header_bytes < 1024 {
        return Err(bad(
            path,
            format!("{field}.max_header_bytes"),
            "must be at least 1024",
        ));
    }
    if l.upstream_timeout_secs == 0 || l.upstream_connect_timeout_ms == 0 {
        return Err(bad(path, field, "upstream timeouts must be positive"));
    }
    Ok(())
}

fn check(path: &Path, c: &Config) -> Result<(), Error> {
    if c.listen.https.is_empty() {
        return Err(bad(path, "listen.https", "at least one address is needed"));
    }
    if let Some(admin) = c.listen.admin {
        if !admin.ip().is_loopback() {
            return Err(bad(
                path,
                "listen.admin",
                format!(
                    "{admin} is not a loopback address: metrics and status stay on this machine"
                ),
            ));
        }
    }
    if c.workers == Some(0) {
        return Err(bad(path, "workers", "must be at least 1"));
    }
    check_limits(path, "defaults", &c.defaults)?;
    let mut hosts = HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if !valid_host(&r.host) {
            return Err(bad(
                path,
                format!("{at}.host"),
                format!(
                    "{:?} is not a lower-case DNS name (labels of a-z, 0-9 and '-')",
                    r.host
                ),
            ));
        }
        if !hosts.insert(r.host.as_str()) {
            return Err(bad(
                path,
                format!("{at}.host"),
                format!("{} is routed twice", r.host),
            ));
        }
        if r.upstream.http == 0 || r.upstream.websocket == Some(0) {
            return Err(bad(path, format!("{at}.upstream"), "port 0"));
        }
        for (j, p) in r.admin_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(bad(
                    path,
                    format!("{at}.admin_paths[{j}]"),
                    format!("{p:?} must start with '/'"),
                ));
            }
        }
        for (j, a) in r.admin_allow.iter().enumerate() {
            parse_cidr(a).map_err(|m| bad(path, format!("{at}.admin_allow[{j}]"), m))?;
        }
        if let Some(csp) = &r.content_security_policy {
            if http::HeaderValue::from_str(csp).is_err() {
                return Err(bad(
                    path,
                    format!("{at}.content_security_policy"),
                    "not a valid header value",
                ));
            }
        }
        check_limits(
            path,
            &format!("{at}.limits"),
            &c.defaults.merged(r.limits.as_ref()),
        )?;
    }
    Ok(())
}

pub(crate) fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{s:?} is neither an address nor a CIDR"))
}

/// Lower-case DNS name of at least two labels (`localhost` alone is not a
/// route name).
pub(crate) fn valid_host(h: &str) -> bool {
    h.len() <= 253
        && h.contains('.')
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The host name careplane gives an environment: `<env>.<tenant>.<domain>`.
/// The default domain `careplane.localhost` resolves to loopback in browsers
/// without any DNS set-up.
pub fn host_name(env: &str, tenant: &str, domain: Option<&str>) -> String {
    format!("{env}.{tenant}.{}", domain.unwrap_or(DEFAULT_DOMAIN))
}

pub const DEFAULT_DOMAIN: &str = "careplane.localhost";

/// Writes `config` to `path` atomically (0640), so a reload never reads a
/// torn file.
pub fn write_config(path: &Path, config: &Config) -> Result<(), Error> {
    let mut text = serde_json::to_vec_pretty(config).expect("config serializes");
    text.push(b'\n');
    careplane_sys::atomic_write(path, &text, 0o640, None).map_err(|e| Error::Io {
        path: path.to_owned(),
        what: "writing the ingress configuration",
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "listen": {"https": ["127.0.0.1:0"]},
            "routes": [{"host": "prod.acme.careplane.localhost",
                        "upstream": {"http": 8069, "websocket": 8072},
                        "tls": {"cert": "/c.pem", "key": "/k.pem"}}]
        })
    }

    fn parse_value(v: &serde_json::Value) -> Result<Config, Error> {
        parse(Path::new("/etc/ingress.json"), v.to_string().as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_value(&minimal()).unwrap();
        assert_eq!(c.defaults, Limits::default());
        assert_eq!(c.routes[0].upstream.websocket, Some(8072));
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let mut v = minimal();
        v["routes"][0]["upstream"]["htp"] = 1.into();
        let e = parse_value(&v).unwrap_err().to_string();
        assert!(e.contains("/etc/ingress.json"), "{e}");
        assert!(e.contains("routes[0].upstream"), "{e}");
        assert!(e.contains("htp"), "{e}");
    }

    #[test]
    fn duplicate_host_and_bad_cidr_are_refused() {
        let mut v = minimal();
        let r = v["routes"][0].clone();
        v["routes"].as_array_mut().unwrap().push(r);
        let e = parse_value(&v).unwrap_err().to_string();
        assert!(
            e.contains("routes[1].host") && e.contains("routed twice"),
            "{e}"
        );

        let mut v = minimal();
        v["routes"][0]["admin_allow"] = serde_json::json!(["10.0.0.0/8", "nonsense"]);
        let e = parse_value(&v).unwrap_err().to_string();
        assert!(e.contains("routes[0].admin_allow[1]"), "{e}");
    }

    #[test]
    fn admin_listener_must_be_loopback() {
        let mut v = minimal();
        v["listen"]["admin"] = "0.0.0.0:9100".into();
        let e = parse_value(&v).unwrap_err().to_string();
        assert!(e.contains("listen.admin") && e.contains("loopback"), "{e}");
    }

    #[test]
    fn upper_case_or_single_label_hosts_are_refused() {
        for h in ["Prod.acme.localhost", "localhost", "a..b", "-a.b", "a_b.c"] {
            let mut v = minimal();
            v["routes"][0]["host"] = h.into();
            assert!(parse_value(&v).is_err(), "{h} accepted");
        }
        assert_eq!(
            host_name("prod", "acme", None),
            "prod.acme.careplane.localhost"
        );
    }

    #[test]
    fn overrides_merge_field_by_field() {
        let d = Limits::default();
        let o = LimitOverrides {
            max_body_bytes: Some(10),
            disable_rate_limits: true,
            ..Default::default()
        };
        let m = d.merged(Some(&o));
        assert_eq!(m.max_body_bytes, 10);
        assert_eq!(m.max_header_bytes, d.max_header_bytes);
        assert!(m.rate.is_none() && m.login_rate.is_none());
    }

    #[test]
    fn the_design_notes_example_parses() {
        let note = include_str!("../../../docs/design/0006-ingress.md");
        let start = note.find("```json\n").expect("example") + 8;
        let end = start + note[start..].find("```").unwrap();
        let c = parse(Path::new("0006-ingress.md"), &note.as_bytes()[start..end]).unwrap();
        assert_eq!(c.generation, 7);
        assert_eq!(c.defaults, Limits::default());
        assert_eq!(c.routes[0].upstream.websocket, Some(41072));
    }

    #[test]
    fn written_config_reads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ingress.json");
        let c = parse_value(&minimal()).unwrap();
        write_config(&p, &c).unwrap();
        assert_eq!(parse_file(&p).unwrap(), c);
    }
}

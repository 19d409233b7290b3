//! Prometheus text metrics, per route, from plain atomics.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Why a request was answered by the proxy itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    DatabaseManager,
    DbService,
    UnparsableJsonRpc,
    AdminPath,
    RateLimited,
    LoginRateLimited,
    BodyTooLarge,
    HeadersTooLarge,
    Maintenance,
    UpstreamTimeout,
    UpstreamError,
    MisdirectedHost,
    BadPath,
    MethodNotAllowed,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::DatabaseManager,
        Reason::DbService,
        Reason::UnparsableJsonRpc,
        Reason::AdminPath,
        Reason::RateLimited,
        Reason::LoginRateLimited,
        Reason::BodyTooLarge,
        Reason::HeadersTooLarge,
        Reason::Maintenance,
        Reason::UpstreamTimeout,
        Reason::UpstreamError,
        Reason::MisdirectedHost,
        Reason::BadPath,
        Reason::MethodNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DatabaseManager => "database-manager",
            Reason::DbService => "db-service",
            Reason::UnparsableJsonRpc => "unparsable-jsonrpc",
            Reason::AdminPath => "admin-path",
            Reason::RateLimited => "rate-limited",
            Reason::LoginRateLimited => "login-rate-limited",
            Reason::BodyTooLarge => "body-too-large",
            Reason::HeadersTooLarge => "headers-too-large",
            Reason::Maintenance => "maintenance",
            Reason::UpstreamTimeout => "upstream-timeout",
            Reason::UpstreamError => "upstream-error",
            Reason::MisdirectedHost => "misdirected-host",
            Reason::BadPath => "bad-path",
            Reason::MethodNotAllowed => "method-not-allowed",
        }
    }
}

const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct RouteMetrics {
    by_class: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    reasons: [AtomicU64; Reason::ALL.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    duration_micros: AtomicU64,
    count: AtomicU64,
}

impl RouteMetrics {
    pub fn record(&self, status: u16, bytes_in: u64, bytes_out: u64, secs: f64, r: Option<Reason>) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes_in, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
        if let Some(r) = r {
            let i = Reason::ALL.iter().position(|x| *x == r).expect("listed");
            self.reasons[i].fetch_add(1, Relaxed);
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.duration_micros.fetch_add((secs * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// Metrics by host name; they outlive reloads so counters never go back.
#[derive(Default)]
pub struct Registry {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    /// Requests for no configured host.
    pub unrouted: RouteMetrics,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub connections_open: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

impl Registry {
    pub fn route(&self, host: &str) -> Arc<RouteMetrics> {
        let mut m = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(host.to_owned()).or_default().clone()
    }

    /// `hosts` with the certificate expiry (Unix seconds) of each.
    pub fn render(&self, generation: u64, hosts: &[(&str, i64)], now: i64) -> String {
        let mut o = String::with_capacity(4096);
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut named: Vec<(&str, &RouteMetrics)> = hosts
            .iter()
            .filter_map(|(h, _)| routes.get(*h).map(|m| (*h, &**m)))
            .collect();
        named.push(("", &self.unrouted));
        let _ = writeln!(
            o,
            "# HELP careplane_ingress_requests_total Requests answered, by route and status class."
        );
        let _ = writeln!(o, "# TYPE careplane_ingress_requests_total counter");
        for (h, m) in &named {
            for (i, c) in m.by_class.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "careplane_ingress_requests_total{{route=\"{h}\",code=\"{}xx\"}} {}",
                    i + 1,
                    c.load(Relaxed)
                );
            }
        }
        for (name, help, f) in [
            (
                "careplane_ingress_request_bytes_total",
                "Request body bytes received.",
                0,
            ),
            (
                "careplane_ingress_response_bytes_total",
                "Response body bytes sent.",
                1,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (h, m) in &named {
                let v = if f == 0 { &m.bytes_in } else { &m.bytes_out };
                let _ = writeln!(o, "{name}{{route=\"{h}\"}} {}", v.load(Relaxed));
            }
        }
        let _ = writeln!(
            o,
            "# HELP careplane_ingress_refused_total Requests the proxy answered itself, by reason."
        );
        let _ = writeln!(o, "# TYPE careplane_ingress_refused_total counter");
        for (h, m) in &named {
            for (i, r) in Reason::ALL.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "careplane_ingress_refused_total{{route=\"{h}\",reason=\"{}\"}} {}",
                    r.as_str(),
                    m.reasons[i].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP careplane_ingress_request_duration_seconds Time to the end of the response."
        );
        let _ = writeln!(
            o,
            "# TYPE careplane_ingress_request_duration_seconds histogram"
        );
        for (h, m) in &named {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "careplane_ingress_request_duration_seconds_bucket{{route=\"{h}\",le=\"{b}\"}} {}",
                    m.buckets[i].load(Relaxed)
                );
            }
            let n = m.count.load(Relaxed);
            let _ = writeln!(o, "careplane_ingress_request_duration_seconds_bucket{{route=\"{h}\",le=\"+Inf\"}} {n}");
            let _ = writeln!(
                o,
                "careplane_ingress_request_duration_seconds_sum{{route=\"{h}\"}} {}",
                m.duration_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                o,
                "careplane_ingress_request_duration_seconds_count{{route=\"{h}\"}} {n}"
            );
        }
        let _ = writeln!(o, "# HELP careplane_ingress_certificate_expiry_seconds Seconds until the host's certificate expires (negative: expired).");
        let _ = writeln!(
            o,
            "# TYPE careplane_ingress_certificate_expiry_seconds gauge"
        );
        for (h, not_after) in hosts {
            let _ = writeln!(
                o,
                "careplane_ingress_certificate_expiry_seconds{{host=\"{h}\"}} {}",
                not_after - now
            );
        }
        for (name, kind, v) in [
            ("careplane_ingress_config_generation", "gauge", generation),
            ("careplane_ingress_routes", "gauge", hosts.len() as u64),
            (
                "careplane_ingress_reloads_total{result=\"ok\"}",
                "counter",
                self.reloads_ok.load(Relaxed),
            ),
            (
                "careplane_ingress_reloads_total{result=\"failed\"}",
                "counter",
                self.reloads_failed.load(Relaxed),
            ),
            (
                "careplane_ingress_connections_open",
                "gauge",
                self.connections_open.load(Relaxed),
            ),
            (
                "careplane_ingress_tls_handshake_failures_total",
                "counter",
                self.tls_handshake_failures.load(Relaxed),
            ),
        ] {
            let base = name.split('{').next().unwrap_or(name);
            if !name.contains("result=\"failed\"") {
                let _ = writeln!(o, "# TYPE {base} {kind}");
            }
            let _ = writeln!(o, "{name} {v}");
        }
        o
    }
}

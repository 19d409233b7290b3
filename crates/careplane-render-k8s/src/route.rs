//! An environment's host on Traefik: a cert-manager `Certificate`, the
//! `Middleware`s and one `IngressRoute`, from the route policy the local
//! proxy enforces too (`careplane_model::ingress_policy`).

use careplane_model::ingress_policy::{self as policy, Rate};

use crate::env::{ErasedYaml, HTTP_PORT, WEBSOCKET_PORT};
use crate::k8s::*;

/// The secret cert-manager writes and Traefik serves.
pub const TLS_SECRET: &str = "odoo-tls";

/// No client address is 255.255.255.255 (a broadcast address is never a TCP
/// source), so this allow-list answers 403 to everyone: Traefik has no
/// plain "deny" middleware.
pub const NOBODY: &str = "255.255.255.255/32";

/// Priorities: Traefik tries the highest first; blocked paths before
/// everything, the catch-all last.
const PRIO_BLOCKED: u32 = 1000;
const PRIO_ADMIN: u32 = 900;
const PRIO_LOGIN: u32 = 800;
const PRIO_WEBSOCKET: u32 = 700;
const PRIO_DEFAULT: u32 = 100;

/// Traefik's rate limiter counts whole requests per period: a fractional
/// rate (the login's 0.2/s) becomes requests per minute.
pub fn traefik_rate(r: Rate) -> RateLimitMiddleware {
    if r.per_second >= 1.0 && r.per_second.fract() == 0.0 {
        RateLimitMiddleware {
            average: r.per_second as u64,
            period: "1s",
            burst: r.burst,
        }
    } else {
        RateLimitMiddleware {
            average: (r.per_second * 60.0).round().max(1.0) as u64,
            period: "1m",
            burst: r.burst,
        }
    }
}

/// `path` and everything below it, on whole segments (as the local proxy's
/// `under`): `/web/database` and `/web/database/…`, not `/web/databases`.
fn under(path: &str) -> String {
    format!("Path(`{path}`) || PathPrefix(`{path}/`)")
}

/// The objects of one environment's host, by file name.
pub fn objects(
    host: &str,
    k: Option<&careplane_spec::KubernetesSettings>,
    meta: &dyn Fn(&str) -> Meta,
) -> Vec<(String, Box<dyn ErasedYaml>)> {
    let mut out: Vec<(String, Box<dyn ErasedYaml>)> = Vec::new();
    let (issuer_name, issuer_kind) = match k.and_then(|k| k.certificate_issuer.as_ref()) {
        Some(i) => (i.name.clone(), i.kind.as_str()),
        None => ("careplane".to_string(), "ClusterIssuer"),
    };
    out.push((
        "certificate-odoo-tls.yaml".into(),
        Box::new(object(
            "cert-manager.io/v1",
            "Certificate",
            meta(TLS_SECRET),
            Spec {
                spec: CertificateSpec {
                    secret_name: TLS_SECRET.into(),
                    dns_names: vec![host.to_string()],
                    issuer_ref: IssuerRef {
                        name: issuer_name,
                        kind: issuer_kind,
                        group: "cert-manager.io",
                    },
                    private_key: PrivateKey {
                        algorithm: "ECDSA",
                        size: 256,
                        rotation_policy: "Always",
                    },
                },
            },
        )),
    ));
    let middleware = |name: &str, spec: MiddlewareSpec| -> Box<dyn ErasedYaml> {
        Box::new(object(
            "traefik.io/v1alpha1",
            "Middleware",
            meta(name),
            Spec { spec },
        ))
    };
    out.push((
        "middleware-security-headers.yaml".into(),
        middleware(
            "security-headers",
            MiddlewareSpec {
                headers: Some(HeadersMiddleware {
                    sts_seconds: policy::HSTS_MAX_AGE_SECS,
                    sts_include_subdomains: false,
                    content_type_nosniff: true,
                    referrer_policy: policy::REFERRER_POLICY,
                    content_security_policy: policy::CONTENT_SECURITY_POLICY,
                    custom_response_headers: [("Server".to_string(), String::new())].into(),
                }),
                ..MiddlewareSpec::default()
            },
        ),
    ));
    out.push((
        "middleware-rate-limit.yaml".into(),
        middleware(
            "rate-limit",
            MiddlewareSpec {
                rate_limit: Some(traefik_rate(policy::DEFAULT_RATE)),
                ..MiddlewareSpec::default()
            },
        ),
    ));
    out.push((
        "middleware-login-rate-limit.yaml".into(),
        middleware(
            "login-rate-limit",
            MiddlewareSpec {
                rate_limit: Some(traefik_rate(policy::LOGIN_RATE)),
                ..MiddlewareSpec::default()
            },
        ),
    ));
    out.push((
        "middleware-deny.yaml".into(),
        middleware(
            "deny",
            MiddlewareSpec {
                ip_allow_list: Some(IpAllowList {
                    source_range: vec![NOBODY.into()],
                }),
                ..MiddlewareSpec::default()
            },
        ),
    ));
    let admin = k.filter(|k| !k.admin_allow.is_empty() && !k.admin_paths.is_empty());
    if let Some(k) = admin {
        out.push((
            "middleware-admin-allow.yaml".into(),
            middleware(
                "admin-allow",
                MiddlewareSpec {
                    ip_allow_list: Some(IpAllowList {
                        source_range: k.admin_allow.clone(),
                    }),
                    ..MiddlewareSpec::default()
                },
            ),
        ));
    }

    let refs = |names: &[&str]| -> Vec<NameRef> {
        names
            .iter()
            .map(|n| NameRef {
                name: (*n).to_string(),
            })
            .collect()
    };
    let http = || {
        vec![TraefikService {
            name: "odoo-http",
            port: HTTP_PORT,
        }]
    };
    let on_host = |rest: &str| format!("Host(`{host}`) && ({rest})");
    // Traefik cannot read a body, so the JSON-RPC `db` service cannot be
    // told apart from the others: `/jsonrpc` is refused whole (XML-RPC's
    // per-service paths stay open for integrations).
    let blocked: Vec<String> = policy::BLOCKED_PREFIXES
        .iter()
        .map(|(p, _)| under(p))
        .chain([under(policy::JSONRPC_PATH)])
        .collect();
    let mut routes = vec![TraefikRoute {
        kind: "Rule",
        matching: on_host(&blocked.join(" || ")),
        priority: PRIO_BLOCKED,
        middlewares: refs(&["deny"]),
        services: http(),
    }];
    if let Some(k) = admin {
        let paths: Vec<String> = k
            .admin_paths
            .iter()
            .map(|p| under(p.trim_end_matches('/')))
            .collect();
        routes.push(TraefikRoute {
            kind: "Rule",
            matching: on_host(&paths.join(" || ")),
            priority: PRIO_ADMIN,
            middlewares: refs(&["admin-allow", "security-headers", "rate-limit"]),
            services: http(),
        });
    }
    routes.push(TraefikRoute {
        kind: "Rule",
        matching: on_host(&format!(
            "(Method(`POST`) && (Path(`{form}`) || Path(`{form}/`))) || {json}",
            form = policy::LOGIN_FORM,
            json = under(policy::LOGIN_JSON)
        )),
        priority: PRIO_LOGIN,
        middlewares: refs(&["security-headers", "login-rate-limit", "rate-limit"]),
        services: http(),
    });
    routes.push(TraefikRoute {
        kind: "Rule",
        matching: on_host(&under(policy::WEBSOCKET_PATH)),
        priority: PRIO_WEBSOCKET,
        middlewares: refs(&["security-headers", "rate-limit"]),
        services: vec![TraefikService {
            name: "odoo-websocket",
            port: WEBSOCKET_PORT,
        }],
    });
    routes.push(TraefikRoute {
        kind: "Rule",
        matching: format!("Host(`{host}`)"),
        priority: PRIO_DEFAULT,
        middlewares: refs(&["security-headers", "rate-limit"]),
        services: http(),
    });
    let mut route_meta = meta("odoo");
    if let Some(class) = k.and_then(|k| k.ingress_class.as_ref()) {
        route_meta
            .annotations
            .insert("kubernetes.io/ingress.class".into(), class.into());
    }
    out.push((
        "ingressroute-odoo.yaml".into(),
        Box::new(object(
            "traefik.io/v1alpha1",
            "IngressRoute",
            route_meta,
            Spec {
                spec: IngressRouteSpec {
                    entry_points: vec!["websecure"],
                    routes,
                    tls: TraefikTls {
                        secret_name: TLS_SECRET,
                    },
                },
            },
        )),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_keep_their_meaning_in_traefik_units() {
        let r = traefik_rate(policy::DEFAULT_RATE);
        assert_eq!((r.average, r.period, r.burst), (100, "1s", 400));
        let r = traefik_rate(policy::LOGIN_RATE);
        assert_eq!((r.average, r.period, r.burst), (12, "1m", 10));
    }

    #[test]
    fn whole_segments() {
        assert_eq!(
            under("/web/database"),
            "Path(`/web/database`) || PathPrefix(`/web/database/`)"
        );
    }
}

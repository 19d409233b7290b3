//! What every route in front of an Odoo environment enforces, whichever
//! target serves it: the local proxy (`careplane-ingress`) applies it to
//! each request, the Kubernetes renderer turns it into Traefik routes and
//! middlewares. One list, so the two cannot drift apart.

/// A token bucket per client address: `per_second` refill, `burst` size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// Every request of one client to one environment.
pub const DEFAULT_RATE: Rate = Rate {
    per_second: 100.0,
    burst: 400,
};

/// Login attempts: one every five seconds after a burst of ten slows
/// password guessing to ~17,000 tries a day per address.
pub const LOGIN_RATE: Rate = Rate {
    per_second: 0.2,
    burst: 10,
};

/// Path prefixes (matched on the normalized path, whole segments) that are
/// never forwarded, and why. The database manager can create, drop, dump and
/// restore databases; the XML-RPC `db` endpoints expose the same service.
pub const BLOCKED_PREFIXES: &[(&str, &str)] = &[
    ("/web/database", "database-manager"),
    ("/xmlrpc/db", "db-service"),
    ("/xmlrpc/2/db", "db-service"),
];

/// JSON-RPC dispatches by `params.service` in the body; calls to this
/// service are refused (the local proxy reads the body; a proxy that cannot
/// must refuse the whole path).
pub const JSONRPC_PATH: &str = "/jsonrpc";
pub const JSONRPC_BLOCKED_SERVICE: &str = "db";

/// The login form: its POSTs get [`LOGIN_RATE`].
pub const LOGIN_FORM: &str = "/web/login";
/// JSON authentication (and what is below it): always [`LOGIN_RATE`].
pub const LOGIN_JSON: &str = "/web/session/authenticate";

/// Odoo's bus: routed to the evented (gevent) port, with the upgrade.
pub const WEBSOCKET_PATH: &str = "/websocket";

/// Odoo's web client compiles its templates at run time (`eval`) and puts
/// its session data in inline scripts; frames and embedding stay same-origin.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; \
connect-src 'self'; media-src 'self' blob:; worker-src 'self' blob:; frame-src 'self'; \
object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'";

pub const REFERRER_POLICY: &str = "strict-origin-when-cross-origin";
pub const HSTS_MAX_AGE_SECS: u64 = 31_536_000;

/// Odoo's own default request limit.
pub const MAX_BODY_BYTES: u64 = 128 << 20;

/// `path` is `prefix` or below it (whole segments: `/web/databases` is not
/// under `/web/database`).
pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Why a normalized path is never forwarded, if it is not.
pub fn blocked_path(path: &str) -> Option<&'static str> {
    BLOCKED_PREFIXES
        .iter()
        .find(|(prefix, _)| under(path, prefix))
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_paths_match_whole_segments() {
        assert_eq!(
            blocked_path("/web/database/manager"),
            Some("database-manager")
        );
        assert_eq!(blocked_path("/web/database"), Some("database-manager"));
        assert_eq!(blocked_path("/xmlrpc/2/db"), Some("db-service"));
        assert_eq!(blocked_path("/web/databases"), None);
        assert_eq!(blocked_path("/xmlrpc/2/dbx"), None);
        assert_eq!(blocked_path("/xmlrpc/2/object"), None);
    }
}

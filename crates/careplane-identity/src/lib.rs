//! careplane's identity and access (issue 20, M12; docs/design/0013).
//!
//! - [`oidc`]: OpenID Connect discovery, JWKS, ID/access token verification
//!   (RS256, ES256, EdDSA; issuer, audience, expiry, nonce and replay) and
//!   the authorization code flow with PKCE over a loopback redirect.
//! - [`authorize`]: the one decision, deny by default, over five roles and
//!   the enumerated [`Action`]s, with MFA for privileged actions.
//! - [`Store`]: `<dataDir>/access.db` — just-in-time elevation requests and
//!   grants, break-glass, role usage, access reviews, rate-limit buckets.
//! - [`totp`], [`ratelimit`]: the break-glass second factor and the
//!   failed-authentication limiter.
//!
//! It reads no clock (times are passed in, µs since the epoch), and knows
//! nothing of specs, the state store or the engine; it depends on
//! `careplane-audit` only for the actor it describes.

mod authz;
mod config;
pub mod oidc;
pub mod ratelimit;
mod store;
pub mod totp;

use std::path::PathBuf;

pub use authz::{authorize, Action, Binding, Decision, Principal, Role, Scope, Source, Target};
pub use config::{GroupRole, IdentityConfig};
pub use store::{
    AccessRequest, ReviewDecision, ReviewItem, ReviewRecord, Store, DB_FILE, MAX_BREAK_GLASS_SECS,
    MAX_ELEVATION_SECS,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {action}: {source}", path.display())]
    Db {
        path: PathBuf,
        action: String,
        source: rusqlite::Error,
    },
    #[error("{field}: {detail}")]
    Invalid { field: String, detail: String },
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AuthFailed(String),
    #[error("too many failed sign-ins ({key}): try again in {retry_after_secs} s")]
    RateLimited { key: String, retry_after_secs: u64 },
    #[error(transparent)]
    Token(#[from] oidc::TokenError),
    #[error("{url}: {detail}")]
    Http { url: String, detail: String },
}

/// RFC 3339 UTC with seconds, for times shown to people and stored in
/// evidence (the audit log keeps its own microsecond format).
pub fn time(micros: i64) -> String {
    match jiff::Timestamp::from_microsecond(micros) {
        Ok(t) => format!("{t:.0}"),
        Err(_) => format!("@{micros}µs"),
    }
}

/// Parses `1h`, `30m`, `90s`, `2h30m` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, Error> {
    let bad = || Error::Invalid {
        field: "duration".into(),
        detail: format!("{s:?}: expected e.g. 30m, 1h, 2h30m"),
    };
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().map_err(|_| bad())?;
            num.clear();
            total += n * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(bad()),
            };
        }
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse() {
        assert_eq!(super::parse_duration("1h").unwrap(), 3600);
        assert_eq!(super::parse_duration("2h30m").unwrap(), 9000);
        assert!(super::parse_duration("1d").is_err());
        assert!(super::parse_duration("60").is_err());
    }
}

//! Who a request is and whether it may (docs/design/0013, "serve's API").
//!
//! A bearer token is either one of serve's API tokens (`cpt_…`: a service
//! identity whose scope maps to a role: `read` → viewer, `operate` →
//! platform-operator) or an OIDC token of the platform's identity provider
//! (`<dataDir>/identity.json`): a JWT access token for its `apiAudience`,
//! or an ID token for its `clientId` (what `careplane login` keeps), with
//! the user's just-in-time grants in force from access.db. Every request
//! then passes `careplane_identity::authorize`, the same check the engine
//! runs; a denial is one audit entry (refused, with the reason) and a 403
//! saying why.
//!
//! A presented token that does not authenticate is a failed
//! authentication: it is audited (refused, actor `unauthenticated:<the
//! identity it claimed>`, the client address in the parameters) and takes a
//! token from two buckets, the client address's and the claimed identity's
//! (a token id, or a JWT's unverified `sub`). While the address's bucket is
//! empty, every token it presents is answered 429 with `Retry-After` before
//! any verification. While the identity's bucket is empty, a token claiming
//! it that fails verification is answered 429 instead of 401, but one that
//! verifies passes: anyone can claim any identity, and that must not lock
//! its holder out. Each 429 is audited too. A request with no token at all
//! is a plain 401, neither counted nor logged: it guesses nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use careplane_engine::careplane_audit::{Actor, ActorKind, Outcome, Status};
use careplane_identity::oidc::Verifier;
use careplane_identity::ratelimit::Limits;
use careplane_identity::{authorize, Action, IdentityConfig, Principal, Role, Target};
use serde_json::Value;

use crate::api::ApiError;
use crate::probes::State;
use crate::tokens::{self, Scope};

/// Failed authentications allowed per client address and per claimed
/// identity: a burst of 20, then one every 3 seconds (1,200 an hour):
/// enough for a client retrying with a stale token, few enough that a
/// flood of bad tokens costs the flooder, not the audit log.
pub(crate) const FAILED_AUTH_LIMITS: Limits = Limits {
    capacity: 20,
    refill_secs: 3,
};

/// What a handler knows of who calls it: the request's headers and the
/// client's address (from the connection, never from a header).
pub(crate) struct Caller {
    pub headers: HeaderMap,
    pub peer: Option<SocketAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Self::Rejection> {
        Ok(Caller {
            headers: parts.headers.clone(),
            peer: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        })
    }
}

/// The identity a presented token claims, before verification: only a
/// rate-limit key and an audit label.
fn claimed_identity(token: &str) -> String {
    if let Some(rest) = token.strip_prefix("cpt_") {
        let id: String = rest
            .split('_')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect();
        return format!("token:{id}");
    }
    careplane_identity::oidc::claimed_subject(token)
}

/// The identity provider's configuration and verifier, kept across requests.
pub(crate) struct Oidc {
    config: IdentityConfig,
    verifier: Verifier,
}

/// One request's question to the check: the action, what it is on, and
/// how its audit entry names them.
#[derive(Clone)]
pub(crate) struct Ask {
    pub action: Action,
    pub on: Target,
    /// The audit entry's action (`read`, `incident.ack`, …).
    pub audit_action: String,
    /// The audit entry's target (`GET /v1/status`, `incident <id>`).
    pub target: String,
}

impl Ask {
    pub fn read(path: &str) -> Ask {
        Ask {
            action: Action::Read,
            on: Target::platform(false),
            audit_action: "read".into(),
            target: format!("GET {path}"),
        }
    }

    pub fn read_tenant(path: &str, tenant: &str) -> Ask {
        Ask {
            on: Target::tenant(tenant, false),
            ..Ask::read(path)
        }
    }
}

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn unauthorized(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, msg.into())
}

/// The request's principal, or a 401 saying what was wrong with its token
/// (never which token, never the token).
fn principal(state: &State, caller: &Caller, ask: &Ask) -> Result<Principal, ApiError> {
    let presented = caller
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented.filter(|t| !t.is_empty()) else {
        return Err(unauthorized(tokens::Refusal::Missing.message()));
    };
    let source = caller
        .peer
        .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
    let claimed = claimed_identity(token);
    let now = now_micros();
    let (source_wait, identity_wait) = {
        let mut rl = crate::probes::guard(&state.failed_auth);
        (
            rl.check_source(&source, now).err(),
            rl.check_identity(&claimed, now).err(),
        )
    };
    if let Some(secs) = source_wait {
        let msg = format!("too many failed authentications from this address; retry in {secs} s");
        audit_failed(state, &claimed, &source, ask, &msg)?;
        return Err(ApiError::too_many(secs, msg));
    }
    match verify_token(state, token) {
        // A token that verifies passes even when its identity's bucket is
        // empty: the claim in a forged token is free, and must not lock the
        // real holder out.
        Ok(p) => Ok(p),
        Err(e) if e.0 == StatusCode::UNAUTHORIZED => {
            crate::probes::guard(&state.failed_auth).failure(&source, &claimed, now);
            if let Some(secs) = identity_wait {
                let msg =
                    format!("too many failed authentications for this identity; retry in {secs} s");
                audit_failed(state, &claimed, &source, ask, &msg)?;
                return Err(ApiError::too_many(secs, msg));
            }
            audit_failed(state, &claimed, &source, ask, &e.1)?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// One audit entry for a presented token that did not authenticate (or was
/// not looked at because its buckets are empty).
fn audit_failed(
    state: &State,
    claimed: &str,
    source: &str,
    ask: &Ask,
    why: &str,
) -> Result<(), ApiError> {
    let kind = if claimed.starts_with("token:") {
        ActorKind::Service
    } else {
        ActorKind::User
    };
    let actor = Actor {
        kind,
        id: format!("unauthenticated:{claimed}"),
        auth: "none".into(),
        mfa: false,
        elevation: None,
    };
    state
        .engine
        .audit_record_as(
            actor,
            &ask.audit_action,
            &ask.target,
            ask.on.tenant.as_deref(),
            serde_json::json!({ "source": source }),
            Outcome {
                status: Status::Refused,
                message: Some(why.to_string()),
            },
        )
        .map_err(internal)
}

/// The principal a token stands for, or a 401 saying what was wrong with it.
fn verify_token(state: &State, token: &str) -> Result<Principal, ApiError> {
    if token.starts_with("cpt_") {
        let records = state.tokens().map_err(ApiError::from)?;
        // Expiry is a security matter: the wall clock, never the (possibly
        // scaled) result clock.
        let rec = tokens::check(&records, Some(token), Scope::Read, jiff::Timestamp::now())
            .map_err(|r| unauthorized(r.message()))?;
        let (scope, role) = match rec.scope {
            Scope::Read => ("read", Role::Viewer),
            Scope::Operate => ("operate", Role::PlatformOperator),
        };
        return Ok(Principal::api_token(&rec.name, scope, role));
    }
    let oidc = oidc(state)?;
    let now = now_micros();
    let claims = oidc
        .config
        .api_audience
        .as_deref()
        .and_then(|aud| oidc.verifier.verify_access_token(token, aud, now).ok())
        .map(Ok)
        .unwrap_or_else(|| oidc.verifier.verify_id_token(token, None, now))
        .map_err(|e| unauthorized(format!("the bearer token is not valid: {e}")))?;
    let p = oidc
        .config
        .principal(&claims)
        .map_err(|e| unauthorized(format!("the bearer token is not valid: {e}")))?;
    let store = careplane_identity::Store::open(&state.data_dir).map_err(internal)?;
    store.with_grants(p, now).map_err(internal)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn oidc(state: &State) -> Result<Arc<Oidc>, ApiError> {
    let mut slot = state.oidc.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(o) = slot.as_ref() {
        return Ok(o.clone());
    }
    let path = state.data_dir.join("identity.json");
    if !path.exists() {
        return Err(unauthorized(format!(
            "the bearer token is not valid (not an API token, and no identity provider is configured in {})",
            path.display()
        )));
    }
    let config = IdentityConfig::load(&path).map_err(internal)?;
    let verifier =
        Verifier::discover(&config.issuer, &config.client_id, now_micros()).map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the identity provider {} cannot be reached: {e}",
                    config.issuer
                ),
            )
        })?;
    let o = Arc::new(Oidc { config, verifier });
    *slot = Some(o.clone());
    Ok(o)
}

/// The one check for a request: authenticate, then `authorize`. A denial
/// is audited and answered 403 with the reason (which names the role or the
/// MFA needed).
pub(crate) async fn check(
    state: &Arc<State>,
    caller: &Caller,
    ask: Ask,
) -> Result<Principal, ApiError> {
    let st = state.clone();
    let caller = Caller {
        headers: caller.headers.clone(),
        peer: caller.peer,
    };
    // Verification may fetch the provider's keys (blocking HTTP), and a
    // denial appends to the audit log (fsync).
    tokio::task::spawn_blocking(move || {
        let who = principal(&st, &caller, &ask)?;
        let d = authorize(&who, ask.action, &ask.on);
        if d.allowed {
            return Ok(who);
        }
        record(
            &st,
            &who,
            &ask,
            Outcome {
                status: Status::Refused,
                message: Some(d.reason.clone()),
            },
        )?;
        Err(ApiError::new(StatusCode::FORBIDDEN, d.reason))
    })
    .await
    .map_err(internal)?
}

/// Appends the one audit entry of a request by `who`.
pub(crate) fn record(
    state: &State,
    who: &Principal,
    ask: &Ask,
    outcome: Outcome,
) -> Result<(), ApiError> {
    state
        .engine
        .audit_record_as(
            who.actor(),
            &ask.audit_action,
            &ask.target,
            ask.on.tenant.as_deref(),
            Value::Null,
            outcome,
        )
        .map_err(internal)
}

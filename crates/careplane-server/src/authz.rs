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
//! saying why. Unauthenticated requests (401) are not principals and are
//! not written to the log.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use careplane_engine::careplane_audit::{Outcome, Status};
use careplane_identity::oidc::Verifier;
use careplane_identity::{authorize, Action, IdentityConfig, Principal, Role, Target};
use serde_json::Value;

use crate::api::ApiError;
use crate::probes::State;
use crate::tokens::{self, Scope};

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
    ApiError(StatusCode::UNAUTHORIZED, msg.into())
}

/// The request's principal, or a 401 saying what was wrong with its token
/// (never which token, never the token).
fn principal(state: &State, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented.filter(|t| !t.is_empty()) else {
        return Err(unauthorized(tokens::Refusal::Missing.message()));
    };
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
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
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
            ApiError(
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
    headers: &HeaderMap,
    ask: Ask,
) -> Result<Principal, ApiError> {
    let st = state.clone();
    let headers = headers.clone();
    // Verification may fetch the provider's keys (blocking HTTP), and a
    // denial appends to the audit log (fsync).
    tokio::task::spawn_blocking(move || {
        let who = principal(&st, &headers)?;
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
        Err(ApiError(StatusCode::FORBIDDEN, d.reason))
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

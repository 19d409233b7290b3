//! The REST API (`/v1/...`), `/openapi.json` (generated from these handlers with utoipa),
//! `/metrics` and `/healthz`. Every `/v1` route and `/metrics` need a bearer token (an API
//! token or an OIDC token) and pass the one authorization check (`authz.rs`): `read` for
//! reads, `incident.update` for incident actions. Tokens are never logged. `/v1/identity`
//! is public like `/healthz`: it names the identity provider to sign in with.

use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use careplane_engine::careplane_audit::{Outcome, Status};
use careplane_sla::{Month, SeriesKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::authz::{check, record, Ask, Caller};
use crate::incidents::{self, Action};
use crate::probes::{Latest, State};
use crate::tokens::{Scope, TokenRecord};
use crate::Error;

type St = AxState<Arc<State>>;

/// An error answer: `{"error": "..."}`; the third field is a 429's
/// `Retry-After` in seconds.
pub(crate) struct ApiError(pub StatusCode, pub String, pub Option<u64>);

impl ApiError {
    pub fn new(code: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(code, message.into(), None)
    }

    pub fn too_many(retry_after_secs: u64, message: impl Into<String>) -> ApiError {
        ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            message.into(),
            Some(retry_after_secs),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                "www-authenticate",
                "Bearer realm=\"careplane\"".parse().expect("valid"),
            );
        }
        if let Some(secs) = self.2 {
            r.headers_mut()
                .insert("retry-after", secs.to_string().parse().expect("digits"));
        }
        r
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) | Error::Sla(careplane_sla::Error::Incident { .. }) => {
                StatusCode::CONFLICT
            }
            Error::Sla(careplane_sla::Error::Invalid { .. }) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(code, e.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// Any JSON value (the engine's and the SLA crate's report types).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(value_type = Object)]
pub struct AnyJson(Value);

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentView {
    pub tenant: String,
    pub environment: String,
    pub kind: String,
    pub tier: Option<String>,
    pub probes: Vec<Latest>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct MinutesQuery {
    /// RFC 3339 start (its minute).
    pub from: String,
    /// How many minutes, at most 44640.
    pub minutes: u32,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ReportQuery {
    /// `YYYY-MM`; default: this month.
    pub month: Option<String>,
    pub tenant: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct IncidentQuery {
    /// Only open incidents.
    #[serde(default)]
    pub open: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NoteBody {
    pub text: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ResolveBody {
    pub summary: String,
}

#[utoipa::path(get, path = "/v1/status", security(("bearer" = [])),
    responses((status = 200, description = "careplane status: servers and environments with health", body = AnyJson),
              (status = 401, description = "no valid token"),
              (status = 403, description = "refused by the authorization check; the error says which role or MFA is needed")))]
async fn status(AxState(s): St, h: Caller) -> Result<Json<Value>, ApiError> {
    check(&s, &h, Ask::read("/v1/status")).await?;
    let st = s.clone();
    let v = blocking(move || {
        let status = st.engine.status()?;
        Ok(serde_json::to_value(status).expect("status serializes"))
    })
    .await?;
    Ok(Json(v))
}

#[utoipa::path(get, path = "/v1/environments", security(("bearer" = [])),
    responses((status = 200, description = "Environments being probed, with their latest results", body = [EnvironmentView])))]
async fn environments(AxState(s): St, h: Caller) -> Result<Json<Vec<EnvironmentView>>, ApiError> {
    check(&s, &h, Ask::read("/v1/environments")).await?;
    let live = s.live();
    let out = live
        .environments
        .iter()
        .map(|((t, e), kind)| EnvironmentView {
            tenant: t.clone(),
            environment: e.clone(),
            kind: kind.clone(),
            tier: crate::slo::slo_for(&s.specs, t).ok().map(|s| s.tier),
            probes: live
                .latest
                .values()
                .filter(|l| &l.tenant == t && &l.environment == e)
                .cloned()
                .collect(),
        })
        .collect();
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/probes", security(("bearer" = [])),
    responses((status = 200, description = "The latest acknowledged result of every probe", body = [Latest])))]
async fn probes(AxState(s): St, h: Caller) -> Result<Json<Vec<Latest>>, ApiError> {
    check(&s, &h, Ask::read("/v1/probes")).await?;
    Ok(Json(s.live().latest.values().cloned().collect()))
}

#[utoipa::path(get, path = "/v1/series/{tenant}/{environment}/{probe}/minutes", security(("bearer" = [])),
    params(("tenant" = String, Path), ("environment" = String, Path), ("probe" = String, Path), MinutesQuery),
    responses((status = 200, description = "Stored minute observations (no-data, unknown, up, failed)", body = AnyJson)))]
async fn minutes(
    AxState(s): St,
    h: Caller,
    Path((t, e, p)): Path<(String, String, String)>,
    Query(q): Query<MinutesQuery>,
) -> Result<Json<Value>, ApiError> {
    check(
        &s,
        &h,
        Ask::read_tenant(&format!("/v1/series/{t}/{e}/{p}/minutes"), &t),
    )
    .await?;
    let from: jiff::Timestamp = q
        .from
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("from: {e}")))?;
    if q.minutes > 44_640 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "minutes: at most 44640",
        ));
    }
    let st = s.clone();
    let tl = blocking(move || {
        let key = SeriesKey::new(&t, &e, &p);
        Ok(st.store().timeline(&key, from, q.minutes)?)
    })
    .await?;
    Ok(Json(
        json!({ "start": tl.start.to_string(), "observations": tl.obs }),
    ))
}

#[utoipa::path(get, path = "/v1/slo/{tenant}", security(("bearer" = [])),
    params(("tenant" = String, Path)),
    responses((status = 200, description = "The tenant's SLO and this month's accounting per environment", body = AnyJson)))]
async fn slo(AxState(s): St, h: Caller, Path(t): Path<String>) -> Result<Json<Value>, ApiError> {
    check(&s, &h, Ask::read_tenant(&format!("/v1/slo/{t}"), &t)).await?;
    let st = s.clone();
    let v = blocking(move || {
        let slo = crate::slo::slo_for(&st.specs, &t)?;
        let now = (st.clock)();
        let inc = incidents::load(&st.data_dir)?;
        let reports = crate::report::reports(
            &mut st.store(),
            &st.specs,
            &inc,
            Month::of_utc(now),
            Some(&t),
            now,
        )?;
        let envs: Vec<Value> = reports
            .iter()
            .map(|r| {
                json!({
                    "environment": r.environment,
                    "availability": r.availability,
                    "objectiveMet": r.objective_met,
                    "errorBudgetMinutes": r.error_budget_minutes,
                    "errorBudgetUsedPercent": r.error_budget_used_percent,
                    "upMinutes": r.up_minutes,
                    "downMinutes": r.down_minutes,
                    "unknownMinutes": r.unknown_minutes,
                })
            })
            .collect();
        Ok(json!({ "tenant": t, "slo": slo, "month": Month::of_utc(now), "environments": envs }))
    })
    .await?;
    Ok(Json(v))
}

#[utoipa::path(get, path = "/v1/reports", security(("bearer" = [])), params(ReportQuery),
    responses((status = 200, description = "Monthly SLA reports (careplane_sla::MonthlyReport)", body = AnyJson)))]
async fn reports(
    AxState(s): St,
    h: Caller,
    Query(q): Query<ReportQuery>,
) -> Result<Json<Value>, ApiError> {
    check(&s, &h, Ask::read("/v1/reports")).await?;
    let st = s.clone();
    let v = blocking(move || {
        let now = (st.clock)();
        let month = match &q.month {
            Some(m) => Month::parse(m)?,
            None => Month::of_utc(now),
        };
        let inc = incidents::load(&st.data_dir)?;
        let r = crate::report::reports(
            &mut st.store(),
            &st.specs,
            &inc,
            month,
            q.tenant.as_deref(),
            now,
        )?;
        Ok(serde_json::to_value(r).expect("reports serialize"))
    })
    .await?;
    Ok(Json(v))
}

#[utoipa::path(get, path = "/v1/incidents", security(("bearer" = [])), params(IncidentQuery),
    responses((status = 200, description = "Incidents (careplane_sla::Incident), oldest first", body = AnyJson)))]
async fn incident_list(
    AxState(s): St,
    h: Caller,
    Query(q): Query<IncidentQuery>,
) -> Result<Json<Value>, ApiError> {
    check(&s, &h, Ask::read("/v1/incidents")).await?;
    let st = s.clone();
    let all = blocking(move || incidents::load(&st.data_dir)).await?;
    let v: Vec<_> = all.into_iter().filter(|i| !q.open || i.is_open()).collect();
    Ok(Json(serde_json::to_value(v).expect("incidents serialize")))
}

async fn incident_action(
    s: Arc<State>,
    h: Caller,
    id: String,
    action: Action,
) -> Result<Json<Value>, ApiError> {
    // The incident's tenant scopes the check (platform-wide when there is
    // no such incident: the answer is then 404 for whoever may act at all).
    let st = s.clone();
    let find = id.clone();
    let tenant = blocking(move || {
        Ok(incidents::load(&st.data_dir)?
            .into_iter()
            .find(|i| i.id == find)
            .map(|i| i.tenant))
    })
    .await?;
    let name = match &action {
        Action::Acknowledge => "incident.ack",
        Action::Note(_) => "incident.note",
        Action::Resolve(_) => "incident.resolve",
    };
    let ask = Ask {
        action: careplane_identity::Action::IncidentUpdate,
        on: match &tenant {
            Some(t) => careplane_identity::Target::tenant(t, false),
            None => careplane_identity::Target::platform(false),
        },
        audit_action: name.into(),
        target: format!("incident {id}"),
    };
    let who = check(&s, &h, ask.clone()).await?;
    let actor = match who.auth.as_str() {
        "api-token" => who.id.clone(),
        _ => format!("{} ({})", who.id, who.auth),
    };
    let st = s.clone();
    // The action and its one audit entry, whatever its outcome.
    let (r, recorded) = tokio::task::spawn_blocking(move || {
        let r = incidents::act(&st.data_dir, &id, &actor, &action, (st.clock)());
        let outcome = match &r {
            Ok(_) => Outcome {
                status: Status::Succeeded,
                message: None,
            },
            Err(e) => Outcome {
                status: Status::Failed,
                message: Some(e.to_string()),
            },
        };
        let recorded = record(&st, &who, &ask, outcome);
        (r, recorded)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    recorded?;
    let i = r.map_err(ApiError::from)?;
    Ok(Json(serde_json::to_value(i).expect("incident serializes")))
}

#[utoipa::path(post, path = "/v1/incidents/{id}/ack", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "Acknowledged", body = AnyJson), (status = 403, description = "refused: needs tenant-operator of the incident's tenant, platform-operator or platform-admin"), (status = 409, description = "refused (e.g. already acknowledged)")))]
async fn incident_ack(
    AxState(s): St,
    h: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    incident_action(s, h, id, Action::Acknowledge).await
}

#[utoipa::path(post, path = "/v1/incidents/{id}/note", security(("bearer" = [])), params(("id" = String, Path)), request_body = NoteBody,
    responses((status = 200, description = "Noted", body = AnyJson)))]
async fn incident_note(
    AxState(s): St,
    h: Caller,
    Path(id): Path<String>,
    Json(b): Json<NoteBody>,
) -> Result<Json<Value>, ApiError> {
    incident_action(s, h, id, Action::Note(b.text)).await
}

#[utoipa::path(post, path = "/v1/incidents/{id}/resolve", security(("bearer" = [])), params(("id" = String, Path)), request_body = ResolveBody,
    responses((status = 200, description = "Resolved", body = AnyJson)))]
async fn incident_resolve(
    AxState(s): St,
    h: Caller,
    Path(id): Path<String>,
    Json(b): Json<ResolveBody>,
) -> Result<Json<Value>, ApiError> {
    incident_action(s, h, id, Action::Resolve(b.summary)).await
}

#[utoipa::path(get, path = "/metrics", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(AxState(s): St, h: Caller) -> Result<Response, ApiError> {
    check(&s, &h, Ask::read("/metrics")).await?;
    let st = s.clone();
    let text = blocking(move || crate::metrics::render(&st)).await?;
    Ok((
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

/// What a client needs to sign in for this API: the identity provider and
/// careplane's client id there (public values, as in the IdP's discovery).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityView {
    /// The OpenID provider's issuer URL.
    pub issuer: String,
    /// careplane's public client id at the provider (ID tokens' audience).
    pub client_id: String,
    /// The audience of JWT access tokens the API accepts, if any.
    pub api_audience: Option<String>,
}

/// Unauthenticated, like `/healthz`: `careplane login --server URL` asks it
/// before anyone is signed in (it has no data directory to read).
#[utoipa::path(get, path = "/v1/identity",
    responses((status = 200, description = "The identity provider to sign in with (issuer, client id, API audience); no authentication needed", body = IdentityView),
              (status = 404, description = "No identity provider is configured: API tokens only")))]
async fn identity(AxState(s): St) -> Result<Json<IdentityView>, ApiError> {
    let path = s.data_dir.join("identity.json");
    let cfg = blocking(move || {
        if !path.exists() {
            return Err(Error::NotFound(
                "identity provider: none is configured for this platform (identity.json in its data directory); use an API token (careplane token create)".into(),
            ));
        }
        careplane_identity::IdentityConfig::load(&path).map_err(|e| Error::File {
            path: path.clone(),
            message: e.to_string(),
        })
    })
    .await?;
    Ok(Json(IdentityView {
        issuer: cfg.issuer,
        client_id: cfg.client_id,
        api_audience: cfg.api_audience,
    }))
}

async fn healthz() -> &'static str {
    "ok\n"
}

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "careplane", description = "careplane serve: status, probes, SLOs, incidents and reports. Tokens: `careplane token create`."),
    paths(status, environments, probes, minutes, slo, reports, incident_list, incident_ack, incident_note, incident_resolve, metrics, identity),
    components(schemas(AnyJson, EnvironmentView, IdentityView, Latest, crate::probes::StepView, NoteBody, ResolveBody, TokenRecord, Scope)),
    modifiers(&Bearer)
)]
pub(crate) struct ApiDoc;

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], openapi_json()).into_response()
}

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/v1/identity", get(identity))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/environments", get(environments))
        .route("/v1/probes", get(probes))
        .route(
            "/v1/series/{tenant}/{environment}/{probe}/minutes",
            get(minutes),
        )
        .route("/v1/slo/{tenant}", get(slo))
        .route("/v1/reports", get(reports))
        .route("/v1/incidents", get(incident_list))
        .route("/v1/incidents/{id}/ack", post(incident_ack))
        .route("/v1/incidents/{id}/note", post(incident_note))
        .route("/v1/incidents/{id}/resolve", post(incident_resolve))
        .with_state(state)
}

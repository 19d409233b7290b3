//! The Odoo login journey over JSON-RPC, as Odoo 18's web client does it: authenticate
//! (`/web/session/authenticate`, which sets the `session_id` cookie), then read through the
//! ORM (`/web/dataset/call_kw/res.users/search_read`). Unlike `/web/health` it touches the
//! database, the registry and the session store: it is the SLI.

use std::time::Instant;

use http::Method;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::http::request;
use crate::{millis, Failure, Found, Result, StepTiming};

#[derive(Clone, Debug)]
pub struct OdooLogin {
    /// `http://127.0.0.1:<port>` or the ingress URL, without a trailing path.
    pub base_url: String,
    pub database: String,
    pub login: String,
    pub password: SecretString,
    /// Trusted for an `https://` base URL (the platform CA).
    pub ca_pem: Option<String>,
}

/// The JSON-RPC `error` of an answer, as `name: message` (Odoo puts the exception's class in
/// `data.name`); never echoes the request.
fn rpc_error(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    let name = e["data"]["name"].as_str().unwrap_or("error");
    let message = e["data"]["message"]
        .as_str()
        .or(e["message"].as_str())
        .unwrap_or("");
    Some(format!("{name}: {message}"))
}

impl OdooLogin {
    async fn call(
        &self,
        path: &str,
        params: Value,
        cookie: Option<&str>,
    ) -> Result<(Value, Option<String>)> {
        let url = format!("{}{path}", self.base_url.trim_end_matches('/'));
        let body = json!({"jsonrpc": "2.0", "method": "call", "params": params, "id": 1});
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(c) = cookie {
            headers.push(("cookie", format!("session_id={c}")));
        }
        let r = request(
            Method::POST,
            &url,
            &headers,
            Some(body.to_string().into_bytes()),
            self.ca_pem.as_deref(),
        )
        .await?;
        if r.status != 200 {
            return Err(Failure::Down(format!("POST {path} answered {}", r.status)));
        }
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| Failure::Down(format!("POST {path}: not JSON-RPC: {e}")))?;
        if let Some(e) = rpc_error(&v) {
            return Err(Failure::Down(format!("POST {path}: {e}")));
        }
        let session = r
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|h| h.to_str().ok())
            .find_map(|c| {
                c.split(';')
                    .next()?
                    .trim()
                    .strip_prefix("session_id=")
                    .map(str::to_string)
            });
        Ok((v["result"].clone(), session))
    }

    pub(crate) async fn run(&self, _now: Timestamp) -> Result<Found> {
        let mut steps = Vec::new();
        let t = Instant::now();
        let login = self
            .call(
                "/web/session/authenticate",
                json!({
                    "db": self.database,
                    "login": self.login,
                    "password": self.password.expose_secret(),
                }),
                None,
            )
            .await;
        let (result, session) = match login {
            Ok(r) => r,
            Err(e) => return Err(e),
        };
        let uid = result["uid"].as_i64().filter(|&u| u > 0).ok_or_else(|| {
            Failure::Down(
                "POST /web/session/authenticate: no uid in the answer (login refused)".into(),
            )
        })?;
        let session = session.ok_or_else(|| {
            Failure::Down("POST /web/session/authenticate: no session_id cookie".into())
        })?;
        steps.push(StepTiming {
            name: "login".into(),
            ms: millis(t.elapsed()),
            ok: true,
        });
        let t = Instant::now();
        let (rows, _) = self
            .call(
                "/web/dataset/call_kw/res.users/search_read",
                json!({
                    "model": "res.users",
                    "method": "search_read",
                    "args": [[["id", "=", uid]]],
                    "kwargs": {"fields": ["login"], "limit": 1},
                }),
                Some(&session),
            )
            .await?;
        let found = rows
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["login"].as_str())
            .is_some_and(|l| l == self.login);
        if !found {
            return Err(Failure::Down(
                "res.users search_read did not return the probe's own user".into(),
            ));
        }
        steps.push(StepTiming {
            name: "read".into(),
            ms: millis(t.elapsed()),
            ok: true,
        });
        Ok(Found {
            steps,
            ..Found::default()
        })
    }
}

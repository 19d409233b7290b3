//! The Odoo user journeys over JSON-RPC, as Odoo 18's web client does them, as the
//! environment's low-privilege `careplane-probe` user: authenticate
//! (`/web/session/authenticate`, which sets the `session_id` cookie), read purchase orders
//! through the ORM (`/web/dataset/call_kw`), render one as a PDF (`/report/pdf/...`).
//! Unlike `/web/health` it touches the database, the registry, the session store and the
//! report engine: it is the SLI. The write journey (create, confirm and cancel a purchase
//! order) is a separate probe, run only where writes are allowed.

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
    /// Whether the journey renders a PDF. Not with exactly one web worker: wkhtmltopdf
    /// fetches the report's assets from the same Odoo, whose only worker is busy waiting
    /// for it, so the environment would hang for every user until the request times out.
    pub render_pdf: bool,
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

    /// `model.method(*args, **kwargs)` through `/web/dataset/call_kw`. A missing model
    /// is `Ok(Err(..))` with Odoo's exception class, so a journey can tell "module not
    /// installed" from a failure.
    async fn call_kw(
        &self,
        session: &str,
        model: &str,
        method: &str,
        args: Value,
        kwargs: Value,
    ) -> Result<std::result::Result<Value, String>> {
        let path = format!("/web/dataset/call_kw/{model}/{method}");
        match self
            .call(
                &path,
                json!({"model": model, "method": method, "args": args, "kwargs": kwargs}),
                Some(session),
            )
            .await
        {
            Ok((v, _)) => Ok(Ok(v)),
            Err(Failure::Down(d)) if d.contains("builtins.KeyError") => Ok(Err(d)),
            Err(e) => Err(e),
        }
    }

    /// `/web/session/authenticate`: the user's id and session. A refused login names the
    /// login, never the password.
    async fn login(&self, steps: &mut Vec<StepTiming>) -> Result<(i64, String)> {
        let t = Instant::now();
        let (result, session) = self
            .call(
                "/web/session/authenticate",
                json!({
                    "db": self.database,
                    "login": self.login,
                    "password": self.password.expose_secret(),
                }),
                None,
            )
            .await
            .map_err(|e| Failure::Down(format!("login as {}: {e}", self.login)))?;
        let uid = result["uid"].as_i64().filter(|&u| u > 0).ok_or_else(|| {
            Failure::Down(format!(
                "login as {}: POST /web/session/authenticate: no uid in the answer (login refused)",
                self.login
            ))
        })?;
        let session = session.ok_or_else(|| {
            Failure::Down("POST /web/session/authenticate: no session_id cookie".into())
        })?;
        step(steps, "login", t);
        Ok((uid, session))
    }

    /// The read journey: log in; read the five latest purchase orders (partners when
    /// `purchase` is not installed, and the step says so); render the latest order as a
    /// PDF (a named skipped step when there is none).
    pub(crate) async fn run(&self, _now: Timestamp) -> Result<Found> {
        let mut steps = Vec::new();
        let (_uid, session) = self.login(&mut steps).await?;
        let t = Instant::now();
        let orders = self
            .call_kw(
                &session,
                "purchase.order",
                "search_read",
                json!([[]]),
                json!({"fields": ["name", "state", "amount_total"], "limit": 5}),
            )
            .await?;
        let latest = match orders {
            Ok(rows) => {
                let rows = rows.as_array().ok_or_else(|| {
                    Failure::Down("purchase.order search_read: no list in the answer".into())
                })?;
                step(&mut steps, "read", t);
                rows.first()
                    .and_then(|r| r["id"].as_i64())
                    .ok_or("no purchase order")
            }
            Err(_) => {
                let rows = self
                    .call_kw(
                        &session,
                        "res.partner",
                        "search_read",
                        json!([[]]),
                        json!({"fields": ["name"], "limit": 5}),
                    )
                    .await?
                    .map_err(Failure::Down)?;
                if !rows.is_array() {
                    return Err(Failure::Down(
                        "res.partner search_read: no list in the answer".into(),
                    ));
                }
                step(&mut steps, "read res.partner (purchase not installed)", t);
                Err("purchase not installed")
            }
        };
        let latest = match latest {
            Ok(_) if !self.render_pdf => Err("1 web worker: Odoo cannot print PDFs"),
            l => l,
        };
        match latest {
            Ok(id) => {
                let t = Instant::now();
                let path = format!("/report/pdf/purchase.report_purchaseorder/{id}");
                let url = format!("{}{path}", self.base_url.trim_end_matches('/'));
                let r = request(
                    Method::GET,
                    &url,
                    &[("cookie", format!("session_id={session}"))],
                    None,
                    self.ca_pem.as_deref(),
                )
                .await?;
                let ctype = r
                    .headers
                    .get("content-type")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                if r.status != 200 {
                    return Err(Failure::Down(format!(
                        "GET {path} answered {}{}",
                        r.status,
                        error_page_message(&r.body)
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )));
                }
                if !ctype.starts_with("application/pdf") || !r.body.starts_with(b"%PDF") {
                    return Err(Failure::Down(format!(
                        "GET {path}: not a PDF (content-type {ctype:?})"
                    )));
                }
                step(&mut steps, "report", t);
            }
            Err(why) => steps.push(StepTiming {
                name: format!("report skipped ({why})"),
                ms: 0,
                ok: true,
            }),
        }
        Ok(Found {
            steps,
            ..Found::default()
        })
    }

    /// The write journey (only where writes are allowed): log in; create a purchase order
    /// of one line of `product_code` from `vendor`; confirm it; cancel it; delete it (Odoo
    /// lets a purchase user delete a cancelled order), so probe orders do not pile up.
    pub(crate) async fn run_write(&self, w: &OdooWrite) -> Result<Found> {
        let mut steps = Vec::new();
        let (_uid, session) = self.login(&mut steps).await?;
        let t = Instant::now();
        let one = |model: &'static str, rows: Value, what: String| {
            rows.as_array()
                .and_then(|r| r.first())
                .and_then(|r| r["id"].as_i64())
                .ok_or_else(|| Failure::Down(format!("{model}: no {what} (apply makes it)")))
        };
        let vendor = self
            .call_kw(
                &session,
                "res.partner",
                "search_read",
                json!([[["name", "=", w.vendor]]]),
                json!({"fields": ["id"], "limit": 1}),
            )
            .await?
            .map_err(Failure::Down)?;
        let vendor = one("res.partner", vendor, format!("vendor {:?}", w.vendor))?;
        let product = self
            .call_kw(
                &session,
                "product.product",
                "search_read",
                json!([[["default_code", "=", w.product_code]]]),
                json!({"fields": ["id"], "limit": 1}),
            )
            .await?
            .map_err(|e| Failure::Down(format!("the write journey needs purchase: {e}")))?;
        let product = one(
            "product.product",
            product,
            format!("product {:?}", w.product_code),
        )?;
        let created = self
            .call_kw(
                &session,
                "purchase.order",
                "create",
                json!([{"partner_id": vendor, "order_line": [[0, 0, {
                    "product_id": product, "product_qty": 1, "price_unit": 1.0,
                }]]}]),
                json!({}),
            )
            .await?
            .map_err(Failure::Down)?;
        let order = created
            .as_i64()
            .or_else(|| {
                created
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(Value::as_i64)
            })
            .ok_or_else(|| Failure::Down("purchase.order create: no id in the answer".into()))?;
        step(&mut steps, "create", t);
        for (method, name) in [
            ("button_confirm", "confirm"),
            ("button_cancel", "cancel"),
            ("unlink", "delete"),
        ] {
            let t = Instant::now();
            self.call_kw(
                &session,
                "purchase.order",
                method,
                json!([[order]]),
                json!({}),
            )
            .await?
            .map_err(Failure::Down)?;
            step(&mut steps, name, t);
        }
        Ok(Found {
            steps,
            ..Found::default()
        })
    }
}

/// The message of Odoo's HTML error page (it sits in its only `<pre>`, e.g. "Unable to find
/// Wkhtmltopdf on this system. The PDF can not be created."), at most 200 characters.
fn error_page_message(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("<pre>")? + "<pre>".len();
    let end = start + text[start..].find("</pre>")?;
    let msg: String = text[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!msg.is_empty()).then(|| msg.chars().take(200).collect())
}

fn step(steps: &mut Vec<StepTiming>, name: &str, t: Instant) {
    steps.push(StepTiming {
        name: name.into(),
        ms: millis(t.elapsed()),
        ok: true,
    });
}

/// What the write journey orders, made by apply where writes are allowed.
#[derive(Clone, Debug)]
pub struct OdooWrite {
    pub login: OdooLogin,
    /// The vendor's name (`careplane probe vendor`).
    pub vendor: String,
    /// The product's `default_code` (`CAREPLANE-PROBE`).
    pub product_code: String,
}

#[cfg(test)]
mod tests {
    use super::error_page_message;

    #[test]
    fn odoo_error_pages_name_their_message() {
        let page = b"<html><p>Take a look</p><strong>Error message:</strong>\n<pre>Unable to find \
            Wkhtmltopdf on this system. The PDF can not be created.</pre></html>";
        assert_eq!(
            error_page_message(page).as_deref(),
            Some("Unable to find Wkhtmltopdf on this system. The PDF can not be created.")
        );
        assert_eq!(error_page_message(b"<p>Bad Request</p>"), None);
    }
}

//! JSON-RPC to an environment's own Odoo over its loopback port, as the
//! environment's `admin`: how careplane keeps the `careplane-probe` user the
//! journeys log in as (docs/design/0012-serve-and-probes.md).
//!
//! The user goes through Odoo's ORM (`res.users` `create`/`write` through
//! `/web/dataset/call_kw`), not SQL: a real Odoo hashes the password, makes
//! the user's partner and applies implied groups only there. Private ORM
//! methods (`_xmlid_to_res_id`) cannot be called remotely, so groups are
//! found by their XML id in `ir.model.data`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::error::{OdooError, Result};

/// The probe user's login in every environment.
pub const PROBE_LOGIN: &str = "careplane-probe";
/// The vendor the write journey orders from (where writes are allowed).
pub const PROBE_VENDOR: &str = "careplane probe vendor";
/// The `default_code` of the product the write journey orders.
pub const PROBE_PRODUCT_CODE: &str = "CAREPLANE-PROBE";

/// Answers are small; anything larger is refused rather than buffered.
const MAX_ANSWER: usize = 4 << 20;

/// One Odoo reached over `http://127.0.0.1:<port>`, with a session once
/// logged in. Every exchange is bounded by `timeout`.
pub struct Client {
    port: u16,
    timeout: Duration,
    session: Option<String>,
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// The JSON-RPC `error` of an answer as `class: message` (Odoo puts the
/// exception's class in `data.name`).
fn rpc_error(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    let name = e["data"]["name"].as_str().unwrap_or("error");
    let message = e["data"]["message"]
        .as_str()
        .or(e["message"].as_str())
        .unwrap_or("");
    Some(format!("{name}: {message}"))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

impl Client {
    /// A client of the Odoo listening on `127.0.0.1:port`.
    pub fn new(port: u16, timeout: Duration) -> Client {
        Client {
            port,
            timeout,
            session: None,
        }
    }

    /// POSTs a JSON-RPC call and returns its `result` (and the session
    /// cookie the answer set, if any).
    fn post(&self, path: &str, params: Value) -> Result<(Value, Option<String>)> {
        let err = |message: String| OdooError::Rpc {
            url: url(self.port, path),
            message,
        };
        let deadline = Instant::now() + self.timeout;
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| err(format!("no answer within {:?}", self.timeout)))
        };
        let body =
            json!({"jsonrpc": "2.0", "method": "call", "params": params, "id": 1}).to_string();
        let cookie = match &self.session {
            Some(s) => format!("Cookie: session_id={s}\r\n"),
            None => String::new(),
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: careplane\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n{cookie}\
             Connection: close\r\n\r\n",
            port = self.port,
            len = body.len()
        );
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, left()?)
            .map_err(|e| err(format!("connecting: {e}")))?;
        stream
            .set_write_timeout(Some(left()?))
            .map_err(|e| err(e.to_string()))?;
        stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(body.as_bytes()))
            .map_err(|e| err(format!("sending the request: {e}")))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            stream
                .set_read_timeout(Some(left()?))
                .map_err(|e| err(e.to_string()))?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(err(format!("no answer within {:?}", self.timeout)))
                }
                Err(e) => return Err(err(format!("reading the answer: {e}"))),
            }
            if buf.len() > MAX_ANSWER {
                return Err(err(format!("answer larger than {MAX_ANSWER} bytes")));
            }
        }
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| err("no complete answer (connection closed)".into()))?;
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let mut body = buf[split + 4..].to_vec();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_ascii_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| err("malformed status line".into()))?;
        let mut session = None;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "set-cookie" {
                if let Some(s) = v
                    .split(';')
                    .next()
                    .and_then(|c| c.strip_prefix("session_id="))
                {
                    session = Some(s.to_string());
                }
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                body = dechunk(&body).ok_or_else(|| err("malformed chunked answer".into()))?;
            }
        }
        if status != 200 {
            return Err(err(format!("answered {status}")));
        }
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| err(format!("not JSON-RPC: {e}")))?;
        if let Some(e) = rpc_error(&v) {
            return Err(err(e));
        }
        Ok((v["result"].clone(), session))
    }

    /// `/web/session/authenticate`; keeps the session cookie. The error
    /// says the login was refused, never with what.
    pub fn login(&mut self, db: &str, login: &str, password: &SecretString) -> Result<i64> {
        let path = "/web/session/authenticate";
        let (result, session) = self.post(
            path,
            json!({"db": db, "login": login, "password": password.expose_secret()}),
        )?;
        let uid = result["uid"].as_i64().filter(|&u| u > 0);
        match (uid, session) {
            (Some(uid), Some(s)) => {
                self.session = Some(s);
                Ok(uid)
            }
            _ => Err(OdooError::Rpc {
                url: url(self.port, path),
                message: format!("login {login:?} refused (no uid or no session in the answer)"),
            }),
        }
    }

    /// `model.method(*args, **kwargs)` through `/web/dataset/call_kw`.
    pub fn call(&self, model: &str, method: &str, args: Value, kwargs: Value) -> Result<Value> {
        self.post(
            &format!("/web/dataset/call_kw/{model}/{method}"),
            json!({"model": model, "method": method, "args": args, "kwargs": kwargs}),
        )
        .map(|(r, _)| r)
    }

    /// The database id of the record with XML id `module.name`, if any.
    pub fn xmlid(&self, module: &str, name: &str) -> Result<Option<i64>> {
        let rows = self.call(
            "ir.model.data",
            "search_read",
            json!([[["module", "=", module], ["name", "=", name]]]),
            json!({"fields": ["res_id"], "limit": 1}),
        )?;
        Ok(rows
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["res_id"].as_i64()))
    }

    /// The id of a `model` record matching `domain`, created from `vals` when
    /// there is none.
    pub fn ensure_one(&self, model: &str, domain: Value, vals: Value) -> Result<i64> {
        let rows = self.call(
            model,
            "search_read",
            json!([domain]),
            json!({"fields": ["id"], "limit": 1}),
        )?;
        if let Some(id) = rows
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["id"].as_i64())
        {
            return Ok(id);
        }
        let r = self.call(model, "create", json!([vals]), json!({}))?;
        r.as_i64()
            .or_else(|| r.as_array().and_then(|a| a.first()).and_then(Value::as_i64))
            .ok_or_else(|| OdooError::Rpc {
                url: url(self.port, &format!("/web/dataset/call_kw/{model}/create")),
                message: format!("no record id in the answer: {r}"),
            })
    }

    /// Whether module `name` is installed.
    pub fn installed(&self, name: &str) -> Result<bool> {
        let rows = self.call(
            "ir.module.module",
            "search_read",
            json!([[["name", "=", name], ["state", "=", "installed"]]]),
            json!({"fields": ["name"], "limit": 1}),
        )?;
        Ok(rows.as_array().is_some_and(|r| !r.is_empty()))
    }
}

/// What [`ensure_probe_user`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUser {
    /// The user's id.
    pub uid: i64,
    /// Whether it was created now (else updated).
    pub created: bool,
    /// The XML ids of the groups it was given.
    pub groups: Vec<String>,
    /// Whether the write journey's vendor and product exist (writes allowed and
    /// `purchase` installed).
    pub write_fixtures: bool,
}

/// Makes (or resets) the `careplane-probe` user of database `db` through the
/// Odoo on `127.0.0.1:port`, logged in as `admin` with `admin_password`:
/// password `probe_password`, active, and exactly the groups a journey needs
/// (internal user; purchase user when `purchase` is installed). Its groups
/// are replaced on every call, so rights given by hand do not stay. With
/// `writes` (an environment where the write journey runs) and `purchase`
/// installed, also the vendor and product that journey orders.
pub fn ensure_probe_user(
    port: u16,
    db: &str,
    admin_password: &SecretString,
    probe_password: &SecretString,
    writes: bool,
    timeout: Duration,
) -> Result<ProbeUser> {
    let mut c = Client::new(port, timeout);
    c.login(db, "admin", admin_password)?;
    let mut wanted = vec![("base", "group_user")];
    let purchase = c.installed("purchase")?;
    let write_fixtures = writes && purchase;
    if write_fixtures {
        c.ensure_one(
            "res.partner",
            json!([["name", "=", PROBE_VENDOR]]),
            json!({"name": PROBE_VENDOR}),
        )?;
        c.ensure_one(
            "product.product",
            json!([["default_code", "=", PROBE_PRODUCT_CODE]]),
            json!({"name": "careplane probe item", "default_code": PROBE_PRODUCT_CODE,
                   "purchase_ok": true}),
        )?;
    }
    if purchase {
        wanted.push(("purchase", "group_purchase_user"));
    }
    let mut ids = Vec::new();
    for (m, n) in &wanted {
        let id = c.xmlid(m, n)?.ok_or_else(|| OdooError::Rpc {
            url: url(port, "/web/dataset/call_kw/ir.model.data/search_read"),
            message: format!("group {m}.{n} not found in database {db}"),
        })?;
        ids.push(id);
    }
    let groups: Vec<String> = wanted.iter().map(|(m, n)| format!("{m}.{n}")).collect();
    // Archived users count: a login is unique across them.
    let ctx = json!({"active_test": false, "no_reset_password": true});
    let found = c.call(
        "res.users",
        "search_read",
        json!([[["login", "=", PROBE_LOGIN]]]),
        json!({"fields": ["id"], "limit": 1, "context": ctx}),
    )?;
    let existing = found
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r["id"].as_i64());
    let mut vals = json!({
        "password": probe_password.expose_secret(),
        "groups_id": [[6, 0, ids]],
        "active": true,
    });
    match existing {
        Some(uid) => {
            c.call(
                "res.users",
                "write",
                json!([[uid], vals]),
                json!({"context": ctx}),
            )?;
            Ok(ProbeUser {
                uid,
                created: false,
                groups,
                write_fixtures,
            })
        }
        None => {
            vals["login"] = json!(PROBE_LOGIN);
            vals["name"] = json!("careplane probe");
            let r = c.call(
                "res.users",
                "create",
                json!([vals]),
                json!({"context": ctx}),
            )?;
            // Odoo 18's create answers an id, or a list of ids for a list of values.
            let uid = r
                .as_i64()
                .or_else(|| r.as_array().and_then(|a| a.first()).and_then(Value::as_i64))
                .ok_or_else(|| OdooError::Rpc {
                    url: url(port, "/web/dataset/call_kw/res.users/create"),
                    message: format!("no user id in the answer: {r}"),
                })?;
            Ok(ProbeUser {
                uid,
                created: true,
                groups,
                write_fixtures,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            dechunk(b"4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n").unwrap(),
            b"{\"a\":1}"
        );
        assert!(dechunk(b"zz\r\n").is_none());
    }
}

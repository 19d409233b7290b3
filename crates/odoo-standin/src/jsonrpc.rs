//! Odoo 18's JSON-RPC web routes, as far as careplane's login journey probe uses them:
//! `/web/session/authenticate` (checks the login against `res_users` with passlib's
//! pbkdf2-sha512, sets the `session_id` cookie) and `/web/dataset/call_kw[/<path>]`
//! (the ORM calls of `orm.rs`, as the session's user), and `/report/pdf/<report>/<ids>`
//! (a small valid PDF for purchase orders). Errors have Odoo's JSON-RPC shape (HTTP 200,
//! `error.data.name` the exception class).

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::http::{App, Response};
use crate::{pg, util};

pub struct RpcRequest<'a> {
    pub method: &'a str,
    pub body: &'a [u8],
    pub cookie: Option<&'a str>,
    pub host: &'a str,
}

struct Session {
    db: String,
    uid: i32,
}

/// Sessions live in memory: a restarted stand-in logs everyone out, as an Odoo with a
/// fresh session store would.
static SESSIONS: Mutex<Option<HashMap<String, Session>>> = Mutex::new(None);

fn reply(id: &Value, body: Value) -> Response {
    let mut v = json!({"jsonrpc": "2.0", "id": id});
    v.as_object_mut()
        .expect("object")
        .extend(body.as_object().expect("object").clone());
    Response::new(200, "application/json", v.to_string())
}

fn error(id: &Value, code: i64, message: &str, name: &str, text: &str) -> Response {
    reply(
        id,
        json!({"error": {"code": code, "message": message, "data": {
            "name": name, "debug": "", "message": text, "arguments": [text], "context": {}
        }}}),
    )
}

fn server_error(id: &Value, name: &str, text: &str) -> Response {
    error(id, 200, "Odoo Server Error", name, text)
}

fn parse(req: &RpcRequest<'_>) -> Result<(Value, Value), Response> {
    if req.method != "POST" {
        return Err(Response::new(
            405,
            "text/html; charset=utf-8",
            "Method Not Allowed",
        ));
    }
    let v: Value = serde_json::from_slice(req.body)
        .map_err(|_| Response::new(400, "text/html; charset=utf-8", "<p>Invalid JSON data</p>"))?;
    Ok((
        v.get("id").cloned().unwrap_or(Value::Null),
        v["params"].clone(),
    ))
}

pub fn authenticate(req: &RpcRequest<'_>, app: &App) -> (Response, Option<String>) {
    let (id, params) = match parse(req) {
        Ok(p) => p,
        Err(r) => return (r, None),
    };
    let (Some(db), Some(login), Some(password)) = (
        params["db"].as_str(),
        params["login"].as_str(),
        params["password"].as_str(),
    ) else {
        return (
            server_error(
                &id,
                "builtins.TypeError",
                "authenticate() missing required arguments",
            ),
            None,
        );
    };
    let s = &app.settings;
    let allowed = pg::db_filter(
        &[db.to_string()],
        req.host,
        s.dbfilter.as_deref(),
        &s.db_names,
    );
    if allowed.is_empty() {
        return (
            server_error(&id, "odoo.exceptions.AccessError", "Database not found."),
            None,
        );
    }
    let row = s.pg.connect(db).and_then(|mut c| {
        c.query_opt(
            "SELECT id, COALESCE(password, '') FROM res_users WHERE login = $1 AND active",
            &[&login],
        )
        .map_err(|e| pg::DbError::query(&e))
    });
    let uid = match row {
        Ok(Some(r)) if util::pbkdf2_verify(password, &r.get::<_, String>(1)) => r.get::<_, i32>(0),
        Ok(_) => {
            crate::log::info(
                Some(db),
                "odoo.addons.base.models.res_users",
                &format!("Login failed for db:{db} login:{login} from n/a"),
            );
            return (
                server_error(&id, "odoo.exceptions.AccessDenied", "Access Denied"),
                Some(db.into()),
            );
        }
        Err(e) => {
            return (
                server_error(&id, "psycopg2.OperationalError", &e.to_string()),
                Some(db.into()),
            )
        }
    };
    let sid = util::hex(&util::random_bytes(30));
    SESSIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(sid.clone(), Session { db: db.into(), uid });
    let resp = reply(
        &id,
        json!({"result": {
            "uid": uid, "is_system": false, "is_admin": login == "admin", "db": db,
            "username": login, "server_version": "18.0", "server_version_info": [18, 0, 0, "final", 0, ""],
            "user_context": {"lang": "en_US", "tz": false, "uid": uid},
        }}),
    )
    .header(
        "Set-Cookie",
        &format!("session_id={sid}; Expires=Thu, 01 Jan 2099 00:00:00 GMT; Max-Age=604800; HttpOnly; Path=/; SameSite=Lax"),
    );
    (resp, Some(db.into()))
}

fn session_of(cookie: Option<&str>) -> Option<(String, i32)> {
    let sid = cookie?
        .split(';')
        .find_map(|c| c.trim().strip_prefix("session_id="))?;
    let map = SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
    map.as_ref()?.get(sid).map(|s| (s.db.clone(), s.uid))
}

pub fn call_kw(req: &RpcRequest<'_>, app: &App) -> (Response, Option<String>) {
    let (id, params) = match parse(req) {
        Ok(p) => p,
        Err(r) => return (r, None),
    };
    let Some((db, uid)) = session_of(req.cookie) else {
        return (
            error(
                &id,
                100,
                "Odoo Session Expired",
                "odoo.http.SessionExpiredException",
                "Session expired",
            ),
            None,
        );
    };
    let r = app
        .settings
        .pg
        .connect(&db)
        .map_err(|e| ("psycopg2.OperationalError", e.to_string()))
        .and_then(|mut c| crate::orm::call(&mut c, uid, &params));
    match r {
        Ok(result) => (reply(&id, json!({ "result": result })), Some(db)),
        Err((name, text)) => (server_error(&id, name, &text), Some(db)),
    }
}

/// `/report/pdf/<report>/<ids>`, an `auth='user'` HTTP route: without a session Odoo
/// redirects to the login page; `purchase.report_purchaseorder` needs a purchase user.
pub fn report(path: &str, cookie: Option<&str>, app: &App) -> (Response, Option<String>) {
    let Some((db, uid)) = session_of(cookie) else {
        return (
            Response::new(303, "text/html; charset=utf-8", "")
                .header("Location", &format!("/web/login?redirect={path}")),
            None,
        );
    };
    let rest = path.trim_start_matches("/report/pdf/");
    let (report, docids) = rest.split_once('/').unwrap_or((rest, ""));
    let ids: Vec<i32> = docids.split(',').filter_map(|i| i.parse().ok()).collect();
    let r = app
        .settings
        .pg
        .connect(&db)
        .map_err(|e| e.to_string())
        .and_then(|mut c| {
            if report != "purchase.report_purchaseorder" {
                return Err(format!("ValueError: report {report:?} not found"));
            }
            let allowed = crate::orm::has_group(&mut c, uid, "purchase.group_purchase_user")
                .map_err(|(n, m)| format!("{n}: {m}"))?;
            if !allowed {
                return Err(
                    "AccessError: You are not allowed to access 'purchase.order' records.".into(),
                );
            }
            let mut names = Vec::new();
            for id in &ids {
                let row = c
                    .query_opt("SELECT name FROM purchase_order WHERE id = $1", &[id])
                    .map_err(|e| pg::DbError::query(&e).message)?;
                match row {
                    Some(r) => names.push(r.get::<_, String>(0)),
                    None => {
                        return Err(format!(
                            "MissingError: purchase.order({id},) does not exist"
                        ))
                    }
                }
            }
            if names.is_empty() {
                return Err("ValueError: no document ids".into());
            }
            Ok(names.join(", "))
        });
    match r {
        Ok(title) => (
            Response::new(
                200,
                "application/pdf",
                crate::orm::pdf(&format!("Purchase Order {title}")),
            ),
            Some(db),
        ),
        // Odoo's report controller answers an error page with status 500.
        Err(e) => (
            Response::new(500, "text/html; charset=utf-8", util::html_escape(&e)),
            Some(db),
        ),
    }
}

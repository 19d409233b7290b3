//! A small thread-per-connection HTTP/1.1 server with the routes careplane
//! touches: `/web/health`, `/web/login`, `/web/database/{manager,selector}`
//! and `/websocket`. Every response carries `Content-Length` and
//! `Connection: close`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::options::Settings;
use crate::pg::{self, DbError};
use crate::{log, util, STOP};

/// How a preloaded database fared at start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DbState {
    Loading,
    Ready,
    Failed,
}

/// Per-database start-up state, shared with the HTTP threads.
#[derive(Default)]
pub struct DbStates {
    map: Mutex<HashMap<String, DbState>>,
    changed: Condvar,
}

impl DbStates {
    pub fn set(&self, db: &str, state: DbState) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(db.to_string(), state);
        self.changed.notify_all();
    }

    pub fn get(&self, db: &str) -> Option<DbState> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(db)
            .copied()
    }

    /// The state once it is no longer `Loading` (Odoo's requests wait for
    /// the registry being loaded too); `None` for databases not preloaded.
    fn settled(&self, db: &str) -> Option<DbState> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match map.get(db) {
                Some(DbState::Loading) if Instant::now() < deadline => {
                    map = self
                        .changed
                        .wait_timeout(map, Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                other => return other.copied(),
            }
        }
    }
}

/// Which listening socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Port {
    /// `http_port` (werkzeug).
    Http,
    /// `gevent_port` (the evented process of a multi-worker Odoo).
    Gevent,
}

/// What the handlers need.
pub struct App {
    pub settings: Arc<Settings>,
    pub states: Arc<DbStates>,
}

/// Accepts connections until [`STOP`] is set; one thread per connection.
pub fn serve(listener: TcpListener, app: Arc<App>, port: Port) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        if let Err(e) = listener.set_nonblocking(true) {
            log::error(None, "odoo.service.server", &format!("listener: {e}"));
            return;
        }
        while !STOP.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let app = app.clone();
                    thread::spawn(move || handle(stream, peer, &app, port));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(25));
                }
                Err(e) => {
                    log::warning(None, "odoo.service.server", &format!("accept failed: {e}"));
                    thread::sleep(Duration::from_millis(25));
                }
            }
        }
    })
}

/// A parsed request head.
struct Request {
    method: String,
    target: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn rpc(&self) -> crate::jsonrpc::RpcRequest<'_> {
        crate::jsonrpc::RpcRequest {
            method: &self.method,
            body: &self.body,
            cookie: self.header("cookie"),
            host: self.header("host").unwrap_or(""),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A response to write.
pub(crate) struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    pub(crate) fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    fn html(status: u16, body: String) -> Response {
        Response::new(status, "text/html; charset=utf-8", body)
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "SWITCHING PROTOCOLS",
        200 => "OK",
        303 => "SEE OTHER",
        400 => "BAD REQUEST",
        404 => "NOT FOUND",
        500 => "INTERNAL SERVER ERROR",
        _ => "UNKNOWN",
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.take(64 * 1024));
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    // The body, when announced (JSON-RPC requests); bounded by the 64 KiB take above.
    let len: usize = match headers.get("content-length") {
        Some(v) => v.trim().parse().ok()?,
        None => 0,
    };
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    let (path, qs) = target.split_once('?').unwrap_or((&target, ""));
    let query = qs
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        target: target.clone(),
        query,
        headers,
        body,
    })
}

fn handle(mut stream: TcpStream, peer: SocketAddr, app: &App, port: Port) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let started = Instant::now();
    let Some(req) = read_request(&stream) else {
        let _ = write_response(
            &mut stream,
            &Response::html(
                400,
                page(
                    "Bad Request",
                    "The browser (or proxy) sent a request that this server could not understand.",
                ),
            ),
            false,
        );
        return;
    };
    let (resp, db) = route(&req, app, port);
    let head = req.method == "HEAD";
    let _ = write_response(&mut stream, &resp, head);
    if resp.status == 101 {
        // The stand-in does not speak the websocket protocol: close at once
        // with "going away".
        let _ = stream.write_all(&[0x88, 0x02, 0x03, 0xe9]);
    }
    log::info(
        db.as_deref(),
        "werkzeug",
        &format!(
            "{} - - [{}] \"{} {} HTTP/1.1\" {} - 0 0.000 {:.3}",
            peer.ip(),
            util::access_log_date(),
            req.method,
            req.target,
            resp.status,
            started.elapsed().as_secs_f64()
        ),
    );
}

fn write_response(stream: &mut TcpStream, resp: &Response, head: bool) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if resp.status != 101 {
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n",
            resp.body.len()
        ));
    }
    out.push_str("Server: Werkzeug (odoo-standin)\r\n\r\n");
    stream.write_all(out.as_bytes())?;
    if !head {
        stream.write_all(&resp.body)?;
    }
    stream.flush()
}

/// A minimal werkzeug-like HTML page.
fn page(title: &str, text: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=en>\n<title>{t}</title>\n<h1>{t}</h1>\n<p>{x}</p>\n",
        t = util::html_escape(title),
        x = util::html_escape(text)
    )
}

fn route(req: &Request, app: &App, port: Port) -> (Response, Option<String>) {
    match req.path.as_str() {
        "/web/health" => (health(req, app), None),
        "/web/login" => login(req, app),
        "/web/database/manager" | "/web/database/selector" => (database_manager(req, app), None),
        "/websocket" => (websocket(req, app, port), None),
        "/web/session/authenticate" => crate::jsonrpc::authenticate(&req.rpc(), app),
        p if p == "/web/dataset/call_kw" || p.starts_with("/web/dataset/call_kw/") => {
            crate::jsonrpc::call_kw(&req.rpc(), app)
        }
        p if p.starts_with("/report/pdf/") => crate::jsonrpc::report(p, req.header("cookie"), app),
        _ => (
            Response::html(404, page("Not Found", "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.")),
            None,
        ),
    }
}

/// Odoo ≥ 16's `/web/health`: no database access unless `db_server_status`
/// is given, which connects to the `postgres` database.
fn health(req: &Request, app: &App) -> Response {
    let mut status = 200;
    let body = match req.query.get("db_server_status").filter(|v| !v.is_empty()) {
        None => "{\"status\": \"pass\"}".to_string(),
        Some(_) => match app.settings.pg.connect("postgres") {
            Ok(_) => "{\"status\": \"pass\", \"db_server_status\": true}".to_string(),
            Err(_) => {
                status = 500;
                "{\"status\": \"fail\", \"db_server_status\": false}".to_string()
            }
        },
    };
    Response::new(status, "application/json", body).header("Cache-Control", "no-store")
}

/// The request's database, like Odoo's `ensure_db()` without a session:
/// `?db=` if it passes `db_filter`, else the only database `db_list`
/// yields (monodb).
fn request_db(req: &Request, app: &App) -> Option<String> {
    let s = &app.settings;
    let host = req.header("host").unwrap_or("");
    if let Some(db) = req.query.get("db").filter(|d| !d.is_empty()) {
        let candidates = [db.clone()];
        if !pg::db_filter(&candidates, host, s.dbfilter.as_deref(), &s.db_names).is_empty() {
            return Some(db.clone());
        }
    }
    let all = pg::list_dbs(&s.pg, s.dbfilter.as_deref(), &s.db_names, &s.db_template);
    let mut dbs = pg::db_filter(&all, host, s.dbfilter.as_deref(), &s.db_names);
    (dbs.len() == 1).then(|| dbs.remove(0))
}

/// The URL the client used: `X-Forwarded-Host`/`-Proto` with `proxy_mode`.
fn base_url(req: &Request, app: &App) -> String {
    let s = &app.settings;
    let forwarded = s.proxy_mode && req.header("x-forwarded-host").is_some();
    let host = if forwarded {
        req.header("x-forwarded-host")
    } else {
        req.header("host")
    }
    .map(String::from)
    .unwrap_or_else(|| format!("{}:{}", s.http_interface, s.http_port));
    let scheme = if forwarded {
        req.header("x-forwarded-proto").unwrap_or("http")
    } else {
        "http"
    };
    format!("{scheme}://{host}/")
}

fn internal_error(db: &str, error: &str) -> Response {
    log::error(
        Some(db),
        "odoo.http",
        &format!(
            "Exception during request handling.\n{}",
            log::traceback(error)
        ),
    );
    Response::html(500, page("Internal Server Error", "The server encountered an internal error and was unable to complete your request. Either the server is overloaded or there is an error in the application."))
}

/// `/web/login`: a login form when the database is selected, loaded and
/// initialized (one query per request); a redirect to the selector when no
/// database can be selected; 500 otherwise.
fn login(req: &Request, app: &App) -> (Response, Option<String>) {
    let Some(db) = request_db(req, app) else {
        let resp = Response::html(303, page("Redirecting...", "/web/database/selector"))
            .header("Location", "/web/database/selector");
        return (resp, None);
    };
    if app.states.settled(&db) == Some(DbState::Failed) {
        return (
            internal_error(
                &db,
                &format!("RuntimeError: database {db} failed to load at start"),
            ),
            Some(db),
        );
    }
    let web_base_url = app
        .settings
        .pg
        .connect(&db)
        .and_then(|mut c| {
            c.query_opt(
                "SELECT value FROM ir_config_parameter WHERE key = 'web.base.url'",
                &[],
            )
            .map_err(|e| DbError::query(&e))
        })
        .map(|row| row.map(|r| r.get::<_, String>(0)).unwrap_or_default());
    let web_base_url = match web_base_url {
        Ok(url) => url,
        Err(e) => return (internal_error(&db, &e.to_string()), Some(db)),
    };
    let csrf = util::hex(&util::random_bytes(20));
    let body = format!(
        r#"<!DOCTYPE html>
<html lang="en-US" data-web-base-url="{wbu}">
<head>
<meta charset="utf-8"/>
<title>Odoo</title>
<base href="{base}"/>
</head>
<body>
<main>
<form class="oe_login_form" role="form" action="/web/login" method="post">
<input type="hidden" name="csrf_token" value="{csrf}"/>
<div class="mb-3 field-db">
<label for="db" class="col-form-label">Database</label>
<input type="text" name="db" id="db" value="{db}" class="form-control" readonly="readonly"/>
</div>
<div class="mb-3 field-login">
<label for="login" class="form-label">Email</label>
<input type="text" name="login" id="login" class="form-control" required="required" autocapitalize="off" autocomplete="username"/>
</div>
<div class="mb-3">
<label for="password" class="form-label">Password</label>
<input type="password" name="password" id="password" class="form-control" required="required" autocomplete="current-password" maxlength="4096"/>
</div>
<input type="hidden" name="redirect"/>
<div class="clearfix oe_login_buttons text-center gap-1 d-grid mb-1 pt-3">
<button type="submit" class="btn btn-primary">Log in</button>
</div>
</form>
</main>
</body>
</html>
"#,
        wbu = util::html_escape(&web_base_url),
        base = util::html_escape(&base_url(req, app)),
        db = util::html_escape(&db),
    );
    let resp = Response::html(200, body)
        .header("X-Frame-Options", "SAMEORIGIN")
        .header("Content-Security-Policy", "frame-ancestors 'self'");
    (resp, Some(db))
}

/// The database manager/selector: with `list_db = False` Odoo still renders
/// the page (200) but with this notice and no database list.
fn database_manager(req: &Request, app: &App) -> Response {
    let s = &app.settings;
    if !s.list_db {
        return Response::html(
            200,
            "<!DOCTYPE html>\n<html>\n<head><title>Odoo</title></head>\n<body>\n\
             <div class=\"alert alert-danger text-center\">The database manager has been disabled by the administrator</div>\n\
             </body>\n</html>\n"
                .to_string(),
        );
    }
    let host = req.header("host").unwrap_or("");
    let all = pg::list_dbs(&s.pg, s.dbfilter.as_deref(), &s.db_names, &s.db_template);
    let items: String = pg::db_filter(&all, host, s.dbfilter.as_deref(), &s.db_names)
        .iter()
        .map(|d| {
            format!(
                "<li><a href=\"/web?db={0}\">{0}</a></li>\n",
                util::html_escape(d)
            )
        })
        .collect();
    Response::html(
        200,
        format!(
            "<!DOCTYPE html>\n<html>\n<head><title>Odoo</title></head>\n<body>\n\
             <h1>Manage Databases</h1>\n<ul class=\"o_database_list\">\n{items}</ul>\n</body>\n</html>\n"
        ),
    )
}

/// `/websocket`: served on the HTTP port by a single-process Odoo and on
/// the gevent port by a multi-worker one. A valid handshake gets `101` and
/// an immediate close frame; an invalid one `400` like Odoo's.
fn websocket(req: &Request, app: &App, port: Port) -> Response {
    let s = &app.settings;
    if port == Port::Http && s.workers > 0 {
        return Response::html(
            400,
            page(
                "Bad Request",
                &format!(
                    "Couldn't bind the websocket. Is the connection opened on the evented port ({})?",
                    s.gevent_port
                ),
            ),
        );
    }
    let upgrade = req
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = req
        .header("connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    let version = req.header("sec-websocket-version") == Some("13");
    let key = req.header("sec-websocket-key").filter(|k| !k.is_empty());
    let mut missing = Vec::new();
    for (ok, name) in [
        (connection, "connection"),
        (req.header("host").is_some(), "host"),
        (key.is_some(), "sec-websocket-key"),
        (version, "sec-websocket-version"),
        (upgrade, "upgrade"),
    ] {
        if !ok {
            missing.push(name);
        }
    }
    let Some(key) = key.filter(|_| missing.is_empty()) else {
        return Response::html(
            400,
            page(
                "Bad Request",
                &format!("Empty or missing header(s): {}", missing.join(", ")),
            ),
        );
    };
    let accept = util::base64(
        ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
        )
        .as_ref(),
    );
    Response {
        status: 101,
        headers: vec![
            ("Upgrade".into(), "websocket".into()),
            ("Connection".into(), "Upgrade".into()),
            ("Sec-WebSocket-Accept".into(), accept),
        ],
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_accept_rfc6455_example() {
        let accept = crate::util::base64(
            ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
            )
            .as_ref(),
        );
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}

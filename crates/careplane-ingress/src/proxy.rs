//! One request through the proxy: route, filter, limit, forward, log.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;

use crate::accesslog::Record;
use crate::filter::{self, JsonRpcVerdict};
use crate::metrics::Reason;
use crate::ratelimit::Class;
use crate::server::Shared;
use crate::snapshot::RouteState;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the proxy knows about a client connection.
pub struct Conn {
    pub peer: SocketAddr,
    /// The TLS server name the client asked for, lower-case.
    pub sni: Option<String>,
    /// `peer`'s address as the upstream's `X-Forwarded-For`.
    pub forwarded_for: HeaderValue,
    /// The pool of the worker thread serving this connection.
    pub(crate) client: crate::upstream::Upstreams,
}

/// The facts of one request that end up in the access log and metrics.
struct Ctx {
    shared: Arc<Shared>,
    /// Hex digits: the `X-Request-Id` both ways and the log's `id`.
    id: HeaderValue,
    start: Instant,
    host: String,
    route: Option<Arc<RouteState>>,
    method: Method,
    path: String,
    proto: &'static str,
    client: IpAddr,
    bytes_in: Arc<AtomicU64>,
    reason: Option<Reason>,
}

impl Ctx {
    fn emit(&self, status: u16, bytes_out: u64) {
        let secs = self.start.elapsed().as_secs_f64();
        let bytes_in = self.bytes_in.load(Relaxed);
        let metrics = match &self.route {
            Some(r) => &*r.metrics,
            None => &self.shared.registry.unrouted,
        };
        metrics.record(status, bytes_in, bytes_out, secs, self.reason);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let time = log_time(now);
        self.shared.log.write(&Record {
            time: &time,
            id: self.id.to_str().unwrap_or_default(),
            route: self.route.as_ref().map(|r| r.host.as_str()).unwrap_or(""),
            host: &self.host,
            method: self.method.as_str(),
            path: &self.path,
            proto: self.proto,
            status,
            bytes_in,
            bytes_out,
            duration_ms: (secs * 1e6).round() / 1e3,
            client: self.client,
            blocked: self.reason.map(Reason::as_str),
        });
    }
}

/// `2026-12-02T06:38:29.123Z`. The date part is formatted once per second
/// per thread, not per request.
fn log_time(now: Duration) -> String {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    SECOND.with_borrow_mut(|(secs, text)| {
        if *secs != now.as_secs() {
            *secs = now.as_secs();
            *text = careplane_sys::utc_datetime(now.as_secs());
        }
        let mut t = String::with_capacity(text.len() + 5);
        t.push_str(text);
        let ms = now.subsec_millis();
        t.push('.');
        t.push(char::from(b'0' + (ms / 100) as u8));
        t.push(char::from(b'0' + (ms / 10 % 10) as u8));
        t.push(char::from(b'0' + (ms % 10) as u8));
        t.push('Z');
        t
    })
}

/// A response body that counts what it sends and writes the access log
/// record when it is dropped (finished, or the client went away).
struct Logged {
    inner: ProxyBody,
    ctx: Box<Ctx>,
    status: u16,
    out: u64,
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                this.out += d.len() as u64;
            }
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.ctx.emit(self.status, self.out);
    }
}

/// The client's request body on its way upstream: counted, and cut off
/// (with `over` set, so the answer is 413) past the route's limit.
struct Capped {
    inner: Incoming,
    seen: Arc<AtomicU64>,
    limit: u64,
    over: Arc<AtomicBool>,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = this.seen.fetch_add(d.len() as u64, Relaxed) + d.len() as u64;
                    if n > this.limit {
                        this.over.store(true, Relaxed);
                        return Poll::Ready(Some(
                            Err("request body over the route's limit".into()),
                        ));
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

fn finish(mut resp: Response<ProxyBody>, ctx: Ctx) -> Response<ProxyBody> {
    let status = resp.status().as_u16();
    let body = std::mem::replace(resp.body_mut(), empty());
    *resp.body_mut() = Logged {
        inner: body,
        ctx: Box::new(ctx),
        status,
        out: 0,
    }
    .boxed_unsync();
    resp
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<ProxyBody> {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{text}</p></body></html>\n"
    );
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn retry_after(r: &mut Response<ProxyBody>, secs: u64) {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
}

/// Host as the client wrote it (for `X-Forwarded-Host`; the header itself
/// when there is one, not a copy) and the bare, lower-case name (for
/// routing).
fn request_host(req: &Request<Incoming>) -> Option<(HeaderValue, String)> {
    let raw = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok()?,
        None => req.headers().get(header::HOST)?.clone(),
    };
    let text = raw.to_str().ok()?;
    let name = match text.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => text,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    Some((raw, name))
}

fn header_bytes(req: &Request<Incoming>) -> usize {
    let line = req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.method().as_str().len()
        + 12;
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// Headers that describe one connection, not the message: never forwarded.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
    )
}

/// Headers a client could use to lie about where it is.
fn client_spoofable(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-server"
            | "x-real-ip"
            | "x-request-id"
    )
}

// Parsed once, not on every insert as a `&str` name would be.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn strip_hop_by_hop(h: &mut HeaderMap) {
    strip(h, |_| false);
}

/// Removes the hop-by-hop headers, those the `Connection` header names, and
/// those `also` picks. The names present are found in one pass over the map
/// (names matched as strings): removing every listed name whether present
/// or not cost a hash and a probe per name, ~4% of the proxy's instructions.
fn strip(h: &mut HeaderMap, also: fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = h
        .keys()
        .filter(|k| hop_by_hop(k.as_str()) || also(k.as_str()))
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        for token in h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let token = token.trim();
            // Usually `keep-alive` or `close`, naming no header the message
            // has: look it up before making a name of it.
            if h.contains_key(token) {
                if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                    doomed.push(n);
                }
            }
        }
    }
    for n in &doomed {
        h.remove(n);
    }
}

fn upstream_headers(
    mut h: HeaderMap,
    raw_host: &HeaderValue,
    forwarded_for: &HeaderValue,
    id: &HeaderValue,
    websocket: bool,
) -> HeaderMap {
    strip(&mut h, client_spoofable);
    // HTTP/2 may split cookies over several headers; HTTP/1.1 wants one
    // (Werkzeug would join them with ", ").
    if h.get_all(header::COOKIE).iter().nth(1).is_some() {
        let cookies: Vec<&[u8]> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let joined = cookies.join(&b"; "[..]);
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            h.insert(header::COOKIE, v);
        }
    }
    h.insert(header::HOST, raw_host.clone());
    h.insert(X_FORWARDED_HOST, raw_host.clone());
    h.insert(X_FORWARDED_FOR, forwarded_for.clone());
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    h.insert(X_REQUEST_ID, id.clone());
    if websocket {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    h
}

fn security_headers(h: &mut HeaderMap, route: &RouteState, id: &HeaderValue) {
    h.remove(header::SERVER);
    h.entry(header::STRICT_TRANSPORT_SECURITY)
        .or_insert_with(|| route.hsts.clone());
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert_with(|| route.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static(
            careplane_model::ingress_policy::REFERRER_POLICY,
        ));
    h.insert(X_REQUEST_ID, id.clone());
}

/// The request's own path and query (no copy), in origin form.
fn upstream_uri(uri: &Uri) -> Uri {
    Uri::from(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    )
}

fn proto(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    let snapshot = shared.current();
    let (raw_host, host) =
        request_host(&req).unwrap_or_else(|| (HeaderValue::from_static(""), String::new()));
    let route = snapshot.route(&host).cloned();
    let mut ctx = Ctx {
        id: shared.next_request_id(),
        start: Instant::now(),
        host,
        route: route.clone(),
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        proto: proto(req.version()),
        client: conn.peer.ip(),
        bytes_in: Arc::new(AtomicU64::new(0)),
        reason: None,
        shared: shared.clone(),
    };
    let Some(route) = route else {
        let r = page(
            StatusCode::NOT_FOUND,
            "Not found",
            "No environment answers at this address.",
        );
        return finish(r, ctx);
    };
    let mut resp = match forward(req, &conn, &shared, &route, &raw_host, &mut ctx).await {
        Ok(r) => r,
        Err(r) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The tunnel task writes the log record when it closes.
        return resp;
    }
    security_headers(resp.headers_mut(), &route, &ctx.id);
    finish(resp, ctx)
}

async fn forward(
    req: Request<Incoming>,
    conn: &Conn,
    shared: &Arc<Shared>,
    route: &Arc<RouteState>,
    raw_host: &HeaderValue,
    ctx: &mut Ctx,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    let limits = &route.limits;
    macro_rules! refuse {
        ($reason:expr, $resp:expr $(,)?) => {{
            ctx.reason = Some($reason);
            return Err($resp);
        }};
    }
    if conn.sni.as_deref() != Some(route.host.as_str()) {
        refuse!(
            Reason::MisdirectedHost,
            page(
                StatusCode::MISDIRECTED_REQUEST,
                "Misdirected request",
                "This connection serves another host."
            ),
        );
    }
    if header_bytes(&req) > limits.max_header_bytes {
        refuse!(
            Reason::HeadersTooLarge,
            page(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request headers too large",
                "The request's headers are over the limit."
            ),
        );
    }
    // CONNECT would make the proxy a tunnel; TRACE echoes headers (cookies)
    // back to scripts. Odoo needs neither.
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        refuse!(
            Reason::MethodNotAllowed,
            page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "This method is not served."
            )
        );
    }
    let Some(path) = filter::normalize_path(req.uri().path()) else {
        refuse!(
            Reason::BadPath,
            page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The path cannot be decoded."
            )
        );
    };
    if route.maintenance {
        let mut r = page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Down for maintenance",
            "This environment is being upgraded or restored. Please try again in a few minutes.",
        );
        retry_after(&mut r, limits.maintenance_retry_after_secs);
        refuse!(Reason::Maintenance, r);
    }
    if let Some(why) = filter::blocked_path(&path) {
        let reason = if why == "database-manager" {
            Reason::DatabaseManager
        } else {
            Reason::DbService
        };
        refuse!(
            reason,
            page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "This path is not served."
            )
        );
    }
    if route.admin_paths.iter().any(|p| filter::under(&path, p))
        && !route
            .admin_allow
            .iter()
            .any(|n| n.contains(&conn.peer.ip()))
    {
        refuse!(
            Reason::AdminPath,
            page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "This path is not served to your address."
            )
        );
    }
    let (class, rate, reason) = if filter::is_login(req.method(), &path) {
        (Class::Login, limits.login_rate, Reason::LoginRateLimited)
    } else {
        (Class::General, limits.rate, Reason::RateLimited)
    };
    if let Some(rate) = rate {
        if let Err(wait) =
            shared
                .limiter
                .check(route.id, conn.peer.ip(), class, rate, Instant::now())
        {
            let mut r = page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "Please slow down.",
            );
            retry_after(&mut r, wait.as_secs_f64().ceil() as u64);
            refuse!(reason, r);
        }
    }
    let too_large = || {
        page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request too large",
            "The request body is over the limit.",
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        refuse!(Reason::BodyTooLarge, too_large());
    }

    let websocket = path == "/websocket"
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if websocket {
        return websocket_tunnel(req, conn, shared, route, raw_host, ctx).await;
    }

    let jsonrpc = filter::is_jsonrpc(&path);
    let (mut parts, incoming) = req.into_parts();
    let over = Arc::new(AtomicBool::new(false));
    let body: ProxyBody = if jsonrpc {
        let cap = limits.max_inspected_body_bytes.min(limits.max_body_bytes);
        let collected = http_body_util::Limited::new(incoming, cap as usize)
            .collect()
            .await;
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                refuse!(Reason::BodyTooLarge, too_large())
            }
            Err(_) => refuse!(
                Reason::BadPath,
                page(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "The request body could not be read."
                )
            ),
        };
        ctx.bytes_in.store(bytes.len() as u64, Relaxed);
        match filter::inspect_jsonrpc(&bytes) {
            JsonRpcVerdict::Allow => full(bytes),
            JsonRpcVerdict::DbService => {
                refuse!(
                    Reason::DbService,
                    page(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        "The database service is not served."
                    )
                )
            }
            JsonRpcVerdict::Unparsable => {
                refuse!(
                    Reason::UnparsableJsonRpc,
                    page(
                        StatusCode::BAD_REQUEST,
                        "Bad request",
                        "The JSON-RPC body is not valid JSON."
                    )
                )
            }
        }
    } else {
        Capped {
            inner: incoming,
            seen: ctx.bytes_in.clone(),
            limit: limits.max_body_bytes,
            over: over.clone(),
        }
        .boxed_unsync()
    };

    let mut up = Request::new(body);
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = upstream_uri(&parts.uri);
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = upstream_headers(
        std::mem::take(&mut parts.headers),
        raw_host,
        &conn.forwarded_for,
        &ctx.id,
        false,
    );

    let timeout = Duration::from_secs(limits.upstream_timeout_secs);
    match tokio::time::timeout(timeout, conn.client.send(route.http_port, up)).await {
        Err(_) => {
            let r = page(
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout",
                "The environment did not answer in time.",
            );
            refuse!(Reason::UpstreamTimeout, r)
        }
        Ok(Err(_)) if over.load(Relaxed) => refuse!(Reason::BodyTooLarge, too_large()),
        Ok(Err(e)) => {
            if matches!(e, crate::upstream::Error::ConnectTimeout) {
                let r = page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Gateway timeout",
                    "The environment did not answer in time.",
                );
                refuse!(Reason::UpstreamTimeout, r)
            } else {
                let r = page(
                    StatusCode::BAD_GATEWAY,
                    "Bad gateway",
                    "The environment is not answering.",
                );
                refuse!(Reason::UpstreamError, r)
            }
        }
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                body.map_err(BoxError::from).boxed_unsync(),
            ))
        }
    }
}

/// `/websocket` to the evented port: the upgrade request goes upstream over a
/// connection of its own, and once both sides switched protocols the two
/// upgraded streams are joined.
async fn websocket_tunnel(
    mut req: Request<Incoming>,
    conn: &Conn,
    shared: &Arc<Shared>,
    route: &Arc<RouteState>,
    raw_host: &HeaderValue,
    ctx: &mut Ctx,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    let bad_gateway = || {
        page(
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "The environment is not answering.",
        )
    };
    if req.version() != Version::HTTP_11 {
        ctx.reason = Some(Reason::BadPath);
        return Err(page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Websockets need HTTP/1.1.",
        ));
    }
    let connect = Duration::from_millis(route.limits.upstream_connect_timeout_ms);
    let stream = match tokio::time::timeout(
        connect,
        tokio::net::TcpStream::connect(("127.0.0.1", route.websocket_port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => {
            ctx.reason = Some(Reason::UpstreamError);
            return Err(bad_gateway());
        }
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        ctx.reason = Some(Reason::UpstreamError);
        return Err(bad_gateway());
    };
    tokio::spawn(connection.with_upgrades());

    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut up = Request::new(Empty::<Bytes>::new());
    *up.method_mut() = req.method().clone();
    *up.uri_mut() = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .expect("parsed before");
    *up.headers_mut() = upstream_headers(
        std::mem::take(req.headers_mut()),
        raw_host,
        &conn.forwarded_for,
        &ctx.id,
        true,
    );

    let timeout = Duration::from_secs(route.limits.upstream_timeout_secs);
    let mut resp = match tokio::time::timeout(timeout, sender.send_request(up)).await {
        Err(_) => {
            ctx.reason = Some(Reason::UpstreamTimeout);
            return Err(page(
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout",
                "The environment did not answer in time.",
            ));
        }
        Ok(Err(_)) => {
            ctx.reason = Some(Reason::UpstreamError);
            return Err(bad_gateway());
        }
        Ok(Ok(r)) => r,
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed_unsync(),
        ));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let tunnel_ctx = Ctx {
        shared: shared.clone(),
        id: ctx.id.clone(),
        start: ctx.start,
        host: ctx.host.clone(),
        route: ctx.route.clone(),
        method: ctx.method.clone(),
        path: ctx.path.clone(),
        proto: ctx.proto,
        client: ctx.client,
        bytes_in: ctx.bytes_in.clone(),
        reason: None,
    };
    tokio::spawn(async move {
        let (mut sent, mut received) = (0, 0);
        if let (Ok(c), Ok(u)) = tokio::join!(client_upgrade, upstream_upgrade) {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            if let Ok((a, b)) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                (sent, received) = (a, b);
            }
        }
        tunnel_ctx.bytes_in.store(sent, Relaxed);
        tunnel_ctx.emit(101, received);
    });
    let mut out = Response::new(empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in resp.headers() {
        let keep = k == header::UPGRADE
            || k == header::CONNECTION
            || k.as_str().starts_with("sec-websocket-");
        if keep {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// The plain HTTP listener: every request for a routed host is sent to
/// HTTPS, anything else is 404.
pub async fn redirect(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    let snapshot = shared.current();
    let host = request_host(&req).map(|(_, h)| h).unwrap_or_default();
    let route = snapshot.route(&host).cloned();
    let ctx = Ctx {
        id: shared.next_request_id(),
        start: Instant::now(),
        host: host.clone(),
        route: route.clone(),
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        proto: proto(req.version()),
        client: peer.ip(),
        bytes_in: Arc::new(AtomicU64::new(0)),
        reason: None,
        shared: shared.clone(),
    };
    if route.is_none() {
        return finish(
            page(
                StatusCode::NOT_FOUND,
                "Not found",
                "No environment answers at this address.",
            ),
            ctx,
        );
    }
    let port = snapshot
        .config
        .public_https_port
        .unwrap_or(shared.https_port);
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    finish(r, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_stripped() {
        let mut h = map(&[
            ("Connection", "Keep-Alive, X-Secret-Hop"),
            ("connection", " close ,upgrade"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "x"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic eA=="),
            ("X-Secret-Hop", "1"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Content-Type", "text/plain"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            names(&h),
            ["content-type", "set-cookie", "x-forwarded-for"],
            "{h:?}"
        );
        assert_eq!(h.get_all(header::SET_COOKIE).iter().count(), 2);
    }

    #[test]
    fn upstream_headers_replace_what_a_client_could_spoof() {
        let spoofed = [
            "Forwarded",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "X-Forwarded-Proto",
            "X-Forwarded-Port",
            "X-Forwarded-Prefix",
            "X-Forwarded-Server",
            "X-Real-IP",
            "X-Request-Id",
        ];
        let mut pairs: Vec<(&str, &str)> = spoofed.iter().map(|n| (*n, "6.6.6.6")).collect();
        pairs.extend([("Cookie", "a=1"), ("Cookie", "b=2"), ("Accept", "*/*")]);
        let ip = HeaderValue::from_static("192.0.2.7");
        let id = HeaderValue::from_static("00000000000000ab");
        let h = upstream_headers(
            map(&pairs),
            &HeaderValue::from_static("a.example:8443"),
            &ip,
            &id,
            false,
        );
        assert_eq!(
            names(&h),
            [
                "accept",
                "cookie",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-request-id"
            ]
        );
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h["host"], "a.example:8443");
        assert_eq!(h["x-forwarded-host"], "a.example:8443");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-request-id"], "00000000000000ab");
        assert_eq!(h.len(), 7, "one value each: {h:?}");
    }
}

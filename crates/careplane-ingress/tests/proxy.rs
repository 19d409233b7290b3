//! The proxy with real TLS clients (HTTP/1.1, HTTP/2, websocket) in front of
//! real HTTP upstreams on loopback.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

const A: &str = "prod.stmarys.careplane.localhost";
const B: &str = "test.stmarys.careplane.localhost";

struct Env {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    ca: TestCa,
    path: std::path::PathBuf,
    running: careplane_ingress::Running,
}

impl Env {
    async fn start(cfg: impl FnOnce(&TestCa, &std::path::Path) -> serde_json::Value) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let ca = TestCa::new(&dir);
        let v = cfg(&ca, &dir);
        let path = dir.join("ingress.json");
        write(&path, &v);
        let running = careplane_ingress::start(&path).await.expect("proxy starts");
        Env {
            _dir: tmp,
            dir,
            ca,
            path,
            running,
        }
    }

    fn https(&self) -> std::net::SocketAddr {
        self.running.https[0]
    }

    fn host(&self, h: &str) -> String {
        format!("{h}:{}", self.https().port())
    }

    async fn client(&self, sni: &str, h2: bool) -> Client {
        Client::connect(&self.ca, self.https(), sni, h2).await
    }

    fn log(&self) -> String {
        self.running.flush_log();
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

#[tokio::test]
async fn routes_by_host_and_sets_forwarding_headers_odoo_trusts() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let env = Env::start(|ca, dir| config(dir, vec![route(ca, A, &a), route(ca, B, &b)])).await;

    let mut c = env.client(A, false).await;
    let req = Request::get("/odoo/discuss?redirect=%2Fodoo")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "http")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "client-chosen")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let ans = c.send(&env.host(A), req).await.unwrap();
    assert_eq!(ans.status, StatusCode::OK);
    assert_eq!(ans.header("x-upstream"), Some("a"));
    let seen = &a.requests()[0];
    assert_eq!(seen.uri, "/odoo/discuss?redirect=%2Fodoo");
    let h = &seen.headers;
    assert_eq!(h["x-forwarded-for"], vec!["127.0.0.1"]);
    assert_eq!(h["x-forwarded-host"], vec![env.host(A)]);
    assert_eq!(h["host"], vec![env.host(A)]);
    assert_eq!(h["x-forwarded-proto"], vec!["https"]);
    assert!(
        !h.contains_key("x-real-ip") && !h.contains_key("forwarded"),
        "{h:?}"
    );
    let id = &h["x-request-id"][0];
    assert_ne!(id, "client-chosen");
    assert_eq!(ans.header("x-request-id"), Some(id.as_str()));

    // Security headers on the way back; the upstream's Server header is gone.
    assert_eq!(
        ans.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let csp = ans.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'self'") && csp.contains("'unsafe-eval'"),
        "{csp}"
    );
    assert_eq!(ans.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        ans.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    assert!(ans.headers.get("server").is_none());
    assert_eq!(
        ans.header("set-cookie"),
        Some("session_id=upstream-session; HttpOnly")
    );

    // The other host goes to the other environment.
    let mut cb = env.client(B, false).await;
    assert_eq!(
        cb.get(&env.host(B), "/").await.header("x-upstream"),
        Some("b")
    );
    assert_eq!(b.requests().len(), 1);

    // A Host that is not the connection's TLS name is misdirected (421), and
    // an unknown host is 404; neither reaches an upstream.
    assert_eq!(
        c.get(&env.host(B), "/").await.status,
        StatusCode::MISDIRECTED_REQUEST
    );
    assert_eq!(
        c.get("nowhere.careplane.localhost", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests().len(), 1);

    // A TLS name the proxy has no route for gets no certificate at all.
    assert!(tls_connect(
        &env.ca,
        env.https(),
        "other.careplane.localhost",
        &[b"http/1.1"]
    )
    .await
    .is_err());
    env.running.shutdown().await;
}

#[tokio::test]
async fn tls_is_verified_against_the_ca_and_a_foreign_ca_is_refused() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| config(dir, vec![route(ca, A, &a)])).await;
    // The test CA verifies (tls_connect trusts only it).
    tls_connect(&env.ca, env.https(), A, &[b"http/1.1"])
        .await
        .unwrap();
    // A client that trusts another CA refuses the proxy's certificate.
    let other = tempfile::tempdir().unwrap();
    let foreign = TestCa::new(other.path());
    let err = tls_connect(&foreign, env.https(), A, &[b"http/1.1"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    env.running.shutdown().await;
}

#[tokio::test]
async fn http2_via_alpn_reaches_odoo_as_http11_with_cookies_joined() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| config(dir, vec![route(ca, A, &a)])).await;
    let mut c = env.client(A, true).await;
    let req = Request::get("/odoo/action-1")
        .header("cookie", "session_id=abc")
        .header("cookie", "frontend_lang=en_US")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let ans = c.send(&env.host(A), req).await.unwrap();
    assert_eq!(ans.status, StatusCode::OK);
    let seen = &a.requests()[0];
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(
        seen.headers["cookie"],
        vec!["session_id=abc; frontend_lang=en_US"]
    );
    assert_eq!(seen.headers["x-forwarded-host"], vec![env.host(A)]);
    assert!(env.log().contains("\"proto\":\"HTTP/2\""));
    env.running.shutdown().await;
}

#[tokio::test]
async fn database_manager_and_db_service_are_blocked_in_paths_bodies_and_batches() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| config(dir, vec![route(ca, A, &a)])).await;
    let host = env.host(A);
    for h2 in [false, true] {
        let mut c = env.client(A, h2).await;
        for p in [
            "/web/database/manager",
            "/web/database/selector",
            "/web/%64atabase/list",
            "//web/./database/backup",
            "/xmlrpc/db",
            "/xmlrpc/2/db",
            "/xmlrpc/2/../2/db",
        ] {
            assert_eq!(c.get(&host, p).await.status, StatusCode::FORBIDDEN, "{p}");
            assert_eq!(
                c.post(&host, p, "<x/>").await.status,
                StatusCode::FORBIDDEN,
                "{p}"
            );
        }
        let single = json!({"jsonrpc": "2.0", "method": "call", "id": 1,
            "params": {"service": "db", "method": "drop", "args": ["admin", "prod"]}});
        assert_eq!(
            c.post(&host, "/jsonrpc", &single.to_string()).await.status,
            StatusCode::FORBIDDEN
        );
        let batch = json!([
            {"jsonrpc": "2.0", "method": "call", "id": 1, "params": {"service": "common", "method": "version", "args": []}},
            {"jsonrpc": "2.0", "method": "call", "id": 2, "params": {"service": "db", "method": "list", "args": []}}
        ]);
        assert_eq!(
            c.post(&host, "/jsonrpc", &batch.to_string()).await.status,
            StatusCode::FORBIDDEN
        );
        // A body Python's parser would read but serde cannot is refused.
        let nan = r#"{"params": {"service": "db", "method": "list"}, "id": NaN}"#;
        assert_eq!(
            c.post(&host, "/jsonrpc", nan).await.status,
            StatusCode::BAD_REQUEST
        );
    }
    let mut c = env.client(A, false).await;
    let trace = Request::builder()
        .method("TRACE")
        .uri("/web")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        c.send(&host, trace).await.unwrap().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert!(a.requests().is_empty(), "{:?}", a.requests());

    // Other services pass, body intact.
    let mut c = env.client(A, false).await;
    let ok = json!({"jsonrpc": "2.0", "method": "call", "id": 3,
        "params": {"service": "common", "method": "version", "args": []}});
    let ans = c.post(&host, "/jsonrpc", &ok.to_string()).await;
    assert_eq!(ans.status, StatusCode::OK);
    assert_eq!(a.requests()[0].body, ok.to_string().as_bytes());
    let ans = c.post(&host, "/xmlrpc/2/object", "<methodCall/>").await;
    assert_eq!(ans.status, StatusCode::OK);
    assert_eq!(a.requests().len(), 2);

    let log = env.log();
    assert!(log.contains("\"blocked\":\"database-manager\""), "{log}");
    assert!(log.contains("\"blocked\":\"db-service\""), "{log}");
    env.running.shutdown().await;
}

#[tokio::test]
async fn admin_paths_are_served_only_to_allowed_addresses() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let env = Env::start(|ca, dir| {
        let mut ra = route(ca, A, &a);
        ra["admin_paths"] = json!(["/web/become", "/odoo/settings"]);
        ra["admin_allow"] = json!(["10.0.0.0/8"]);
        let mut rb = route(ca, B, &b);
        rb["admin_paths"] = json!(["/web/become"]);
        rb["admin_allow"] = json!(["127.0.0.1"]);
        config(dir, vec![ra, rb])
    })
    .await;
    let mut c = env.client(A, false).await;
    assert_eq!(
        c.get(&env.host(A), "/web/become").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.get(&env.host(A), "/odoo/settings/users").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.get(&env.host(A), "/odoo/sales").await.status,
        StatusCode::OK
    );
    let mut c = env.client(B, false).await;
    assert_eq!(
        c.get(&env.host(B), "/web/become").await.status,
        StatusCode::OK
    );
    env.running.shutdown().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_stricter_on_login() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| {
        let mut r = route(ca, A, &a);
        r["limits"] = json!({
            "rate": {"per_second": 0.01, "burst": 20},
            "login_rate": {"per_second": 0.01, "burst": 3}
        });
        config(dir, vec![r])
    })
    .await;
    let host = env.host(A);
    let mut c = env.client(A, false).await;
    for i in 0..3 {
        assert_eq!(
            c.post(&host, "/web/login", "login=a&password=b")
                .await
                .status,
            StatusCode::OK,
            "login {i}"
        );
    }
    let ans = c.post(&host, "/web/login", "login=a&password=c").await;
    assert_eq!(ans.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = ans.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    // Viewing the login page is not a login attempt: it draws on the general
    // bucket (burst 20), which the login attempts did not touch.
    for _ in 0..20 {
        assert_eq!(c.get(&host, "/web/login").await.status, StatusCode::OK);
    }
    assert_eq!(
        c.get(&host, "/web/login").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(a.requests().len(), 23);
    let log = env.log();
    assert!(log.contains("\"blocked\":\"login-rate-limited\""));
    assert!(log.contains("\"blocked\":\"rate-limited\""));
    env.running.shutdown().await;
}

#[tokio::test]
async fn body_and_header_size_limits_answer_413_and_431() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| {
        let mut r = route(ca, A, &a);
        r["limits"] = json!({"max_body_bytes": 1000, "max_header_bytes": 2048});
        config(dir, vec![r])
    })
    .await;
    let host = env.host(A);
    let mut c = env.client(A, false).await;
    assert_eq!(
        c.post(&host, "/web/binary/upload", &"x".repeat(1000))
            .await
            .status,
        StatusCode::OK
    );
    // Declared too large: refused before anything is read or forwarded.
    assert_eq!(
        c.post(&host, "/web/binary/upload", &"x".repeat(1001))
            .await
            .status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Too large without a declared length (chunked): cut off while streaming.
    let chunks = (0..8).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 400])))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::post("/web/binary/upload").body(body).unwrap();
    let status = send_streaming(&env, A, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // JSON-RPC bodies are read whole for inspection, under the same limit.
    let mut c = env.client(A, false).await;
    let big = json!({"params": {"service": "object", "args": ["x".repeat(1200)]}});
    assert_eq!(
        c.post(&host, "/jsonrpc", &big.to_string()).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let req = Request::get("/odoo")
        .header("x-filler", "z".repeat(3000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        c.send(&host, req).await.unwrap().status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let mut c2 = env.client(A, true).await;
    let req = Request::get("/odoo")
        .header("x-filler", "z".repeat(3000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        c2.send(&host, req).await.unwrap().status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // Only the first, small upload reached the upstream whole.
    let bodies: Vec<usize> = a.requests().iter().map(|s| s.body.len()).collect();
    assert_eq!(bodies[0], 1000);
    assert!(bodies.iter().all(|n| *n <= 1000), "{bodies:?}");
    env.running.shutdown().await;
}

/// Sends a body of unknown length (chunked) on a connection of its own.
async fn send_streaming<B>(env: &Env, host: &str, mut req: Request<B>) -> StatusCode
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    req.headers_mut()
        .insert("host", env.host(host).parse().unwrap());
    let tls = tls_connect(&env.ca, env.https(), host, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send.send_request(req).await.map(|r| r.status()).unwrap()
}

#[tokio::test]
async fn maintenance_mode_answers_503_with_retry_after_until_switched_off() {
    let a = Upstream::start("a").await;
    let mut v = serde_json::Value::Null;
    let env = Env::start(|ca, dir| {
        let mut r = route(ca, A, &a);
        r["maintenance"] = json!(true);
        v = config(dir, vec![r]);
        v.clone()
    })
    .await;
    let host = env.host(A);
    let mut c = env.client(A, false).await;
    let ans = c.get(&host, "/odoo").await;
    assert_eq!(ans.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ans.header("retry-after"), Some("120"));
    assert!(String::from_utf8_lossy(&ans.body).contains("maintenance"));
    assert!(a.requests().is_empty());

    v["routes"][0]["maintenance"] = json!(false);
    v["generation"] = json!(2);
    write(&env.path, &v);
    assert_eq!(env.running.reload(), Ok(2));
    // Same connection, next request: the environment is back.
    assert_eq!(c.get(&host, "/odoo").await.status, StatusCode::OK);
    env.running.shutdown().await;
}

#[tokio::test]
async fn upstream_timeout_is_504_and_a_dead_upstream_502() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| {
        let mut r = route(ca, A, &a);
        r["limits"] = json!({"upstream_timeout_secs": 1});
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let mut r2 = route(ca, B, &a);
        r2["upstream"]["http"] = json!(port);
        config(dir, vec![r, r2])
    })
    .await;
    let mut c = env.client(A, false).await;
    assert_eq!(
        c.get(&env.host(A), "/slow").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    let mut c = env.client(B, false).await;
    assert_eq!(
        c.get(&env.host(B), "/").await.status,
        StatusCode::BAD_GATEWAY
    );
    env.running.shutdown().await;
}

#[tokio::test]
async fn websocket_goes_through_to_the_evented_port() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let a = Upstream::start("evented-a").await;
    let env = Env::start(|ca, dir| config(dir, vec![route(ca, A, &a)])).await;
    let tls = tls_connect(&env.ca, env.https(), A, &[b"http/1.1"])
        .await
        .unwrap();
    let url = format!("wss://{}/websocket?version=18.0-1", env.host(A));
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.to_text().unwrap(), format!("evented-a: ping {i}"));
    }
    ws.close(None).await.unwrap();
    drop(ws);
    let seen = a.ws_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["x-forwarded-for"], vec!["127.0.0.1"]);
    assert_eq!(seen[0]["x-forwarded-host"], vec![env.host(A)]);
    // Plain requests never went to the evented port, nor the upgrade to HTTP.
    assert!(a.requests().is_empty());
    // The tunnel's record is written when it closes.
    let mut log = String::new();
    for _ in 0..100 {
        log = env.log();
        if log.contains("\"status\":101") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        log.contains("\"path\":\"/websocket\"") && log.contains("\"status\":101"),
        "{log}"
    );
    assert!(!log.contains("version=18.0-1"), "{log}");
    env.running.shutdown().await;
}

#[tokio::test]
async fn plain_http_redirects_to_https() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| config(dir, vec![route(ca, A, &a)])).await;
    let http = env.running.http[0];
    let ans = plain_get(http, A, "/odoo/action-5?debug=1").await;
    assert_eq!(ans.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        ans.header("location").unwrap(),
        format!("https://{A}:{}/odoo/action-5?debug=1", env.https().port())
    );
    assert_eq!(
        plain_get(http, "evil.example", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(a.requests().is_empty());
    env.running.shutdown().await;
}

#[tokio::test]
async fn access_log_holds_no_query_cookie_authorization_or_body() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| config(dir, vec![route(ca, A, &a)])).await;
    let host = env.host(A);
    for h2 in [false, true] {
        let mut c = env.client(A, h2).await;
        let req = Request::post("/web/reset_password?token=SECRETQUERY123&db=x")
            .header("cookie", "session_id=SECRETCOOKIE456")
            .header("authorization", "Bearer SECRETAUTH789")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from("password=SECRETBODY000")))
            .unwrap();
        let ans = c.send(&host, req).await.unwrap();
        assert_eq!(ans.status, StatusCode::OK);
        // A blocked request's query stays out too.
        assert_eq!(
            c.get(&host, "/web/database/manager?master=SECRETQUERY123")
                .await
                .status,
            StatusCode::FORBIDDEN
        );
    }
    // The upstream did get them: the proxy forwards, it just does not log.
    let seen = &a.requests()[0];
    assert_eq!(seen.headers["authorization"], vec!["Bearer SECRETAUTH789"]);
    assert!(seen.uri.contains("SECRETQUERY123"));

    let log = env.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{log}");
    for secret in [
        "SECRETQUERY123",
        "SECRETCOOKIE456",
        "SECRETAUTH789",
        "SECRETBODY000",
        "token=",
        "session_id",
    ] {
        assert!(!log.contains(secret), "{secret} in the access log:\n{log}");
    }
    let first = &lines[0];
    assert_eq!(first["path"], "/web/reset_password");
    assert_eq!(first["host"], A);
    assert_eq!(first["route"], A);
    assert_eq!(first["method"], "POST");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], "password=SECRETBODY000".len());
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(
        first["id"].as_str().unwrap(),
        seen.headers["x-request-id"][0]
    );
    assert!(first["duration_ms"].is_number());
    assert_eq!(lines[1]["path"], "/web/database/manager");
    assert_eq!(lines[1]["status"], 403);
    env.running.shutdown().await;
}

fn expiry(metrics: &str, host: &str) -> i64 {
    let prefix = format!("careplane_ingress_certificate_expiry_seconds{{host=\"{host}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no expiry for {host}:\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_per_route_with_certificate_expiry_and_status() {
    let a = Upstream::start("a").await;
    let env = Env::start(|ca, dir| {
        let (cert, key) = ca.issue("a-expiring", &[A], Some((2031, 1, 2)));
        let mut r = route(ca, A, &a);
        r["tls"] = json!({"cert": cert, "key": key});
        config(dir, vec![r])
    })
    .await;
    let mut c = env.client(A, false).await;
    c.get(&env.host(A), "/odoo").await;
    c.get(&env.host(A), "/web/database/manager").await;
    let admin = env.running.admin.unwrap();
    let m = String::from_utf8(plain_get(admin, "x", "/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(&format!(
            "careplane_ingress_requests_total{{route=\"{A}\",code=\"2xx\"}} 1"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "careplane_ingress_requests_total{{route=\"{A}\",code=\"4xx\"}} 1"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "careplane_ingress_refused_total{{route=\"{A}\",reason=\"database-manager\"}} 1"
        )),
        "{m}"
    );
    // 2031-01-02T00:00:00Z; the clock may tick between render and check.
    let secs = expiry(&m, A);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((1_925_078_400 - now - secs).abs() <= 2, "{secs}");
    let status: serde_json::Value = plain_get(admin, "x", "/status").await.json();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["routes"], json!([A]));
    assert!(status["last_reload_error"].is_null());

    // Renewal: the engine rewrites the files in place and reloads; new
    // handshakes get the new certificate, the gauge moves.
    let (new_cert, new_key) = env.ca.issue("renewed", &[A], Some((2032, 1, 2)));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&env.path).unwrap()).unwrap();
    let cert_path = v["routes"][0]["tls"]["cert"].as_str().unwrap().to_owned();
    let key_path = v["routes"][0]["tls"]["key"].as_str().unwrap().to_owned();
    std::fs::copy(&new_cert, &cert_path).unwrap();
    std::fs::copy(&new_key, &key_path).unwrap();
    env.running.reload().unwrap();
    let tls = tls_connect(&env.ca, env.https(), A, &[b"http/1.1"])
        .await
        .unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    use rustls::pki_types::pem::PemObject;
    let expected = rustls::pki_types::CertificateDer::from_pem_file(&new_cert).unwrap();
    assert_eq!(served, expected.to_vec());
    let m = String::from_utf8(plain_get(admin, "x", "/metrics").await.body.to_vec()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // 2032-01-02T00:00:00Z
    assert!((1_956_614_400 - now - expiry(&m, A)).abs() <= 2, "{m}");
    env.running.shutdown().await;
}

#[tokio::test]
async fn a_bad_reload_is_refused_naming_the_route_and_the_old_routes_keep_serving() {
    let a = Upstream::start("a").await;
    let mut v = serde_json::Value::Null;
    let env = Env::start(|ca, dir| {
        v = config(dir, vec![route(ca, A, &a)]);
        v.clone()
    })
    .await;
    // A certificate for another name.
    let (cert, key) = env.ca.issue("wrong", &["other.careplane.localhost"], None);
    let mut bad = v.clone();
    bad["generation"] = json!(2);
    bad["routes"].as_array_mut().unwrap().push(json!({
        "host": B, "upstream": {"http": a.http_port}, "tls": {"cert": cert, "key": key}
    }));
    write(&env.path, &bad);
    let err = env.running.reload().unwrap_err();
    assert!(
        err.contains("routes[1].tls") && err.contains("not valid for"),
        "{err}"
    );
    let err2 = careplane_ingress::load_config(&env.path)
        .unwrap_err()
        .to_string();
    assert_eq!(err, err2);
    // A key that is not the certificate's.
    let (_, other_key) = env.ca.issue("other", &[B], None);
    let (cert_b, _) = env.ca.issue("b", &[B], None);
    bad["routes"][1]["tls"] = json!({"cert": cert_b, "key": other_key});
    write(&env.path, &bad);
    let err = env.running.reload().unwrap_err();
    assert!(
        err.contains("routes[1].tls") && err.contains("does not fit"),
        "{err}"
    );

    // A key file that is not PEM: the error names the file, never its content.
    std::fs::write(
        &other_key,
        "-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL%%%\n",
    )
    .unwrap();
    write(&env.path, &bad);
    let err = env.running.reload().unwrap_err();
    assert!(
        err.contains("routes[1].tls") && err.contains(other_key.to_str().unwrap()),
        "{err}"
    );
    assert!(!err.contains("SECRETKEYMATERIAL"), "{err}");

    let mut c = env.client(A, false).await;
    assert_eq!(c.get(&env.host(A), "/").await.status, StatusCode::OK);
    let status: serde_json::Value = plain_get(env.running.admin.unwrap(), "x", "/status")
        .await
        .json();
    assert_eq!(status["generation"], 1);
    assert!(status["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("routes[1].tls"));
    env.running.shutdown().await;
}

#[tokio::test]
async fn a_route_added_under_load_loses_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut v = serde_json::Value::Null;
    let env = Env::start(|ca, dir| {
        // All clients are 127.0.0.1: rate limits off, this is about reloads.
        let mut r = route(ca, A, &a);
        r["limits"] = json!({"disable_rate_limits": true});
        v = config(dir, vec![r]);
        v.clone()
    })
    .await;
    let env = std::sync::Arc::new(env);
    // Load: 6 clients (3 HTTP/1.1, 3 HTTP/2), each 150 requests, plus new
    // connections every 25 requests, all while routes are reloaded.
    let mut load = tokio::task::JoinSet::new();
    for w in 0..6 {
        let env = env.clone();
        load.spawn(async move {
            let h2 = w % 2 == 1;
            let mut c = env.client(A, h2).await;
            let mut failures = Vec::new();
            for i in 0..150 {
                if i % 25 == 0 {
                    c = env.client(A, h2).await;
                }
                let ans = c.get(&env.host(A), &format!("/odoo/w{w}/{i}")).await;
                if ans.status != StatusCode::OK {
                    failures.push((i, ans.status));
                }
            }
            failures
        });
    }
    // Reload several times while the load runs: add B, then touch A's route.
    let rb = route(&env.ca, B, &b);
    for g in 2..=5u64 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        v["generation"] = json!(g);
        if g == 2 {
            v["routes"].as_array_mut().unwrap().push(rb.clone());
        } else {
            v["routes"][0]["limits"] =
                json!({"disable_rate_limits": true, "max_body_bytes": 1_000_000 + g});
        }
        write(&env.path, &v);
        assert_eq!(env.running.reload(), Ok(g));
        let mut cb = env.client(B, g % 2 == 0).await;
        assert_eq!(cb.get(&env.host(B), "/").await.status, StatusCode::OK);
    }
    let mut failures = Vec::new();
    while let Some(r) = load.join_next().await {
        failures.extend(r.unwrap());
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(a.requests().len(), 6 * 150);
    assert_eq!(b.requests().len(), 4);
    let env = std::sync::Arc::try_unwrap(env).ok().unwrap();
    env.running.shutdown().await;
}

/// An upstream that counts the connections it accepts and closes one after
/// answering `/close` (as Odoo's server may close an idle keep-alive one).
async fn counting_upstream() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            n.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let mut r = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                        if req.uri().path() == "/close" {
                            r.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn upstream_connections_are_reused_and_a_closed_one_is_replaced() {
    use std::sync::atomic::Ordering::SeqCst;
    let a = Upstream::start("a").await;
    let (port, accepted) = counting_upstream().await;
    let env = Env::start(|ca, dir| {
        let mut r = route(ca, A, &a);
        r["upstream"]["http"] = json!(port);
        let mut c = config(dir, vec![r]);
        // One worker: one set of upstream connections to count.
        c["workers"] = json!(1);
        c
    })
    .await;
    let mut c = env.client(A, false).await;
    for _ in 0..5 {
        let r = c.get(&env.host(A), "/web").await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    let mut h2 = env.client(A, true).await;
    assert_eq!(h2.get(&env.host(A), "/web").await.status, StatusCode::OK);
    assert_eq!(
        accepted.load(SeqCst),
        1,
        "one kept-alive upstream connection"
    );

    assert_eq!(c.get(&env.host(A), "/close").await.status, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(c.get(&env.host(A), "/web").await.status, StatusCode::OK);
    }
    assert_eq!(
        accepted.load(SeqCst),
        2,
        "the closed connection was replaced by one new one"
    );
    env.running.shutdown().await;
}

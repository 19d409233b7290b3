//! Test support: a test CA (rcgen), a small hyper upstream standing in for
//! Odoo's HTTP and evented ports (the odoo-standin binary needs PostgreSQL,
//! which these tests do not), and real TLS clients (HTTP/1.1, HTTP/2).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::TcpListener;

pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "careplane test CA");
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        let issuer = Issuer::new(params, key);
        TestCa {
            cert_pem,
            issuer,
            dir: dir.to_owned(),
        }
    }

    /// Writes a certificate for `names` (and its key) and returns their paths.
    pub fn issue(
        &self,
        file: &str,
        names: &[&str],
        not_after: Option<(i32, u8, u8)>,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some((y, m, d)) = not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let c = self.dir.join(format!("{file}.crt"));
        let k = self.dir.join(format!("{file}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let der = CertificateDer::from_pem_slice_compat(self.cert_pem.as_bytes());
        roots.add(der).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

trait FromPemCompat {
    fn from_pem_slice_compat(pem: &[u8]) -> Self;
}
impl FromPemCompat for CertificateDer<'static> {
    fn from_pem_slice_compat(pem: &[u8]) -> Self {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem).unwrap()
    }
}

pub type Headers = BTreeMap<String, Vec<String>>;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Bytes,
}

/// An HTTP upstream on 127.0.0.1 and an evented (websocket) port beside it.
/// `/slow` answers after 3 s; everything else answers 200 with a JSON echo
/// and `x-upstream: <name>`.
pub struct Upstream {
    pub name: String,
    pub http_port: u16,
    pub ws_port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub ws_seen: Arc<Mutex<Vec<Headers>>>,
}

fn header_map(h: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        m.entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    m
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let ws_seen: Arc<Mutex<Vec<Headers>>> = Arc::default();
        let up = Upstream {
            name: name.to_owned(),
            http_port: http.local_addr().unwrap().port(),
            ws_port: ws.local_addr().unwrap().port(),
            seen: seen.clone(),
            ws_seen: ws_seen.clone(),
        };
        let label = name.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = http.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let label = label.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let label = label.clone();
                        async move { Ok::<_, Infallible>(echo(req, &label, &seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let label = name.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = ws.accept().await else {
                    return;
                };
                let label = label.clone();
                let ws_seen = ws_seen.clone();
                tokio::spawn(async move {
                    use tokio_tungstenite::tungstenite::handshake::server::{
                        Request as WsReq, Response as WsResp,
                    };
                    #[allow(clippy::result_large_err)] // tungstenite's callback type
                    let cb = |req: &WsReq, resp: WsResp| {
                        ws_seen.lock().unwrap().push(header_map(req.headers()));
                        Ok(resp)
                    };
                    let Ok(mut s) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                        return;
                    };
                    use futures_util::{SinkExt, StreamExt};
                    use tokio_tungstenite::tungstenite::Message;
                    while let Some(Ok(msg)) = s.next().await {
                        if msg.is_text() {
                            let reply = format!("{label}: {}", msg.to_text().unwrap());
                            if s.send(Message::text(reply)).await.is_err() {
                                return;
                            }
                        } else if msg.is_close() {
                            return;
                        }
                    }
                });
            }
        });
        up
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn echo(
    req: Request<Incoming>,
    label: &str,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let s = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers: header_map(&parts.headers),
        body: body.clone(),
    };
    seen.lock().unwrap().push(s.clone());
    if parts.uri.path() == "/web/login" && parts.method == http::Method::GET {
        return Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .header("x-upstream", label)
            .body(Full::new(Bytes::from_static(LOGIN_PAGE.as_bytes())))
            .unwrap();
    }
    if parts.uri.path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let out = json!({
        "upstream": label,
        "method": s.method,
        "uri": s.uri,
        "version": s.version,
        "headers": s.headers,
        "body_len": body.len(),
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("x-upstream", label)
        .header("server", "Werkzeug/3.0.1 Python/3.12")
        .header("set-cookie", "session_id=upstream-session; HttpOnly")
        .body(Full::new(Bytes::from(out.to_string())))
        .unwrap()
}

/// A login page that needs what Odoo's web client needs from the CSP: an
/// inline script and `eval`. It shows "rendered-42 https:" once they ran.
pub const LOGIN_PAGE: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Login | Odoo</title>
<script>
window.addEventListener('DOMContentLoaded', function () {
  document.getElementById('out').textContent = eval('"rendered-" + (6 * 7)') + ' ' + location.protocol;
});
</script></head>
<body><form method="post" action="/web/login"><input name="login"><input name="password" type="password"></form>
<p id="out">not-rendered</p></body></html>
"#;

/// A TLS client connection to the proxy, HTTP/1.1 or HTTP/2 as ALPN decides.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn tls_connect(
    ca: &TestCa,
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
}

impl Client {
    pub async fn connect(ca: &TestCa, addr: SocketAddr, sni: &str, h2: bool) -> Client {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tls_connect(ca, addr, sni, alpn)
            .await
            .expect("TLS handshake");
        let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let io = TokioIo::new(tls);
        if h2 {
            assert_eq!(
                negotiated.as_deref(),
                Some(&b"h2"[..]),
                "ALPN did not pick h2"
            );
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(send)
        }
    }

    /// Sends `req` (its URI a path; the Host or authority is `host`).
    pub async fn send(
        &mut self,
        host: &str,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Answer, hyper::Error> {
        let pq = req.uri().path_and_query().unwrap().as_str().to_owned();
        let resp = match self {
            Client::H1(s) => {
                req.headers_mut()
                    .entry("host")
                    .or_insert(host.parse().unwrap());
                s.ready().await?;
                s.send_request(req).await?
            }
            Client::H2(s) => {
                *req.uri_mut() = format!("https://{host}{pq}").parse().unwrap();
                *req.version_mut() = http::Version::HTTP_2;
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Answer {
        let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        self.send(host, req).await.unwrap()
    }

    pub async fn post(&mut self, host: &str, path: &str, body: &str) -> Answer {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        self.send(host, req).await.unwrap()
    }
}

/// A route for `upstream` at `host` with a certificate from `ca`.
pub fn route(ca: &TestCa, host: &str, up: &Upstream) -> serde_json::Value {
    let (cert, key) = ca.issue(host, &[host], None);
    json!({
        "host": host,
        "upstream": {"http": up.http_port, "websocket": up.ws_port},
        "tls": {"cert": cert, "key": key},
    })
}

/// A configuration listening on free loopback ports.
pub fn config(dir: &Path, routes: Vec<serde_json::Value>) -> serde_json::Value {
    json!({
        "generation": 1,
        "listen": {"https": ["127.0.0.1:0"], "http": ["127.0.0.1:0"], "admin": "127.0.0.1:0"},
        "access_log": dir.join("access.log"),
        "routes": routes,
    })
}

pub fn write(path: &Path, v: &serde_json::Value) {
    // The same atomic write the engine uses.
    let c: careplane_ingress::Config = serde_json::from_value(v.clone()).unwrap();
    careplane_ingress::write_config(path, &c).unwrap();
}

/// Plain HTTP/1.1 GET over TCP (the admin and redirect listeners).
pub async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = s.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

//! HTTP(S) over one fresh connection per run (what a user's first request costs: connect,
//! TLS handshake, request), HTTP/1.1, bodies capped.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tokio::net::TcpStream;

use crate::{Failure, Found, Result};

/// Bodies larger than this are a failure, not a memory problem.
const MAX_BODY: usize = 1 << 20;

/// `GET url`, expecting `expect_status` and, when set, `body_contains` in the body.
#[derive(Clone, Debug)]
pub struct HttpCheck {
    pub url: String,
    pub expect_status: u16,
    pub body_contains: Option<String>,
    /// Trusted for `https://` (the platform CA); required there.
    pub ca_pem: Option<String>,
    /// Sent as `Host` instead of the URL's authority (a proxy routing by name).
    pub host_header: Option<String>,
}

pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub cert_not_after: Option<i64>,
}

/// A TLS configuration per CA PEM, built once: parsing the CA per run would dominate a
/// cheap probe.
pub(crate) fn tls_for(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: Mutex<Option<HashMap<String, Arc<rustls::ClientConfig>>>> = Mutex::new(None);
    let pem = ca_pem.ok_or_else(|| {
        Failure::Unknown("an https:// probe needs the platform CA, and none was given".into())
    })?;
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(pem) {
        return Ok(c.clone());
    }
    let c = crate::client_tls(pem, &[b"http/1.1"]).map_err(Failure::Unknown)?;
    map.insert(pem.to_string(), c.clone());
    Ok(c)
}

/// Without the platform CA: Mozilla's roots (`webpki-roots`), for https endpoints
/// outside the platform such as a chat or paging service's webhook. Platform
/// endpoints are always given the platform CA, which these roots do not hold.
pub(crate) fn public_tls() -> Arc<rustls::ClientConfig> {
    static PUBLIC: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    PUBLIC
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// One request on a new connection.
pub(crate) async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    ca_pem: Option<&str>,
) -> Result<Response> {
    request_trusting(method, url, headers, body, Trust::Platform(ca_pem)).await
}

/// Whom an https request trusts.
pub(crate) enum Trust<'a> {
    /// The platform CA; none given is careplane's misconfiguration (a probe's
    /// `unknown`), never the public web's roots.
    Platform(Option<&'a str>),
    /// The given CA if any, else Mozilla's roots (notification endpoints).
    PlatformOrPublic(Option<&'a str>),
}

/// One request on a new connection, trusting `trust` for https.
pub(crate) async fn request_trusting(
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    trust: Trust<'_>,
) -> Result<Response> {
    let uri: Uri = url
        .parse()
        .map_err(|e| Failure::Unknown(format!("URL {url:?}: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(Failure::Unknown(format!(
                "URL {url:?}: not http:// or https://"
            )))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| Failure::Unknown(format!("URL {url:?}: no host")))?
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = crate::resolve(&host, port).await?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| Failure::Down(format!("connecting to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host.clone());
    let mut req = Request::builder().method(method).uri(path);
    let mut has_host = false;
    for (k, v) in headers {
        has_host |= k.eq_ignore_ascii_case("host");
        req = req.header(*k, v);
    }
    if !has_host {
        req = req.header("host", authority);
    }
    let req = req
        .header("user-agent", "careplane-probe")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Failure::Unknown(format!("building the request: {e}")))?;
    if https {
        let tls = match trust {
            Trust::Platform(ca) => tls_for(ca)?,
            Trust::PlatformOrPublic(None) => public_tls(),
            Trust::PlatformOrPublic(ca) => tls_for(ca)?,
        };
        let name = rustls::pki_types::ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|e| Failure::Unknown(format!("URL {url:?}: server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| Failure::Down(format!("TLS handshake with {host}:{port}: {e}")))?;
        let not_after = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| {
                x509_parser::parse_x509_certificate(der.as_ref())
                    .ok()
                    .map(|(_, c)| c.validity().not_after.timestamp())
            });
        let mut r = send(stream, req, url).await?;
        r.cert_not_after = not_after;
        Ok(r)
    } else {
        send(tcp, req, url).await
    }
}

async fn send<S>(stream: S, req: Request<Full<Bytes>>, url: &str) -> Result<Response>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Down(format!("{url}: {e}")))?;
    // The connection task ends with the response or when the run's timeout drops it.
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failure::Down(format!("{url}: {e}")));
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            conn.abort();
            return Err(e);
        }
    };
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await;
    conn.abort();
    let body = body
        .map_err(|e| Failure::Down(format!("{url}: reading the body: {e}")))?
        .to_bytes();
    Ok(Response {
        status,
        headers: parts.headers,
        body,
        cert_not_after: None,
    })
}

impl HttpCheck {
    pub(crate) async fn run(&self, now: Timestamp) -> Result<Found> {
        let headers: Vec<(&str, String)> = self
            .host_header
            .iter()
            .map(|h| ("host", h.clone()))
            .collect();
        let r = request(
            Method::GET,
            &self.url,
            &headers,
            None,
            self.ca_pem.as_deref(),
        )
        .await?;
        let cert_days_left = r
            .cert_not_after
            .map(|t| (t - now.as_second()).div_euclid(86_400));
        if r.status != self.expect_status {
            return Err(Failure::Down(format!(
                "GET {} answered {} (expected {})",
                self.url, r.status, self.expect_status
            )));
        }
        if let Some(want) = &self.body_contains {
            if !contains(&r.body, want.as_bytes()) {
                return Err(Failure::Down(format!(
                    "GET {}: the body does not contain {want:?}",
                    self.url
                )));
            }
        }
        if cert_days_left.is_some_and(|d| d < 0) {
            return Err(Failure::Down(format!(
                "GET {}: the certificate has expired",
                self.url
            )));
        }
        Ok(Found {
            cert_days_left,
            ..Found::default()
        })
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod public_roots_tests {
    use super::*;

    /// Without a CA the client trusts the public web's roots, and a server
    /// whose certificate comes from elsewhere (here: a throwaway CA) is refused.
    #[tokio::test]
    async fn without_a_ca_public_roots_are_trusted_and_a_private_ca_is_not() {
        assert!(public_tls().alpn_protocols == vec![b"http/1.1".to_vec()]);
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 50);
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.is_ca = rcgen::IsCa::NoCa;
        let cert = params.self_signed(&ca).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ca.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let r = request_trusting(
            Method::POST,
            &format!("https://localhost:{port}/hook"),
            &[],
            Some(b"{}".to_vec()),
            Trust::PlatformOrPublic(None),
        )
        .await;
        let e = format!(
            "{:?}",
            r.err().expect("a self-signed certificate is refused")
        );
        assert!(
            e.contains("certificate") || e.contains("Certificate"),
            "{e}"
        );
    }
}

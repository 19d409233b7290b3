//! Listeners, TLS, reload and shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::accesslog::AccessLog;
use crate::config::{self, Config};
use crate::metrics::Registry;
use crate::proxy::{self, Conn, ProxyBody};
use crate::ratelimit::Limiter;
use crate::snapshot::{self, RouteIds, Snapshot};
use crate::Error;

/// Everything the connections share; the routes are one swappable snapshot.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    ids: RouteIds,
    pub(crate) registry: Registry,
    pub(crate) limiter: Limiter,
    pub(crate) log: AccessLog,
    config_path: PathBuf,
    last_error: Mutex<Option<String>>,
    request_seq: AtomicU64,
    id_prefix: u32,
    /// The first HTTPS listener's bound port, for redirects.
    pub(crate) https_port: u16,
}

impl Shared {
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn next_request_id(&self) -> HeaderValue {
        let n = (u64::from(self.id_prefix) << 32)
            | u64::from(self.request_seq.fetch_add(1, Relaxed) as u32);
        let mut hex = [0u8; 16];
        for (i, b) in hex.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[(n >> (60 - 4 * i)) as usize & 0xf];
        }
        HeaderValue::from_bytes(&hex).expect("hex digits")
    }

    /// Rereads the configuration file; on any error the routes in use stay.
    fn reload(&self) -> Result<u64, String> {
        let result = (|| {
            let config = config::parse_file(&self.config_path).map_err(|e| e.to_string())?;
            let old = self.current();
            if config.listen != old.config.listen || config.workers != old.config.workers {
                return Err(format!(
                    "{}: listen addresses and workers are fixed while the proxy runs; \
                     restart it to change them (routes not reloaded)",
                    self.config_path.display()
                ));
            }
            let snap = snapshot::build(&self.config_path, config, &self.ids, &self.registry)
                .map_err(|e| e.to_string())?;
            // Also after a rotation (same path, new file).
            self.log.reopen(snap.config.access_log.as_deref())?;
            let generation = snap.config.generation;
            *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
            Ok(generation)
        })();
        match &result {
            Ok(_) => {
                self.registry.reloads_ok.fetch_add(1, Relaxed);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => {
                self.registry.reloads_failed.fetch_add(1, Relaxed);
                eprintln!("careplane-ingress: reload refused: {e}");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
            }
        }
        result
    }

    fn status_json(&self) -> String {
        let snap = self.current();
        let mut hosts: Vec<&String> = snap.routes.keys().collect();
        hosts.sort();
        serde_json::json!({
            "generation": snap.config.generation,
            "routes": hosts,
            "last_reload_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
        })
        .to_string()
    }
}

/// Finds the certificate for the SNI name in the current snapshot.
#[derive(Debug)]
struct SniResolver(std::sync::Weak<Shared>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let shared = self.0.upgrade()?;
        let name = hello.server_name()?.to_ascii_lowercase();
        shared.current().certs.get(&name).cloned()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

/// A running proxy (in this process).
pub struct Running {
    shared: Arc<Shared>,
    pub https: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Rereads the configuration file, as SIGHUP does; returns the generation
    /// now in use.
    pub fn reload(&self) -> Result<u64, String> {
        self.shared.reload()
    }

    /// Waits until every access log line so far is written.
    pub fn flush_log(&self) {
        self.shared.log.flush();
    }

    /// Stops accepting, lets open requests finish (up to 10 s), then returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.done).await;
        self.shared.log.flush();
    }
}

impl Drop for Running {
    /// The worker threads are not tied to the caller's runtime: a proxy
    /// dropped without `shutdown` must still stop them.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Loads and fully checks a configuration file: what a reload would accept.
pub fn load_config(path: &Path) -> Result<Config, Error> {
    let config = config::parse_file(path)?;
    let snap = snapshot::build(path, config, &RouteIds::default(), &Registry::default())?;
    Ok(snap.config)
}

fn bind(
    addrs: &[SocketAddr],
    path: &Path,
    what: &str,
) -> Result<Vec<std::net::TcpListener>, Error> {
    let mut out = Vec::new();
    for a in addrs {
        let l = std::net::TcpListener::bind(a)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::Io {
                path: path.to_owned(),
                what: "binding a listener",
                source: std::io::Error::new(e.kind(), format!("{what} {a}: {e}")),
            })?;
        out.push(l);
    }
    Ok(out)
}

/// One listening socket per worker on each of `addrs`, all with `SO_REUSEPORT`,
/// so the kernel spreads new connections over the workers by hash instead of
/// letting whichever worker wakes first take a burst of them (measured: p99
/// tripled under load with one shared socket). A port of 0 is resolved by
/// the first socket and reused by the others. Result: `[worker][address]`.
fn bind_per_worker(
    addrs: &[SocketAddr],
    workers: usize,
    path: &Path,
    what: &str,
) -> Result<Vec<Vec<std::net::TcpListener>>, Error> {
    let mut out: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for a in addrs {
        let mut at = *a;
        for set in out.iter_mut() {
            let l = (|| {
                let s = if at.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                s.set_reuseaddr(true)?;
                s.set_reuseport(true)?;
                s.bind(at)?;
                let l = s.listen(1024)?;
                at = l.local_addr()?;
                let l = l.into_std()?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })()
            .map_err(|e| Error::Io {
                path: path.to_owned(),
                what: "binding a listener",
                source: std::io::Error::new(e.kind(), format!("{what} {a}: {e}")),
            })?;
            set.push(l);
        }
    }
    Ok(out)
}

/// Starts the proxy: the admin listener on the current Tokio runtime, the
/// HTTPS and HTTP listeners on worker threads of their own.
///
/// Each worker is a single-threaded runtime with its own upstream connection
/// pool, accepting from its own `SO_REUSEPORT` sockets on the same addresses
/// (as nginx's workers do with `reuseport`): a request never changes threads. Tokio's work-stealing
/// runtime spent a measurable share of the proxy's CPU waking and parking
/// workers and handing tasks between them.
pub async fn start(config_path: &Path) -> Result<Running, Error> {
    let config = config::parse_file(config_path)?;
    let ids = RouteIds::default();
    let registry = Registry::default();
    let snap = snapshot::build(config_path, config, &ids, &registry)?;
    let log = AccessLog::start(snap.config.access_log.as_deref())?;

    let workers = snap
        .config
        .workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
        .max(1);
    let mut https = bind_per_worker(&snap.config.listen.https, workers, config_path, "https")?;
    let mut http = bind_per_worker(&snap.config.listen.http, workers, config_path, "http")?;
    let admin = bind(snap.config.listen.admin.as_slice(), config_path, "admin")?;
    let connect_timeout = Duration::from_millis(snap.config.defaults.upstream_connect_timeout_ms);

    let id_prefix = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() as u32
    };
    let shared = Arc::new(Shared {
        snapshot: RwLock::new(Arc::new(snap)),
        ids,
        registry,
        limiter: Limiter::default(),
        log,
        config_path: config_path.to_owned(),
        last_error: Mutex::new(None),
        request_seq: AtomicU64::new(0),
        id_prefix,
        https_port: addrs(&https[0]).first().map_or(443, |a| a.port()),
    });

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(SniResolver(Arc::downgrade(&shared))));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let running_https = addrs(&https[0]);
    let running_http = addrs(&http[0]);
    let running_admin = addrs(&admin).first().copied();
    let (stop, stop_rx) = watch::channel(false);

    let mut finished = Vec::new();
    for i in 0..workers {
        let listeners = (std::mem::take(&mut https[i]), std::mem::take(&mut http[i]));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                path: config_path.to_owned(),
                what: "starting a worker's async runtime",
                source: e,
            })?;
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let worker = Worker {
            shared: shared.clone(),
            acceptor: acceptor.clone(),
            stop: stop_rx.clone(),
            connect_timeout,
        };
        std::thread::Builder::new()
            .name(format!("ingress-{i}"))
            .spawn(move || {
                rt.block_on(worker.run(listeners.0, listeners.1));
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Io {
                path: config_path.to_owned(),
                what: "starting a worker thread",
                source: e,
            })?;
        finished.push(done_rx);
    }
    drop((https, http));

    let mut tasks = tokio::task::JoinSet::new();
    for l in admin {
        let l = TcpListener::from_std(l).map_err(|e| Error::Io {
            path: config_path.to_owned(),
            what: "registering the admin listener",
            source: e,
        })?;
        tasks.spawn(accept_admin(l, shared.clone(), stop_rx.clone()));
    }
    {
        let shared = shared.clone();
        let mut stop_rx = stop_rx.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => shared.limiter.prune(Instant::now(), Duration::from_secs(600)),
                    _ = stop_rx.changed() => return,
                }
            }
        });
    }
    let done = tokio::spawn(async move {
        while tasks.join_next().await.is_some() {}
        // Each worker stops accepting, then waits (up to 10 s) for its open
        // connections; a worker that panicked drops its sender.
        for f in finished {
            let _ = f.await;
        }
    });
    Ok(Running {
        shared,
        https: running_https,
        http: running_http,
        admin: running_admin,
        stop,
        done,
    })
}

/// One worker thread: accepts on every HTTPS and HTTP listener and serves
/// what it accepted, forwarding through its own upstream pool.
struct Worker {
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    stop: watch::Receiver<bool>,
    connect_timeout: Duration,
}

/// The pooled keep-alive client to the upstreams; one per worker.
pub(crate) type Upstreams = Client<HttpConnector, ProxyBody>;

impl Worker {
    async fn run(self, https: Vec<std::net::TcpListener>, http: Vec<std::net::TcpListener>) {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        let client: Upstreams = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .set_host(false)
            .build(connector);
        let graceful = Arc::new(GracefulShutdown::new());
        let mut tasks = tokio::task::JoinSet::new();
        let register = |l: std::net::TcpListener| match TcpListener::from_std(l) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("careplane-ingress: a worker could not use a listener: {e}");
                None
            }
        };
        for l in https.into_iter().filter_map(register) {
            tasks.spawn(accept_https(
                l,
                self.acceptor.clone(),
                self.shared.clone(),
                client.clone(),
                graceful.clone(),
                self.stop.clone(),
            ));
        }
        for l in http.into_iter().filter_map(register) {
            tasks.spawn(accept_http(
                l,
                self.shared.clone(),
                graceful.clone(),
                self.stop.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
        // Accepting has stopped; wait for open connections to finish.
        if let Ok(g) = Arc::try_unwrap(graceful) {
            let _ = tokio::time::timeout(Duration::from_secs(10), g.shutdown()).await;
        }
    }
}

fn addrs(ls: &[std::net::TcpListener]) -> Vec<SocketAddr> {
    ls.iter().filter_map(|l| l.local_addr().ok()).collect()
}

fn conn_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // One buffer for a response's head and first body bytes, so TLS
        // sends them as one record (one seal, one write) rather than two.
        .writev(false)
        // Slow clients may not hold a connection open by trickling headers.
        .header_read_timeout(Duration::from_secs(30))
        // Room for the per-route header limit, which is checked per request
        // (431); hyper answers 431 itself above this.
        .max_buf_size(1 << 20);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(1 << 20)
        .max_concurrent_streams(250);
    b
}

async fn accept_https(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    client: Upstreams,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(conn_builder());
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let client = client.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        shared.registry.tls_handshake_failures.fetch_add(1, Relaxed);
                        return;
                    }
                };
            let sni = tls
                .get_ref()
                .1
                .server_name()
                .map(|s| s.to_ascii_lowercase());
            let forwarded_for =
                HeaderValue::from_str(&peer.ip().to_string()).expect("an address is ASCII");
            let conn = Arc::new(Conn {
                peer,
                sni,
                forwarded_for,
                client,
            });
            let svc_shared = shared.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let conn = conn.clone();
                let shared = svc_shared.clone();
                async move { Ok::<_, Infallible>(proxy::handle(req, conn, shared).await) }
            });
            shared.registry.connections_open.fetch_add(1, Relaxed);
            let c = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .into_owned();
            let _ = watcher.watch(c).await;
            shared.registry.connections_open.fetch_sub(1, Relaxed);
        });
    }
}

async fn accept_http(
    listener: TcpListener,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(conn_builder());
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(proxy::redirect(req, peer, shared).await) }
            });
            let c = builder
                .serve_connection(TokioIo::new(tcp), svc)
                .into_owned();
            let _ = watcher.watch(c).await;
        });
    }
}

async fn accept_admin(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(admin(req, &shared)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn admin(req: Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            let snap = shared.current();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let text = shared
                .registry
                .render(snap.config.generation, &snap.expiries(), now);
            (StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/status" => (StatusCode::OK, "application/json", shared.status_json()),
        "/health" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut r = Response::new(proxy::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Runs the proxy described by `config_path` until SIGTERM or SIGINT,
/// rereading the file on SIGHUP. What `careplane ingress-run` calls.
pub fn serve(config_path: &Path) -> Result<(), Error> {
    // Signals and the admin listener only; requests are served by the
    // worker threads `start` spawns.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            path: config_path.to_owned(),
            what: "starting the async runtime",
            source: e,
        })?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let sig = |k| {
            signal(k).map_err(|e| Error::Io {
                path: config_path.to_owned(),
                what: "installing signal handlers",
                source: e,
            })
        };
        let (mut hup, mut term, mut int) = (
            sig(SignalKind::hangup())?,
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
        );
        let running = start(config_path).await?;
        eprintln!(
            "careplane-ingress: generation {} listening https={:?} http={:?} admin={:?}",
            running.shared.current().config.generation,
            running.https,
            running.http,
            running.admin
        );
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let shared = running.shared.clone();
                    if let Ok(Ok(g)) = tokio::task::spawn_blocking(move || shared.reload()).await {
                        eprintln!("careplane-ingress: reloaded generation {g}");
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        running.shutdown().await;
        Ok(())
    })
}

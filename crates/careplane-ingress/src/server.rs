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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::accesslog::AccessLog;
use crate::config::{self, Config};
use crate::metrics::Registry;
use crate::proxy::{self, Conn, ProxyBody};
use crate::ratelimit::Limiter;
use crate::snapshot::{self, RouteIds, Snapshot};
use crate::upstream::{self, Upstreams};
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

/// Starts the proxy: the admin listener on the current Tokio runtime, the
/// HTTPS and HTTP listeners on worker threads of their own.
///
/// Each worker is a single-threaded runtime with its own upstream connection
/// pool: a request never changes threads (Tokio's work-stealing runtime spent
/// a measurable share of the proxy's CPU waking and parking workers and
/// handing tasks between them). One acceptor task, on the caller's runtime,
/// hands accepted connections to the workers in turn, so each serves the
/// same number: workers accepting for themselves, from one shared socket or
/// from `SO_REUSEPORT` sockets (the kernel spreads by hash), split a burst
/// of connections unevenly and the busier worker's queue set the p99
/// (measured: 3.1x and 1.7x nginx's). The hand-over costs one channel send
/// and a reactor re-registration per connection, not per request.
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
    let https = bind(&snap.config.listen.https, config_path, "https")?;
    let http = bind(&snap.config.listen.http, config_path, "http")?;
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
        https_port: addrs(&https).first().map_or(443, |a| a.port()),
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

    let running_https = addrs(&https);
    let running_http = addrs(&http);
    let running_admin = addrs(&admin).first().copied();
    let (stop, stop_rx) = watch::channel(false);

    let mut finished = Vec::new();
    let mut https_tx = Vec::with_capacity(workers);
    let mut http_tx = Vec::with_capacity(workers);
    for i in 0..workers {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Look for I/O every 8 task polls (Tokio's default is 61): under
            // a saturating load a ready socket then waits behind fewer
            // requests, which is the tail latency the benchmark measures.
            .event_interval(8)
            .build()
            .map_err(|e| Error::Io {
                path: config_path.to_owned(),
                what: "starting a worker's async runtime",
                source: e,
            })?;
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (stx, srx) = mpsc::unbounded_channel::<Accepted>();
        let (htx, hrx) = mpsc::unbounded_channel::<Accepted>();
        https_tx.push(stx);
        http_tx.push(htx);
        let worker = Worker {
            shared: shared.clone(),
            acceptor: acceptor.clone(),
            stop: stop_rx.clone(),
            connect_timeout,
        };
        std::thread::Builder::new()
            .name(format!("ingress-{i}"))
            .spawn(move || {
                rt.block_on(worker.run(srx, hrx));
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Io {
                path: config_path.to_owned(),
                what: "starting a worker thread",
                source: e,
            })?;
        finished.push(done_rx);
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (ls, txs) in [(https, https_tx), (http, http_tx)] {
        let txs = Arc::new(txs);
        for l in ls {
            let l = TcpListener::from_std(l).map_err(|e| Error::Io {
                path: config_path.to_owned(),
                what: "registering a listener",
                source: e,
            })?;
            tasks.spawn(hand_out(l, txs.clone(), stop_rx.clone()));
        }
    }
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

impl Worker {
    async fn run(
        self,
        mut https: mpsc::UnboundedReceiver<Accepted>,
        mut http: mpsc::UnboundedReceiver<Accepted>,
    ) {
        let client = Upstreams::new(self.connect_timeout);
        let mut sweep = tokio::time::interval(upstream::IDLE_TIMEOUT / 3);
        let graceful = GracefulShutdown::new();
        let builder = Arc::new(conn_builder());
        let mut stop = self.stop.clone();
        let (mut https_open, mut http_open) = (true, true);
        while https_open || http_open {
            tokio::select! {
                c = https.recv(), if https_open => match c {
                    Some((tcp, peer)) => match TcpStream::from_std(tcp) {
                        Ok(tcp) => serve_https(
                            tcp,
                            peer,
                            self.acceptor.clone(),
                            self.shared.clone(),
                            client.clone(),
                            builder.clone(),
                            &graceful,
                        ),
                        Err(e) => eprintln!("careplane-ingress: a worker could not take a connection: {e}"),
                    },
                    None => https_open = false,
                },
                c = http.recv(), if http_open => match c {
                    Some((tcp, peer)) => {
                        if let Ok(tcp) = TcpStream::from_std(tcp) {
                            serve_http(tcp, peer, self.shared.clone(), builder.clone(), &graceful);
                        }
                    }
                    None => http_open = false,
                },
                _ = sweep.tick() => client.sweep(),
                _ = stop.changed() => break,
            }
        }
        // Accepting has stopped; wait for open connections to finish.
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    }
}

/// An accepted connection on its way to a worker (taken off the acceptor's
/// reactor, to be registered with the worker's).
type Accepted = (std::net::TcpStream, SocketAddr);

/// Accepts on `listener` and hands each connection to the next worker in
/// turn, until stopped (dropping the senders then ends the workers' loops).
async fn hand_out(
    listener: TcpListener,
    workers: Arc<Vec<mpsc::UnboundedSender<Accepted>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let Ok(tcp) = tcp.into_std() else { continue };
        // A worker that has gone (it panicked) is skipped; with none left
        // the connection is dropped.
        let mut item = (tcp, peer);
        for _ in 0..workers.len() {
            let w = &workers[next % workers.len()];
            next = next.wrapping_add(1);
            match w.send(item) {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => item = back,
            }
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

/// Serves one accepted HTTPS connection on the current worker.
fn serve_https(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    client: Upstreams,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
) {
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
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

/// Serves one accepted plain-HTTP connection (redirects) on the current worker.
fn serve_http(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
) {
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

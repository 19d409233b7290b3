//! `careplane serve` (issue 17, docs/design/0012-serve-and-probes.md): one long-running
//! process per platform that probes every environment (`careplane-probe`), keeps the results
//! in the SLA store (`careplane-sla`'s `Store` under `<dataDir>/sla`, acknowledged once
//! flushed), opens and follows incidents, and answers a token-protected REST API (with
//! `/openapi.json` generated from the handlers) and `/metrics`.
//!
//! It calls the engine as the CLI does (`status`, `credentials`) and holds no engine logic.
//! Files it owns under `<dataDir>/serve/`: `tokens.json` (hashed API tokens),
//! `incidents.json`, and their lock files.

mod api;
mod authz;
mod backups;
pub mod calendar;
pub mod incidents;
pub mod mail;
mod metrics;
pub mod notify;
mod probes;
pub mod report;
pub mod slo;
pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use careplane_engine::{Engine, EngineError};
pub use careplane_probe::schedule::{scaled_clock, system_clock, Clock};

/// Everything this crate refuses or fails at, naming the file, object or address.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no such {0}")]
    NotFound(String),
    #[error(transparent)]
    Sla(#[from] careplane_sla::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An exclusive `flock` on `<dataDir>/serve/<name>.lock`, released on drop.
pub struct Lock(#[allow(dead_code)] std::fs::File);

/// Takes the lock `name`, waiting at most 10 s (its holders keep it for one file update).
pub fn lock(data_dir: &Path, name: &str) -> Result<Lock, Error> {
    try_lock(data_dir, name, Duration::from_secs(10))?.ok_or_else(|| Error::File {
        path: data_dir.join("serve").join(format!("{name}.lock")),
        message: "still locked after 10 s by another careplane process".into(),
    })
}

fn try_lock(data_dir: &Path, name: &str, wait: Duration) -> Result<Option<Lock>, Error> {
    use std::os::fd::AsRawFd;
    let dir = data_dir.join("serve");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let p = dir.join(format!("{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(Lock(f)));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(Error::io(&p, e));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How `careplane serve` runs.
#[derive(Clone)]
pub struct Options {
    /// Loopback by default.
    pub listen: SocketAddr,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Probe runs in flight at most.
    pub concurrency: usize,
    /// How often the environment list is re-read from the engine.
    pub refresh: Duration,
    /// The time results are stamped with.
    pub clock: Clock,
    /// Serve HTTPS (rustls, ring) instead of HTTP.
    pub tls: Option<Tls>,
    /// How often to run what is due of the backup policies (as `careplane backup
    /// run-due`); zero: not at all (cron or a systemd timer runs it).
    pub backups_every: Duration,
}

impl Options {
    pub fn new(listen: SocketAddr) -> Options {
        Options {
            listen,
            probe_interval: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(10),
            concurrency: 64,
            refresh: Duration::from_secs(60),
            clock: system_clock(),
            tls: None,
            backups_every: Duration::from_secs(60),
        }
    }
}

/// Runs the server until SIGTERM or SIGINT; then flushes and compacts the store.
pub fn run(engine: Engine, opts: Options) -> Result<(), Error> {
    let data_dir = engine.data_dir().to_path_buf();
    let _single = try_lock(&data_dir, "serve", Duration::ZERO)?.ok_or_else(|| Error::File {
        path: data_dir.join("serve").join("serve.lock"),
        message: "another careplane serve runs for this platform".into(),
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the runtime: {e}")))?;
    rt.block_on(serve(Arc::new(engine), opts))
}

async fn serve(engine: Arc<Engine>, opts: Options) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: opts.listen,
            source,
        })?;
    let tls = opts.tls.as_ref().map(tls_config).transpose()?;
    let state = probes::State::open(engine, &opts)?;
    let tasks = probes::start(state.clone(), &opts);
    let backups = backups::start(state.engine.clone(), opts.backups_every);
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("careplane serve: listening on {scheme}://{}", opts.listen);
    let app = api::router(state.clone());
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    };
    let r = match tls {
        None => axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Invalid(format!("serving: {e}"))),
        Some(cfg) => {
            serve_tls(listener, app, cfg, shutdown).await;
            Ok(())
        }
    };
    if let Some(b) = backups {
        // A run in progress finishes on its blocking thread before the runtime ends.
        b.abort();
    }
    tasks.stop().await;
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.close())
        .await
        .map_err(|e| Error::Invalid(format!("closing the store: {e}")))??;
    eprintln!("careplane serve: stopped; results flushed and compacted");
    r
}

/// Where the API's certificate comes from.
#[derive(Clone)]
pub enum Tls {
    /// PEM files given by the operator (`--tls-cert`, `--tls-key`).
    Files(PathBuf, PathBuf),
    /// Issued by the platform CA at start (`--tls-platform-ca`), held in memory only.
    Pem {
        cert: String,
        key: secrecy::SecretString,
    },
}

/// The server's rustls configuration (ring provider, HTTP/1.1).
fn tls_config(tls: &Tls) -> Result<Arc<rustls::ServerConfig>, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use secrecy::ExposeSecret;
    let (cert, cert_pem, key, key_pem): (PathBuf, String, PathBuf, secrecy::SecretString) =
        match tls {
            Tls::Files(c, k) => (
                c.clone(),
                std::fs::read_to_string(c).map_err(|e| Error::io(c, e))?,
                k.clone(),
                secrecy::SecretString::from(
                    std::fs::read_to_string(k).map_err(|e| Error::io(k, e))?,
                ),
            ),
            Tls::Pem { cert, key } => (
                PathBuf::from("(platform CA certificate)"),
                cert.clone(),
                PathBuf::from("(platform CA certificate key)"),
                key.clone(),
            ),
        };
    let cert = cert.as_path();
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::File {
            path: cert.into(),
            message: format!("reading the certificate chain: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::File {
            path: cert.into(),
            message: "holds no certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose_secret().as_bytes()).map_err(|e| {
        Error::File {
            path: key.clone(),
            message: format!("reading the private key: {e}"),
        }
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Invalid(format!("TLS versions: {e}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| Error::File {
        path: cert.into(),
        message: format!("certificate and key do not make a server identity: {e}"),
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// HTTPS: a TLS handshake (10 s at most) per connection, then HTTP/1.1 into the router.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    cfg: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            // What `into_make_service_with_connect_info` gives the plain
            // listener: the client's address for the rate limits.
            let app = app.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// A hardened systemd unit running `careplane serve` for the specs in `files`.
pub fn systemd_unit(exe: &Path, files: &[PathBuf], data_dir: &Path, listen: SocketAddr) -> String {
    let files: Vec<String> = files
        .iter()
        .map(|f| {
            let f = std::path::absolute(f).unwrap_or(f.clone());
            format!("-f {}", f.display())
        })
        .collect();
    format!(
        "[Unit]
Description=careplane serve: probes, SLA store, incidents and API
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe} serve {files} --listen {listen}
Restart=on-failure
RestartSec=5
# Passwords of SMTP notification channels (their `passwordEnv`), as NAME=value lines in a
# root-owned 0600 file; never in the specs. Optional.
EnvironmentFile=-/etc/careplane/serve.env
# SIGTERM flushes and compacts the result store.
KillSignal=SIGTERM
TimeoutStopSec=30
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={data}
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
# Reading state and liveness of the platform's own processes (kill(pid, 0)) is all it needs.
CapabilityBoundingSet=CAP_KILL CAP_DAC_READ_SEARCH
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
",
        exe = exe.display(),
        files = files.join(" "),
        data = data_dir.display(),
    )
}

//! The platform's HTTPS proxy (`careplane-ingress`, docs/design/0006-ingress.md)
//! as a resource: certificates from the platform CA (renewed in their last
//! 30 days), the configuration file, and the `careplane ingress-run` process
//! under a `careplane supervise` of its own (restarted when it dies),
//! reloaded with SIGHUP when routes change or an environment goes into
//! maintenance, and confirmed through the admin listener's `/status`.
//!
//! The ingress directory is root's (the supervisor writes its pid, status
//! and logs there); the proxy's user owns only `certs/` and `var/` (the
//! access log).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use careplane_engine::{crash_point, Action, Op};
use careplane_local::pki;
use careplane_local::system::{self, ServiceUser};
use careplane_model::{IngressObserved, IngressProps, Observed};
use careplane_state::{ResourceRecord, ResourceStatus};
use serde_json::{json, Value};

use crate::resources::{remove_dir, Host};
use crate::runtime::*;
use crate::{Error as EngineError, LocalDriver};

pub(crate) const CONFIG_FILE: &str = "ingress.json";
const SUPERVISOR_SPEC: &str = "supervisor.json";
/// The proxy's process name in its supervisor (and its log, `logs/proxy.log`).
const PROCESS: &str = "proxy";
/// What versions before the supervisor recorded for a detached proxy.
const LEGACY_PID_FILE: &str = "ingress.pid";
/// The proxy's own writable directory (the access log).
const VAR_DIR: &str = "var";
/// How long a started or reloaded proxy has to report the new generation.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping proxy gets to finish open requests.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Secret name of a host's private key (one per route).
fn key_secret(host: &str) -> String {
    format!("{TLS_KEY}:{host}")
}

/// Whether `pid` is alive and runs `careplane ingress-run` (a recycled pid
/// must never get our signals).
fn is_proxy(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    careplane_sys::pid_alive(pid) && cmdline.split(|b| *b == 0).any(|a| a == b"ingress-run")
}

/// The running proxy's pid, as its supervisor reports it (or a detached one
/// an older version started).
pub(crate) fn proxy_pid(root: &Path) -> Option<u32> {
    careplane_odoo::read_status(root)
        .ok()
        .flatten()
        .and_then(|s| s.processes.into_iter().find(|p| p.name == PROCESS))
        .and_then(|p| p.pid)
        .filter(|&pid| is_proxy(pid))
        .or_else(|| legacy_pid(root))
}

/// Whether something keeps the proxy running: its supervisor, or a
/// detached proxy of an older version.
pub(crate) fn proxy_kept(root: &Path) -> bool {
    careplane_odoo::supervisor_pid(root).is_some() || legacy_pid(root).is_some()
}

fn legacy_pid(root: &Path) -> Option<u32> {
    let pid = std::fs::read_to_string(root.join(LEGACY_PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_proxy(pid).then_some(pid)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill takes plain integers; the pid was checked to be ours.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Stops the proxy: its supervisor sends SIGTERM and waits for open
/// requests to finish (SIGKILL after [`STOP_TIMEOUT`]); a detached proxy of
/// an older version is stopped the same way by hand.
pub(crate) fn stop_proxy(root: &Path) -> Result<(), EngineError> {
    if let Some(pid) = legacy_pid(root) {
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while careplane_sys::pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if careplane_sys::pid_alive(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(root.join(LEGACY_PID_FILE));
    careplane_odoo::stop_supervisor(root, STOP_TIMEOUT)?;
    Ok(())
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Io { what, source }
}

/// `GET /status` on the admin listener: (generation, last reload error).
fn admin_status(port: u16) -> Option<(u64, Option<String>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let body = &text[text.find("\r\n\r\n")? + 4..];
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    Some((
        v["generation"].as_u64()?,
        v["last_reload_error"].as_str().map(str::to_string),
    ))
}

fn log_path(root: &Path) -> PathBuf {
    root.join("logs").join(format!("{PROCESS}.log"))
}

fn log_tail(root: &Path) -> String {
    let text = std::fs::read_to_string(log_path(root)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Starts `careplane supervise` for the proxy (detached; it runs
/// `careplane ingress-run <config>` as the service user when careplane is
/// root, and restarts it when it dies) and returns the supervisor's pid.
fn spawn_proxy(
    root: &Path,
    admin_port: u16,
    user: Option<&ServiceUser>,
) -> Result<u32, EngineError> {
    let spec = careplane_odoo::SupervisorSpec {
        name: "ingress".into(),
        dir: root.to_path_buf(),
        processes: vec![careplane_odoo::ProcessSpec {
            name: PROCESS.into(),
            // The running binary itself, as the supervisor sees it (see
            // `spawn_odoo_env`): no path under a home directory the service
            // user cannot enter.
            argv: vec![
                "/proc/self/exe".into(),
                "ingress-run".into(),
                root.join(CONFIG_FILE).display().to_string(),
            ],
            env_file: None,
            health: Some(careplane_odoo::HealthCheck {
                port: admin_port,
                path: "/status".into(),
            }),
        }],
        user: user.map(|u| (u.uid, u.gid)),
        settings: careplane_odoo::SupervisorSettings {
            // A proxy starts in milliseconds: come back fast, then back off.
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            grace_period_ms: STOP_TIMEOUT.as_millis() as u64,
            ..Default::default()
        },
        env_on_stdin: false,
    };
    let spec_file = root.join(SUPERVISOR_SPEC);
    spec.save(&spec_file)?;
    let pid = careplane_odoo::spawn_supervisor(
        Path::new("/proc/self/exe"),
        &[
            std::ffi::OsString::from("supervise"),
            spec_file.into_os_string(),
        ],
        root,
    )?;
    Ok(pid)
}

/// Waits until the proxy at `admin_port` reports `generation`.
fn wait_generation(root: &Path, admin_port: u16, generation: u64) -> Result<(), EngineError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = None;
    loop {
        if !proxy_kept(root) {
            return Err(EngineError::inconsistent(format!(
                "the ingress proxy's supervisor exited before the proxy was up; the end of {}:\n{}",
                log_path(root).display(),
                log_tail(root)
            )));
        }
        if let Some((g, err)) = admin_status(admin_port) {
            if g == generation {
                return Ok(());
            }
            if let Some(e) = err {
                last = Some(e);
            }
        }
        if Instant::now() > deadline {
            return Err(EngineError::inconsistent(format!(
                "the ingress proxy did not load configuration generation {generation} within {}s{}; \
                 the end of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                last.map(|e| format!(": {e}")).unwrap_or_default(),
                log_path(root).display(),
                log_tail(root)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` ports that differ from each other and from `taken`.
fn free_ports(n: usize, taken: &[u16]) -> Result<Vec<u16>, EngineError> {
    Ok(system::free_ports(n + taken.len())?
        .into_iter()
        .filter(|p| !taken.contains(p))
        .take(n)
        .collect())
}

impl LocalDriver {
    pub(crate) fn ensure_ingress(
        &mut self,
        a: &Action,
        host: &mut Host,
    ) -> Result<(), EngineError> {
        let p: IngressProps = typed(&a.id, &a.props)?;
        let fixed: Vec<u16> = [p.https_port, p.http_port].into_iter().flatten().collect();
        let mut rec = self.prepare(a, |dir| {
            let free = free_ports(3, &fixed)?;
            Ok(json!({
                "root": dir.join("ingress").display().to_string(),
                "httpsPort": p.https_port.unwrap_or(free[0]),
                "httpPort": p.http_port.unwrap_or(free[1]),
                "adminPort": free[2],
                "generation": 0,
            }))
        })?;
        if a.op == Op::Create {
            crash_point(&a.id, "prepared");
        }
        let mut o: IngressObserved = Observed::ingress(&a.id, &rec.observed)?;
        // A port the spec now fixes replaces the allocated one; listeners
        // are fixed for a process's life, so that takes a restart.
        let mut restart = false;
        for (want, have, key) in [
            (p.https_port, &mut o.https_port, "httpsPort"),
            (p.http_port, &mut o.http_port, "httpPort"),
        ] {
            if let Some(w) = want.filter(|w| w != have) {
                *have = w;
                rec.observed[key] = json!(w);
                restart = true;
            }
        }
        let old: Option<IngressProps> = (a.op == Op::Update)
            .then(|| typed(&a.id, &rec.props).ok())
            .flatten();
        if old.as_ref().is_some_and(|old| old.listen != p.listen) {
            restart = true;
        }
        let user = self.user(host)?;
        let owner = user.as_ref().map(|u| (u.uid, u.gid));
        let root = o.root.clone();
        // Root's: the supervisor writes its pid, status and logs here.
        make_dir(&root, 0o755, Some((0, 0)).filter(|_| owner.is_some()))?;
        let certs = root.join("certs");
        make_dir(&certs, 0o750, owner)?;
        make_dir(&root.join(VAR_DIR), 0o750, owner)?;

        let all = self.store()?.resources()?;
        let mut routes = Vec::new();
        for r in &p.routes {
            let env = crate::resources::ready(&all, &r.env)?;
            let eo = Observed::odoo_env(&env.id, &env.observed)?;
            let (cert, key) = match p.certificates.iter().find(|c| c.host == r.host) {
                Some(own) => operator_cert(&a.id, own)?,
                None => self.host_cert(&mut rec, &r.host)?,
            };
            let cert_file = certs.join(format!("{}.crt", r.host));
            let key_file = certs.join(format!("{}.key", r.host));
            careplane_sys::atomic_write(&cert_file, cert.as_bytes(), 0o644, owner)
                .map_err(io(format!("writing {}", cert_file.display())))?;
            careplane_sys::atomic_write(
                &key_file,
                careplane_state::ExposeSecret::expose_secret(&key).as_bytes(),
                0o600,
                owner,
            )
            .map_err(io(format!("writing {}", key_file.display())))?;
            routes.push(careplane_ingress::Route {
                host: r.host.clone(),
                upstream: careplane_ingress::Upstream {
                    http: eo.http_port,
                    websocket: crate::odoo::evented_port(&env.props, &env.observed),
                },
                tls: careplane_ingress::TlsFiles {
                    cert: cert_file,
                    key: key_file,
                },
                admin_paths: p.admin_paths.clone(),
                admin_allow: p.admin_allow.clone(),
                // An apply ends any maintenance an interrupted operation left on.
                maintenance: false,
                limits: None,
                content_security_policy: None,
            });
        }
        let ip: IpAddr = p.listen.parse().map_err(|_| {
            EngineError::inconsistent(format!("{}: listen {:?} is not an address", a.id, p.listen))
        })?;
        let config = careplane_ingress::Config {
            generation: o.generation + 1,
            listen: careplane_ingress::Listen {
                https: vec![SocketAddr::new(ip, o.https_port)],
                http: vec![SocketAddr::new(ip, o.http_port)],
                admin: Some(SocketAddr::from(([127, 0, 0, 1], o.admin_port))),
            },
            public_https_port: Some(o.https_port),
            access_log: Some(root.join(VAR_DIR).join("access.log")),
            workers: Some(2),
            defaults: careplane_ingress::Limits::default(),
            routes,
        };
        self.write_and_load(&mut rec, &o, config, owner, restart, user.as_ref())?;
        self.finish(a, rec)
    }

    /// Writes `config` (its generation recorded first), has the proxy load
    /// it — SIGHUP, or a (re)start when `restart` or nothing runs — and
    /// waits until it reports that generation.
    fn write_and_load(
        &mut self,
        rec: &mut ResourceRecord,
        o: &IngressObserved,
        config: careplane_ingress::Config,
        owner: Option<(u32, u32)>,
        restart: bool,
        user: Option<&ServiceUser>,
    ) -> Result<(), EngineError> {
        let root = &o.root;
        let generation = config.generation;
        // The generation is recorded before the file says it, so a rerun
        // never writes the same number twice for different contents.
        rec.observed["generation"] = json!(generation);
        self.store()?.put_resource(rec)?;
        let path = root.join(CONFIG_FILE);
        careplane_ingress::write_config(&path, &config).map_err(ingress_err)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io(format!(
                "handing {} to the proxy's user",
                path.display()
            )))?;
        }
        // The proxy's own full check (certificates loaded and matched), so a
        // bad file is refused here rather than by a running proxy.
        careplane_ingress::load_config(&path).map_err(ingress_err)?;
        crash_point(&rec.id, "configured");
        if restart || (careplane_odoo::supervisor_pid(root).is_none() && legacy_pid(root).is_some())
        {
            // New listeners, or a detached proxy of an older version that
            // goes under a supervisor now.
            stop_proxy(root)?;
        }
        match proxy_pid(root) {
            Some(pid) => signal(pid, libc::SIGHUP),
            // A supervisor with its proxy in backoff starts it again with
            // the new file by itself.
            None if careplane_odoo::supervisor_pid(root).is_some() => {}
            None => {
                let pid = spawn_proxy(root, o.admin_port, user)?;
                rec.observed["pid"] = json!(pid);
            }
        }
        wait_generation(root, o.admin_port, generation)
    }

    /// Switches maintenance mode (503 with `Retry-After`) on or off for the
    /// environment `env_id` when the proxy routes it; `Ok(false)` when it
    /// does not. Used around module upgrades; an apply switches it off
    /// again if an interrupted operation left it on.
    pub(crate) fn set_maintenance(&mut self, env_id: &str, on: bool) -> Result<bool, EngineError> {
        let Some(mut rec) = self
            .store()?
            .resource(&careplane_model::ingress_id())?
            .filter(|r| r.status == ResourceStatus::Ready)
        else {
            return Ok(false);
        };
        let p: IngressProps = typed(&rec.id, &rec.props)?;
        let Some(route) = p.routes.iter().find(|r| r.env == env_id) else {
            return Ok(false);
        };
        let o: IngressObserved = Observed::ingress(&rec.id, &rec.observed)?;
        let path = o.root.join(CONFIG_FILE);
        let mut config = careplane_ingress::config::parse_file(&path).map_err(ingress_err)?;
        let Some(r) = config.routes.iter_mut().find(|r| r.host == route.host) else {
            return Ok(false);
        };
        if r.maintenance == on {
            return Ok(true);
        }
        r.maintenance = on;
        config.generation = o.generation + 1;
        let mut host = Host::default();
        let user = self.user(&mut host)?;
        let owner = user.as_ref().map(|u| (u.uid, u.gid));
        self.write_and_load(&mut rec, &o, config, owner, false, user.as_ref())?;
        self.store()?.put_resource(&rec)?;
        Ok(true)
    }

    /// Ports the spec fixes for the proxy that something other than the
    /// running proxy holds (or that careplane may not bind), and operator
    /// certificates that are unreadable or for no environment's host:
    /// refused before the plan changes anything, instead of a proxy that
    /// cannot start.
    pub(crate) fn ingress_problems(&mut self, a: &Action) -> Result<Vec<String>, EngineError> {
        let p: IngressProps = typed(&a.id, &a.props)?;
        let rec = self.store()?.resource(&a.id)?;
        let ours = rec
            .as_ref()
            .and_then(|r| Observed::ingress(&r.id, &r.observed).ok())
            .filter(|o| proxy_kept(&o.root));
        let Ok(ip) = p.listen.parse::<IpAddr>() else {
            return Ok(vec![format!(
                "{}: listen {:?} is not an address",
                a.id, p.listen
            )]);
        };
        let mut problems = Vec::new();
        for c in &p.certificates {
            if !p.routes.iter().any(|r| r.host == c.host) {
                problems.push(format!(
                    "{}: the Platform's ingress has a certificate for {}, which is no \
                     environment's host (hosts are <env>.<tenant>.{})",
                    a.id, c.host, p.domain
                ));
            } else if let Err(e) = operator_cert(&a.id, c) {
                problems.push(e.to_string());
            }
        }
        for (port, field, held) in [
            (
                p.https_port,
                "httpsPort",
                ours.as_ref().map(|o| o.https_port),
            ),
            (p.http_port, "httpPort", ours.as_ref().map(|o| o.http_port)),
        ] {
            let Some(port) = port else { continue };
            if held == Some(port) && ours.is_some() {
                continue;
            }
            if let Err(e) = std::net::TcpListener::bind(SocketAddr::new(ip, port)) {
                problems.push(format!(
                    "{}: cannot listen on {ip}:{port} (the Platform's ingress {field}): {e}; \
                     stop what holds it or choose another port",
                    a.id
                ));
            }
        }
        Ok(problems)
    }

    /// A host's certificate, issued from the platform CA and kept (the key
    /// in the vault), so reruns rewrite the same files, until it enters its
    /// last [`pki::RENEW_BEFORE_DAYS`] days: then a new one replaces it.
    fn host_cert(
        &mut self,
        rec: &mut ResourceRecord,
        host: &str,
    ) -> Result<(String, careplane_state::SecretString), EngineError> {
        let store = self.store()?;
        let key = store.secret(&rec.id, &key_secret(host))?;
        let cert = rec.observed["certs"][host].as_str().map(str::to_string);
        if let (Some(c), Some(k)) = (cert, key) {
            if !pki::due_for_renewal(&c, unix_now()) {
                return Ok((c, k));
            }
        }
        let ca = self.ca()?;
        let (c, k) = pki::issue_server_cert(&ca, host, &[host.to_string()])?;
        let store = self.store()?;
        store.put_secret(&rec.id, &key_secret(host), &k)?;
        if !rec.observed["certs"].is_object() {
            rec.observed["certs"] = json!({});
        }
        rec.observed["certs"][host] = json!(c);
        store.put_resource(rec)?;
        Ok((c, k))
    }

    pub(crate) fn delete_ingress(&mut self, a: &Action) -> Result<(), EngineError> {
        let Some(rec) = self.mark_deleting(a)? else {
            return Ok(());
        };
        if let Some(root) = rec.observed.get("root").and_then(Value::as_str) {
            stop_proxy(Path::new(root))?;
            remove_dir(Path::new(root))?;
        }
        crash_point(&a.id, "executed");
        self.store()?.delete_resource(&a.id)?;
        Ok(())
    }

    /// `careplane start`: the proxy with the configuration last written.
    pub(crate) fn start_ingress(&mut self, rec: &ResourceRecord) -> Result<u32, EngineError> {
        let o = Observed::ingress(&rec.id, &rec.observed)?;
        if let Some(pid) = careplane_odoo::supervisor_pid(&o.root) {
            return Ok(pid);
        }
        let mut host = Host::default();
        let user = self.user(&mut host)?;
        let pid = spawn_proxy(&o.root, o.admin_port, user.as_ref())?;
        wait_generation(&o.root, o.admin_port, o.generation)?;
        Ok(pid)
    }
}

/// The URL `status` shows for an environment when the proxy routes it.
pub(crate) fn env_url(all: &[ResourceRecord], odoo_id: &str) -> Option<String> {
    let rec = all
        .iter()
        .find(|r| r.id == careplane_model::ingress_id() && r.status == ResourceStatus::Ready)?;
    let p: IngressProps = typed(&rec.id, &rec.props).ok()?;
    let o = Observed::ingress(&rec.id, &rec.observed).ok()?;
    let route = p.routes.iter().find(|r| r.env == odoo_id)?;
    let port = if o.https_port == 443 {
        String::new()
    } else {
        format!(":{}", o.https_port)
    };
    Some(format!("https://{}{port}/web/login", route.host))
}

/// The operator's certificate and key for a host, read as they are now.
/// The proxy's full check (chain, key match, host name) runs on the file
/// careplane writes, before any proxy loads it.
fn operator_cert(
    id: &str,
    c: &careplane_model::IngressCertificate,
) -> Result<(String, careplane_state::SecretString), EngineError> {
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path).map_err(|e| {
            EngineError::inconsistent(format!(
                "{id}: cannot read the {what} for {} from {}: {e}",
                c.host,
                path.display()
            ))
        })
    };
    let cert = read(&c.cert_file, "certificate")?;
    if pki::not_after(&cert).is_none() {
        return Err(EngineError::inconsistent(format!(
            "{id}: {} holds no PEM certificate (for {})",
            c.cert_file.display(),
            c.host
        )));
    }
    let key = careplane_state::SecretString::from(read(&c.key_file, "private key")?);
    Ok((cert, key))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why the running ingress differs from what apply leaves (for drift), if
/// it does: not kept running, a route left in maintenance by an
/// interrupted operation, or a certificate due for renewal.
pub(crate) fn drift(rec: &ResourceRecord) -> Option<String> {
    let o = Observed::ingress(&rec.id, &rec.observed).ok()?;
    if !proxy_kept(&o.root) {
        return Some("the ingress proxy is not running".into());
    }
    if let Ok(config) = careplane_ingress::config::parse_file(&o.root.join(CONFIG_FILE)) {
        let held: Vec<&str> = config
            .routes
            .iter()
            .filter(|r| r.maintenance)
            .map(|r| r.host.as_str())
            .collect();
        if !held.is_empty() {
            return Some(format!(
                "in maintenance mode (503): {} (left on by an interrupted operation, or one in progress)",
                held.join(", ")
            ));
        }
    }
    if let Ok(p) = typed::<IngressProps>(&rec.id, &rec.props) {
        for c in &p.certificates {
            let given = std::fs::read(&c.cert_file).ok();
            let loaded = std::fs::read(o.root.join("certs").join(format!("{}.crt", c.host))).ok();
            if given != loaded {
                return Some(format!(
                    "the certificate for {} in {} is not the one the proxy serves",
                    c.host,
                    c.cert_file.display()
                ));
            }
        }
    }
    let now = unix_now();
    let due: Vec<&str> = rec.observed["certs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, c)| c.as_str().is_none_or(|c| pki::due_for_renewal(c, now)))
        .map(|(h, _)| h.as_str())
        .collect();
    (!due.is_empty()).then(|| format!("certificate due for renewal: {}", due.join(", ")))
}

fn ingress_err(e: careplane_ingress::Error) -> EngineError {
    EngineError::inconsistent(e.to_string())
}

fn make_dir(dir: &PathBuf, mode: u32, owner: Option<(u32, u32)>) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", dir.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(io(format!("handing {} to the proxy's user", dir.display())))?;
    }
    Ok(())
}

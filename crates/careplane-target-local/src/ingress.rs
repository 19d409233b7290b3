//! The platform's HTTPS proxy (`careplane-ingress`, docs/design/0006-ingress.md)
//! as a resource: certificates from the platform CA, the configuration
//! file, and the `careplane ingress-run` process, reloaded with SIGHUP when
//! routes change and confirmed through the admin listener's `/status`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
const PID_FILE: &str = "ingress.pid";
const LOG_FILE: &str = "ingress.log";
/// How long a started or reloaded proxy has to report the new generation.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Secret name of a host's private key (one per route).
fn key_secret(host: &str) -> String {
    format!("{TLS_KEY}:{host}")
}

/// The pid of the proxy recorded in `root`, when that process is alive and
/// is a proxy (a recycled pid must never get our signals).
pub(crate) fn proxy_pid(root: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(root.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_proxy = cmdline.split(|b| *b == 0).any(|a| a == b"ingress-run");
    (careplane_sys::pid_alive(pid) && is_proxy).then_some(pid)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill takes plain integers; the pid was checked to be ours.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGTERM, then up to 15 s for open requests to finish, then SIGKILL.
pub(crate) fn stop_proxy(root: &Path) {
    let Some(pid) = proxy_pid(root) else { return };
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while careplane_sys::pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if careplane_sys::pid_alive(pid) {
        signal(pid, libc::SIGKILL);
    }
    let _ = std::fs::remove_file(root.join(PID_FILE));
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

fn log_tail(root: &Path) -> String {
    let text = std::fs::read_to_string(root.join(LOG_FILE)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Starts `careplane ingress-run <config>` detached (own session, only
/// `PATH` in its environment, as the service user when careplane is root)
/// and records its pid in `root`.
fn spawn_proxy(root: &Path, user: Option<&ServiceUser>) -> Result<u32, EngineError> {
    let log_path = root.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
        .map_err(io(format!("opening {}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io(format!("opening {}", log_path.display())))?;
    // The running binary itself (see `spawn_odoo_env`).
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("ingress-run")
        .arg(root.join(CONFIG_FILE))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let ids = user.map(|u| (u.uid, u.gid));
    // SAFETY: setsid and drop_privileges are async-signal-safe and allocate nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid)) = ids {
                careplane_sys::drop_privileges(uid, gid)?;
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(io("starting `careplane ingress-run`".to_string()))?;
    let pid = child.id();
    careplane_sys::atomic_write(
        &root.join(PID_FILE),
        format!("{pid}\n").as_bytes(),
        0o644,
        None,
    )
    .map_err(io(format!("writing {}", root.join(PID_FILE).display())))?;
    // Reaped by a thread, so a long-lived caller collects no zombie; a
    // short-lived one exits and leaves the proxy to init.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

/// Waits until the proxy at `admin_port` reports `generation`.
fn wait_generation(
    root: &Path,
    pid: u32,
    admin_port: u16,
    generation: u64,
) -> Result<(), EngineError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = None;
    loop {
        if !careplane_sys::pid_alive(pid) {
            return Err(EngineError::inconsistent(format!(
                "the ingress proxy exited before it was up; the end of {}:\n{}",
                root.join(LOG_FILE).display(),
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
                "the ingress proxy did not load configuration generation {generation} within {}s{}",
                READY_TIMEOUT.as_secs(),
                last.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two ports that differ from each other and from `taken`.
fn free_ports(n: usize, taken: &[u16]) -> Result<Vec<u16>, EngineError> {
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        let p = system::free_port()?;
        if !out.contains(&p) && !taken.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
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
        make_dir(&root, 0o750, owner)?;
        let certs = root.join("certs");
        make_dir(&certs, 0o750, owner)?;

        let all = self.store()?.resources()?;
        let mut routes = Vec::new();
        for r in &p.routes {
            let env = crate::resources::ready(&all, &r.env)?;
            let eo = Observed::odoo_env(&env.id, &env.observed)?;
            let (cert, key) = self.host_cert(&mut rec, &r.host)?;
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
                admin_paths: vec![],
                admin_allow: vec![],
                maintenance: false,
                limits: None,
                content_security_policy: None,
            });
        }
        let ip: IpAddr = p.listen.parse().map_err(|_| {
            EngineError::inconsistent(format!("{}: listen {:?} is not an address", a.id, p.listen))
        })?;
        let generation = o.generation + 1;
        let config = careplane_ingress::Config {
            generation,
            listen: careplane_ingress::Listen {
                https: vec![SocketAddr::new(ip, o.https_port)],
                http: vec![SocketAddr::new(ip, o.http_port)],
                admin: Some(SocketAddr::from(([127, 0, 0, 1], o.admin_port))),
            },
            public_https_port: Some(o.https_port),
            access_log: Some(root.join("access.log")),
            workers: Some(2),
            defaults: careplane_ingress::Limits::default(),
            routes,
        };
        // The generation is recorded before the file says it, so a rerun
        // never writes the same number twice for different contents.
        rec.observed["generation"] = json!(generation);
        self.store()?.put_resource(&rec)?;
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
        crash_point(&a.id, "configured");
        if restart {
            stop_proxy(&root);
        }
        let pid = match proxy_pid(&root) {
            Some(pid) => {
                signal(pid, libc::SIGHUP);
                pid
            }
            None => spawn_proxy(&root, user.as_ref())?,
        };
        wait_generation(&root, pid, o.admin_port, generation)?;
        rec.observed["pid"] = json!(pid);
        self.finish(a, rec)
    }

    /// A host's certificate, issued once from the platform CA and kept (the
    /// key in the vault), so reruns rewrite the same files.
    fn host_cert(
        &mut self,
        rec: &mut ResourceRecord,
        host: &str,
    ) -> Result<(String, careplane_state::SecretString), EngineError> {
        let store = self.store()?;
        let key = store.secret(&rec.id, &key_secret(host))?;
        let cert = rec.observed["certs"][host].as_str().map(str::to_string);
        if let (Some(c), Some(k)) = (cert, key) {
            return Ok((c, k));
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
            stop_proxy(Path::new(root));
            remove_dir(Path::new(root))?;
        }
        crash_point(&a.id, "executed");
        self.store()?.delete_resource(&a.id)?;
        Ok(())
    }

    /// `careplane start`: the proxy with the configuration last written.
    pub(crate) fn start_ingress(&mut self, rec: &ResourceRecord) -> Result<u32, EngineError> {
        let o = Observed::ingress(&rec.id, &rec.observed)?;
        if let Some(pid) = proxy_pid(&o.root) {
            return Ok(pid);
        }
        let mut host = Host::default();
        let user = self.user(&mut host)?;
        let pid = spawn_proxy(&o.root, user.as_ref())?;
        wait_generation(&o.root, pid, o.admin_port, o.generation)?;
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

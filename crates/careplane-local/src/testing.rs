//! Test support (feature `testing`): a throw-away platform directory with a
//! CA, and PostgreSQL clusters / Redis servers on free ports that are stopped
//! when their guard is dropped — also when a test panics — so test runs leave
//! no processes behind.
//!
//! Everything here panics with the error's message instead of returning
//! errors: it is only meant for tests.

use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use crate::pg::{self, PgBinaries, PgCluster, TlsFiles};
use crate::pki::{self, Ca};
use crate::redis::{self, AclUser, Persistence, RedisServer};
use crate::system::{self, ServiceUser};

/// A temporary platform directory (mode 0711 so the service user can reach
/// the server roots inside it) with its own CA.
pub struct TestPlatform {
    dir: Arc<tempfile::TempDir>,
    /// The platform CA; tenants verify servers against `ca.cert_pem`.
    pub ca: Ca,
    /// Service user servers run as (`Some` when the tests run as root).
    pub user: Option<ServiceUser>,
}

impl Default for TestPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPlatform {
    /// Creates the directory under the system temp dir and a fresh CA.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("careplane-test-")
            .tempdir()
            .expect("creating a temp platform directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod 0711 on the temp platform directory");
        let ca = pki::generate_ca("careplane test CA").expect("generating the test CA");
        let user = system::service_user(None).unwrap_or_else(|e| panic!("{e}"));
        TestPlatform {
            dir: Arc::new(dir),
            ca,
            user,
        }
    }

    /// The platform directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh server certificate for 127.0.0.1/localhost signed by the CA.
    pub fn tls_files(&self) -> TlsFiles {
        let (cert_pem, key_pem) = pki::issue_server_cert(&self.ca, "careplane test server", &[])
            .unwrap_or_else(|e| panic!("{e}"));
        TlsFiles {
            ca_cert_pem: self.ca.cert_pem.clone(),
            cert_pem,
            key_pem,
        }
    }

    /// A cluster description (root `<platform>/pg-<name>`, free port, random
    /// admin password); nothing is created yet.
    pub fn pg_cluster(&self, name: &str) -> PgCluster {
        PgCluster {
            name: name.to_string(),
            root: self.path().join(format!("pg-{name}")),
            port: system::free_port().unwrap_or_else(|e| panic!("{e}")),
            bin: pg_binaries(),
            user: self.user.clone(),
            admin_password: password(),
            settings: Default::default(),
        }
    }

    /// Wraps a cluster in a guard that stops it on drop (without starting it).
    pub fn guard_pg(&self, cluster: PgCluster) -> TestPg {
        TestPg {
            cluster,
            _dir: self.dir.clone(),
        }
    }

    /// Initializes and starts a cluster; it is stopped when the guard drops.
    pub fn start_pg(&self, name: &str) -> TestPg {
        let guard = self.guard_pg(self.pg_cluster(name));
        guard
            .init(&self.tls_files())
            .unwrap_or_else(|e| panic!("{e}"));
        guard.start().unwrap_or_else(|e| panic!("{e}"));
        guard
    }

    /// A Redis server description (root `<platform>/redis-<name>`, free port,
    /// random admin password, 64mb); nothing is created yet.
    pub fn redis_server(&self, name: &str, persistence: Persistence) -> RedisServer {
        RedisServer {
            name: name.to_string(),
            root: self.path().join(format!("redis-{name}")),
            port: system::free_port().unwrap_or_else(|e| panic!("{e}")),
            binary: redis::find_redis_server(None).unwrap_or_else(|e| panic!("{e}")),
            persistence,
            max_memory: "64mb".into(),
            admin_password: password(),
            monitor_password: Some(password()),
            user: self.user.clone(),
        }
    }

    /// Wraps a server in a guard that stops it on drop (without starting it).
    pub fn guard_redis(&self, server: RedisServer) -> TestRedis {
        TestRedis {
            server,
            _dir: self.dir.clone(),
        }
    }

    /// Writes the config for `users` and starts a server; stopped on drop.
    pub fn start_redis(
        &self,
        name: &str,
        persistence: Persistence,
        users: &[AclUser],
    ) -> TestRedis {
        let guard = self.guard_redis(self.redis_server(name, persistence));
        guard.write_config(users).unwrap_or_else(|e| panic!("{e}"));
        guard.start().unwrap_or_else(|e| panic!("{e}"));
        guard
    }
}

/// The PostgreSQL binaries found on this machine (panics with the reason if none).
pub fn pg_binaries() -> PgBinaries {
    pg::find_binaries(None).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh random password.
pub fn password() -> SecretString {
    system::generate_password().unwrap_or_else(|e| panic!("{e}"))
}

/// Whether any regular file under `dir` (recursively) contains `needle`;
/// returns the first such file. Used to prove secrets never reach disk.
pub fn find_in_files(dir: &Path, needle: &str) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Some(hit) = find_in_files(&path, needle) {
                return Some(hit);
            }
        } else if meta.is_file() {
            if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    return Some(path);
                }
            }
        }
    }
    None
}

/// A PostgreSQL cluster stopped (and, failing that, killed) on drop.
pub struct TestPg {
    /// The cluster.
    pub cluster: PgCluster,
    _dir: Arc<tempfile::TempDir>,
}

impl Deref for TestPg {
    type Target = PgCluster;
    fn deref(&self) -> &PgCluster {
        &self.cluster
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let pid = self.cluster.running_pid();
        if let Err(e) = self.cluster.stop() {
            eprintln!("test cleanup: stopping {}: {e}", self.cluster.name);
        }
        if let Some(pid) = pid {
            // Immediate shutdown, then kill, should a fast stop not finish.
            kill_until_gone(pid, libc::SIGQUIT);
        }
    }
}

/// A Redis server stopped (and, failing that, killed) on drop.
pub struct TestRedis {
    /// The server.
    pub server: RedisServer,
    _dir: Arc<tempfile::TempDir>,
}

impl Deref for TestRedis {
    type Target = RedisServer;
    fn deref(&self) -> &RedisServer {
        &self.server
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let pid = self.server.running_pid();
        if let Err(e) = self.server.stop() {
            eprintln!("test cleanup: stopping {}: {e}", self.server.name);
        }
        if let Some(pid) = pid {
            kill_until_gone(pid, libc::SIGTERM);
        }
    }
}

fn kill_until_gone(pid: u32, first: libc::c_int) {
    if !system::pid_alive(pid) {
        return;
    }
    system::signal(pid, first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while system::pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    if system::pid_alive(pid) {
        system::signal(pid, libc::SIGKILL);
    }
}

/// Exposes a secret for assertions (tests compare and grep for it).
pub fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

/// The error message of an operation that must fail (for results whose
/// success type, like a connection, has no `Debug`); panics naming `what` if
/// it succeeded.
/// The message includes the error's whole cause chain.
pub fn refused<T, E: std::error::Error>(result: std::result::Result<T, E>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: expected a refusal, but it succeeded"),
        Err(e) => crate::error::error_chain(&e),
    }
}

/// (uid, supplementary groups) of a running process, from /proc — to check
/// servers dropped root and root's groups.
pub fn process_ids(pid: u32) -> Option<(u32, Vec<u32>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).map(|l| {
            l[name.len()..]
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect::<Vec<u32>>()
        })
    };
    let uid = *field("Uid:")?.first()?;
    Some((uid, field("Groups:").unwrap_or_default()))
}

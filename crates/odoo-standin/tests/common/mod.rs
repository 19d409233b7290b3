//! Test support: a real PostgreSQL server in a temp directory (TLS with a
//! throw-away CA, SCRAM, TCP only over TLS), stopped on drop; running the
//! stand-in with bounded waits; a tiny HTTP client; /proc inspection.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The stand-in binary built by Cargo.
pub const BIN: &str = env!("CARGO_BIN_EXE_odoo-standin");

/// A free TCP port on 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// PostgreSQL's server binaries: `ODOO_STANDIN_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ODOO_STANDIN_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).expect(
        "PostgreSQL server binaries not found: install postgresql or set ODOO_STANDIN_PG_BINDIR",
    )
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of the `postgres` user (servers refuse to run as root).
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root needs a `postgres` system user"
    );
    // SAFETY: non-null, points to a valid passwd struct.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown_to_postgres(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A CA: its certificate PEM and an issuer to sign server certificates.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).unwrap();
        Ca { cert_pem, issuer }
    }

    /// (certificate PEM, key PEM) for 127.0.0.1 and localhost.
    pub fn server_cert(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test server");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A tenant: a login role owning its database.
pub struct Tenant {
    pub role: String,
    pub password: String,
    pub db: String,
}

/// A PostgreSQL server on 127.0.0.1:`port` requiring TLS and SCRAM for TCP
/// (`hostnossl … reject`); the superuser `postgres` connects over the Unix
/// socket. Stopped on drop.
pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub ca: Ca,
    /// The CA certificate, as a file (for PGSSLROOTCERT).
    pub ca_file: PathBuf,
    socket_dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("odoo-standin-test-")
            .tempdir()
            .unwrap();
        chmod(dir.path(), 0o711);
        let data = dir.path().join("pgdata");
        let socket_dir = dir.path().join("run");
        for d in [&data, &socket_dir] {
            fs::create_dir(d).unwrap();
            chmod(d, 0o700);
            chown_to_postgres(d);
        }
        let ca = Ca::new("odoo-standin test CA");
        let ca_file = dir.path().join("ca.crt");
        fs::write(&ca_file, &ca.cert_pem).unwrap();
        let server = PgServer {
            dir,
            port: free_port(),
            ca,
            ca_file,
            socket_dir,
            data,
            bin,
        };
        server.run(
            "initdb",
            &[
                "-D",
                server.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-locale",
                "-E",
                "UTF8",
                "-N",
            ],
        );
        let (cert, key) = server.ca.server_cert();
        for (name, content) in [("server.crt", cert), ("server.key", key)] {
            let path = server.data.join(name);
            fs::write(&path, content).unwrap();
            chmod(&path, 0o600);
            chown_to_postgres(&path);
        }
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(server.data.join("postgresql.conf"))
            .unwrap();
        write!(
            conf,
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 60\n",
            server.port,
            server.socket_dir.display()
        )
        .unwrap();
        fs::write(
            server.data.join("pg_hba.conf"),
            "local all postgres trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let log = server.dir.path().join("postgres.log");
        fs::write(&log, "").unwrap();
        chown_to_postgres(&log);
        server.run(
            "pg_ctl",
            &[
                "-D",
                server.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        server
    }

    fn command(&self, prog: &str) -> Command {
        let path = self.bin.join(prog);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, prog: &str, args: &[&str]) {
        let out = self
            .command(prog)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {prog}: {e}"));
        let log = fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{prog} failed: {}\n{}\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A superuser connection to `db` over the Unix socket.
    pub fn admin(&self, db: &str) -> postgres::Client {
        postgres::Config::new()
            .host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .connect(postgres::NoTls)
            .expect("superuser connection")
    }

    /// Creates a login role (`extra` role options, e.g. `CREATEDB`) and a
    /// database it owns.
    pub fn create_tenant(&self, name: &str, extra: &str) -> Tenant {
        let password = format!("pw-{name}-{}", std::process::id());
        let mut c = self.admin("postgres");
        c.batch_execute(&format!(
            "CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}' {extra}"
        ))
        .unwrap();
        c.batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""))
            .unwrap();
        Tenant {
            role: name.to_string(),
            password,
            db: name.to_string(),
        }
    }

    /// A fresh directory for one scenario (config, data_dir, logs).
    pub fn workdir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// The base configuration careplane would write for `t`.
    pub fn config(&self, t: &Tenant, work: &Path) -> Vec<(String, String)> {
        let port = self.port.to_string();
        let http = free_port().to_string();
        let gevent = free_port().to_string();
        let data = work.join("data");
        let dbfilter = format!("^{}$", t.db);
        let entries: Vec<(&str, &str)> = vec![
            ("db_host", "127.0.0.1"),
            ("db_port", &port),
            ("db_user", &t.role),
            ("db_password", &t.password),
            ("db_name", &t.db),
            ("db_sslmode", "require"),
            ("dbfilter", &dbfilter),
            ("list_db", "False"),
            ("admin_passwd", "$pbkdf2-sha512$600000$c2FsdA$aGFzaA"),
            ("http_interface", "127.0.0.1"),
            ("http_port", &http),
            ("gevent_port", &gevent),
            ("workers", "0"),
            ("max_cron_threads", "0"),
            ("data_dir", data.to_str().unwrap()),
            ("proxy_mode", "True"),
            ("limit_memory_soft", "2147483648"),
            ("limit_memory_hard", "2684354560"),
            ("limit_time_cpu", "600"),
            ("limit_time_real", "1200"),
            ("limit_request", "65536"),
            ("without_demo", "all"),
            ("server_wide_modules", "base,web"),
            ("redis_host", "127.0.0.1"),
            ("redis_port", "6379"),
            ("redis_prefix", &t.db),
        ];
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Sets `key` (replacing it) in a configuration.
pub fn set(config: &mut Vec<(String, String)>, key: &str, value: &str) {
    config.retain(|(k, _)| k != key);
    config.push((key.to_string(), value.to_string()));
}

pub fn get<'a>(config: &'a [(String, String)], key: &str) -> &'a str {
    &config
        .iter()
        .find(|(k, _)| k == key)
        .expect("key in config")
        .1
}

/// Writes an Odoo configuration file.
pub fn write_config(path: &Path, config: &[(String, String)]) {
    let mut text = String::from("[options]\n");
    for (k, v) in config {
        text.push_str(&format!("{k} = {v}\n"));
    }
    fs::write(path, text).unwrap();
}

/// The stand-in with a clean libpq environment and `HOME` = `home` (so no
/// `~/.postgresql/root.crt` unless a test puts one there).
pub fn standin(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "PGPASSWORD",
        "PGSSLROOTCERT",
        "PGUSER",
        "PGHOST",
        "PGPORT",
        "PGSSLMODE",
    ] {
        c.env_remove(var);
    }
    c.env("HOME", home)
        .env("ODOO_STANDIN_ROWS_PER_MODULE", "100")
        .stdin(Stdio::null());
    c
}

/// A running stand-in; killed on drop if still running.
pub struct Running {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Starts `cmd` with stdout/stderr going to files in `dir`.
pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Running {
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let child = cmd
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawning odoo-standin");
    Running {
        child,
        stdout,
        stderr,
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit (a hang guard, not a timing assertion).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("odoo-standin did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, sig) }, 0);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the stand-in to completion: (exit code, stderr).
pub fn run_to_end(cmd: Command, dir: &Path, name: &str) -> (Option<i32>, String) {
    let mut r = spawn(cmd, dir, name);
    let status = r.wait_exit();
    (status.code(), r.stderr())
}

/// Polls `check` until it holds (bounded: a hang guard, not a timing test).
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// `GET path` on 127.0.0.1:`port`; `None` when nothing accepts.
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<Reply> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Waits until `/web/health` answers on `port`; panics with the stand-in's
/// stderr should it exit first.
pub fn wait_for_http(r: &mut Running, port: u16) {
    wait_until("the stand-in to serve /web/health", || {
        assert!(
            r.is_running(),
            "odoo-standin exited early; stderr:\n{}",
            r.stderr()
        );
        http_get(port, "/web/health", &[]).is_some_and(|reply| reply.status == 200)
    });
}

/// TCP ports `pid` listens on (from /proc: its socket inodes in LISTEN state).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let link = fs::read_link(e.path()).ok()?;
            let s = link.to_str()?;
            Some(s.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                if let Some(port) = f[1].rsplit(':').next() {
                    ports.push(u16::from_str_radix(port, 16).unwrap());
                }
            }
        }
    }
    ports
}

/// One scalar from a query.
pub fn scalar<T: for<'a> postgres::types::FromSql<'a>>(c: &mut postgres::Client, sql: &str) -> T {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

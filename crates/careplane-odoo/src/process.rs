//! How an Odoo process is started: its command line, its environment (the
//! only place secrets go) and one-off module runs.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use secrecy::{ExposeSecret, SecretString};

use crate::config::{valid_database_name, valid_module_name, RedisSettings, Role};
use crate::error::{io_err, OdooError, Result};
use crate::supervisor::{HealthCheck, ProcessSpec};
use crate::sys;

/// Where Odoo is installed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OdooInstall {
    /// `odoo-bin` (or the test stand-in).
    pub command: PathBuf,
    /// When set, the command is run as `python command …` (an `odoo-bin`
    /// that is not executable, or a virtualenv's interpreter).
    pub python: Option<PathBuf>,
    /// Major version (16–19). Informational: the rendered configuration and
    /// command lines are read the same way by all four.
    pub version: u32,
    /// The addons directories this installation ships.
    pub addons_paths: Vec<PathBuf>,
}

impl OdooInstall {
    /// The program and leading arguments: `[python, command]` or
    /// `[command]`.
    pub fn argv_prefix(&self) -> Vec<String> {
        let mut v = Vec::with_capacity(2);
        if let Some(py) = &self.python {
            v.push(py.display().to_string());
        }
        v.push(self.command.display().to_string());
        v
    }
}

/// The long-running command line of one role: `[python] odoo-bin -c <conf>`,
/// plus `--no-http` for cron. Everything else (database, ports, workers)
/// comes from the role's configuration file, so the command line carries no
/// secret and never disagrees with the file.
pub fn process_argv(install: &OdooInstall, conf: &Path, role: Role) -> Vec<String> {
    let mut argv = install.argv_prefix();
    argv.push("-c".into());
    argv.push(conf.display().to_string());
    if role == Role::Cron {
        argv.push("--no-http".into());
    }
    argv
}

/// The supervisor entry for one role: [`process_argv`], secrets from
/// `env_file`, and for web a health check of `GET /web/health` on
/// `http_port` (Odoo's database-free liveness endpoint, since Odoo 15).
pub fn process_spec(
    install: &OdooInstall,
    conf: &Path,
    role: Role,
    env_file: Option<PathBuf>,
    http_port: u16,
) -> ProcessSpec {
    ProcessSpec {
        name: role.as_str().to_string(),
        argv: process_argv(install, conf, role),
        env_file,
        health: (role == Role::Web).then(|| HealthCheck {
            port: http_port,
            path: "/web/health".to_string(),
        }),
    }
}

/// Environment variable carrying the Redis URL with credentials
/// (`redis://<user>:<password>@<host>:<port>/0`, user and password
/// percent-encoded), for a session-store module.
pub const ENV_REDIS_URL: &str = "CAREPLANE_REDIS_URL";
/// Environment variable carrying the bare Redis password, for modules that
/// take host/port/user from the `redis_*` options of `odoo.conf`.
pub const ENV_REDIS_PASSWORD: &str = "ODOO_REDIS_PASSWORD";
/// `LANG` of every Odoo process: UTF-8 without a locale that may be missing.
pub const DEFAULT_LANG: &str = "C.UTF-8";

/// The complete environment of an Odoo process — the only place its secrets
/// are passed. Processes start from an empty environment plus these
/// variables, so nothing from careplane's own environment (tokens, `PG*`
/// variables that Odoo 19 would prefer over `odoo.conf`, proxies) leaks in.
#[derive(Debug, Default)]
pub struct ProcessEnv {
    /// Name/value pairs; values are secrets or treated as such.
    pub vars: Vec<(String, SecretString)>,
}

impl ProcessEnv {
    /// `PATH` (system directories), `HOME=home` and `LANG=C.UTF-8`.
    pub fn base(home: &Path) -> Self {
        let mut env = ProcessEnv::default();
        env.set("PATH", sys::DEFAULT_PATH);
        env.set("HOME", &home.display().to_string());
        env.set("LANG", DEFAULT_LANG);
        env
    }

    /// The environment of an Odoo process: [`ProcessEnv::base`] plus
    /// `PGPASSWORD` (the database password, `db_password = False` in the
    /// file), `PGSSLROOTCERT` (the CA that `verify-full` checks the server
    /// against) and, with Redis, [`ENV_REDIS_URL`] and
    /// [`ENV_REDIS_PASSWORD`].
    pub fn for_odoo(
        home: &Path,
        db_password: &SecretString,
        ssl_root_cert: Option<&Path>,
        redis: Option<(&RedisSettings, &SecretString)>,
    ) -> Self {
        let mut env = ProcessEnv::base(home);
        env.set_secret("PGPASSWORD", db_password.expose_secret());
        if let Some(ca) = ssl_root_cert {
            env.set("PGSSLROOTCERT", &ca.display().to_string());
        }
        if let Some((r, password)) = redis {
            let host = if r.host.contains(':') {
                format!("[{}]", r.host)
            } else {
                r.host.clone()
            };
            let url = format!(
                "redis://{}:{}@{host}:{}/0",
                percent_encode(&r.user),
                percent_encode(password.expose_secret()),
                r.port
            );
            env.set_secret(ENV_REDIS_URL, &url);
            env.set_secret(ENV_REDIS_PASSWORD, password.expose_secret());
        }
        env
    }

    /// Sets (or replaces) a non-secret variable.
    pub fn set(&mut self, key: &str, value: &str) {
        self.set_secret(key, value);
    }

    /// Sets (or replaces) a variable whose value is secret.
    pub fn set_secret(&mut self, key: &str, value: &str) {
        self.vars.retain(|(k, _)| k != key);
        self.vars
            .push((key.to_string(), SecretString::from(value.to_string())));
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&SecretString> {
        self.vars.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn check(&self, path: &Path) -> Result<()> {
        for (k, v) in &self.vars {
            let valid_key = !k.is_empty()
                && !k.as_bytes()[0].is_ascii_digit()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_key {
                return Err(OdooError::EnvFile {
                    path: path.to_path_buf(),
                    message: format!("invalid variable name {k:?}"),
                });
            }
            if v.expose_secret()
                .bytes()
                .any(|b| b == b'\n' || b == b'\r' || b == 0)
            {
                return Err(OdooError::EnvFile {
                    path: path.to_path_buf(),
                    message: format!("the value of {k} contains a newline or NUL"),
                });
            }
        }
        Ok(())
    }

    /// Writes the variables as `KEY=VALUE` lines (the value is everything
    /// after the first `=`, unquoted) to `path`, atomically with mode 0600.
    /// The supervisor reads the file each time it spawns the process, so
    /// secrets never sit in its spec, its command line or its status.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let text = self.serialize(path)?;
        sys::atomic_write(path, text.expose_secret().as_bytes(), 0o600, None)
    }

    /// The `KEY=VALUE` text [`ProcessEnv::write_file`] writes and
    /// [`ProcessEnv::parse`] reads; `path` names it in errors.
    pub fn serialize(&self, path: &Path) -> Result<SecretString> {
        self.check(path)?;
        const HEADER: &str =
            "# Environment of an Odoo process, written by careplane (secrets: keep 0600).\n";
        // Sized up front so no reallocation leaves copies of secrets behind.
        let len = HEADER.len()
            + self
                .vars
                .iter()
                .map(|(k, v)| k.len() + v.expose_secret().len() + 2)
                .sum::<usize>();
        let mut s = String::with_capacity(len);
        s.push_str(HEADER);
        for (k, v) in &self.vars {
            let _ = writeln!(s, "{k}={}", v.expose_secret());
        }
        // Moved, not copied: the buffer is zeroized when the secret drops.
        Ok(SecretString::from(s))
    }

    /// Reads a file written by [`ProcessEnv::write_file`]. Refuses a file
    /// that group or others can access, or that is owned by someone other
    /// than the current user or root: its contents become a process's
    /// environment (`LD_PRELOAD` included), so only its owner may write it.
    pub fn read_file(path: &Path) -> Result<ProcessEnv> {
        let meta = fs::metadata(path).map_err(io_err("reading environment file", path))?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.mode() & 0o077 != 0 {
            return Err(OdooError::EnvFile {
                path: path.to_path_buf(),
                message: format!(
                    "mode {:o} lets group or others read it; it must be 0600",
                    meta.mode() & 0o7777
                ),
            });
        }
        if meta.uid() != euid && meta.uid() != 0 {
            return Err(OdooError::EnvFile {
                path: path.to_path_buf(),
                message: format!("owned by uid {}, expected {euid} or root", meta.uid()),
            });
        }
        let raw = SecretString::from(
            fs::read_to_string(path).map_err(io_err("reading environment file", path))?,
        );
        ProcessEnv::parse(raw, path)
    }

    /// Parses `KEY=VALUE` lines (blank lines and `#` comments skipped);
    /// `path` names the source in errors.
    pub fn parse(raw: SecretString, path: &Path) -> Result<ProcessEnv> {
        let mut env = ProcessEnv::default();
        for (n, line) in raw.expose_secret().lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(OdooError::EnvFile {
                    path: path.to_path_buf(),
                    message: format!("line {} is not KEY=VALUE", n + 1),
                });
            };
            env.set_secret(k, v);
        }
        env.check(path)?;
        Ok(env)
    }

    /// Replaces `cmd`'s environment with exactly these variables.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        cmd.env_clear();
        for (k, v) in &self.vars {
            cmd.env(k, v.expose_secret());
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What a one-off run does to the database's modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleOp {
    /// `-i a,b`: install (first install also initializes the database).
    Install(Vec<String>),
    /// `-u a,b`: update (run migrations, reload data).
    Update(Vec<String>),
    /// Neither: only load the database (initializes `base` if empty).
    None,
}

/// How a process ended, for messages.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended in an unknown way".to_string(),
    }
}

/// The command line of a one-off run (without the leading
/// `[python] odoo-bin`).
fn run_once_args(conf: &Path, database: &str, op: &ModuleOp) -> Vec<String> {
    let mut args = vec![
        "-c".to_string(),
        conf.display().to_string(),
        "-d".to_string(),
        database.to_string(),
    ];
    match op {
        ModuleOp::Install(m) => {
            args.push("-i".into());
            args.push(m.join(","));
        }
        ModuleOp::Update(m) => {
            args.push("-u".into());
            args.push(m.join(","));
        }
        ModuleOp::None => {}
    }
    args.push("--stop-after-init".into());
    // The web process may be serving on the configured port right now; a
    // maintenance run must not try to bind it (or the gevent port).
    args.push("--no-http".into());
    args
}

/// Runs Odoo once to completion: `[python] odoo-bin -c <conf> -d <db>
/// [-i|-u mods] --stop-after-init --no-http`, as `user` when given, with
/// exactly the environment `env`. Its stdout and stderr are appended to
/// `log_file` (created 0600), after a header line naming the command.
///
/// `Ok` on exit status 0. Otherwise the error carries the status and the
/// last 20 lines this run wrote to the log; those can be quoted safely
/// because no secret is on the command line or in the configuration file.
/// There is no timeout: installing modules into a large database
/// legitimately takes long. The child gets `PR_SET_PDEATHSIG` so it does not
/// outlive careplane being killed.
pub fn run_once(
    install: &OdooInstall,
    conf: &Path,
    database: &str,
    op: ModuleOp,
    env: &ProcessEnv,
    log_file: &Path,
    user: Option<(u32, u32)>,
) -> Result<()> {
    if !valid_database_name(database) {
        return Err(OdooError::InvalidConfig(format!(
            "database name {database:?} is not a valid Odoo database name"
        )));
    }
    if let ModuleOp::Install(m) | ModuleOp::Update(m) = &op {
        if m.is_empty() {
            return Err(OdooError::InvalidConfig(
                "install/update needs at least one module".into(),
            ));
        }
        if let Some(bad) = m.iter().find(|m| !valid_module_name(m)) {
            return Err(OdooError::InvalidConfig(format!(
                "module name {bad:?} is not a valid Odoo module name"
            )));
        }
    }
    let mut argv = install.argv_prefix();
    argv.extend(run_once_args(conf, database, &op));
    let command_line = argv.join(" ");
    let what = match &op {
        ModuleOp::Install(m) => format!("installing {} into database {database}", m.join(",")),
        ModuleOp::Update(m) => format!("updating {} in database {database}", m.join(",")),
        ModuleOp::None => format!("loading database {database}"),
    };

    if let Some(parent) = log_file.parent() {
        if !parent.as_os_str().is_empty() {
            sys::ensure_dir(parent, 0o755)?;
        }
    }
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log_file)
        .map_err(io_err("opening log file", log_file))?;
    let start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = writeln!(
        log,
        "=== careplane {}: {what}: {command_line}",
        crate::supervisor::timestamp(sys::now_ms())
    );
    let stderr = log
        .try_clone()
        .map_err(io_err("opening log file", log_file))?;

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    env.apply(&mut cmd);
    if let Some(dir) = conf.parent().filter(|d| d.is_dir()) {
        cmd.current_dir(dir);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr));
    sys::install_child_hook(&mut cmd, user, true, 0o077);

    let fail = |status: String| OdooError::Command {
        what: what.clone(),
        command: command_line.clone(),
        status,
        log: log_file.to_path_buf(),
        log_tail: sys::tail(log_file, start, 20),
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("could not be started: {e}")))?;
    drop(cmd);
    let status = child
        .wait()
        .map_err(|e| fail(format!("could not be waited for: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(fail(describe_exit(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_url_percent_encodes_credentials() {
        let r = RedisSettings {
            host: "127.0.0.1".into(),
            port: 6390,
            user: "st marys".into(),
            key_prefix: "stmarys:".into(),
        };
        let pw = SecretString::from("p@ss:w/rd%".to_string());
        let env = ProcessEnv::for_odoo(Path::new("/h"), &pw, None, Some((&r, &pw)));
        assert_eq!(
            env.get(ENV_REDIS_URL).unwrap().expose_secret(),
            "redis://st%20marys:p%40ss%3Aw%2Frd%25@127.0.0.1:6390/0"
        );
        assert_eq!(
            env.get(ENV_REDIS_PASSWORD).unwrap().expose_secret(),
            "p@ss:w/rd%"
        );
    }

    #[test]
    fn run_once_args_are_odoo_compatible() {
        let args = run_once_args(
            Path::new("/run/e/odoo-cron.conf"),
            "stmarys",
            &ModuleOp::Install(vec!["base".into(), "web".into()]),
        );
        assert_eq!(
            args,
            [
                "-c",
                "/run/e/odoo-cron.conf",
                "-d",
                "stmarys",
                "-i",
                "base,web",
                "--stop-after-init",
                "--no-http"
            ]
        );
    }
}

/// Runs `[python] odoo-bin --version` (as `user` when given, with exactly
/// `env`) and returns the major version it prints (`Odoo Server 18.0…` → 18),
/// so a platform that names one version but points at another is refused
/// before anything is created.
pub fn installed_version(
    install: &OdooInstall,
    env: &ProcessEnv,
    user: Option<(u32, u32)>,
) -> Result<u32> {
    let mut argv = install.argv_prefix();
    argv.push("--version".into());
    let command_line = argv.join(" ");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    env.apply(&mut cmd);
    cmd.current_dir("/");
    sys::install_child_hook(&mut cmd, user, true, 0o077);
    let out = cmd.output().map_err(|e| {
        OdooError::Installation(format!("`{command_line}` could not be started: {e}"))
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        return Err(OdooError::Installation(format!(
            "`{command_line}` {}:\n{}",
            describe_exit(out.status),
            lines[lines.len().saturating_sub(10)..].join("\n")
        )));
    }
    parse_version(&stdout).ok_or_else(|| {
        OdooError::Installation(format!(
            "`{command_line}` printed {:?}, not `Odoo Server <major>.<minor>…`",
            stdout.trim()
        ))
    })
}

/// The major version in `Odoo Server 18.0+e-20241005` (or `saas~17.2`).
fn parse_version(text: &str) -> Option<u32> {
    let rest = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Odoo Server "))?;
    let rest = rest.strip_prefix("saas~").unwrap_or(rest);
    rest.split('.').next()?.trim().parse().ok()
}

#[cfg(test)]
mod version_tests {
    use super::parse_version;

    #[test]
    fn versions_as_odoo_prints_them() {
        assert_eq!(parse_version("Odoo Server 18.0+e-20241005\n"), Some(18));
        assert_eq!(parse_version("Odoo Server 17.0\n"), Some(17));
        assert_eq!(parse_version("Odoo Server saas~17.2\n"), Some(17));
        assert_eq!(parse_version("warning: x\nOdoo Server 16.0\n"), Some(16));
        assert_eq!(parse_version("odoo 18"), None);
        assert_eq!(parse_version("Odoo Server master"), None);
    }
}

//! The hardened `odoo.conf` of one environment, rendered per process role.
//!
//! An environment runs two Odoo processes from two configuration files:
//! *web* serves HTTP (prefork workers when `workers > 0`, plus the gevent
//! port for websockets) and runs no cron jobs; *cron* serves no HTTP and runs
//! the scheduled jobs in `max_cron_threads` threads. Splitting them keeps a
//! long cron job from eating a web worker and lets each be restarted alone.
//!
//! # Hardening, and why
//!
//! * `list_db = False`, `db_name = <db>` and an empty `dbfilter`: an
//!   environment sees exactly its own database, and Odoo never reads the
//!   catalog's list of databases. With `db_name` (one name: validated names
//!   hold no comma) and no `dbfilter`, Odoo 16–18's `list_dbs` returns
//!   `db_name` without a query (`odoo/service/db.py`, `list_dbs`) and
//!   `http.db_filter` keeps only that name, for a session's database, a
//!   `?db=` parameter and `/web/session/authenticate` alike. A `dbfilter`
//!   would make Odoo list the databases its role owns from `pg_database`,
//!   which careplane hides from tenants on a shared cluster (the other
//!   hospitals' names are there): Odoo would then find no database and send
//!   every visitor to the database selector. Disabling the list also
//!   disables the database manager (create/drop/backup/restore over HTTP).
//! * `admin_passwd` is always a passlib `pbkdf2_sha512` hash
//!   ([`crate::hash_admin_password`]); Odoo would accept plaintext, which
//!   [`EnvConfig::validate`] refuses.
//! * `db_password = False`: the file holds no secret at all. The password
//!   reaches Odoo as `PGPASSWORD` in its environment ([`crate::ProcessEnv`]):
//!   Odoo 16–18 then pass no password and libpq reads `PGPASSWORD`; Odoo 19
//!   ignores the non-boolean `False` (with a warning) and its own
//!   environment-over-file precedence picks `PGPASSWORD` up.
//! * `db_sslmode` at least `require` (`verify-full` by default, with the CA
//!   in `PGSSLROOTCERT`).
//! * `proxy_mode = True` with `http_interface` on loopback only: Odoo trusts
//!   `X-Forwarded-*` headers in proxy mode, which is only safe when nothing
//!   but careplane's proxy can reach it, so non-loopback interfaces are
//!   refused.
//! * `without_demo = True`: no demo data in a healthcare database. Odoo
//!   16–18 only test the value's truthiness (so `True` means the same as
//!   `all`), and Odoo 19 parses it as a boolean, where `all` would log a
//!   warning; `True` is the one spelling all four read silently.
//! * Explicit `server_wide_modules`, `addons_path` and the `limit_*`
//!   options, so nothing depends on Odoo's defaults changing between
//!   versions.
//!
//! Every value is checked for characters that could inject another option
//! (newlines) or split a list (commas in paths) before anything is written.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{io_err, OdooError, Result};
use crate::sys;

/// Per-worker time and memory limits (Odoo's `limit_*` options). Odoo
/// enforces them in prefork mode: a worker over the soft memory limit is
/// recycled after its request, over the hard limit allocations fail, and a
/// request over a time limit kills its worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// `limit_memory_soft`, bytes of virtual memory.
    pub memory_soft: u64,
    /// `limit_memory_hard`, bytes of virtual memory.
    pub memory_hard: u64,
    /// `limit_time_cpu`, CPU seconds per request.
    pub time_cpu: u32,
    /// `limit_time_real`, wall-clock seconds per request.
    pub time_real: u32,
    /// `limit_request`, requests a worker serves before it is recycled.
    pub request: u32,
}

impl Default for Limits {
    /// Odoo's own defaults (2 GiB soft, 2.5 GiB hard, 60 s CPU, 120 s real,
    /// 65 536 requests), written explicitly.
    fn default() -> Self {
        Limits {
            memory_soft: 2048 * 1024 * 1024,
            memory_hard: 2560 * 1024 * 1024,
            time_cpu: 60,
            time_real: 120,
            request: 65536,
        }
    }
}

/// The non-secret half of an environment's Redis settings, written as extra
/// `redis_*` options for a session-store module to read. (Odoo itself ignores
/// unknown options; the password travels in the environment, see
/// [`crate::ProcessEnv::for_odoo`].)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedisSettings {
    /// Host (loopback for the local target).
    pub host: String,
    /// Port.
    pub port: u16,
    /// ACL user.
    pub user: String,
    /// Key prefix the ACL user is confined to.
    pub key_prefix: String,
}

/// Everything `odoo.conf` needs for one environment. Plain values: the
/// engine maps its specs and state onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvConfig {
    /// The environment's one database (Odoo's database-name rules:
    /// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 63 bytes).
    pub database: String,
    /// PostgreSQL host name (must match the server certificate for
    /// `verify-full`).
    pub db_host: String,
    /// PostgreSQL port.
    pub db_port: u16,
    /// PostgreSQL role Odoo connects as (never `postgres`: Odoo refuses it).
    pub db_user: String,
    /// libpq sslmode: `require`, `verify-ca` or `verify-full` (default).
    pub db_sslmode: String,
    /// Filestore and sessions root; created 0700 for the service user.
    pub data_dir: PathBuf,
    /// Loopback address the web process listens on.
    pub http_interface: String,
    /// Web port.
    pub http_port: u16,
    /// Websocket (gevent) port, used when `workers > 0`.
    pub gevent_port: u16,
    /// Prefork HTTP workers for the web process (0: threaded).
    pub workers: u32,
    /// Cron threads of the cron process (at least 1).
    pub cron_threads: u32,
    /// Time and memory limits.
    pub limits: Limits,
    /// `admin_passwd`: a hash from [`crate::hash_admin_password`].
    pub admin_passwd_hash: String,
    /// Server-wide modules, e.g. `["base", "web"]`.
    pub server_wide_modules: Vec<String>,
    /// Addons directories (absolute).
    pub addons_paths: Vec<PathBuf>,
    /// Redis, when the environment has one.
    pub redis: Option<RedisSettings>,
    /// The public URL (written as a comment only; careplane sets
    /// `web.base.url` in the database).
    pub base_url: String,
}

/// Which of an environment's two Odoo processes a file or command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves HTTP, runs no cron jobs.
    Web,
    /// Runs cron jobs, serves no HTTP (`--no-http`).
    Cron,
}

impl Role {
    /// `"web"` or `"cron"`: the process and file name part.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Cron => "cron",
        }
    }

    /// The configuration file name in the environment's directory.
    pub fn config_file_name(self) -> &'static str {
        match self {
            Role::Web => "odoo-web.conf",
            Role::Cron => "odoo-cron.conf",
        }
    }
}

/// sslmodes that still encrypt: anything weaker could send the database
/// traffic (and `PGPASSWORD`'s proof) in clear.
pub const ALLOWED_SSLMODES: &[&str] = &["require", "verify-ca", "verify-full"];

/// The default and recommended sslmode.
pub const DEFAULT_SSLMODE: &str = "verify-full";

impl EnvConfig {
    /// Checks every value before it goes into a file: Odoo's database-name
    /// rules, no control characters anywhere (a newline would inject
    /// options), no commas in list items, sslmode at least `require`, a
    /// loopback `http_interface`, a hashed `admin_passwd`, `cron_threads >=
    /// 1`, distinct ports, sane limits and no `postgres` superuser.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(OdooError::InvalidConfig(msg));
        if !valid_database_name(&self.database) {
            return bad(format!(
                "database name {:?} must match [A-Za-z0-9][A-Za-z0-9_.-]* and be at most 63 bytes",
                self.database
            ));
        }
        for (what, value) in [
            ("db_host", self.db_host.as_str()),
            ("db_user", self.db_user.as_str()),
            ("http_interface", self.http_interface.as_str()),
        ] {
            plain_token(what, value)?;
        }
        if self.db_user == "postgres" {
            return bad(
                "db_user must not be `postgres`: Odoo refuses to run as the PostgreSQL superuser"
                    .into(),
            );
        }
        if !ALLOWED_SSLMODES.contains(&self.db_sslmode.as_str()) {
            return bad(format!(
                "db_sslmode {:?} is weaker than `require` or unknown; use one of {}",
                self.db_sslmode,
                ALLOWED_SSLMODES.join(", ")
            ));
        }
        match self.http_interface.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => {}
            _ => {
                return bad(format!(
                    "http_interface {:?} must be a loopback address: Odoo runs with proxy_mode and \
                     trusts X-Forwarded-* headers, so only careplane's proxy may reach it",
                    self.http_interface
                ))
            }
        }
        if self.db_port == 0 || self.http_port == 0 {
            return bad("db_port and http_port must not be 0".into());
        }
        if self.workers > 0 && (self.gevent_port == 0 || self.gevent_port == self.http_port) {
            return bad(format!(
                "gevent_port {} must be non-zero and differ from http_port {} when workers > 0",
                self.gevent_port, self.http_port
            ));
        }
        if self.cron_threads == 0 {
            return bad(
                "cron_threads must be at least 1: the cron process runs the scheduled jobs".into(),
            );
        }
        let l = &self.limits;
        if l.memory_soft == 0 || l.memory_hard < l.memory_soft {
            return bad(format!(
                "memory limits: soft {} must be > 0 and <= hard {}",
                l.memory_soft, l.memory_hard
            ));
        }
        if l.time_cpu == 0 || l.time_real == 0 || l.request == 0 {
            return bad("limit_time_cpu, limit_time_real and limit_request must be > 0".into());
        }
        let well_formed = self
            .admin_passwd_hash
            .strip_prefix("$pbkdf2-sha512$")
            .is_some_and(|rest| {
                let parts: Vec<&str> = rest.split('$').collect();
                parts.len() == 3
                    && parts.iter().all(|p| {
                        !p.is_empty()
                            && p.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
                    })
                    && parts[0].bytes().all(|b| b.is_ascii_digit())
            });
        if !well_formed {
            // Never echo the value: it could be a plaintext password.
            return bad(
                "admin_passwd_hash is not a pbkdf2-sha512 hash; pass the result of \
                 hash_admin_password, never a plaintext password"
                    .into(),
            );
        }
        if self.server_wide_modules.is_empty() {
            return bad("server_wide_modules must list at least base and web".into());
        }
        for m in &self.server_wide_modules {
            if !valid_module_name(m) {
                return bad(format!(
                    "server-wide module name {m:?} is not a valid Odoo module name"
                ));
            }
        }
        absolute_path("data_dir", &self.data_dir)?;
        for p in &self.addons_paths {
            absolute_path("addons path", p)?;
            if p.to_string_lossy().contains(',') {
                return bad(format!(
                    "addons path {} contains a comma (the list separator)",
                    p.display()
                ));
            }
        }
        if let Some(r) = &self.redis {
            plain_token("redis host", &r.host)?;
            plain_token("redis user", &r.user)?;
            plain_token("redis key prefix", &r.key_prefix)?;
            if r.port == 0 {
                return bad("redis port must not be 0".into());
            }
        }
        if self.base_url.chars().any(char::is_control) {
            return bad("base_url contains control characters".into());
        }
        Ok(())
    }
}

/// Odoo's `DBNAME_PATTERN` (`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`, relaxed to
/// allow one character) within PostgreSQL's 63-byte identifier limit.
pub fn valid_database_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// An Odoo technical module name: ASCII letters, digits and `_` (so it can
/// neither split a comma list nor pass for a command-line option).
pub fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn plain_token(what: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == ',')
    {
        return Err(OdooError::InvalidConfig(format!(
            "{what} {value:?} must be non-empty without whitespace, commas or control characters"
        )));
    }
    Ok(())
}

fn absolute_path(what: &str, p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if !p.is_absolute() || s.chars().any(char::is_control) || s.trim() != s {
        return Err(OdooError::InvalidConfig(format!(
            "{what} {} must be absolute, without control characters or surrounding spaces",
            p.display()
        )));
    }
    Ok(())
}

/// `^<database>$` with every character that is special to Python's `re`
/// escaped: the `dbfilter` that would select exactly `database`.
/// careplane does not write it (see this module's docs: a `dbfilter`
/// makes Odoo read `pg_database`, which shared clusters hide); it is kept
/// for callers that run Odoo against a cluster whose catalog is readable.
/// `%` is written `[%]` rather than `\%` because Odoo substitutes `%h`/`%d`
/// (host, domain) in the filter *before* compiling it, and `\%d` would
/// still contain `%d`. (Validated names contain neither, but the
/// escaping must not depend on that.)
pub fn dbfilter_for(database: &str) -> String {
    let mut out = String::with_capacity(database.len() + 8);
    out.push('^');
    for c in database.chars() {
        match c {
            '%' => out.push_str("[%]"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            c if c.is_ascii() => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('$');
    out
}

/// Renders `odoo.conf` for one role of the environment.
///
/// Web: `workers` from the config, `max_cron_threads = 0`, and
/// `gevent_port` when `workers > 0`. Cron: `workers = 0`,
/// `max_cron_threads = cron_threads`, `http_enable = False` (and the
/// process also gets `--no-http`, see [`crate::process_argv`]). Both carry
/// every hardening option described in the [module docs](self) and no
/// secret.
///
/// # Panics
///
/// If `cfg` fails [`EnvConfig::validate`]: an invalid value could inject
/// options into the file, so rendering it is a bug in the caller.
/// [`crate::write_configs`] validates first and returns the error instead;
/// use [`try_render_config`] to get it as a `Result`.
pub fn render_config(cfg: &EnvConfig, role: Role) -> String {
    match try_render_config(cfg, role) {
        Ok(s) => s,
        Err(e) => panic!("render_config: {e}"),
    }
}

/// [`render_config`] returning validation errors instead of panicking.
pub fn try_render_config(cfg: &EnvConfig, role: Role) -> Result<String> {
    cfg.validate()?;
    let mut s = String::new();
    let mut kv = |k: &str, v: &dyn std::fmt::Display| {
        let v = v.to_string();
        let _ = if v.is_empty() {
            writeln!(s, "{k} =")
        } else {
            writeln!(s, "{k} = {v}")
        };
    };
    let (workers, cron_threads) = match role {
        Role::Web => (cfg.workers, 0),
        Role::Cron => (0, cfg.cron_threads),
    };
    let addons = cfg
        .addons_paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");

    kv("admin_passwd", &cfg.admin_passwd_hash);
    kv("db_name", &cfg.database);
    // Explicitly empty (not left to Odoo's default): with `db_name` set, no
    // filter means Odoo serves that one database without listing the
    // catalog's databases (see the module docs).
    kv("dbfilter", &"");
    kv("list_db", &"False");
    kv("db_host", &cfg.db_host);
    kv("db_port", &cfg.db_port);
    kv("db_user", &cfg.db_user);
    kv("db_password", &"False");
    kv("db_sslmode", &cfg.db_sslmode);
    kv("proxy_mode", &"True");
    kv("http_interface", &cfg.http_interface);
    kv("http_port", &cfg.http_port);
    match role {
        Role::Web if cfg.workers > 0 => kv("gevent_port", &cfg.gevent_port),
        Role::Web => {}
        Role::Cron => kv("http_enable", &"False"),
    }
    kv("workers", &workers);
    kv("max_cron_threads", &cron_threads);
    kv("data_dir", &cfg.data_dir.display());
    kv("addons_path", &addons);
    kv("server_wide_modules", &cfg.server_wide_modules.join(","));
    kv("without_demo", &"True");
    kv("limit_memory_soft", &cfg.limits.memory_soft);
    kv("limit_memory_hard", &cfg.limits.memory_hard);
    kv("limit_time_cpu", &cfg.limits.time_cpu);
    kv("limit_time_real", &cfg.limits.time_real);
    kv("limit_request", &cfg.limits.request);
    if let Some(r) = &cfg.redis {
        kv("redis_host", &r.host);
        kv("redis_port", &r.port);
        kv("redis_user", &r.user);
        kv("redis_prefix", &r.key_prefix);
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Odoo configuration ({} process) for database {}, written by careplane.\n\
         # careplane rewrites this file on every apply: edit the careplane spec instead.\n\
         # It holds no secret: the database password is passed as PGPASSWORD.\n\
         # Public URL: {}\n\
         [options]",
        role.as_str(),
        cfg.database,
        cfg.base_url
    );
    out.push_str(&s);
    Ok(out)
}

/// Writes `<dir>/odoo-web.conf` and `<dir>/odoo-cron.conf` (atomically;
/// with an `owner`, root's files of mode 0640 in the owner's group, which
/// Odoo can read and not write; without, 0600) and creates
/// `data_dir` with mode 0700 owned by `owner`. Returns the two file paths
/// (web, cron).
///
/// The service user must be able to traverse `dir` and its ancestors to
/// read the files; that is checked and reported here rather than as an
/// opaque "permission denied" in Odoo's log later.
pub fn write_configs(
    dir: &Path,
    cfg: &EnvConfig,
    owner: Option<(u32, u32)>,
) -> Result<(PathBuf, PathBuf)> {
    let web = try_render_config(cfg, Role::Web)?;
    let cron = try_render_config(cfg, Role::Cron)?;
    sys::ensure_dir(dir, 0o755)?;
    if let Some((uid, gid)) = owner {
        check_traversable(dir, uid, gid)?;
    }
    ensure_private_dir(&cfg.data_dir, owner)?;
    let web_path = dir.join(Role::Web.config_file_name());
    let cron_path = dir.join(Role::Cron.config_file_name());
    // Root's files that the Odoo user may read but not change: tenant code
    // runs as that user and must not turn its own hardening off (the
    // database manager, say) for its next restart.
    let (mode, file_owner) = match owner {
        Some((_, gid)) => (0o640, Some((0, gid))),
        None => (0o600, None),
    };
    sys::atomic_write(&web_path, web.as_bytes(), mode, file_owner)?;
    sys::atomic_write(&cron_path, cron.as_bytes(), mode, file_owner)?;
    Ok((web_path, cron_path))
}

/// Creates `dir` (parents with the default mode) and makes it 0700, owned by
/// `owner`: the filestore holds patient documents.
fn ensure_private_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    sys::ensure_dir(dir, 0o700)?;
    let meta = fs::symlink_metadata(dir).map_err(io_err("reading data directory", dir))?;
    if !meta.is_dir() {
        return Err(OdooError::InvalidConfig(format!(
            "data_dir {} is not a directory (symlinks are not followed)",
            dir.display()
        )));
    }
    if let Some((uid, gid)) = owner {
        if meta.uid() != uid || meta.gid() != gid {
            sys::chown(dir, uid, gid).map_err(io_err("changing owner of data directory", dir))?;
        }
    }
    if meta.mode() & 0o7777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting mode 0700 on data directory", dir))?;
    }
    Ok(())
}

/// Errors when `uid`/`gid` cannot search (`x`) `dir` or an ancestor.
fn check_traversable(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    if uid == 0 {
        return Ok(());
    }
    let dir = fs::canonicalize(dir).map_err(io_err("resolving directory", dir))?;
    for d in dir.ancestors() {
        let m = fs::metadata(d).map_err(io_err("reading directory", d))?;
        let mode = m.mode();
        let ok = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(OdooError::InvalidConfig(format!(
                "directory {} is not traversable by uid {uid} (gid {gid}), which must read the Odoo \
                 configuration below it: run `chmod o+x {}` or choose another directory",
                d.display(),
                d.display()
            )));
        }
    }
    Ok(())
}

//! PostgreSQL clusters run as child processes, hardened, with tenant
//! databases and roles provisioned in them.
//!
//! Layout of a cluster root (owned by the service user, mode 0700):
//!
//! ```text
//! <root>/data/            PGDATA (initdb --data-checksums)
//! <root>/conf/            careplane.conf (managed settings), pg_hba.conf, initdb-complete marker
//! <root>/tls/             ca.crt, server.crt, server.key (all 0600)
//! <root>/run/             unix socket directory (0700: only the service user and root)
//! <root>/log/             server logs (logging_collector) and pg_ctl's startup.log
//! ```
//!
//! Isolation model: the server listens on 127.0.0.1 only; tenants may only
//! connect over TLS (`hostssl` lines, no `host` lines) to their own database
//! with their own role (one pg_hba line per pair, nothing else), with
//! SCRAM-SHA-256. The `careplane_admin` superuser is reachable only through
//! the unix socket in `<root>/run`. `CONNECT` is additionally revoked from
//! PUBLIC on every database, so a pg_hba mistake alone would not open access.
//! The catalog views that name other databases are closed to PUBLIC in every
//! database careplane makes and in `postgres` ([`PgCluster::hide_catalog`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::config::{ChannelBinding, SslMode};
use postgres::{Client, NoTls};
use secrecy::{ExposeSecret, SecretString};

use crate::error::{LocalError, Result};
use crate::fsutil;
use crate::system::{self, ServiceUser};

/// The superuser initdb creates. Its password authenticates careplane over
/// the unix socket; no TCP pg_hba line ever names it.
pub const ADMIN_ROLE: &str = "careplane_admin";

/// Oldest supported major version: `DROP DATABASE ... WITH (FORCE)` needs 13.
pub const MIN_MAJOR_VERSION: u32 = 13;

const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Startup options of every connection careplane makes: a client-side
/// `search_path` overrides whatever the database or role was given with
/// `ALTER ... SET`, so unqualified names cannot resolve to tenant objects.
const PINNED_OPTIONS: &str = "-c search_path=pg_catalog";

/// `pg_database.datconnlimit` of a database PostgreSQL marked invalid.
const INVALID_CONNLIMIT: i32 = -2;

/// Catalog tables and views that PostgreSQL lets every role read and that
/// name other databases (or carry what their owners wrote about them:
/// comments, per-database settings, security labels). On a shared cluster
/// they would show each tenant the other hospitals' database names, so
/// SELECT is revoked from PUBLIC on them (see [`PgCluster::hide_catalog`]).
/// Relations missing from older servers are skipped.
pub const HIDDEN_CATALOG_RELATIONS: &[&str] = &[
    "pg_database",
    "pg_db_role_setting",
    "pg_shdescription",
    "pg_seclabels",
    "pg_stat_activity",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_progress_analyze",
    "pg_stat_progress_cluster",
    "pg_stat_progress_copy",
    "pg_stat_progress_create_index",
    "pg_stat_progress_vacuum",
    "pg_prepared_xacts",
    "pg_replication_slots",
];

/// Functions that turn a database's oid (which `pg_shdepend` or
/// `pg_stat_get_activity` still show) into its name; EXECUTE is revoked
/// from PUBLIC alongside [`HIDDEN_CATALOG_RELATIONS`].
pub const HIDDEN_CATALOG_FUNCTIONS: &[&str] = &[
    "pg_describe_object(oid, oid, integer)",
    "pg_identify_object(oid, oid, integer)",
    "pg_identify_object_as_address(oid, oid, integer)",
];

/// Where a database stands, as the maintenance database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseState {
    /// No such database.
    Absent,
    /// A `CREATE` or `DROP DATABASE` was cut short; it can only be dropped.
    Invalid,
    /// Made by careplane and not yet handed over: owned by the admin with
    /// `CONNECTION LIMIT 0` (which binds every role but superusers), so no
    /// tenant has been inside and it holds nothing a tenant wrote.
    Pristine,
    /// Anything else: owned by a tenant (or sealed as a template).
    Open {
        /// The owning role.
        owner: String,
    },
}

/// The postmaster's pid of the cluster kept in `root`, when it runs.
pub fn running_pid_at(root: &Path) -> Option<u32> {
    let pid = fsutil::read_pid_file(&root.join("data").join("postmaster.pid"))?;
    system::pid_alive_as(pid, "postgres").then_some(pid)
}

/// Whether the connected database has any user table, view, sequence or
/// foreign table outside pg_catalog/information_schema. Only catalog
/// relations, schema-qualified, under the pinned `search_path`.
pub fn database_has_data(c: &mut Client) -> std::result::Result<bool, postgres::Error> {
    let row = c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
         AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f'))",
        &[],
    )?;
    Ok(row.get(0))
}

/// Revokes PUBLIC's SELECT on [`HIDDEN_CATALOG_RELATIONS`] and EXECUTE on
/// [`HIDDEN_CATALOG_FUNCTIONS`] in the connected database, as its superuser.
/// Catalog privileges live in each database's own `pg_class` and `pg_proc`,
/// shared catalogs included, so this is per database; `CREATE DATABASE ...
/// TEMPLATE` copies them. Only what PUBLIC still holds is revoked: a repeat
/// changes nothing. Every name is schema-qualified (pinned `search_path`).
/// Whether PUBLIC still holds any of the privileges [`hide_catalog_in`]
/// revokes in the connected database.
fn catalog_open_in(c: &mut Client) -> std::result::Result<bool, postgres::Error> {
    let (relations, functions) = open_catalog(c)?;
    Ok(!relations.is_empty() || !functions.is_empty())
}

/// The relations and functions of the hidden catalog that PUBLIC can still
/// read or run in the connected database.
fn open_catalog(
    c: &mut Client,
) -> std::result::Result<(Vec<String>, Vec<String>), postgres::Error> {
    let relations: Vec<&str> = HIDDEN_CATALOG_RELATIONS.to_vec();
    let functions: Vec<&str> = HIDDEN_CATALOG_FUNCTIONS.to_vec();
    let open_relations = c.query(
        "SELECT r FROM pg_catalog.unnest($1::text[]) r WHERE pg_catalog.has_table_privilege(\
         'public', pg_catalog.to_regclass('pg_catalog.' OPERATOR(pg_catalog.||) r), 'SELECT')",
        &[&relations],
    )?;
    let open_functions = c.query(
        "SELECT f FROM pg_catalog.unnest($1::text[]) f WHERE pg_catalog.has_function_privilege(\
         'public', pg_catalog.to_regprocedure('pg_catalog.' OPERATOR(pg_catalog.||) f), 'EXECUTE')",
        &[&functions],
    )?;
    Ok((
        open_relations.iter().map(|r| r.get(0)).collect(),
        open_functions.iter().map(|r| r.get(0)).collect(),
    ))
}

fn hide_catalog_in(c: &mut Client) -> std::result::Result<(), postgres::Error> {
    let (relations, functions) = open_catalog(c)?;
    let mut sql = String::new();
    for r in relations {
        sql.push_str(&format!(
            "REVOKE SELECT ON pg_catalog.{} FROM PUBLIC;",
            quote_ident(&r)
        ));
    }
    for f in functions {
        // A signature from HIDDEN_CATALOG_FUNCTIONS, which PostgreSQL just
        // resolved: not tenant input.
        sql.push_str(&format!(
            "REVOKE EXECUTE ON FUNCTION pg_catalog.{f} FROM PUBLIC;"
        ));
    }
    if !sql.is_empty() {
        c.batch_execute(&sql)?;
    }
    Ok(())
}

const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings careplane sets for hardening (or that would let a setting escape
/// the managed configuration); an operator may not override them. The spec
/// crate refuses the same list at `validate` time
/// (`careplane_spec::PROTECTED_PG_SETTINGS`; this crate may not depend on
/// it); an engine test keeps the two equal.
pub const PROTECTED_SETTINGS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "unix_socket_permissions",
    "unix_socket_group",
    "password_encryption",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "ssl_crl_file",
    "ssl_crl_dir",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "ssl_passphrase_command",
    "ssl_passphrase_command_supports_reload",
    "hba_file",
    "ident_file",
    "config_file",
    "data_directory",
    "external_pid_file",
    "krb_server_keyfile",
    "log_connections",
    "log_disconnections",
    "log_statement",
    "logging_collector",
    "log_directory",
    "log_filename",
    "log_file_mode",
    "log_destination",
    "include",
    "include_if_exists",
    "include_dir",
    // Data integrity: healthcare data must survive crashes and detect corruption.
    "fsync",
    "full_page_writes",
    "ignore_checksum_failure",
    "zero_damaged_pages",
    "allow_system_table_mods",
];

/// Names with a special meaning in pg_hba.conf or reserved by PostgreSQL or
/// careplane; a tenant may not use them.
const RESERVED_NAMES: &[&str] = &[
    "postgres",
    "template0",
    "template1",
    ADMIN_ROLE,
    "all",
    "sameuser",
    "samerole",
    "samegroup",
    "replication",
    "public",
    "none",
    "current_user",
    "session_user",
    "current_role",
];

/// Where the PostgreSQL server programs live and which major version they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// Directory holding initdb, pg_ctl and postgres.
    pub dir: PathBuf,
    /// Major version, e.g. 15; a data directory only works with its own major.
    pub major_version: u32,
}

impl PgBinaries {
    /// Path of one of the server programs.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Override dir, else `pg_config --bindir`, else newest /usr/lib/postgresql/*/bin. Checks initdb/pg_ctl/postgres exist; reads version from `postgres --version`.
///
/// Debian's `/usr/bin` only has wrapper scripts (pg_wrapper) that pick a
/// cluster by convention, so careplane always runs the real binaries.
/// `pg_config` may come from a newer libpq-dev than the installed server, so
/// its answer is used only if it actually holds the server programs.
pub fn find_binaries(override_dir: Option<&Path>) -> Result<PgBinaries> {
    let dir = match override_dir {
        Some(dir) => {
            if !has_server_programs(dir) {
                return Err(LocalError::Binaries(format!(
                    "{} does not contain initdb, pg_ctl and postgres",
                    dir.display()
                )));
            }
            dir.to_path_buf()
        }
        None => match pg_config_bindir().filter(|d| has_server_programs(d)) {
            Some(dir) => dir,
            None => newest_debian_bindir().ok_or_else(|| {
                LocalError::Binaries(
                    "no PostgreSQL server found: neither `pg_config --bindir` nor \
                     /usr/lib/postgresql/*/bin holds initdb, pg_ctl and postgres; install the \
                     server (e.g. `apt-get install postgresql`) or pass the bin directory"
                        .into(),
                )
            })?,
        },
    };
    let postgres = dir.join("postgres");
    let out = std::process::Command::new(&postgres)
        .arg("--version")
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            LocalError::Binaries(format!("running {} --version: {e}", postgres.display()))
        })?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let major = parse_major_version(&text).ok_or_else(|| {
        LocalError::Binaries(format!(
            "could not read the version from `{} --version` (got {:?})",
            postgres.display(),
            text.trim()
        ))
    })?;
    if major < MIN_MAJOR_VERSION {
        return Err(LocalError::Binaries(format!(
            "PostgreSQL {major} in {} is too old; careplane needs {MIN_MAJOR_VERSION} or newer",
            dir.display()
        )));
    }
    Ok(PgBinaries {
        dir,
        major_version: major,
    })
}

fn has_server_programs(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    ["initdb", "pg_ctl", "postgres"].iter().all(|p| {
        std::fs::metadata(dir.join(p))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if has_server_programs(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, p)| p)
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> 15.
fn parse_major_version(text: &str) -> Option<u32> {
    let after = text.split(')').nth(1)?.trim_start();
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// One PostgreSQL cluster (a shared one or a tenant's dedicated one).
#[derive(Debug, Clone)]
pub struct PgCluster {
    /// Used in messages, e.g. "shared" or a tenant name.
    pub name: String,
    /// Cluster root owned by careplane; PGDATA = root/data, sockets in root/run, logs root/log.
    pub root: PathBuf,
    /// TCP port on 127.0.0.1 (and the unix socket's number).
    pub port: u16,
    /// Server programs to run.
    pub bin: PgBinaries,
    /// Who runs the server; `None` when careplane itself is not root.
    pub user: Option<ServiceUser>,
    /// Password of the superuser role "careplane_admin" (set by initdb through a 0600 --pwfile that is removed afterwards).
    pub admin_password: SecretString,
    /// Extra postgresql.conf settings from the operator (hardening keys are refused with an error naming the key).
    pub settings: BTreeMap<String, String>,
}

/// The TLS material a cluster serves; the CA is also written so the server
/// could verify client certificates should a later version require them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM of the CA that signed `cert_pem`.
    pub ca_cert_pem: String,
    /// PEM of the server certificate (must cover 127.0.0.1).
    pub cert_pem: String,
    /// PEM of the server key; written 0600, owned by the service user.
    pub key_pem: SecretString,
}

/// A tenant database and the one role allowed into it.
#[derive(Debug, Clone)]
pub struct TenantDb {
    /// Database name (letters, digits, `_`, `-`, `.`; at most 63 bytes).
    pub database: String,
    /// Role name, same rules; owns the database.
    pub role: String,
    /// The role's password; only its SCRAM verifier reaches the server.
    pub password: SecretString,
    /// Maximum concurrent connections of the role (`None`: unlimited).
    pub connection_limit: Option<u32>,
    /// Names the role may still have from before (a platform made when
    /// role names were `<tenant>-<env>`): the first that exists is renamed
    /// to `role` when `role` does not exist yet, and all are dropped with it.
    pub former_roles: Vec<String>,
}

impl PgCluster {
    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Directory of the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Directory of the server logs.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    /// Directory of careplane-managed configuration (careplane.conf, pg_hba.conf).
    pub fn conf_dir(&self) -> PathBuf {
        self.root.join("conf")
    }

    /// The pg_hba.conf the server uses (outside PGDATA, fully managed).
    pub fn hba_path(&self) -> PathBuf {
        self.conf_dir().join("pg_hba.conf")
    }

    fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    fn marker_path(&self) -> PathBuf {
        self.conf_dir().join("initdb-complete")
    }

    fn pwfile_path(&self) -> PathBuf {
        self.conf_dir().join(".initdb-pwfile")
    }

    fn startup_log(&self) -> PathBuf {
        self.log_dir().join("startup.log")
    }

    fn subject(&self) -> String {
        format!("PostgreSQL cluster {}", self.name)
    }

    fn owner(&self) -> Option<(u32, u32)> {
        system::switch_ids(self.user.as_ref())
    }

    /// Whether initdb completed for this cluster (the marker is written only
    /// after initdb succeeded, so a crash mid-initdb is detected).
    pub fn is_initialized(&self) -> bool {
        self.marker_path().exists() && self.data_dir().join("PG_VERSION").exists()
    }

    /// Records a data directory careplane did not initdb itself (one
    /// restored from a base backup) as initialized, so that `init` keeps it:
    /// without the marker `init` takes the directory for a killed initdb and
    /// wipes it. Refused unless the directory holds a `PG_VERSION`.
    pub fn mark_initialized(&self) -> Result<()> {
        if !self.data_dir().join("PG_VERSION").exists() {
            return Err(LocalError::state(
                self.subject(),
                format!(
                    "{} has no PG_VERSION: not a data directory",
                    self.data_dir().display()
                ),
            ));
        }
        fsutil::ensure_dir(&self.conf_dir(), 0o700, self.owner())?;
        if self.marker_path().exists() {
            return Ok(());
        }
        fsutil::write_file(
            &self.marker_path(),
            b"data directory restored from a base backup; careplane wipes PGDATA on init when this file is absent\n",
            0o600,
            self.owner(),
        )
    }

    /// initdb --data-checksums unless already initialized, then (re)writes careplane's managed config and TLS files, chowned to the service user.
    ///
    /// Crash safety: completion is recorded by a marker written only after
    /// initdb succeeded; a data directory without it (a killed initdb, even
    /// one that already wrote PG_VERSION) is wiped and initialized again. The
    /// managed settings live in `conf/careplane.conf`, `include`d as the last
    /// line of postgresql.conf so they win over everything before them, and
    /// `postgresql.auto.conf` is reset because `ALTER SYSTEM` would otherwise
    /// override the hardening (careplane never uses ALTER SYSTEM). pg_hba.conf
    /// is written (admin-only) only if absent, so re-running init never drops
    /// tenant access. If the server is running it is reloaded; settings that
    /// need a restart (port, shared_buffers, ...) apply at the next start.
    pub fn init(&self, tls: &TlsFiles) -> Result<()> {
        let config = self.managed_config()?;
        validate_password("admin password", &self.admin_password)?;
        system::check_runner(&self.subject(), self.user.as_ref())?;
        self.check_socket_path()?;
        let owner = self.owner();

        self.prepare_root()?;
        for dir in [
            self.socket_dir(),
            self.log_dir(),
            self.conf_dir(),
            self.tls_dir(),
        ] {
            fsutil::ensure_dir(&dir, 0o700, owner)?;
        }

        // A password file left by a crash during a previous init goes first.
        fsutil::remove_file_if_exists(&self.pwfile_path())?;
        if !self.marker_path().exists() {
            self.initdb()?;
        } else if !self.data_dir().join("PG_VERSION").exists() {
            return Err(LocalError::state(
                self.subject(),
                format!(
                    "{} records a completed initdb but {} has no PG_VERSION: the data directory \
                     was removed or damaged; restore it from backup, or delete the marker to \
                     initialize an empty cluster",
                    self.marker_path().display(),
                    self.data_dir().display()
                ),
            ));
        }

        let tls_dir = self.tls_dir();
        fsutil::write_file(
            &tls_dir.join("ca.crt"),
            tls.ca_cert_pem.as_bytes(),
            0o600,
            owner,
        )?;
        fsutil::write_file(
            &tls_dir.join("server.crt"),
            tls.cert_pem.as_bytes(),
            0o600,
            owner,
        )?;
        fsutil::write_file(
            &tls_dir.join("server.key"),
            tls.key_pem.expose_secret().as_bytes(),
            0o600,
            owner,
        )?;

        let managed = self.conf_dir().join("careplane.conf");
        fsutil::write_file(&managed, config.as_bytes(), 0o600, owner)?;
        self.ensure_include(&managed)?;
        let auto = self.data_dir().join("postgresql.auto.conf");
        let auto_content = "# Do not edit this file manually!\n\
                            # It will be overwritten by the ALTER SYSTEM command.\n\
                            # careplane resets it on every init: managed settings live in conf/careplane.conf.\n";
        if fsutil::read_optional(&auto)?.as_deref() != Some(auto_content) {
            fsutil::write_file(&auto, auto_content.as_bytes(), 0o600, owner)?;
        }
        if !self.hba_path().exists() {
            self.write_hba_file(&BTreeSet::new())?;
        }

        if self.running_pid().is_some() {
            self.reload()?;
        }
        Ok(())
    }

    /// Creates the root (and its parent, as careplane) and hands it to the
    /// service user after checking the user can reach it.
    fn prepare_root(&self) -> Result<()> {
        if let Some(parent) = self.root.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| LocalError::io("creating the platform directory", parent, e))?;
            }
        }
        system::check_traversable(&self.root, self.user.as_ref())?;
        fsutil::ensure_dir(&self.root, 0o700, self.owner())
    }

    fn initdb(&self) -> Result<()> {
        let data = self.data_dir();
        // initdb never creates postmaster.opts; the postmaster writes it at
        // every start. A data directory that was ever started holds real data
        // and is never wiped automatically, marker or not.
        if data.join("postmaster.opts").exists() {
            return Err(LocalError::state(
                self.subject(),
                format!(
                    "{} has been used by a running server but careplane's initdb marker {} is \
                     missing; refusing to wipe it. If it is this cluster's data, recreate the \
                     marker file; otherwise move the directory away",
                    data.display(),
                    self.marker_path().display()
                ),
            ));
        }
        // An initdb of a killed earlier careplane may still be writing here
        // (it runs in the cluster root): it goes first, or the two fight.
        let leftovers = system::processes_in_dir(&self.root)
            .into_iter()
            .filter(|&pid| {
                matches!(
                    system::process_comm(pid).as_deref(),
                    Some("initdb" | "postgres")
                )
            });
        for pid in leftovers {
            system::signal(pid, libc::SIGKILL);
            wait_gone(pid, STOP_TIMEOUT);
        }
        let removed = match std::fs::symlink_metadata(&data) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&data),
            Ok(_) => std::fs::remove_file(&data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => return Err(LocalError::io("inspecting the data directory", &data, e)),
        };
        removed
            .map_err(|e| LocalError::io("removing a half-initialized data directory", &data, e))?;
        let pwfile = self.pwfile_path();
        fsutil::write_file(
            &pwfile,
            format!("{}\n", self.admin_password.expose_secret()).as_bytes(),
            0o600,
            self.owner(),
        )?;
        let mut cmd = system::command(
            &self.bin.tool("initdb"),
            self.user.as_ref(),
            &self.root,
            false,
        );
        cmd.arg("-D")
            .arg(&data)
            .arg("--auth-local=scram-sha-256")
            .arg("--auth-host=scram-sha-256")
            .arg("--data-checksums")
            .arg("--encoding=UTF8")
            .arg("--locale=C")
            .arg(format!("--username={ADMIN_ROLE}"))
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = system::run(&mut cmd, &format!("{}: initdb", self.subject()), &[]);
        let removed = fsutil::remove_file_if_exists(&pwfile);
        result?;
        removed?;
        fsutil::write_file(
            &self.marker_path(),
            b"initdb completed; careplane wipes PGDATA on init when this file is absent\n",
            0o600,
            self.owner(),
        )
    }

    /// Puts `include '<managed>'` as the last line of postgresql.conf (moving
    /// it there if something was appended after it).
    fn ensure_include(&self, managed: &Path) -> Result<()> {
        const TAG: &str = "# careplane: managed settings, keep last";
        let conf = self.data_dir().join("postgresql.conf");
        let current = fsutil::read_optional(&conf)?.unwrap_or_default();
        let line = format!(
            "include = {}\t{TAG}",
            conf_quote(&managed.display().to_string())
        );
        let mut kept: Vec<&str> = current.lines().filter(|l| !l.contains(TAG)).collect();
        while kept.last().is_some_and(|l| l.trim().is_empty()) {
            kept.pop();
        }
        let mut wanted = kept.join("\n");
        wanted.push_str("\n\n");
        wanted.push_str(&line);
        wanted.push('\n');
        if wanted != current {
            fsutil::write_file(&conf, wanted.as_bytes(), 0o600, self.owner())?;
        }
        Ok(())
    }

    /// Unix socket paths are limited to 107 bytes; fail early with a clear
    /// message rather than letting the server refuse to start.
    fn check_socket_path(&self) -> Result<()> {
        let socket = system::absolute(&self.socket_dir())?.join(format!(".s.PGSQL.{}", self.port));
        let len = socket.as_os_str().len();
        if len > 107 {
            return Err(LocalError::invalid(
                "cluster root",
                self.root.display().to_string(),
                format!(
                    "the unix socket path {} would be {len} bytes, over the 107-byte limit; use a shorter platform directory",
                    socket.display()
                ),
            ));
        }
        Ok(())
    }

    /// The content of conf/careplane.conf: small defaults, then the operator's
    /// settings, then the hardening (last, so it wins even if validation were
    /// bypassed).
    fn managed_config(&self) -> Result<String> {
        if self.name.is_empty() || self.name.contains(['\n', '\r', '\0']) {
            return Err(LocalError::invalid(
                "cluster name",
                &self.name,
                "must be a non-empty single line",
            ));
        }
        if self.port == 0 {
            return Err(LocalError::invalid("port", "0", "a fixed port is required"));
        }
        let root = system::absolute(&self.root)?;
        let root_str = root.display().to_string();
        if root_str.contains(['\n', '\r', '\0']) {
            return Err(LocalError::invalid(
                "cluster root",
                root_str,
                "contains a line break or NUL",
            ));
        }
        let mut out = String::new();
        out.push_str("# Managed by careplane: rewritten on every init. Do not edit.\n\n");
        out.push_str(
            "# Defaults sized for tests and demos (operator settings below override them).\n",
        );
        out.push_str("shared_buffers = '32MB'\n");
        out.push_str("max_connections = 100\n");
        out.push_str("log_line_prefix = '%m [%p] %q%u@%d '\n");
        out.push_str("log_timezone = 'UTC'\n");
        out.push_str("timezone = 'UTC'\n\n");
        out.push_str("# Operator settings.\n");
        for (key, value) in &self.settings {
            let k = key.trim().to_ascii_lowercase();
            if k.is_empty()
                || !k.starts_with(|c: char| c.is_ascii_lowercase())
                || !k
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
            {
                return Err(LocalError::invalid(
                    "PostgreSQL setting name",
                    key,
                    "must be letters, digits, `_` and `.`, starting with a letter",
                ));
            }
            if PROTECTED_SETTINGS.contains(&k.as_str()) {
                return Err(LocalError::ForbiddenSetting {
                    cluster: self.name.clone(),
                    key: key.clone(),
                });
            }
            if value.contains(['\n', '\r', '\0']) {
                return Err(LocalError::invalid(
                    format!("value of PostgreSQL setting {key}"),
                    value,
                    "contains a line break or NUL",
                ));
            }
            out.push_str(&format!("{k} = {}\n", conf_quote(value)));
        }
        let path = |p: PathBuf| conf_quote(&p.display().to_string());
        out.push_str("\n# Hardening (cannot be overridden).\n");
        out.push_str("listen_addresses = '127.0.0.1'\n");
        out.push_str(&format!("port = {}\n", self.port));
        out.push_str(&format!(
            "unix_socket_directories = {}\n",
            path(root.join("run"))
        ));
        out.push_str("unix_socket_permissions = 0700\n");
        out.push_str("password_encryption = 'scram-sha-256'\n");
        out.push_str("ssl = on\n");
        out.push_str(&format!(
            "ssl_cert_file = {}\n",
            path(root.join("tls/server.crt"))
        ));
        out.push_str(&format!(
            "ssl_key_file = {}\n",
            path(root.join("tls/server.key"))
        ));
        out.push_str(&format!(
            "ssl_ca_file = {}\n",
            path(root.join("tls/ca.crt"))
        ));
        out.push_str("ssl_min_protocol_version = 'TLSv1.2'\n");
        out.push_str(&format!(
            "hba_file = {}\n",
            path(root.join("conf/pg_hba.conf"))
        ));
        out.push_str("log_connections = on\n");
        out.push_str("log_disconnections = on\n");
        out.push_str("log_statement = 'ddl'\n");
        out.push_str("logging_collector = on\n");
        out.push_str("log_destination = 'stderr'\n");
        out.push_str(&format!("log_directory = {}\n", path(root.join("log"))));
        out.push_str("log_filename = 'postgresql-%Y-%m-%d.log'\n");
        out.push_str("log_file_mode = 0600\n");
        out.push_str("fsync = on\n");
        out.push_str("full_page_writes = on\n");
        Ok(out)
    }

    /// Starts if not running (pg_ctl start -w -l root/log/startup.log), returns the postmaster pid. Idempotent.
    ///
    /// The server runs in its own session so it outlives careplane. After a
    /// crash (postmaster killed) PostgreSQL's own lock-file and shared-memory
    /// interlocks decide whether starting is safe; careplane never deletes
    /// postmaster.pid, and retries for a while when orphaned backends of the
    /// dead postmaster are still exiting.
    pub fn start(&self) -> Result<u32> {
        system::check_runner(&self.subject(), self.user.as_ref())?;
        if !self.is_initialized() {
            return Err(LocalError::state(
                self.subject(),
                "is not initialized; run init first",
            ));
        }
        self.check_data_version()?;
        if let Some(pid) = self.running_pid() {
            self.wait_ready(pid)?;
            return Ok(pid);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        self.wait_for_crashed_postmaster(deadline);
        loop {
            let mut cmd = system::command(
                &self.bin.tool("pg_ctl"),
                self.user.as_ref(),
                &self.root,
                true,
            );
            cmd.arg("start")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-w")
                .arg("-t")
                .arg(START_TIMEOUT.as_secs().to_string())
                .arg("-s")
                .arg("-l")
                .arg(self.startup_log());
            let startup = self.startup_log();
            let logged_before = std::fs::metadata(&startup).map(|m| m.len()).unwrap_or(0);
            match system::run(&mut cmd, &format!("{}: start", self.subject()), &[]) {
                Ok(_) => break,
                Err(e) => {
                    let latest = self.latest_log();
                    let e = system::with_log_tails(e, &[&startup, &latest]);
                    // Only this attempt's lines: a crashed postmaster not yet
                    // reaped, or its backends still attached to shared memory.
                    let new_lines = system::read_from(&startup, logged_before);
                    let retryable = new_lines.contains("is still in use")
                        || new_lines.contains("lock file \"postmaster.pid\" already exists");
                    if let Some(pid) = self.running_pid() {
                        // Someone else (a concurrent start) won the race.
                        self.wait_ready(pid)?;
                        return Ok(pid);
                    }
                    if !retryable || Instant::now() > deadline {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        let pid = self.running_pid().ok_or_else(|| {
            LocalError::state(
                self.subject(),
                "pg_ctl reported success but no postmaster is running",
            )
        })?;
        self.wait_ready(pid)?;
        Ok(pid)
    }

    /// A data directory only runs with binaries of its own major version;
    /// say so plainly instead of letting the postmaster fail.
    fn check_data_version(&self) -> Result<()> {
        let path = self.data_dir().join("PG_VERSION");
        let text = fsutil::read_optional(&path)?.unwrap_or_default();
        let data_major: Option<u32> = text.trim().parse().ok();
        match data_major {
            Some(v) if v == self.bin.major_version => Ok(()),
            Some(v) => Err(LocalError::state(
                self.subject(),
                format!(
                    "the data directory {} is PostgreSQL {v} but the binaries in {} are {}; use \
                     PostgreSQL {v} binaries or upgrade the cluster with pg_upgrade",
                    self.data_dir().display(),
                    self.bin.dir.display(),
                    self.bin.major_version
                ),
            )),
            None => Err(LocalError::state(
                self.subject(),
                format!("{} is unreadable or malformed", path.display()),
            )),
        }
    }

    /// After a crash, waits (bounded) until the dead postmaster has been
    /// reaped and its orphaned backends have exited: until then PostgreSQL's
    /// interlocks refuse to start, correctly, and pg_ctl would just fail.
    fn wait_for_crashed_postmaster(&self, deadline: Instant) {
        let Some(stale) = fsutil::read_pid_file(&self.data_dir().join("postmaster.pid")) else {
            return;
        };
        let data = self.data_dir();
        while Instant::now() < deadline {
            let zombie = system::is_zombie(stale);
            let orphans: Vec<u32> = system::processes_in_dir(&data)
                .into_iter()
                .filter(|pid| system::process_comm(*pid).is_some_and(|c| c.starts_with("postgres")))
                .collect();
            if !zombie && orphans.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until postmaster.pid says "ready" (line 8), failing if the
    /// postmaster dies meanwhile.
    fn wait_ready(&self, pid: u32) -> Result<()> {
        let pidfile = self.data_dir().join("postmaster.pid");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = fsutil::read_optional(&pidfile)?
                .and_then(|t| t.lines().nth(7).map(|s| s.trim().to_string()))
                .unwrap_or_default();
            if status == "ready" {
                return Ok(());
            }
            if !system::pid_alive(pid) {
                return Err(LocalError::state(
                    self.subject(),
                    format!(
                        "the postmaster (pid {pid}) exited while starting; log tail:\n{}",
                        system::tail_file(&self.latest_log(), 20)
                    ),
                ));
            }
            if Instant::now() > deadline {
                return Err(LocalError::Timeout {
                    subject: self.subject(),
                    what: "the server to accept connections".into(),
                    secs: START_TIMEOUT.as_secs(),
                    log_tail: system::tail_file(&self.latest_log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (pg_ctl stop -m fast: disconnects sessions, checkpoints); Ok if not running.
    pub fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            return Ok(());
        };
        let mut cmd = system::command(
            &self.bin.tool("pg_ctl"),
            self.user.as_ref(),
            &self.root,
            false,
        );
        cmd.arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-m")
            .arg("fast")
            .arg("-w")
            .arg("-t")
            .arg(STOP_TIMEOUT.as_secs().to_string())
            .arg("-s");
        let result = system::run(&mut cmd, &format!("{}: stop", self.subject()), &[])
            .map_err(|e| system::with_log_tails(e, &[&self.latest_log()]));
        wait_gone(pid, Duration::from_secs(10));
        match result {
            Ok(_) => Ok(()),
            Err(_) if !system::pid_alive(pid) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The postmaster's pid, from postmaster.pid, if that process is alive
    /// and is a postgres process (guards against pid reuse after a crash).
    pub fn running_pid(&self) -> Option<u32> {
        running_pid_at(&self.root)
    }

    /// Superuser connection to the maintenance database `postgres` over the
    /// unix socket in root/run. Superuser work happens here only: no tenant
    /// can create objects in `postgres` or set its settings.
    pub fn admin(&self) -> Result<Client> {
        self.admin_connect("postgres")
    }

    /// Superuser connection to `database`. Private on purpose: careplane
    /// never runs SQL as a superuser in a database a tenant owns or can
    /// reach (its tables, views, functions and `search_path` could make the
    /// superuser run tenant code). The only other callers are the steps on a
    /// *pristine* database (see [`DatabaseState::Pristine`]): owned by the admin, closed to every
    /// other role, holding nothing a tenant wrote.
    fn admin_connect(&self, database: &str) -> Result<Client> {
        let mut cfg = postgres::Config::new();
        cfg.host_path(self.socket_dir())
            .port(self.port)
            .user(ADMIN_ROLE)
            .password(self.admin_password.expose_secret())
            .dbname(database)
            .application_name("careplane")
            .options(PINNED_OPTIONS)
            .connect_timeout(CONNECT_TIMEOUT);
        cfg.connect(NoTls).map_err(|e| {
            LocalError::pg(
                &self.name,
                format!(
                    "connecting as {ADMIN_ROLE} to database {database} via {}",
                    self.socket_dir().display()
                ),
                e,
            )
        })
    }

    /// A connection into a tenant's database as the tenant's own role (TLS
    /// verified against `ca_cert_pem`, SCRAM with channel binding, a pinned
    /// `search_path`): how careplane reads and writes inside a database the
    /// tenant controls. Whatever the tenant planted there runs with the
    /// tenant's own rights, never careplane's.
    pub fn tenant_connect(&self, db: &TenantDb, ca_cert_pem: &str) -> Result<Client> {
        connect_tenant_with(
            self.port,
            &db.database,
            &db.role,
            &db.password,
            ca_cert_pem,
            Some(PINNED_OPTIONS),
        )
    }

    /// What the maintenance database says of `database`, without entering it.
    pub fn database_state(&self, database: &str) -> Result<DatabaseState> {
        self.state_on(&mut self.admin()?, database)
    }

    /// [`Self::database_state`] over an open admin connection.
    fn state_on(&self, c: &mut Client, database: &str) -> Result<DatabaseState> {
        let row = c
            .query_opt(
                "SELECT pg_catalog.pg_get_userbyid(datdba)::text, datconnlimit \
                 FROM pg_catalog.pg_database WHERE datname = $1",
                &[&database],
            )
            .map_err(|e| {
                LocalError::pg(&self.name, format!("looking up database {database}"), e)
            })?;
        Ok(match row {
            None => DatabaseState::Absent,
            // PostgreSQL marks a database whose DROP or CREATE was cut short
            // with datconnlimit -2; it can only be dropped.
            Some(r) if r.get::<_, i32>(1) == INVALID_CONNLIMIT => DatabaseState::Invalid,
            Some(r) if r.get::<_, String>(0) == ADMIN_ROLE && r.get::<_, i32>(1) == 0 => {
                DatabaseState::Pristine
            }
            Some(r) => DatabaseState::Open { owner: r.get(0) },
        })
    }

    /// Ensures the tenant's role and database exist with exactly careplane's attributes and privileges.
    ///
    /// Role: LOGIN, NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    /// NOBYPASSRLS, CONNECTION LIMIT, no role memberships, password set as a
    /// SCRAM-SHA-256 verifier computed here so the plaintext never reaches
    /// the server; the statement runs with statement logging switched off for
    /// its transaction so not even the verifier lands in the logs. Database:
    /// owned by the role, created from template0 in UTF8; CONNECT/TEMP revoked
    /// from PUBLIC and granted to the role; inside it, `public` is owned by
    /// the role and PUBLIC may not create there. Existing objects are altered
    /// to converge, so re-running after a crash or a password change works.
    ///
    /// Every statement runs in the maintenance database. The steps inside
    /// the new database (securing `public`, hiding the catalog's database
    /// names, see [`PgCluster::hide_catalog`]) happen while it is
    /// [`DatabaseState::Pristine`]: created owned by the admin with
    /// `CONNECTION LIMIT 0`, so no tenant has been inside; only then is it
    /// handed to the role. `postgres` and `template1` are hidden too. A
    /// database that was cut short (invalid) is dropped and made again:
    /// PostgreSQL allows nothing else on it.
    pub fn ensure_tenant_database(&self, db: &TenantDb) -> Result<()> {
        validate_name("database name", &db.database, false)?;
        validate_name("role name", &db.role, true)?;
        validate_password("password", &db.password)?;
        // One admin connection for all of it: each new one costs a backend
        // fork and a SCRAM exchange.
        let mut c = self.admin()?;
        self.ensure_role_on(&mut c, db)?;
        let ctx = |what: &str| {
            format!(
                "{what} for tenant database {} / role {}",
                db.database, db.role
            )
        };
        let database = quote_ident(&db.database);
        let role = quote_ident(&db.role);
        let mut state = self.state_on(&mut c, &db.database)?;
        if state == DatabaseState::Invalid {
            self.drop_database(&db.database)?;
            state = DatabaseState::Absent;
        }
        if state == DatabaseState::Absent {
            let create = format!(
                "CREATE DATABASE {database} OWNER {ADMIN_ROLE} TEMPLATE template0 ENCODING 'UTF8' \
                 CONNECTION LIMIT 0"
            );
            if let Err(e) = c.batch_execute(&create) {
                let e = LocalError::pg(&self.name, ctx("creating the database"), e);
                if e.sql_state() != Some("42P04") {
                    return Err(e);
                }
            }
            state = self.state_on(&mut c, &db.database)?;
        }
        if state == DatabaseState::Pristine && self.clone_in_progress(&db.database, &db.role)? {
            // A template copy whose hand-over was cut short: the clone
            // finishes it (its objects still belong to the template's role).
            return Ok(());
        }
        if state == DatabaseState::Pristine {
            let mut inner = self.admin_connect(&db.database)?;
            let has_public = inner
                .query_opt(
                    "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'public'",
                    &[],
                )
                .map_err(|e| LocalError::pg(&self.name, ctx("looking up schema public"), e))?
                .is_some();
            if has_public {
                inner
                    .batch_execute(&format!(
                        "REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
                         ALTER SCHEMA public OWNER TO {role}"
                    ))
                    .map_err(|e| LocalError::pg(&self.name, ctx("securing schema public"), e))?;
            }
            hide_catalog_in(&mut inner)
                .map_err(|e| LocalError::pg(&self.name, ctx("hiding the catalog"), e))?;
            drop(inner);
            self.open_database_on(&mut c, &db.database, &db.role)?;
        } else if let DatabaseState::Open { owner, .. } = &state {
            if owner != &db.role {
                c.batch_execute(&format!("ALTER DATABASE {database} OWNER TO {role}"))
                    .map_err(|e| {
                        LocalError::pg(&self.name, ctx("setting the database owner"), e)
                    })?;
            }
        }
        c.batch_execute(&format!(
            "REVOKE ALL ON DATABASE {database} FROM PUBLIC; \
                 GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}; \
                 REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC; \
                 GRANT CONNECT ON DATABASE postgres TO {role}; \
                 REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC"
        ))
        .map_err(|e| LocalError::pg(&self.name, ctx("setting database privileges"), e))?;
        self.hide_catalog_on(&mut c)
    }

    /// Hides the cluster's database names from tenants in the databases
    /// careplane's superuser may enter at any time: `postgres`, where every
    /// tenant role may connect (Odoo checks its database and listens there),
    /// and `template1`, which no tenant may enter (so a database someone
    /// makes from it starts hidden too). Tenant databases are hidden while
    /// pristine ([`PgCluster::ensure_tenant_database`],
    /// [`PgCluster::clone_database`]); a database a tenant already owns is
    /// never entered as superuser, so one made by an earlier careplane keeps
    /// the readable catalog until it is made again.
    ///
    /// Odoo needs none of these names when its configuration gives `db_name`
    /// and no `dbfilter` (see careplane-odoo's `config` module): its start-up
    /// check of `pg_database` is allowed to fail. Role names cannot be hidden
    /// this way: PostgreSQL prints any role's name for a `::regrole` cast of
    /// its oid, without a privilege check.
    pub fn hide_catalog(&self) -> Result<()> {
        self.hide_catalog_on(&mut self.admin()?)
    }

    /// [`Self::hide_catalog`] over an open admin connection to `postgres`.
    /// `template1` goes first and `postgres` last, so a `postgres` with
    /// nothing left to revoke means both are done: the usual call (every
    /// tenant database ensure) then costs one query, no extra connection.
    fn hide_catalog_on(&self, c: &mut Client) -> Result<()> {
        if !catalog_open_in(c)
            .map_err(|e| LocalError::pg(&self.name, "looking at the catalog of postgres", e))?
        {
            return Ok(());
        }
        let template1_open = c
            .query_opt(
                "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = 'template1'",
                &[],
            )
            .map_err(|e| LocalError::pg(&self.name, "looking up database template1", e))?
            .is_some_and(|r| r.get::<_, bool>(0));
        if template1_open {
            hide_catalog_in(&mut self.admin_connect("template1")?).map_err(|e| {
                LocalError::pg(&self.name, "hiding the catalog in database template1", e)
            })?;
        }
        hide_catalog_in(c)
            .map_err(|e| LocalError::pg(&self.name, "hiding the catalog in database postgres", e))
    }

    /// The role half of [`Self::ensure_tenant_database`]: the role exists
    /// with exactly careplane's attributes, password, no settings and no
    /// memberships. Runs in the maintenance database only.
    pub fn ensure_tenant_role(&self, db: &TenantDb) -> Result<()> {
        self.ensure_role_on(&mut self.admin()?, db)
    }

    /// [`Self::ensure_tenant_role`] over an open admin connection.
    fn ensure_role_on(&self, c: &mut Client, db: &TenantDb) -> Result<()> {
        validate_name("role name", &db.role, true)?;
        validate_password("password", &db.password)?;
        let limit: i64 = match db.connection_limit {
            Some(n) if n > i32::MAX as u32 => {
                return Err(LocalError::invalid(
                    "connection limit",
                    n.to_string(),
                    "too large",
                ))
            }
            Some(n) => i64::from(n),
            None => -1,
        };
        let role = quote_ident(&db.role);
        let ctx = |what: &str| format!("{what} for role {}", db.role);
        let verifier =
            postgres_protocol::password::scram_sha_256(db.password.expose_secret().as_bytes());
        let attributes = format!(
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS \
             CONNECTION LIMIT {limit} VALID UNTIL 'infinity' PASSWORD {}",
            quote_literal(&verifier)
        );
        let role_exists = |c: &mut Client, name: &str| -> Result<bool> {
            Ok(c.query_opt(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&name],
            )
            .map_err(|e| LocalError::pg(&self.name, ctx("looking up the role"), e))?
            .is_some())
        };
        let mut exists = role_exists(c, &db.role)?;
        if !exists {
            for former in &db.former_roles {
                validate_name("former role name", former, true)?;
                if role_exists(c, former)? {
                    // Keeps the oid, so the database, its objects and the
                    // SCRAM verifier (which does not depend on the name) stay
                    // the role's; its open sessions go on until they end.
                    c.batch_execute(&format!(
                        "ALTER ROLE {} RENAME TO {role}",
                        quote_ident(former)
                    ))
                    .map_err(|e| LocalError::pg(&self.name, ctx("renaming the role"), e))?;
                    exists = true;
                    break;
                }
            }
        }
        let alter = format!("ALTER ROLE {role} WITH {attributes}");
        if exists {
            self.execute_unlogged(c, &alter, &ctx("updating the role"))?;
        } else {
            let create = format!("CREATE ROLE {role} WITH {attributes}");
            match self.execute_unlogged(c, &create, &ctx("creating the role")) {
                Ok(()) => {}
                Err(e) if e.sql_state() == Some("42710") => {
                    self.execute_unlogged(c, &alter, &ctx("updating the role"))?
                }
                Err(e) => return Err(e),
            }
        }
        // A tenant cannot change its own per-role settings to anything that
        // binds careplane (careplane pins its own), but settings set behind
        // careplane's back are dropped here so the role is exactly as specified.
        c.batch_execute(&format!("ALTER ROLE {role} RESET ALL"))
            .map_err(|e| LocalError::pg(&self.name, ctx("resetting role settings"), e))?;
        let memberships = c
            .query(
                "SELECT r.rolname::text FROM pg_catalog.pg_auth_members m \
                 JOIN pg_catalog.pg_roles r ON r.oid = m.roleid \
                 JOIN pg_catalog.pg_roles u ON u.oid = m.member \
                 WHERE u.rolname = $1",
                &[&db.role],
            )
            .map_err(|e| LocalError::pg(&self.name, ctx("listing role memberships"), e))?;
        for row in memberships {
            let granted: String = row.get(0);
            c.batch_execute(&format!("REVOKE {} FROM {role}", quote_ident(&granted)))
                .map_err(|e| LocalError::pg(&self.name, ctx("revoking a role membership"), e))?;
        }
        Ok(())
    }

    /// How each tenant's role and database (database, role, wanted
    /// connection limit) differ from what [`Self::ensure_tenant_database`]
    /// makes them, read in two catalog queries over one admin connection to
    /// the maintenance database. The role: attributes granted behind
    /// careplane's back (`SUPERUSER`, `CREATEROLE`, …), another connection
    /// limit, role memberships, per-role settings, or missing. The
    /// database: missing, invalid (a `DROP` cut short), closed to
    /// connections, owned by another role, or open to `PUBLIC`. Keyed by
    /// database; tenants exactly as careplane left them are absent.
    pub fn tenant_drift(
        &self,
        tenants: &[(String, String, Option<u32>)],
    ) -> Result<BTreeMap<String, String>> {
        let mut c = self.admin()?;
        let roles: Vec<(String, Option<u32>)> =
            tenants.iter().map(|(_, r, l)| (r.clone(), *l)).collect();
        let by_role = self.role_drift_on(&mut c, &roles)?;
        let names: Vec<&str> = tenants.iter().map(|(d, _, _)| d.as_str()).collect();
        let rows = c
            .query(
                "SELECT d.datname::text, d.datconnlimit, pg_catalog.pg_get_userbyid(d.datdba)::text, \
                        d.datallowconn, \
                        pg_catalog.has_database_privilege('public', d.oid, 'CONNECT') \
                 FROM pg_catalog.pg_database d WHERE d.datname = ANY($1)",
                &[&names],
            )
            .map_err(|e| LocalError::pg(&self.name, "reading tenant databases", e))?;
        let mut out = BTreeMap::new();
        for (database, role, _) in tenants {
            let mut what: Vec<String> = by_role.get(role).into_iter().cloned().collect();
            match rows.iter().find(|r| r.get::<_, String>(0) == *database) {
                None => what.push("database is missing".into()),
                Some(r) => {
                    let limit: i32 = r.get(1);
                    let owner: String = r.get(2);
                    if limit == -2 {
                        what.push("database is invalid (a DROP was cut short)".into());
                    } else if limit != -1 || !r.get::<_, bool>(3) {
                        what.push("database is closed to connections".into());
                    }
                    if owner != *role {
                        what.push(format!("database is owned by {owner}"));
                    }
                    if r.get::<_, bool>(4) {
                        what.push("database is open to PUBLIC".into());
                    }
                }
            }
            if !what.is_empty() {
                out.insert(database.clone(), what.join("; "));
            }
        }
        Ok(out)
    }

    fn role_drift_on(
        &self,
        c: &mut Client,
        roles: &[(String, Option<u32>)],
    ) -> Result<BTreeMap<String, String>> {
        let names: Vec<&str> = roles.iter().map(|(n, _)| n.as_str()).collect();
        let rows = c
            .query(
                "SELECT r.rolname::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, \
                        r.rolreplication, r.rolbypassrls, NOT r.rolcanlogin, NOT r.rolinherit, \
                        r.rolconnlimit, \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.member = r.oid), \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s WHERE s.setrole = r.oid) \
                 FROM pg_catalog.pg_roles r WHERE r.rolname = ANY($1)",
                &[&names],
            )
            .map_err(|e| LocalError::pg(&self.name, "reading tenant roles' attributes", e))?;
        let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in &rows {
            let name: String = row.get(0);
            let mut what = Vec::new();
            for (i, attr) in [
                (1, "SUPERUSER"),
                (2, "CREATEROLE"),
                (3, "CREATEDB"),
                (4, "REPLICATION"),
                (5, "BYPASSRLS"),
                (6, "NOLOGIN"),
                (7, "NOINHERIT"),
            ] {
                if row.get::<_, bool>(i) {
                    what.push(attr.to_string());
                }
            }
            let limit: i32 = row.get(8);
            let wanted = roles
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, l)| *l)
                .map_or(-1, |l| l as i64);
            if i64::from(limit) != wanted {
                what.push(format!(
                    "CONNECTION LIMIT {limit} (careplane sets {wanted})"
                ));
            }
            if row.get::<_, bool>(9) {
                what.push("member of another role".into());
            }
            if row.get::<_, bool>(10) {
                what.push("per-role settings".into());
            }
            found.insert(name, what);
        }
        Ok(roles
            .iter()
            .filter_map(|(name, _)| match found.get(name) {
                None => Some((name.clone(), "role is missing".to_string())),
                Some(w) if w.is_empty() => None,
                Some(w) => Some((name.clone(), format!("role is {}", w.join(", ")))),
            })
            .collect())
    }

    /// Hands a [`DatabaseState::Pristine`] database to `role` and lifts its
    /// `CONNECTION LIMIT 0`: from here on careplane's superuser never enters it.
    fn open_database(&self, database: &str, role: &str) -> Result<()> {
        self.open_database_on(&mut self.admin()?, database, role)
    }

    /// [`Self::open_database`] over an open admin connection.
    fn open_database_on(&self, c: &mut Client, database: &str, role: &str) -> Result<()> {
        c.batch_execute(&format!(
            "ALTER DATABASE {0} OWNER TO {1}; ALTER DATABASE {0} CONNECTION LIMIT -1",
            quote_ident(database),
            quote_ident(role)
        ))
        .map_err(|e| {
            LocalError::pg(
                &self.name,
                format!("handing database {database} to role {role}"),
                e,
            )
        })
    }

    /// Renames `from` to `to` from the maintenance database, closing every
    /// connection to `from` first (PostgreSQL renames no database in use).
    pub fn rename_database(&self, from: &str, to: &str) -> Result<()> {
        validate_name("database name", from, false)?;
        validate_name("database name", to, false)?;
        let mut c = self.admin()?;
        let ctx = |what: &str| format!("{what} {from} (renaming it to {to})");
        c.query(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()",
            &[&from],
        )
        .map_err(|e| LocalError::pg(&self.name, ctx("closing connections to"), e))?;
        c.batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(from),
            quote_ident(to)
        ))
        .map_err(|e| LocalError::pg(&self.name, ctx("renaming"), e))
    }

    /// Drops `database` (closing its connections), keeping its role.
    pub fn drop_database(&self, database: &str) -> Result<()> {
        self.admin()?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(database)
            ))
            .map_err(|e| LocalError::pg(&self.name, format!("dropping database {database}"), e))
    }

    /// Runs one statement carrying a password verifier in its own
    /// transaction with statement logging off, so the verifier is not written
    /// to the server log (log_statement = ddl would log it otherwise). Each
    /// SET is its own query: PostgreSQL logs a multi-statement query string
    /// before executing any part of it.
    fn execute_unlogged(&self, c: &mut Client, sql: &str, context: &str) -> Result<()> {
        let mut tx = c
            .transaction()
            .map_err(|e| LocalError::pg(&self.name, context, e))?;
        for set in [
            "SET LOCAL log_statement = 'none'",
            "SET LOCAL log_min_duration_statement = -1",
            "SET LOCAL log_min_error_statement = 'panic'",
        ] {
            tx.batch_execute(set)
                .map_err(|e| LocalError::pg(&self.name, context, e))?;
        }
        tx.batch_execute(sql)
            .map_err(|e| LocalError::pg(&self.name, context, e))?;
        tx.commit()
            .map_err(|e| LocalError::pg(&self.name, context, e))
    }

    /// Terminates its connections, drops database then role; Ok if absent.
    ///
    /// The role is dropped only after its database, so a retry after a crash
    /// between the two finds the database gone and finishes the role.
    pub fn drop_tenant_database(&self, database: &str, role: &str) -> Result<()> {
        self.drop_tenant_database_and_roles(database, &[role])
    }

    /// [`Self::drop_tenant_database`], dropping each of `roles` that exists
    /// (a role and the names it had before, see [`TenantDb::former_roles`]).
    pub fn drop_tenant_database_and_roles(&self, database: &str, roles: &[&str]) -> Result<()> {
        validate_name("database name", database, false)?;
        for role in roles {
            validate_name("role name", role, true)?;
        }
        let mut c = self.admin()?;
        c.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(database)
        ))
        .map_err(|e| LocalError::pg(&self.name, format!("dropping database {database}"), e))?;
        for role in roles {
            self.drop_role_on(&mut c, role)?;
        }
        Ok(())
    }

    fn drop_role_on(&self, c: &mut Client, role: &str) -> Result<()> {
        let exists = c
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&role],
            )
            .map_err(|e| LocalError::pg(&self.name, format!("looking up role {role}"), e))?
            .is_some();
        if exists {
            // DROP OWNED also revokes the role's grants on shared objects
            // (its CONNECT on `postgres`), which would otherwise block DROP
            // ROLE. It runs in the maintenance database, where the role owns
            // nothing: its database is gone already.
            c.batch_execute(&format!(
                "DROP OWNED BY {0}; DROP ROLE IF EXISTS {0}",
                quote_ident(role)
            ))
            .map_err(|e| LocalError::pg(&self.name, format!("dropping role {role}"), e))?;
        }
        Ok(())
    }

    /// True if the tenant's database has any user table/relation outside
    /// pg_catalog/information_schema, as seen by the tenant's own role (see
    /// [`database_has_data`]). A database that does not exist, or one that
    /// no tenant has entered yet ([`DatabaseState::Pristine`]), has no data.
    pub fn tenant_database_has_data(&self, db: &TenantDb, ca_cert_pem: &str) -> Result<bool> {
        validate_name("database name", &db.database, false)?;
        match self.database_state(&db.database)? {
            DatabaseState::Absent | DatabaseState::Pristine => Ok(false),
            DatabaseState::Invalid => Err(LocalError::invalid(
                "database",
                &db.database,
                "PostgreSQL marks it invalid (a DROP or CREATE was cut short); it can only be dropped",
            )),
            DatabaseState::Open { .. } => {
                let mut c = self.tenant_connect(db, ca_cert_pem)?;
                database_has_data(&mut c).map_err(|e| {
                    LocalError::pg(&self.name, format!("inspecting database {}", db.database), e)
                })
            }
        }
    }

    /// Turns an initialized database into a template that clones are made
    /// from: owned by the admin (so it never follows a tenant role around),
    /// marked `IS_TEMPLATE`, and closed to new connections (a connected
    /// template cannot be copied). Idempotent.
    pub fn seal_template(&self, template: &str) -> Result<()> {
        validate_name("database name", template, false)?;
        let t = quote_ident(template);
        let mut c = self.admin()?;
        c.batch_execute(&format!(
            "ALTER DATABASE {t} OWNER TO {ADMIN_ROLE}; \
             ALTER DATABASE {t} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
        ))
        .map_err(|e| LocalError::pg(&self.name, format!("sealing template {template}"), e))?;
        c.query(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE datname = $1",
            &[&template],
        )
        .map_err(|e| LocalError::pg(&self.name, format!("closing connections to {template}"), e))?;
        Ok(())
    }

    /// Reopens a sealed template (to re-initialize or drop it), the inverse
    /// of [`PgCluster::seal_template`] for connections only. An invalid
    /// template (a drop cut short) is left for the drop to finish.
    pub fn unseal_template(&self, template: &str) -> Result<()> {
        validate_name("database name", template, false)?;
        if self.database_state(template)? == DatabaseState::Invalid {
            return Ok(());
        }
        self.admin()?
            .batch_execute(&format!(
                "ALTER DATABASE {} WITH IS_TEMPLATE false ALLOW_CONNECTIONS true",
                quote_ident(template)
            ))
            .map_err(|e| LocalError::pg(&self.name, format!("unsealing template {template}"), e))
    }

    /// Makes `db.database` a copy of `template` owned by `db.role`, whose
    /// objects (owned by `template_role` in the template) are reassigned to
    /// `db.role`. Idempotent across crashes.
    ///
    /// The copy is made [`DatabaseState::Pristine`] (owned by the admin,
    /// `CONNECTION LIMIT 0`), so when the superuser enters it to run
    /// `REASSIGN OWNED` it holds nothing but the template's content; only
    /// then is it handed to the role. An existing database is replaced only
    /// when `replace` (the caller found it empty, as its tenant) or when it
    /// is still pristine or invalid (a clone cut short).
    ///
    /// `step` is called after each statement that changes something
    /// (`clone-dropped`, `clone-created`, `clone-reassigned`): the engine's
    /// fault injection kills careplane there in tests.
    pub fn clone_database(
        &self,
        template: &str,
        template_role: &str,
        db: &TenantDb,
        replace: bool,
        step: &dyn Fn(&str),
    ) -> Result<()> {
        validate_name("database name", template, false)?;
        validate_name("database name", &db.database, false)?;
        validate_name("role name", &db.role, true)?;
        validate_name("role name", template_role, true)?;
        let database = &db.database;
        let state = self.database_state(database)?;
        let (drop_first, pristine_copy) =
            match &state {
                DatabaseState::Absent => (false, false),
                DatabaseState::Invalid => (true, false),
                // Either an empty database (ensure_tenant_database cut short) or
                // a copy whose reassignment was cut short: both are ours.
                DatabaseState::Pristine => {
                    let copied = self.owns_objects(database, template_role)?;
                    (!copied, copied)
                }
                DatabaseState::Open { .. } if replace => (true, false),
                DatabaseState::Open { .. } => return Err(LocalError::invalid(
                    "clone target",
                    database,
                    "the database already holds data; refusing to replace it with a template copy",
                )),
            };
        if drop_first {
            self.drop_database(database)?;
            step("clone-dropped");
        }
        if !pristine_copy {
            let mut c = self.admin()?;
            c.query(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                 WHERE datname = $1",
                &[&template],
            )
            .map_err(|e| {
                LocalError::pg(&self.name, format!("closing connections to {template}"), e)
            })?;
            c.batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE {} OWNER {ADMIN_ROLE} CONNECTION LIMIT 0",
                quote_ident(database),
                quote_ident(template),
            ))
            .map_err(|e| {
                LocalError::pg(
                    &self.name,
                    format!("creating {database} from template {template}"),
                    e,
                )
            })?;
        }
        step("clone-created");
        let mut inner = self.admin_connect(database)?;
        if self.role_exists(template_role)? {
            inner
                .batch_execute(&format!(
                    "REASSIGN OWNED BY {} TO {}",
                    quote_ident(template_role),
                    quote_ident(&db.role)
                ))
                .map_err(|e| {
                    LocalError::pg(
                        &self.name,
                        format!(
                            "reassigning objects of {template_role} to {} in {database}",
                            db.role
                        ),
                        e,
                    )
                })?;
            step("clone-reassigned");
        }
        // Templates hide their catalog already (they are made with
        // ensure_tenant_database); one made by an earlier careplane does not.
        hide_catalog_in(&mut inner).map_err(|e| {
            LocalError::pg(&self.name, format!("hiding the catalog in {database}"), e)
        })?;
        drop(inner);
        self.open_database(database, &db.role)
    }

    /// Creates `database` for the existing `role` to restore a backup into:
    /// made [`DatabaseState::Pristine`] (admin-owned, `CONNECTION LIMIT 0`,
    /// from template0), `public` secured and the catalog hidden while no
    /// tenant has been inside, then handed to `role` with CONNECT and
    /// TEMPORARY for it alone, as [`Self::ensure_tenant_database`] makes a
    /// tenant's database. The role itself is not touched. Refuses a name
    /// that exists.
    pub fn create_database_for_restore(&self, database: &str, role: &str) -> Result<()> {
        validate_name("database name", database, false)?;
        validate_name("role name", role, true)?;
        let mut c = self.admin()?;
        if self.state_on(&mut c, database)? != DatabaseState::Absent {
            return Err(LocalError::invalid(
                "restore database",
                database,
                "already exists; a restore loads into a new database only",
            ));
        }
        if !self.role_exists(role)? {
            return Err(LocalError::invalid(
                "role",
                role,
                "does not exist on the cluster",
            ));
        }
        let ctx = |what: &str| format!("{what} for restore database {database}");
        let db = quote_ident(database);
        let r = quote_ident(role);
        c.batch_execute(&format!(
            "CREATE DATABASE {db} OWNER {ADMIN_ROLE} TEMPLATE template0 ENCODING 'UTF8' \
             CONNECTION LIMIT 0"
        ))
        .map_err(|e| LocalError::pg(&self.name, ctx("creating the database"), e))?;
        let mut inner = self.admin_connect(database)?;
        inner
            .batch_execute(&format!(
                "REVOKE CREATE ON SCHEMA public FROM PUBLIC; ALTER SCHEMA public OWNER TO {r}"
            ))
            .map_err(|e| LocalError::pg(&self.name, ctx("securing schema public"), e))?;
        hide_catalog_in(&mut inner)
            .map_err(|e| LocalError::pg(&self.name, ctx("hiding the catalog"), e))?;
        drop(inner);
        self.open_database_on(&mut c, database, role)?;
        c.batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {r}"
        ))
        .map_err(|e| LocalError::pg(&self.name, ctx("setting database privileges"), e))
    }

    /// Puts `replacement` in the place of `database`, from the maintenance
    /// database: `database` is closed to new connections
    /// (`ALLOW_CONNECTIONS false`) and its sessions are ended, then one
    /// transaction renames `database` to `keep_as` and `replacement` to
    /// `database`. `keep_as` stays closed, for an operator to inspect or to
    /// swap back. If any step fails before that transaction commits,
    /// `database` is opened again under its name (its sessions were ended)
    /// and `replacement` is left as it was.
    pub fn swap_database(&self, database: &str, replacement: &str, keep_as: &str) -> Result<()> {
        for name in [database, replacement, keep_as] {
            validate_name("database name", name, false)?;
        }
        let mut c = self.admin()?;
        for (name, want) in [(database, true), (replacement, true), (keep_as, false)] {
            let exists = self.state_on(&mut c, name)? != DatabaseState::Absent;
            if exists != want {
                return Err(LocalError::invalid(
                    "database",
                    name,
                    if want {
                        "does not exist; nothing was swapped"
                    } else {
                        "already exists; nothing was swapped"
                    },
                ));
            }
        }
        let (old, new, kept) = (
            quote_ident(database),
            quote_ident(replacement),
            quote_ident(keep_as),
        );
        let ctx = |what: &str| format!("{what} to swap {replacement} in for {database}");
        c.batch_execute(&format!("ALTER DATABASE {old} ALLOW_CONNECTIONS false"))
            .map_err(|e| LocalError::pg(&self.name, ctx("closing the database"), e))?;
        let swapped = (|| -> Result<()> {
            // With a bound per session, and then a bounded wait for the
            // last ones to go: RENAME refuses a database in use.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let left: i64 = c
                    .query_one(
                        "SELECT count(pg_catalog.pg_terminate_backend(pid, 5000)) \
                         FROM pg_catalog.pg_stat_activity \
                         WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()",
                        &[&database],
                    )
                    .map_err(|e| LocalError::pg(&self.name, ctx("ending the sessions"), e))?
                    .get(0);
                if left == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(LocalError::state(
                        self.subject(),
                        format!("{left} sessions of database {database} did not end within 30 s"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut tx = c
                .transaction()
                .map_err(|e| LocalError::pg(&self.name, ctx("beginning the renames"), e))?;
            tx.batch_execute(&format!(
                "ALTER DATABASE {old} RENAME TO {kept}; ALTER DATABASE {new} RENAME TO {old}"
            ))
            .map_err(|e| LocalError::pg(&self.name, ctx("renaming"), e))?;
            tx.commit()
                .map_err(|e| LocalError::pg(&self.name, ctx("committing the renames"), e))
        })();
        if let Err(e) = swapped {
            let _ = c.batch_execute(&format!("ALTER DATABASE {old} ALLOW_CONNECTIONS true"));
            return Err(e);
        }
        Ok(())
    }

    fn role_exists(&self, role: &str) -> Result<bool> {
        Ok(self
            .admin()?
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&role],
            )
            .map_err(|e| LocalError::pg(&self.name, format!("looking up role {role}"), e))?
            .is_some())
    }

    /// Whether a pristine `database` holds objects of a role other than the
    /// admin and `role`: a template's copy, not an empty database.
    fn clone_in_progress(&self, database: &str, role: &str) -> Result<bool> {
        Ok(self
            .object_owners(database)?
            .iter()
            .any(|o| o != ADMIN_ROLE && o != role))
    }

    /// Whether `role` owns anything inside `database`.
    fn owns_objects(&self, database: &str, role: &str) -> Result<bool> {
        Ok(self.object_owners(database)?.iter().any(|o| o == role))
    }

    /// The roles that own objects inside `database`, read from the shared
    /// catalog `pg_shdepend` in the maintenance database (no need to enter).
    fn object_owners(&self, database: &str) -> Result<Vec<String>> {
        let rows = self
            .admin()?
            .query(
                "SELECT DISTINCT r.rolname::text FROM pg_catalog.pg_shdepend s \
                 JOIN pg_catalog.pg_database d ON d.oid = s.dbid \
                 JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid \
                 WHERE d.datname = $1 AND s.deptype = 'o'",
                &[&database],
            )
            .map_err(|e| {
                LocalError::pg(&self.name, format!("looking up owners in {database}"), e)
            })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Tenant databases present (excludes postgres, template0/1).
    pub fn databases(&self) -> Result<Vec<String>> {
        let rows = self
            .admin()?
            .query(
                "SELECT datname::text FROM pg_database \
                 WHERE datname NOT IN ('postgres', 'template0', 'template1') ORDER BY 1",
                &[],
            )
            .map_err(|e| LocalError::pg(&self.name, "listing databases", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Rewrites pg_hba.conf with the admin's socket line and one `hostssl` line per tenant pair (127.0.0.1/32 and ::1/128), nothing else, then reloads if running.
    ///
    /// No `host` lines exist, so non-TLS TCP connections match nothing and
    /// are refused, as is every database/role pair not listed. When the
    /// server runs, the file is checked through `pg_hba_file_rules` before
    /// the reload (PostgreSQL keeps the old rules if the new file is broken),
    /// and the call returns only once the postmaster has reloaded, so a
    /// connection made right after sees the new rules.
    pub fn write_hba(&self, tenants: &[(String, String)]) -> Result<()> {
        let mut pairs = BTreeSet::new();
        for (database, role) in tenants {
            validate_name("database name", database, false)?;
            validate_name("role name", role, true)?;
            pairs.insert((database.clone(), role.clone()));
        }
        fsutil::ensure_dir(&self.conf_dir(), 0o700, self.owner())?;
        self.write_hba_file(&pairs)?;
        if self.running_pid().is_some() {
            let rows = self
                .admin()?
                .query(
                    "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL",
                    &[],
                )
                .map_err(|e| LocalError::pg(&self.name, "checking pg_hba.conf", e))?;
            if let Some(row) = rows.first() {
                let line: Option<i32> = row.get(0);
                let error: String = row.get(1);
                return Err(LocalError::state(
                    self.subject(),
                    format!(
                        "{} line {line:?} is invalid: {error}",
                        self.hba_path().display()
                    ),
                ));
            }
            self.reload()?;
        }
        Ok(())
    }

    fn write_hba_file(&self, pairs: &BTreeSet<(String, String)>) -> Result<()> {
        let mut out = String::new();
        out.push_str("# Managed by careplane: rewritten on every change. Do not edit.\n");
        out.push_str("# TYPE   DATABASE  USER  ADDRESS  METHOD\n");
        out.push_str(&format!("local    all  \"{ADMIN_ROLE}\"  scram-sha-256\n"));
        for (database, role) in pairs {
            for address in ["127.0.0.1/32", "::1/128"] {
                out.push_str(&format!(
                    "hostssl  \"{database}\"  \"{role}\"  {address}  scram-sha-256\n"
                ));
            }
        }
        // Odoo connects to the maintenance database `postgres` at every start
        // (to check that its database exists) and its cron process LISTENs
        // there; without this line a real odoo-bin exits 1. `postgres` holds
        // no tenant data, only what every session can read from the shared
        // catalogs anyway.
        let roles: BTreeSet<&String> = pairs.iter().map(|(_, r)| r).collect();
        for role in roles {
            for address in ["127.0.0.1/32", "::1/128"] {
                out.push_str(&format!(
                    "hostssl  postgres  \"{role}\"  {address}  scram-sha-256\n"
                ));
            }
        }
        fsutil::write_file(&self.hba_path(), out.as_bytes(), 0o600, self.owner())
    }

    /// Settings the running server has read but can only apply at a restart
    /// (`pg_settings.pending_restart`, e.g. `shared_buffers`), after a
    /// [`PgCluster::reload`]. Empty when a reload was enough.
    pub fn pending_restart(&self) -> Result<Vec<String>> {
        let rows = self
            .admin()?
            .query(
                "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name",
                &[],
            )
            .map_err(|e| LocalError::pg(&self.name, "reading settings pending a restart", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Makes the running server re-read its configuration, waiting until the
    /// postmaster has done so, and reports settings it rejected.
    pub fn reload(&self) -> Result<()> {
        let mut c = self.admin()?;
        let before: String = c
            .query_one("SELECT pg_conf_load_time()::text", &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| LocalError::pg(&self.name, "reading the configuration load time", e))?;
        c.batch_execute("SELECT pg_reload_conf()")
            .map_err(|e| LocalError::pg(&self.name, "requesting a configuration reload", e))?;
        drop(c);
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            // A new session inherits the postmaster's load time, so it moves
            // once the postmaster has processed the reload.
            let mut c = self.admin()?;
            let now: String = c
                .query_one("SELECT pg_conf_load_time()::text", &[])
                .and_then(|r| r.try_get(0))
                .map_err(|e| {
                    LocalError::pg(&self.name, "reading the configuration load time", e)
                })?;
            if now != before {
                let rows = c
                    .query(
                        "SELECT coalesce(sourcefile, '?') || ':' || coalesce(sourceline, 0)::text || ' ' \
                         || coalesce(name, '') || ': ' || error FROM pg_file_settings \
                         WHERE error IS NOT NULL AND error <> 'setting could not be applied'",
                        &[],
                    )
                    .map_err(|e| LocalError::pg(&self.name, "checking configuration errors", e))?;
                if !rows.is_empty() {
                    let errors: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    return Err(LocalError::state(
                        self.subject(),
                        format!("the configuration has errors: {}", errors.join("; ")),
                    ));
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LocalError::Timeout {
                    subject: self.subject(),
                    what: "the configuration reload".into(),
                    secs: RELOAD_TIMEOUT.as_secs(),
                    log_tail: system::tail_file(&self.latest_log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The newest server log file (for error messages), or startup.log.
    pub fn latest_log(&self) -> PathBuf {
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        if let Ok(entries) = std::fs::read_dir(self.log_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") && path != self.startup_log() {
                    if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                        if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                            newest = Some((modified, path));
                        }
                    }
                }
            }
        }
        newest.map(|(_, p)| p).unwrap_or_else(|| self.startup_log())
    }
}

fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while system::pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The rustls connector tenants use: only the platform CA is trusted, and
/// rustls checks the certificate chain and the host name (or IP) — the
/// equivalent of libpq's `sslmode=verify-full`. TLS 1.2+ with ring.
pub fn tenant_tls(ca_cert_pem: &str) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
        let cert =
            cert.map_err(|e| LocalError::Tls(format!("parsing the CA certificate PEM: {e}")))?;
        roots.add(cert).map_err(|e| {
            LocalError::Tls(format!("adding the CA certificate to the trust store: {e}"))
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(LocalError::Tls("the CA PEM contains no certificate".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| LocalError::Tls(format!("configuring TLS versions: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Connects as a tenant over TLS with verification against the CA (sslmode verify-full equivalent; rustls with the ring provider).
///
/// SCRAM channel binding is required, so the password exchange is tied to
/// this very TLS session. Used by status health checks and tests.
pub fn connect_tenant(
    port: u16,
    database: &str,
    role: &str,
    password: &SecretString,
    ca_cert_pem: &str,
) -> Result<Client> {
    connect_tenant_with(port, database, role, password, ca_cert_pem, None)
}

fn connect_tenant_with(
    port: u16,
    database: &str,
    role: &str,
    password: &SecretString,
    ca_cert_pem: &str,
    options: Option<&str>,
) -> Result<Client> {
    let tls = tenant_tls(ca_cert_pem)?;
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(role)
        .password(password.expose_secret())
        .dbname(database)
        .ssl_mode(SslMode::Require)
        .channel_binding(ChannelBinding::Require)
        .application_name("careplane")
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(options) = options {
        cfg.options(options);
    }
    cfg.connect(tls).map_err(|e| {
        LocalError::pg(
            &format!("127.0.0.1:{port}"),
            format!("connecting to database {database} as {role} over TLS"),
            e,
        )
    })
}

/// Health check of a tenant's access path: connects exactly as the tenant's
/// application would ([`connect_tenant`]: TLS verified against the CA, SCRAM
/// with channel binding) and runs `SELECT 1`. The error says which step failed.
pub fn check_tenant(
    port: u16,
    database: &str,
    role: &str,
    password: &SecretString,
    ca_cert_pem: &str,
) -> Result<()> {
    let mut client = connect_tenant(port, database, role, password, ca_cert_pem)?;
    client.simple_query("SELECT 1").map_err(|e| {
        LocalError::pg(
            &format!("127.0.0.1:{port}"),
            format!("running SELECT 1 in database {database} as {role}"),
            e,
        )
    })?;
    Ok(())
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A postgresql.conf string value: quotes doubled, backslashes escaped (the
/// config lexer treats `\` as an escape character).
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Tenant database and role names: 1–63 bytes of ASCII letters, digits, `_`,
/// `-` and `.`, starting with a letter, digit or `_`, and not a reserved
/// name. The character set keeps names safe in pg_hba.conf (where `+`, `@`,
/// commas and spaces mean something) and in messages; every use is still
/// quoted.
pub fn validate_name(what: &str, name: &str, is_role: bool) -> Result<()> {
    if name.is_empty() || name.len() > 63 {
        return Err(LocalError::invalid(
            what,
            name,
            "must be 1 to 63 bytes long",
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        return Err(LocalError::invalid(
            what,
            name,
            "must start with a letter, digit or `_`",
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(LocalError::invalid(
            what,
            name,
            "may only contain ASCII letters, digits, `_`, `-` and `.`",
        ));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_NAMES.contains(&lower.as_str()) {
        return Err(LocalError::invalid(what, name, "is reserved"));
    }
    if is_role && lower.starts_with("pg_") {
        return Err(LocalError::invalid(
            what,
            name,
            "role names starting with pg_ are reserved",
        ));
    }
    Ok(())
}

fn validate_password(what: &str, password: &SecretString) -> Result<()> {
    let p = password.expose_secret();
    if p.is_empty() {
        return Err(LocalError::invalid(what, "<redacted>", "must not be empty"));
    }
    if p.contains(['\n', '\r', '\0']) {
        return Err(LocalError::invalid(
            what,
            "<redacted>",
            "must not contain line breaks or NUL",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(settings: &[(&str, &str)]) -> PgCluster {
        PgCluster {
            name: "t".into(),
            root: PathBuf::from("/srv/careplane/pg-t"),
            port: 5999,
            bin: PgBinaries {
                dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
                major_version: 15,
            },
            user: None,
            admin_password: SecretString::from("x"),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn version_parsing() {
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 17beta1"),
            Some(17)
        );
        assert_eq!(parse_major_version("nonsense"), None);
    }

    #[test]
    fn hardening_keys_cannot_be_overridden() {
        for key in [
            "ssl",
            "listen_addresses",
            "Hba_File",
            "log_statement",
            "include_dir",
            "fsync",
        ] {
            let err = cluster(&[(key, "off")]).managed_config().unwrap_err();
            assert!(
                matches!(err, LocalError::ForbiddenSetting { .. }),
                "{key}: {err}"
            );
            assert!(err.to_string().contains(key), "{err}");
        }
        let conf = cluster(&[("shared_buffers", "64MB"), ("work_mem", "it's")])
            .managed_config()
            .unwrap();
        assert!(conf.contains("shared_buffers = '64MB'"));
        assert!(conf.contains("work_mem = 'it''s'"));
        // Operator override comes after the default, hardening after both.
        assert!(
            conf.find("shared_buffers = '32MB'").unwrap()
                < conf.find("shared_buffers = '64MB'").unwrap()
        );
        assert!(conf.find("work_mem").unwrap() < conf.find("listen_addresses").unwrap());
        assert!(conf.contains("listen_addresses = '127.0.0.1'"));
        assert!(conf.contains("unix_socket_directories = '/srv/careplane/pg-t/run'"));
        assert!(cluster(&[("bad key", "1")]).managed_config().is_err());
        assert!(cluster(&[("work_mem", "1\nssl = off")])
            .managed_config()
            .is_err());
    }

    #[test]
    fn names() {
        for ok in ["stmarys-prod", "a", "db_1.x", "_x"] {
            validate_name("database name", ok, true).unwrap();
        }
        for bad in [
            "",
            "-x",
            "a b",
            "a\"b",
            "all",
            "careplane_admin",
            "x,y",
            "+grp",
            "@file",
            &"a".repeat(64),
        ] {
            assert!(
                validate_name("database name", bad, false).is_err(),
                "{bad:?}"
            );
        }
        assert!(validate_name("role name", "pg_monitor", true).is_err());
        assert!(validate_name("database name", "pg_data", false).is_ok());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(conf_quote("a\\'b"), "'a\\\\''b'");
    }

    #[test]
    fn passwords_never_echoed() {
        let err = validate_password("password", &SecretString::from("sec\nret")).unwrap_err();
        assert!(!err.to_string().contains("sec"), "{err}");
    }
}

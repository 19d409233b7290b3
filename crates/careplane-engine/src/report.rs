//! What the engine reports to its callers: apply options and progress,
//! what an apply did, how to reach an environment, and the status a driver
//! fills in. Plain data; the CLI renders it, a server would serialize it.

use careplane_state::SecretString;
use serde::Serialize;
use serde_json::Value;

use crate::plan::Action;

/// What the operator allowed for this run.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Drop databases that still hold data.
    pub delete_data: bool,
    /// Tenants whose production/DR environments may be deleted.
    pub confirm: Vec<String>,
    /// Back up every environment whose database holds data before it is
    /// dropped (`destroy`, unless `--no-final-backup`); a failed backup
    /// refuses the run before anything changes.
    pub final_backup: bool,
    /// Environments under a change freeze now, as (tenant, environment, why):
    /// the caller reads them from the tenants' calendars (docs/design/0014).
    /// A plan that changes one is refused before any change, unless
    /// `override_freeze` gives the reason it may.
    pub frozen: Vec<(String, String, String)>,
    /// Why this apply may change frozen environments (recorded in the audit log).
    pub override_freeze: Option<String>,
}

/// Progress, for the CLI to show.
#[derive(Debug)]
pub enum Event<'a> {
    /// Steps of an earlier apply that never finished; this run completes them.
    Interrupted { actions: Vec<String> },
    Started {
        index: usize,
        total: usize,
        action: &'a Action,
    },
    Finished {
        index: usize,
        total: usize,
        action: &'a Action,
    },
    /// A step failed; its error is also the run's result (or part of it,
    /// when several resources being waited for fail).
    Failed {
        index: usize,
        total: usize,
        action: &'a Action,
        error: String,
    },
    /// Resources were started and are being waited for together.
    Waiting { environments: usize },
    /// `start` or `stop` reached a resource: `verb` is `started` or
    /// `stopped`, `error` says why it did not.
    Reached {
        verb: &'static str,
        id: String,
        error: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub operation: i64,
    pub applied: Vec<String>,
    /// Ids of the resources this run created (a caller shows, e.g., where
    /// to log in to new Odoo environments).
    #[serde(skip)]
    pub created: Vec<String>,
}

/// See [`crate::Engine::credentials`]. `Debug` redacts the passwords.
#[derive(Debug)]
pub struct Credentials {
    pub postgres: DbCredentials,
    pub redis: Option<RedisCredentials>,
    pub odoo: Option<OdooCredentials>,
}

/// The Odoo `admin` user's login and the master password (`admin_passwd`).
#[derive(Debug)]
pub struct OdooCredentials {
    pub url: String,
    pub login: String,
    pub password: SecretString,
    pub master_password: SecretString,
    /// The low-privilege user the journeys log in as (`careplane-probe`), once apply has
    /// made it.
    pub probe: Option<OdooLogin>,
    /// Web workers (`workers` in odoo.conf): with exactly 1 Odoo cannot print PDFs
    /// (wkhtmltopdf fetches the page's assets from the one busy worker).
    pub workers: u32,
}

/// An Odoo login and its password.
#[derive(Debug)]
pub struct OdooLogin {
    pub login: String,
    pub password: SecretString,
}

#[derive(Debug)]
pub struct DbCredentials {
    pub host: String,
    pub port: Option<u16>,
    pub database: String,
    pub role: String,
    pub sslmode: String,
    pub sslrootcert: String,
    pub password: SecretString,
}

#[derive(Debug)]
pub struct RedisCredentials {
    pub host: String,
    pub port: Option<u16>,
    pub user: String,
    pub key_prefix: String,
    pub password: SecretString,
}

/// How careplane reads one Redis server's own state (`INFO`, `PING`) as its
/// `careplane-monitor` ACL user, which may touch no key and no channel: for the memory
/// headroom probe of `careplane serve`. Never a tenant's to hold: `INFO` describes every
/// tenant on the server.
#[derive(Debug, Clone)]
pub struct RedisMonitor {
    /// The server's scope (`shared-cache`, `stmarys-sessions`, ...).
    pub server: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
}

/// Health of one check: `ok`, or what failed (never a secret).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub ok: bool,
    pub detail: String,
}

impl Health {
    pub fn from<T, E: std::fmt::Display>(r: Result<T, E>) -> Health {
        match r {
            Ok(_) => Health {
                ok: true,
                detail: "ok".into(),
            },
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvStatus {
    pub tenant: String,
    pub environment: String,
    pub kind: String,
    pub state: String,
    pub cluster: String,
    pub database: String,
    pub pg_port: Option<u16>,
    pub pg_health: Health,
    pub redis_server: Option<String>,
    pub redis_user: Option<String>,
    pub redis_port: Option<u16>,
    pub key_prefix: Option<String>,
    pub redis_health: Option<Health>,
    /// Where to log in, when careplane runs Odoo for the environment.
    pub odoo_url: Option<String>,
    /// `/web/health` and `/web/login` both answering 200.
    pub odoo_health: Option<Health>,
    /// The supervisor's `status.json` (per process: name, state, pid,
    /// restarts), with `supervisorRunning`; a dead supervisor's processes
    /// read as stopped.
    pub odoo_processes: Option<Value>,
    /// The uid (and gid) the environment's Odoo runs as, when careplane is root.
    pub odoo_uid: Option<u32>,
    /// The newest backup of the environment (id and when it finished), or
    /// why it could not be read.
    pub last_backup: Option<LastBackup>,
    /// Up to when the environment can be recovered: the time of the last
    /// WAL file its cluster archived (RFC 3339).
    pub recovery_point: Option<String>,
    /// The environment's last restore (`backup restore`), as evidence.
    pub last_restore: Option<LastRestore>,
    /// The last restore verification (`backup verify --restore`, and after
    /// every scheduled backup), from the state store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore_verification: Option<RestoreCheck>,
    /// Databases a restore replaced and kept (`--keep-pre-restore`), closed
    /// to connections; `destroy` drops them with the environment.
    pub pre_restore_databases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastBackup {
    pub id: Option<String>,
    pub finished: Option<String>,
    /// Why the repository could not be read (never a secret).
    pub error: Option<String>,
}

/// A restore verification: an environment backup recovered into a scratch
/// server to the end of its base backup, and every table's row count and
/// checksum compared with the facts its first such restore recorded.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCheck {
    pub backup: String,
    pub tenant: String,
    pub environment: String,
    /// `baseline` (the first restore of this backup: its facts are now the
    /// verified ones), `passed`, `failed`, or `skipped` (`run-due` without
    /// the customer's key to a backup only the customer can read).
    pub outcome: String,
    pub verified_at: String,
    pub duration_ms: u64,
    pub recovery_ms: u64,
    pub recovered_to: Option<String>,
    pub tables: u64,
    pub rows: u64,
    /// The verification whose facts were compared with (`passed`/`failed`).
    pub baseline: Option<String>,
    /// The first table that differs, and how.
    pub first_difference: Option<String>,
    /// Why it failed before any table could be compared (a broken object,
    /// a recovery that did not finish), naming the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The signed record of this check in the tenant's repository (none
    /// when it failed before there were facts to record).
    pub evidence: Option<String>,
    /// Why no restore was attempted (outcome `skipped`): the backup is
    /// encrypted to a customer-held key careplane does not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The last restore of an environment, recorded in the state store.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastRestore {
    pub finished: String,
    /// The environment backup restored from (of this or, with `--as`,
    /// another environment: `from`).
    pub backup: String,
    pub from: String,
    pub target: String,
    pub recovered_to: Option<String>,
    pub duration_ms: u64,
    pub rto: Option<String>,
    pub rto_met: Option<bool>,
    pub rpo: Option<String>,
}

/// A cluster's WAL archiving, from `pg_stat_archiver`: failures are shown,
/// never hidden (`ok` is false while the last attempt failed).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Archiving {
    pub enabled: bool,
    pub ok: bool,
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
    /// Why it could not be read, or what is wrong (archiving off).
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    pub id: String,
    pub state: String,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub running: bool,
    /// What the live server holds (databases of a cluster, ACL users of a
    /// Redis server), read with careplane's admin credentials: a member here
    /// that no environment records is an orphan. `None` when not running.
    pub members: Option<Vec<String>>,
    /// Odoo template databases careplane recorded on this cluster (they are
    /// members too, but belong to no environment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<String>,
    /// WAL archiving of a PostgreSQL cluster (`None` for other servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archiving: Option<Archiving>,
    /// The last `backup restore-cluster` of a PostgreSQL cluster (its
    /// recorded evidence), from the state store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore: Option<crate::ClusterRestoreOutcome>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub platform: String,
    pub data_dir: String,
    pub servers: Vec<ServerStatus>,
    pub environments: Vec<EnvStatus>,
}

/// What `careplane export` wrote (see [`crate::Engine::export`]).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    pub tenant: String,
    pub environment: String,
    /// The archive written.
    pub path: std::path::PathBuf,
    /// `odoo-zip`: what Odoo's database manager restores.
    pub format: String,
    pub database: String,
    /// Size of the archive.
    pub bytes: u64,
    /// Size of `dump.sql` before compression.
    pub sql_bytes: u64,
    pub filestore_files: u64,
    pub filestore_bytes: u64,
    /// Filestore entries left out: neither a directory nor a regular file
    /// (e.g. a symbolic link), relative to the filestore.
    pub skipped: Vec<String>,
    /// Installed modules, as the archive's manifest lists them.
    pub modules: usize,
    pub odoo_version: String,
    pub postgres_version: String,
}

/// What `careplane import` did (see [`crate::Engine::import`]).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    pub tenant: String,
    pub environment: String,
    pub database: String,
    /// `odoo-zip` or `pg-dump` (a `pg_dump --format=custom` file).
    pub format: String,
    /// The Odoo version the archive's manifest names, if it has one.
    pub odoo_version: Option<String>,
    pub filestore_files: u64,
    /// The environment as it was before, exported first (an Odoo zip).
    pub previous: std::path::PathBuf,
    /// Whether the database got a new `database.uuid` and `database.secret`
    /// (always, unless it already was this environment's own).
    pub new_identity: bool,
}

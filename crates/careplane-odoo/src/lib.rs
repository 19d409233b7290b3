//! Everything careplane needs to run Odoo on the local target, as plain
//! functions and data: the engine decides *what* to run, this crate knows
//! *how*, and nothing here knows about careplane's specs or state store.
//!
//! * [`render_config`] / [`write_configs`]: a hardened `odoo.conf` per
//!   process role (web, cron) — one database, no database manager, no secret
//!   in the file.
//! * [`hash_admin_password`]: Odoo's master password as the passlib
//!   `pbkdf2_sha512` hash Odoo 16–19 verify.
//! * [`ProcessEnv`]: the complete environment of an Odoo process, the only
//!   place secrets go (`PGPASSWORD`, Redis credentials).
//! * [`run_once`]: `odoo-bin -i/-u … --stop-after-init` to completion.
//! * [`supervise`] and friends: a per-environment supervisor that keeps the
//!   web and cron processes running, with restarts and backoff, rotated
//!   logs, graceful stop, no orphans, and health probes.
//! * [`rpc::ensure_probe_user`]: the low-privilege `careplane-probe` user the
//!   journeys log in as, made through Odoo's ORM over JSON-RPC.
//!
//! The same code runs a real `odoo-bin` and careplane's test stand-in: it
//! only relies on Odoo's command line (`-c`, `-d`, `-i`, `-u`,
//! `--stop-after-init`, `--no-http`), its configuration file and its
//! `/web/health` endpoint.
//!
//! Secrets are [`SecretString`]s and never appear in errors, command lines,
//! configuration files, the supervisor's spec or status, or logs written by
//! careplane.

#![warn(missing_docs)]

mod config;
pub mod db;
mod digest;
pub mod dump;
mod error;
mod http;
mod passwd;
mod process;
mod rotate;
pub mod rpc;
mod supervisor;
mod sys;
pub mod tree;

pub use config::{
    dbfilter_for, render_config, try_render_config, valid_database_name, valid_module_name,
    write_configs, EnvConfig, Limits, RedisSettings, Role, ALLOWED_SSLMODES, DEFAULT_SSLMODE,
};
pub use digest::config_digest;
pub use error::{OdooError, Result};
pub use http::{http_get, wait_healthy};
pub use passwd::{
    hash_admin_password, hash_admin_password_with, verify_admin_password, ADMIN_PASSWORD_ROUNDS,
    ADMIN_PASSWORD_SALT_LEN,
};
pub use process::{
    installed_version, process_argv, process_spec, run_once, ModuleOp, OdooInstall, ProcessEnv,
    DEFAULT_LANG, ENV_REDIS_PASSWORD, ENV_REDIS_URL,
};
pub use secrecy::{ExposeSecret, SecretString};
pub use supervisor::{
    read_status, spawn_supervisor, spawn_supervisor_with_env, stop_supervisor, supervise,
    supervise_file, supervisor_pid, ExitInfo, HealthCheck, ProcessSpec, ProcessState,
    ProcessStatus, SupervisorSettings, SupervisorSpec, SupervisorState, SupervisorStatus, LOGS_DIR,
    PID_FILE, STATUS_FILE, SUPERVISOR_LOG,
};

//! The crate's error type.
//!
//! Messages name the file, process or command and what failed, so an operator
//! can act without a debugger. They never carry a secret: the only process
//! output they quote is the tail of an Odoo log, and careplane never hands
//! Odoo a secret through its command line or configuration file, so Odoo has
//! none to print there.

use std::path::PathBuf;

/// Everything that can go wrong while configuring, running or supervising Odoo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OdooError {
    /// A statement inside an Odoo database failed.
    #[error("Odoo database: {context}: {message}")]
    Database {
        /// What careplane was doing.
        context: String,
        /// The server's message (never a secret: values are bound, not inlined).
        message: String,
    },

    /// A file system or OS operation failed.
    #[error("{context} ({}): {source}", .path.display())]
    Io {
        /// What careplane was doing.
        context: String,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// A configuration value would weaken or corrupt the rendered `odoo.conf`
    /// (e.g. a newline that would inject an option, a plaintext master
    /// password, an sslmode weaker than `require`).
    #[error("invalid Odoo configuration: {0}")]
    InvalidConfig(String),

    /// The Odoo installation the platform names does not run, or is not the
    /// version the platform says.
    #[error("Odoo installation: {0}")]
    Installation(String),

    /// A one-off Odoo command (`-i`/`-u … --stop-after-init`) failed.
    #[error("{what}: `{command}` {status}; log {}{}", .log.display(), tail_suffix(.log_tail))]
    Command {
        /// What careplane was doing, naming the database.
        what: String,
        /// The command line (it never carries secrets).
        command: String,
        /// How it ended ("exited with status 255", "was killed by signal 9",
        /// "could not be started: ...").
        status: String,
        /// The log file the output went to.
        log: PathBuf,
        /// The last lines this run wrote to the log.
        log_tail: String,
    },

    /// An environment file (`KEY=VALUE` lines) is malformed or unsafe.
    #[error("environment file {}: {message}", .path.display())]
    EnvFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a value from the file).
        message: String,
    },

    /// A supervisor spec or status file could not be parsed or written.
    #[error("{context} ({}): {message}", .path.display())]
    Json {
        /// What careplane was doing.
        context: String,
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },

    /// Another supervisor already manages this run directory.
    #[error("a supervisor (pid {pid}) is already running for {}", .dir.display())]
    AlreadyRunning {
        /// The environment's run directory.
        dir: PathBuf,
        /// The running supervisor's pid.
        pid: u32,
    },

    /// A detached supervisor did not come up.
    #[error("supervisor for {}: {message}{}", .dir.display(), tail_suffix(.log_tail))]
    SupervisorStart {
        /// The environment's run directory.
        dir: PathBuf,
        /// What happened (exited with status, timed out, ...).
        message: String,
        /// The last lines of the supervisor's own log.
        log_tail: String,
    },

    /// A supervisor or one of its processes could not be stopped in time.
    #[error("stopping the supervisor for {}: {message}", .dir.display())]
    Stop {
        /// The environment's run directory.
        dir: PathBuf,
        /// Which processes are still alive.
        message: String,
    },

    /// An HTTP request to a local Odoo process failed or a health check never
    /// passed.
    #[error("GET {url}: {message}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong (connection refused, timed out, status 503, ...).
        message: String,
    },

    /// A JSON-RPC call to an environment's Odoo failed (never names a
    /// password: only the route, the model and method, and Odoo's error).
    #[error("POST {url}: {message}")]
    Rpc {
        /// The URL posted to.
        url: String,
        /// What went wrong (Odoo's exception class and message, a status, ...).
        message: String,
    },
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- last lines ---\n{}", tail.trim_end())
    }
}

/// The crate's result type.
pub type Result<T, E = OdooError> = std::result::Result<T, E>;

/// Shorthand for [`OdooError::Io`].
pub(crate) fn io_err(
    context: impl Into<String>,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> OdooError {
    let context = context.into();
    let path = path.into();
    move |source| OdooError::Io {
        context,
        path,
        source,
    }
}

/// The server's own message of a PostgreSQL error (`postgres::Error`'s
/// Display hides it behind "db error").
pub(crate) fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

//! The crate's error type.
//!
//! Messages name the cluster/server, file or command and what failed, so an
//! operator can act on them without a debugger. They never contain a secret:
//! only names, paths, exit statuses and the tail of a failed command's stderr
//! or a server log (which careplane never lets a password reach).

use std::path::PathBuf;

/// Everything that can go wrong while running local servers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A file system operation failed.
    #[error("{context} ({path}): {source}")]
    Io {
        /// What careplane was doing.
        context: String,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// An external command (initdb, pg_ctl, redis-server, ...) failed.
    #[error("{what}: `{command}` {status}{}", tail_suffix(.output_tail))]
    Command {
        /// What careplane was doing, naming the cluster or server.
        what: String,
        /// The command line (it never carries secrets).
        command: String,
        /// How it ended ("exited with status 1", "could not be started: ...").
        status: String,
        /// Last lines of its stderr/stdout and, when useful, the server log.
        output_tail: String,
    },

    /// The OS user that should run the servers is missing or unusable.
    #[error("service user: {0}")]
    ServiceUser(String),

    /// The service user cannot reach the cluster root through an ancestor.
    #[error(
        "directory {} is not traversable by service user {user} (it needs execute permission \
         to reach {}): run `chmod o+x {}` or put the platform directory under a traversable path",
        .dir.display(), .target.display(), .dir.display()
    )]
    NotTraversable {
        /// The ancestor directory lacking the execute bit for the user.
        dir: PathBuf,
        /// The directory the service user needs to reach.
        target: PathBuf,
        /// The service user's name.
        user: String,
    },

    /// PostgreSQL binaries could not be found or are unusable.
    #[error("PostgreSQL binaries: {0}")]
    Binaries(String),

    /// A PostgreSQL connection or statement failed.
    #[error("PostgreSQL cluster {cluster}: {context}: {message}")]
    Postgres {
        /// The cluster's name.
        cluster: String,
        /// What careplane was doing.
        context: String,
        /// The error with its whole cause chain (server message, detail, hint).
        message: String,
        /// The original error, for SQLSTATE inspection.
        error: Box<postgres::Error>,
    },

    /// A Redis connection or command failed.
    #[error("Redis server {server}: {context}: {error}")]
    Redis {
        /// The server's name (or `127.0.0.1:<port>` for a bare connection).
        server: String,
        /// What careplane was doing.
        context: String,
        /// The original error.
        error: Box<::redis::RedisError>,
    },

    /// An operator-supplied PostgreSQL setting tries to override a hardening key.
    #[error(
        "PostgreSQL cluster {cluster}: setting `{key}` is managed by careplane for hardening and \
         cannot be overridden; remove it from the cluster's settings"
    )]
    ForbiddenSetting {
        /// The cluster's name.
        cluster: String,
        /// The offending key.
        key: String,
    },

    /// A name, setting or other parameter is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which parameter ("role name", "Redis key prefix", ...).
        what: String,
        /// The offending value (`<redacted>` for secrets).
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// A server is not in the state an operation needs, or did not get there.
    #[error("{subject}: {reason}")]
    State {
        /// The cluster/server or file concerned.
        subject: String,
        /// What is wrong and, where known, how to fix it.
        reason: String,
    },

    /// Certificate generation or parsing failed.
    #[error("TLS: {0}")]
    Tls(String),

    /// Waiting for a server to become ready (or to go away) took too long.
    #[error("{subject}: timed out after {secs}s waiting for {what}{}", tail_suffix(.log_tail))]
    Timeout {
        /// The cluster/server concerned.
        subject: String,
        /// What careplane waited for.
        what: String,
        /// How long it waited.
        secs: u64,
        /// Last lines of the server log, if any.
        log_tail: String,
    },
}

fn tail_suffix(tail: &str) -> String {
    let tail = tail.trim();
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- output tail ---\n{tail}")
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, LocalError>;

impl LocalError {
    pub(crate) fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        LocalError::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pg(cluster: &str, context: impl Into<String>, error: postgres::Error) -> Self {
        LocalError::Postgres {
            cluster: cluster.to_string(),
            context: context.into(),
            message: error_chain(&error),
            error: Box::new(error),
        }
    }

    pub(crate) fn redis(
        server: &str,
        context: impl Into<String>,
        error: ::redis::RedisError,
    ) -> Self {
        LocalError::Redis {
            server: server.to_string(),
            context: context.into(),
            error: Box::new(error),
        }
    }

    pub(crate) fn state(subject: impl Into<String>, reason: impl Into<String>) -> Self {
        LocalError::State {
            subject: subject.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(
        what: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        LocalError::Invalid {
            what: what.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The PostgreSQL SQLSTATE code, when this is a server-reported error.
    pub fn sql_state(&self) -> Option<&str> {
        match self {
            LocalError::Postgres { error, .. } => error.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// `error: cause: cause...`, because `postgres::Error`'s Display omits its cause
/// (the server's actual message).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

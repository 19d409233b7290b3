//! Errors of the backup repository. Every variant names where (repository,
//! backup, object, file) and what; none carries a secret.

use std::io;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The object store answered with an error (unreachable, denied, full...).
    #[error("repository {repository}: {action}: {source}")]
    Store {
        repository: String,
        action: String,
        #[source]
        source: object_store::Error,
    },
    /// A value given by the caller is unusable.
    #[error("invalid {what}: {problem}")]
    Invalid { what: String, problem: String },
    /// No backup of that id exists (no manifest): it was never committed or was deleted.
    #[error("repository {repository}: backup {backup} not found (no manifest)")]
    NotFound { repository: String, backup: String },
    /// A stored object is missing, changed, or does not belong where it is.
    #[error("backup {backup}: object {object}: {problem}")]
    Corrupt {
        backup: String,
        object: String,
        problem: String,
    },
    /// `verify` found problems; each names its object.
    #[error("backup {backup} failed verification: {}", problems.join("; "))]
    Verify {
        backup: String,
        problems: Vec<String>,
    },
    /// Decryption needs a private key and none was given.
    #[error("{what}: no private key given (restore and deep verification need one of the policy's age identities)")]
    NoPrivateKey { what: String },
    /// None of the given private keys opens the object.
    #[error("{what}: not encrypted to any of the given private keys (wrong key?)")]
    WrongKey { what: String },
    /// The repository was created with other keys or another format.
    #[error("repository {repository}: {problem}")]
    Repository { repository: String, problem: String },
    /// S3 Object Lock keeps the backup until `until`: it was not deleted
    /// (nothing of it was); deleting it again after that date succeeds.
    #[error("repository {repository}: backup {backup} is kept by object lock until {until}")]
    Locked {
        repository: String,
        backup: String,
        until: jiff::Timestamp,
    },
    /// A WAL segment of this name is already archived with other content.
    #[error("repository {repository}: WAL segment {name} is already archived with different content; refusing to overwrite it")]
    WalConflict { repository: String, name: String },
    /// A local file or process failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL statement failed.
    #[error("PostgreSQL at {target}: {action}: {source}")]
    Postgres {
        target: String,
        action: String,
        #[source]
        source: postgres::Error,
    },
    /// An external program (pg_basebackup) failed.
    #[error("{program} failed ({status}): {stderr}")]
    Program {
        program: String,
        status: String,
        stderr: String,
    },
}

/// Result with [`BackupError`].
pub type Result<T, E = BackupError> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

pub(crate) fn invalid(what: impl Into<String>, problem: impl Into<String>) -> BackupError {
    BackupError::Invalid {
        what: what.into(),
        problem: problem.into(),
    }
}

pub(crate) fn corrupt(
    backup: impl Into<String>,
    object: impl Into<String>,
    problem: impl Into<String>,
) -> BackupError {
    BackupError::Corrupt {
        backup: backup.into(),
        object: object.into(),
        problem: problem.into(),
    }
}

/// The message of an error and all its causes, one after the other.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

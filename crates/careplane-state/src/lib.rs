//! careplane's embedded state store.
//!
//! careplane has to remember what it created (so that a later apply can
//! compare, update or delete it), the secrets it generated (database
//! passwords that must stay stable across applies), and what it was doing
//! when it was interrupted (so that an apply killed at any point, even by
//! `kill -9`, is finished by the next one). All of that lives in one SQLite
//! database, `<data_dir>/state.db`, opened through [`Store`]:
//!
//! * **resources** — one [`ResourceRecord`] per thing careplane created,
//!   keyed by an id such as `pg-database/stmarys/production`, holding the
//!   desired properties as last applied and the observed ones (ports, paths,
//!   pids) as JSON property bags. This crate deliberately knows nothing about
//!   PostgreSQL, Redis or specs.
//! * **secrets** — values generated or supplied for a resource (or for a
//!   platform-level owner such as `"platform"`), stored only encrypted with an
//!   [age](https://age-encryption.org) X25519 identity kept next to the
//!   database (or wherever `CAREPLANE_IDENTITY` points). See [`Store::open`].
//! * **journal** — operations (one per command run) and their steps, so the
//!   next apply can see steps that started and never finished
//!   ([`Store::interrupted_steps`]).
//!
//! The schema is versioned with `PRAGMA user_version` and migrated on open.
//! The database runs in WAL mode with `synchronous=FULL`: crash safety
//! matters more than speed for a control plane.
//!
//! Separately, [`lock`] takes the apply lock, an OS file lock that the kernel
//! releases when the holder dies, so a crashed apply never blocks the next.
//!
//! Nothing in this crate logs or formats secret values: they travel as
//! [`SecretString`], whose `Debug` is redacted, and error messages name the
//! owner and secret name, never the value.

mod fsutil;
mod lock;
mod schema;
mod store;
mod vault;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

pub use lock::{lock, ApplyLock, LOCK_FILE};
pub use secrecy::{ExposeSecret, SecretString};
pub use store::{Store, DB_FILE, IDENTITY_ENV, IDENTITY_FILE};

/// Something careplane created, as recorded in the state store.
///
/// The store treats `props` and `observed` as opaque JSON: the engine decides
/// what goes in them. Secret values never belong here; they go through
/// [`Store::put_secret`] so that they are encrypted at rest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResourceRecord {
    /// Stable identifier, e.g. `"pg-cluster/shared"` or
    /// `"pg-database/stmarys/production"`. Also the owner of its secrets.
    pub id: String,
    /// Resource kind, e.g. `"pg-cluster"`.
    pub kind: String,
    /// Where the resource is in its lifecycle; see [`ResourceStatus`].
    pub status: ResourceStatus,
    /// Desired, non-secret properties as last applied.
    pub props: serde_json::Value,
    /// Allocated or observed values: ports, paths, pids.
    pub observed: serde_json::Value,
    /// RFC 3339 UTC time the record was first stored. Set by the store;
    /// ignored by [`Store::put_resource`].
    pub created_at: String,
    /// RFC 3339 UTC time of the last [`Store::put_resource`]. Set by the
    /// store; ignored on input.
    pub updated_at: String,
}

/// Lifecycle state of a [`ResourceRecord`].
///
/// Recording intent *before* acting (`Pending`, `Deleting`) is what lets an
/// interrupted apply be finished later: a record that is not `Ready` tells
/// the next apply that the action may or may not have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceStatus {
    /// Intent recorded; the action creating or changing it may not have run.
    Pending,
    /// Created (or updated) and observed to match `props`.
    Ready,
    /// Deletion started; the resource may still partly exist.
    Deleting,
}

impl ResourceStatus {
    /// The name stored in the database and used in JSON (`"pending"`,
    /// `"ready"`, `"deleting"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceStatus::Pending => "pending",
            ResourceStatus::Ready => "ready",
            ResourceStatus::Deleting => "deleting",
        }
    }
}

impl fmt::Display for ResourceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(ResourceStatus::Pending),
            "ready" => Ok(ResourceStatus::Ready),
            "deleting" => Ok(ResourceStatus::Deleting),
            other => Err(format!(
                "unknown resource status {other:?} (expected pending, ready or deleting)"
            )),
        }
    }
}

/// One step of an operation in the journal: an action the engine started
/// (and, if `finished_at` is set, finished).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// Step id, increasing over time.
    pub id: i64,
    /// The operation ([`OperationRecord::id`]) this step belongs to.
    pub op: i64,
    /// What the step does, e.g. `"create pg-database/stmarys/production"`.
    pub action: String,
    /// Engine-defined JSON detail, enough to redo or check the step.
    pub detail: serde_json::Value,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    /// RFC 3339 UTC end time; `None` if the step never finished.
    pub finished_at: Option<String>,
    /// Error message if the step failed.
    pub error: Option<String>,
    /// For a step that never finished: the operation that noticed it and
    /// took over ([`Store::mark_interrupted_resumed`]).
    pub resumed_by: Option<i64>,
}

/// One command run (an apply, a destroy, ...) in the journal.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperationRecord {
    /// Operation id, increasing over time.
    pub id: i64,
    /// The command, e.g. `"apply"`.
    pub command: String,
    /// Process id of the careplane process that ran it.
    pub pid: u32,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    /// RFC 3339 UTC end time; `None` while running or if the process died.
    pub finished_at: Option<String>,
    /// `"succeeded"` or `"failed"` (set by [`Store::finish_operation`]), or
    /// `"interrupted"` (set by [`Store::mark_interrupted_resumed`] when the
    /// process died before finishing); `None` while running.
    pub outcome: Option<String>,
    /// Error message for a failed or interrupted operation.
    pub error: Option<String>,
}

/// Everything that can go wrong in the state store.
///
/// Messages name the file and what failed so that an operator can act on
/// them; they never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A filesystem operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `"create data directory"`.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// An SQLite operation on `state.db` failed.
    #[error("state database {}: cannot {action}: {source}", path.display())]
    Db {
        /// What was being done, e.g. `"store resource pg-cluster/shared"`.
        action: String,
        /// Path of `state.db`.
        path: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },

    /// `state.db` was written by a newer careplane.
    #[error(
        "state database {} has schema version {found}, but this careplane only knows versions up to {supported}; use a newer careplane",
        path.display()
    )]
    SchemaTooNew {
        /// Path of `state.db`.
        path: PathBuf,
        /// `user_version` found in the file.
        found: i64,
        /// Latest version this build knows.
        supported: i64,
    },

    /// A stored value could not be understood (hand-edited or corrupted
    /// database).
    #[error("state database {}: {what}", path.display())]
    Corrupt {
        /// Path of `state.db`.
        path: PathBuf,
        /// What is wrong, naming the row.
        what: String,
    },

    /// Encrypted secrets exist but the identity that decrypts them is gone.
    /// careplane never silently generates a new one in this case: that would
    /// make every stored secret unreadable for good.
    #[error(
        "{} holds {count} encrypted secrets but the identity {} is missing; restore it from your key backup (or set {env} to where it is)",
        db.display(), identity.display(), env = store::IDENTITY_ENV
    )]
    IdentityMissing {
        /// Path of `state.db`.
        db: PathBuf,
        /// Where the identity was expected.
        identity: PathBuf,
        /// Number of encrypted secrets in the database.
        count: u64,
    },

    /// The identity file exists but does not hold exactly one age X25519
    /// secret key.
    #[error("identity file {} is not a usable age X25519 identity: {reason}", path.display())]
    IdentityInvalid {
        /// The identity file.
        path: PathBuf,
        /// Why (never contains key material).
        reason: String,
    },

    /// The identity file can be read or written by other users.
    #[error(
        "identity file {} is accessible by other users (mode {mode:o}); it must be private to its owner: chmod 600 {}",
        path.display(), path.display()
    )]
    IdentityPermissions {
        /// The identity file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The identity file holds a different key than the one that encrypted
    /// the stored secrets.
    #[error(
        "identity {} (public key {found}) is not the key that encrypted the {count} secrets in {} (public key {expected}); restore the right identity from your key backup",
        identity.display(), db.display()
    )]
    IdentityMismatch {
        /// The identity file.
        identity: PathBuf,
        /// Path of `state.db`.
        db: PathBuf,
        /// Public key recorded when the secrets were written.
        expected: String,
        /// Public key of the identity file.
        found: String,
        /// Number of encrypted secrets in the database.
        count: u64,
    },

    /// Encrypting a secret failed.
    #[error("cannot encrypt secret {name:?} of {owner:?}: {reason}")]
    Encrypt {
        /// Owner of the secret.
        owner: String,
        /// Name of the secret.
        name: String,
        /// Why (never contains the value).
        reason: String,
    },

    /// Decrypting a secret failed (wrong identity, or a damaged row).
    #[error("cannot decrypt secret {name:?} of {owner:?} with identity {}: {reason}", identity.display())]
    Decrypt {
        /// Owner of the secret.
        owner: String,
        /// Name of the secret.
        name: String,
        /// The identity file used.
        identity: PathBuf,
        /// Why (never contains the value).
        reason: String,
    },

    /// Another process holds the apply lock.
    #[error(
        "another careplane {command} (pid {pid}, started {since}) holds the lock on {}; wait for it to finish",
        path.display()
    )]
    Locked {
        /// Pid of the holder.
        pid: u32,
        /// The holder's command, e.g. `"apply"`.
        command: String,
        /// RFC 3339 UTC time the holder took the lock.
        since: String,
        /// The lock file.
        path: PathBuf,
    },

    /// A caller passed a value the store cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// No operation with this id exists in the journal.
    #[error("no operation {0} in the journal")]
    UnknownOperation(i64),

    /// No step with this id exists in the journal.
    #[error("no step {0} in the journal")]
    UnknownStep(i64),
}

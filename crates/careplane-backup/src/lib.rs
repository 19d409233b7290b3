//! careplane's backup repository (issue 16, docs/design/0005): content-defined
//! chunks named by a keyed hash, compressed with zstd and encrypted with age,
//! on `file://` or `s3://` through `object_store`; a signed manifest per
//! backup; WAL archiving for `archive_command`/`restore_command`; base
//! backups with `pg_basebackup`; one tenant database back to a point in
//! time on a shared cluster (`tenant`); and the retention rule.
//!
//! Plain blocking functions: the engine and CLI sit on top, this crate knows
//! nothing of specs, state or resources.

mod error;
mod keys;
mod objectlock;
pub mod pg;
mod repo;
pub mod retention;
mod store;
pub mod tenant;
mod wal;

pub use error::{error_chain, BackupError, Result};
pub use jiff::{SignedDuration, Timestamp};
pub use keys::{generate_identity, generate_secret, read_identity_file, RepoKeys, WalKeys};
pub use objectlock::{Immutability, LockMode};
pub use repo::{
    BackupIndex, BackupMetadata, BackupWriter, ChunkRef, FileEntry, FileKind, FilestoreEntry,
    GcReport, Manifest, ObjectRef, Progress, ProgressFn, RepoOptions, Repository, TableStat,
    VerifyReport, FORMAT,
};
pub use secrecy::{ExposeSecret, SecretString};
pub use wal::{Archived, WalArchive};

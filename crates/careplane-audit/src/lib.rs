//! careplane's tamper-evident audit log (issue 20, M11; docs/design/0007-audit-log.md).
//!
//! One writer process appends events ([`AuditLog::append`], thread-safe,
//! group-committed: it returns once the entry is on disk); entries form an
//! RFC 9162 Merkle tree whose roots are signed into checkpoints
//! ([`AuditLog::checkpoint`]) and published to a [`Witness`]. Anyone with the
//! directory and the public key can [`verify`] it, and a [`Snapshot`] gives
//! inclusion and consistency proofs, queries and exports.
//!
//! This crate knows nothing of specs, the engine or identity: the engine
//! builds an [`Event`] per operation and hands it over.

mod checkpoint;
mod event;
mod log;
pub mod merkle;
mod read;
mod redact;
mod scan;
mod verify;

use std::path::{Path, PathBuf};

pub use checkpoint::{SignedCheckpoint, Witness};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use event::{
    format_time, parse_time, Actor, ActorKind, Elevation, Entry, Event, Outcome, Status,
};
pub use log::{Appending, AuditLog, Options, Receipt, Recovery, MAX_ENTRY_BYTES};
pub use merkle::{
    leaf_hash, verify_consistency, verify_inclusion, ConsistencyProof, Hash, InclusionProof,
    ProofError,
};
pub use read::{Filter, ProvenEntry, Snapshot, TenantExport};
pub use redact::{is_secret_key, redact, redact_event, KnownSecrets, REDACTED};
pub use verify::{verify, Problem, ProblemKind, Report};

pub(crate) const META: &str = "meta.json";
pub(crate) const ENTRIES: &str = "entries.jsonl";
pub(crate) const CHECKPOINTS: &str = "checkpoints.jsonl";
pub(crate) const FORMAT: &str = "careplane-audit/1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {} is open by another process ({}/lock is held)", dir.display(), dir.display())]
    Locked { dir: PathBuf },
    #[error("{}: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("event field {field}: {detail}")]
    InvalidEvent { field: String, detail: String },
    #[error("the audit log stopped accepting entries after a failed write at seq {seq}: {detail}; reopen it")]
    Poisoned { seq: u64, detail: String },
    #[error("witness {}: {detail}", location.display())]
    Witness { location: PathBuf, detail: String },
    #[error("{0}")]
    Request(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A fresh random signing key (the engine stores its 32 bytes in the vault
/// and passes `SigningKey::from_bytes` of them to [`AuditLog::open`]).
pub fn generate_signing_key() -> Result<SigningKey, Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Error::Request(format!("no randomness for a signing key: {e}")))?;
    let key = SigningKey::from_bytes(&bytes);
    bytes.iter_mut().for_each(|b| *b = 0);
    Ok(key)
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Meta {
    pub format: String,
    pub origin: String,
}

pub(crate) fn read_meta(dir: &Path) -> Result<Option<Meta>, Error> {
    let path = dir.join(META);
    match std::fs::read(&path) {
        Ok(b) => {
            let m: Meta = serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            if m.format != FORMAT {
                return Err(Error::Corrupt {
                    path,
                    detail: format!("format {:?}, this careplane reads {FORMAT:?}", m.format),
                });
            }
            Ok(Some(m))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

//! One audit event per engine operation (issue 20, M11): apply, destroy,
//! start, stop, modules and credentials shown each append exactly one
//! entry to `<dataDir>/audit` — also when they fail or are refused (by a
//! guard or by the authorization check) — with the principal who ran it, what on, the parameters (never a secret), the result and the
//! journal's operation id. The log is careplane-audit's: hash-chained,
//! Merkle checkpoints signed with a key kept in careplane's vault.

use std::path::{Path, PathBuf};

use careplane_audit::{Actor, AuditLog, Event, Outcome, SigningKey, Status};
use careplane_state::{ExposeSecret, Store};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::EngineError;

/// Where the log lives.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// The checkpoint signing key, derived from a secret in the vault
/// (generated on first use, encrypted at rest like every other secret).
pub fn signing_key(store: &Store) -> Result<SigningKey, EngineError> {
    let secret = store.get_or_create_secret("audit", "signing-key")?;
    let mut h = Sha256::new();
    h.update(b"careplane audit signing key v1\0");
    h.update(secret.expose_secret().as_bytes());
    Ok(SigningKey::from_bytes(&h.finalize().into()))
}

/// What happened, for the entry: refusals are told apart from failures.
pub fn outcome<T>(result: &Result<T, EngineError>) -> Outcome {
    match result {
        Ok(_) => Outcome {
            status: Status::Succeeded,
            message: None,
        },
        Err(EngineError::Refused { problems }) => Outcome {
            status: Status::Refused,
            message: Some(problems.join("; ")),
        },
        Err(EngineError::Denied { reason }) => Outcome {
            status: Status::Refused,
            message: Some(reason.clone()),
        },
        Err(e) => Outcome {
            status: Status::Failed,
            message: Some(e.to_string()),
        },
    }
}

/// Appends one entry for `actor` (the principal the operation was
/// authorized for, docs/design/0013); signs a checkpoint with it, so that
/// every operation is covered by a signature as soon as it is recorded.
#[allow(clippy::too_many_arguments)]
pub fn record_as(
    store: &Store,
    data_dir: &Path,
    actor: Actor,
    action: &str,
    target: &str,
    tenant: Option<&str>,
    parameters: Value,
    result: Outcome,
    operation: Option<i64>,
) -> Result<(), EngineError> {
    let failed = |e: careplane_audit::Error| EngineError::Inconsistent {
        what: format!(
            "{action} on {target} could not be recorded in the audit log {}: {e}",
            dir(data_dir).display()
        ),
    };
    let log = AuditLog::open(&dir(data_dir), signing_key(store)?).map_err(failed)?;
    log.append(Event {
        actor,
        action: action.into(),
        target: target.into(),
        tenant: tenant.map(str::to_string),
        parameters,
        result,
        operation: operation.map(|o| o.to_string()),
    })
    .map_err(failed)?;
    log.close().map_err(failed)?;
    Ok(())
}

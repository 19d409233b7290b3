//! Backups only the customer can read (issue 16; `careplaneKey: false` in a
//! BackupPolicy, docs/design/0010 "Customer-held keys").
//!
//! Backing up, listing, verifying hashes and signatures, pruning and
//! garbage collection need no private key (chunk ids, WAL MACs, the file
//! state and manifest signatures come from the repository secret). What
//! decrypts (restore, `verify --deep`, `verify --restore`, `show`) is tried
//! with careplane's identity and the caller's (`--identity FILE`); here a
//! key that fails is turned into a refusal that names the backup and says
//! a customer key is needed, before anything changes, and a scheduled
//! restore verification is recorded as skipped.

use careplane_backup::{BackupError, Manifest, Repository, Timestamp};
use careplane_engine::RestoreCheck;
use careplane_state::ResourceRecord;

use crate::backup::{berr, label, rfc3339};
use crate::restore::refused;
use crate::{Error, LocalDriver};

/// The variable `--identity` reads its default from (a path, not a key).
pub const IDENTITY_ENV: &str = "CAREPLANE_BACKUP_IDENTITY_FILE";

fn is_key_error(e: &BackupError) -> bool {
    key_error_object(e).is_some()
}

/// The object a key error names (`backup X: object Y`), if it is one.
fn key_error_object(e: &BackupError) -> Option<&str> {
    match e {
        BackupError::NoPrivateKey { what } | BackupError::WrongKey { what } => Some(what),
        _ => None,
    }
}

impl LocalDriver {
    /// Why backup `m`'s object `what` cannot be decrypted: no customer key
    /// was given, or the one given is not among its recipients.
    fn key_needed(&self, m: &Manifest, what: &str) -> String {
        let env = format!("{}/{}", label(m, "tenant"), label(m, "environment"));
        if self.backup_identities.is_empty() {
            format!(
                "backup {} of {env}: {what} is not encrypted to careplane's key (the policy \
                 has careplaneKey: false, the customer holds the key): a customer key is \
                 needed; pass --identity FILE (an age identity file, as age-keygen writes, of \
                 one of the policy's recipients) or set {IDENTITY_ENV}",
                m.id
            )
        } else {
            format!(
                "backup {} of {env}: {what} is encrypted to neither careplane's key nor the \
                 identity given with --identity: a customer key of one of the policy's \
                 recipients is needed (wrong key file?)",
                m.id
            )
        }
    }

    /// For `restore-cluster`: whether base backup `base` of `cluster_id`
    /// opens with the keys at hand (a dedicated cluster whose tenant's
    /// policy has `careplaneKey: false`); `Some(why)` when not.
    pub(crate) fn base_key_problem(
        &self,
        repo: &Repository,
        base: &Manifest,
        cluster_id: &str,
    ) -> Option<String> {
        let e = repo.index(base).err().filter(is_key_error)?;
        let what = key_error_object(&e).unwrap_or_default();
        Some(if self.backup_identities.is_empty() {
            format!(
                "base backup {} of {cluster_id} ({what}) is not encrypted to careplane's key \
                 (its tenant's policy has careplaneKey: false): a customer key is needed; pass \
                 --identity FILE (an age identity file of one of the policy's recipients) or \
                 set {IDENTITY_ENV}",
                base.id
            )
        } else {
            format!(
                "base backup {} of {cluster_id} ({what}) is encrypted to neither careplane's key nor \
                 the identity given with --identity (wrong key file?)",
                base.id
            )
        })
    }

    /// `e` from reading environment backup `m` (or its base backup): a key
    /// that does not open it becomes a refusal naming the backup; anything
    /// else keeps its chain of causes after `context`.
    pub(crate) fn backup_error(&self, m: &Manifest, context: &str, e: BackupError) -> Error {
        match &e {
            BackupError::NoPrivateKey { what } | BackupError::WrongKey { what } => {
                refused(self.key_needed(m, what))
            }
            _ => berr(context)(e),
        }
    }

    /// Whether environment backup `m` (in `repo`) and base backup `base`
    /// (default: the one it names) open with the keys at hand; `Some(why)`
    /// when not. Tries their sealed indexes: small, and encrypted to the
    /// same recipients as their chunks and the cluster's WAL. Any other
    /// problem is left for the operation itself to name.
    pub(crate) fn key_problem(
        &mut self,
        repo: &Repository,
        m: &Manifest,
        base: Option<&str>,
    ) -> Result<Option<String>, Error> {
        if let Err(e) = repo.index(m) {
            if let Some(what) = key_error_object(&e) {
                return Ok(Some(self.key_needed(m, what)));
            }
        }
        let Some(base) = base.or(m.labels.get("cluster.backup").map(String::as_str)) else {
            return Ok(None);
        };
        let cluster_id = label(m, "cluster");
        let Some(crec) = self
            .records()?
            .into_iter()
            .find(|r: &ResourceRecord| r.id == cluster_id)
        else {
            return Ok(None);
        };
        let crepo = self.open_cluster_repo(&crec)?;
        if let Err(e) = crepo.manifest(base).and_then(|bm| crepo.index(&bm)) {
            if let Some(what) = key_error_object(&e) {
                let what = format!("its base backup {base} of {cluster_id} ({what})");
                return Ok(Some(self.key_needed(m, &what)));
            }
        }
        Ok(None)
    }

    /// For `run-due`: when backup `id` of `tenant`/`env` cannot be
    /// restored with the keys at hand, its restore verification recorded
    /// as `skipped` with the reason (on the environment's record, where
    /// `status` shows it, and as the result); `None` when it can be.
    pub(crate) fn customer_key_skip(
        &mut self,
        tenant: &str,
        env: &str,
        id: &str,
    ) -> Option<Result<RestoreCheck, Error>> {
        let r = (|| -> Result<Option<RestoreCheck>, Error> {
            let (repo, m) = self.find_backup(id)?;
            let Some(why) = self.key_problem(&repo, &m, None)? else {
                return Ok(None);
            };
            let check = RestoreCheck {
                backup: id.to_string(),
                tenant: tenant.to_string(),
                environment: env.to_string(),
                outcome: "skipped".into(),
                verified_at: rfc3339(Timestamp::now()),
                duration_ms: 0,
                recovery_ms: 0,
                recovered_to: None,
                tables: 0,
                rows: 0,
                baseline: None,
                first_difference: None,
                error: None,
                evidence: None,
                skipped: Some(format!(
                    "customer-held key: careplane cannot restore it without the customer's \
                     identity; only the hashes and signatures of its objects were verified ({why})"
                )),
            };
            let db_id = careplane_model::pg_database_id(tenant, env);
            let mut rec = self
                .store()?
                .resource(&db_id)?
                .ok_or_else(|| crate::backup::err(format!("{db_id} is not recorded")))?;
            rec.observed["lastRestoreVerification"] =
                serde_json::to_value(&check).expect("a restore check serializes");
            self.store()?.put_resource(&rec)?;
            Ok(Some(check))
        })();
        r.transpose()
    }
}

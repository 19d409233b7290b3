//! careplane's reconcile engine.
//!
//! `specs → desired resources → plan (diff against the state store) → apply`.
//! Apply is crash-safe by construction:
//!
//! 1. Everything careplane allocates (ports, paths, passwords, certificates) is
//!    written to the state store as a `pending` record *before* it is used, so
//!    a re-run reuses the same values instead of allocating new ones.
//! 2. Every runtime call is an "ensure" that converges whatever it finds.
//! 3. Each action is journaled (started / finished); the next apply reports
//!    steps that never finished and, because their records are still
//!    `pending` or `deleting`, plans them again.
//!
//! So an apply killed at any instant — including `kill -9` — is finished by
//! the next apply, with nothing duplicated or orphaned.

mod audit;
mod backup;
pub mod desired;
pub mod driver;
mod error;
mod executor;
pub mod plan;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use careplane_spec::SpecSet;
use careplane_state::{ResourceRecord, StepRecord};
use serde_json::Value;

pub use backup::{
    BackupDetail, BackupEvent, BackupSummary, BackupTable, PruneOutcome, PrunedRepository,
    RestoreOutcome, RestorePoint, RestoreRequest, RunDueOutcome, VerifyOutcome,
};
pub use careplane_audit;
pub use careplane_state::ExposeSecret;
pub use driver::{Driver, Ensured, Started};
pub use error::EngineError;
pub use executor::{crash_point, finish, mark_deleting, prepare, run_all};
pub use plan::{Action, Op, Plan};
pub use report::{
    ApplyOptions, ApplyReport, Archiving, Credentials, DbCredentials, EnvStatus, Event,
    ExportReport, Health, ImportReport, LastBackup, LastRestore, OdooCredentials, OdooLogin,
    RedisCredentials, ServerStatus, Status,
};

use executor::Core;

/// A spec set bound to its data directory and the driver of its target.
///
/// Every method takes `&self` and may be called from several threads (a
/// server's request handlers): calls are serialized on one lock, and
/// `apply`, `destroy`, `start`, `stop` and `modules` also take the data
/// directory's apply lock, which other processes respect.
pub struct Engine {
    specs: SpecSet,
    data_dir: PathBuf,
    core: Mutex<Core>,
}

impl Engine {
    /// Binds specs to their platform's data directory and `driver` without
    /// touching disk.
    pub fn new(specs: SpecSet, driver: Box<dyn Driver>) -> Engine {
        let data_dir = Engine::data_dir_of(&specs);
        Engine {
            core: Mutex::new(Core {
                specs: specs.clone(),
                data_dir: data_dir.clone(),
                store: None,
                driver,
            }),
            specs,
            data_dir,
        }
    }

    /// The absolute data directory of `specs` (servers run with their own
    /// working directory: every path handed to them must be absolute).
    pub fn data_dir_of(specs: &SpecSet) -> PathBuf {
        let data_dir = specs.data_dir();
        std::path::absolute(&data_dir).unwrap_or(data_dir)
    }

    pub fn specs(&self) -> &SpecSet {
        &self.specs
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        // A panic while holding the lock leaves nothing half-written that
        // the state store's own transactions and the journal do not cover.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest `limit` steps of the operation journal, newest first.
    pub fn journal(&self, limit: usize) -> Result<Vec<StepRecord>, EngineError> {
        self.core().journal(limit)
    }

    /// What careplane holds now. Empty — and nothing created — when the
    /// platform was never applied, so `plan` changes nothing on disk.
    pub fn recorded(&self) -> Result<Vec<ResourceRecord>, EngineError> {
        self.core().recorded()
    }

    /// The plan that `apply` would run now.
    pub fn plan(&self) -> Result<Plan, EngineError> {
        self.core().plan()
    }

    /// The plan that removes everything careplane holds for `tenants` (all of
    /// it, including shared servers and the CA, when `tenants` is empty).
    pub fn destroy_plan(&self, tenants: &[String]) -> Result<Plan, EngineError> {
        self.core().destroy_plan(tenants)
    }

    /// Runs the current plan under the apply lock; returns what ran and the
    /// journal's operation id. Audited, whatever the outcome.
    pub fn apply(
        &self,
        opts: &ApplyOptions,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<ApplyReport, EngineError> {
        let mut core = self.core();
        let r = core.apply(opts, progress);
        let mut params =
            serde_json::json!({"deleteData": opts.delete_data, "confirm": opts.confirm});
        if let Some(why) = &opts.override_freeze {
            params["overrideFreeze"] = why.as_str().into();
        }
        let op = r.as_ref().ok().map(|r| r.operation);
        core.audit(
            "apply",
            &self.platform(),
            None,
            params,
            audit::outcome(&r),
            op,
        )?;
        r
    }

    /// Removes what careplane holds for `tenants` (everything when empty).
    pub fn destroy(
        &self,
        tenants: &[String],
        opts: &ApplyOptions,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<ApplyReport, EngineError> {
        let mut core = self.core();
        let r = core.destroy(tenants, opts, progress);
        let params = serde_json::json!({
            "tenants": tenants, "deleteData": opts.delete_data, "confirm": opts.confirm
        });
        let tenant = match tenants {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let op = r.as_ref().ok().map(|r| r.operation);
        core.audit(
            "destroy",
            &self.platform(),
            tenant,
            params,
            audit::outcome(&r),
            op,
        )?;
        r
    }

    /// Starts every recorded server (after `stop` or a reboot); returns the
    /// journal's operation id.
    pub fn start_all(&self, progress: &mut dyn FnMut(Event<'_>)) -> Result<i64, EngineError> {
        let mut core = self.core();
        let r = core.start_all(progress);
        let op = r.as_ref().ok().copied();
        core.audit(
            "start",
            &self.platform(),
            None,
            Value::Null,
            audit::outcome(&r),
            op,
        )?;
        r
    }

    /// Stops every recorded server, PostgreSQL with a fast shutdown; returns
    /// the journal's operation id.
    pub fn stop_all(&self, progress: &mut dyn FnMut(Event<'_>)) -> Result<i64, EngineError> {
        let mut core = self.core();
        let r = core.stop_all(progress);
        let op = r.as_ref().ok().copied();
        core.audit(
            "stop",
            &self.platform(),
            None,
            Value::Null,
            audit::outcome(&r),
            op,
        )?;
        r
    }

    /// How to reach a tenant environment's database and Redis, with the
    /// generated passwords: only for the operator who asks explicitly, and
    /// audited (`credentials.show`; the passwords are not in the entry).
    pub fn credentials(&self, tenant: &str, env: &str) -> Result<Credentials, EngineError> {
        let mut core = self.core();
        let r = core.credentials(tenant, env);
        let target = format!("environment {tenant}/{env}");
        let params = serde_json::json!({"tenant": tenant, "environment": env});
        core.audit(
            "credentials.show",
            &target,
            Some(tenant),
            params,
            audit::outcome(&r),
            None,
        )?;
        r
    }

    /// `careplane modules install|upgrade`: stop web, run Odoo's `-i`/`-u`,
    /// start again, check health; journaled like an apply, and audited.
    pub fn modules(
        &self,
        tenant: &str,
        env: &str,
        install: bool,
        modules: &[String],
    ) -> Result<(), EngineError> {
        let mut core = self.core();
        let r = core.modules(tenant, env, install, modules);
        let action = if install {
            "modules.install"
        } else {
            "modules.upgrade"
        };
        let target = format!("environment {tenant}/{env}");
        let params = serde_json::json!({"modules": modules});
        core.audit(
            action,
            &target,
            Some(tenant),
            params,
            audit::outcome(&r),
            None,
        )?;
        r
    }

    /// `careplane export`: `tenant`/`env`'s database and filestore as an
    /// archive Odoo's database manager restores (`out`); audited, as every
    /// read of a tenant's data is.
    pub fn export(
        &self,
        tenant: &str,
        env: &str,
        out: &std::path::Path,
    ) -> Result<ExportReport, EngineError> {
        let mut core = self.core();
        let r = core.export(tenant, env, out);
        let target = format!("environment {tenant}/{env}");
        let params = serde_json::json!({"format": "odoo-zip", "path": out.display().to_string()});
        core.audit(
            "export",
            &target,
            Some(tenant),
            params,
            audit::outcome(&r),
            None,
        )?;
        r
    }

    /// `careplane import`: `tenant`/`env`'s database and filestore replaced
    /// by an Odoo zip or a `pg_dump` custom file; audited.
    pub fn import(
        &self,
        tenant: &str,
        env: &str,
        file: &std::path::Path,
    ) -> Result<ImportReport, EngineError> {
        let mut core = self.core();
        let r = core.import(tenant, env, file);
        let target = format!("environment {tenant}/{env}");
        let params = serde_json::json!({"path": file.display().to_string()});
        core.audit(
            "import",
            &target,
            Some(tenant),
            params,
            audit::outcome(&r),
            None,
        )?;
        r
    }

    /// The audit log's directory.
    pub fn audit_dir(&self) -> PathBuf {
        audit::dir(&self.data_dir)
    }

    /// Checks every entry and signed checkpoint of the audit log (see
    /// `careplane_audit::verify`).
    pub fn audit_verify(&self) -> Result<careplane_audit::Report, EngineError> {
        let mut core = self.core();
        let key = audit::signing_key(core.store()?)?;
        careplane_audit::verify(&self.audit_dir(), &key.verifying_key(), None).map_err(|e| {
            EngineError::Inconsistent {
                what: format!("audit log {}: {e}", self.audit_dir().display()),
            }
        })
    }

    /// Entries of the audit log that `filter` selects, oldest first.
    pub fn audit_entries(
        &self,
        filter: &careplane_audit::Filter,
    ) -> Result<Vec<careplane_audit::Entry>, EngineError> {
        let failed = |e: careplane_audit::Error| EngineError::Inconsistent {
            what: format!("audit log {}: {e}", self.audit_dir().display()),
        };
        if !self.audit_dir().join("meta.json").exists() {
            return Ok(Vec::new());
        }
        careplane_audit::Snapshot::load(&self.audit_dir())
            .and_then(|s| s.query(filter))
            .map_err(failed)
    }

    /// A tenant's entries with inclusion proofs against the log's latest
    /// signed checkpoint, and the public key: what the tenant's auditor
    /// checks with the few lines of docs/audit.md.
    pub fn audit_export_tenant(
        &self,
        tenant: &str,
    ) -> Result<careplane_audit::TenantExport, EngineError> {
        let (latest, key) = self.audit_checkpoint()?;
        careplane_audit::Snapshot::load(&self.audit_dir())
            .and_then(|s| s.export_tenant(tenant, &latest, &key))
            .map_err(|e| EngineError::Inconsistent {
                what: format!("audit log {}: {e}", self.audit_dir().display()),
            })
    }

    /// Appends one audit entry for `actor` (commands outside the engine's
    /// operations: `careplane access …`, `login`). Refused before the
    /// platform's first apply: the log's signing key lives in its vault.
    pub fn audit_record_as(
        &self,
        actor: careplane_audit::Actor,
        action: &str,
        target: &str,
        tenant: Option<&str>,
        parameters: Value,
        result: careplane_audit::Outcome,
    ) -> Result<(), EngineError> {
        let mut core = self.core();
        if !self.data_dir.join("state.db").exists() {
            return Err(EngineError::Inconsistent {
                what: format!(
                    "{} has no state yet ({} was never applied): nothing to record {action} in",
                    self.data_dir.display(),
                    self.platform()
                ),
            });
        }
        let store = core.store()?;
        audit::record_as(
            store,
            &self.data_dir,
            actor,
            action,
            target,
            tenant,
            parameters,
            result,
            None,
        )
    }

    /// A secret of the access model (owner `access` in the vault: the
    /// break-glass accounts' TOTP seeds), if set.
    pub fn access_secret(
        &self,
        name: &str,
    ) -> Result<Option<careplane_state::SecretString>, EngineError> {
        Ok(self.core().store()?.secret("access", name)?)
    }

    /// Stores a secret of the access model in the vault (age-encrypted).
    pub fn put_access_secret(
        &self,
        name: &str,
        value: &careplane_state::SecretString,
    ) -> Result<(), EngineError> {
        Ok(self.core().store()?.put_secret("access", name, value)?)
    }

    /// The audit log's latest signed checkpoint (its signature checked) and
    /// the public key that checks it.
    pub fn audit_checkpoint(
        &self,
    ) -> Result<
        (
            careplane_audit::SignedCheckpoint,
            careplane_audit::VerifyingKey,
        ),
        EngineError,
    > {
        let mut core = self.core();
        let key = audit::signing_key(core.store()?)?.verifying_key();
        let failed = |e: String| EngineError::Inconsistent {
            what: format!("audit log {}: {e}", self.audit_dir().display()),
        };
        let checkpoints = std::fs::read_to_string(self.audit_dir().join("checkpoints.jsonl"))
            .map_err(|e| failed(format!("no signed checkpoint to prove against ({e})")))?;
        let latest: careplane_audit::SignedCheckpoint = checkpoints
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| failed("no signed checkpoint to prove against".into()))
            .and_then(|l| serde_json::from_str(l).map_err(|e| failed(e.to_string())))?;
        latest
            .verify(&key)
            .map_err(|e| failed(format!("the latest checkpoint does not verify: {e}")))?;
        Ok((latest, key))
    }

    fn platform(&self) -> String {
        format!("platform {}", self.specs.platform.metadata.name)
    }

    /// Every environment and server, and whether each answers.
    pub fn status(&self) -> Result<Status, EngineError> {
        self.core().status()
    }
}

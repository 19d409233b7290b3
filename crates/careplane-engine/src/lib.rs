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
    BackupDetail, BackupEvent, BackupSummary, BackupTable, ClusterRestoreOutcome,
    ClusterRestoreRequest, FilestoreShipment, PruneOutcome, PrunedRepository, RestoreOutcome,
    RestorePoint, RestoreRequest, RunDueOutcome, ShipOutcome, VerifyOutcome,
};
pub use careplane_audit;
pub use careplane_identity;
pub use careplane_state::ExposeSecret;
pub use driver::{Driver, Ensured, Started};
pub use error::EngineError;
pub use executor::{crash_point, finish, mark_deleting, prepare, run_all};
pub use plan::{Action, Op, Plan};
pub use report::{
    ApplyOptions, ApplyReport, Archiving, Credentials, DbCredentials, EnvStatus, Event,
    ExportReport, Health, ImportReport, LastBackup, LastRestore, OdooCredentials, OdooLogin,
    RedisCredentials, RedisMonitor, RestoreCheck, ServerStatus, Status,
};

use careplane_identity as authz;
pub use careplane_identity::Principal;
use executor::Core;

/// One authorized operation: its audit action name, what `authorize` is
/// asked (action and target), and what its audit entry names.
pub(crate) struct Guarded {
    pub action: String,
    pub authz: authz::Action,
    pub on: authz::Target,
    pub target: String,
    pub tenant: Option<String>,
    pub parameters: Value,
}

/// The audit outcome of an operation without a journal operation id.
pub(crate) fn plain<T>(
    r: &Result<T, EngineError>,
    _: &mut Guarded,
) -> (careplane_audit::Outcome, Option<i64>) {
    (audit::outcome(r), None)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Who acts when nobody signed in: root on the host is the local root
/// operator (platform-admin, authenticated by the machine, audited as
/// such); any other OS user holds no role and must sign in.
pub fn host_principal() -> Principal {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Principal::local_root(uid)
    } else {
        Principal {
            id: format!("uid:{uid}"),
            kind: careplane_audit::ActorKind::User,
            auth: "local-user".into(),
            mfa: false,
            bindings: Vec::new(),
        }
    }
}

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

    /// Private keys the caller holds (a customer's age identities, read
    /// from `--identity FILE`) that this engine's backup operations may
    /// decrypt with besides careplane's own: what restore and deep
    /// verification of a policy with `careplaneKey: false` need. Kept in
    /// memory for the engine's life only; never written to state, the
    /// journal or the audit log, and never in an error.
    pub fn set_backup_identities(&self, identities: Vec<careplane_state::SecretString>) {
        self.core().driver.set_backup_identities(identities);
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

    /// Runs the current plan under the apply lock for `who`; returns what
    /// ran and the journal's operation id. Authorized (`apply` on the
    /// platform, production when it has a production or DR environment or
    /// removes one) and audited, whatever the outcome.
    pub fn apply(
        &self,
        who: &Principal,
        opts: &ApplyOptions,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<ApplyReport, EngineError> {
        let mut parameters =
            serde_json::json!({"deleteData": opts.delete_data, "confirm": opts.confirm});
        if let Some(why) = &opts.override_freeze {
            parameters["overrideFreeze"] = why.as_str().into();
        }
        let op = Guarded {
            action: "apply".into(),
            authz: authz::Action::Apply,
            on: authz::Target::platform(self.apply_touches_production()),
            target: self.platform(),
            tenant: None,
            parameters,
        };
        self.guarded(
            who,
            op,
            |core| core.apply(opts, progress),
            |r, _| (audit::outcome(r), r.as_ref().ok().map(|r| r.operation)),
        )
    }

    /// Removes what careplane holds for `tenants` (everything when empty).
    pub fn destroy(
        &self,
        who: &Principal,
        tenants: &[String],
        opts: &ApplyOptions,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<ApplyReport, EngineError> {
        let tenant = match tenants {
            [one] => Some(one.clone()),
            _ => None,
        };
        // Everything careplane holds may include production the specs no
        // longer name: the strict case.
        let production =
            tenants.is_empty() || tenants.iter().any(|t| self.production(Some(t), None));
        let op = Guarded {
            action: "destroy".into(),
            authz: authz::Action::Destroy,
            on: authz::Target {
                tenant: tenant.clone(),
                production,
            },
            target: self.platform(),
            tenant,
            parameters: serde_json::json!({
                "tenants": tenants, "deleteData": opts.delete_data, "confirm": opts.confirm
            }),
        };
        self.guarded(
            who,
            op,
            |core| core.destroy(tenants, opts, progress),
            |r, _| (audit::outcome(r), r.as_ref().ok().map(|r| r.operation)),
        )
    }

    /// Starts every recorded server (after `stop` or a reboot); returns the
    /// journal's operation id.
    pub fn start_all(
        &self,
        who: &Principal,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<i64, EngineError> {
        let op = self.platform_op("start", authz::Action::Start);
        self.guarded(
            who,
            op,
            |core| core.start_all(progress),
            |r, _| (audit::outcome(r), r.as_ref().ok().copied()),
        )
    }

    /// Stops every recorded server, PostgreSQL with a fast shutdown; returns
    /// the journal's operation id.
    pub fn stop_all(
        &self,
        who: &Principal,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<i64, EngineError> {
        let op = self.platform_op("stop", authz::Action::Stop);
        self.guarded(
            who,
            op,
            |core| core.stop_all(progress),
            |r, _| (audit::outcome(r), r.as_ref().ok().copied()),
        )
    }

    /// How to reach a tenant environment's database and Redis, with the
    /// generated passwords: only for the operator who asks explicitly, and
    /// audited (`credentials.show`; the passwords are not in the entry).
    pub fn credentials(
        &self,
        who: &Principal,
        tenant: &str,
        env: &str,
    ) -> Result<Credentials, EngineError> {
        let op = self.env_op(
            "credentials.show",
            authz::Action::CredentialsShow,
            tenant,
            env,
            serde_json::json!({"tenant": tenant, "environment": env}),
        );
        self.guarded(who, op, |core| core.credentials(tenant, env), plain)
    }

    /// The monitor credentials of every running Redis server (see [`RedisMonitor`]),
    /// for `careplane serve`'s memory headroom probes: a platform-wide credential, so
    /// only principals whose `credentials.show` covers the platform get it; audited
    /// `credentials.monitor`.
    pub fn redis_monitors(&self, who: &Principal) -> Result<Vec<RedisMonitor>, EngineError> {
        let op = self.platform_op("credentials.monitor", authz::Action::CredentialsShow);
        self.guarded(who, op, |core| core.driver.redis_monitors(), plain)
    }

    /// A certificate for careplane's own service `name` (e.g. `careplane serve`'s API)
    /// from the platform CA, valid for loopback and `hosts`; audited `certificate.issue`.
    /// The key is the caller's to keep in memory: nothing of it is stored.
    pub fn service_certificate(
        &self,
        who: &Principal,
        name: &str,
        hosts: &[String],
    ) -> Result<(String, careplane_state::SecretString), EngineError> {
        // Issuing from the platform CA is a key operation.
        let op = Guarded {
            action: "certificate.issue".into(),
            target: format!("service {name}"),
            parameters: serde_json::json!({"service": name, "hosts": hosts}),
            ..self.platform_op("certificate.issue", authz::Action::KeyRotate)
        };
        self.guarded(
            who,
            op,
            |core| core.driver.service_certificate(name, hosts),
            plain,
        )
    }

    /// `careplane modules install|upgrade`: stop web, run Odoo's `-i`/`-u`,
    /// start again, check health; journaled like an apply, and audited.
    pub fn modules(
        &self,
        who: &Principal,
        tenant: &str,
        env: &str,
        install: bool,
        modules: &[String],
    ) -> Result<(), EngineError> {
        let action = if install {
            "modules.install"
        } else {
            "modules.upgrade"
        };
        let op = self.env_op(
            action,
            authz::Action::Modules,
            tenant,
            env,
            serde_json::json!({"modules": modules}),
        );
        self.guarded(
            who,
            op,
            |core| core.modules(tenant, env, install, modules),
            plain,
        )
    }

    /// `careplane export`: `tenant`/`env`'s database and filestore as an
    /// archive Odoo's database manager restores (`out`); audited, as every
    /// read of a tenant's data is. Authorized as `backup.create`: a full
    /// copy of the tenant's data leaves careplane's custody.
    pub fn export(
        &self,
        who: &Principal,
        tenant: &str,
        env: &str,
        out: &std::path::Path,
    ) -> Result<ExportReport, EngineError> {
        let op = self.env_op(
            "export",
            authz::Action::BackupCreate,
            tenant,
            env,
            serde_json::json!({"format": "odoo-zip", "path": out.display().to_string()}),
        );
        self.guarded(who, op, |core| core.export(tenant, env, out), plain)
    }

    /// `careplane import`: `tenant`/`env`'s database and filestore replaced
    /// by an Odoo zip or a `pg_dump` custom file; audited. Authorized as
    /// `backup.restore` (the data is replaced, as by a restore: MFA).
    pub fn import(
        &self,
        who: &Principal,
        tenant: &str,
        env: &str,
        file: &std::path::Path,
    ) -> Result<ImportReport, EngineError> {
        let op = self.env_op(
            "import",
            authz::Action::BackupRestore,
            tenant,
            env,
            serde_json::json!({"path": file.display().to_string()}),
        );
        self.guarded(who, op, |core| core.import(tenant, env, file), plain)
    }

    /// The one path of every authorized operation (docs/design/0013, "Where
    /// the one check goes"): `authorize` once, before any work; on Deny
    /// nothing runs; either way exactly one audit entry, whose actor is
    /// `who` (kind, id, how authenticated, MFA, elevation in force).
    pub(crate) fn guarded<T>(
        &self,
        who: &Principal,
        mut op: Guarded,
        run: impl FnOnce(&mut Core) -> Result<T, EngineError>,
        recorded: impl FnOnce(
            &Result<T, EngineError>,
            &mut Guarded,
        ) -> (careplane_audit::Outcome, Option<i64>),
    ) -> Result<T, EngineError> {
        let mut core = self.core();
        let decision = authz::authorize(who, op.authz, &op.on);
        let r = if decision.allowed {
            self.note_use(who, &decision).and_then(|()| run(&mut core))
        } else {
            Err(EngineError::Denied {
                reason: decision.reason,
            })
        };
        let (outcome, operation) = recorded(&r, &mut op);
        core.audit(
            who.actor(),
            &op.action,
            &op.target,
            op.tenant.as_deref(),
            op.parameters,
            outcome,
            operation,
        )?;
        r
    }

    /// "Last used" for access reviews. The host's root operator holds no
    /// reviewable grant: nothing to note (and no access.db created for it).
    fn note_use(&self, who: &Principal, decision: &authz::Decision) -> Result<(), EngineError> {
        match &decision.binding {
            Some(b) if b.source != authz::Source::LocalRoot => {
                let store = authz::Store::open(&self.data_dir)?;
                store.note_use(&who.id, b, now_micros())?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether an operation on `tenant` (all tenants when `None`) and `env`
    /// (all of the tenant's when `None`) touches a production or DR
    /// environment. A tenant or environment the specs do not name (being
    /// removed) counts as production: unknown is treated as the strict case.
    pub fn production(&self, tenant: Option<&str>, env: Option<&str>) -> bool {
        let tenants: Vec<_> = self
            .specs
            .tenants
            .iter()
            .filter(|t| tenant.is_none_or(|n| t.metadata.name == n))
            .collect();
        if tenant.is_some() && tenants.is_empty() {
            return true;
        }
        let mut envs = tenants
            .iter()
            .flat_map(|t| t.spec.environments.iter())
            .filter(|e| env.is_none_or(|n| e.name == n))
            .peekable();
        if env.is_some() && envs.peek().is_none() {
            return true;
        }
        envs.any(|e| e.kind.is_production_like())
    }

    /// Whether an apply may change production: the specs hold a production
    /// or DR environment, or careplane still holds an environment the specs
    /// no longer name (its removal is planned). Unreadable state: strict.
    fn apply_touches_production(&self) -> bool {
        if self.production(None, None) {
            return true;
        }
        self.recorded().map_or(true, |records| {
            records.iter().any(|r| {
                r.id.strip_prefix("pg-database/")
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(t, e)| self.production(Some(t), Some(e)))
            })
        })
    }

    pub(crate) fn platform_op(&self, action: &str, authz: authz::Action) -> Guarded {
        Guarded {
            action: action.into(),
            authz,
            on: authz::Target::platform(self.production(None, None)),
            target: self.platform(),
            tenant: None,
            parameters: Value::Null,
        }
    }

    pub(crate) fn env_op(
        &self,
        action: &str,
        authz: authz::Action,
        tenant: &str,
        env: &str,
        parameters: Value,
    ) -> Guarded {
        Guarded {
            action: action.into(),
            authz,
            on: authz::Target::tenant(tenant, self.production(Some(tenant), Some(env))),
            target: format!("environment {tenant}/{env}"),
            tenant: Some(tenant.into()),
            parameters,
        }
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

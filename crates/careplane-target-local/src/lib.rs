//! careplane's local target: the [`Driver`] that runs the platform on this
//! machine. PostgreSQL clusters and Redis servers as processes started by
//! careplane (as their service user when careplane is root), Odoo
//! environments under `careplane supervise`, files below the platform's
//! data directory. It turns the engine's actions into `careplane-local` and
//! `careplane-odoo` calls, reading what each resource was given (ports,
//! directories, passwords) from its state record.
//!
//! The engine never calls this crate: the CLI builds an [`Engine`] with
//! [`engine`], and the executor reaches the target only through [`Driver`].

mod backup;
mod cluster_restore;
mod customer_key;
mod ingress;
mod odoo;
mod resources;
mod restore;
mod restore_check;
mod runtime;
mod ship;
mod status;
mod transfer;

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use careplane_engine::{
    Action, ApplyOptions, Credentials, Driver, Engine, EngineError, Ensured, Plan, Started, Status,
};
use careplane_model::Kind;
use careplane_spec::SpecSet;
use careplane_state::{ResourceRecord, Store};

use resources::Host;

pub use backup::backup_wal;
pub use careplane_backup::read_identity_file;
pub use customer_key::IDENTITY_ENV;
pub use restore::backup_wal_fetch;

/// What can go wrong on the local target. Converted into
/// [`EngineError`] at the driver boundary, keeping refusals as refusals.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] careplane_state::StateError),
    #[error(transparent)]
    Local(#[from] careplane_local::LocalError),
    #[error(transparent)]
    Odoo(#[from] careplane_odoo::OdooError),
    #[error(transparent)]
    Model(#[from] careplane_model::ModelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{what}")]
    Inconsistent { what: String },
    /// Checks that refuse before anything changes; one line each.
    #[error("nothing was changed:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Refused { problems: Vec<String> },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn inconsistent(what: impl Into<String>) -> Error {
        Error::Inconsistent { what: what.into() }
    }
}

impl From<Error> for EngineError {
    fn from(e: Error) -> EngineError {
        match e {
            Error::Engine(e) => e,
            Error::Inconsistent { what } => EngineError::Inconsistent { what },
            Error::Refused { problems } => EngineError::Refused { problems },
            Error::Io { what, source } => EngineError::Io { what, source },
            Error::State(e) => EngineError::State(e),
            Error::Model(e) => EngineError::Model(e),
            e => EngineError::Target(Box::new(e)),
        }
    }
}

/// A tenant database as careplane makes it: (database, role, connection limit).
type Expected = (String, String, Option<u32>);

/// `<dataDir>/stopped`: `careplane stop` stopped the platform on purpose,
/// so a stopped server is not drift (`careplane start` removes it).
pub(crate) const STOPPED_MARKER: &str = "stopped";

/// The local target's driver for one platform.
pub struct LocalDriver {
    specs: SpecSet,
    data_dir: PathBuf,
    /// Its own connection to the state store (SQLite, WAL): the executor
    /// holds the apply lock and writes the journal on another.
    store: Option<Store>,
    /// Binaries and the service user, found once per run.
    host: Host,
    /// The caller's age identities (a customer's `--identity FILE`): tried
    /// with careplane's own when decrypting; in memory for this run only.
    backup_identities: Vec<careplane_state::SecretString>,
}

/// An engine for `specs` on the local target.
pub fn engine(specs: SpecSet) -> Engine {
    let driver = LocalDriver::new(specs.clone());
    Engine::new(specs, Box::new(driver))
}

/// The body of `careplane supervise <spec>`: keeps an Odoo environment's
/// processes running (see `careplane_odoo::supervise`).
pub fn supervise(spec: &Path) -> Result<(), EngineError> {
    careplane_odoo::supervise_file(spec).map_err(|e| Error::from(e).into())
}

impl LocalDriver {
    pub fn new(specs: SpecSet) -> LocalDriver {
        let data_dir = Engine::data_dir_of(&specs);
        LocalDriver {
            specs,
            data_dir,
            store: None,
            host: Host::default(),
            backup_identities: Vec::new(),
        }
    }

    fn state_exists(&self) -> bool {
        self.data_dir.join("state.db").exists()
    }

    /// Opens (creating on first use) the state store.
    fn store(&mut self) -> Result<&Store, Error> {
        if self.store.is_none() {
            self.store = Some(Store::open(&self.data_dir)?);
        }
        Ok(self.store.as_ref().expect("just opened"))
    }

    pub(crate) fn store_ref(&mut self) -> Result<&Store, Error> {
        self.store()
    }

    /// What careplane holds now; empty, and nothing created, when the
    /// platform was never applied.
    fn recorded(&mut self) -> Result<Vec<ResourceRecord>, Error> {
        if self.store.is_none() && !self.state_exists() {
            return Ok(Vec::new());
        }
        Ok(self.store()?.resources()?)
    }

    /// Adds, for each ready database whose role or database differs from
    /// what careplane made it, why (see `PgCluster::tenant_drift`). A
    /// database that is gone takes its Odoo environment with it: that is
    /// drift too, so apply makes both again (an empty Odoo from its
    /// template; the data is what a restore brings back).
    fn observe_roles(&mut self, recorded: &[ResourceRecord], drift: &mut BTreeMap<String, String>) {
        use careplane_state::ResourceStatus::Ready;
        for crec in recorded
            .iter()
            .filter(|r| r.kind == Kind::PgCluster.as_str() && r.status == Ready)
        {
            let dbs: Vec<(&ResourceRecord, Expected)> = recorded
                .iter()
                .filter(|r| r.kind == Kind::PgDatabase.as_str() && r.status == Ready)
                .filter(|r| r.props.get("cluster").and_then(|v| v.as_str()) == Some(&crec.id))
                // While its Odoo environment is being made (a clone cut
                // short leaves the database pristine: admin-owned, closed),
                // the database is that apply's to finish, not drift.
                .filter(|r| {
                    let env = r.id.replacen("pg-database/", "odoo-env/", 1);
                    !recorded.iter().any(|e| e.id == env && e.status != Ready)
                })
                .filter_map(|r| {
                    let p: careplane_model::PgDatabaseProps =
                        runtime::typed(&r.id, &r.props).ok()?;
                    let role = runtime::db_role(r).ok()?.to_string();
                    Some((r, (p.database, role, p.connection_limit)))
                })
                .collect();
            if dbs.is_empty() {
                continue;
            }
            let Ok(cluster) = self.with_host(|d, host| d.cluster_handle(crec, host)) else {
                continue;
            };
            if cluster.running_pid().is_none() {
                continue;
            }
            let expected: Vec<Expected> = dbs.iter().map(|(_, t)| t.clone()).collect();
            let Ok(found) = cluster.tenant_drift(&expected) else {
                continue;
            };
            for (rec, (database, _, _)) in &dbs {
                let Some(why) = found.get(database) else {
                    continue;
                };
                drift.insert(rec.id.clone(), why.clone());
                if why.contains("database is missing") || why.contains("database is invalid") {
                    let env = rec.id.replacen("pg-database/", "odoo-env/", 1);
                    if recorded.iter().any(|r| r.id == env) {
                        drift.insert(env, format!("its {why}"));
                    }
                }
            }
        }
    }

    fn with_host<T>(
        &mut self,
        f: impl FnOnce(&mut LocalDriver, &mut Host) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut host = std::mem::take(&mut self.host);
        let result = f(self, &mut host);
        self.host = host;
        result
    }
}

impl Driver for LocalDriver {
    fn preflight(&mut self, plan: &Plan, opts: &ApplyOptions) -> Result<Vec<String>, EngineError> {
        Ok(self.check_plan(plan, opts)?)
    }

    /// A PostgreSQL or Redis server, or an Odoo environment's supervisor,
    /// that is not running (a pid file and a `kill(0)` each); an Odoo
    /// environment whose odoo.conf is not what careplane wrote (a hash of
    /// two files); a tenant role with attributes careplane does not give
    /// (one catalog query per running cluster). Nothing while the platform
    /// is stopped on purpose (`careplane stop`, until `start`). What cannot
    /// be observed (a cluster that does not answer) is left to the
    /// resource's own drift ("not running") and to apply.
    fn observe(&mut self, recorded: &[ResourceRecord]) -> BTreeMap<String, String> {
        let mut drift = BTreeMap::new();
        if self.data_dir.join(STOPPED_MARKER).exists() {
            return drift;
        }
        self.observe_roles(recorded, &mut drift);
        for r in recorded {
            if r.status != careplane_state::ResourceStatus::Ready {
                continue;
            }
            let Some(root) = r.observed.get("root").and_then(serde_json::Value::as_str) else {
                continue;
            };
            let root = Path::new(root);
            let down = match Kind::parse(&r.kind) {
                Some(Kind::PgCluster) if careplane_local::pg::running_pid_at(root).is_none() => {
                    Some("PostgreSQL is not running")
                }
                // Clusters made before WAL archiving (docs/design/0010):
                // the update turns it on and restarts them once.
                Some(Kind::PgCluster) => r
                    .observed
                    .get("archive")
                    .is_none()
                    .then_some("it does not archive its WAL (no point-in-time recovery)"),
                Some(Kind::RedisServer) => careplane_local::redis::running_pid_at(root)
                    .is_none()
                    .then_some("Redis is not running"),
                Some(Kind::OdooEnv) if careplane_odoo::supervisor_pid(root).is_none() => {
                    Some("its supervisor is not running (Odoo is not kept up)")
                }
                Some(Kind::OdooEnv) => {
                    let written = r.observed.get("configDigest").and_then(|v| v.as_str());
                    let now = careplane_odoo::config_digest(root);
                    (written.is_some() && now.as_deref() != written).then_some(
                        "odoo.conf is not what careplane wrote (changed behind its back)",
                    )
                }
                Some(Kind::Ingress) => {
                    if let Some(d) = ingress::drift(r) {
                        drift.insert(r.id.clone(), d);
                    }
                    None
                }
                _ => None,
            };
            if let Some(d) = down {
                drift.insert(r.id.clone(), d.to_string());
            }
        }
        drift
    }

    /// Modules installed with `careplane modules install` that the spec of
    /// their environment does not list: apply never uninstalls a module
    /// (that drops its data), so the plan only says so.
    fn notes(&mut self, recorded: &[ResourceRecord]) -> Vec<String> {
        recorded
            .iter()
            .filter(|r| r.kind == Kind::OdooEnv.as_str())
            .filter_map(|r| {
                let wanted = odoo::strings(&r.props["modules"]);
                let extra: Vec<String> = odoo::strings(&r.observed["modulesInstalled"])
                    .into_iter()
                    .filter(|m| !wanted.contains(m))
                    .collect();
                (!extra.is_empty()).then(|| {
                    format!(
                        "{}: modules installed with `careplane modules` but not in the spec: {} \
                         (add them to the spec to keep them; apply does not uninstall)",
                        r.id,
                        extra.join(", ")
                    )
                })
            })
            .collect()
    }

    fn ensure(&mut self, action: &Action) -> Result<Ensured, EngineError> {
        if action.kind == Kind::OdooEnv {
            let starting = self.with_host(|d, host| d.ensure_odoo_env(action, host))?;
            let ready = starting.ready.clone();
            return Ok(Ensured::Started(Started {
                wait: Box::new(move || ready.wait().map_err(EngineError::from)),
                token: Box::new(starting),
            }));
        }
        self.with_host(|d, host| d.execute(action, host))?;
        Ok(Ensured::Ready)
    }

    fn finish_started(
        &mut self,
        action: &Action,
        token: Box<dyn Any + Send>,
    ) -> Result<(), EngineError> {
        let starting = token.downcast::<odoo::Starting>().map_err(|_| {
            Error::inconsistent(format!("{}: not started by this driver", action.id))
        })?;
        Ok(self.finish_odoo_env(action, *starting)?)
    }

    fn delete(&mut self, action: &Action) -> Result<(), EngineError> {
        Ok(self.with_host(|d, host| d.execute(action, host))?)
    }

    /// Odoo environments load their registry for seconds, CPU-bound: one
    /// per core (at least 2) at once; nothing else is waited for.
    fn window(&self, kind: Kind) -> usize {
        match kind {
            Kind::OdooEnv => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
            _ => 0,
        }
    }

    fn lifecycle(
        &mut self,
        start: bool,
        progress: &mut dyn FnMut(careplane_engine::Event<'_>),
    ) -> Result<i64, EngineError> {
        let command = if start { "start" } else { "stop" };
        Ok(self.run_lifecycle(command, progress, start)?)
    }

    fn status(&mut self) -> Result<Status, EngineError> {
        Ok(self.collect_status()?)
    }

    fn credentials(&mut self, tenant: &str, env: &str) -> Result<Credentials, EngineError> {
        Ok(self.find_credentials(tenant, env)?)
    }

    fn redis_monitors(&mut self) -> Result<Vec<careplane_engine::RedisMonitor>, EngineError> {
        Ok(self.find_redis_monitors()?)
    }

    fn service_certificate(
        &mut self,
        name: &str,
        hosts: &[String],
    ) -> Result<(String, careplane_state::SecretString), EngineError> {
        let ca = self.ca()?;
        careplane_local::pki::issue_server_cert(&ca, name, hosts).map_err(|e| Error::from(e).into())
    }

    fn modules(
        &mut self,
        tenant: &str,
        env: &str,
        install: bool,
        modules: &[String],
    ) -> Result<(), EngineError> {
        Ok(self.modules_command(tenant, env, install, modules)?)
    }

    fn export(
        &mut self,
        tenant: &str,
        env: &str,
        out: &Path,
    ) -> Result<careplane_engine::ExportReport, EngineError> {
        Ok(self.export_env(tenant, env, out)?)
    }

    fn import(
        &mut self,
        tenant: &str,
        env: &str,
        file: &Path,
    ) -> Result<careplane_engine::ImportReport, EngineError> {
        Ok(self.import_env(tenant, env, file)?)
    }

    fn set_backup_identities(&mut self, identities: Vec<careplane_state::SecretString>) {
        self.backup_identities = identities;
    }

    fn backup_create(
        &mut self,
        tenant: &str,
        env: &str,
        reason: &str,
        progress: &(dyn Fn(careplane_engine::BackupEvent) + Sync),
    ) -> Result<careplane_engine::BackupSummary, EngineError> {
        Ok(self.create_backup(tenant, env, reason, progress)?)
    }

    fn backup_list(
        &mut self,
        scope: Option<(&str, &str)>,
    ) -> Result<Vec<careplane_engine::BackupSummary>, EngineError> {
        Ok(self.list_backups(scope)?)
    }

    fn backup_show(&mut self, id: &str) -> Result<careplane_engine::BackupDetail, EngineError> {
        Ok(self.show_backup(id)?)
    }

    fn backup_verify(
        &mut self,
        id: &str,
        deep: bool,
        progress: &(dyn Fn(careplane_engine::BackupEvent) + Sync),
    ) -> Result<careplane_engine::VerifyOutcome, EngineError> {
        Ok(self.verify_backup(id, deep, progress)?)
    }

    fn backup_verify_restore(
        &mut self,
        tenant: &str,
        env: &str,
        backup: Option<&str>,
        progress: &(dyn Fn(careplane_engine::BackupEvent) + Sync),
    ) -> Result<careplane_engine::RestoreCheck, EngineError> {
        Ok(self.verify_restore(tenant, env, backup, progress)?)
    }

    fn backup_restore(
        &mut self,
        req: &careplane_engine::RestoreRequest,
        progress: &(dyn Fn(careplane_engine::BackupEvent) + Sync),
    ) -> Result<careplane_engine::RestoreOutcome, EngineError> {
        Ok(self.restore(req, progress)?)
    }

    fn backup_restore_cluster(
        &mut self,
        req: &careplane_engine::ClusterRestoreRequest,
        progress: &(dyn Fn(careplane_engine::BackupEvent) + Sync),
    ) -> Result<careplane_engine::ClusterRestoreOutcome, EngineError> {
        Ok(self.restore_cluster(req, progress)?)
    }

    fn backup_prune(
        &mut self,
        progress: &(dyn Fn(careplane_engine::BackupEvent) + Sync),
    ) -> Result<careplane_engine::PruneOutcome, EngineError> {
        Ok(self.prune_backups(progress)?)
    }

    fn backup_run_due(
        &mut self,
        progress: &(dyn Fn(careplane_engine::BackupEvent) + Sync),
    ) -> Result<careplane_engine::RunDueOutcome, EngineError> {
        Ok(self.run_due(progress)?)
    }

    fn backup_ship_filestore(
        &mut self,
        scope: Option<(&str, &str)>,
        progress: &(dyn Fn(careplane_engine::BackupEvent) + Sync),
    ) -> Result<careplane_engine::ShipOutcome, EngineError> {
        Ok(self.ship_filestores(scope, false, progress)?)
    }
}

#[cfg(test)]
mod tests {
    /// `validate` refuses exactly the settings the runtime refuses.
    #[test]
    fn protected_postgres_settings_agree() {
        assert_eq!(
            careplane_spec::PROTECTED_PG_SETTINGS,
            careplane_local::pg::PROTECTED_SETTINGS
        );
    }
}

//! The boundary between the executor and a target.
//!
//! A [`Driver`] is the only code that touches a target (processes, files,
//! servers, a Kubernetes API). The executor ([`crate::Engine::apply`]) owns
//! the lock, the journal, the order of actions and the concurrency of
//! readiness waits, and never looks at a resource's kind to decide what to
//! do: it asks the driver. Adding a kind means a struct in
//! `careplane-model` and arms in each driver, not a change here (see
//! docs/design/0004).

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use careplane_model::Kind;
use careplane_state::ResourceRecord;

use crate::backup::{
    unsupported, BackupDetail, BackupEvent, BackupSummary, ClusterRestoreOutcome,
    ClusterRestoreRequest, PruneOutcome, RestoreOutcome, RestoreRequest, RunDueOutcome,
    VerifyOutcome,
};
use crate::error::EngineError;
use crate::plan::{Action, Plan};
use crate::report::{ApplyOptions, Credentials, Event, ExportReport, ImportReport, Status};

/// What [`Driver::ensure`] left behind.
pub enum Ensured {
    /// Done: the executor records the step finished.
    Ready,
    /// Started, not yet answering (an Odoo loading its registry). The
    /// executor runs `wait` on a thread of its own, keeps the step open
    /// meanwhile, and hands `token` back to [`Driver::finish_started`] on
    /// its own thread when `wait` returned.
    Started(Started),
}

/// See [`Ensured::Started`].
pub struct Started {
    pub wait: Box<dyn FnOnce() -> Result<(), EngineError> + Send>,
    pub token: Box<dyn Any + Send>,
}

/// A target: how each kind of resource is made, removed, started, stopped,
/// observed and checked there. Methods take `&mut self` (the engine calls
/// one at a time, under its lock): a driver caches
/// what it found on the host (binaries, the service user) for one run.
pub trait Driver: Send {
    /// Problems that refuse `plan` before anything runs: missing binaries,
    /// a database that still holds data without `--delete-data`, …
    fn preflight(&mut self, plan: &Plan, opts: &ApplyOptions) -> Result<Vec<String>, EngineError>;

    /// What differs, by resource id, between the records and what runs:
    /// cheap enough for every plan (a pid file, a `stat`), never a
    /// connection per tenant.
    fn observe(&mut self, recorded: &[ResourceRecord]) -> BTreeMap<String, String>;

    /// What differs from the specs but is not for apply to change (it
    /// would lose data or work someone did on purpose), shown with the
    /// plan: e.g. Odoo modules installed with `careplane modules` that the
    /// spec does not list. Cheap, like [`Driver::observe`].
    fn notes(&mut self, recorded: &[ResourceRecord]) -> Vec<String> {
        let _ = recorded;
        Vec::new()
    }

    /// Creates or updates `action`'s resource, recording its intent first.
    fn ensure(&mut self, action: &Action) -> Result<Ensured, EngineError>;

    /// Finishes what [`Ensured::Started`] began, once its wait returned.
    fn finish_started(
        &mut self,
        action: &Action,
        token: Box<dyn Any + Send>,
    ) -> Result<(), EngineError>;

    /// Removes `action`'s resource (its record included).
    fn delete(&mut self, action: &Action) -> Result<(), EngineError>;

    /// How many [`Ensured::Started`] resources of `kind` may be waited for
    /// at once (0: ensure never returns `Started` for it).
    fn window(&self, kind: Kind) -> usize;

    /// Starts (`start`) or stops everything recorded, journaled as one
    /// operation whose id it returns, reporting each resource on `progress`
    /// ([`Event::Reached`]).
    fn lifecycle(
        &mut self,
        start: bool,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<i64, EngineError>;

    fn status(&mut self) -> Result<Status, EngineError>;

    /// How to reach `tenant`/`env`, with its passwords.
    fn credentials(&mut self, tenant: &str, env: &str) -> Result<Credentials, EngineError>;

    /// How careplane reads each running Redis server's memory (see
    /// [`crate::RedisMonitor`]); none on targets where careplane runs no Redis itself.
    fn redis_monitors(&mut self) -> Result<Vec<crate::RedisMonitor>, EngineError> {
        Ok(Vec::new())
    }

    /// A server certificate for one of careplane's own services (`careplane serve`'s API)
    /// from the platform CA, for `hosts` (DNS names or IP addresses) besides loopback:
    /// the PEM chain and its private key, which the caller keeps in memory only.
    fn service_certificate(
        &mut self,
        name: &str,
        hosts: &[String],
    ) -> Result<(String, careplane_state::SecretString), EngineError> {
        let _ = (name, hosts);
        Err(EngineError::Unsupported {
            what: "service certificates on this target".into(),
        })
    }

    /// `careplane export`: an environment's database and filestore as one
    /// archive that Odoo's own database manager restores, written to `out`
    /// (nothing there unless it completed).
    fn export(&mut self, tenant: &str, env: &str, out: &Path) -> Result<ExportReport, EngineError> {
        let _ = (tenant, env, out);
        Err(EngineError::Unsupported {
            what: "export on this target".into(),
        })
    }

    /// `careplane import`: replaces an environment's database and filestore
    /// with an Odoo zip or a `pg_dump` custom file, after exporting what was
    /// there; a failure leaves the environment as it was.
    fn import(
        &mut self,
        tenant: &str,
        env: &str,
        file: &Path,
    ) -> Result<ImportReport, EngineError> {
        let _ = (tenant, env, file);
        Err(EngineError::Unsupported {
            what: "import on this target".into(),
        })
    }

    /// `careplane modules install|upgrade` for one environment.
    fn modules(
        &mut self,
        tenant: &str,
        env: &str,
        install: bool,
        modules: &[String],
    ) -> Result<(), EngineError>;

    /// The caller's own private keys (age identities, e.g. the customer's
    /// from `--identity FILE`) that later backup operations may decrypt
    /// with besides careplane's (see [`crate::Engine::set_backup_identities`]).
    fn set_backup_identities(&mut self, identities: Vec<careplane_state::SecretString>) {
        let _ = identities;
    }

    /// A backup of `tenant`/`env` (see [`crate::Engine::backup_create`]);
    /// `reason` is recorded with it (`manual`, `final`).
    fn backup_create(
        &mut self,
        tenant: &str,
        env: &str,
        reason: &str,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<BackupSummary, EngineError> {
        let _ = (reason, progress);
        unsupported(&format!("backup of {tenant}/{env}"))
    }

    fn backup_list(
        &mut self,
        scope: Option<(&str, &str)>,
    ) -> Result<Vec<BackupSummary>, EngineError> {
        let _ = scope;
        unsupported("backup list")
    }

    fn backup_show(&mut self, id: &str) -> Result<BackupDetail, EngineError> {
        unsupported(&format!("backup {id}"))
    }

    fn backup_verify(
        &mut self,
        id: &str,
        deep: bool,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<VerifyOutcome, EngineError> {
        let _ = (deep, progress);
        unsupported(&format!("backup {id}"))
    }

    /// `backup restore` (see [`crate::Engine::backup_restore`]).
    fn backup_verify_restore(
        &mut self,
        tenant: &str,
        env: &str,
        backup: Option<&str>,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<crate::RestoreCheck, EngineError> {
        let _ = (backup, progress);
        unsupported(&format!("restore verification of {tenant}/{env}"))
    }

    fn backup_restore(
        &mut self,
        req: &RestoreRequest,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RestoreOutcome, EngineError> {
        let _ = progress;
        unsupported(&format!("restore of {}/{}", req.tenant, req.environment))
    }

    /// `backup restore-cluster` (see
    /// [`crate::Engine::backup_restore_cluster`]).
    fn backup_restore_cluster(
        &mut self,
        req: &ClusterRestoreRequest,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<ClusterRestoreOutcome, EngineError> {
        let _ = progress;
        unsupported(&format!("restore of cluster {}", req.scope))
    }

    fn backup_prune(
        &mut self,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<PruneOutcome, EngineError> {
        let _ = progress;
        unsupported("backup prune")
    }

    fn backup_run_due(
        &mut self,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RunDueOutcome, EngineError> {
        let _ = progress;
        unsupported("backup run-due")
    }

    /// `backup ship-filestore` (see [`crate::Engine::backup_ship_filestore`]).
    fn backup_ship_filestore(
        &mut self,
        scope: Option<(&str, &str)>,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<crate::ShipOutcome, EngineError> {
        let _ = (scope, progress);
        unsupported("backup ship-filestore")
    }
}

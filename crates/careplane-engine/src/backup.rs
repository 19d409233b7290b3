//! Backups as engine operations (issue 16, docs/design/0010): what a driver
//! reports for `careplane backup create|list|show|verify|prune|run-due`, and
//! the [`Engine`] calls that run them under its lock and append one audit
//! entry each, also when they fail. The work itself is the driver's (the
//! local target's is `careplane-target-local`'s `backup.rs`, on
//! `careplane-backup`); nothing here reads a repository.

use std::collections::BTreeMap;

use serde::Serialize;

use careplane_identity::Action;

use crate::audit;
use crate::error::EngineError;
use crate::{plain, Engine, Guarded, Principal};

/// One environment backup: its database as of a base backup of its cluster
/// (plus the WAL archived since), its filestore, and what was read from it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSummary {
    pub id: String,
    pub tenant: String,
    pub environment: String,
    /// The tenant's repository (a URL; never a credential).
    pub repository: String,
    /// RFC 3339.
    pub started: String,
    pub finished: String,
    /// `pg-cluster/<scope>`.
    pub cluster: String,
    /// The cluster's base backup this environment backup is restored from,
    /// in the cluster's repository.
    pub cluster_backup: Option<String>,
    pub cluster_repository: Option<String>,
    /// What made it: `manual`, `schedule` or `final` (before a destroy).
    pub reason: String,
    pub files: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    /// Bytes this backup uploaded that no earlier one had (deduplication).
    pub new_stored_bytes: u64,
}

/// A row count and checksum of one table, read as the tenant.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupTable {
    pub table: String,
    pub rows: u64,
    pub checksum: String,
}

/// `backup show`: the summary and the backup's sealed facts.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupDetail {
    #[serde(flatten)]
    pub summary: BackupSummary,
    pub postgres_version: Option<String>,
    pub odoo_version: Option<String>,
    pub modules: Vec<String>,
    pub tables: Vec<BackupTable>,
    pub filestore_files: u64,
    pub filestore_bytes: u64,
    /// Objects (chunks and index) the manifest lists.
    pub objects: u64,
    pub labels: BTreeMap<String, String>,
    /// Its restore verifications, oldest first.
    #[serde(default)]
    pub restore_checks: Vec<crate::RestoreCheck>,
}

/// `backup verify`: every object of the environment backup and of its
/// cluster base backup checked (`deep`: decrypted and decompressed too).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOutcome {
    pub id: String,
    pub tenant: String,
    pub environment: String,
    pub deep: bool,
    pub objects: u64,
    pub stored_bytes: u64,
    pub files: u64,
    pub cluster_backup: Option<String>,
    pub cluster_objects: u64,
    /// Filestore shipments made since this backup (what a restore to a
    /// later time takes files from), each checked the same way.
    pub shipments: u64,
    pub shipment_objects: u64,
}

/// What `backup prune` did in one repository.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrunedRepository {
    pub repository: String,
    pub kept: Vec<String>,
    pub deleted: Vec<String>,
    pub wal_deleted: u64,
    pub gc_deleted_objects: u64,
    pub gc_deleted_bytes: u64,
    /// Backups retention would delete that S3 Object Lock still keeps
    /// (also in `kept`), each as "<id>: kept by object lock until <date>";
    /// a prune after the date deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locked: Vec<String>,
    /// Unreferenced objects Object Lock still keeps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gc_locked_objects: u64,
    /// Filestore shipments no restore inside the PITR window needs any
    /// more, deleted (their chunks go with the garbage collection).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shipments_deleted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PruneOutcome {
    pub repositories: Vec<PrunedRepository>,
}

/// `backup run-due`: what was due and what became of it. A failure of one
/// environment does not stop the others; it is listed and makes the
/// operation fail at the end.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunDueOutcome {
    pub created: Vec<BackupSummary>,
    pub verified: Vec<VerifyOutcome>,
    /// Restore verifications: one after every scheduled backup (its facts
    /// become the verified ones) and one when `verify` is due.
    pub restore_checks: Vec<crate::RestoreCheck>,
    pub pruned: PruneOutcome,
    /// Filestore shipments that shipped or skipped something.
    #[serde(default)]
    pub shipped: Vec<FilestoreShipment>,
    pub failures: Vec<String>,
}

/// One environment's filestore shipment (docs/design/0010, "Filestore
/// shipping"): the files of its live filestore that its newest backup and
/// the shipments since do not have, sealed into its tenant's repository.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FilestoreShipment {
    pub tenant: String,
    pub environment: String,
    /// The shipment written; `None` when there was nothing new.
    pub id: Option<String>,
    /// The environment backup it adds to.
    pub since: Option<String>,
    pub files: u64,
    pub bytes: u64,
    /// Entries that are not regular files (a symlink planted by the
    /// tenant, a FIFO, ...), relative to the filestore: never followed or
    /// read, not shipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Files named like Odoo's (`<2 hex>/<SHA-1>`) whose content does not
    /// match their name (still being written, or not Odoo's): not shipped
    /// this time, looked at again by the next shipment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
    /// Why nothing was looked at (no environment backup yet: the first one
    /// takes the whole filestore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `backup ship-filestore [<tenant>/<env>]`: each environment's shipment;
/// one environment's failure is listed and does not stop the others.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShipOutcome {
    pub shipments: Vec<FilestoreShipment>,
    pub failures: Vec<String>,
}

/// Where `backup restore` takes an environment back to.
#[derive(Debug, Clone, PartialEq)]
pub enum RestorePoint {
    /// An instant (RFC 3339): the last commit at or before it.
    Time(String),
    /// The end of environment backup `id`'s base backup.
    Backup(String),
}

/// `backup restore <tenant>/<env> --to-time T | --backup ID [--as <tenant>/<env>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRequest {
    pub tenant: String,
    pub environment: String,
    pub point: RestorePoint,
    /// Another environment (of the same tenant, on the same cluster) to
    /// restore into instead of in place.
    pub into: Option<(String, String)>,
    /// Keep the replaced database (`<db>_pre_restore_<stamp>`, closed)
    /// instead of dropping it once the restored environment answers.
    pub keep_pre_restore: bool,
}

/// What `backup restore` did: the evidence of one restore (RTO: how long it
/// took, against the service tier's target; RPO: the point recovered).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreOutcome {
    /// The environment whose backups were restored from.
    pub tenant: String,
    pub environment: String,
    /// The environment that was replaced (the same unless `--as`).
    pub into_tenant: String,
    pub into_environment: String,
    pub database: String,
    /// The environment backup whose filestore was restored.
    pub backup: String,
    /// The cluster's base backup recovery started from.
    pub cluster_backup: String,
    /// What was asked: an RFC 3339 time, or `end of backup <id>`.
    pub target: String,
    /// Commit time of the last transaction replayed (RFC 3339): the point
    /// the database is at.
    pub recovered_to: Option<String>,
    /// When the restore began and ended (RFC 3339).
    pub started: String,
    pub finished: String,
    /// Measured, from the start of the command to the environment answering
    /// again (RTO evidence).
    pub duration_ms: u64,
    /// Of which: WAL archiving caught up, scratch recovery, copy, swap and
    /// filestore with the restart.
    pub archive_wait_ms: u64,
    pub recovery_ms: u64,
    pub copy_ms: u64,
    pub switch_ms: u64,
    /// Bytes of the cluster's files restored for the scratch recovery, and
    /// other databases' bytes skipped (sparse placeholders).
    pub bytes_restored: u64,
    pub bytes_skipped: u64,
    pub dump_bytes: u64,
    pub filestore_files: u64,
    /// Files referenced by `ir_attachment` at the recovered point that
    /// neither the backup nor the live filestore has.
    pub filestore_missing: Vec<String>,
    /// Of the files staged, those taken from filestore shipments (neither
    /// the backup nor the live filestore had them).
    #[serde(default)]
    pub filestore_from_shipments: u64,
    /// The replaced database when kept (`--keep-pre-restore`).
    pub pre_restore_database: Option<String>,
    /// The service tier's restore-time target and whether it was met.
    pub rto: Option<String>,
    pub rto_met: Option<bool>,
    /// The service tier's recovery-point target (the recovered point itself
    /// is `recovered_to`).
    pub rpo: Option<String>,
    /// `--as` into another environment: the copy got its own
    /// `database.uuid`/`database.secret`.
    pub new_identity: bool,
}

/// `backup restore-cluster <scope> [--to-time T | --backup ID] --confirm
/// <scope> [--force]`: a whole PostgreSQL cluster brought back from its
/// base backup and archived WAL (disaster recovery, docs/design/0010,
/// "Restoring a lost cluster").
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRestoreRequest {
    /// The cluster's scope (`shared`, or a dedicated tenant's).
    pub scope: String,
    /// Where to: `None` for the end of the archived WAL; a time; or the end
    /// of a base backup of the cluster (its id in the cluster repository).
    pub point: Option<RestorePoint>,
    /// Must equal `scope`.
    pub confirm: String,
    /// Restore even though the cluster runs and answers.
    pub force: bool,
}

/// What `backup restore-cluster` did: the evidence of one disaster
/// recovery (RTO: its measured duration; RPO: the recovered point).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRestoreOutcome {
    /// `pg-cluster/<scope>`.
    pub cluster: String,
    /// The base backup recovery started from.
    pub cluster_backup: String,
    /// `end of archived WAL`, an RFC 3339 time, or `end of backup <id>`.
    pub target: String,
    /// Commit time of the last transaction replayed (RFC 3339): the point
    /// the cluster is at.
    pub recovered_to: Option<String>,
    /// The last WAL location replayed, and the timeline the cluster runs on
    /// now (a new one: recovery ends by promotion).
    pub replayed_lsn: Option<String>,
    pub timeline: Option<u32>,
    /// Where the replaced data directory was moved (kept, never deleted);
    /// `None` when there was none.
    pub lost_data_dir: Option<String>,
    pub started: String,
    pub finished: String,
    /// From the command's start to the environments answering again.
    pub duration_ms: u64,
    /// Of which: restoring the base backup's files, and WAL replay up to
    /// promotion.
    pub files_ms: u64,
    pub recovery_ms: u64,
    pub bytes_restored: u64,
    /// The environments on the cluster, brought back (`<tenant>/<env>`).
    pub environments: Vec<String>,
}

/// Progress of long backup work, for the CLI to show.
#[derive(Debug, Clone)]
pub enum BackupEvent {
    /// A phase started ("base backup of pg-cluster/shared", …).
    Phase(String),
    /// Bytes read so far in the current phase.
    Bytes(u64),
}

/// The backup half of [`crate::Driver`]: a target that cannot back up
/// keeps the defaults, which refuse.
pub(crate) fn unsupported<T>(what: &str) -> Result<T, EngineError> {
    Err(EngineError::Unsupported {
        what: format!("{what}: this target does not take backups"),
    })
}

impl Engine {
    /// `careplane backup create <tenant>/<env>`: a base backup of the
    /// environment's cluster (incremental from the cluster's last one) and
    /// the environment's filestore, into its tenant's repository.
    pub fn backup_create(
        &self,
        who: &Principal,
        tenant: &str,
        env: &str,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<BackupSummary, EngineError> {
        let op = self.env_op(
            "backup.create",
            Action::BackupCreate,
            tenant,
            env,
            serde_json::json!({"tenant": tenant, "environment": env}),
        );
        self.guarded(
            who,
            op,
            |core| core.driver.backup_create(tenant, env, "manual", progress),
            |r, _| {
                let mut out = audit::outcome(r);
                if let (Ok(b), None) = (r, &out.message) {
                    out.message = Some(format!("backup {}", b.id));
                }
                (out, None)
            },
        )
    }

    /// Environment backups, newest last (of one environment, or all).
    pub fn backup_list(
        &self,
        who: &Principal,
        scope: Option<(&str, &str)>,
    ) -> Result<Vec<BackupSummary>, EngineError> {
        let parameters = serde_json::json!({"scope": scope.map(|(t, e)| format!("{t}/{e}"))});
        let op = match scope {
            Some((t, e)) => self.env_op("backup.list", Action::Read, t, e, parameters),
            None => Guarded {
                parameters,
                ..self.platform_op("backup.list", Action::Read)
            },
        };
        self.guarded(who, op, |core| core.driver.backup_list(scope), plain)
    }

    /// One backup by id (read: its tenant is known only from the backup, so
    /// the check is platform-wide).
    pub fn backup_show(&self, who: &Principal, id: &str) -> Result<BackupDetail, EngineError> {
        let op = Guarded {
            target: format!("backup {id}"),
            parameters: serde_json::json!({"id": id}),
            ..self.platform_op("backup.show", Action::Read)
        };
        self.guarded(
            who,
            op,
            |core| core.driver.backup_show(id),
            |r, op| {
                // The entry names the backup's tenant, once it is known.
                op.tenant = r.as_ref().ok().map(|d| d.summary.tenant.clone());
                plain(r, op)
            },
        )
    }

    pub fn backup_verify(
        &self,
        who: &Principal,
        id: &str,
        deep: bool,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<VerifyOutcome, EngineError> {
        let op = Guarded {
            target: format!("backup {id}"),
            parameters: serde_json::json!({"id": id, "deep": deep}),
            ..self.platform_op("backup.verify", Action::Read)
        };
        self.guarded(
            who,
            op,
            |core| core.driver.backup_verify(id, deep, progress),
            |r, op| {
                op.tenant = r.as_ref().ok().map(|d| d.tenant.clone());
                plain(r, op)
            },
        )
    }

    /// `backup verify --restore <tenant>/<env> [--backup ID]`: the backup
    /// (the environment's newest by default) deep-verified, recovered into a
    /// scratch server and compared table by table with its verified facts.
    /// One audit entry `backup.verify-restore`.
    pub fn backup_verify_restore(
        &self,
        who: &Principal,
        tenant: &str,
        env: &str,
        backup: Option<&str>,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<crate::RestoreCheck, EngineError> {
        // It recovers the tenant's data into a scratch server: an operator's
        // work (as backup.create), not a viewer's.
        let op = self.env_op(
            "backup.verify-restore",
            Action::BackupCreate,
            tenant,
            env,
            serde_json::json!({"tenant": tenant, "environment": env, "backup": backup}),
        );
        self.guarded(
            who,
            op,
            |core| {
                core.driver
                    .backup_verify_restore(tenant, env, backup, progress)
            },
            plain,
        )
    }

    /// Deletes the backups no retention rule keeps, the WAL no kept base
    /// backup needs, and unreferenced objects (authorized as
    /// `backup.create`: the policy's own maintenance, platform-wide).
    pub fn backup_prune(
        &self,
        who: &Principal,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<PruneOutcome, EngineError> {
        let op = self.platform_op("backup.prune", Action::BackupCreate);
        self.guarded(who, op, |core| core.driver.backup_prune(progress), plain)
    }

    /// `careplane backup restore`: one environment's database back to a
    /// point in time (per-tenant PITR on a shared cluster, docs/design/0011)
    /// and its filestore to the files referenced then, in place or into
    /// another environment. Authorized as `backup.restore` on the tenant of
    /// the environment it replaces; one audit entry `backup.restore`, also
    /// when it is refused or fails.
    pub fn backup_restore(
        &self,
        who: &Principal,
        req: &RestoreRequest,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RestoreOutcome, EngineError> {
        let (point, kind) = match &req.point {
            RestorePoint::Time(t) => (t.clone(), "time"),
            RestorePoint::Backup(b) => (b.clone(), "backup"),
        };
        let params = serde_json::json!({
            "tenant": req.tenant,
            "environment": req.environment,
            kind: point,
            "as": req.into.as_ref().map(|(t, e)| format!("{t}/{e}")),
            "keepPreRestore": req.keep_pre_restore,
        });
        let (tt, te) = req
            .into
            .as_ref()
            .map(|(t, e)| (t.as_str(), e.as_str()))
            .unwrap_or((&req.tenant, &req.environment));
        let op = self.env_op("backup.restore", Action::BackupRestore, tt, te, params);
        self.guarded(
            who,
            op,
            |core| core.driver.backup_restore(req, progress),
            |r, _| {
                let mut out = audit::outcome(r);
                if let (Ok(o), None) = (r, &out.message) {
                    out.message = Some(format!(
                        "restored to {} from backup {} in {} ms",
                        o.recovered_to
                            .as_deref()
                            .unwrap_or("the end of the base backup"),
                        o.backup,
                        o.duration_ms
                    ));
                }
                (out, None)
            },
        )
    }

    /// `careplane backup restore-cluster`: a lost cluster (its data
    /// directory gone or corrupt) recovered from its newest base backup
    /// before the target and its archived WAL, every environment on it
    /// stopped and brought back. The strongest restore there is: it
    /// replaces every tenant's data on the cluster, so it is authorized as
    /// `backup.restore` on the whole platform with production included,
    /// and refused unless `confirm` names the cluster. One audit entry
    /// `backup.restore-cluster`, also when refused or failed.
    pub fn backup_restore_cluster(
        &self,
        who: &Principal,
        req: &ClusterRestoreRequest,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<ClusterRestoreOutcome, EngineError> {
        let mut params = serde_json::json!({
            "scope": req.scope, "confirm": req.confirm, "force": req.force,
        });
        match &req.point {
            Some(RestorePoint::Time(t)) => params["time"] = t.as_str().into(),
            Some(RestorePoint::Backup(b)) => params["backup"] = b.as_str().into(),
            None => {}
        }
        let op = Guarded {
            action: "backup.restore-cluster".into(),
            authz: Action::BackupRestore,
            on: careplane_identity::Target::platform(true),
            target: format!("cluster {}", req.scope),
            tenant: None,
            parameters: params,
        };
        self.guarded(
            who,
            op,
            |core| {
                if req.confirm != req.scope {
                    return Err(EngineError::Refused {
                        problems: vec![format!(
                            "restoring cluster {} replaces every tenant's data on it: confirm                              with --confirm {}",
                            req.scope, req.scope
                        )],
                    });
                }
                core.driver.backup_restore_cluster(req, progress)
            },
            |r, _| {
                let mut out = audit::outcome(r);
                if let (Ok(o), None) = (r, &out.message) {
                    out.message = Some(format!(
                        "recovered to {} from base backup {} in {} ms",
                        o.recovered_to.as_deref().unwrap_or("the end of the base backup"),
                        o.cluster_backup,
                        o.duration_ms
                    ));
                }
                (out, None)
            },
        )
    }

    /// `careplane backup ship-filestore [<tenant>/<env>]`: ships the files
    /// each environment's filestore has that its newest backup and the
    /// shipments since lack (`backup run-due` does it too). Authorized
    /// like `backup create`; one audit entry `backup.ship-filestore`.
    pub fn backup_ship_filestore(
        &self,
        who: &Principal,
        scope: Option<(&str, &str)>,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<ShipOutcome, EngineError> {
        let parameters = serde_json::json!({"scope": scope.map(|(t, e)| format!("{t}/{e}"))});
        let op = match scope {
            Some((t, e)) => self.env_op(
                "backup.ship-filestore",
                Action::BackupCreate,
                t,
                e,
                parameters,
            ),
            None => Guarded {
                parameters,
                ..self.platform_op("backup.ship-filestore", Action::BackupCreate)
            },
        };
        self.guarded(
            who,
            op,
            |core| core.driver.backup_ship_filestore(scope, progress),
            |r, _| {
                let mut out = audit::outcome(r);
                if let Ok(d) = r {
                    if d.failures.is_empty() {
                        // Counts only: filestore names are SHA-1s of documents.
                        out.message = Some(format!(
                            "{} files shipped",
                            d.shipments.iter().map(|s| s.files).sum::<u64>()
                        ));
                    } else {
                        out.status = careplane_audit::Status::Failed;
                        out.message = Some(d.failures.join("; "));
                    }
                }
                (out, None)
            },
        )
    }

    /// Runs what is due once: backups by their policy's schedule,
    /// verifications by `verify`, then pruning (for a systemd timer or cron).
    pub fn backup_run_due(
        &self,
        who: &Principal,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RunDueOutcome, EngineError> {
        let op = self.platform_op("backup.run-due", Action::BackupCreate);
        self.guarded(
            who,
            op,
            |core| core.driver.backup_run_due(progress),
            |r, _| {
                let mut out = audit::outcome(r);
                if let Ok(d) = r {
                    if !d.failures.is_empty() {
                        out.status = careplane_audit::Status::Failed;
                        out.message = Some(d.failures.join("; "));
                    }
                }
                (out, None)
            },
        )
    }
}

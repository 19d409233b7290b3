//! Restore verification (issue 16, docs/design/0010 "Restore verification"):
//! an environment backup is proven by recovering its database into a
//! scratch server to the end of its base backup and reading every table's
//! row count and checksum there, as the tenant's own role.
//!
//! The facts an environment backup records are read live, *before* its base
//! backup starts, so they are not those of any point a restore can reach.
//! The first restore verification of a backup (run by `backup run-due`
//! right after every scheduled backup, or by the first `backup verify
//! --restore`) records what the restore holds as the backup's verified facts
//! (a signed `restore-check` manifest in the tenant's repository, outcome
//! `baseline`); every later one restores again and compares, naming the
//! first table that differs. Each check is evidence: a signed manifest with
//! its outcome and durations, and the environment's record
//! (`observed.lastRestoreVerification`, shown by `status`).

use std::collections::BTreeMap;
use std::time::Instant;

use careplane_backup::tenant::{self, ScratchOptions, Target};
use careplane_backup::{BackupMetadata, Manifest, TableStat, Timestamp};
use careplane_engine::{BackupEvent, RestoreCheck};
use careplane_local::pg::ADMIN_ROLE;
use careplane_state::{ResourceRecord, ResourceStatus};

use crate::backup::{berr, err, is_env_backup, label, rfc3339, table_facts};
use crate::restore::{
    clear_leftover_scratch, ensure_dir, wal_fetch_command, WalServer, RECOVERY_TIMEOUT,
};
use crate::{Error, LocalDriver};

const KIND: &str = "restore-check";

pub(crate) fn is_restore_check(m: &Manifest) -> bool {
    m.labels.get("kind").map(String::as_str) == Some(KIND)
}

/// A `restore-check` manifest as the engine shows it.
pub(crate) fn check_of(m: &Manifest) -> RestoreCheck {
    let l = |k: &str| m.labels.get(k).cloned();
    let n = |k: &str| l(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    RestoreCheck {
        backup: label(m, "backup").into(),
        tenant: label(m, "tenant").into(),
        environment: label(m, "environment").into(),
        outcome: label(m, "outcome").into(),
        verified_at: rfc3339(m.finished),
        duration_ms: n("durationMs"),
        recovery_ms: n("recoveryMs"),
        recovered_to: l("recoveredTo"),
        tables: n("tables"),
        rows: n("rows"),
        baseline: l("baseline"),
        first_difference: l("firstDifference"),
        error: None,
        evidence: Some(m.id.clone()),
        skipped: None,
    }
}

/// The first difference between the verified facts and a restore's, in
/// table order: a table missing from either side, or its rows or checksum.
pub(crate) fn first_difference(verified: &[TableStat], restored: &[TableStat]) -> Option<String> {
    let a: BTreeMap<&str, &TableStat> = verified.iter().map(|t| (t.table.as_str(), t)).collect();
    let b: BTreeMap<&str, &TableStat> = restored.iter().map(|t| (t.table.as_str(), t)).collect();
    let names: std::collections::BTreeSet<&str> = a.keys().chain(b.keys()).copied().collect();
    for name in names {
        match (a.get(name), b.get(name)) {
            (Some(_), None) => {
                return Some(format!(
                    "table {name}: verified, but missing from the restore"
                ))
            }
            (None, Some(_)) => {
                return Some(format!(
                    "table {name}: in the restore, but not among the verified facts"
                ))
            }
            (Some(x), Some(y)) if x.rows != y.rows || x.checksum != y.checksum => {
                return Some(format!(
                    "table {name}: verified {} rows (checksum {}), restored {} rows (checksum {})",
                    x.rows, x.checksum, y.rows, y.checksum
                ))
            }
            _ => {}
        }
    }
    None
}

impl LocalDriver {
    /// `backup verify --restore <tenant>/<env> [--backup ID]`.
    pub(crate) fn verify_restore(
        &mut self,
        tenant: &str,
        env: &str,
        backup: Option<&str>,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RestoreCheck, Error> {
        let _lock = careplane_state::lock(&self.data_dir, "backup verify --restore")?;
        self.verify_restore_locked(tenant, env, backup, progress)
    }

    pub(crate) fn verify_restore_locked(
        &mut self,
        tenant: &str,
        env: &str,
        backup: Option<&str>,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RestoreCheck, Error> {
        let started = Instant::now();
        let all = self.records()?;
        let side = self.restore_side(&all, tenant, env)?;
        let (repo, _) = self.open_tenant_repo(tenant)?;
        let ms = repo
            .list_backups()
            .map_err(berr(&format!("listing the backups of tenant {tenant}")))?;
        let backups: Vec<&Manifest> = ms
            .iter()
            .filter(|m| is_env_backup(m) && label(m, "environment") == env)
            .collect();
        let m = match backup {
            Some(id) => backups.iter().find(|m| m.id == id).ok_or_else(|| {
                err(format!(
                    "backup {id} is not a backup of {tenant}/{env} (see `careplane backup list \
                     {tenant}/{env}`)"
                ))
            })?,
            None => backups
                .iter()
                .max_by_key(|m| m.finished)
                .ok_or_else(|| err(format!("{tenant}/{env} has no backup to verify")))?,
        };
        let id = m.id.clone();
        // A customer-held key careplane was not given: refused before the
        // scratch server, and no verification is recorded (nothing was checked).
        if let Some(why) = self.key_problem(&repo, m, None)? {
            return Err(crate::restore::refused(why));
        }
        let outcome = self.check_backup(&side, &repo, m, &ms, started, progress);
        let check = match outcome {
            Ok(c) => c,
            Err(e) => RestoreCheck {
                backup: id.clone(),
                tenant: tenant.into(),
                environment: env.into(),
                outcome: "failed".into(),
                verified_at: rfc3339(Timestamp::now()),
                duration_ms: started.elapsed().as_millis() as u64,
                recovery_ms: 0,
                recovered_to: None,
                tables: 0,
                rows: 0,
                baseline: None,
                first_difference: None,
                error: Some(e.to_string()),
                evidence: None,
                skipped: None,
            },
        };
        let mut rec = side.db.clone();
        rec.observed["lastRestoreVerification"] =
            serde_json::to_value(&check).expect("a restore check serializes");
        self.store()?.put_resource(&rec)?;
        match (&check.error, &check.first_difference) {
            (Some(e), _) => Err(err(format!(
                "restore verification of backup {id} of {tenant}/{env} failed: {e}"
            ))),
            (None, Some(d)) => Err(err(format!(
                "restore verification of backup {id} of {tenant}/{env} failed: the restore \
                 differs from the verified facts of {}: {d} (evidence {})",
                check.baseline.as_deref().unwrap_or("?"),
                check.evidence.as_deref().unwrap_or("?")
            ))),
            (None, None) => Ok(check),
        }
    }

    fn check_backup(
        &mut self,
        side: &crate::restore::Side,
        repo: &careplane_backup::Repository,
        m: &Manifest,
        all_manifests: &[Manifest],
        started: Instant,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RestoreCheck, Error> {
        let (tenant, env) = (side.tenant.as_str(), side.env.as_str());
        let id = m.id.as_str();
        // Every object's hash and signature first: a broken one is named.
        self.verify_backup(id, true, progress)?;
        let base = m.labels.get("cluster.backup").ok_or_else(|| {
            err(format!(
                "backup {id} of {tenant}/{env} names no cluster base backup"
            ))
        })?;
        let cluster_id = label(m, "cluster").to_string();
        let crec: ResourceRecord = self
            .records()?
            .into_iter()
            .find(|r| r.id == cluster_id && r.status == ResourceStatus::Ready)
            .ok_or_else(|| {
                err(format!(
                    "backup {id}: its cluster {cluster_id} is not ready"
                ))
            })?;
        if m.labels.get("cluster.repository").map(String::as_str)
            != crate::backup::cluster_repo_of(&crec)
                .map(|r| r.0)
                .as_deref()
        {
            return Err(err(format!(
                "backup {id} was taken of an earlier incarnation of {cluster_id}: it cannot be \
                 recovered with this cluster's binaries and repository"
            )));
        }
        let database = label(m, "database").to_string();
        let cluster = self.with_host(|d, h| d.cluster_handle(&crec, h))?;
        let owner = self.with_host(|d, h| d.service_owner(h))?;
        let restore_dir = self.data_dir.join("restore");
        ensure_dir(&restore_dir, 0o711)?;
        let scratch_dir = restore_dir.join(format!("{database}.verify"));
        clear_leftover_scratch(&scratch_dir)?;
        let socket = restore_dir.join(format!("{database}.verify.sock"));
        self.install_archiver()?;
        let wal_server = WalServer::start(
            self.open_cluster_repo(&crec)?,
            &socket,
            &restore_dir.join(format!("{database}.verify.tmp")),
            owner,
        )?;
        progress(BackupEvent::Phase(format!(
            "recovering {database} to the end of base backup {base} in {}",
            scratch_dir.display()
        )));
        let crepo = self.open_cluster_repo(&crec)?;
        let t_recovery = Instant::now();
        let scratch = tenant::recover_database(
            &crepo,
            base,
            &database,
            &Target::EndOfBackup,
            &ScratchOptions {
                bin_dir: cluster.bin.dir.clone(),
                dir: scratch_dir,
                owner,
                restore_command: wal_fetch_command(&crec, &socket),
                admin_user: ADMIN_ROLE.into(),
                timeout: RECOVERY_TIMEOUT,
            },
        )
        .map_err(berr(&format!(
            "recovering backup {id} of {tenant}/{env} (base backup {base} of {cluster_id})"
        )))?;
        drop(wal_server);
        let recovery_ms = t_recovery.elapsed().as_millis() as u64;
        let recovered_to = scratch.recovered().recovered_to.map(rfc3339);
        progress(BackupEvent::Phase(format!(
            "reading every table of the recovered {database} as its role"
        )));
        let mut c = scratch
            .connect_as(&side.tdb.role)
            .map_err(berr(&format!("backup {id} of {tenant}/{env}")))?;
        let tables = table_facts(&mut c, &database)
            .map_err(|e| err(format!("reading the recovered {database}: {e}")))?;
        drop(c);
        scratch
            .stop()
            .map_err(berr(&format!("backup {id}: stopping the scratch server")))?;

        // Compared with the first check of this backup, if there is one.
        let baseline = all_manifests
            .iter()
            .filter(|v| {
                is_restore_check(v) && label(v, "backup") == id && label(v, "outcome") == "baseline"
            })
            .min_by_key(|v| v.finished);
        let (outcome, difference, baseline_id) = match baseline {
            None => ("baseline", None, None),
            Some(b) => {
                let verified = repo
                    .index(b)
                    .map_err(berr(&format!(
                        "backup {id}: the verified facts (restore check {})",
                        b.id
                    )))?
                    .metadata
                    .tables;
                let d = first_difference(&verified, &tables);
                (
                    if d.is_some() { "failed" } else { "passed" },
                    d,
                    Some(b.id.clone()),
                )
            }
        };
        let rows: u64 = tables.iter().map(|t| t.rows).sum();
        let mut labels = BTreeMap::from([
            ("kind".to_string(), KIND.to_string()),
            ("tenant".to_string(), tenant.to_string()),
            ("environment".to_string(), env.to_string()),
            ("backup".to_string(), id.to_string()),
            ("outcome".to_string(), outcome.to_string()),
            ("recoveryMs".to_string(), recovery_ms.to_string()),
            ("tables".to_string(), tables.len().to_string()),
            ("rows".to_string(), rows.to_string()),
            (
                "durationMs".to_string(),
                started.elapsed().as_millis().to_string(),
            ),
        ]);
        for (k, v) in [
            ("recoveredTo", recovered_to.clone()),
            ("baseline", baseline_id),
            ("firstDifference", difference),
        ] {
            if let Some(v) = v {
                labels.insert(k.to_string(), v);
            }
        }
        let writer = repo
            .start_backup(labels)
            .map_err(berr(&format!("recording the restore check of backup {id}")))?;
        let evidence = writer
            .commit(BackupMetadata {
                tables,
                ..Default::default()
            })
            .map_err(berr(&format!("recording the restore check of backup {id}")))?;
        Ok(check_of(&evidence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(table: &str, rows: u64, checksum: &str) -> TableStat {
        TableStat {
            database: "db".into(),
            table: table.into(),
            rows,
            checksum: checksum.into(),
        }
    }

    #[test]
    fn the_first_differing_table_is_named_with_both_sides() {
        let verified = vec![t("public.a", 1, "x"), t("public.b", 2, "y")];
        assert_eq!(first_difference(&verified, &verified.clone()), None);
        let d = first_difference(&verified, &[t("public.a", 1, "x"), t("public.b", 2, "z")]);
        assert_eq!(
            d.as_deref(),
            Some("table public.b: verified 2 rows (checksum y), restored 2 rows (checksum z)")
        );
        let d = first_difference(&verified, &[t("public.b", 2, "y")]).unwrap();
        assert!(
            d.starts_with("table public.a: verified, but missing"),
            "{d}"
        );
        let d = first_difference(&verified[..1], &verified).unwrap();
        assert!(d.starts_with("table public.b: in the restore"), "{d}");
    }
}

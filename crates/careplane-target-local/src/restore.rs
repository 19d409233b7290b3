//! `careplane backup restore`: one environment's database back to a point
//! in time on its (possibly shared) cluster, and its filestore to the files
//! referenced then (issue 16, docs/design/0011, "How the CLI calls this").
//!
//! Order, under the apply lock:
//! 1. checks that change nothing (the environments, their cluster, the
//!    point: not in the future, not before the environment's oldest backup);
//! 2. a `pre-restore` backup of the environment that will be replaced, a
//!    commit and a WAL switch on the live cluster, and a bounded wait until
//!    that WAL is archived (recovery to T needs a commit after T);
//! 3. `careplane_backup::tenant::recover_database` into
//!    `<dataDir>/restore/<db>` (a scratch server; the live cluster is not
//!    involved), its `restore_command` the cluster's archiver program with a
//!    keys file that also holds careplane's identity, written for this
//!    restore only and removed when recovery is done;
//! 4. a new database (`<db>_restoring_<stamp>`) for the environment's role,
//!    a pg_hba line for it, `pg_dump | pg_restore` as the tenant's roles;
//!    the filestore staged in a root-only directory: the backup's files plus
//!    the files `ir_attachment` references at T that the live filestore
//!    still has (content-addressed: same name, same content), and those
//!    neither has from the environment's filestore shipments;
//! 5. maintenance page, Odoo stopped, the swap (old database kept as
//!    `<db>_pre_restore_<stamp>`), the filestore installed, Odoo started and
//!    answering, maintenance off.
//!
//! A failure before 5 drops the new database and leaves the environment as
//! it was; a failure in 5 swaps the old database back and reinstalls the old
//! filestore. On success the replaced database is dropped (its state is in
//! the pre-restore backup and the WAL archive) unless `--keep-pre-restore`,
//! which records it on the environment's `pg-database` record, where
//! `status` shows it and `destroy` drops it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use careplane_backup::tenant::{self, LiveCluster, ScratchOptions, Target, TenantLogin};
use careplane_backup::{Manifest, Timestamp};
use careplane_engine::{BackupEvent, LastRestore, RestoreOutcome, RestorePoint, RestoreRequest};
use careplane_local::pg::{PgCluster, TenantDb, ADMIN_ROLE};
use careplane_state::{ResourceRecord, ResourceStatus};
use serde_json::{json, Value};

use crate::backup::{berr, cluster_repo_of, err, is_env_backup, label, rfc3339};
use crate::runtime::{self, observed_str, str_prop};
use crate::{Error, LocalDriver};

/// Bound on the wait for the live cluster to archive the WAL that makes
/// the target reachable.
const ARCHIVE_WAIT: Duration = Duration::from_secs(120);
/// Bound on the scratch server's start, WAL replay and promotion.
pub(crate) const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

pub(crate) fn refused(problem: String) -> Error {
    Error::Refused {
        problems: vec![problem],
    }
}

/// `--to-time` read as an instant that has passed: anything else is refused, naming it.
pub(crate) fn parse_past_time(text: &str) -> Result<Timestamp, Error> {
    let t: Timestamp = text.parse().map_err(|e| {
        refused(format!(
            "--to-time {text:?} is not an RFC 3339 time (e.g. 2026-12-02T10:42:17Z): {e}"
        ))
    })?;
    let now = Timestamp::now();
    if t > now {
        return Err(refused(format!(
            "--to-time {t} is in the future (now is {now})"
        )));
    }
    Ok(t)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Removes a directory tree when dropped (root's staging directories).
struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One side of a restore: an environment's database record and, when
/// careplane runs Odoo for it, its Odoo record.
pub(crate) struct Side {
    pub(crate) tenant: String,
    pub(crate) env: String,
    pub(crate) db: ResourceRecord,
    pub(crate) tdb: TenantDb,
    pub(crate) odoo: Option<ResourceRecord>,
}

impl Side {
    fn root(&self) -> Option<PathBuf> {
        self.odoo
            .as_ref()
            .and_then(|r| observed_str(r, "root").ok())
            .map(PathBuf::from)
    }
}

impl LocalDriver {
    pub(crate) fn restore_side(
        &mut self,
        all: &[ResourceRecord],
        tenant: &str,
        env: &str,
    ) -> Result<Side, Error> {
        let id = careplane_model::pg_database_id(tenant, env);
        let db = all
            .iter()
            .find(|r| r.id == id && r.status == ResourceStatus::Ready)
            .cloned()
            .ok_or_else(|| {
                refused(format!(
                    "environment {tenant}/{env} has no ready database ({id}): apply it first"
                ))
            })?;
        let tdb = runtime::tenant_db(self.store()?, &db)?;
        let odoo_id = careplane_model::odoo_env_id(tenant, env);
        let odoo = all
            .iter()
            .find(|r| r.id == odoo_id && r.status == ResourceStatus::Ready)
            .cloned();
        Ok(Side {
            tenant: tenant.into(),
            env: env.into(),
            db,
            tdb,
            odoo,
        })
    }

    /// See the module's documentation.
    pub(crate) fn restore(
        &mut self,
        req: &RestoreRequest,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RestoreOutcome, Error> {
        let _lock = careplane_state::lock(&self.data_dir, "backup restore")?;
        let started = Instant::now();
        let started_at = Timestamp::now();

        // 1. Checks; nothing changes.
        let (tt, te) = match &req.into {
            Some((t, e)) => (t.clone(), e.clone()),
            None => (req.tenant.clone(), req.environment.clone()),
        };
        if tt != req.tenant {
            return Err(refused(format!(
                "--as {tt}/{te}: a restore stays within its tenant ({} may not receive {}'s data)",
                tt, req.tenant
            )));
        }
        let all = self.records()?;
        let src = self.restore_side(&all, &req.tenant, &req.environment)?;
        let dst = if req.into.is_some() {
            if te == req.environment {
                return Err(refused(format!(
                    "--as {tt}/{te} is the environment restored from; leave --as out to restore \
                     in place"
                )));
            }
            self.restore_side(&all, &tt, &te)?
        } else {
            self.restore_side(&all, &tt, &te)?
        };
        let cluster_id = str_prop(&src.db, "cluster")?.to_string();
        let dst_cluster = str_prop(&dst.db, "cluster")?;
        if dst_cluster != cluster_id {
            return Err(refused(format!(
                "--as {tt}/{te}: its database is on {dst_cluster}, {}/{}'s on {cluster_id}; a \
                 restore into another environment is supported on the same cluster only",
                req.tenant, req.environment
            )));
        }
        let crec = all
            .iter()
            .find(|r| r.id == cluster_id && r.status == ResourceStatus::Ready)
            .cloned()
            .ok_or_else(|| refused(format!("{cluster_id} is not ready")))?;
        let Some((cluster_repo_url, _)) = cluster_repo_of(&crec) else {
            return Err(refused(format!(
                "{cluster_id} does not archive its WAL: run `careplane apply` first"
            )));
        };
        let cluster = self.with_host(|d, h| d.cluster_handle(&crec, h))?;
        if cluster.running_pid().is_none() {
            return Err(refused(format!(
                "{cluster_id} is not running: `careplane start` first"
            )));
        }
        let (env_backup, target, base_id) =
            self.restore_point(req, &crec, &cluster_repo_url, &cluster_id)?;
        // Decryptable with the keys at hand (a customer-held key needs
        // --identity), before the pre-restore backup or anything else.
        let (trepo, _) = self.open_tenant_repo(&req.tenant)?;
        if let Some(why) = self.key_problem(&trepo, &env_backup, Some(&base_id))? {
            return Err(refused(why));
        }
        self.finish_interrupted_restores(&cluster, &cluster_id)?;
        let target_text = match (&req.point, target) {
            (_, Target::Time(t)) => rfc3339(t),
            (RestorePoint::Backup(id), Target::EndOfBackup) => format!("end of backup {id}"),
            (_, Target::EndOfBackup) => "end of backup".into(),
        };
        let (rto, rpo) = self.tier_targets(&req.tenant);
        let dst_name = format!("{}/{}", dst.tenant, dst.env);

        // 2. The way back, and the target made reachable.
        progress(BackupEvent::Phase(format!(
            "pre-restore backup of {dst_name}"
        )));
        let pre = self
            .create_backup_locked(&dst.tenant, &dst.env, "pre-restore", progress)
            .map_err(|e| err(format!("the pre-restore backup of {dst_name} failed: {e}")))?;
        let t_archive = Instant::now();
        progress(BackupEvent::Phase(format!(
            "archiving {cluster_id}'s latest WAL"
        )));
        archive_now(&cluster, &cluster_id)?;
        let archive_wait = t_archive.elapsed();

        // 3. Scratch recovery; the live cluster is not involved.
        let t_recovery = Instant::now();
        let restore_dir = self.data_dir.join("restore");
        ensure_dir(&restore_dir, 0o711)?;
        let scratch_dir = restore_dir.join(&src.tdb.database);
        clear_leftover_scratch(&scratch_dir)?;
        let owner = self.with_host(|d, h| d.service_owner(h))?;
        let crepo = self.open_cluster_repo(&crec)?;
        // The scratch server's restore_command asks root for each WAL file
        // over a socket only the service user can open; careplane's identity
        // stays in this process (it opens every repository: it must never
        // be in a file the service user reads).
        let socket = restore_dir.join(format!("{}.sock", src.tdb.database));
        // The copy restore_command runs must know `backup-wal fetch`: an
        // older one (careplane upgraded since the last apply) is replaced.
        self.install_archiver()?;
        let wal_server = WalServer::start(
            self.open_cluster_repo(&crec)?,
            &socket,
            &restore_dir.join(format!("{}.tmp", src.tdb.database)),
            owner,
        )?;
        progress(BackupEvent::Phase(format!(
            "recovering {} to {target_text} in {}",
            src.tdb.database,
            scratch_dir.display()
        )));
        let scratch = tenant::recover_database(
            &crepo,
            &base_id,
            &src.tdb.database,
            &target,
            &ScratchOptions {
                bin_dir: cluster.bin.dir.clone(),
                dir: scratch_dir.clone(),
                owner,
                restore_command: wal_fetch_command(&crec, &socket),
                admin_user: ADMIN_ROLE.into(),
                timeout: RECOVERY_TIMEOUT,
            },
        )
        .map_err(berr(&format!(
            "recovering {}/{} to {target_text} from base backup {base_id}",
            src.tenant, src.env
        )))?;
        drop(wal_server);
        let recovered = scratch.recovered().clone();
        let recovery = t_recovery.elapsed();

        // 4. The new database and the staged filestore.
        let t_copy = Instant::now();
        let now = Timestamp::now();
        let work_db = tenant::restoring_name(&dst.tdb.database, now);
        let keep_as = tenant::pre_restore_name(&dst.tdb.database, now);
        let mut hba = runtime::hba_entries(&all, &cluster_id)?;
        hba.push((work_db.clone(), dst.tdb.role.clone()));
        let ca = self.ca_pem()?;
        let work = self
            .data_dir
            .join("tmp")
            .join(format!("restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        ensure_dir(&work, 0o700)?;
        let _work_guard = RemoveDirOnDrop(work.clone());
        // Intent first: a restore killed from here on leaves names the next
        // one finds (see finish_interrupted_restores).
        self.set_restore_intent(&dst.db.id, Some((&work_db, &keep_as)))?;
        let staged = (|| -> Result<_, Error> {
            cluster.write_hba(&hba)?;
            cluster.create_database_for_restore(&work_db, &dst.tdb.role)?;
            progress(BackupEvent::Phase(format!(
                "copying {} into {work_db} as the tenant's role",
                src.tdb.database
            )));
            let copied = tenant::copy_database_as(
                &scratch,
                &src.tdb.role,
                &TenantLogin {
                    role: dst.tdb.role.clone(),
                    password: dst.tdb.password.clone(),
                },
                &LiveCluster {
                    host: "127.0.0.1".into(),
                    port: cluster.port,
                    ca_cert_pem: ca.clone(),
                },
                &work_db,
                tenant::COPY_TIMEOUT,
            )
            .map_err(berr(&format!(
                "copying the recovered {} into {work_db}",
                src.tdb.database
            )))?;
            let mut into = dst.tdb.clone();
            into.database = work_db.clone();
            let mut c = cluster.tenant_connect(&into, &ca)?;
            let referenced = referenced_files(&mut c)?;
            // A copy into another environment gets that environment's own
            // identity (docs/design/0003: no two share database.uuid/secret).
            let mut new_identity = false;
            if req.into.is_some() {
                if let Some(o) = &dst.odoo {
                    if careplane_odoo::db::is_initialized(&mut c)? {
                        let admin = self
                            .store()?
                            .get_or_create_secret(&o.id, crate::odoo::ADMIN_LOGIN_PASSWORD)?;
                        let http_port =
                            careplane_model::Observed::odoo_env(&o.id, &o.observed)?.http_port;
                        new_identity = careplane_odoo::db::make_unique(
                            &mut c,
                            &o.id,
                            &format!("http://127.0.0.1:{http_port}"),
                            &careplane_odoo::hash_admin_password(&admin),
                        )?;
                    }
                }
            }
            drop(c);
            let mut files = None;
            if dst.odoo.is_some() {
                progress(BackupEvent::Phase(format!(
                    "staging the filestore of {}/{} at {target_text}",
                    src.tenant, src.env
                )));
                files = Some(self.stage_filestore(
                    &env_backup,
                    &src,
                    &dst,
                    referenced.as_ref(),
                    &work,
                )?);
            }
            Ok((copied, files, new_identity))
        })();
        let (copied, files, new_identity) = match staged {
            Ok(v) => v,
            Err(e) => {
                // Nothing of the environment was touched: the half-made
                // database and its pg_hba line go.
                let _ = cluster.drop_tenant_database_and_roles(&work_db, &[]);
                let _ = cluster.write_hba(&runtime::hba_entries(&all, &cluster_id)?);
                let _ = self.set_restore_intent(&dst.db.id, None);
                return Err(e);
            }
        };
        drop(scratch);
        let copy = t_copy.elapsed();

        // 5. The switch.
        let t_switch = Instant::now();
        progress(BackupEvent::Phase(format!(
            "switching {dst_name} to the restored database"
        )));
        if let Err(e) = self.switch_in(&cluster, &dst, &work_db, &keep_as, files.as_ref()) {
            // Drops the new database if it was not swapped in, and records
            // the old one if it could not be put back.
            let _ = self.finish_interrupted_restores(&cluster, &cluster_id);
            let _ = cluster.write_hba(&runtime::hba_entries(&all, &cluster_id).unwrap_or_default());
            return Err(e);
        }
        // The restored database has the environment's name now: its own
        // pg_hba line covers it.
        cluster.write_hba(&runtime::hba_entries(&all, &cluster_id)?)?;
        let pre_restore_database = if req.keep_pre_restore {
            Some(keep_as.clone())
        } else {
            cluster.drop_database(&keep_as)?;
            None
        };
        let switch = t_switch.elapsed();

        let duration = started.elapsed();
        let rto_met = rto.as_ref().map(|(_, d)| duration <= *d);
        let finished_at = Timestamp::now();
        let outcome = RestoreOutcome {
            tenant: src.tenant.clone(),
            environment: src.env.clone(),
            into_tenant: dst.tenant.clone(),
            into_environment: dst.env.clone(),
            database: dst.tdb.database.clone(),
            backup: env_backup.id.clone(),
            cluster_backup: base_id.clone(),
            target: target_text.clone(),
            recovered_to: recovered.recovered_to.map(rfc3339),
            started: rfc3339(started_at),
            finished: rfc3339(finished_at),
            duration_ms: duration.as_millis() as u64,
            archive_wait_ms: archive_wait.as_millis() as u64,
            recovery_ms: recovery.as_millis() as u64,
            copy_ms: copy.as_millis() as u64,
            switch_ms: switch.as_millis() as u64,
            bytes_restored: recovered.bytes_restored,
            bytes_skipped: recovered.bytes_skipped,
            dump_bytes: copied.dump_bytes,
            filestore_files: files.as_ref().map_or(0, |f| f.files),
            filestore_from_shipments: files.as_ref().map_or(0, |f| f.from_shipments),
            filestore_missing: files.map(|f| f.missing).unwrap_or_default(),
            pre_restore_database,
            rto: rto.map(|(s, _)| s),
            rto_met,
            rpo,
            new_identity,
        };
        // Evidence on the environment's record: `status` shows it.
        let mut rec = self
            .store()?
            .resource(&dst.db.id)?
            .ok_or_else(|| err(format!("{} vanished during the restore", dst.db.id)))?;
        let last = LastRestore {
            finished: outcome.finished.clone(),
            backup: outcome.backup.clone(),
            from: format!("{}/{}", src.tenant, src.env),
            target: outcome.target.clone(),
            recovered_to: outcome.recovered_to.clone(),
            duration_ms: outcome.duration_ms,
            rto: outcome.rto.clone(),
            rto_met: outcome.rto_met,
            rpo: outcome.rpo.clone(),
        };
        rec.observed["lastRestore"] =
            serde_json::to_value(&last).map_err(|e| err(format!("recording the restore: {e}")))?;
        if let Some(kept) = &outcome.pre_restore_database {
            let mut list = pre_restore_databases(&rec);
            list.push(kept.clone());
            rec.observed["preRestore"] = json!(list);
        }
        rec.observed["lastRestorePreBackup"] = json!(pre.id);
        if let Some(o) = rec.observed.as_object_mut() {
            o.remove("restoreInProgress");
        }
        self.store()?.put_resource(&rec)?;
        Ok(outcome)
    }

    /// Records on `db_id` the names a restore is about to make (the new
    /// database and the name the replaced one will keep), or clears them.
    fn set_restore_intent(
        &mut self,
        db_id: &str,
        names: Option<(&str, &str)>,
    ) -> Result<(), Error> {
        let mut rec = self
            .store()?
            .resource(db_id)?
            .ok_or_else(|| err(format!("{db_id} is not recorded")))?;
        match names {
            Some((work, keep)) => {
                rec.observed["restoreInProgress"] = json!({"work": work, "keepAs": keep});
            }
            None => {
                if let Some(o) = rec.observed.as_object_mut() {
                    o.remove("restoreInProgress");
                }
            }
        }
        self.store()?.put_resource(&rec)?;
        Ok(())
    }

    /// What a killed restore left on `cluster_id`: its new database, if it
    /// was never swapped in, is dropped; a database it replaced is kept and
    /// recorded (listed by `status`, dropped by `destroy`), since the
    /// environment may now run on the restored one. Stale keys files and
    /// scratch directories go too.
    fn finish_interrupted_restores(
        &mut self,
        cluster: &PgCluster,
        cluster_id: &str,
    ) -> Result<(), Error> {
        let restore_dir = self.data_dir.join("restore");
        for e in std::fs::read_dir(&restore_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = e.path();
            if path.is_dir() {
                // A scratch directory, or a WAL server's temporary one.
                if path.extension().is_some_and(|x| x == "tmp") {
                    let _ = std::fs::remove_dir_all(&path);
                    continue;
                }
                clear_leftover_scratch(&path)?;
            } else {
                // A WAL server's socket.
                let _ = std::fs::remove_file(&path);
            }
        }
        let leftovers: Vec<ResourceRecord> = self
            .records()?
            .into_iter()
            .filter(|r| r.kind == "pg-database")
            .filter(|r| r.props.get("cluster").and_then(Value::as_str) == Some(cluster_id))
            .filter(|r| r.observed.get("restoreInProgress").is_some())
            .collect();
        if leftovers.is_empty() {
            return Ok(());
        }
        let present = cluster.databases()?;
        for mut rec in leftovers {
            let r = rec.observed["restoreInProgress"].clone();
            let name = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
            if let Some(work) = name("work") {
                if present.contains(&work) {
                    cluster.drop_tenant_database_and_roles(&work, &[])?;
                }
            }
            if let Some(keep) = name("keepAs") {
                if present.contains(&keep) {
                    let mut list = pre_restore_databases(&rec);
                    if !list.contains(&keep) {
                        list.push(keep);
                    }
                    rec.observed["preRestore"] = json!(list);
                }
            }
            if let Some(o) = rec.observed.as_object_mut() {
                o.remove("restoreInProgress");
            }
            self.store()?.put_resource(&rec)?;
        }
        Ok(())
    }

    /// The environment backup whose filestore is restored, the recovery
    /// target, and the cluster base backup recovery starts from; refuses a
    /// time in the future or before the environment's oldest backup.
    fn restore_point(
        &mut self,
        req: &RestoreRequest,
        crec: &ResourceRecord,
        cluster_repo_url: &str,
        cluster_id: &str,
    ) -> Result<(Manifest, Target, String), Error> {
        let (tenant, env) = (req.tenant.as_str(), req.environment.as_str());
        let (repo, _) = self.open_tenant_repo(tenant)?;
        let mut backups: Vec<Manifest> = repo
            .list_backups()
            .map_err(berr(&format!("listing the backups of tenant {tenant}")))?
            .into_iter()
            .filter(|m| is_env_backup(m) && label(m, "environment") == env)
            .filter(|m| m.labels.contains_key("cluster.backup"))
            .collect();
        backups.sort_by_key(|m| m.finished);
        let (backup, target) = match &req.point {
            RestorePoint::Time(text) => {
                let t = parse_past_time(text)?;
                let Some(b) = backups.iter().rfind(|m| m.finished <= t) else {
                    return Err(refused(match backups.first() {
                        Some(o) => format!(
                            "--to-time {t} is before the oldest backup of {tenant}/{env} ({} \
                             finished {}): it cannot be restored to",
                            o.id, o.finished
                        ),
                        None => format!(
                            "{tenant}/{env} has no backup to restore from \
                             (`careplane backup create {tenant}/{env}`)"
                        ),
                    }));
                };
                (b.clone(), Target::Time(t))
            }
            RestorePoint::Backup(id) => {
                let Some(b) = backups.iter().find(|m| &m.id == id) else {
                    return Err(refused(format!(
                        "backup {id} is no backup of {tenant}/{env} (see `careplane backup \
                         list {tenant}/{env}`)"
                    )));
                };
                (b.clone(), Target::EndOfBackup)
            }
        };
        let from_repo = backup.labels.get("cluster.repository").cloned();
        if from_repo.as_deref() != Some(cluster_repo_url) {
            return Err(refused(format!(
                "backup {} was taken of an earlier {cluster_id} (repository {}); restoring \
                 across cluster incarnations is not supported",
                backup.id,
                from_repo.as_deref().unwrap_or("?")
            )));
        }
        let base = match target {
            // The newest base backup before T: the least WAL to replay. It
            // holds the database too (it existed at the environment backup).
            Target::Time(_) => {
                let crepo = self.open_cluster_repo(crec)?;
                tenant::choose_base_backup(&crepo, &target)
                    .map_err(berr(&format!("choosing a base backup of {cluster_id}")))?
                    .id
            }
            Target::EndOfBackup => label(&backup, "cluster.backup").to_string(),
        };
        Ok((backup, target, base))
    }

    /// The service tier's restore-time target (text and duration) and
    /// recovery-point target of `tenant`, when the spec names them.
    fn tier_targets(&self, tenant: &str) -> (Option<(String, Duration)>, Option<String>) {
        let Some(t) = self.specs.tenant(tenant) else {
            return (None, None);
        };
        let Some(tier) = self.specs.tier_of(&t.spec) else {
            return (None, None);
        };
        let rto = careplane_spec::parse_duration(&tier.spec.rto)
            .ok()
            .map(|d| (tier.spec.rto.clone(), d));
        (rto, Some(tier.spec.rpo.clone()))
    }

    /// The filestore at the recovered point, staged in `work`: the
    /// environment backup's files plus those `ir_attachment` references
    /// that the source environment's live filestore still has. The old
    /// filestore of `dst` is kept beside it for a way back.
    fn stage_filestore(
        &mut self,
        backup: &Manifest,
        src: &Side,
        dst: &Side,
        referenced: Option<&Vec<String>>,
        work: &Path,
    ) -> Result<StagedFiles, Error> {
        let (repo, _) = self.open_tenant_repo(&src.tenant)?;
        let from_backup = work.join("backup");
        let select = |p: &str| p == "filestore" || p.starts_with("filestore/");
        repo.restore_tree(&backup.id, &from_backup, None, &select)
            .map_err(berr(&format!(
                "restoring the filestore of backup {}",
                backup.id
            )))?;
        let new = from_backup.join("filestore");
        ensure_dir(&new, 0o700)?;
        let mut missing: Vec<String> = referenced
            .map(|r| {
                r.iter()
                    .filter(|f| !new.join(f).is_file())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(root) = src.root() {
            if !missing.is_empty() {
                let want: std::collections::BTreeSet<String> = missing.iter().cloned().collect();
                careplane_odoo::tree::read_filestore(&root, &src.tdb.database, &mut |rel, f| {
                    if want.contains(rel) {
                        let to = new.join(rel);
                        if let Some(p) = to.parent() {
                            std::fs::create_dir_all(p)?;
                        }
                        let mut out = std::fs::File::create(&to)?;
                        std::io::copy(f, &mut out)?;
                    }
                    Ok(())
                })?;
                missing.retain(|f| !new.join(f).is_file());
            }
        }
        // Added after the backup and deleted since: only a filestore
        // shipment has it (docs/design/0010, "Filestore shipping").
        let mut from_shipments = 0;
        if !missing.is_empty() {
            let want: std::collections::BTreeSet<String> = missing.iter().cloned().collect();
            let got = self.files_from_shipments(&repo, &src.env, backup, &want, &new)?;
            from_shipments = got.len() as u64;
            missing.retain(|f| !got.contains(f));
        }
        let old = work.join("old");
        ensure_dir(&old, 0o700)?;
        if let Some(root) = dst.root() {
            careplane_odoo::tree::read_filestore(&root, &dst.tdb.database, &mut |rel, f| {
                let to = old.join(rel);
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p)?;
                }
                let mut out = std::fs::File::create(&to)?;
                std::io::copy(f, &mut out).map(|_| ())
            })?;
        }
        let files = count_files(&new);
        Ok(StagedFiles {
            new,
            old,
            files,
            missing,
            from_shipments,
        })
    }

    /// Step 5: maintenance, stop, swap, filestore, start. A failure puts
    /// the old database and filestore back and starts Odoo again.
    fn switch_in(
        &mut self,
        cluster: &PgCluster,
        dst: &Side,
        work_db: &str,
        keep_as: &str,
        files: Option<&StagedFiles>,
    ) -> Result<(), Error> {
        let database = dst.tdb.database.as_str();
        if let Some(o) = &dst.odoo {
            self.set_maintenance(&o.id, true)?;
            if let Err(e) = self.stop_odoo_env(o) {
                let _ = self.set_maintenance(&o.id, false);
                return Err(e);
            }
            careplane_engine::crash_point(&o.id, "restore-stopped");
        }
        // Before the swap commits, swap_database opens the old database
        // again itself on failure.
        if let Err(e) = cluster.swap_database(database, work_db, keep_as) {
            if let Some(o) = &dst.odoo {
                let started = self.start_odoo_env(o);
                let _ = self.set_maintenance(&o.id, false);
                started?;
            }
            return Err(e.into());
        }
        let after = (|| -> Result<(), Error> {
            if let (Some(o), Some(f), Some(root)) = (&dst.odoo, files, dst.root()) {
                careplane_odoo::tree::install_filestore(&root, database, &f.new, Self::owner(o))?;
                careplane_engine::crash_point(&o.id, "restore-swapped");
                self.start_odoo_env(o)?;
                self.set_maintenance(&o.id, false)?;
            }
            Ok(())
        })();
        let Err(e) = after else {
            // The restored database's probe user is the source's (another password after
            // `--into`, or none in an older backup).
            return match &dst.odoo {
                Some(o) => self.ensure_probe_user_of(o),
                None => Ok(()),
            };
        };
        // Back to the old database and filestore.
        if let Some(o) = &dst.odoo {
            let _ = self.stop_odoo_env(o);
        }
        let failed = format!("{work_db}_failed");
        let undo = cluster
            .swap_database(database, keep_as, &failed)
            .and_then(|()| cluster.drop_database(&failed));
        if let (Some(o), Some(f), Some(root)) = (&dst.odoo, files, dst.root()) {
            let _ =
                careplane_odoo::tree::install_filestore(&root, database, &f.old, Self::owner(o));
            let _ = self.start_odoo_env(o);
            let _ = self.set_maintenance(&o.id, false);
        }
        match undo {
            Ok(()) => Err(err(format!(
                "{e}; the environment was put back as it was before the restore"
            ))),
            Err(u) => Err(err(format!(
                "{e}; putting the old database back failed too: {u}. It is database {keep_as}"
            ))),
        }
    }
}

/// What [`LocalDriver::stage_filestore`] prepared.
struct StagedFiles {
    new: PathBuf,
    old: PathBuf,
    files: u64,
    missing: Vec<String>,
    from_shipments: u64,
}

/// Databases a restore replaced and kept, from a `pg-database` record.
pub(crate) fn pre_restore_databases(rec: &ResourceRecord) -> Vec<String> {
    rec.observed
        .get("preRestore")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Every database a restore may have left for a `pg-database` record: the
/// kept ones, and the names of a restore that was killed (they may or may
/// not exist).
pub(crate) fn restore_leftovers(rec: &ResourceRecord) -> Vec<String> {
    let mut out = pre_restore_databases(rec);
    if let Some(r) = rec.observed.get("restoreInProgress") {
        for k in ["work", "keepAs"] {
            if let Some(n) = r.get(k).and_then(Value::as_str) {
                out.push(n.to_string());
            }
        }
    }
    out
}

/// The environment's last restore, from its `pg-database` record.
pub(crate) fn last_restore(rec: &ResourceRecord) -> Option<LastRestore> {
    serde_json::from_value(rec.observed.get("lastRestore")?.clone()).ok()
}

/// `ir_attachment`'s stored file names in the restored database (read as
/// the tenant), or `None` when it has no such table (not an Odoo database).
fn referenced_files(
    c: &mut careplane_local::postgres::Client,
) -> Result<Option<Vec<String>>, Error> {
    let pe = |e: careplane_local::postgres::Error| err(format!("reading ir_attachment: {e}"));
    let has: bool = c
        .query_one(
            "SELECT pg_catalog.to_regclass('public.ir_attachment') IS NOT NULL",
            &[],
        )
        .map_err(pe)?
        .get(0);
    if !has {
        return Ok(None);
    }
    let rows = c
        .query(
            "SELECT DISTINCT store_fname::text FROM public.ir_attachment \
             WHERE store_fname IS NOT NULL AND store_fname <> ''",
            &[],
        )
        .map_err(pe)?;
    // Names that would leave the filestore are not files of it.
    Ok(Some(
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|n| !n.starts_with('/') && !n.split('/').any(|p| p == ".." || p.is_empty()))
            .collect(),
    ))
}

/// A commit now, then a WAL switch, then a bounded wait until that WAL
/// is archived: recovery to T stops at the first commit after T, which
/// must be in the archive.
fn archive_now(cluster: &PgCluster, cluster_id: &str) -> Result<(), Error> {
    let mut c = cluster.admin()?;
    let pe = |what: &'static str| {
        move |e: careplane_local::postgres::Error| err(format!("{cluster_id}: {what}: {e}"))
    };
    c.batch_execute("BEGIN; SELECT pg_catalog.txid_current(); COMMIT;")
        .map_err(pe("committing a marker transaction"))?;
    let want: String = c
        .query_one(
            "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())",
            &[],
        )
        .map_err(pe("switching WAL"))?
        .get(0);
    let deadline = Instant::now() + ARCHIVE_WAIT;
    loop {
        let row = c
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') \
                 FROM pg_catalog.pg_stat_archiver",
                &[],
            )
            .map_err(pe("reading pg_stat_archiver"))?;
        let last: String = row.get(0);
        if last.as_str() >= want.as_str() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let failed: String = row.get(1);
            return Err(err(format!(
                "{cluster_id}: WAL file {want} was not archived within {} s (last archived {}, \
                 last failed {}): the restore needs it; see `careplane status`",
                ARCHIVE_WAIT.as_secs(),
                if last.is_empty() { "none" } else { &last },
                if failed.is_empty() { "none" } else { &failed },
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scratch directory left by a restore that was killed: its server is
/// stopped (SIGKILL: it is thrown away) and the directory removed.
pub(crate) fn clear_leftover_scratch(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        return Ok(());
    }
    let pid_file = dir.join("data/postmaster.pid");
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
    {
        if careplane_local::system::pid_alive(pid as u32) {
            // SAFETY: kill(2) of the scratch postmaster recorded in its own
            // pid file below careplane's data directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while careplane_local::system::pid_alive(pid as u32) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    std::fs::remove_dir_all(dir).map_err(io(format!(
        "removing the scratch directory {} of an interrupted restore",
        dir.display()
    )))
}

pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

fn count_files(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// The scratch server's `restore_command`: the archiver program asking the
/// WAL server on `socket` for `%f` and writing it to `%p`.
pub(crate) fn wal_fetch_command(crec: &ResourceRecord, socket: &Path) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
    let program = crec
        .observed
        .get("archive")
        .and_then(|a| a.get("program"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!(
        "{} backup-wal fetch --socket {} %f %p",
        quote(program),
        quote(&socket.display().to_string())
    )
}

/// Serves WAL files of a cluster's repository, decrypted by root, to the
/// scratch server's `restore_command` (`careplane backup-wal fetch`) over a
/// unix socket that only the service user (and root) may open. One request
/// at a time (recovery asks for one file at a time); stopped when dropped.
pub(crate) struct WalServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
    tmp: PathBuf,
}

/// How long one request may take to arrive or be answered.
const WAL_IO_TIMEOUT: Duration = Duration::from_secs(300);

impl WalServer {
    pub(crate) fn start(
        repo: careplane_backup::Repository,
        socket: &Path,
        tmp: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<WalServer, Error> {
        use std::os::unix::fs::PermissionsExt;
        if socket.as_os_str().len() > 107 {
            return Err(err(format!(
                "the WAL socket path {} is over the 107-byte limit; use a shorter dataDir",
                socket.display()
            )));
        }
        let _ = std::fs::remove_file(socket);
        let _ = std::fs::remove_dir_all(tmp);
        ensure_dir(tmp, 0o700)?;
        let listener = std::os::unix::net::UnixListener::bind(socket)
            .map_err(io(format!("listening on {}", socket.display())))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("setting the mode of {}", socket.display())))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(socket, Some(uid), Some(gid)).map_err(io(format!(
                "handing {} to the service user",
                socket.display()
            )))?;
        }
        listener
            .set_nonblocking(true)
            .map_err(io(format!("configuring {}", socket.display())))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let file = tmp.join("wal");
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve_wal_request(&repo, stream, &file);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(WalServer {
            stop,
            thread: Some(thread),
            socket: socket.to_path_buf(),
            tmp: tmp.to_path_buf(),
        })
    }
}

impl Drop for WalServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// One request: a WAL file name and a newline; the answer `OK <length>\n`
/// and the bytes, `NOTFOUND\n`, or `ERR <message>\n`.
fn serve_wal_request(
    repo: &careplane_backup::Repository,
    mut stream: std::os::unix::net::UnixStream,
    file: &Path,
) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(WAL_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(WAL_IO_TIMEOUT))?;
    let mut name = String::new();
    std::io::BufReader::new(std::io::Read::take(&stream, 128)).read_line(&mut name)?;
    let name = name.trim_end_matches('\n');
    let _ = std::fs::remove_file(file);
    // restore_wal checks the name (WAL file names only, no path).
    match repo.restore_wal(name, file) {
        Ok(true) => {
            let data = std::fs::read(file)?;
            let _ = std::fs::remove_file(file);
            stream.write_all(format!("OK {}\n", data.len()).as_bytes())?;
            stream.write_all(&data)
        }
        Ok(false) => stream.write_all(b"NOTFOUND\n"),
        Err(e) => {
            let msg = careplane_backup::error_chain(&e).replace('\n', " ");
            stream.write_all(format!("ERR {msg}\n").as_bytes())
        }
    }
}

/// `careplane backup-wal fetch --socket S %f %p`: the client of
/// [`WalServer`], run by the scratch server as the service user. Exit 0
/// with the file written, 1 when the repository has no such file (the end
/// of recovery), 2 on an error.
pub fn backup_wal_fetch(socket: &Path, name: &str, dest: &Path) -> Result<u8, String> {
    use std::io::{BufRead, Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(WAL_IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WAL_IO_TIMEOUT)))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    stream
        .write_all(format!("{name}\n").as_bytes())
        .map_err(|e| format!("asking for WAL file {name}: {e}"))?;
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    reader
        .read_line(&mut head)
        .map_err(|e| format!("reading the answer for WAL file {name}: {e}"))?;
    let head = head.trim_end();
    if head == "NOTFOUND" {
        return Ok(1);
    }
    if let Some(msg) = head.strip_prefix("ERR ") {
        return Err(format!("restoring WAL file {name}: {msg}"));
    }
    let len: u64 = head
        .strip_prefix("OK ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("WAL file {name}: unexpected answer {head:?}"))?;
    let mut data = Vec::new();
    reader
        .take(len)
        .read_to_end(&mut data)
        .map_err(|e| format!("receiving WAL file {name}: {e}"))?;
    if data.len() as u64 != len {
        return Err(format!(
            "WAL file {name}: received {} of {len} bytes",
            data.len()
        ));
    }
    std::fs::write(dest, &data).map_err(|e| format!("writing {}: {e}", dest.display()))?;
    Ok(0)
}

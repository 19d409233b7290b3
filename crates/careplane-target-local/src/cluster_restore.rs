//! `careplane backup restore-cluster`: a whole PostgreSQL cluster brought
//! back from its base backup and archived WAL when it is lost (its data
//! directory gone or corrupt, the postmaster will not start). The same path
//! as the RPO benchmark (`careplane-backup/benches/rpo.rs`):
//! `pg::restore_base_backup`, WAL replay through `restore_command`,
//! promotion (docs/design/0010, "Restoring a lost cluster").
//!
//! Order, under the apply lock:
//! 1. checks that change nothing: the cluster and its repository (readable,
//!    a base backup, the target inside the window), and a running cluster
//!    that answers is refused without `--force`;
//! 2. the intent is recorded on the cluster's record
//!    (`observed.clusterRestore`: where the old data directory goes), the
//!    environments on the cluster go behind the maintenance page and their
//!    Odoo stops, the cluster stops;
//! 3. the old data directory is renamed to `<root>/data.lost-<stamp>`
//!    (never deleted), the base backup restored into `<root>/data` as the
//!    service user's, the managed configuration written with
//!    `restore_command` (careplane's WAL server, as a tenant restore's
//!    scratch server uses), the recovery target and `recovery.signal`;
//! 4. the cluster starts, replays, promotes; the recovered point is read;
//! 5. it restarts with its normal configuration (archiving on, no recovery
//!    settings), the evidence goes on its record, the environments come back.
//!
//! A run killed or failed after 2 leaves the intent: the next run keeps the
//! moved-aside directory, removes its own half-restored one and starts over
//! (a cluster answering then is not refused: it is that half-restored one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use careplane_backup::tenant::{self, Target};
use careplane_backup::{Manifest, Timestamp};
use careplane_engine::{BackupEvent, ClusterRestoreOutcome, ClusterRestoreRequest, RestorePoint};
use careplane_local::pg::PgCluster;
use careplane_state::{ResourceRecord, ResourceStatus};
use serde_json::{json, Value};

use crate::backup::{berr, cluster_repo_of, err, label, rfc3339};
use crate::restore::{ensure_dir, refused, wal_fetch_command, WalServer, RECOVERY_TIMEOUT};
use crate::runtime;
use crate::{Error, LocalDriver};

/// The last lines of the cluster's newest server log.
fn log_tail(cluster: &PgCluster) -> String {
    let text = std::fs::read_to_string(cluster.latest_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether the cluster runs and answers a query as its superuser.
fn healthy(cluster: &PgCluster) -> bool {
    cluster.running_pid().is_some()
        && cluster
            .admin()
            .ok()
            .and_then(|mut c| c.query_one("SELECT 1", &[]).ok())
            .is_some()
}

/// Stops the cluster's postmaster: `pg_ctl stop -m fast`, and SIGKILL when
/// that fails (a server that will not stop is what this command replaces).
fn stop_hard(cluster: &PgCluster) -> Result<(), Error> {
    let Some(pid) = cluster.running_pid() else {
        return Ok(());
    };
    if cluster.stop().is_ok() && cluster.running_pid().is_none() {
        return Ok(());
    }
    // SAFETY: kill(2) of the postmaster named by the cluster's own pid file,
    // checked to be a live postgres process by running_pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while careplane_local::system::pid_alive(pid) {
        if Instant::now() >= deadline {
            return Err(err(format!(
                "PostgreSQL cluster {}: the postmaster (pid {pid}) did not stop",
                cluster.name
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// An environment on the cluster: `<tenant>/<env>` and its Odoo record.
struct Env {
    name: String,
    odoo: Option<ResourceRecord>,
}

impl LocalDriver {
    /// See the module's documentation.
    pub(crate) fn restore_cluster(
        &mut self,
        req: &ClusterRestoreRequest,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<ClusterRestoreOutcome, Error> {
        let _lock = careplane_state::lock(&self.data_dir, "backup restore-cluster")?;
        let started = Instant::now();
        let started_at = Timestamp::now();
        let cluster_id = careplane_model::pg_cluster_id(&req.scope);

        // 1. Checks; nothing changes.
        let all = self.records()?;
        let crec = all
            .iter()
            .find(|r| r.id == cluster_id)
            .cloned()
            .ok_or_else(|| {
                refused(format!(
                    "careplane holds no cluster {cluster_id} (see `careplane status`)"
                ))
            })?;
        let Some((repo_url, _)) = cluster_repo_of(&crec) else {
            return Err(refused(format!(
                "{cluster_id} never archived its WAL: there is nothing to restore it from"
            )));
        };
        let unreadable = |e: String| {
            refused(format!(
                "the repository {repo_url} of {cluster_id} cannot be read: {e}"
            ))
        };
        let repo = self
            .open_cluster_repo(&crec)
            .map_err(|e| unreadable(e.to_string()))?;
        let mut bases: Vec<Manifest> = repo
            .list_backups()
            .map_err(|e| unreadable(careplane_backup::error_chain(&e)))?
            .into_iter()
            .filter(|m| label(m, "kind") == "base")
            .collect();
        bases.sort_by_key(|m| m.finished);
        let Some(newest) = bases.last().cloned() else {
            return Err(refused(format!(
                "the repository {repo_url} of {cluster_id} holds no base backup (`careplane \
                 backup create <tenant>/<env>` of an environment on it takes one)"
            )));
        };
        let (base, target, target_text) = match &req.point {
            None => (newest, None, "end of archived WAL".to_string()),
            Some(RestorePoint::Time(text)) => {
                let t = crate::restore::parse_past_time(text)?;
                let Some(b) = bases.iter().rfind(|m| m.finished <= t) else {
                    let oldest = &bases[0];
                    return Err(refused(format!(
                        "--to-time {t} is before the oldest base backup of {cluster_id} ({} \
                         finished {}): it cannot be restored to",
                        oldest.id, oldest.finished
                    )));
                };
                // Recovery to T stops at the first commit after T; an archive
                // written entirely before T holds none, and PostgreSQL would
                // stop with the cluster half-replaced.
                let newest = repo
                    .newest_wal()
                    .map_err(|e| unreadable(careplane_backup::error_chain(&e)))?;
                if let Some((name, at)) = newest.filter(|(_, at)| t >= *at) {
                    return Err(refused(format!(
                        "--to-time {t} is after the last archived WAL of {cluster_id} ({name},                          archived {at}): nothing later can be recovered; leave --to-time out to                          recover to the end of the archive"
                    )));
                }
                (b.clone(), Some(Target::Time(t)), rfc3339(t))
            }
            Some(RestorePoint::Backup(id)) => {
                let Some(b) = bases.iter().find(|m| &m.id == id) else {
                    return Err(refused(format!(
                        "{id} is no base backup of {cluster_id} (the `clusterBackup` of `careplane \
                         backup list --output json`)"
                    )));
                };
                (
                    b.clone(),
                    Some(Target::EndOfBackup),
                    format!("end of backup {id}"),
                )
            }
        };
        let wal = repo
            .list_wal()
            .map_err(|e| unreadable(careplane_backup::error_chain(&e)))?;
        if label(&base, "method") == "direct" {
            let first = label(&base, "wal.start");
            if !first.is_empty() && !wal.iter().any(|w| w == first) {
                return Err(refused(format!(
                    "the repository {repo_url} lacks WAL file {first}, where base backup {} \
                     starts: it cannot be recovered",
                    base.id
                )));
            }
        }
        if let Some(why) = self.base_key_problem(&repo, &base, &cluster_id) {
            return Err(refused(why));
        }
        let cluster = self.with_host(|d, h| d.cluster_handle(&crec, h))?;
        let resumed = crec.observed.get("clusterRestore").cloned();
        if resumed.is_none() && !req.force && healthy(&cluster) {
            return Err(refused(format!(
                "{cluster_id} is running and answers: restoring it replaces every tenant's data \
                 on it with the backup's; give --force to do that anyway"
            )));
        }
        let envs = self.envs_on(&all, &cluster_id);

        // 2. The intent, then the environments and the cluster stopped.
        let root = cluster.root.clone();
        let data = cluster.data_dir();
        let lost: Option<PathBuf> = match resumed
            .as_ref()
            .and_then(|r| r.get("lost"))
            .and_then(Value::as_str)
        {
            Some(p) => Some(PathBuf::from(p)),
            None if resumed.is_some() => None,
            None if std::fs::symlink_metadata(&data).is_ok() => Some(lost_path(&root)),
            None => None,
        };
        // The timeline to follow, fixed by the first run: a run killed after
        // its promotion archived a timeline of its own, which `latest` would
        // follow on the next run.
        let timeline = resumed
            .as_ref()
            .and_then(|r| r.get("timeline"))
            .and_then(Value::as_u64)
            .map(|t| t as u32)
            .unwrap_or_else(|| newest_timeline(&wal, label(&base, "wal.start")));
        self.set_cluster_intent(
            &cluster_id,
            Some(json!({
                "timeline": timeline,
                "lost": lost.as_ref().map(|p| p.display().to_string()),
                "started": rfc3339(started_at),
                "backup": base.id,
                "target": target_text,
            })),
        )?;
        for e in &envs {
            if let Some(o) = &e.odoo {
                progress(BackupEvent::Phase(format!("stopping Odoo of {}", e.name)));
                self.set_maintenance(&o.id, true)?;
                self.stop_odoo_env(o)?;
            }
        }
        careplane_engine::crash_point(&cluster_id, "restore-cluster-stopped-envs");
        progress(BackupEvent::Phase(format!("stopping {cluster_id}")));
        let result = self.replace_data_dir(
            req,
            &crec,
            &cluster,
            &base,
            target,
            timeline,
            &target_text,
            lost.as_deref(),
            progress,
        );
        let (recovered, files_ms, recovery_ms, bytes_restored) = match result {
            Ok(v) => v,
            Err(e) => {
                // A half-recovered server must not run on (nor archive).
                let _ = stop_hard(&cluster);
                let kept = match &lost {
                    Some(p) if p.exists() => {
                        format!("; the replaced data directory is kept at {}", p.display())
                    }
                    _ => String::new(),
                };
                return Err(err(format!(
                    "{e}{kept}; the environments on {cluster_id} stay stopped: run `careplane \
                     backup restore-cluster {} --confirm {}` again",
                    req.scope, req.scope
                )));
            }
        };

        // 5. Evidence, then the environments back.
        let mut problems = Vec::new();
        let mut brought_back = Vec::new();
        for e in &envs {
            if let Some(o) = &e.odoo {
                progress(BackupEvent::Phase(format!("starting Odoo of {}", e.name)));
                let r = self
                    .start_odoo_env(o)
                    .and_then(|_| self.set_maintenance(&o.id, false).map(|_| ()))
                    .and_then(|()| self.ensure_probe_user_of(o));
                match r {
                    Ok(()) => brought_back.push(e.name.clone()),
                    Err(x) => problems.push(format!("{}: {x}", e.name)),
                }
            } else {
                brought_back.push(e.name.clone());
            }
        }
        let duration = started.elapsed();
        let outcome = ClusterRestoreOutcome {
            cluster: cluster_id.clone(),
            cluster_backup: base.id.clone(),
            target: target_text,
            recovered_to: recovered.recovered_to,
            replayed_lsn: recovered.replayed_lsn,
            timeline: recovered.timeline,
            lost_data_dir: lost
                .as_ref()
                .filter(|p| p.exists())
                .map(|p| p.display().to_string()),
            started: rfc3339(started_at),
            finished: rfc3339(Timestamp::now()),
            duration_ms: duration.as_millis() as u64,
            files_ms,
            recovery_ms,
            bytes_restored,
            environments: brought_back,
        };
        let mut rec = self
            .store()?
            .resource(&cluster_id)?
            .ok_or_else(|| err(format!("{cluster_id} vanished during the restore")))?;
        rec.observed["lastClusterRestore"] = serde_json::to_value(&outcome)
            .map_err(|e| err(format!("recording the restore: {e}")))?;
        if let Some(p) = &outcome.lost_data_dir {
            let mut kept: Vec<Value> = rec
                .observed
                .get("lostDataDirs")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !kept.iter().any(|v| v.as_str() == Some(p)) {
                kept.push(json!(p));
            }
            rec.observed["lostDataDirs"] = json!(kept);
        }
        if let Some(o) = rec.observed.as_object_mut() {
            o.remove("clusterRestore");
        }
        self.store()?.put_resource(&rec)?;
        if !problems.is_empty() {
            return Err(err(format!(
                "{cluster_id} was restored (recovered to {}), but environments did not come \
                 back: {}; `careplane apply` starts them",
                outcome.recovered_to.as_deref().unwrap_or("?"),
                problems.join("; ")
            )));
        }
        Ok(outcome)
    }

    /// Steps 2 (the cluster stopped) to 4 and the restart with the normal
    /// configuration: the recovered point, the milliseconds spent restoring
    /// files and replaying, and the bytes restored.
    #[allow(clippy::too_many_arguments)]
    fn replace_data_dir(
        &mut self,
        req: &ClusterRestoreRequest,
        crec: &ResourceRecord,
        cluster: &PgCluster,
        base: &Manifest,
        target: Option<Target>,
        timeline: u32,
        target_text: &str,
        lost: Option<&Path>,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<(Recovered, u64, u64, u64), Error> {
        let cluster_id = crec.id.clone();
        stop_hard(cluster)?;
        let data = cluster.data_dir();
        // 3. The old directory aside (once), or a killed run's own
        // half-restored one removed.
        let data_present = std::fs::symlink_metadata(&data).is_ok();
        match lost {
            Some(lost) if !lost.exists() && data_present => {
                progress(BackupEvent::Phase(format!(
                    "moving {} aside to {}",
                    data.display(),
                    lost.display()
                )));
                std::fs::rename(&data, lost).map_err(|e| Error::Io {
                    what: format!("moving {} to {}", data.display(), lost.display()),
                    source: e,
                })?;
            }
            _ if data_present => {
                // The intent says the original is aside already (or there
                // was none): what is here is a killed run's restore.
                std::fs::remove_dir_all(&data).map_err(|e| Error::Io {
                    what: format!(
                        "removing {}, left half-restored by an interrupted restore",
                        data.display()
                    ),
                    source: e,
                })?;
            }
            _ => {}
        }
        careplane_engine::crash_point(&cluster_id, "restore-cluster-moved");
        let owner = self.with_host(|d, h| d.service_owner(h))?;
        let t_files = Instant::now();
        progress(BackupEvent::Phase(format!(
            "restoring base backup {} into {}",
            base.id,
            data.display()
        )));
        let repo = self.open_cluster_repo(crec)?;
        let bytes = careplane_backup::pg::restore_base_backup(&repo, &base.id, &data, owner)
            .map_err(berr(&format!(
                "restoring base backup {} into {}",
                base.id,
                data.display()
            )))?;
        let files_ms = t_files.elapsed().as_millis() as u64;
        careplane_engine::crash_point(&cluster_id, "restore-cluster-files");

        // The directory careplane did not initdb is its data directory now;
        // the archiver's program and keys (in the root's conf/, which may be
        // gone too) and the TLS files are written again as apply would.
        cluster.mark_initialized()?;
        // The stored record, intent included: ensure_archiving writes it back
        // whole, and a stale copy would drop the intent a re-run needs.
        let mut crec = self
            .store()?
            .resource(&cluster_id)?
            .ok_or_else(|| err(format!("{cluster_id} vanished during the restore")))?;
        self.with_host(|d, h| d.ensure_archiving(&mut crec, h))?;
        let tls = self.cluster_tls(&mut crec)?;
        let restore_dir = self.data_dir.join("restore");
        ensure_dir(&restore_dir, 0o711)?;
        let socket = restore_dir.join(format!("cluster-{}.sock", req.scope));
        let wal_server = WalServer::start(
            self.open_cluster_repo(&crec)?,
            &socket,
            &restore_dir.join(format!("cluster-{}.tmp", req.scope)),
            owner,
        )?;
        let mut recovering = self.with_host(|d, h| d.cluster_handle(&crec, h))?;
        for (k, v) in recovery_settings(&crec, &socket, target, timeline) {
            recovering.settings.insert(k, v);
        }
        recovering.init(&tls)?;
        let all = self.records()?;
        recovering.write_hba(&runtime::hba_entries(&all, &cluster_id)?)?;
        for stale in ["standby.signal", "postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(data.join(stale));
        }
        write_owned(&data.join("recovery.signal"), owner)?;

        // 4. Replay and promotion.
        let t_recovery = Instant::now();
        progress(BackupEvent::Phase(format!(
            "recovering {cluster_id} to {target_text}"
        )));
        recovering.start().map_err(|e| {
            err(format!(
                "{cluster_id} did not start recovering: {e}\nserver log:\n{}",
                log_tail(&recovering)
            ))
        })?;
        let recovered = wait_promoted(&recovering, &cluster_id)?;
        careplane_engine::crash_point(&cluster_id, "restore-cluster-promoted");
        let recovery_ms = t_recovery.elapsed().as_millis() as u64;
        drop(wal_server);

        // Back to careplane's own configuration: archiving on, no recovery
        // settings left for the next start.
        progress(BackupEvent::Phase(format!(
            "restarting {cluster_id} with its configuration"
        )));
        let normal = self.with_host(|d, h| d.cluster_handle(&crec, h))?;
        // Stopped first: init reloads a running server, which refuses a
        // reload that changes the recovery settings.
        normal.stop()?;
        normal.init(&tls)?;
        let pid = normal.start()?;
        let timeline: Option<i32> = normal.admin().ok().and_then(|mut c| {
            c.query_one(
                "SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()",
                &[],
            )
            .ok()
            .map(|r| r.get(0))
        });
        let mut rec = self
            .store()?
            .resource(&cluster_id)?
            .ok_or_else(|| err(format!("{cluster_id} vanished during the restore")))?;
        rec.observed["pid"] = json!(pid);
        self.store()?.put_resource(&rec)?;
        Ok((
            Recovered {
                timeline: timeline.map(|t| t as u32),
                ..recovered
            },
            files_ms,
            recovery_ms,
            bytes,
        ))
    }

    /// The environments whose databases are on `cluster_id`.
    fn envs_on(&self, all: &[ResourceRecord], cluster_id: &str) -> Vec<Env> {
        all.iter()
            .filter(|r| r.kind == "pg-database")
            .filter(|r| r.props.get("cluster").and_then(Value::as_str) == Some(cluster_id))
            .filter_map(|r| {
                let (t, e) = r.id.strip_prefix("pg-database/")?.split_once('/')?;
                let odoo_id = careplane_model::odoo_env_id(t, e);
                let odoo = all
                    .iter()
                    .find(|o| o.id == odoo_id && o.status == ResourceStatus::Ready)
                    .cloned();
                Some(Env {
                    name: format!("{t}/{e}"),
                    odoo,
                })
            })
            .collect()
    }

    fn cluster_tls(
        &mut self,
        crec: &mut ResourceRecord,
    ) -> Result<careplane_local::pg::TlsFiles, Error> {
        let scope = runtime::str_prop(crec, "scope")?.to_string();
        self.server_tls(crec, &format!("careplane pg {scope}"))
    }

    fn set_cluster_intent(&mut self, id: &str, intent: Option<Value>) -> Result<(), Error> {
        let mut rec = self
            .store()?
            .resource(id)?
            .ok_or_else(|| err(format!("{id} is not recorded")))?;
        match intent {
            Some(v) => rec.observed["clusterRestore"] = v,
            None => {
                if let Some(o) = rec.observed.as_object_mut() {
                    o.remove("clusterRestore");
                }
            }
        }
        self.store()?.put_resource(&rec)?;
        Ok(())
    }
}

/// What replay reached.
struct Recovered {
    recovered_to: Option<String>,
    replayed_lsn: Option<String>,
    timeline: Option<u32>,
}

/// The newest timeline the repository knows (its highest `.history` file,
/// or that of the base backup's first WAL file `base_start`): what
/// `recovery_target_timeline = 'latest'` would follow now.
fn newest_timeline(wal: &[String], base_start: &str) -> u32 {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let from_history = wal
        .iter()
        .filter_map(|n| n.strip_suffix(".history"))
        .filter_map(hex);
    let from_base = base_start.get(..8).and_then(hex);
    from_history.chain(from_base).max().unwrap_or(1)
}

/// `<root>/data.lost-<UTC stamp>`, unused so far.
fn lost_path(root: &Path) -> PathBuf {
    let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let mut path = root.join(format!("data.lost-{stamp}"));
    let mut n = 1;
    while std::fs::symlink_metadata(&path).is_ok() {
        n += 1;
        path = root.join(format!("data.lost-{stamp}-{n}"));
    }
    path
}

/// The settings of the recovering start: WAL from careplane's WAL server
/// (careplane's identity stays in this process), the target, promotion.
/// Archiving stays on: what the promoted cluster writes on its new timeline
/// (and the timeline's history file) must reach the repository, or a later
/// recovery could not follow it.
fn recovery_settings(
    crec: &ResourceRecord,
    socket: &Path,
    target: Option<Target>,
    timeline: u32,
) -> Vec<(String, String)> {
    let mut out = vec![
        ("restore_command".into(), wal_fetch_command(crec, socket)),
        ("recovery_target_action".into(), "promote".into()),
        ("recovery_target_timeline".into(), timeline.to_string()),
    ];
    match target {
        Some(Target::Time(t)) => {
            out.push(("recovery_target_time".into(), tenant::pg_timestamp(&t)));
            out.push(("recovery_target_inclusive".into(), "on".into()));
        }
        Some(Target::EndOfBackup) => out.push(("recovery_target".into(), "immediate".into())),
        None => {}
    }
    out
}

fn write_owned(path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| Error::Io {
        what: format!("writing {}", path.display()),
        source: e,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io)?;
    }
    Ok(())
}

/// Waits (bounded) until the recovering cluster has promoted, and reads the
/// point replay reached. A server that stops first (a target past the
/// archived WAL, a WAL object failing its check) is reported with its log.
fn wait_promoted(cluster: &PgCluster, cluster_id: &str) -> Result<Recovered, Error> {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        if cluster.running_pid().is_none() {
            return Err(err(format!(
                "{cluster_id} stopped before recovery finished (a target the archived WAL \
                 does not reach, or a WAL file that failed its check); server log:\n{}",
                log_tail(cluster)
            )));
        }
        if let Ok(mut c) = cluster.admin() {
            let in_recovery = c
                .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(true);
            if !in_recovery {
                let row = c
                    .query_one(
                        "SELECT (extract(epoch FROM pg_catalog.pg_last_xact_replay_timestamp()) \
                                 * 1000000)::int8, pg_catalog.pg_last_wal_replay_lsn()::text",
                        &[],
                    )
                    .map_err(|e| err(format!("{cluster_id}: reading the recovered point: {e}")))?;
                let recovered_to = row
                    .get::<_, Option<i64>>(0)
                    .and_then(|us| Timestamp::from_microsecond(us).ok())
                    .map(rfc3339);
                return Ok(Recovered {
                    recovered_to,
                    replayed_lsn: row.get(1),
                    timeline: None,
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "{cluster_id}: recovery did not finish within {} s; server log:\n{}",
                RECOVERY_TIMEOUT.as_secs(),
                log_tail(cluster)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::newest_timeline;

    #[test]
    fn the_timeline_followed_is_the_newest_history_or_the_base_backups() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(newest_timeline(&[], "000000010000000000000003"), 1);
        assert_eq!(newest_timeline(&[], ""), 1);
        let wal = names(&[
            "000000010000000000000003",
            "00000002.history",
            "000000020000000000000004",
            "0000000A.history",
            "000000010000000000000003.00000028.backup",
        ]);
        assert_eq!(newest_timeline(&wal, "000000010000000000000003"), 10);
        // A base backup taken on a later timeline than any history names.
        assert_eq!(
            newest_timeline(&names(&["00000002.history"]), "0000000C0000000000000009"),
            12
        );
    }
}

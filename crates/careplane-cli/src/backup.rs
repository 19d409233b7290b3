//! `careplane backup …` and the hidden `careplane backup-wal …`: argument
//! parsing and rendering only; the work is the engine's (docs/design/0010).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use careplane_engine::{
    BackupEvent, BackupSummary, ClusterRestoreRequest, RestorePoint, RestoreRequest, Status,
};
use clap::Subcommand;

use crate::{load, print_json, print_table, write_out, Files, Output};

#[derive(Subcommand)]
pub(crate) enum BackupCommand {
    /// Back up one environment: a base backup of its PostgreSQL cluster
    /// (incremental from the cluster's last one), its filestore, and what
    /// was read from its database as its own role (versions, modules, row
    /// counts and checksums per table), into the tenant's repository.
    Create {
        #[command(flatten)]
        files: Files,
        /// `<tenant>/<environment>`.
        environment: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Backups of one environment, or of every tenant, oldest first.
    List {
        #[command(flatten)]
        files: Files,
        /// `<tenant>/<environment>`; all when left out.
        environment: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// One backup: where it is, what it holds, the facts it recorded.
    Show {
        #[command(flatten)]
        files: Files,
        id: String,
        /// The customer's age identity file (as `age-keygen` writes it) for
        /// backups whose policy has `careplaneKey: false`: tried with
        /// careplane's own key, read for this command only, never stored
        /// or printed.
        #[arg(long, value_name = "FILE", env = "CAREPLANE_BACKUP_IDENTITY_FILE")]
        identity: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Check every object of a backup and of its cluster's base backup
    /// against the signed manifest (exit 1 naming the first bad object).
    ///
    /// With `--restore <tenant>/<environment>`: the environment's newest
    /// backup (or `--backup ID`) is deep-verified, recovered into a scratch
    /// PostgreSQL to the end of its base backup, and every table's row
    /// count and checksum, read there as the tenant's role, compared with
    /// the facts the backup's first restore verification recorded (the
    /// first one records them). The result is kept as evidence (`backup
    /// show`, `status`).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["id", "restore"])))]
    Verify {
        #[command(flatten)]
        files: Files,
        id: Option<String>,
        /// Also decrypt and decompress every object.
        #[arg(long)]
        deep: bool,
        /// `<tenant>/<environment>`: prove a backup of it by restoring it.
        #[arg(long, value_name = "TENANT/ENV", conflicts_with = "id")]
        restore: Option<String>,
        /// With --restore: which backup (default: the newest).
        #[arg(long, requires = "restore")]
        backup: Option<String>,
        /// The customer's age identity file (as `age-keygen` writes it) for
        /// backups whose policy has `careplaneKey: false`: tried with
        /// careplane's own key, read for this command only, never stored
        /// or printed.
        #[arg(long, value_name = "FILE", env = "CAREPLANE_BACKUP_IDENTITY_FILE")]
        identity: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Take one environment's database back to a point in time on its
    /// (possibly shared) cluster, and its filestore to the files referenced
    /// then, while every other tenant of the cluster keeps running.
    ///
    /// Takes a `pre-restore` backup of the environment first, recovers the
    /// database in a scratch PostgreSQL (only its files restored), copies it
    /// into a new database as the tenant's own role, then swaps it in behind
    /// the maintenance page and restarts Odoo. Anything that fails before
    /// the swap leaves the environment untouched; a failure after it puts
    /// the old database and filestore back. The replaced database is
    /// dropped once Odoo answers, unless --keep-pre-restore.
    #[command(group(clap::ArgGroup::new("point").required(true).args(["to_time", "backup"])))]
    Restore {
        #[command(flatten)]
        files: Files,
        /// `<tenant>/<environment>` whose backups to restore from.
        environment: String,
        /// RFC 3339 time (e.g. 2026-12-02T10:42:17Z): the last commit at or
        /// before it. Not in the future, not before the oldest backup.
        #[arg(long)]
        to_time: Option<String>,
        /// An environment backup id: the end of its cluster base backup.
        #[arg(long)]
        backup: Option<String>,
        /// Restore into another environment of the same tenant on the same
        /// cluster (`<tenant>/<environment>`, e.g. a staging copy) instead of
        /// in place; it gets its own Odoo identity.
        #[arg(long = "as", value_name = "TENANT/ENV")]
        into: Option<String>,
        /// Keep the replaced database (`<db>_pre_restore_<stamp>`, closed to
        /// connections; shown by `status`, dropped by `destroy`).
        #[arg(long)]
        keep_pre_restore: bool,
        /// The customer's age identity file (as `age-keygen` writes it) for
        /// backups whose policy has `careplaneKey: false`: tried with
        /// careplane's own key, read for this command only, never stored
        /// or printed.
        #[arg(long, value_name = "FILE", env = "CAREPLANE_BACKUP_IDENTITY_FILE")]
        identity: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Bring a lost PostgreSQL cluster back (its data directory gone or
    /// corrupt, the server will not start) from its base backup and archived
    /// WAL: every tenant's database on it as of the recovered point.
    ///
    /// Stops the environments on the cluster (maintenance page, Odoo
    /// stopped) and the cluster, moves the data directory aside to
    /// `<root>/data.lost-<stamp>` (kept, never deleted), restores the newest
    /// base backup before the target, replays WAL from the repository to
    /// the target (default: the end of the archived WAL), promotes, restarts
    /// with archiving on and brings the environments back. A cluster that
    /// runs and answers is refused without --force. Interrupted, it is run
    /// again.
    #[command(group(clap::ArgGroup::new("point").args(["to_time", "backup"])))]
    RestoreCluster {
        #[command(flatten)]
        files: Files,
        /// The cluster's scope: `shared`, or a dedicated cluster's tenant.
        cluster: String,
        /// RFC 3339 time: the last commit at or before it. Not in the
        /// future, not before the cluster's oldest base backup.
        #[arg(long)]
        to_time: Option<String>,
        /// A base backup of the cluster (`clusterBackup` in `backup list`):
        /// the end of that backup.
        #[arg(long)]
        backup: Option<String>,
        /// The cluster's scope again: every tenant's data on it is replaced.
        #[arg(long, value_name = "CLUSTER", required = true)]
        confirm: String,
        /// Restore even though the cluster runs and answers.
        #[arg(long)]
        force: bool,
        /// The customer's age identity file (as `age-keygen` writes it) for
        /// backups whose policy has `careplaneKey: false`: tried with
        /// careplane's own key, read for this command only, never stored
        /// or printed.
        #[arg(long, value_name = "FILE", env = "CAREPLANE_BACKUP_IDENTITY_FILE")]
        identity: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete the backups no retention rule keeps, the WAL no kept base
    /// backup needs, and objects nothing references.
    Prune {
        #[command(flatten)]
        files: Files,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Ship the files an environment's filestore gained since its newest
    /// backup (and the shipments since) into its tenant's repository, so
    /// that `restore --to-time` finds a file added after the backup and
    /// deleted before the restore. `run-due` (and so `careplane serve`)
    /// does this for every environment whose tier names a backup policy;
    /// this runs it now, for one environment or all.
    ///
    /// Files are read without following any symlink: a link (or anything
    /// but a regular file) in the filestore is listed as skipped, never
    /// read. A file named like Odoo's (its SHA-1) whose content does not
    /// match the name yet (still being written) is deferred to the next
    /// shipment. Shipments are kept while a restore inside the policy's
    /// PITR window may need them (`prune`).
    ShipFilestore {
        #[command(flatten)]
        files: Files,
        /// `<tenant>/<environment>`; every environment when left out.
        environment: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run once what is due: scheduled backups and verifications, filestore
    /// shipments, then pruning (for a systemd timer or cron, e.g. every
    /// 5 minutes).
    RunDue {
        #[command(flatten)]
        files: Files,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Progress on stderr: a spinner with bytes on a terminal, one line per
/// phase otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
    tty: bool,
}

impl Progress {
    fn new() -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = indicatif::ProgressBar::hidden();
        if tty {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                    .expect("static template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
        }
        Progress { bar, tty }
    }

    fn event(&self, ev: BackupEvent) {
        match ev {
            BackupEvent::Phase(p) => {
                if self.tty {
                    self.bar.set_position(0);
                    self.bar.set_message(p);
                } else {
                    errln!("{p} ...");
                }
            }
            BackupEvent::Bytes(n) => self.bar.set_position(n),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Gives the engine the customer's identities from `--identity FILE`; the
/// file's content is in no error (careplane-backup names file and line).
fn use_identity(engine: &careplane_engine::Engine, file: Option<&std::path::Path>) -> Result<()> {
    if let Some(file) = file {
        let ids = careplane_target_local::read_identity_file(file)
            .map_err(|e| anyhow::anyhow!("--identity: {e}"))?;
        engine.set_backup_identities(ids);
    }
    Ok(())
}

fn split_env(arg: &str) -> Result<(&str, &str)> {
    match arg.split_once('/') {
        Some((t, e)) if !t.is_empty() && !e.is_empty() && !e.contains('/') => Ok((t, e)),
        _ => {
            bail!("{arg:?}: name an environment as <tenant>/<environment>, e.g. stmarys/production")
        }
    }
}

fn size(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

fn summary_rows(list: &[BackupSummary]) -> Vec<Vec<String>> {
    list.iter()
        .map(|b| {
            vec![
                b.id.clone(),
                format!("{}/{}", b.tenant, b.environment),
                b.finished.clone(),
                b.reason.clone(),
                size(b.plain_bytes),
                size(b.new_stored_bytes),
            ]
        })
        .collect()
}

pub(crate) fn run(cmd: BackupCommand) -> Result<ExitCode> {
    match cmd {
        BackupCommand::Create {
            files,
            environment,
            output,
        } => {
            let (t, e) = split_env(&environment)?;
            let engine = load(&files)?;
            let who = crate::access::caller(&engine);
            let p = Progress::new();
            let b = engine.backup_create(&who, t, e, &|ev| p.event(ev))?;
            drop(p);
            match output {
                Output::Json => print_json(&b)?,
                Output::Text => outln!(
                    "backup {} of {t}/{e}: {} read, {} new in {} (base backup {} of {})",
                    b.id,
                    size(b.plain_bytes),
                    size(b.new_stored_bytes),
                    b.repository,
                    b.cluster_backup.as_deref().unwrap_or("-"),
                    b.cluster
                ),
            }
        }
        BackupCommand::List {
            files,
            environment,
            output,
        } => {
            let scope = environment.as_deref().map(split_env).transpose()?;
            let engine = load(&files)?;
            let who = crate::access::caller(&engine);
            let list = engine.backup_list(&who, scope)?;
            match output {
                Output::Json => print_json(&list)?,
                Output::Text if list.is_empty() => outln!("No backups."),
                Output::Text => print_table(
                    &["ID", "ENVIRONMENT", "FINISHED", "REASON", "SIZE", "NEW"],
                    &["SIZE", "NEW"],
                    &summary_rows(&list),
                ),
            }
        }
        BackupCommand::Show {
            files,
            id,
            identity,
            output,
        } => {
            let engine = load(&files)?;
            use_identity(&engine, identity.as_deref())?;
            let who = crate::access::caller(&engine);
            let d = engine.backup_show(&who, &id)?;
            match output {
                Output::Json => print_json(&d)?,
                Output::Text => {
                    let s = &d.summary;
                    outln!("backup       {}", s.id);
                    outln!("environment  {}/{}", s.tenant, s.environment);
                    outln!("finished     {} (started {})", s.finished, s.started);
                    outln!("repository   {}", s.repository);
                    outln!(
                        "database     base backup {} of {} in {}",
                        s.cluster_backup.as_deref().unwrap_or("-"),
                        s.cluster,
                        s.cluster_repository.as_deref().unwrap_or("-")
                    );
                    outln!(
                        "versions     PostgreSQL {}, Odoo {}",
                        d.postgres_version.as_deref().unwrap_or("?"),
                        d.odoo_version.as_deref().unwrap_or("?")
                    );
                    outln!("modules      {}", d.modules.join(", "));
                    outln!(
                        "filestore    {} files, {}",
                        d.filestore_files,
                        size(d.filestore_bytes)
                    );
                    outln!();
                    let rows: Vec<Vec<String>> = d
                        .tables
                        .iter()
                        .map(|t| vec![t.table.clone(), t.rows.to_string(), t.checksum.clone()])
                        .collect();
                    print_table(&["TABLE", "ROWS", "CHECKSUM"], &["ROWS"], &rows);
                }
            }
        }
        BackupCommand::Verify {
            files,
            restore: Some(target),
            backup,
            identity,
            output,
            ..
        } => {
            let Some((tenant, env)) = target.split_once('/') else {
                bail!("--restore {target:?}: expected <tenant>/<environment>");
            };
            let engine = load(&files)?;
            use_identity(&engine, identity.as_deref())?;
            let who = crate::access::caller(&engine);
            let p = Progress::new();
            let r = engine
                .backup_verify_restore(&who, tenant, env, backup.as_deref(), &|ev| p.event(ev));
            drop(p);
            match (r, output) {
                (Ok(c), Output::Json) => {
                    let mut j = serde_json::to_value(&c)?;
                    j["ok"] = true.into();
                    print_json(&j)?;
                }
                (Ok(c), Output::Text) => outln!(
                    "ok: backup {} of {}/{} restored{} in {} ms: {} tables, {} rows {}",
                    c.backup,
                    c.tenant,
                    c.environment,
                    c.recovered_to
                        .as_deref()
                        .map(|t| format!(" to {t}"))
                        .unwrap_or_default(),
                    c.duration_ms,
                    c.tables,
                    c.rows,
                    if c.outcome == "baseline" {
                        "recorded as its verified facts (its first restore verification)"
                            .to_string()
                    } else {
                        format!(
                            "equal to its verified facts ({})",
                            c.baseline.as_deref().unwrap_or("-")
                        )
                    }
                ),
                (Err(e), Output::Json) => {
                    print_json(&serde_json::json!({
                        "restore": target, "backup": backup, "ok": false, "error": e.to_string()
                    }))?;
                    errln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                (Err(e), Output::Text) => return Err(e.into()),
            }
        }
        BackupCommand::Verify {
            files,
            id: Some(id),
            deep,
            identity,
            output,
            ..
        } => {
            let engine = load(&files)?;
            use_identity(&engine, identity.as_deref())?;
            let who = crate::access::caller(&engine);
            let p = Progress::new();
            let r = engine.backup_verify(&who, &id, deep, &|ev| p.event(ev));
            drop(p);
            match (r, output) {
                (Ok(v), Output::Json) => {
                    let mut j = serde_json::to_value(&v)?;
                    j["ok"] = true.into();
                    print_json(&j)?;
                }
                (Ok(v), Output::Text) => outln!(
                    "ok: backup {} of {}/{}: {} objects{}, base backup {} ({} objects) and {} filestore shipments ({} objects) match their signed manifests",
                    v.id,
                    v.tenant,
                    v.environment,
                    v.objects,
                    if v.deep { " decrypted" } else { "" },
                    v.cluster_backup.as_deref().unwrap_or("-"),
                    v.cluster_objects,
                    v.shipments,
                    v.shipment_objects
                ),
                (Err(e), Output::Json) => {
                    print_json(&serde_json::json!({
                        "id": id, "deep": deep, "ok": false, "error": e.to_string()
                    }))?;
                    errln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                (Err(e), Output::Text) => return Err(e.into()),
            }
        }
        BackupCommand::Verify { .. } => bail!("verify needs a backup ID or --restore"),
        BackupCommand::Restore {
            files,
            environment,
            to_time,
            backup,
            into,
            keep_pre_restore,
            identity,
            output,
        } => {
            let (t, e) = split_env(&environment)?;
            let into = into
                .as_deref()
                .map(split_env)
                .transpose()?
                .map(|(t, e)| (t.to_string(), e.to_string()));
            let point = match (to_time, backup) {
                (Some(t), None) => RestorePoint::Time(t),
                (None, Some(b)) => RestorePoint::Backup(b),
                _ => bail!("give exactly one of --to-time and --backup"),
            };
            let req = RestoreRequest {
                tenant: t.to_string(),
                environment: e.to_string(),
                point,
                into,
                keep_pre_restore,
            };
            let engine = load(&files)?;
            use_identity(&engine, identity.as_deref())?;
            let p = Progress::new();
            let who = crate::access::caller(&engine);
            let r = engine.backup_restore(&who, &req, &|ev| p.event(ev))?;
            drop(p);
            match output {
                Output::Json => print_json(&r)?,
                Output::Text => {
                    outln!(
                        "restored {}/{} from {}/{} to {} (recovered to {}) in {:.1} s{}",
                        r.into_tenant,
                        r.into_environment,
                        r.tenant,
                        r.environment,
                        r.target,
                        r.recovered_to
                            .as_deref()
                            .unwrap_or("the end of the base backup"),
                        r.duration_ms as f64 / 1000.0,
                        match (&r.rto, r.rto_met) {
                            (Some(rto), Some(true)) => format!(" (within the tier's RTO {rto})"),
                            (Some(rto), Some(false)) => format!(" (OVER the tier's RTO {rto})"),
                            _ => String::new(),
                        }
                    );
                    outln!(
                        "  backup {} (base backup {}), {} filestore files",
                        r.backup,
                        r.cluster_backup,
                        r.filestore_files
                    );
                    if let Some(kept) = &r.pre_restore_database {
                        outln!("  the replaced database is kept as {kept}");
                    }
                    if !r.filestore_missing.is_empty() {
                        errln!(
                            "warning: {} files referenced at that point are in no backup: {}",
                            r.filestore_missing.len(),
                            r.filestore_missing.join(", ")
                        );
                    }
                }
            }
        }
        BackupCommand::RestoreCluster {
            files,
            cluster,
            to_time,
            backup,
            confirm,
            force,
            identity,
            output,
        } => {
            let point = match (to_time, backup) {
                (Some(t), None) => Some(RestorePoint::Time(t)),
                (None, Some(b)) => Some(RestorePoint::Backup(b)),
                (None, None) => None,
                _ => bail!("give at most one of --to-time and --backup"),
            };
            let req = ClusterRestoreRequest {
                scope: cluster,
                point,
                confirm,
                force,
            };
            let engine = load(&files)?;
            use_identity(&engine, identity.as_deref())?;
            let p = Progress::new();
            let who = crate::access::caller(&engine);
            let r = engine.backup_restore_cluster(&who, &req, &|ev| p.event(ev))?;
            drop(p);
            match output {
                Output::Json => print_json(&r)?,
                Output::Text => {
                    outln!(
                        "restored {} from base backup {} to {} (recovered to {}, timeline {}) in \
                         {:.1} s",
                        r.cluster,
                        r.cluster_backup,
                        r.target,
                        r.recovered_to
                            .as_deref()
                            .unwrap_or("the end of the base backup"),
                        r.timeline.map_or("?".to_string(), |t| t.to_string()),
                        r.duration_ms as f64 / 1000.0
                    );
                    if let Some(lost) = &r.lost_data_dir {
                        outln!("  the replaced data directory is kept at {lost}");
                    }
                    if !r.environments.is_empty() {
                        outln!("  environments back: {}", r.environments.join(", "));
                    }
                }
            }
        }
        BackupCommand::Prune { files, output } => {
            let engine = load(&files)?;
            let who = crate::access::caller(&engine);
            let p = Progress::new();
            let r = engine.backup_prune(&who, &|ev| p.event(ev))?;
            drop(p);
            match output {
                Output::Json => print_json(&r)?,
                Output::Text => {
                    for repo in &r.repositories {
                        outln!(
                            "{}: kept {}, deleted {}{}, {} WAL files, {} unreferenced objects ({})",
                            repo.repository,
                            repo.kept.len(),
                            repo.deleted.len(),
                            if repo.deleted.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", repo.deleted.join(", "))
                            },
                            repo.wal_deleted,
                            repo.gc_deleted_objects,
                            size(repo.gc_deleted_bytes)
                        );
                        for l in &repo.locked {
                            outln!("  {l}");
                        }
                        if repo.gc_locked_objects > 0 {
                            outln!(
                                "  {} unreferenced objects kept by object lock",
                                repo.gc_locked_objects
                            );
                        }
                    }
                }
            }
        }
        BackupCommand::ShipFilestore {
            files,
            environment,
            output,
        } => {
            let scope = environment.as_deref().map(split_env).transpose()?;
            let engine = load(&files)?;
            let who = crate::access::caller(&engine);
            let p = Progress::new();
            let r = engine.backup_ship_filestore(&who, scope, &|ev| p.event(ev))?;
            drop(p);
            match output {
                Output::Json => print_json(&r)?,
                Output::Text => {
                    for s in &r.shipments {
                        match (&s.id, &s.note) {
                            (Some(id), _) => outln!(
                                "{}/{}: shipment {id}: {} files, {}",
                                s.tenant,
                                s.environment,
                                s.files,
                                size(s.bytes)
                            ),
                            (None, Some(note)) => outln!("{}/{}: {note}", s.tenant, s.environment),
                            (None, None) => {
                                outln!("{}/{}: nothing new to ship", s.tenant, s.environment)
                            }
                        }
                        for k in &s.skipped {
                            outln!("  skipped {k}: not a regular file (links are never followed)");
                        }
                        for d in &s.deferred {
                            outln!("  deferred {d}: content does not match its name yet");
                        }
                    }
                    for f in &r.failures {
                        errln!("failed: {f}");
                    }
                }
            }
            if !r.failures.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        BackupCommand::RunDue { files, output } => {
            let engine = load(&files)?;
            let who = crate::access::caller(&engine);
            let p = Progress::new();
            let r = engine.backup_run_due(&who, &|ev| p.event(ev))?;
            drop(p);
            match output {
                Output::Json => print_json(&r)?,
                Output::Text => {
                    outln!(
                        "{} backups made, {} verified, {} filestore files shipped, {} repositories \
                         pruned",
                        r.created.len(),
                        r.verified.len(),
                        r.shipped.iter().map(|s| s.files).sum::<u64>(),
                        r.pruned.repositories.len()
                    );
                    for f in &r.failures {
                        errln!("failed: {f}");
                    }
                }
            }
            if !r.failures.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `careplane status`'s backup section: each cluster's archiving, each
/// environment's last backup and recovery point. Failures say so loudly.
pub(crate) fn print_status(s: &Status) {
    let clusters: Vec<Vec<String>> = s
        .servers
        .iter()
        .filter_map(|sv| Some((sv, sv.archiving.as_ref()?)))
        .map(|(sv, a)| {
            vec![
                sv.id.clone(),
                if a.ok { "ok" } else { "FAILING" }.to_string(),
                a.last_archived_wal.clone().unwrap_or_else(|| "-".into()),
                a.last_archived_time.clone().unwrap_or_else(|| "-".into()),
                a.failed_count.to_string(),
                a.last_failed_wal.clone().unwrap_or_else(|| "-".into()),
                a.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if !clusters.is_empty() {
        outln!();
        print_table(
            &[
                "CLUSTER",
                "WAL ARCHIVING",
                "LAST ARCHIVED",
                "AT",
                "FAILED",
                "LAST FAILED",
                "",
            ],
            &["FAILED"],
            &clusters,
        );
    }
    for sv in &s.servers {
        if let Some(r) = &sv.last_restore {
            outln!(
                "{}: restored {} from base backup {} (recovered to {}) in {:.1} s{}",
                sv.id,
                r.finished,
                r.cluster_backup,
                r.recovered_to.as_deref().unwrap_or("-"),
                r.duration_ms as f64 / 1000.0,
                r.lost_data_dir
                    .as_deref()
                    .map(|p| format!("; the replaced data directory is kept at {p}"))
                    .unwrap_or_default()
            );
        }
    }
    outln!();
    let envs: Vec<Vec<String>> = s
        .environments
        .iter()
        .map(|e| {
            let (id, at) = match &e.last_backup {
                Some(b) if b.error.is_some() => (
                    format!("ERROR: {}", b.error.as_deref().unwrap_or_default()),
                    String::new(),
                ),
                Some(b) => (
                    b.id.clone().unwrap_or_default(),
                    b.finished.clone().unwrap_or_default(),
                ),
                None => ("none".into(), "-".into()),
            };
            vec![
                format!("{}/{}", e.tenant, e.environment),
                id,
                at,
                e.recovery_point.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &["ENVIRONMENT", "LAST BACKUP", "AT", "RECOVERABLE TO"],
        &[],
        &envs,
    );
    for e in &s.environments {
        if let Some(r) = &e.last_restore {
            outln!(
                "{}/{}: last restored {} from {} to {} (recovered to {}) in {:.1} s{}",
                e.tenant,
                e.environment,
                r.finished,
                r.from,
                r.target,
                r.recovered_to.as_deref().unwrap_or("-"),
                r.duration_ms as f64 / 1000.0,
                match (&r.rto, r.rto_met) {
                    (Some(rto), Some(met)) =>
                        format!(", RTO {rto} {}", if met { "met" } else { "MISSED" }),
                    _ => String::new(),
                }
            );
        }
        if let Some(c) = &e.last_restore_verification {
            outln!(
                "{}/{}: restore verification of backup {} {} at {} ({:.1} s){}",
                e.tenant,
                e.environment,
                c.backup,
                match c.outcome.as_str() {
                    "failed" => "FAILED",
                    "baseline" => "recorded its facts",
                    "skipped" => "SKIPPED",
                    _ => "passed",
                },
                c.verified_at,
                c.duration_ms as f64 / 1000.0,
                c.first_difference
                    .as_deref()
                    .or(c.error.as_deref())
                    .or(c.skipped.as_deref())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
        }
        for kept in &e.pre_restore_databases {
            outln!(
                "{}/{}: keeps database {kept} from before a restore (dropped with the environment)",
                e.tenant,
                e.environment
            );
        }
    }
}

/// `careplane backup-wal archive|restore --keys F --repository URL A B`:
/// PostgreSQL's `archive_command` (`%p %f`) and `restore_command` (`%f %p`);
/// `backup-wal fetch --socket S %f %p`: a restore's scratch server asking
/// careplane (root) for a WAL file.
pub(crate) fn wal(w: &WalArgs) -> ExitCode {
    let r = match (w.verb.as_str(), &w.socket, &w.keys, &w.repository) {
        ("fetch", Some(socket), _, _) => {
            careplane_target_local::backup_wal_fetch(socket, &w.a, std::path::Path::new(&w.b))
        }
        ("fetch", None, _, _) => Err("fetch needs --socket".to_string()),
        (verb, _, Some(keys), Some(repository)) => careplane_target_local::backup_wal(
            verb,
            keys,
            repository,
            &w.store_options,
            w.credentials.as_deref(),
            &w.a,
            &w.b,
        ),
        (verb, _, _, _) => Err(format!("{verb} needs --keys and --repository")),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            errln!("careplane backup-wal: {msg}");
            // PostgreSQL takes any other failing restore_command for the end
            // of the archive and promotes there: a WAL server that is gone
            // (its careplane killed) or a WAL object failing its check would
            // end recovery early, silently. Above 125 it stops instead.
            if w.verb == "fetch" {
                ExitCode::from(126)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

/// The hidden subcommand's arguments.
#[derive(clap::Args)]
pub(crate) struct WalArgs {
    /// `archive` (`%p %f`), `restore` (`%f %p`) or `fetch` (`%f %p`).
    pub verb: String,
    /// The WAL-keys file (the WAL key only); archive and restore.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    #[arg(long)]
    pub repository: Option<String>,
    /// Object store setting `key=value` (repeatable).
    #[arg(long = "store-option")]
    pub store_options: Vec<String>,
    /// A 0600 JSON file of S3 credentials (`aws_access_key_id`, …), the
    /// cluster service user's; archive and restore on `s3://`.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// The socket of a restore's WAL server; fetch.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    pub a: String,
    pub b: String,
}

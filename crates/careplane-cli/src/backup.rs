//! `careplane backup …` and the hidden `careplane backup-wal …`: argument
//! parsing and rendering only; the work is the engine's (docs/design/0010).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use careplane_engine::{BackupEvent, BackupSummary, Status};
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
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Check every object of a backup and of its cluster's base backup
    /// against the signed manifest (exit 1 naming the first bad object).
    Verify {
        #[command(flatten)]
        files: Files,
        id: String,
        /// Also decrypt and decompress every object.
        #[arg(long)]
        deep: bool,
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
    /// Run once what is due: scheduled backups and verifications, then
    /// pruning (for a systemd timer or cron, e.g. every 5 minutes).
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
        BackupCommand::Show { files, id, output } => {
            let engine = load(&files)?;
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
            id,
            deep,
            output,
        } => {
            let engine = load(&files)?;
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
                    "ok: backup {} of {}/{}: {} objects{} and base backup {} ({} objects) match their signed manifests",
                    v.id,
                    v.tenant,
                    v.environment,
                    v.objects,
                    if v.deep { " decrypted" } else { "" },
                    v.cluster_backup.as_deref().unwrap_or("-"),
                    v.cluster_objects
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
                    }
                }
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
                        "{} backups made, {} verified, {} repositories pruned",
                        r.created.len(),
                        r.verified.len(),
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
}

/// `careplane backup-wal archive|restore --keys F --repository URL A B`:
/// PostgreSQL's `archive_command` (`%p %f`) and `restore_command` (`%f %p`).
pub(crate) fn wal(
    verb: &str,
    keys: &std::path::Path,
    repository: &str,
    store_options: &[String],
    a: &str,
    b: &str,
) -> ExitCode {
    match careplane_target_local::backup_wal(verb, keys, repository, store_options, a, b) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            errln!("careplane backup-wal: {msg}");
            ExitCode::from(2)
        }
    }
}

/// The hidden subcommand's arguments.
#[derive(clap::Args)]
pub(crate) struct WalArgs {
    /// `archive` (`%p %f`) or `restore` (`%f %p`).
    pub verb: String,
    /// The WAL-keys file (the WAL key only).
    #[arg(long)]
    pub keys: PathBuf,
    #[arg(long)]
    pub repository: String,
    /// Object store setting `key=value` (repeatable).
    #[arg(long = "store-option")]
    pub store_options: Vec<String>,
    pub a: String,
    pub b: String,
}

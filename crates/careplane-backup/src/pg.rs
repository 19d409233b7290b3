//! Physical base backups with `pg_basebackup`, stored file by file.
//!
//! `pg_basebackup -Ft -D - -X fetch` streams one tar to stdout; each member
//! becomes a file entry of the backup as it passes. No temporary copy of the
//! cluster is needed, the WAL that makes the copy consistent is inside, and
//! the per-file entries let a later restore pick single databases.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use secrecy::{ExposeSecret, SecretString};

use crate::error::{invalid, io, BackupError, Result};
use crate::repo::{BackupMetadata, Manifest, ProgressFn};
use crate::Repository;

/// How to reach a cluster for a base backup (a superuser or a role with
/// REPLICATION; pg_hba.conf must allow it a `replication` connection).
#[derive(Debug, Clone)]
pub struct PgSource {
    /// Directory holding `pg_basebackup` (the cluster's own major version).
    pub bin_dir: PathBuf,
    /// Host: a socket directory or an address.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
}

/// Takes a base backup of the cluster into `repo`. Labels `kind=base`,
/// `wal.start` (the first WAL file needed), `wal.start_lsn` and
/// `pg.start_time` are added from `backup_label`.
pub fn base_backup(
    repo: &Repository,
    src: &PgSource,
    labels: BTreeMap<String, String>,
    metadata: BackupMetadata,
    progress: ProgressFn<'_>,
) -> Result<Manifest> {
    let mut metadata = metadata;
    // A role that may only replicate cannot run queries: then the backup
    // records no oids and a one-database restore restores everything.
    if let Ok(mut client) = connect_maintenance(src) {
        record_databases(
            &mut client,
            &format!("{}:{}", src.host, src.port),
            &mut metadata,
        )?;
    }
    let program = src.bin_dir.join("pg_basebackup");
    let mut child = Command::new(&program)
        .args([
            "-D",
            "-",
            "-F",
            "tar",
            "-X",
            "fetch",
            "--checkpoint=fast",
            "--no-password",
        ])
        .arg("-h")
        .arg(&src.host)
        .arg("-p")
        .arg(src.port.to_string())
        .arg("-U")
        .arg(&src.user)
        .env_clear()
        .env("PGPASSWORD", src.password.expose_secret())
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("starting {}", program.display())))?;
    let mut stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdout = child.stdout.take().expect("piped");
    let mut writer = repo.start_backup(BTreeMap::new())?;
    let mut archive = tar::Archive::new(stdout);
    let res = (|| -> Result<Option<String>> {
        let mut label = None;
        let entries = archive
            .entries()
            .map_err(io("reading pg_basebackup's tar stream"))?;
        for entry in entries {
            let mut e = entry.map_err(io("reading pg_basebackup's tar stream"))?;
            let path = e
                .path()
                .map_err(io("reading a tar member's path"))?
                .to_string_lossy()
                .trim_end_matches('/')
                .trim_start_matches("./")
                .to_string();
            if path.is_empty() || path == "." {
                continue;
            }
            let mode = e.header().mode().unwrap_or(0o600) & 0o7777;
            match e.header().entry_type() {
                tar::EntryType::Directory => writer.put_dir(&path, mode)?,
                tar::EntryType::Symlink => {
                    let to = e
                        .link_name()
                        .map_err(io(format!("reading symlink {path}")))?
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    writer.put_symlink(&path, &to)?
                }
                tar::EntryType::Regular => {
                    if path == "backup_label" {
                        let mut text = String::new();
                        e.read_to_string(&mut text)
                            .map_err(io("reading backup_label"))?;
                        writer.put_stream(&path, mode, &mut text.as_bytes(), progress)?;
                        label = Some(text);
                    } else {
                        writer.put_stream(&path, mode, &mut e, progress)?;
                    }
                }
                other => {
                    return Err(invalid(
                        format!("pg_basebackup tar member {path}"),
                        format!("unexpected entry type {other:?}"),
                    ))
                }
            }
        }
        Ok(label)
    })();
    // Drain what is left so pg_basebackup is not stuck on a full pipe.
    let _ = std::io::copy(&mut archive.into_inner(), &mut std::io::sink());
    let status = child
        .wait()
        .map_err(io(format!("waiting for {}", program.display())))?;
    let stderr = err_thread.join().unwrap_or_default();
    if !status.success() {
        return Err(BackupError::Program {
            program: program.display().to_string(),
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    let label = res?;
    commit_base(writer, labels, label, metadata)
}

/// What a base backup leaves out of a data directory (PostgreSQL's own list,
/// as `pg_basebackup` applies it): the contents of WAL and runtime-only
/// directories (the directories themselves are kept), lock and label files,
/// relation cache init files and temporary files. `rel` is relative to PGDATA.
pub fn excluded_from_base_backup(rel: &str) -> bool {
    const DIR_CONTENTS: &[&str] = &[
        "pg_wal",
        "pg_replslot",
        "pg_dynshmem",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_stat_tmp",
        "pg_subtrans",
    ];
    const FILES: &[&str] = &[
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "backup_manifest",
        "recovery.signal",
        "standby.signal",
        "postgresql.auto.conf.tmp",
        "current_logfiles.tmp",
    ];
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init") {
        return true;
    }
    match rel.split_once('/') {
        Some((top, _)) => DIR_CONTENTS.contains(&top),
        None => FILES.contains(&rel),
    }
}

/// Takes a base backup by reading the data directory itself between
/// `pg_backup_start()` and `pg_backup_stop()` (PostgreSQL 15 or later), on
/// the repository's threads, with no copy through a replication stream.
/// With `parent` (an earlier base backup of the same cluster), files
/// unchanged since it are not read again. The WAL from the backup's start to
/// its end is not in the backup: `pg_backup_stop` waits until it is
/// archived, so the cluster must archive WAL (`archive_mode = on`), and a
/// restore needs `restore_command`. The caller must be able to read
/// `data_dir` (root, or the cluster's own user). Labels as for
/// [`base_backup`], plus `method=direct` and `wal.stop_lsn`.
pub fn base_backup_direct(
    repo: &Repository,
    src: &PgSource,
    data_dir: &Path,
    parent: Option<&str>,
    mut labels: BTreeMap<String, String>,
    metadata: BackupMetadata,
    progress: ProgressFn<'_>,
) -> Result<Manifest> {
    let target = format!("{}:{}", src.host, src.port);
    let pg_err = |action: &str| {
        let target = target.clone();
        let action = action.to_string();
        move |source| BackupError::Postgres {
            target,
            action,
            source,
        }
    };
    let mut client = connect_maintenance(src).map_err(pg_err("connecting"))?;
    let mut metadata = metadata;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .map_err(pg_err("reading the server version"))?
        .get(0);
    if version < 150000 {
        return Err(invalid(
            format!("PostgreSQL at {target}"),
            format!("version {version} has no pg_backup_start (15 or later is needed)"),
        ));
    }
    let mut writer = repo.start_backup(BTreeMap::new())?;
    // Before pg_backup_start: a database made during the backup is not in
    // the list, and a one-database restore then restores its files whole.
    record_databases(&mut client, &target, &mut metadata)?;
    if let Some(parent) = parent {
        writer.reuse_unchanged_from(parent)?;
    }
    let start_lsn: String = client
        .query_one(
            "SELECT pg_catalog.pg_backup_start($1, true)::text",
            &[&format!("careplane {}", writer.id())],
        )
        .map_err(pg_err("starting the backup (pg_backup_start)"))?
        .get(0);
    // An error from here on drops the connection, which aborts the backup on
    // the server; nothing is committed.
    writer.put_tree_filtered(data_dir, "", &excluded_from_base_backup, progress)?;
    // Not pg_backup_stop(true): it waits for archiving with no end, so a
    // broken archive_command would hang the backup forever. The wait is ours,
    // bounded, and names the WAL file when archiving fails.
    let row = client
        .query_one(
            "SELECT lsn::text, labelfile, spcmapfile, \
                    pg_catalog.pg_walfile_name(lsn) FROM pg_catalog.pg_backup_stop(false)",
            &[],
        )
        .map_err(pg_err("finishing the backup (pg_backup_stop)"))?;
    let (stop_lsn, label, spcmap, stop_wal): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    wait_for_archive(&mut client, &target, &stop_wal, ARCHIVE_WAIT)?;
    writer.put_stream("backup_label", 0o600, &mut label.as_bytes(), progress)?;
    if !spcmap.is_empty() {
        writer.put_stream("tablespace_map", 0o600, &mut spcmap.as_bytes(), progress)?;
    }
    labels.insert("method".into(), "direct".into());
    labels.insert("wal.start_lsn".into(), start_lsn);
    labels.insert("wal.stop_lsn".into(), stop_lsn);
    commit_base(writer, labels, Some(label), metadata)
}

/// The key of [`BackupMetadata::extra`] under which a base backup records
/// the cluster's databases (name → oid, as `base/<oid>/` names them) when it
/// starts, so that one database can be restored without the others' files.
/// In the sealed index, not the clear manifest: database names are tenants'.
pub const DATABASES_KEY: &str = "pg.databases";

fn connect_maintenance(src: &PgSource) -> std::result::Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host(&src.host)
        .port(src.port)
        .user(&src.user)
        .password(src.password.expose_secret())
        .dbname("postgres")
        .application_name("careplane-backup")
        .options("-c search_path=pg_catalog")
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect(postgres::NoTls)
}

fn record_databases(
    client: &mut postgres::Client,
    target: &str,
    metadata: &mut BackupMetadata,
) -> Result<()> {
    let rows = client
        .query(
            "SELECT datname::text, oid::int8 FROM pg_catalog.pg_database",
            &[],
        )
        .map_err(|source| BackupError::Postgres {
            target: target.to_string(),
            action: "listing the databases (pg_database)".into(),
            source,
        })?;
    let map: serde_json::Map<String, serde_json::Value> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).into()))
        .collect();
    metadata
        .extra
        .insert(DATABASES_KEY.into(), serde_json::Value::Object(map));
    Ok(())
}

/// The databases a base backup recorded when it started (name → oid);
/// `None` for a backup taken without them (by an older careplane, or
/// `pg_basebackup` with a role that cannot run queries).
pub fn recorded_databases(metadata: &BackupMetadata) -> Option<BTreeMap<String, u32>> {
    let map = metadata.extra.get(DATABASES_KEY)?.as_object()?;
    map.iter()
        .map(|(k, v)| Some((k.clone(), u32::try_from(v.as_u64()?).ok()?)))
        .collect()
}

/// How long a direct base backup waits for its last WAL file to be archived.
const ARCHIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Waits until `wal` (a WAL file name) has been archived. Fails as soon as
/// the archiver has failed three times on a file not yet archived since the
/// wait began, or when `limit` passes, naming the file and the last failure.
pub(crate) fn wait_for_archive(
    client: &mut postgres::Client,
    target: &str,
    wal: &str,
    limit: std::time::Duration,
) -> Result<()> {
    let query = "SELECT coalesce(last_archived_wal, ''), failed_count, \
                 coalesce(last_failed_wal, '') FROM pg_catalog.pg_stat_archiver";
    let read = |client: &mut postgres::Client| {
        client
            .query_one(query, &[])
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, String>(2),
                )
            })
            .map_err(|source| BackupError::Postgres {
                target: target.to_string(),
                action: "reading pg_stat_archiver".into(),
                source,
            })
    };
    let (_, failed_at_start, _) = read(client)?;
    let deadline = std::time::Instant::now() + limit;
    // Archiving one segment takes a few hundred milliseconds: poll often at first
    // (the query is one row of shared memory), then back off.
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        let (archived, failed, failed_wal) = read(client)?;
        // Names within a timeline sort by position; `.backup` and
        // `.partial` suffixes sort after their segment.
        if archived.as_str() >= wal {
            return Ok(());
        }
        // The archiver is stuck on the file it keeps failing on (this one or
        // an earlier one): either way ours does not get archived.
        let archiving_fails = failed - failed_at_start >= 3 && failed_wal > archived;
        if archiving_fails || std::time::Instant::now() >= deadline {
            let why = if archiving_fails {
                format!(
                    "archive_command failed {} times on {failed_wal}",
                    failed - failed_at_start
                )
            } else {
                format!(
                    "not archived within {} s (last archived: {archived:?})",
                    limit.as_secs()
                )
            };
            return Err(invalid(
                format!("PostgreSQL at {target}, WAL file {wal}"),
                format!(
                    "the base backup needs this WAL file in the repository, but {why}; \
                     see the server log and the archiver's status (pg_stat_archiver)"
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
}

fn commit_base(
    mut writer: crate::BackupWriter<'_>,
    mut labels: BTreeMap<String, String>,
    label: Option<String>,
    metadata: BackupMetadata,
) -> Result<Manifest> {
    labels.insert("kind".into(), "base".into());
    if let Some(label) = label {
        for line in label.lines() {
            if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
                // "0/2000028 (file 000000010000000000000002)"
                if let Some(lsn) = rest.split_whitespace().next() {
                    labels.insert("wal.start_lsn".into(), lsn.into());
                }
                if let Some(file) = rest.split("(file ").nth(1) {
                    labels.insert("wal.start".into(), file.trim_end_matches(')').into());
                }
            } else if let Some(rest) = line.strip_prefix("START TIME: ") {
                labels.insert("pg.start_time".into(), rest.into());
            }
        }
    }
    for (k, v) in labels {
        writer.label(k, v);
    }
    writer.commit(metadata)
}

/// Restores base backup `backup` into `data_dir` (absent or empty), owned by
/// `owner`. Recovery settings (`restore_command`, targets) and
/// `recovery.signal` are the caller's to add.
pub fn restore_base_backup(
    repo: &Repository,
    backup: &str,
    data_dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<u64> {
    let m = repo.manifest(backup)?;
    if m.labels.get("kind").map(String::as_str) != Some("base") {
        return Err(invalid(
            format!("backup {backup}"),
            "is not a PostgreSQL base backup",
        ));
    }
    repo.restore_tree(backup, data_dir, owner, &|_| true)
}

#[cfg(test)]
mod tests {
    use super::excluded_from_base_backup as ex;

    #[test]
    fn base_backups_leave_out_what_postgres_leaves_out() {
        for path in [
            "postmaster.pid",
            "backup_label",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status",
            "pg_replslot/slot/state",
            "pg_stat_tmp/global.stat",
            "base/1/pg_internal.init",
            "global/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp123.0",
        ] {
            assert!(ex(path), "{path} must be left out");
        }
        for path in [
            "pg_wal",
            "pg_replslot",
            "base/1/1259",
            "global/pg_control",
            "postgresql.conf",
            "postgresql.auto.conf",
            "PG_VERSION",
            "pg_xact/0000",
        ] {
            assert!(!ex(path), "{path} must be backed up");
        }
    }
}

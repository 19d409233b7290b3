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
    mut labels: BTreeMap<String, String>,
    metadata: BackupMetadata,
    progress: ProgressFn<'_>,
) -> Result<Manifest> {
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
    labels.insert("kind".into(), "base".into());
    if let Some(label) = label {
        for line in label.lines() {
            if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
                // "0/2000028 (file 000000010000000000000002)"
                let mut parts = rest.split_whitespace();
                if let Some(lsn) = parts.next() {
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

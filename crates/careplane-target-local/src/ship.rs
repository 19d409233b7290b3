//! Filestore shipping (issue 16, docs/design/0010, "Filestore shipping"):
//! between two environment backups, the files an environment's filestore
//! gains are shipped into its tenant's repository, so that a restore to a
//! time T finds a file referenced at T that was added after the backup and
//! deleted before the restore.
//!
//! A shipment is a record of the stream `filestore-<env>` in the tenant's
//! repository (`careplane_backup::Repository::start_record`): the new files
//! as chunks (the repository's keyed, compressed, encrypted chunks, shared
//! with the backups), a sealed index (the file names: SHA-1s of documents
//! never appear in clear) and a signed manifest, written last. A shipment
//! killed before its manifest does not exist; the next one finds the same
//! files new, and its chunks already uploaded.
//!
//! Which files are new: those the environment's newest backup and the
//! shipments since it lack. Both are read with the repository secret only,
//! no private key (a customer may hold the only one): the backup's file
//! state (`Repository::state_paths`) and the newest shipment's note, which
//! lists every name shipped since that backup (`shipped`), so two small
//! objects are read, not every shipment's index. A file the backup's state
//! leaves out (modified in the 2 s before its walk) is shipped once more:
//! the same chunks, one more index entry.
//!
//! The filestore belongs to the environment's uid, which runs tenant code:
//! it is read as `restore` reads it (`careplane_odoo::tree::read_filestore`,
//! no-follow descriptors below the environment's root), so a symlink is
//! reported, never followed or read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use careplane_backup::{BackupMetadata, BackupWriter, FilestoreEntry, Manifest, Repository};
use careplane_engine::{BackupEvent, FilestoreShipment, ShipOutcome};
use careplane_state::{ResourceRecord, ResourceStatus};
use serde_json::Value;
use sha1::Digest;

use crate::backup::{berr, err, is_env_backup, label};
use crate::runtime::{observed_str, str_prop};
use crate::{Error, LocalDriver};

/// The `kind` label of a shipment.
pub(crate) const SHIPMENT: &str = "filestore-shipment";
/// The note's list of every name shipped since the backup.
const SHIPPED: &str = "shipped";

/// The stream of an environment's shipments in its tenant's repository.
pub(crate) fn stream_of(env: &str) -> String {
    format!("filestore-{env}")
}

/// The names of the filestore files a backup or shipment holds.
pub(crate) fn filestore_names(index: &careplane_backup::BackupIndex) -> BTreeSet<String> {
    index
        .files
        .iter()
        .filter(|f| f.kind == careplane_backup::FileKind::File)
        .filter_map(|f| f.path.strip_prefix("filestore/").map(str::to_string))
        .collect()
}

/// `ab/ab…` (2 + 40 lowercase hex): the name Odoo gives a file, the SHA-1
/// of its content; returns that SHA-1.
fn odoo_sha1(rel: &str) -> Option<&str> {
    let (dir, name) = rel.split_once('/')?;
    let hex = |s: &str| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    (dir.len() == 2 && name.len() == 40 && hex(name) && name.starts_with(dir)).then_some(name)
}

/// A reader that hashes what passes through it.
struct Sha1Reader<'a> {
    inner: &'a mut std::fs::File,
    hash: sha1::Sha1,
}

impl Read for Sha1Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `message` with every filestore name in it (40 hex digits: the SHA-1 of
/// a document) replaced. Failures reach `run-due`'s output, serve's log and
/// the audit log, where a document's hash must not: the repository keeps
/// these names only in sealed objects.
pub(crate) fn without_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        // Exactly 40: chunk ids (64) name objects, which errors must.
        if run.len() == 40 {
            out.push_str("<file>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in message.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

impl LocalDriver {
    /// `backup ship-filestore [<tenant>/<env>]`: every environment with an
    /// Odoo filestore (or the one), under the apply lock.
    pub(crate) fn ship_filestores(
        &mut self,
        scope: Option<(&str, &str)>,
        scheduled_only: bool,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<ShipOutcome, Error> {
        let _lock = careplane_state::lock(&self.data_dir, "backup ship-filestore")?;
        let all = self.records()?;
        let mut envs: Vec<(String, String)> = all
            .iter()
            .filter(|r| r.kind == "pg-database" && r.status == ResourceStatus::Ready)
            .filter_map(|r| {
                let (t, e) = r.id.strip_prefix("pg-database/")?.split_once('/')?;
                Some((t.to_string(), e.to_string()))
            })
            .filter(|(t, e)| scope.is_none_or(|(st, se)| st == t && se == e))
            .filter(|(t, e)| {
                // One still being made has no filestore yet, nor a backup.
                all.iter().any(|r| {
                    r.id == format!("odoo-env/{t}/{e}") && r.status == ResourceStatus::Ready
                })
            })
            .collect();
        if let Some((t, e)) = scope {
            if envs.is_empty() {
                return Err(crate::restore::refused(format!(
                    "{t}/{e} has no ready database with an Odoo filestore: apply it first"
                )));
            }
        }
        if scheduled_only {
            // As backups: only environments whose tier names a policy.
            envs.retain(|(t, _)| self.tenant_policy(t).is_ok_and(|p| p.schedule.is_some()));
        }
        let mut out = ShipOutcome::default();
        for (t, e) in envs {
            progress(BackupEvent::Phase(format!(
                "shipping the filestore of {t}/{e}"
            )));
            match self.ship_one(&all, &t, &e) {
                Ok(s) => out.shipments.push(s),
                Err(error) => out.failures.push(without_names(&format!(
                    "filestore shipment of {t}/{e}: {error}"
                ))),
            }
        }
        Ok(out)
    }

    fn ship_one(
        &mut self,
        all: &[ResourceRecord],
        tenant: &str,
        env: &str,
    ) -> Result<FilestoreShipment, Error> {
        let db = all
            .iter()
            .find(|r| r.id == format!("pg-database/{tenant}/{env}"))
            .ok_or_else(|| err(format!("{tenant}/{env} has no database record")))?;
        let database = str_prop(db, "database")?.to_string();
        let odoo = all
            .iter()
            .find(|r| r.id == format!("odoo-env/{tenant}/{env}"))
            .ok_or_else(|| err(format!("{tenant}/{env} has no Odoo environment")))?;
        let root = std::path::PathBuf::from(observed_str(odoo, "root")?);
        let mut out = FilestoreShipment {
            tenant: tenant.into(),
            environment: env.into(),
            ..Default::default()
        };
        let no_backup = "no backup yet: the first backup takes the whole filestore";
        // Shipping alone never creates a repository.
        let policy = self.tenant_policy(tenant)?;
        if !Self::repo_exists(&self.tenant_repo_url(tenant, &policy)) {
            out.note = Some(no_backup.into());
            return Ok(out);
        }
        let (repo, _) = self.open_tenant_repo(tenant)?;
        let Some(backup) = repo
            .list_backups()
            .map_err(berr(&format!("listing the backups of tenant {tenant}")))?
            .into_iter()
            .filter(|m| is_env_backup(m) && label(m, "environment") == env)
            .max_by_key(|m| m.finished)
        else {
            out.note = Some(no_backup.into());
            return Ok(out);
        };
        out.since = Some(backup.id.clone());
        let stream = stream_of(env);
        let mut covered: BTreeSet<String> = repo
            .state_paths(&backup)
            .map_err(berr(&format!("reading backup {}", backup.id)))?
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.strip_prefix("filestore/").map(str::to_string))
            .collect();
        // What the shipments since the backup hold: the newest one lists it.
        let mut shipped: BTreeSet<String> = BTreeSet::new();
        let ids = repo.list_record_ids(&stream).map_err(berr(&format!(
            "listing the filestore shipments of {tenant}/{env}"
        )))?;
        if let Some(last) = ids.last() {
            let m = repo.record(&stream, last).map_err(berr(&format!(
                "filestore shipment {last} of {tenant}/{env}"
            )))?;
            if label(&m, "since") == backup.id {
                let note = repo.note(&m).map_err(berr(&format!(
                    "filestore shipment {last} of {tenant}/{env}"
                )))?;
                shipped = shipped_names(note.as_ref());
            }
        }
        covered.extend(shipped.iter().cloned());

        let labels = BTreeMap::from([
            ("kind".to_string(), SHIPMENT.to_string()),
            ("tenant".to_string(), tenant.to_string()),
            ("environment".to_string(), env.to_string()),
            ("database".to_string(), database.clone()),
            ("since".to_string(), backup.id.clone()),
        ]);
        let mut writer: Option<BackupWriter<'_>> = None;
        let mut failure: Option<careplane_backup::BackupError> = None;
        let mut entries = Vec::new();
        let quiet = |_: careplane_backup::Progress| {};
        let read = careplane_odoo::tree::read_filestore(&root, &database, &mut |rel, f| {
            if covered.contains(rel) {
                return Ok(());
            }
            // The record (and its listing of the repository's chunks) only
            // when there is something to ship.
            if writer.is_none() {
                match repo.start_record(&stream, labels.clone()) {
                    Ok(w) => writer = Some(w),
                    Err(e) => {
                        let msg = careplane_backup::error_chain(&e);
                        failure = Some(e);
                        return Err(std::io::Error::other(msg));
                    }
                }
            }
            let w = writer.as_mut().expect("started above");
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                f.metadata()?.permissions().mode() & 0o7777
            };
            let path = format!("filestore/{rel}");
            let mut r = Sha1Reader {
                inner: f,
                hash: sha1::Sha1::new(),
            };
            match w.put_stream(&path, mode, &mut r, &quiet) {
                Ok(entry) => {
                    let sha1 = hex(&r.hash.finalize());
                    match odoo_sha1(rel) {
                        // Odoo writes a file in place: one read while it is
                        // being written does not match its name. Shipped
                        // once it does; never under a name it would be
                        // restored as with other content.
                        Some(name) if name != sha1 => {
                            w.forget(&path);
                            out.deferred.push(rel.to_string());
                        }
                        _ => entries.push(FilestoreEntry {
                            name: rel.to_string(),
                            size: entry.size,
                            sha1,
                        }),
                    }
                    Ok(())
                }
                Err(e) => {
                    let msg = careplane_backup::error_chain(&e);
                    failure = Some(e);
                    Err(std::io::Error::other(msg))
                }
            }
        });
        if let Some(e) = failure {
            return Err(berr(&format!("filestore shipment of {tenant}/{env}"))(e));
        }
        let read = read?;
        out.skipped = read.skipped;
        let Some(writer) = writer else {
            return Ok(out);
        };
        if entries.is_empty() {
            // Only deferred files: no record (dropping the writer leaves
            // chunks the next shipment reuses, or gc removes).
            return Ok(out);
        }
        shipped.extend(entries.iter().map(|e| e.name.clone()));
        out.files = entries.len() as u64;
        out.bytes = entries.iter().map(|e| e.size).sum();
        let mut writer = writer;
        writer.seal_note(serde_json::json!({ SHIPPED: shipped }));
        let metadata = BackupMetadata {
            filestore: entries,
            ..Default::default()
        };
        // Killed here: the chunks are in, no shipment exists; the next
        // one ships the same files, reusing the chunks.
        careplane_engine::crash_point(&format!("odoo-env/{tenant}/{env}"), "ship-uploaded");
        let m = writer
            .commit(metadata)
            .map_err(berr(&format!("filestore shipment of {tenant}/{env}")))?;
        out.id = Some(m.id);
        Ok(out)
    }

    /// Copies into `dest` (root's staging directory) the files of `want`
    /// that `env`'s shipments hold, trying first those written after
    /// `backup` (where a file added after it is), then older ones. Returns
    /// the names copied.
    pub(crate) fn files_from_shipments(
        &self,
        repo: &Repository,
        env: &str,
        backup: &Manifest,
        want: &BTreeSet<String>,
        dest: &std::path::Path,
    ) -> Result<BTreeSet<String>, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let stream = stream_of(env);
        let ids = repo
            .list_record_ids(&stream)
            .map_err(berr(&format!("listing the filestore shipments of {env}")))?;
        // Ids begin with their start time, as backup ids do.
        let (after, before): (Vec<&String>, Vec<&String>) =
            ids.iter().partition(|id| id.as_str() > backup.id.as_str());
        let mut got = BTreeSet::new();
        for id in after.into_iter().chain(before.into_iter().rev()) {
            if got.len() == want.len() {
                break;
            }
            let m = repo
                .record(&stream, id)
                .map_err(berr(&format!("filestore shipment {id}")))?;
            let index = repo
                .index(&m)
                .map_err(berr(&format!("filestore shipment {id}")))?;
            for name in filestore_names(&index) {
                if !want.contains(&name) || got.contains(&name) {
                    continue;
                }
                let to = dest.join(&name);
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p).map_err(|source| Error::Io {
                        what: format!("creating {}", p.display()),
                        source,
                    })?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&to)
                    .map_err(|source| Error::Io {
                        what: format!("creating {}", to.display()),
                        source,
                    })?;
                repo.read_file_of(&m, &index, &format!("filestore/{name}"), &mut f)
                    .map_err(berr(&format!("filestore shipment {id}")))?;
                got.insert(name);
            }
        }
        Ok(got)
    }
}

/// The names a shipment's note says were shipped since its backup.
fn shipped_names(note: Option<&Value>) -> BTreeSet<String> {
    note.and_then(|n| n.get(SHIPPED))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_no_filestore_name() {
        let sha = "a9993e364706816aba3e25717850c26c9cd0d89d";
        let msg = format!("reading /d/filestore/db/a9/{sha}: Permission denied (os error 13)");
        assert_eq!(
            without_names(&msg),
            "reading /d/filestore/db/a9/<file>: Permission denied (os error 13)"
        );
        // A WAL file name (24 hex digits), a backup id and a chunk id stay.
        let other = "segment 0000000100000000000000A1 of backup 20261202T181734690Z-4e634ad1, \
                     object chunks/0f/0f9c3a1e0d2b4c5a6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5";
        assert_eq!(without_names(other), other);
    }

    #[test]
    fn only_odoo_shaped_names_are_checked_against_their_content() {
        let sha = "a9993e364706816aba3e25717850c26c9cd0d89d";
        assert_eq!(odoo_sha1(&format!("a9/{sha}")), Some(sha));
        assert_eq!(odoo_sha1(&format!("b9/{sha}")), None);
        assert_eq!(odoo_sha1(&format!("checklist/a9/{sha}")), None);
        assert_eq!(
            odoo_sha1("a9/A9993E364706816ABA3E25717850C26C9CD0D89D"),
            None
        );
        assert_eq!(odoo_sha1("a9/short"), None);
        let mut h = sha1::Sha1::new();
        h.update(b"abc");
        assert_eq!(hex(&h.finalize()), sha);
    }
}

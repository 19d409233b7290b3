//! WAL archiving for PostgreSQL's `archive_command` and `restore_command`.
//!
//! Each segment (or `.history`, `.backup`, `.partial` file) is its own object
//! `wal/<name>`: a keyed MAC of (name, content) in the first 32 bytes, then
//! age(zstd(content)). The MAC makes archiving idempotent without a private
//! key (same content: success; other content: a loud refusal, as
//! PostgreSQL's documentation asks) and binds the content to its name.

use std::io::Write;
use std::path::Path;

use crate::error::{corrupt, invalid, io, BackupError, Result};
use crate::keys::{Sealer, WalKey, WalKeys};
use crate::store::Store;
use crate::Repository;

const MAC_LEN: usize = 32;

/// What [`Repository::archive_wal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    /// The segment was stored.
    Stored,
    /// The same content was already archived under that name.
    AlreadyArchived,
}

fn check_wal_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '.' || c.is_ascii_lowercase());
    if !ok {
        return Err(invalid(
            format!("WAL file name {name:?}"),
            "must be a PostgreSQL WAL file name such as 000000010000000000000001",
        ));
    }
    Ok(())
}

fn object(name: &str) -> String {
    format!("wal/{name}")
}

/// The WAL half of a repository, opened with [`WalKeys`] only: what the
/// PostgreSQL service user's `archive_command` / `restore_command` process
/// holds. It cannot name chunks or sign manifests.
pub struct WalArchive {
    store: Store,
    key: WalKey,
    sealer: Sealer,
}

impl std::fmt::Debug for WalArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalArchive")
            .field("url", &self.store.url)
            .finish_non_exhaustive()
    }
}

impl WalArchive {
    /// Opens the WAL archive of an existing repository (created by
    /// [`Repository::open`]); refuses keys of another repository.
    /// `store_options` as in [`crate::RepoOptions`].
    pub fn open(url: &str, keys: &WalKeys, store_options: &[(String, String)]) -> Result<Self> {
        let key = WalKey::new(keys)?;
        let sealer = Sealer::new(&keys.recipients, &keys.identities)?;
        let store = Store::open(url, store_options)?;
        let config = crate::repo::read_config(&store)?.ok_or_else(|| BackupError::Repository {
            repository: store.url.clone(),
            problem: "has no config.json: not a careplane repository yet (careplane creates it; the archiver does not)".into(),
        })?;
        if config.wal_key_check != key.check() {
            return Err(BackupError::Repository {
                repository: store.url.clone(),
                problem: "was created with another repository secret (WAL key does not match)"
                    .into(),
            });
        }
        Ok(WalArchive { store, key, sealer })
    }

    /// `archive_command = '… %p %f'`: see [`Repository::archive_wal`].
    pub fn archive_wal(&self, path: &Path, name: &str) -> Result<Archived> {
        archive(&self.store, &self.key, &self.sealer, path, name)
    }

    /// `restore_command = '… %f %p'`: see [`Repository::restore_wal`].
    pub fn restore_wal(&self, name: &str, dest: &Path) -> Result<bool> {
        restore(&self.store, &self.key, &self.sealer, name, dest)
    }
}

fn archive(
    store: &Store,
    key: &WalKey,
    sealer: &Sealer,
    path: &Path,
    name: &str,
) -> Result<Archived> {
    check_wal_name(name)?;
    let data = std::fs::read(path).map_err(io(format!("reading WAL file {}", path.display())))?;
    let mac = key.mac(name, &data);
    if let Some(head) = store.get_head(&object(name), MAC_LEN as u64)? {
        return if head[..] == mac[..] {
            Ok(Archived::AlreadyArchived)
        } else {
            Err(BackupError::WalConflict {
                repository: store.url.clone(),
                name: name.to_string(),
            })
        };
    }
    let compressed = zstd::bulk::compress(&data, 3).map_err(io("compressing WAL"))?;
    let mut out = mac.to_vec();
    out.extend(sealer.encrypt(&compressed)?);
    store.put(&object(name), out)?;
    Ok(Archived::Stored)
}

fn restore(store: &Store, key: &WalKey, sealer: &Sealer, name: &str, dest: &Path) -> Result<bool> {
    check_wal_name(name)?;
    let obj = object(name);
    let Some(bytes) = store.get(&obj)? else {
        return Ok(false);
    };
    let wal = "WAL archive";
    if bytes.len() < MAC_LEN {
        return Err(corrupt(wal, &obj, "is truncated"));
    }
    let what = || format!("WAL archive: object {obj}");
    let compressed = sealer.decrypt(&bytes[MAC_LEN..], &what)?;
    // zstd::bulk::compress wrote the segment's size into the frame: one
    // allocation of exactly that (a growing Vec copied 16 MiB segments
    // around twice). A frame without it, or claiming more than a WAL file
    // can be (1 GiB), is not one this archive wrote.
    let size = zstd::zstd_safe::get_frame_content_size(&compressed)
        .ok()
        .flatten()
        .filter(|&n| n <= 1 << 30)
        .ok_or_else(|| corrupt(wal, &obj, "is not a zstd frame of a WAL file"))?;
    let data = zstd::bulk::decompress(&compressed, size as usize)
        .map_err(|e| corrupt(wal, &obj, format!("does not decompress: {e}")))?;
    if key.mac(name, &data)[..] != bytes[..MAC_LEN] {
        return Err(corrupt(
            wal,
            &obj,
            "content does not match its MAC (changed, or another segment's)",
        ));
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(format!(
        "creating a temporary file in {}",
        dir.display()
    )))?;
    // Not fsynced: PostgreSQL treats what restore_command wrote as
    // transient (it fetches it again after a crash) and makes durable,
    // itself, any restored segment it keeps. An fsync of 16 MiB per
    // segment was most of a replay's time on a slow disk.
    tmp.write_all(&data)
        .map_err(io(format!("writing {}", dest.display())))?;
    tmp.persist(dest).map_err(|e| BackupError::Io {
        what: format!("renaming into {}", dest.display()),
        source: e.error,
    })?;
    Ok(true)
}

impl Repository {
    /// `archive_command = '… %p %f'`: stores the file at `path` as WAL file
    /// `name`. Succeeds again for the same content; refuses other content
    /// under a name already archived.
    pub fn archive_wal(&self, path: &Path, name: &str) -> Result<Archived> {
        archive(&self.store, &self.keys.wal, &self.keys.sealer, path, name)
    }

    /// `restore_command = '… %f %p'`: writes WAL file `name` to `dest`
    /// (through a temporary file renamed into place). `Ok(false)` when the
    /// repository has no such file (normal at the end of recovery; the
    /// command must then exit non-zero).
    pub fn restore_wal(&self, name: &str, dest: &Path) -> Result<bool> {
        restore(&self.store, &self.keys.wal, &self.keys.sealer, name, dest)
    }

    /// Deletes archived WAL that no recovery from base backups starting at
    /// `first_needed` (a WAL file name, e.g. the oldest kept base backup's
    /// `wal.start` label) can need: segments, `.partial` and `.backup` files
    /// whose position (log and segment number, any timeline) is before it.
    /// Timeline `.history` files are always kept (they are tiny and every
    /// later timeline needs them). Files Object Lock still keeps are left
    /// for a later call. Returns how many objects were deleted.
    pub fn delete_wal_before(&self, first_needed: &str) -> Result<u64> {
        check_wal_name(first_needed)?;
        let position = |name: &str| {
            (name.len() >= 24 && name[..24].chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| name[8..24].to_ascii_uppercase())
        };
        let cutoff = position(first_needed).ok_or_else(|| {
            invalid(
                format!("WAL file name {first_needed:?}"),
                "must start with 24 hex digits (timeline, log, segment)",
            )
        })?;
        let mut deleted = 0;
        for name in self.list_wal()? {
            if name.ends_with(".history") {
                continue;
            }
            if position(&name).is_some_and(|p| p < cutoff) {
                if self.store.locked_until(&object(&name))?.is_some() {
                    continue;
                }
                self.store.delete(&object(&name))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The archived WAL file written last and when, in the store's clock:
    /// nothing in the archive was written by PostgreSQL after that time, so
    /// no recovery can reach a later point. `None` when nothing is archived.
    pub fn newest_wal(&self) -> Result<Option<(String, jiff::Timestamp)>> {
        Ok(self
            .store
            .list("wal")?
            .into_iter()
            .filter_map(|l| Some((l.name.strip_prefix("wal/")?.to_string(), l.modified)))
            .max_by_key(|(_, at)| *at))
    }

    /// Names of the archived WAL files, sorted.
    pub fn list_wal(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .store
            .list("wal")?
            .into_iter()
            .filter_map(|l| l.name.strip_prefix("wal/").map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }
}

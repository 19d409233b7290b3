//! The repository: config, chunks, backups (sealed index + signed manifest),
//! reading, verification, deletion and garbage collection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use jiff::Timestamp;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{corrupt, invalid, BackupError, Result};
use crate::keys::{Keys, RepoKeys};
use crate::store::Store;

/// Version of the repository layout and manifest format.
pub const FORMAT: u32 = 1;

/// Content-defined chunking bounds (bytes).
const CHUNK_MIN: u32 = 256 * 1024;
const CHUNK_AVG: u32 = 1024 * 1024;
const CHUNK_MAX: u32 = 4 * 1024 * 1024;

const CONFIG: &str = "config.json";
/// Since when this repository has been immutable without a break
/// (docs/design/0015): chunks written before were not locked and are not
/// reused by an immutable backup.
const LOCK_MARKER: &str = "object-lock.json";

#[derive(Serialize, Deserialize)]
struct LockMarker {
    /// Absent in the first version: the period started when it was written.
    since: Option<Timestamp>,
}

/// Tuning of a repository handle.
#[derive(Clone)]
pub struct RepoOptions {
    /// zstd level (1–19; 3 is zstd's and pgBackRest's default).
    pub compression_level: i32,
    /// Threads that compress, encrypt and upload.
    pub threads: usize,
    /// Object store settings that override the environment (e.g.
    /// `("aws_endpoint", "http://127.0.0.1:9000")`); keys as `object_store`'s
    /// `AmazonS3ConfigKey` parses them.
    pub store_options: Vec<(String, String)>,
}

/// Option values may be credentials (`aws_secret_access_key`): only their
/// keys are shown.
impl std::fmt::Debug for RepoOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoOptions")
            .field("compression_level", &self.compression_level)
            .field("threads", &self.threads)
            .field(
                "store_options",
                &self
                    .store_options
                    .iter()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for RepoOptions {
    fn default() -> Self {
        RepoOptions {
            compression_level: 3,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            store_options: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Config {
    format: u32,
    repository: String,
    created: Timestamp,
    chunker: [u32; 3],
    chunk_key_check: String,
    pub(crate) wal_key_check: String,
    verifying_key: String,
}

/// One stored object a manifest vouches for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRef {
    /// Name below the repository prefix.
    pub object: String,
    /// Stored (compressed, encrypted) size.
    pub size: u64,
    /// BLAKE3 of the stored bytes (checkable without a private key).
    pub hash: String,
}

/// One chunk a backup references.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    /// Keyed BLAKE3 of the plaintext (the repository secret's chunk key).
    pub id: String,
    /// Plaintext size.
    pub plain_size: u64,
    /// Stored size.
    pub size: u64,
    /// BLAKE3 of the stored bytes.
    pub hash: String,
}

impl ChunkRef {
    /// The chunk's object name.
    pub fn object(&self) -> String {
        chunk_object(&self.id, &self.hash)
    }
}

fn chunk_object(id: &str, hash: &str) -> String {
    format!("chunks/{}/{id}.{hash}", &id[..2])
}

/// The signed, clear part of a backup: enough to list, select for retention,
/// verify integrity and collect garbage without any private key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// Backup id: `<UTC start yyyymmddThhmmssmmmZ>-<8 hex>` (to the millisecond).
    pub id: String,
    /// The repository's id (from its config): a manifest copied from
    /// another repository is refused.
    pub repository: String,
    pub started: Timestamp,
    pub finished: Timestamp,
    /// Non-secret facts from the caller (kind, cluster, WAL start…).
    pub labels: BTreeMap<String, String>,
    /// Number of file entries.
    pub files: u64,
    /// Sum of file sizes.
    pub plain_bytes: u64,
    /// Bytes this backup uploaded (chunks that were not there yet, the index
    /// and the file-state cache).
    pub new_stored_bytes: u64,
    /// The sealed index (file list and metadata).
    pub index: ObjectRef,
    /// Every chunk the files reference, sorted by id.
    pub chunks: Vec<ChunkRef>,
    /// The stream of a record (`Repository::start_record`); `None` for a
    /// backup. Signed with the rest, so a record moved to another stream or
    /// among the backups is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

impl Manifest {
    /// Sum of the stored sizes of the chunks and index this backup references.
    pub fn stored_bytes(&self) -> u64 {
        self.index.size + self.chunks.iter().map(|c| c.size).sum::<u64>()
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: u32,
    /// The manifest's JSON, exactly the bytes signed.
    manifest: String,
    /// ed25519 signature (hex) by the repository's signing key.
    signature: String,
}

/// What a file entry is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum FileKind {
    File,
    Dir,
    Symlink { target: String },
}

/// One entry of a backup's file list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative path with `/` separators; no `..`, no leading `/`.
    pub path: String,
    #[serde(flatten)]
    pub kind: FileKind,
    /// Unix permission bits.
    pub mode: u32,
    pub size: u64,
    /// Chunk ids in order (files only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
}

/// Row count and checksum of one table, as the caller measured them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableStat {
    pub database: String,
    pub table: String,
    pub rows: u64,
    pub checksum: String,
}

/// One filestore file, as the caller indexed it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FilestoreEntry {
    pub name: String,
    pub size: u64,
    pub sha1: String,
}

/// Facts about what was backed up; stored sealed (encrypted) with the file list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupMetadata {
    pub postgres_version: Option<String>,
    pub odoo_version: Option<String>,
    #[serde(default)]
    pub modules: Vec<String>,
    #[serde(default)]
    pub tables: Vec<TableStat>,
    #[serde(default)]
    pub filestore: Vec<FilestoreEntry>,
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The sealed part of a backup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupIndex {
    pub files: Vec<FileEntry>,
    pub metadata: BackupMetadata,
}

/// What `put_tree` saw of a file, so the next backup can take an unchanged
/// file's chunks without reading it. Stored sealed with a key derived from
/// the repository secret (`backups/<id>.state`), so careplane needs no
/// private key for it and nobody without the secret can read the paths.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct FileState {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    mode: u32,
    /// (chunk id, plaintext size) in order.
    chunks: Vec<(String, u64)>,
}

fn stat_key(meta: &std::fs::Metadata) -> (u64, i128, i128, u64) {
    use std::os::unix::fs::MetadataExt;
    (
        meta.size(),
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        meta.ino(),
    )
}

/// Progress of an upload, reported after each chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Plaintext bytes read so far in this backup.
    pub bytes_read: u64,
    /// Bytes uploaded so far (new chunks only).
    pub bytes_uploaded: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    /// Files `put_tree` took unchanged from the parent backup without reading.
    pub files_unchanged: u64,
}

/// What `verify` checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub objects: u64,
    pub stored_bytes: u64,
    /// Files whose content was decrypted and checked (deep only).
    pub files: u64,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub deleted_objects: u64,
    pub deleted_bytes: u64,
    pub kept_objects: u64,
    /// Unreferenced objects Object Lock still keeps (counted in
    /// `kept_objects` too); a later `gc` deletes them.
    pub locked_objects: u64,
    /// The latest retain-until date among them.
    pub locked_until: Option<Timestamp>,
}

/// The chunk `id` of `entry`, from the backup's chunk table.
fn chunk_of<'a>(
    manifest: &Manifest,
    table: &HashMap<&str, &'a ChunkRef>,
    entry: &FileEntry,
    id: &str,
) -> Result<&'a ChunkRef> {
    table.get(id).copied().ok_or_else(|| {
        corrupt(
            &manifest.id,
            &entry.path,
            format!("chunk {id} is not in the manifest's chunk table"),
        )
    })
}

/// About how many bytes of a file one restore thread writes at a time (see
/// [`Repository::restore_tree`]).
const RESTORE_RUN: u64 = 32 << 20;

/// A run of a file's chunks, written at `offset`.
struct Run {
    file: usize,
    chunks: std::ops::Range<usize>,
    offset: u64,
}

/// Which run a restore thread writes next. A file's runs are handed out in
/// order, biggest files first, and a thread takes a file no other thread is
/// writing whenever there is one: file systems serialize writes to one file
/// (ext4 on its inode lock, where the waiting thread spins), and two threads
/// on one 1 GiB table segment spent a tenth of the restore's CPU spinning.
/// They share a file only when nothing else is left.
struct RunQueue {
    /// Files with runs not yet handed out, biggest first.
    pending: std::collections::VecDeque<usize>,
    /// Per file: its next run (index into the runs) and the end of its runs.
    next: Vec<usize>,
    end: Vec<usize>,
    /// Per file: how many threads are writing it.
    busy: Vec<u32>,
}

impl RunQueue {
    /// `runs` holds each file's runs together and in order; `work(file)`
    /// is how much there is to write in it.
    fn new(runs: &[Run], files: usize, work: impl Fn(usize) -> u64) -> RunQueue {
        let (mut next, mut end) = (vec![0; files], vec![0; files]);
        for (i, r) in runs.iter().enumerate().rev() {
            next[r.file] = i;
        }
        for (i, r) in runs.iter().enumerate() {
            end[r.file] = i + 1;
        }
        let mut order: Vec<usize> = (0..files).filter(|&f| next[f] < end[f]).collect();
        order.sort_by_key(|&f| std::cmp::Reverse(work(f)));
        RunQueue {
            pending: order.into(),
            next,
            end,
            busy: vec![0; files],
        }
    }

    /// The next run to write, or `None` when all are handed out. Looks past
    /// at most as many files as there are threads.
    fn take(&mut self) -> Option<usize> {
        let pos = self
            .pending
            .iter()
            .position(|&f| self.busy[f] == 0)
            .or((!self.pending.is_empty()).then_some(0))?;
        let f = self.pending[pos];
        let run = self.next[f];
        self.next[f] += 1;
        self.busy[f] += 1;
        if self.next[f] == self.end[f] {
            self.pending.remove(pos);
        }
        Some(run)
    }

    /// A run of `file` is written.
    fn done(&mut self, file: usize) {
        self.busy[file] -= 1;
    }
}

/// A file being restored: open while some of its runs are unwritten.
struct OpenFile {
    file: Mutex<Option<std::sync::Arc<std::fs::File>>>,
    runs_left: AtomicU64,
}

/// Buffers one thread reuses for every chunk it reads (see
/// [`Repository::read_chunk_into`]).
struct ChunkScratch {
    compressed: Vec<u8>,
    plain: Vec<u8>,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl ChunkScratch {
    fn new() -> ChunkScratch {
        ChunkScratch {
            compressed: Vec::new(),
            plain: Vec::new(),
            zstd: None,
        }
    }
}

/// A handle on one repository. Blocking; share it between threads by reference.
pub struct Repository {
    pub(crate) store: Store,
    pub(crate) keys: Keys,
    config: Config,
    opts: RepoOptions,
    /// With immutability: chunks written before this were not locked.
    locked_since: Option<Timestamp>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("url", &self.store.url)
            .field("id", &self.config.repository)
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Repository {
    /// Opens (and on first use creates) the repository at `url` with default options.
    pub fn open(url: &str, keys: &RepoKeys) -> Result<Repository> {
        Self::open_with(url, keys, RepoOptions::default())
    }

    /// Opens (and on first use creates) the repository at `url`. Refuses a
    /// repository made with another secret or a newer format.
    pub fn open_with(url: &str, keys: &RepoKeys, opts: RepoOptions) -> Result<Repository> {
        if !(1..=22).contains(&opts.compression_level) {
            return Err(invalid(
                "compression level",
                format!("{} is not in 1..=22", opts.compression_level),
            ));
        }
        let keys = Keys::new(keys)?;
        let store = Store::open(url, &opts.store_options)?;
        // Before anything is written: a wrong bucket stays untouched.
        store.check_bucket_lock()?;
        let (chunk_check, wal_check) = keys.check_values();
        let verifying = hex::encode(keys.verifying_key().to_bytes());
        let config = match store.get(CONFIG)? {
            Some(bytes) => {
                let c: Config =
                    serde_json::from_slice(&bytes).map_err(|e| BackupError::Repository {
                        repository: store.url.clone(),
                        problem: format!("{CONFIG} is not a careplane repository config: {e}"),
                    })?;
                let problem = if c.format != FORMAT {
                    Some(format!(
                        "format {} (this careplane reads format {FORMAT})",
                        c.format
                    ))
                } else if c.chunk_key_check != chunk_check
                    || c.wal_key_check != wal_check
                    || c.verifying_key != verifying
                {
                    Some("was created with another repository secret".to_string())
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(BackupError::Repository {
                        repository: store.url.clone(),
                        problem,
                    });
                }
                // Every backup needs the config: with immutability it is
                // written again (same bytes, a new locked version) before
                // its lock could end inside a new backup's lock period.
                if let Some(lock) = store.lock() {
                    let needed = Timestamp::now()
                        .checked_add(jiff::SignedDuration::from_hours(24 * lock.days as i64 + 1))
                        .unwrap_or(Timestamp::MAX);
                    if store.locked_until(CONFIG)?.is_none_or(|u| u < needed) {
                        store.put_shared(CONFIG, bytes)?;
                    }
                }
                c
            }
            None => {
                let c = Config {
                    format: FORMAT,
                    repository: random_hex(16),
                    created: Timestamp::now(),
                    chunker: [CHUNK_MIN, CHUNK_AVG, CHUNK_MAX],
                    chunk_key_check: chunk_check,
                    wal_key_check: wal_check,
                    verifying_key: verifying,
                };
                let json = serde_json::to_vec_pretty(&c).expect("config serializes");
                store.put_shared(CONFIG, json)?;
                c
            }
        };
        let locked_since = lock_marker(&store)?;
        Ok(Repository {
            store,
            keys,
            config,
            opts,
            locked_since,
        })
    }

    /// The repository URL as shown in messages.
    pub fn url(&self) -> &str {
        &self.store.url
    }

    /// The repository's id (random, from its config).
    pub fn id(&self) -> &str {
        &self.config.repository
    }

    /// Starts a backup. Nothing is listed until [`BackupWriter::commit`].
    pub fn start_backup(&self, labels: BTreeMap<String, String>) -> Result<BackupWriter<'_>> {
        let started = Timestamp::now();
        let id = format!(
            "{}{:03}Z-{}",
            started.strftime("%Y%m%dT%H%M%S"),
            started.subsec_millisecond(),
            random_hex(4)
        );
        let mut known = HashMap::new();
        let lock = self.store.lock().zip(self.locked_since);
        for l in self.store.list("chunks")? {
            // A chunk written unlocked, or whose lock ends too soon for this
            // backup, is uploaded again rather than reused (docs/design/0015).
            if let Some((lock, since)) = lock {
                // Listings and HEAD give whole seconds: a chunk of the
                // marker's second may be from before it, so its own lock
                // decides (a HEAD for the few written in that second).
                let fresh = match l.modified.as_second().cmp(&since.as_second()) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal => {
                        let needed = started
                            .checked_add(jiff::SignedDuration::from_hours(
                                24 * lock.days as i64 + 1,
                            ))
                            .unwrap_or(Timestamp::MAX);
                        self.store
                            .locked_until(&l.name)?
                            .is_some_and(|u| u >= needed)
                    }
                    std::cmp::Ordering::Greater => {
                        crate::objectlock::reusable(l.modified, lock.days, started)
                    }
                };
                if !fresh {
                    continue;
                }
            }
            // chunks/xx/<id>.<hash>; anything else is not ours and ignored.
            let Some(file) = l.name.rsplit('/').next() else {
                continue;
            };
            let Some((cid, hash)) = file.split_once('.') else {
                continue;
            };
            if cid.len() == 64 && hash.len() == 64 {
                known.insert(cid.to_string(), (hash.to_string(), l.size));
            }
        }
        Ok(BackupWriter {
            repo: self,
            id,
            started,
            labels,
            known: Mutex::new(known),
            used: Mutex::new(BTreeMap::new()),
            files: Vec::new(),
            paths: HashSet::new(),
            progress: Mutex::new(Progress::default()),
            new_stored: AtomicU64::new(0),
            parent: HashMap::new(),
            state: Mutex::new(BTreeMap::new()),
            stream: None,
            note: None,
        })
    }

    fn manifest_object(id: &str) -> String {
        object_in(None, id, "manifest")
    }

    /// The manifest of one backup, its signature and identity checked.
    pub fn manifest(&self, id: &str) -> Result<Manifest> {
        self.manifest_in(None, id)
    }

    /// Starts a record of `stream` (`streams/<stream>/<id>.*`): written
    /// like a backup (chunks, sealed index, signed manifest last) but listed
    /// apart from the backups, so a stream of many small records (e.g. files
    /// shipped between backups) costs nothing to `list_backups`.
    pub fn start_record(
        &self,
        stream: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<BackupWriter<'_>> {
        check_backup_id(stream)?;
        let mut w = self.start_backup(labels)?;
        w.stream = Some(stream.to_string());
        Ok(w)
    }

    /// The ids of `stream`'s committed records, oldest first (ids start
    /// with their start time). Reads object names only.
    pub fn list_record_ids(&self, stream: &str) -> Result<Vec<String>> {
        check_backup_id(stream)?;
        let dir = format!("streams/{stream}/");
        let mut ids: Vec<String> = self
            .store
            .list(&format!("streams/{stream}"))?
            .into_iter()
            .filter_map(|l| {
                l.name
                    .strip_prefix(&dir)
                    .and_then(|n| n.strip_suffix(".manifest"))
                    .filter(|n| !n.contains('/'))
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// One record of `stream`, its signature, identity and stream checked.
    pub fn record(&self, stream: &str, id: &str) -> Result<Manifest> {
        check_backup_id(stream)?;
        self.manifest_in(Some(stream), id)
    }

    /// Every committed record of `stream`, oldest first.
    pub fn list_records(&self, stream: &str) -> Result<Vec<Manifest>> {
        let mut all = self
            .list_record_ids(stream)?
            .iter()
            .map(|id| self.record(stream, id))
            .collect::<Result<Vec<_>>>()?;
        all.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Deletes a record of `stream` (manifest first); its chunks go at the
    /// next [`Repository::gc`]. Refused with [`BackupError::Locked`] while
    /// Object Lock keeps it.
    pub fn delete_record(&self, stream: &str, id: &str) -> Result<()> {
        check_backup_id(stream)?;
        self.delete_in(Some(stream), id)
    }

    /// An object sealed with the repository secret (`.state`, `.note`):
    /// `None` when absent.
    fn read_sealed<T: serde::de::DeserializeOwned>(
        &self,
        m: &Manifest,
        ext: &str,
    ) -> Result<Option<T>> {
        let object = object_in(m.stream.as_deref(), &m.id, ext);
        let Some(sealed) = self.store.get(&object)? else {
            return Ok(None);
        };
        let plain = self
            .keys
            .open_with_secret(&sealed, object.as_bytes())
            .ok_or_else(|| corrupt(&m.id, &object, "does not authenticate (changed)"))?;
        let json = zstd::stream::decode_all(&plain[..])
            .map_err(|e| corrupt(&m.id, &object, format!("does not decompress: {e}")))?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| corrupt(&m.id, &object, format!("unreadable: {e}")))
    }

    /// The paths of the files whose state a backup recorded (`put_tree`'s
    /// files, less those modified in the 2 s before its walk): what it
    /// holds, read with the repository secret only (no private key).
    /// `None` when it recorded none.
    pub fn state_paths(&self, manifest: &Manifest) -> Result<Option<Vec<String>>> {
        let state: Option<BTreeMap<String, FileState>> = self.read_sealed(manifest, "state")?;
        Ok(state.map(|s| s.into_keys().collect()))
    }

    /// The note a backup or record was committed with
    /// ([`BackupWriter::seal_note`]), read with the repository secret only.
    pub fn note(&self, manifest: &Manifest) -> Result<Option<serde_json::Value>> {
        self.read_sealed(manifest, "note")
    }

    fn manifest_in(&self, stream: Option<&str>, id: &str) -> Result<Manifest> {
        check_backup_id(id)?;
        let object = object_in(stream, id, "manifest");
        let bytes = self
            .store
            .get(&object)?
            .ok_or_else(|| BackupError::NotFound {
                repository: self.store.url.clone(),
                backup: id.to_string(),
            })?;
        let env: Envelope = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(id, &object, format!("not a manifest envelope: {e}")))?;
        if !self.keys.verify(env.manifest.as_bytes(), &env.signature) {
            return Err(corrupt(
                id,
                &object,
                "signature does not verify (changed, or not signed with this repository's key)",
            ));
        }
        let m: Manifest = serde_json::from_str(&env.manifest)
            .map_err(|e| corrupt(id, &object, format!("signed manifest unreadable: {e}")))?;
        if m.id != id {
            return Err(corrupt(
                id,
                &object,
                format!(
                    "the manifest is backup {}'s (swapped or renamed manifest)",
                    m.id
                ),
            ));
        }
        if m.repository != self.config.repository {
            return Err(corrupt(
                id,
                &object,
                format!(
                    "the manifest belongs to repository {}, not {}",
                    m.repository, self.config.repository
                ),
            ));
        }
        if m.stream.as_deref() != stream {
            return Err(corrupt(
                id,
                &object,
                format!(
                    "the manifest is {}, not {} (moved)",
                    m.stream
                        .as_deref()
                        .map_or("a backup".to_string(), |s| format!(
                            "a record of stream {s}"
                        )),
                    stream.map_or("a backup".to_string(), |s| format!(
                        "a record of stream {s}"
                    )),
                ),
            ));
        }
        Ok(m)
    }

    /// Every committed backup, oldest first (by start time). A manifest that fails its
    /// checks fails the listing, naming it.
    pub fn list_backups(&self) -> Result<Vec<Manifest>> {
        let ids: Vec<String> = self
            .store
            .list("backups")?
            .into_iter()
            .filter_map(|l| {
                l.name
                    .strip_prefix("backups/")
                    .and_then(|n| n.strip_suffix(".manifest"))
                    .map(str::to_string)
            })
            .collect();
        let mut all = ids
            .iter()
            .map(|id| self.manifest(id))
            .collect::<Result<Vec<_>>>()?;
        all.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Fetches an object and checks it against the manifest's size and hash.
    fn fetch_checked(&self, backup: &str, object: &str, size: u64, hash: &str) -> Result<Vec<u8>> {
        let bytes = self
            .store
            .get(object)?
            .ok_or_else(|| corrupt(backup, object, "is missing"))?;
        if bytes.len() as u64 != size {
            return Err(corrupt(
                backup,
                object,
                format!(
                    "size {} differs from the manifest's {size} (changed or truncated)",
                    bytes.len()
                ),
            ));
        }
        if blake3::hash(&bytes).to_hex().as_str() != hash {
            return Err(corrupt(
                backup,
                object,
                "content hash differs from the manifest's (changed object)",
            ));
        }
        Ok(bytes)
    }

    fn unseal(&self, backup: &str, object: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let what = || format!("backup {backup}: object {object}");
        let compressed = self.keys.decrypt(sealed, &what)?;
        zstd::stream::decode_all(&compressed[..])
            .map_err(|e| corrupt(backup, object, format!("does not decompress: {e}")))
    }

    /// The sealed file list and metadata of a backup (needs a private key).
    pub fn index(&self, manifest: &Manifest) -> Result<BackupIndex> {
        let r = &manifest.index;
        let sealed = self.fetch_checked(&manifest.id, &r.object, r.size, &r.hash)?;
        let plain = self.unseal(&manifest.id, &r.object, &sealed)?;
        let index: BackupIndex = serde_json::from_slice(&plain)
            .map_err(|e| corrupt(&manifest.id, &r.object, format!("index unreadable: {e}")))?;
        Ok(index)
    }

    /// Fetches, decrypts and checks one chunk against its keyed id, into
    /// `scratch`'s buffers; the plaintext is `scratch.plain`. A restore reads a thousand or more chunks per
    /// gigabyte: fresh buffers per chunk (and a growing `Vec` for the
    /// decompressed megabyte) cost a tenth of its CPU in page faults and
    /// copies, and a zstd context per chunk more.
    fn read_chunk_into(
        &self,
        backup: &str,
        c: &ChunkRef,
        scratch: &mut ChunkScratch,
    ) -> Result<()> {
        let object = c.object();
        let sealed = self.fetch_checked(backup, &object, c.size, &c.hash)?;
        let what = || format!("backup {backup}: object {object}");
        self.keys
            .decrypt_into(&sealed, &mut scratch.compressed, &what)?;
        // The chunk table gives the plaintext size: decompressing into
        // exactly that much also bounds what a forged chunk can make us
        // allocate.
        let cap = usize::try_from(c.plain_size)
            .map_err(|_| corrupt(backup, &object, "plaintext size is impossible"))?;
        scratch.plain.clear();
        scratch.plain.reserve(cap);
        let zstd = match &mut scratch.zstd {
            Some(z) => z,
            z => z.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| crate::error::io("creating a zstd decompressor")(e))?,
            ),
        };
        zstd.decompress_to_buffer(&scratch.compressed[..], &mut scratch.plain)
            .map_err(|e| corrupt(backup, &object, format!("does not decompress: {e}")))?;
        if scratch.plain.len() as u64 != c.plain_size || self.keys.chunk_id(&scratch.plain) != c.id
        {
            return Err(corrupt(
                backup,
                &object,
                "decrypted content does not match the chunk id",
            ));
        }
        Ok(())
    }

    fn chunk_table(manifest: &Manifest) -> HashMap<&str, &ChunkRef> {
        manifest.chunks.iter().map(|c| (c.id.as_str(), c)).collect()
    }

    fn write_entry(
        &self,
        manifest: &Manifest,
        table: &HashMap<&str, &ChunkRef>,
        entry: &FileEntry,
        out: &mut dyn Write,
    ) -> Result<u64> {
        self.write_entry_with(manifest, table, entry, out, &mut ChunkScratch::new())
    }

    fn write_entry_with(
        &self,
        manifest: &Manifest,
        table: &HashMap<&str, &ChunkRef>,
        entry: &FileEntry,
        out: &mut dyn Write,
        scratch: &mut ChunkScratch,
    ) -> Result<u64> {
        let mut written = 0u64;
        for id in &entry.chunks {
            let c = chunk_of(manifest, table, entry, id)?;
            self.read_chunk_into(&manifest.id, c, scratch)?;
            out.write_all(&scratch.plain)
                .map_err(crate::error::io(format!("writing {}", entry.path)))?;
            written += scratch.plain.len() as u64;
        }
        if written != entry.size {
            return Err(corrupt(
                &manifest.id,
                &entry.path,
                format!(
                    "chunks add up to {written} bytes, the index says {}",
                    entry.size
                ),
            ));
        }
        Ok(written)
    }

    /// Writes one file of a backup to `out`; returns its size.
    pub fn read_file(&self, backup: &str, path: &str, out: &mut dyn Write) -> Result<u64> {
        let manifest = self.manifest(backup)?;
        let index = self.index(&manifest)?;
        let entry = index
            .files
            .iter()
            .find(|f| f.path == path && f.kind == FileKind::File)
            .ok_or_else(|| invalid(format!("backup {backup}"), format!("has no file {path:?}")))?;
        self.write_entry(&manifest, &Self::chunk_table(&manifest), entry, out)
    }

    /// Writes file `path` of a backup or record whose manifest and index
    /// the caller read already (many files of one record, one index read);
    /// returns its size. Every chunk is checked against the manifest.
    pub fn read_file_of(
        &self,
        manifest: &Manifest,
        index: &BackupIndex,
        path: &str,
        out: &mut dyn Write,
    ) -> Result<u64> {
        let entry = index
            .files
            .iter()
            .find(|f| f.path == path && f.kind == FileKind::File)
            .ok_or_else(|| {
                invalid(
                    format!("backup {}", manifest.id),
                    format!("has no file {path:?}"),
                )
            })?;
        self.write_entry(manifest, &Self::chunk_table(manifest), entry, out)
    }

    /// Restores the files of a backup for which `select(path)` holds into
    /// `dest`, which must be absent or empty; files are written with their
    /// modes and, if given, chowned to `owner` (uid, gid). On error `dest` is
    /// left incomplete and must not be used.
    pub fn restore_tree(
        &self,
        backup: &str,
        dest: &std::path::Path,
        owner: Option<(u32, u32)>,
        select: &dyn Fn(&str) -> bool,
    ) -> Result<u64> {
        self.restore_tree_with(backup, dest, owner, select, &|_| false, true)
    }

    /// [`Self::restore_tree`]; files not selected for which `placeholder`
    /// holds are created empty and sparse at their size (what a one-database
    /// restore puts in the other databases' place). Without `sync` no file
    /// is fsynced, for a directory that is thrown away after use (a
    /// one-database restore's scratch server, which runs with `fsync = off`
    /// anyway).
    pub(crate) fn restore_tree_with(
        &self,
        backup: &str,
        dest: &std::path::Path,
        owner: Option<(u32, u32)>,
        select: &dyn Fn(&str) -> bool,
        placeholder: &dyn Fn(&str) -> bool,
        sync: bool,
    ) -> Result<u64> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let manifest = self.manifest(backup)?;
        let index = self.index(&manifest)?;
        let table = Self::chunk_table(&manifest);
        if dest.exists()
            && std::fs::read_dir(dest)
                .map_err(crate::error::io(format!("reading {}", dest.display())))?
                .next()
                .is_some()
        {
            return Err(invalid(
                format!("restore destination {}", dest.display()),
                "is not empty",
            ));
        }
        let io = |what: String| crate::error::io(what);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .map_err(io(format!("creating {}", dest.display())))?;
        let chown = |p: &std::path::Path| -> Result<()> {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(p, Some(uid), Some(gid))
                    .map_err(io(format!("chown {}", p.display())))?;
            }
            Ok(())
        };
        chown(dest)?;
        // Directories and links first (sorted paths put parents first), then
        // files across the repository's threads, then directory modes (a
        // read-only directory would refuse its files).
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for entry in &index.files {
            check_rel_path(&manifest.id, &entry.path)?;
            let sparse = !select(&entry.path);
            if sparse && !(entry.kind == FileKind::File && placeholder(&entry.path)) {
                continue;
            }
            let target = dest.join(&entry.path);
            if let Some(parent) = target.parent() {
                if !parent.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(io(format!("creating {}", parent.display())))?;
                    chown(parent)?;
                }
            }
            match &entry.kind {
                FileKind::Dir => {
                    if !target.exists() {
                        std::fs::DirBuilder::new()
                            .mode(0o700)
                            .create(&target)
                            .map_err(io(format!("creating {}", target.display())))?;
                    }
                    chown(&target)?;
                    dirs.push((target, entry.mode));
                }
                FileKind::Symlink { target: to } => {
                    std::os::unix::fs::symlink(to, &target)
                        .map_err(io(format!("creating symlink {}", target.display())))?;
                    chown(&target)?;
                }
                FileKind::File => files.push((target, entry, sparse)),
            }
        }
        // The work is cut into runs of whole chunks of about RESTORE_RUN
        // bytes, each written at its offset by whichever thread takes it:
        // with whole files per thread, a 1 GiB table segment kept one thread
        // busy long after the other had finished the rest.
        let mut runs = Vec::new();
        for (fi, (_, entry, sparse)) in files.iter().enumerate() {
            if *sparse {
                // Created among the other runs: thousands of file creations
                // were most of a one-database restore, one after another.
                runs.push(Run {
                    file: fi,
                    chunks: 0..0,
                    offset: 0,
                });
                continue;
            }
            let (mut first, mut start, mut end) = (0, 0u64, 0u64);
            let before = runs.len();
            for (ci, id) in entry.chunks.iter().enumerate() {
                end += chunk_of(&manifest, &table, entry, id)?.plain_size;
                if end - start >= RESTORE_RUN {
                    runs.push(Run {
                        file: fi,
                        chunks: first..ci + 1,
                        offset: start,
                    });
                    (first, start) = (ci + 1, end);
                }
            }
            if first < entry.chunks.len() || runs.len() == before {
                runs.push(Run {
                    file: fi,
                    chunks: first..entry.chunks.len(),
                    offset: start,
                });
            }
            if end != entry.size {
                return Err(corrupt(
                    &manifest.id,
                    &entry.path,
                    format!(
                        "chunks add up to {end} bytes, the index says {}",
                        entry.size
                    ),
                ));
            }
        }
        let mut runs_of = vec![0u64; files.len()];
        for r in &runs {
            runs_of[r.file] += 1;
        }
        let open: Vec<OpenFile> = runs_of
            .into_iter()
            .map(|n| OpenFile {
                file: Mutex::new(None),
                runs_left: AtomicU64::new(n),
            })
            .collect();
        let sched = Mutex::new(RunQueue::new(&runs, files.len(), |fi| {
            if files[fi].2 {
                0
            } else {
                files[fi].1.size
            }
        }));
        let bytes = AtomicU64::new(0);
        let failed: Mutex<Option<BackupError>> = Mutex::new(None);
        let restore_run = |run: &Run, scratch: &mut ChunkScratch| -> Result<()> {
            use std::os::unix::fs::FileExt;
            let (target, entry, sparse) = &files[run.file];
            let slot = &open[run.file];
            // The first run of a file to start creates it; the fd is closed
            // when its last run ends (thousands of filestore files must not
            // all stay open).
            let f = {
                let mut g = slot.file.lock().unwrap();
                match &*g {
                    Some(f) => std::sync::Arc::clone(f),
                    None => {
                        let f = std::sync::Arc::new(
                            std::fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .mode(entry.mode & 0o7777)
                                .custom_flags(libc::O_NOFOLLOW)
                                .open(target)
                                .map_err(io(format!("creating {}", target.display())))?,
                        );
                        *g = Some(std::sync::Arc::clone(&f));
                        f
                    }
                }
            };
            if *sparse {
                f.set_len(entry.size)
                    .map_err(io(format!("sizing {}", target.display())))?;
            }
            let mut offset = run.offset;
            for id in &entry.chunks[run.chunks.clone()] {
                // Present: every id was looked up when the runs were cut.
                let c = table[id.as_str()];
                self.read_chunk_into(&manifest.id, c, scratch)?;
                // Straight from the decompression buffer: no second copy.
                f.write_all_at(&scratch.plain, offset)
                    .map_err(io(format!("writing {}", target.display())))?;
                offset += scratch.plain.len() as u64;
            }
            if sync && offset > run.offset {
                use std::os::fd::AsRawFd;
                // Start writing this run back now, while the next is being
                // decoded, so the file's closing fsync finds little left.
                // Advisory: the fsync reports any error.
                // SAFETY: a valid fd of an open file; no memory is passed.
                unsafe {
                    libc::sync_file_range(
                        f.as_raw_fd(),
                        run.offset as libc::off64_t,
                        (offset - run.offset) as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            }
            bytes.fetch_add(offset - run.offset, Ordering::Relaxed);
            if slot.runs_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                slot.file.lock().unwrap().take();
                if sync {
                    f.sync_all()
                        .map_err(io(format!("syncing {}", target.display())))?;
                }
                chown(target)?;
            }
            Ok(())
        };
        std::thread::scope(|s| {
            for _ in 0..self.opts.threads.max(1) {
                s.spawn(|| {
                    let mut scratch = ChunkScratch::new();
                    loop {
                        let Some(i) = sched.lock().unwrap().take() else {
                            break;
                        };
                        if failed.lock().unwrap().is_some() {
                            break;
                        }
                        if let Err(e) = restore_run(&runs[i], &mut scratch) {
                            failed.lock().unwrap().get_or_insert(e);
                        }
                        sched.lock().unwrap().done(runs[i].file);
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap() {
            return Err(e);
        }
        for (target, mode) in dirs.iter().rev() {
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io(format!("chmod {}", target.display())))?;
        }
        Ok(bytes.into_inner())
    }

    /// Checks a backup: its manifest's signature and identity, and every
    /// object it references (present, same size, same hash). `deep` also
    /// decrypts the index and every chunk (needs a private key) and checks
    /// each chunk's plaintext against its keyed id and each file's chunks.
    /// All problems are reported together, each naming its object.
    pub fn verify(&self, backup: &str, deep: bool) -> Result<VerifyReport> {
        self.verify_manifest(self.manifest(backup)?, deep)
    }

    /// [`Repository::verify`] of a record as [`Repository::record`] read it
    /// (its signature, identity and stream already checked).
    pub fn verify_record(&self, record: Manifest, deep: bool) -> Result<VerifyReport> {
        self.verify_manifest(record, deep)
    }

    fn verify_manifest(&self, manifest: Manifest, deep: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut problems = Vec::new();
        let note = |e: BackupError, problems: &mut Vec<String>| match e {
            BackupError::Corrupt {
                object, problem, ..
            } => problems.push(format!("object {object}: {problem}")),
            other => problems.push(other.to_string()),
        };
        let index = if deep {
            match self.index(&manifest) {
                Ok(i) => Some(i),
                Err(e @ (BackupError::NoPrivateKey { .. } | BackupError::WrongKey { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    note(e, &mut problems);
                    None
                }
            }
        } else {
            let r = &manifest.index;
            if let Err(e) = self.fetch_checked(&manifest.id, &r.object, r.size, &r.hash) {
                note(e, &mut problems);
            }
            None
        };
        report.objects += 1;
        report.stored_bytes += manifest.index.size;
        let mut scratch = ChunkScratch::new();
        for c in &manifest.chunks {
            let res = if deep {
                self.read_chunk_into(&manifest.id, c, &mut scratch)
            } else {
                self.fetch_checked(&manifest.id, &c.object(), c.size, &c.hash)
                    .map(|_| ())
            };
            match res {
                Ok(()) => {}
                Err(e @ (BackupError::NoPrivateKey { .. } | BackupError::WrongKey { .. })) => {
                    return Err(e)
                }
                Err(e @ BackupError::Store { .. }) => return Err(e),
                Err(e) => note(e, &mut problems),
            }
            report.objects += 1;
            report.stored_bytes += c.size;
        }
        if let Some(index) = index {
            let table = Self::chunk_table(&manifest);
            for f in &index.files {
                if let Err(e) = check_rel_path(&manifest.id, &f.path) {
                    note(e, &mut problems);
                }
                let mut sum = 0;
                for id in &f.chunks {
                    match table.get(id.as_str()) {
                        Some(c) => sum += c.plain_size,
                        None => problems.push(format!(
                            "file {}: chunk {id} is not in the manifest",
                            f.path
                        )),
                    }
                }
                if f.kind == FileKind::File && sum != f.size {
                    problems.push(format!(
                        "file {}: chunks add up to {sum} bytes, the index says {}",
                        f.path, f.size
                    ));
                }
                report.files += 1;
            }
        }
        if problems.is_empty() {
            Ok(report)
        } else {
            Err(BackupError::Verify {
                backup: manifest.id,
                problems,
            })
        }
    }

    /// Until when S3 Object Lock keeps a backup: its manifest's retain-until
    /// date (the manifest is its last object written, so its lock ends
    /// last). `None` when the repository is not immutable or the lock ended.
    pub fn locked_until(&self, backup: &str) -> Result<Option<Timestamp>> {
        check_backup_id(backup)?;
        self.store.locked_until(&Self::manifest_object(backup))
    }

    /// Deletes a backup: its manifest first (so it is no longer listed), then
    /// its index. Its chunks go at the next [`Repository::gc`]. A backup
    /// Object Lock still keeps is refused with [`BackupError::Locked`]
    /// before anything is deleted, so it stays whole and listed.
    pub fn delete_backup(&self, backup: &str) -> Result<()> {
        self.delete_in(None, backup)
    }

    fn delete_in(&self, stream: Option<&str>, backup: &str) -> Result<()> {
        check_backup_id(backup)?;
        let object = object_in(stream, backup, "manifest");
        if !self.store.exists(&object)? {
            return Err(BackupError::NotFound {
                repository: self.store.url.clone(),
                backup: backup.to_string(),
            });
        }
        if let Some(until) = self.store.locked_until(&object)? {
            return Err(BackupError::Locked {
                repository: self.store.url.clone(),
                backup: backup.to_string(),
                until,
            });
        }
        self.store.delete(&object)?;
        self.store.delete(&object_in(stream, backup, "index"))?;
        self.store.delete(&object_in(stream, backup, "state"))?;
        self.store.delete(&object_in(stream, backup, "note"))
    }

    /// Deletes chunks and indexes that no manifest references and that are
    /// older than `grace` (so a backup still uploading keeps its objects).
    /// Must not run concurrently with a backup that reuses chunks.
    pub fn gc(&self, grace: std::time::Duration) -> Result<GcReport> {
        let mut manifests = self.list_backups()?;
        // Every stream's records keep their chunks too.
        let records = self.store.list("streams")?;
        for l in &records {
            let Some((stream, id)) = l
                .name
                .strip_prefix("streams/")
                .and_then(|n| n.strip_suffix(".manifest"))
                .and_then(|n| n.split_once('/'))
            else {
                continue;
            };
            manifests.push(self.record(stream, id)?);
        }
        let mut referenced: HashSet<String> = HashSet::new();
        for m in &manifests {
            referenced.insert(m.index.object.clone());
            referenced.insert(object_in(m.stream.as_deref(), &m.id, "state"));
            referenced.insert(object_in(m.stream.as_deref(), &m.id, "note"));
            referenced.extend(m.chunks.iter().map(|c| c.object()));
        }
        let cutoff = Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MIN);
        let mut report = GcReport::default();
        let mut candidates = self.store.list("chunks")?;
        candidates.extend(
            self.store
                .list("backups")?
                .into_iter()
                .chain(records)
                .filter(|l| {
                    l.name.ends_with(".index")
                        || l.name.ends_with(".state")
                        || l.name.ends_with(".note")
                }),
        );
        for l in candidates {
            if referenced.contains(&l.name) || l.modified > cutoff {
                report.kept_objects += 1;
                continue;
            }
            if let Some(until) = self.store.locked_until(&l.name)? {
                report.kept_objects += 1;
                report.locked_objects += 1;
                report.locked_until = report.locked_until.max(Some(until));
                continue;
            }
            self.store.delete(&l.name)?;
            report.deleted_objects += 1;
            report.deleted_bytes += l.size;
        }
        Ok(report)
    }

    fn compress_and_seal(&self, data: &[u8]) -> Result<Vec<u8>> {
        let compressed = zstd::bulk::compress(data, self.opts.compression_level)
            .map_err(crate::error::io("compressing"))?;
        self.keys.encrypt(&compressed)
    }
}

/// With immutability: since when the repository has been immutable, in
/// the store's clock (what chunk listings are compared with): the time the
/// locked marker object was first written. The marker is written again
/// before its lock runs out, like the config, carrying that time. A marker
/// whose lock ran out, or none, starts a new period. Without immutability
/// the marker is removed, so that immutability turned on again later
/// starts afresh.
fn lock_marker(store: &Store) -> Result<Option<Timestamp>> {
    let Some(lock) = store.lock() else {
        if store.exists(LOCK_MARKER)? {
            store.delete(LOCK_MARKER)?;
        }
        return Ok(None);
    };
    let first_written = |store: &Store| -> Result<Timestamp> {
        store
            .modified(LOCK_MARKER)?
            .ok_or_else(|| BackupError::Repository {
                repository: store.url.clone(),
                problem: format!("{LOCK_MARKER} vanished right after it was written"),
            })
    };
    let Some(until) = store.locked_until(LOCK_MARKER)? else {
        let json = serde_json::to_vec(&LockMarker { since: None }).expect("marker serializes");
        store.put_shared(LOCK_MARKER, json)?;
        return first_written(store).map(Some);
    };
    let since = match store
        .get(LOCK_MARKER)?
        .and_then(|b| serde_json::from_slice::<LockMarker>(&b).ok())
        .and_then(|m| m.since)
    {
        Some(since) => since,
        None => first_written(store)?,
    };
    let needed = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24 * lock.days as i64 + 1))
        .unwrap_or(Timestamp::MAX);
    if until < needed {
        let json =
            serde_json::to_vec(&LockMarker { since: Some(since) }).expect("marker serializes");
        store.put_shared(LOCK_MARKER, json)?;
    }
    Ok(Some(since))
}

/// The repository's config, if it has one.
pub(crate) fn read_config(store: &Store) -> Result<Option<Config>> {
    let Some(bytes) = store.get(CONFIG)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| BackupError::Repository {
            repository: store.url.clone(),
            problem: format!("{CONFIG} is not a careplane repository config: {e}"),
        })
}

/// The name of a backup's (`stream` None) or a record's object `ext`
/// (`manifest`, `index`, `state`).
fn object_in(stream: Option<&str>, id: &str, ext: &str) -> String {
    match stream {
        None => format!("backups/{id}.{ext}"),
        Some(s) => format!("streams/{s}/{id}.{ext}"),
    }
}

fn check_backup_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            format!("backup id {id:?}"),
            "must be letters, digits, `-` and `_`",
        ));
    }
    Ok(())
}

fn check_rel_path(backup: &str, path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(corrupt(
            backup,
            path,
            "file path is not a plain relative path (would escape the destination)",
        ));
    }
    Ok(())
}

/// A backup being written. Upload what you want with `put_*`, then
/// [`BackupWriter::commit`]. Dropping it without commit leaves no backup,
/// only chunks the next backup reuses (or `gc` removes).
pub struct BackupWriter<'r> {
    repo: &'r Repository,
    id: String,
    started: Timestamp,
    labels: BTreeMap<String, String>,
    /// Chunks in the store: id → (stored hash, stored size).
    known: Mutex<HashMap<String, (String, u64)>>,
    /// Chunks this backup references.
    used: Mutex<BTreeMap<String, ChunkRef>>,
    files: Vec<FileEntry>,
    paths: HashSet<String>,
    progress: Mutex<Progress>,
    new_stored: AtomicU64,
    /// File states of the backup named in `reuse_unchanged_from`.
    parent: HashMap<String, FileState>,
    /// File states of this backup (from `put_tree`; files modified less
    /// than 2 s before the walk are left out, so they are read next time).
    state: Mutex<BTreeMap<String, FileState>>,
    /// A record's stream (`Repository::start_record`); `None` for a backup.
    stream: Option<String>,
    note: Option<serde_json::Value>,
}

/// Called with the running totals after each chunk.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Sync);

impl BackupWriter<'_> {
    /// This backup's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Lets `put_tree` take the chunks of files that are unchanged since
    /// backup `parent` (same size, modification and change times, inode)
    /// without reading them, provided their chunks are still in the
    /// repository. Returns how many file states were loaded (0 when the
    /// parent has none). Needs no private key.
    pub fn reuse_unchanged_from(&mut self, parent: &str) -> Result<usize> {
        let m = self.repo.manifest(parent)?;
        self.parent = self.repo.read_sealed(&m, "state")?.unwrap_or_default();
        Ok(self.parent.len())
    }

    /// A small JSON note committed with this backup or record, sealed with
    /// the repository secret (`<id>.note`): what careplane must read back
    /// without a private key (a customer may hold the only one).
    pub fn seal_note(&mut self, note: serde_json::Value) {
        self.note = Some(note);
    }

    /// The entry of an unchanged file from the parent's state, its chunks
    /// marked used; `None` if it changed or a chunk is gone.
    fn reuse(
        &self,
        path: &str,
        meta: &std::fs::Metadata,
        mode: u32,
        progress: ProgressFn<'_>,
    ) -> Option<FileEntry> {
        let old = self.parent.get(path)?;
        let (size, mtime_ns, ctime_ns, ino) = stat_key(meta);
        if (old.size, old.mtime_ns, old.ctime_ns, old.ino, old.mode)
            != (size, mtime_ns, ctime_ns, ino, mode)
        {
            return None;
        }
        let refs: Vec<ChunkRef> = {
            let known = self.known.lock().unwrap();
            old.chunks
                .iter()
                .map(|(id, plain)| {
                    known.get(id).map(|(hash, stored)| ChunkRef {
                        id: id.clone(),
                        plain_size: *plain,
                        size: *stored,
                        hash: hash.clone(),
                    })
                })
                .collect::<Option<_>>()?
        };
        {
            let mut used = self.used.lock().unwrap();
            for r in &refs {
                used.entry(r.id.clone()).or_insert_with(|| r.clone());
            }
        }
        let snapshot = {
            let mut p = self.progress.lock().unwrap();
            p.bytes_read += size;
            p.chunks_reused += refs.len() as u64;
            p.files_unchanged += 1;
            *p
        };
        progress(snapshot);
        self.state
            .lock()
            .unwrap()
            .insert(path.to_string(), old.clone());
        Some(FileEntry {
            path: path.to_string(),
            kind: FileKind::File,
            mode,
            size,
            chunks: old.chunks.iter().map(|(id, _)| id.clone()).collect(),
        })
    }

    /// Adds or replaces a label (clear, signed; nothing secret).
    pub fn label(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.labels.insert(key.into(), value.into());
    }

    fn add_path(&mut self, path: &str) -> Result<()> {
        check_rel_path(&self.id, path).map_err(|_| {
            invalid(
                format!("file path {path:?}"),
                "must be a plain relative path",
            )
        })?;
        if !self.paths.insert(path.to_string()) {
            return Err(invalid(
                format!("file path {path:?}"),
                "is already in this backup",
            ));
        }
        Ok(())
    }

    /// Makes sure one chunk is in the store and referenced by this backup.
    fn ensure_chunk(&self, id: &str, data: &[u8], progress: ProgressFn<'_>) -> Result<()> {
        let existing = self.known.lock().unwrap().get(id).cloned();
        let (hash, size, new) = match existing {
            Some((hash, size)) => (hash, size, false),
            None => {
                let sealed = self.repo.compress_and_seal(data)?;
                let hash = blake3::hash(&sealed).to_hex().to_string();
                let size = sealed.len() as u64;
                self.repo
                    .store
                    .put_shared(&chunk_object(id, &hash), sealed)?;
                self.known
                    .lock()
                    .unwrap()
                    .insert(id.to_string(), (hash.clone(), size));
                self.new_stored.fetch_add(size, Ordering::Relaxed);
                (hash, size, true)
            }
        };
        self.used
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert(ChunkRef {
                id: id.to_string(),
                plain_size: data.len() as u64,
                size,
                hash,
            });
        let snapshot = {
            let mut p = self.progress.lock().unwrap();
            p.bytes_read += data.len() as u64;
            if new {
                p.chunks_new += 1;
                p.bytes_uploaded += size;
            } else {
                p.chunks_reused += 1;
            }
            *p
        };
        progress(snapshot);
        Ok(())
    }

    /// Chunks a stream, uploading only chunks the repository lacks. With
    /// `parallel`, chunks are compressed, encrypted and uploaded by the
    /// repository's threads while this one reads on.
    fn store_stream(
        &self,
        what: &str,
        reader: &mut dyn Read,
        parallel: bool,
        progress: ProgressFn<'_>,
    ) -> Result<(Vec<String>, u64)> {
        let chunker = fastcdc::v2020::StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
        let mut ids = Vec::new();
        let mut size = 0u64;
        let read_err = |e: fastcdc::v2020::Error| match e {
            fastcdc::v2020::Error::IoError(source) => BackupError::Io {
                what: format!("reading {what}"),
                source,
            },
            other => invalid(format!("reading {what}"), other.to_string()),
        };
        let threads = self.repo.opts.threads.max(1);
        if !parallel || threads == 1 {
            for chunk in chunker {
                let chunk = chunk.map_err(read_err)?;
                let id = self.repo.keys.chunk_id(&chunk.data);
                self.ensure_chunk(&id, &chunk.data, progress)?;
                size += chunk.data.len() as u64;
                ids.push(id);
            }
            return Ok((ids, size));
        }
        let failed: Mutex<Option<BackupError>> = Mutex::new(None);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(String, Vec<u8>)>(threads);
        let rx = Mutex::new(rx);
        std::thread::scope(|s| -> Result<()> {
            let tx = tx;
            for _ in 0..threads {
                s.spawn(|| loop {
                    let job = rx.lock().unwrap().recv();
                    let Ok((id, data)) = job else { break };
                    if failed.lock().unwrap().is_some() {
                        continue;
                    }
                    if let Err(e) = self.ensure_chunk(&id, &data, progress) {
                        failed.lock().unwrap().get_or_insert(e);
                    }
                });
            }
            for chunk in chunker {
                if failed.lock().unwrap().is_some() {
                    break;
                }
                let chunk = chunk.map_err(read_err)?;
                let id = self.repo.keys.chunk_id(&chunk.data);
                size += chunk.data.len() as u64;
                ids.push(id.clone());
                if tx.send((id, chunk.data)).is_err() {
                    break;
                }
            }
            Ok(())
        })?;
        if let Some(e) = failed.into_inner().unwrap() {
            return Err(e);
        }
        Ok((ids, size))
    }

    /// Stores a stream as file `path` (mode `mode`) of this backup.
    pub fn put_stream(
        &mut self,
        path: &str,
        mode: u32,
        reader: &mut dyn Read,
        progress: ProgressFn<'_>,
    ) -> Result<FileEntry> {
        self.add_path(path)?;
        let (chunks, size) = self.store_stream(path, reader, true, progress)?;
        let entry = FileEntry {
            path: path.to_string(),
            kind: FileKind::File,
            mode,
            size,
            chunks,
        };
        self.files.push(entry.clone());
        Ok(entry)
    }

    /// Takes file `path` out of this backup again (found unusable after it
    /// was stored, e.g. its content did not match its name). Its chunks
    /// stay in the manifest's table, so in the repository, until the
    /// backup is deleted. Returns whether it was there.
    pub fn forget(&mut self, path: &str) -> bool {
        let before = self.files.len();
        self.files.retain(|f| f.path != path);
        self.paths.remove(path);
        self.files.len() != before
    }

    /// Records a directory (with its mode).
    pub fn put_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.add_path(path)?;
        self.files.push(FileEntry {
            path: path.to_string(),
            kind: FileKind::Dir,
            mode,
            size: 0,
            chunks: Vec::new(),
        });
        Ok(())
    }

    /// Records a symbolic link (never followed).
    pub fn put_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.add_path(path)?;
        self.files.push(FileEntry {
            path: path.to_string(),
            kind: FileKind::Symlink {
                target: target.to_string(),
            },
            mode: 0o777,
            size: 0,
            chunks: Vec::new(),
        });
        Ok(())
    }

    /// Stores a directory tree under `prefix` (empty: at the top): files,
    /// directories and symlinks (not followed; files are opened with
    /// `O_NOFOLLOW`). Files are uploaded by the repository's threads, one
    /// file per thread. Returns the number of entries added.
    pub fn put_tree(
        &mut self,
        root: &std::path::Path,
        prefix: &str,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        self.put_tree_filtered(root, prefix, &|_| false, progress)
    }

    /// [`BackupWriter::put_tree`], leaving out every entry for which
    /// `exclude(path relative to root)` holds (a directory's contents too).
    /// Files and directories that vanish while the tree is walked are left
    /// out (a live data directory or filestore changes under the walk).
    pub fn put_tree_filtered(
        &mut self,
        root: &std::path::Path,
        prefix: &str,
        exclude: &dyn Fn(&str) -> bool,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let prefix = prefix.trim_matches('/');
        let full = |rel: &str| {
            if prefix.is_empty() {
                rel.to_string()
            } else if rel.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}/{rel}")
            }
        };
        let trust_before = jiff::Timestamp::now().as_nanosecond() - 2_000_000_000;
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        let mut links = Vec::new();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if gone(&e) && !rel.is_empty() => continue,
                Err(e) => {
                    return Err(BackupError::Io {
                        what: format!("reading {}", dir.display()),
                        source: e,
                    })
                }
            };
            let mut entries: Vec<_> = entries
                .filter(|e| !matches!(e, Err(err) if gone(err)))
                .collect::<std::io::Result<_>>()
                .map_err(crate::error::io(format!("reading {}", dir.display())))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name();
                let name = name.to_str().ok_or_else(|| {
                    invalid(format!("file {}", e.path().display()), "name is not UTF-8")
                })?;
                let local = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                if exclude(&local) {
                    continue;
                }
                let path = full(&local);
                let meta = match std::fs::symlink_metadata(e.path()) {
                    Ok(m) => m,
                    Err(err) if gone(&err) => continue,
                    Err(err) => {
                        return Err(BackupError::Io {
                            what: format!("stat {}", e.path().display()),
                            source: err,
                        })
                    }
                };
                let ft = meta.file_type();
                if ft.is_dir() {
                    dirs.push((path, meta.mode() & 0o7777));
                    stack.push((e.path(), local));
                } else if ft.is_symlink() {
                    let to = std::fs::read_link(e.path())
                        .map_err(crate::error::io(format!("readlink {}", e.path().display())))?;
                    links.push((path, to.to_string_lossy().into_owned()));
                } else if ft.is_file() {
                    let mode = meta.mode() & 0o7777;
                    files.push((path, e.path(), mode, meta));
                }
                // Sockets, FIFOs and devices are not backed up.
            }
        }
        let count = (dirs.len() + files.len() + links.len()) as u64;
        for (p, m) in dirs {
            self.put_dir(&p, m)?;
        }
        for (p, t) in links {
            self.put_symlink(&p, &t)?;
        }
        for (p, _, _, _) in &files {
            self.add_path(p)?;
        }
        let next = AtomicU64::new(0);
        let results: Mutex<Vec<Option<FileEntry>>> = Mutex::new(vec![None; files.len()]);
        let failed: Mutex<Option<BackupError>> = Mutex::new(None);
        let this = &*self;
        std::thread::scope(|s| {
            for _ in 0..this.repo.opts.threads.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= files.len() || failed.lock().unwrap().is_some() {
                        break;
                    }
                    let (path, fs_path, mode, meta) = &files[i];
                    if let Some(entry) = this.reuse(path, meta, *mode, progress) {
                        results.lock().unwrap()[i] = Some(entry);
                        continue;
                    }
                    let file = match std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(fs_path)
                    {
                        Err(e) if gone(&e) => continue,
                        other => other,
                    };
                    let res = file
                        .map_err(crate::error::io(format!("opening {}", fs_path.display())))
                        .and_then(|mut f| this.store_stream(path, &mut f, false, progress));
                    match res {
                        Ok((chunks, size)) => {
                            let (ssize, mtime_ns, ctime_ns, ino) = stat_key(meta);
                            // A file changed in the same timestamp tick after
                            // it was examined would keep its mtime: only files
                            // untouched for a while before the walk are
                            // trusted by the next backup.
                            if ssize == size && mtime_ns < trust_before {
                                let used = this.used.lock().unwrap();
                                let state = FileState {
                                    size,
                                    mtime_ns,
                                    ctime_ns,
                                    ino,
                                    mode: *mode,
                                    chunks: chunks
                                        .iter()
                                        .map(|id| (id.clone(), used[id].plain_size))
                                        .collect(),
                                };
                                drop(used);
                                this.state.lock().unwrap().insert(path.clone(), state);
                            }
                            results.lock().unwrap()[i] = Some(FileEntry {
                                path: path.clone(),
                                kind: FileKind::File,
                                mode: *mode,
                                size,
                                chunks,
                            });
                        }
                        Err(e) => {
                            failed.lock().unwrap().get_or_insert(e);
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap() {
            return Err(e);
        }
        self.files
            .extend(results.into_inner().unwrap().into_iter().flatten());
        Ok(count)
    }

    /// Writes the sealed index, then the signed manifest: only now does the
    /// backup exist. Returns the manifest.
    pub fn commit(self, metadata: BackupMetadata) -> Result<Manifest> {
        let repo = self.repo;
        let mut files = self.files;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let plain_bytes = files.iter().map(|f| f.size).sum();
        let file_count = files.len() as u64;
        let index = BackupIndex { files, metadata };
        let json = serde_json::to_vec(&index).expect("index serializes");
        let sealed = repo.compress_and_seal(&json)?;
        let stream = self.stream.as_deref();
        let index_ref = ObjectRef {
            object: object_in(stream, &self.id, "index"),
            size: sealed.len() as u64,
            hash: blake3::hash(&sealed).to_hex().to_string(),
        };
        repo.store.put(&index_ref.object, sealed)?;
        let state = self.state.into_inner().unwrap();
        let mut state_size = 0;
        if !state.is_empty() {
            let object = object_in(stream, &self.id, "state");
            let json = serde_json::to_vec(&state).expect("file state serializes");
            let compressed =
                zstd::bulk::compress(&json, 3).map_err(crate::error::io("compressing"))?;
            let sealed = repo.keys.seal_with_secret(&compressed, object.as_bytes());
            state_size = sealed.len() as u64;
            repo.store.put(&object, sealed)?;
        }
        if let Some(note) = &self.note {
            let object = object_in(stream, &self.id, "note");
            let json = serde_json::to_vec(note).expect("note serializes");
            let compressed =
                zstd::bulk::compress(&json, 3).map_err(crate::error::io("compressing"))?;
            let sealed = repo.keys.seal_with_secret(&compressed, object.as_bytes());
            state_size += sealed.len() as u64;
            repo.store.put(&object, sealed)?;
        }
        let manifest = Manifest {
            format: FORMAT,
            id: self.id.clone(),
            repository: repo.config.repository.clone(),
            started: self.started,
            finished: Timestamp::now(),
            labels: self.labels,
            files: file_count,
            plain_bytes,
            new_stored_bytes: self.new_stored.load(Ordering::Relaxed) + index_ref.size + state_size,
            index: index_ref,
            chunks: self.used.into_inner().unwrap().into_values().collect(),
            stream: self.stream.clone(),
        };
        let body = serde_json::to_string(&manifest).expect("manifest serializes");
        let env = Envelope {
            format: FORMAT,
            signature: repo.keys.sign(body.as_bytes()),
            manifest: body,
        };
        repo.store.put(
            &object_in(stream, &self.id, "manifest"),
            serde_json::to_vec_pretty(&env).expect("envelope serializes"),
        )?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::{Run, RunQueue};

    fn runs(per_file: &[usize]) -> Vec<Run> {
        let mut out = Vec::new();
        for (file, &n) in per_file.iter().enumerate() {
            for k in 0..n {
                out.push(Run {
                    file,
                    chunks: k..k + 1,
                    offset: k as u64,
                });
            }
        }
        out
    }

    #[test]
    fn two_threads_share_a_file_only_when_nothing_else_is_left() {
        // File 1 is the big one; files 0 and 2 are small.
        let runs = runs(&[1, 4, 2]);
        let sizes = [10u64, 400, 20];
        let mut q = RunQueue::new(&runs, 3, |f| sizes[f]);
        let a = q.take().unwrap();
        assert_eq!(runs[a].file, 1, "biggest file first");
        let b = q.take().unwrap();
        assert_eq!(runs[b].file, 2, "a file nobody writes, the next biggest");
        q.done(runs[b].file);
        let b = q.take().unwrap();
        assert_eq!(
            (runs[b].file, runs[b].offset),
            (2, 1),
            "a file's runs in order"
        );
        q.done(runs[b].file);
        let b = q.take().unwrap();
        assert_eq!(runs[b].file, 0);
        q.done(runs[b].file);
        // Only file 1 is left, and thread A still writes it: B joins it.
        let b = q.take().unwrap();
        assert_eq!((runs[b].file, runs[b].offset), (1, 1));
        q.done(1);
        q.done(1);
        let mut rest = vec![q.take().unwrap(), q.take().unwrap()];
        rest.sort();
        assert_eq!(rest, [a + 2, a + 3]);
        assert_eq!(q.take(), None, "every run handed out once");
    }
}

//! The writer: durable, group-committed appends and checkpoints.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Deserialize;

use crate::checkpoint::{read_checkpoints, SignedCheckpoint, Witness};
use crate::event::{find_fraction, format_time, now_micros, parse_time, prepare, Event};
use crate::merkle::{leaf_hash, to_hex, Hash, Tree};
use crate::redact::{redact_event, KnownSecrets};
use crate::{read_meta, Error, Meta, CHECKPOINTS, ENTRIES, FORMAT, META};

/// The largest encoded entry `append` accepts.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
/// The most bytes written between two `fdatasync`s: only the last such batch
/// can be torn by a crash, which is what lets `open` tell a torn tail from
/// damage.
const MAX_BATCH_BYTES: usize = 4 << 20;

pub struct Options {
    /// Where checkpoints are published besides `checkpoints.jsonl`.
    pub witness: Option<Witness>,
    /// Sign a checkpoint after this many new entries (0: never by count).
    pub checkpoint_every: u64,
    /// Sign a checkpoint when the last one is older than this and entries
    /// were added since (checked at append).
    pub checkpoint_interval: Option<Duration>,
    /// Cut out of every event before it is written.
    pub known_secrets: KnownSecrets,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            witness: None,
            checkpoint_every: 10_000,
            checkpoint_interval: Some(Duration::from_secs(60)),
            known_secrets: KnownSecrets::default(),
        }
    }
}

/// What `append` returns once the entry is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub leaf_hash: Hash,
}

/// A torn tail `open` cut off (never acknowledged), kept in `saved_to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub entries: u64,
    pub offset: u64,
    pub bytes: u64,
    pub saved_to: PathBuf,
}

struct State {
    next_seq: u64,
    prev: Hash,
    last_time: i64,
    buf: Vec<u8>,
    /// Entries `0..durable` are on disk.
    durable: u64,
    flushing: bool,
    tree: Tree,
    poisoned: Option<(u64, String)>,
    /// Appenders parked until their entry is durable (or until they are to
    /// flush the next batch), with their entry's seq.
    waiters: Vec<(u64, Thread)>,
    /// `append_async` futures waiting for their entry, with its seq.
    wakers: Vec<(u64, Waker)>,
    /// Set when the log is dropped: the flusher thread ends.
    stop: bool,
}

/// What the appenders and the flusher thread share.
struct Core {
    file: File,
    state: Mutex<State>,
    /// `State::durable`, readable without the lock: a woken appender
    /// checks it and returns without queueing on the mutex behind every
    /// other woken appender (that convoy, not the disk, bounded group
    /// commit with hundreds of appenders).
    durable_at: AtomicU64,
    /// Wakes the flusher thread: `append_async` buffered an entry.
    flush_wanted: Condvar,
}

struct CpState {
    file: File,
    last_size: u64,
    last_at: Instant,
    last_error: Option<String>,
}

/// The audit log's one writer (an exclusive `flock` on `<dir>/lock`).
pub struct AuditLog {
    dir: PathBuf,
    origin: String,
    key: SigningKey,
    options: Options,
    _lock: File,
    core: Arc<Core>,
    /// Flushes what `append_async` buffers: a future cannot wait for an
    /// `fdatasync` on the executor's thread.
    flusher: Option<JoinHandle<()>>,
    cp: Mutex<CpState>,
    recovery: Option<Recovery>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("origin", &self.origin)
            .field("public_key", &to_hex(self.key.verifying_key().as_bytes()))
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    time: &'a str,
}

fn lock_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking appender leaves consistent state behind (every field is
    // updated before anything that can panic), so a poisoned mutex is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AuditLog {
    /// Opens (creating when absent) the log in `dir` with default options.
    pub fn open(dir: &Path, key: SigningKey) -> Result<AuditLog, Error> {
        Self::open_with(dir, key, Options::default())
    }

    pub fn open_with(dir: &Path, key: SigningKey, options: Options) -> Result<AuditLog, Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            return Err(Error::io(&lock_path, e));
        }

        let entries_path = dir.join(ENTRIES);
        let meta = match read_meta(dir)? {
            Some(m) => m,
            None => {
                if entries_path.exists() {
                    return Err(Error::Corrupt {
                        path: dir.join(META),
                        detail: format!(
                            "missing, but {ENTRIES} exists: refusing to give the log a new origin"
                        ),
                    });
                }
                let mut id = [0u8; 16];
                getrandom::getrandom(&mut id)
                    .map_err(|e| Error::Request(format!("no randomness: {e}")))?;
                let m = Meta {
                    format: FORMAT.into(),
                    origin: format!("careplane-audit/{}", to_hex(&id)),
                };
                let body = serde_json::to_vec(&m).expect("meta serializes");
                careplane_sys::atomic_write(&dir.join(META), &body, 0o600, None)
                    .map_err(|e| Error::io(&dir.join(META), e))?;
                m
            }
        };

        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&entries_path)
            .map_err(|e| Error::io(&entries_path, e))?;
        careplane_sys::sync_dir(dir);
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| Error::io(&entries_path, e))?;

        let cp_path = dir.join(CHECKPOINTS);
        let checkpointed = recover_checkpoints(&cp_path)?;

        // Scan: every complete line must parse with seq == its line number.
        let mut tree = Tree::new();
        let mut pos = 0usize;
        let mut last_time = i64::MIN;
        let mut bad: Option<String> = None;
        let (lines, end) = crate::scan::split_lines(&data);
        let scanned = crate::scan::map_lines(&lines, |line| {
            let head = serde_json::from_slice::<Head>(line)
                .map(|h| (h.seq, parse_time(h.time)))
                .map_err(|e| e.to_string());
            (leaf_hash(line), head)
        });
        for (line, (leaf, head)) in lines.iter().zip(scanned) {
            let seq = tree.len();
            match head {
                Ok((s, time)) if s == seq => {
                    last_time = time.unwrap_or(last_time).max(last_time);
                }
                Ok((s, _)) => {
                    bad = Some(format!("line {} holds seq {s}", seq + 1));
                    break;
                }
                Err(e) => {
                    bad = Some(format!("line {} does not parse: {e}", seq + 1));
                    break;
                }
            }
            tree.push(leaf);
            pos += line.len() + 1;
        }
        if bad.is_none() && end < data.len() {
            bad = Some("incomplete last line".into());
        }
        drop(lines);
        let mut recovery = None;
        if let Some(why) = bad {
            let seq = tree.len();
            let tail = data.len() - pos;
            if tail > MAX_BATCH_BYTES || seq < checkpointed {
                return Err(Error::Corrupt {
                    path: entries_path,
                    detail: format!(
                        "entry {seq} at byte {pos} is damaged ({why}); {} so this is not a torn write: \
                         not truncating; run `careplane audit verify`",
                        if seq < checkpointed {
                            format!("a checkpoint covers {checkpointed} entries")
                        } else {
                            format!("{tail} bytes follow it")
                        }
                    ),
                });
            }
            let rdir = dir.join("recovered");
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&rdir)
                .map_err(|e| Error::io(&rdir, e))?;
            let saved = rdir.join(format!("tail-{pos}-{}.bin", now_micros() / 1_000_000));
            careplane_sys::atomic_write(&saved, &data[pos..], 0o600, None)
                .map_err(|e| Error::io(&saved, e))?;
            file.set_len(pos as u64)
                .map_err(|e| Error::io(&entries_path, e))?;
            file.sync_all().map_err(|e| Error::io(&entries_path, e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| Error::io(&entries_path, e))?;
            recovery = Some(Recovery {
                entries: seq,
                offset: pos as u64,
                bytes: tail as u64,
                saved_to: saved,
            });
        }
        if tree.len() < checkpointed {
            return Err(Error::Corrupt {
                path: entries_path,
                detail: format!(
                    "holds {} entries but {CHECKPOINTS} has a checkpoint of {checkpointed}: entries were removed; \
                     run `careplane audit verify`",
                    tree.len()
                ),
            });
        }

        let cp_file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&cp_path)
            .map_err(|e| Error::io(&cp_path, e))?;
        let size = tree.len();
        let prev = if size == 0 {
            [0u8; 32]
        } else {
            tree.leaf(size - 1).expect("leaf below size")
        };
        let core = Arc::new(Core {
            file,
            state: Mutex::new(State {
                next_seq: size,
                prev,
                last_time,
                buf: Vec::with_capacity(64 << 10),
                durable: size,
                flushing: false,
                tree,
                poisoned: None,
                waiters: Vec::new(),
                wakers: Vec::new(),
                stop: false,
            }),
            durable_at: AtomicU64::new(size),
            flush_wanted: Condvar::new(),
        });
        let flusher = {
            let core = core.clone();
            std::thread::Builder::new()
                .name("audit-flusher".into())
                .spawn(move || core.flusher())
                .map_err(|e| Error::io(dir, e))?
        };
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            origin: meta.origin,
            key,
            options,
            _lock: lock,
            core,
            flusher: Some(flusher),
            cp: Mutex::new(CpState {
                file: cp_file,
                last_size: checkpointed,
                last_at: Instant::now(),
                last_error: None,
            }),
            recovery,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name every checkpoint of this log carries.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// How many entries are durable.
    pub fn size(&self) -> u64 {
        lock_poison(&self.core.state).durable
    }

    /// The torn tail `open` cut off, if it had to.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    /// The error of the last automatic checkpoint, if it failed.
    pub fn last_checkpoint_error(&self) -> Option<String> {
        lock_poison(&self.cp).last_error.clone()
    }

    /// Redacts, stamps and appends `event`; returns once it is durable.
    /// Concurrent callers share `fdatasync`s.
    pub fn append(&self, event: Event) -> Result<Receipt, Error> {
        let (seq, leaf, mut st) = self.buffer(event)?;
        // Group commit: whoever finds no flush under way writes and syncs
        // everything buffered, then wakes the appenders it made durable and,
        // when more is buffered, one of those waiting to lead the next batch.
        // The others park; a woken appender whose entry is durable returns
        // without taking the lock.
        loop {
            if let Some((seq, detail)) = &st.poisoned {
                return Err(Error::Poisoned {
                    seq: *seq,
                    detail: detail.clone(),
                });
            }
            if st.durable > seq {
                break;
            }
            if st.flushing {
                st.waiters.push((seq, std::thread::current()));
                drop(st);
                loop {
                    std::thread::park();
                    let durable = self.core.durable_at.load(Ordering::Acquire);
                    if durable > seq {
                        self.maybe_checkpoint(durable);
                        return Ok(Receipt {
                            seq,
                            leaf_hash: leaf,
                        });
                    }
                    // Woken to lead, poisoned, or spuriously: look under the lock.
                    let g = lock_poison(&self.core.state);
                    if g.poisoned.is_some() || !g.waiters.iter().any(|(s, _)| *s == seq) {
                        break;
                    }
                }
                st = lock_poison(&self.core.state);
                continue;
            }
            st = self.core.lead(st);
        }
        let durable = st.durable;
        drop(st);
        self.maybe_checkpoint(durable);
        Ok(Receipt {
            seq,
            leaf_hash: leaf,
        })
    }

    /// As [`append`](Self::append), for async callers: the entry is
    /// buffered at once (its seq fixed) and the future resolves once it is
    /// durable, flushed by the log's flusher thread together with whatever
    /// else is buffered; no executor thread waits for the disk.
    pub fn append_async(&self, event: Event) -> Appending<'_> {
        let state = match self.buffer(event) {
            Ok((seq, leaf, st)) => {
                drop(st);
                self.core.flush_wanted.notify_one();
                Ok((seq, leaf))
            }
            Err(e) => Err(Some(e)),
        };
        Appending { log: self, state }
    }

    /// Redacts, stamps and buffers `event`: its seq, its leaf hash, and the
    /// state still locked.
    fn buffer(&self, mut event: Event) -> Result<(u64, Hash, MutexGuard<'_, State>), Error> {
        if let Some(path) = find_fraction(&event.parameters, &mut String::new()) {
            return Err(Error::InvalidEvent {
                field: format!("parameters{path}"),
                detail: "only integer numbers are stored (pass fractions as strings)".into(),
            });
        }
        redact_event(&mut event, &self.options.known_secrets);
        let prepared = prepare(&event);

        let mut st = lock_poison(&self.core.state);
        if let Some((seq, detail)) = &st.poisoned {
            return Err(Error::Poisoned {
                seq: *seq,
                detail: detail.clone(),
            });
        }
        let seq = st.next_seq;
        let t = now_micros().max(st.last_time);
        let time = format_time(t);
        let prev = to_hex(&st.prev);
        let start = st.buf.len();
        prepared.splice(seq, &time, &prev, &mut st.buf);
        if st.buf.len() - start > MAX_ENTRY_BYTES {
            let len = st.buf.len() - start;
            st.buf.truncate(start);
            return Err(Error::InvalidEvent {
                field: "parameters".into(),
                detail: format!("the entry would be {len} bytes, more than {MAX_ENTRY_BYTES}"),
            });
        }
        let leaf = leaf_hash(&st.buf[start..]);
        st.buf.push(b'\n');
        st.last_time = t;
        st.prev = leaf;
        st.tree.push(leaf);
        st.next_seq += 1;
        Ok((seq, leaf, st))
    }

    fn maybe_checkpoint(&self, durable: u64) {
        let Ok(mut cp) = self.cp.try_lock() else {
            return;
        };
        let by_count = self.options.checkpoint_every > 0
            && durable - cp.last_size >= self.options.checkpoint_every;
        let by_time = self
            .options
            .checkpoint_interval
            .is_some_and(|i| durable > cp.last_size && cp.last_at.elapsed() >= i);
        if by_count || by_time {
            let r = self.checkpoint_locked(&mut cp);
            cp.last_error = r.err().map(|e| e.to_string());
        }
    }

    /// Signs the tree of all durable entries, appends the checkpoint to
    /// `checkpoints.jsonl` (durably) and publishes it to the witness.
    pub fn checkpoint(&self) -> Result<SignedCheckpoint, Error> {
        let mut cp = lock_poison(&self.cp);
        let r = self.checkpoint_locked(&mut cp);
        cp.last_error = r.as_ref().err().map(|e| e.to_string());
        r
    }

    fn checkpoint_locked(&self, cp: &mut CpState) -> Result<SignedCheckpoint, Error> {
        let (size, root) = {
            let st = lock_poison(&self.core.state);
            (
                st.durable,
                st.tree
                    .root(st.durable)
                    .expect("durable entries are in the tree"),
            )
        };
        let c = SignedCheckpoint::sign(
            &self.key,
            &self.origin,
            size,
            &root,
            format_time(now_micros()),
        );
        let mut line = serde_json::to_vec(&c).expect("checkpoint serializes");
        line.push(b'\n');
        let path = self.dir.join(CHECKPOINTS);
        cp.file.write_all(&line).map_err(|e| Error::io(&path, e))?;
        cp.file.sync_data().map_err(|e| Error::io(&path, e))?;
        cp.last_size = size;
        cp.last_at = Instant::now();
        if let Some(w) = &self.options.witness {
            w.publish(&c)?;
        }
        Ok(c)
    }

    /// Checkpoints what no checkpoint covers yet, then closes the log.
    pub fn close(self) -> Result<Option<SignedCheckpoint>, Error> {
        let pending = {
            let cp = lock_poison(&self.cp);
            self.size() > cp.last_size
        };
        if pending {
            return self.checkpoint().map(Some);
        }
        Ok(None)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        lock_poison(&self.core.state).stop = true;
        self.core.flush_wanted.notify_all();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
    }
}

/// The future of [`AuditLog::append_async`].
pub struct Appending<'a> {
    log: &'a AuditLog,
    /// The buffered entry's seq and leaf, or the error buffering it gave
    /// (taken by the first poll).
    state: Result<(u64, Hash), Option<Error>>,
}

impl Future for Appending<'_> {
    type Output = Result<Receipt, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (seq, leaf) = match &mut this.state {
            Ok(x) => *x,
            Err(e) => {
                return Poll::Ready(Err(e.take().unwrap_or_else(|| {
                    Error::Request("an append_async future was polled after it completed".into())
                })))
            }
        };
        let done = |durable: u64| {
            this.log.maybe_checkpoint(durable);
            Poll::Ready(Ok(Receipt {
                seq,
                leaf_hash: leaf,
            }))
        };
        let durable = this.log.core.durable_at.load(Ordering::Acquire);
        if durable > seq {
            return done(durable);
        }
        let mut st = lock_poison(&this.log.core.state);
        if let Some((at, detail)) = &st.poisoned {
            return Poll::Ready(Err(Error::Poisoned {
                seq: *at,
                detail: detail.clone(),
            }));
        }
        if st.durable > seq {
            let durable = st.durable;
            drop(st);
            return done(durable);
        }
        st.wakers.push((seq, cx.waker().clone()));
        if !st.flushing {
            this.log.core.flush_wanted.notify_one();
        }
        Poll::Pending
    }
}

impl Core {
    /// Writes whole lines, at most MAX_BATCH_BYTES per fdatasync.
    fn write_batch(&self, batch: &[u8]) -> std::io::Result<()> {
        let mut rest = batch;
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_BATCH_BYTES);
            if cut < rest.len() {
                cut = rest[..cut]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(cut, |i| i + 1);
            }
            (&self.file).write_all(&rest[..cut])?;
            self.file.sync_data()?;
            rest = &rest[cut..];
        }
        Ok(())
    }

    /// Flushes everything buffered (the caller holds the lock and found no
    /// flush under way), then wakes the appenders and futures it made
    /// durable and whoever is to lead the next batch: one parked appender,
    /// or the flusher thread when only futures wait.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.flushing = true;
        let batch = std::mem::take(&mut st.buf);
        let end = st.next_seq;
        drop(st);
        let written = self.write_batch(&batch);
        let mut st = lock_poison(&self.state);
        st.flushing = false;
        match written {
            Ok(()) => {
                st.durable = end;
                self.durable_at.store(end, Ordering::Release);
            }
            Err(e) => {
                let at = st.durable;
                st.poisoned = Some((at, e.to_string()));
            }
        }
        if st.buf.is_empty() {
            // Keep the allocation for the next batch.
            let mut b = batch;
            b.clear();
            st.buf = b;
        }
        let (durable, more, poisoned) = (st.durable, !st.buf.is_empty(), st.poisoned.is_some());
        st.wakers.retain(|(s, w)| {
            let wake = *s < durable || poisoned;
            if wake {
                w.wake_by_ref();
            }
            !wake
        });
        let mut leader_woken = !more;
        st.waiters.retain(|(s, t)| {
            if *s < durable || poisoned {
                t.unpark();
                false
            } else if !leader_woken {
                leader_woken = true;
                t.unpark();
                false
            } else {
                true
            }
        });
        if !leader_woken && !poisoned {
            self.flush_wanted.notify_one();
        }
        st
    }

    /// The flusher thread: leads a flush whenever something is buffered and
    /// nobody flushes (`append_async` buffered it; a parked appender would
    /// lead by itself), until the log is dropped.
    fn flusher(&self) {
        let mut st = lock_poison(&self.state);
        loop {
            if st.stop {
                return;
            }
            if !st.buf.is_empty() && !st.flushing && st.poisoned.is_none() {
                st = self.lead(st);
                continue;
            }
            st = self
                .flush_wanted
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Cuts an incomplete last line off `checkpoints.jsonl` (a crash during a
/// checkpoint write) and returns the largest size it records.
fn recover_checkpoints(path: &Path) -> Result<u64, Error> {
    let mut data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path, e)),
    };
    if let Some(last_nl) = data
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .or(Some(0))
    {
        if last_nl < data.len() {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            f.set_len(last_nl as u64).map_err(|e| Error::io(path, e))?;
            f.sync_all().map_err(|e| Error::io(path, e))?;
            data.truncate(last_nl);
        }
    }
    Ok(read_checkpoints(path)?
        .into_iter()
        .filter_map(|(_, c)| c.ok())
        .map(|c| c.size)
        .max()
        .unwrap_or(0))
}

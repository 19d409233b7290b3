//! The apply lock: only one careplane process changes the platform at a
//! time.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fsutil::{ensure_data_dir, now_rfc3339};
use crate::StateError;

/// File name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "apply.lock";

/// Who holds the lock, as written into the lock file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Holder {
    pid: u32,
    command: String,
    since: String,
}

/// The apply lock, held until dropped.
///
/// It is an exclusive `flock(2)` on `<data_dir>/apply.lock`, so the kernel
/// releases it when the holding process exits for any reason, including
/// `kill -9` or a crash: a dead apply never blocks the next one, and there
/// is no stale-lock cleanup to get wrong. The file descriptor is
/// close-on-exec, so servers that careplane spawns while holding the lock
/// (PostgreSQL, Redis) do not inherit it.
///
/// The file also records the holder's pid, command and start time so that a
/// second process can say who holds it ([`StateError::Locked`]). The file
/// itself is never deleted (deleting a flock'ed file lets two processes lock
/// different inodes).
pub struct ApplyLock {
    file: File,
    path: PathBuf,
}

impl fmt::Debug for ApplyLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyLock")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ApplyLock {
    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApplyLock {
    fn drop(&mut self) {
        // Clear the holder record while still holding the lock; closing the
        // file (right after) releases the lock.
        let _ = self.file.set_len(0);
    }
}

/// Takes the apply lock on `<data_dir>/apply.lock` without waiting, creating
/// the data directory (mode 0711) and the file (mode 0600) if needed.
///
/// `command` (e.g. `"apply"`) is recorded for the error a competing process
/// gets. Fails with [`StateError::Locked`] naming the holder's pid, command
/// and start time if another open file description holds it, which includes
/// a second `lock` call in the same process.
pub fn lock(data_dir: &Path, command: &str) -> Result<ApplyLock, StateError> {
    ensure_data_dir(data_dir)?;
    let path = data_dir.join(LOCK_FILE);
    let io_err = |action, source| StateError::Io {
        action,
        path: path.clone(),
        source,
    };
    // std opens files with O_CLOEXEC.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err("open lock file", e))?;

    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                let holder = read_holder(&path);
                return Err(StateError::Locked {
                    pid: holder.pid,
                    command: holder.command,
                    since: holder.since,
                    path,
                });
            }
            _ => return Err(io_err("lock", err)),
        }
    }

    let holder = Holder {
        pid: std::process::id(),
        command: command.to_string(),
        since: now_rfc3339(),
    };
    let json = serde_json::to_vec(&holder).expect("holder record serializes");
    file.set_len(0)
        .and_then(|()| file.write_all_at(&json, 0))
        .map_err(|e| io_err("write holder into lock file", e))?;
    Ok(ApplyLock { file, path })
}

/// Reads who holds the lock. The holder writes its record right after
/// locking, so an empty or partial record is retried briefly.
fn read_holder(path: &Path) -> Holder {
    for _ in 0..40 {
        if let Ok(bytes) = fs::read(path) {
            if let Ok(holder) = serde_json::from_slice::<Holder>(&bytes) {
                return holder;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Holder {
        pid: 0,
        command: "operation".into(),
        since: "at an unknown time".into(),
    }
}

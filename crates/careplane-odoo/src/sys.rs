//! OS-level helpers: the hook every Odoo child runs between `fork` and
//! `exec`, process liveness from `/proc`, the supervisor's lock, atomic file
//! writes and log tails.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{io_err, Result};

/// `PATH` every Odoo child gets: the system directories only, so nothing from
/// careplane's own `PATH` (a user's `~/bin`, a virtualenv) changes which
/// `python3`, `wkhtmltopdf` or `lessc` Odoo runs.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Installs the `pre_exec` hook shared by one-off runs and supervised
/// processes.
///
/// In the forked child, before `exec`, in this order:
/// 1. unblock every signal (a blocked SIGTERM would make the child deaf to
///    a graceful stop);
/// 2. `umask` (filestore and session files private to the service user);
/// 3. `setgroups([gid])`, `setgid`, `setuid` when `ids` differ from the
///    current ones — groups first, because once the uid is dropped they can
///    no longer be changed, and root's supplementary groups must not leak;
/// 4. with `pdeathsig`, `prctl(PR_SET_PDEATHSIG, SIGTERM)` and then a check
///    that the parent is still the process that forked us. The order
///    matters: the kernel clears the parent-death signal whenever the
///    credentials change, so it must be set *after* `setuid`; and a parent
///    that died between `fork` and `prctl` would never deliver it, hence the
///    `getppid` check.
///
/// The parent-death signal is sent when the *thread* that forked the child
/// exits, so children must be spawned from a thread that lives as long as
/// they should (the supervisor's loop, or the caller blocked in
/// [`crate::run_once`]).
pub(crate) fn install_child_hook(
    cmd: &mut Command,
    ids: Option<(u32, u32)>,
    pdeathsig: bool,
    umask: libc::mode_t,
) {
    // SAFETY: getpid/geteuid/getegid have no preconditions.
    let (parent, euid, egid) = unsafe { (libc::getpid(), libc::geteuid(), libc::getegid()) };
    let ids = ids.filter(|&(uid, gid)| uid != euid || gid != egid);
    // SAFETY: the hook runs in the forked child and only calls
    // async-signal-safe functions (sigemptyset, pthread_sigmask, umask,
    // setgroups, setgid, setuid, prctl, getppid); it allocates nothing
    // (from_raw_os_error does not allocate) and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::umask(umask);
            if let Some((uid, gid)) = ids {
                careplane_sys::drop_privileges(uid, gid)?;
            }
            if pdeathsig {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            Ok(())
        });
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Fields of `/proc/<pid>/stat` careplane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// The one-letter state (`R`, `S`, `Z`, ...).
    pub state: u8,
    /// Parent pid.
    pub ppid: u32,
    /// Process group id.
    pub pgrp: u32,
    /// Start time in clock ticks since boot: with the pid, it identifies a
    /// process across pid reuse.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let raw = fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or
    // parentheses itself: the fields after it start after the *last* ')'.
    let close = raw.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&raw[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(ProcStat {
        state: *fields.first()?.as_bytes().first()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` is a live process (a zombie is dead: it only waits for its
/// parent to collect the exit status).
pub(crate) fn pid_alive(pid: u32) -> bool {
    careplane_sys::pid_alive(pid)
}

/// Pids of live processes in process group `pgrp` (scans `/proc`).
pub(crate) fn group_members(pgrp: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|s| s.pgrp == pgrp && s.state != b'Z' && s.state != b'X')
        })
        .collect()
}

/// Sends `sig` to every process of group `pgrp`; a group that no longer
/// exists is not an error.
pub(crate) fn kill_group(pgrp: u32, sig: libc::c_int) {
    if pgrp > 1 && pgrp <= i32::MAX as u32 {
        // SAFETY: kill has no memory-safety preconditions; a negative pid
        // addresses the process group.
        unsafe {
            libc::kill(-(pgrp as libc::pid_t), sig);
        }
    }
}

/// Sends `sig` to one process.
pub(crate) fn kill_pid(pid: u32, sig: libc::c_int) -> bool {
    if pid <= 1 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// `chown` by path, without following a final symlink.
pub(crate) fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory created with `mode` (never briefly wider), owned by `owner`,
/// fsynced, then renamed over `path`. A reader sees the old or the new file,
/// never a torn one, even if careplane is killed half-way.
pub(crate) fn atomic_write(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    careplane_sys::atomic_write(path, contents, mode, owner)
        .map_err(io_err("writing file atomically", path))
}

/// The last `lines` lines of `path` from byte `from` on (at most the last
/// 64 KiB of that range), lossily decoded. Empty when unreadable.
pub(crate) fn tail(path: &Path, from: u64, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(MAX)).min(len);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(MAX).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Opens (creating 0644) and OFD-write-locks `path` without blocking:
/// `Ok(None)` when another open file description holds the lock.
///
/// Open-file-description locks (not `flock`, not classic POSIX locks)
/// because they are released exactly when the holder's last descriptor goes
/// away — also on SIGKILL — and, unlike POSIX record locks, are not dropped
/// when the same process closes some *other* descriptor of the file (which
/// [`lock_held`] does when asked from inside the supervisor's process).
pub(crate) fn try_lock(path: &Path) -> Result<Option<File>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(io_err("opening lock file", path))?;
    let mut fl = whole_file_lock(libc::F_WRLCK);
    // SAFETY: fl is a valid flock struct and the descriptor is open.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        return Ok(Some(f));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(None),
        _ => Err(io_err("locking", path)(err)),
    }
}

/// Whether some open file description holds a lock on `path` (i.e. the
/// supervisor owning it is alive). A missing file is unlocked.
pub(crate) fn lock_held(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut fl = whole_file_lock(libc::F_RDLCK);
    // SAFETY: as in try_lock.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
}

fn whole_file_lock(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl.l_pid = 0;
    fl
}

/// Creates `dir` (and parents) if missing.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(io_err("creating directory", dir))?;
    }
    Ok(dir.to_path_buf())
}

//! careplane's OS plumbing, in one place (docs/design/0004): what the
//! runtime crates (`careplane-local`, `careplane-odoo`, `careplane-state`)
//! each used to carry a copy of. Plain functions on `std` + `libc`; this
//! crate depends on nothing of careplane's.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Becomes `uid`/`gid` for good, with `gid` as the only group: `setgroups`,
/// then `setgid`, then `setuid` (in that order: after `setuid` the others
/// are no longer permitted). Nothing is done when the process already runs
/// as exactly `uid`/`gid` with no other group to shed and is not root.
///
/// Meant for `Command::pre_exec`: it only calls async-signal-safe functions,
/// allocates nothing and takes no lock. Every server and Odoo process
/// careplane starts as root goes through here.
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    let groups = [gid as libc::gid_t];
    // SAFETY: setgroups reads one gid from a valid array; setgid/setuid take
    // plain integers. All three are async-signal-safe.
    unsafe {
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setgid(gid as libc::gid_t) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setuid(uid as libc::uid_t) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `pid` is a live process. A zombie is dead: it holds no port or
/// lock any more and only waits for its parent to collect its status.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks existence and permission.
    let exists = || {
        let rc = unsafe { libc::kill(raw, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    };
    exists()
        && match proc_state(pid) {
            Some(state) => !matches!(state, b'Z' | b'X'),
            // /proc unreadable (hidepid) or the process just went: ask again.
            None => exists(),
        }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`...).
pub fn proc_state(pid: u32) -> Option<u8> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().bytes().next()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `path` atomically: a new temporary file beside it
/// (`O_EXCL | O_NOFOLLOW`, mode exactly `mode` whatever the umask, owned by
/// `owner` when given), fsynced, renamed over `path`, the directory fsynced.
/// A reader sees the old or the new file, never a torn one; a crash leaves
/// at most a temporary file that the next write does not reuse.
pub fn atomic_write(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.careplane-tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Best-effort fsync of a directory, so a rename in it survives a power loss.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
    {
        let _ = d.sync_all();
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of seconds since the Unix epoch.
pub fn utc_datetime(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

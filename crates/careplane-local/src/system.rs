//! OS-level helpers: the service user, ports, process liveness and running
//! child processes as that user with a clean environment.
//!
//! # Running as the service user
//!
//! PostgreSQL refuses to run as root, and a database or cache server should
//! not hold root's privileges anyway. When careplane runs as root, every
//! server-side command (initdb, pg_ctl, redis-server) is spawned with a
//! `pre_exec` hook that, in the forked child before `exec`, calls
//! `setgroups([gid])`, `setgid(gid)` and `setuid(uid)` in that order — the
//! supplementary groups go first because once the uid is dropped the child can
//! no longer change them, and leaving root's supplementary groups (or the
//! user's own, like Debian's `ssl-cert`) would hand the server access it does
//! not need. These three calls are async-signal-safe, which is what `pre_exec`
//! requires; `initgroups`/`runuser` were rejected because the former reads
//! `/etc/group` (not safe after fork) and the latter adds a PAM session and a
//! dependency on util-linux. The same hook calls `setsid()` for daemons so a
//! Ctrl-C in careplane's terminal does not reach PostgreSQL or Redis, and sets
//! `umask 077` so whatever the server creates is private.
//!
//! Children get a clean environment: only `PATH`, `HOME` (the cluster or
//! server root), `LC_ALL=C` and `LANG=C`, so nothing from careplane's
//! environment (tokens, `PG*` variables, proxies) leaks into a server.

use std::ffi::{CStr, CString};
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use secrecy::SecretString;

use crate::error::{LocalError, Result};

/// The unprivileged OS user that runs PostgreSQL/Redis when careplane runs as root (PostgreSQL refuses root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUser {
    /// Login name, used in messages.
    pub name: String,
    /// Numeric user id the servers run as.
    pub uid: u32,
    /// Primary group id; the servers get this as their only group.
    pub gid: u32,
}

/// The user servers run as by default when careplane is root: Debian's
/// postgresql package creates it, so a fresh machine needs no extra step.
pub const DEFAULT_SERVICE_USER: &str = "postgres";

/// Whether careplane runs with root's effective uid, i.e. must switch to a
/// service user before starting servers.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// None when not running as root (servers then run as the current user).
/// When root: `run_as`, or `postgres` by default; an error names how to create
/// the user when it does not exist.
pub fn service_user(run_as: Option<&str>) -> Result<Option<ServiceUser>> {
    named_service_user(
        run_as.unwrap_or(DEFAULT_SERVICE_USER),
        "PostgreSQL refuses to run as root",
        "(installing Debian's postgresql package creates `postgres`), or choose an existing \
         user with the Platform's spec.runAs",
    )
}

/// Whether `uid` belongs to an account in the passwd database
/// (`getpwuid_r`): careplane hands out only uids that do not, so a process it
/// starts under such a uid shares files with nobody.
pub fn uid_has_account(uid: u32) -> Result<bool> {
    let found = passwd_entry(&format!("uid {uid}"), |pwd, buf, len, result| {
        // SAFETY: the pointers come from passwd_entry, valid for the call.
        unsafe { libc::getpwuid_r(uid as libc::uid_t, pwd, buf, len, result) }
    })?;
    Ok(found.is_some())
}

/// A uid without an account, as the [`ServiceUser`] that processes run as
/// (gid = uid; named `uid <n>` in messages).
pub fn numeric_user(uid: u32) -> ServiceUser {
    ServiceUser {
        name: format!("uid {uid}"),
        uid,
        gid: uid,
    }
}

fn named_service_user(name: &str, why: &str, hint: &str) -> Result<Option<ServiceUser>> {
    if !is_root() {
        return Ok(None);
    }
    let user = lookup_user(name)?.ok_or_else(|| {
        LocalError::ServiceUser(format!(
            "careplane runs as root but the service user `{name}` does not exist; {why}, so \
             create an unprivileged user first, e.g. \
             `useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin {name}` \
             {hint}"
        ))
    })?;
    if user.uid == 0 {
        return Err(LocalError::ServiceUser(format!(
            "service user `{name}` has uid 0; servers must run as an unprivileged user"
        )));
    }
    Ok(Some(user))
}

/// Looks a user up in the passwd database (`getpwnam_r`).
pub fn lookup_user(name: &str) -> Result<Option<ServiceUser>> {
    let cname = CString::new(name)
        .map_err(|_| LocalError::invalid("user name", name, "contains a NUL byte"))?;
    passwd_entry(&format!("user `{name}`"), |pwd, buf, len, result| {
        // SAFETY: the pointers come from passwd_entry, valid for the call.
        unsafe { libc::getpwnam_r(cname.as_ptr(), pwd, buf, len, result) }
    })
}

/// Runs a `getpw*_r` lookup with a buffer that grows on `ERANGE`.
fn passwd_entry(
    what: &str,
    lookup: impl Fn(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> libc::c_int,
) -> Result<Option<ServiceUser>> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: passwd is plain old data; the lookup fills it and points its
        // strings into `buf`, which outlives every use below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = lookup(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == libc::ERANGE && buf.len() < 1024 * 1024 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(LocalError::ServiceUser(format!(
                "looking up {what} failed: {}",
                io::Error::from_raw_os_error(rc)
            )));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: pw_name points into `buf` and is NUL-terminated by libc.
        let pw_name = unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned();
        return Ok(Some(ServiceUser {
            name: pw_name,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }));
    }
}

/// A free TCP port on 127.0.0.1 (bind :0, read, close).
///
/// There is an unavoidable window between closing the probe socket and the
/// server binding the port; callers that lose the race see a start error
/// naming the port and can pick another.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| {
        LocalError::io(
            "binding a probe socket to find a free port",
            "127.0.0.1:0",
            e,
        )
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| LocalError::io("reading the probe socket's port", "127.0.0.1:0", e))?
        .port();
    Ok(port)
}

/// `n` distinct free ports on loopback: every probe socket stays bound until
/// all are chosen, so the kernel cannot hand out the same port twice (two
/// calls of [`free_port`] can).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| {
            LocalError::io(
                "binding a probe socket to find a free port",
                "127.0.0.1:0",
                e,
            )
        })?;
        held.push(listener);
    }
    held.iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| LocalError::io("reading the probe socket's port", "127.0.0.1:0", e))
        })
        .collect()
}

/// Whether a process with this pid is alive.
///
/// Zombies count as dead: a server that exited but was not yet reaped holds
/// no port or lock any more, and treating it as alive would make `stop` wait
/// forever.
pub fn pid_alive(pid: u32) -> bool {
    careplane_sys::pid_alive(pid)
}

/// Whether `pid` exists but is a zombie (exited, not yet reaped by its
/// parent — for daemons that is init, which may take a moment).
pub(crate) fn is_zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of live processes whose working directory is `dir` (PostgreSQL
/// backends run in their data directory, so this finds orphans of a killed
/// postmaster). Needs /proc and permission to read the links (root or the
/// same user); returns what it can see.
pub(crate) fn processes_in_dir(dir: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
                && pid_alive(*pid)
        })
        .collect()
}

/// The kernel's short name of a process (`/proc/<pid>/comm`), used to make
/// sure a pid from a stale pid file was not reused by an unrelated program.
pub(crate) fn process_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `pid` is alive and, where /proc tells, runs a program whose name
/// starts with `expected_comm`.
pub(crate) fn pid_alive_as(pid: u32, expected_comm: &str) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    match process_comm(pid) {
        Some(comm) => comm.starts_with(expected_comm),
        None => true,
    }
}

/// Sends a signal; errors (e.g. the process is already gone) are ignored
/// because every caller re-checks liveness afterwards.
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(raw) = libc::pid_t::try_from(pid) {
        if raw > 0 {
            // SAFETY: plain kill(2) on a positive pid.
            unsafe {
                libc::kill(raw, sig);
            }
        }
    }
}

/// A fresh random password (48 hex characters, 192 bits) from the OS CSPRNG.
///
/// Redis stores unsalted SHA-256 hashes of passwords, so passwords must be
/// high-entropy; this is the generator careplane uses for every secret.
pub fn generate_password() -> Result<SecretString> {
    Ok(SecretString::from(random_hex(24)?))
}

/// `bytes` bytes from the OS CSPRNG, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| LocalError::state("random number generator", "the OS CSPRNG failed"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The uid/gid a child must switch to: only when careplane is root (a
/// non-root process can't switch, and runs servers as itself).
pub(crate) fn switch_ids(user: Option<&ServiceUser>) -> Option<(u32, u32)> {
    match user {
        Some(u) if is_root() => Some((u.uid, u.gid)),
        _ => None,
    }
}

/// Refuses configurations that cannot work before anything is touched:
/// root without a service user (PostgreSQL refuses root) or a non-root
/// careplane asked to run servers as someone else.
pub(crate) fn check_runner(subject: &str, user: Option<&ServiceUser>) -> Result<()> {
    match user {
        None if is_root() => Err(LocalError::ServiceUser(format!(
            "{subject}: careplane runs as root but no service user was given; servers must run \
             unprivileged (use system::service_user)"
        ))),
        // SAFETY: geteuid cannot fail.
        Some(u) if !is_root() && u.uid != unsafe { libc::geteuid() } => {
            Err(LocalError::ServiceUser(format!(
                "{subject}: cannot run servers as `{}` (uid {}) without being root",
                u.name, u.uid
            )))
        }
        _ => Ok(()),
    }
}

/// A command prepared to run as the service user with a clean environment,
/// working directory `home`, stdin from /dev/null. With `detach`, the child
/// starts a new session so it outlives careplane and ignores its terminal.
pub(crate) fn command(
    program: &Path,
    user: Option<&ServiceUser>,
    home: &Path,
    detach: bool,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .current_dir(home)
        .stdin(Stdio::null());
    let ids = switch_ids(user);
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the hook runs in the forked child before exec and only calls
    // async-signal-safe functions (setsid, umask, setgroups, setgid, setuid,
    // prctl, getppid); it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            if detach && libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            libc::umask(0o077);
            if let Some((uid, gid)) = ids {
                careplane_sys::drop_privileges(uid, gid)?;
            }
            // A tool careplane waits for (initdb, pg_ctl stop...) dies with
            // careplane: an initdb left writing into a data directory would
            // fight the next apply's. After the uid change, which clears it.
            if !detach {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            Ok(())
        });
    }
    cmd
}

/// Human-readable command line for messages. Arguments never carry secrets
/// (passwords go through files or the wire), so showing them is safe.
pub(crate) fn display_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs a command to completion, capturing output; a non-zero exit becomes
/// [`LocalError::Command`] with the tail of its stderr/stdout and of `logs`
/// (server logs that explain more than the tool's own message).
pub(crate) fn run(cmd: &mut Command, what: &str, logs: &[&Path]) -> Result<Output> {
    let command = display_command(cmd);
    let output = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| LocalError::Command {
            what: what.to_string(),
            command: command.clone(),
            status: format!("could not be started: {e}"),
            output_tail: String::new(),
        })?;
    if output.status.success() {
        return Ok(output);
    }
    let status = match output.status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("was killed ({})", output.status),
    };
    let mut tail = tail_text(&String::from_utf8_lossy(&output.stderr), 20);
    let stdout = tail_text(&String::from_utf8_lossy(&output.stdout), 10);
    if !stdout.is_empty() {
        tail.push_str("\n[stdout]\n");
        tail.push_str(&stdout);
    }
    Err(with_log_tails(
        LocalError::Command {
            what: what.to_string(),
            command,
            status,
            output_tail: tail,
        },
        logs,
    ))
}

/// Appends the tails of server logs to a failed command's error (each log
/// once), read at call time so logs written during the failure are included.
pub(crate) fn with_log_tails(err: LocalError, logs: &[&Path]) -> LocalError {
    match err {
        LocalError::Command {
            what,
            command,
            status,
            mut output_tail,
        } => {
            let mut seen: Vec<&Path> = Vec::new();
            for log in logs {
                if seen.contains(log) {
                    continue;
                }
                seen.push(log);
                let log_tail = tail_file(log, 15);
                if !log_tail.is_empty() {
                    output_tail.push_str(&format!("\n[{}]\n{log_tail}", log.display()));
                }
            }
            LocalError::Command {
                what,
                command,
                status,
                output_tail,
            }
        }
        other => other,
    }
}

/// Last `lines` lines of a text.
pub(crate) fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// A file's content from byte `offset` on (at most 64 KiB), or "".
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = crate::fsutil::open_nofollow(path) else {
        return String::new();
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(64 * 1024).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Last `lines` lines of a file (at most its last 16 KiB), or "" if unreadable.
pub(crate) fn tail_file(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = crate::fsutil::open_nofollow(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    tail_text(&String::from_utf8_lossy(&buf), lines)
}

/// Makes sure the service user can traverse every ancestor of `target`, so
/// the server can reach its root. careplane does not chmod directories it
/// doesn't own: it names the one to fix instead.
pub(crate) fn check_traversable(target: &Path, user: Option<&ServiceUser>) -> Result<()> {
    let Some(user) = user.filter(|_| is_root()) else {
        return Ok(());
    };
    let absolute = absolute(target)?;
    for dir in absolute.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)
            .map_err(|e| LocalError::io("checking a parent directory's permissions", dir, e))?;
        if !permits(&meta, user, 0o1) {
            return Err(LocalError::NotTraversable {
                dir: dir.to_path_buf(),
                target: absolute.clone(),
                user: user.name.clone(),
            });
        }
    }
    Ok(())
}

/// What a service user needs on a file it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Run it (a program such as `odoo-bin` or `python`).
    Execute,
    /// Read it (a script run by an interpreter, a certificate).
    Read,
    /// List and read a directory (an addons path).
    ReadDir,
}

/// Checks, before anything is started, that `user` can reach `path` through
/// every ancestor and use it as `access` says, so a permission problem is a
/// clear refusal naming the path instead of `Permission denied` from a child
/// process. Mode bits only (owner, group, other): POSIX ACLs and
/// supplementary groups are not consulted, so a setup that relies on them may
/// be refused. No check when careplane is not root (the user is then
/// careplane's own).
pub fn check_access(path: &Path, user: Option<&ServiceUser>, access: Access) -> Result<()> {
    let Some(user) = user.filter(|_| is_root()) else {
        return Ok(());
    };
    check_traversable(path, Some(user))?;
    // The kernel follows symlinks with the user's rights; check the target.
    let meta = std::fs::metadata(path)
        .map_err(|e| LocalError::io("checking a file's permissions", path, e))?;
    let (bits, what, chmod) = match access {
        Access::Execute => (0o1, "execute", "x"),
        Access::Read => (0o4, "read", "r"),
        Access::ReadDir => (0o5, "read and list", "rx"),
    };
    if !permits(&meta, user, bits) {
        return Err(LocalError::ServiceUser(format!(
            "service user `{}` cannot {what} {} (mode {:o}, owner uid {}): make it readable{} by \
             others, e.g. `chmod o+{}`, or install it under a path the user can reach",
            user.name,
            path.display(),
            meta.mode() & 0o7777,
            meta.uid(),
            if bits & 1 == 1 { " and executable" } else { "" },
            chmod
        )));
    }
    Ok(())
}

/// Whether the permission class of `user` (owner, group or other) has all of
/// `bits` (a combination of 4 = r, 2 = w, 1 = x).
fn permits(meta: &std::fs::Metadata, user: &ServiceUser, bits: u32) -> bool {
    let shift = if meta.uid() == user.uid {
        6
    } else if meta.gid() == user.gid {
        3
    } else {
        0
    };
    (meta.mode() >> shift) & bits == bits
}

/// `path` made absolute against the current directory (without resolving
/// symlinks, which the kernel resolves for the service user the same way).
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| LocalError::io("making a path absolute", path, e))
}

#[cfg(test)]
mod tests {

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(64).unwrap();
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 64, "{ports:?}");
        assert!(ports.iter().all(|&p| p != 0));
    }

    use super::*;

    #[test]
    fn permission_class_follows_owner_then_group_then_other() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("prog");
        std::fs::write(&f, "x").unwrap();
        let meta = |mode| {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(&f).unwrap()
        };
        let owner = std::fs::metadata(&f).unwrap();
        let me = ServiceUser {
            name: "me".into(),
            uid: owner.uid(),
            gid: owner.gid(),
        };
        let other = ServiceUser {
            name: "other".into(),
            uid: owner.uid() + 12345,
            gid: owner.gid() + 12345,
        };
        let group = ServiceUser {
            name: "group".into(),
            uid: owner.uid() + 12345,
            gid: owner.gid(),
        };
        let m = meta(0o700);
        assert!(permits(&m, &me, 0o5) && !permits(&m, &group, 0o1) && !permits(&m, &other, 0o1));
        let m = meta(0o750);
        assert!(permits(&m, &group, 0o5) && !permits(&m, &other, 0o1));
        let m = meta(0o704);
        assert!(permits(&m, &other, 0o4) && !permits(&m, &other, 0o5));
        // The owner's class decides even when "other" would allow it.
        let m = meta(0o077);
        assert!(!permits(&m, &me, 0o1));
    }

    #[test]
    fn uid_accounts_are_looked_up() {
        assert!(uid_has_account(0).unwrap(), "root has an account");
        let me = unsafe { libc::geteuid() };
        assert!(uid_has_account(me).unwrap());
        assert!(!uid_has_account(4_000_000_123).unwrap());
        assert_eq!(numeric_user(7).gid, 7);
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert!(port > 0);
        TcpListener::bind(("127.0.0.1", port)).expect("port reported free is bindable");
    }

    #[test]
    fn pid_alive_for_self_and_not_for_reaped_child() {
        assert!(pid_alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn zombie_is_not_alive() {
        let child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: wait for it to exit and become a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pid_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!pid_alive(pid));
        drop(child);
    }

    #[test]
    fn missing_user_error_explains_useradd() {
        assert!(lookup_user("careplane-no-such-user-xyz").unwrap().is_none());
        if is_root() {
            let err = service_user(Some("careplane-no-such-user-xyz"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("useradd --system"), "{err}");
        } else {
            assert!(service_user(Some("careplane-no-such-user-xyz"))
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn generated_passwords_differ() {
        use secrecy::ExposeSecret;
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.expose_secret().len(), 48);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn clean_environment() {
        let dir = std::env::temp_dir();
        let mut cmd = command(Path::new("/usr/bin/env"), None, &dir, false);
        std::env::set_var("CAREPLANE_LEAK_CHECK", "1");
        let out = run(&mut cmd, "env", &[]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("CAREPLANE_LEAK_CHECK"), "{text}");
        assert!(text.contains("LC_ALL=C"));
    }

    #[test]
    fn command_failure_reports_stderr_tail() {
        let dir = std::env::temp_dir();
        let mut cmd = command(Path::new("/bin/sh"), None, &dir, false);
        cmd.args(["-c", "echo boom-on-stderr >&2; exit 3"]);
        let err = run(&mut cmd, "testing failure", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("exited with status 3"), "{err}");
        assert!(err.contains("boom-on-stderr"), "{err}");
    }
}

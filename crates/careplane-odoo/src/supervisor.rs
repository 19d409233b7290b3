//! Keeps an environment's long-running Odoo processes (web and cron) alive.
//!
//! careplane is a command-line tool, not a daemon, so something has to stay
//! behind to run Odoo after `careplane apply` returns: a small supervisor,
//! one per environment, which is careplane's own binary re-executed as
//! `careplane supervise <spec.json>` ([`spawn_supervisor`] → [`supervise`]).
//! It needs no init system (systemd is absent in containers and CI) and
//! keeps the same code path for a real `odoo-bin` and the test stand-in.
//!
//! # Run directory
//!
//! ```text
//! <dir>/supervisor.pid   pid of the supervisor; locked while it runs
//! <dir>/status.json      per-process state, rewritten atomically on change
//! <dir>/logs/<name>.log  each process's stdout+stderr, rotated by size
//! <dir>/logs/supervisor.log  the supervisor's own output
//! ```
//!
//! # Liveness without guessing
//!
//! The supervisor holds an open-file-description lock on `supervisor.pid`
//! for its whole life. The kernel drops the lock when the process dies, even
//! by SIGKILL, so "is it running" is a lock test ([`supervisor_pid`]), not a
//! pid that may have been reused. Child pids in `status.json` come with
//! their `/proc` start time, so [`stop_supervisor`] never signals an
//! unrelated process that inherited a recycled pid.
//!
//! # Children
//!
//! Each process is spawned from the supervisor's main thread:
//! * in its **own process group** (Odoo's prefork workers join it), so a
//!   stop or a crash clean-up signals the whole group;
//! * with **`PR_SET_PDEATHSIG = SIGTERM`**, set after the uid switch (which
//!   would clear it), so if the supervisor is SIGKILLed its children get a
//!   graceful stop instead of running on as orphans;
//! * as the service user (`setgroups`/`setgid`/`setuid`), umask 077, from an
//!   empty environment plus the process's `env_file` (read at each spawn);
//! * with stdout and stderr on a pipe drained by a thread into the rotating
//!   log.
//!
//! When a process exits, the rest of its group is SIGKILLed *before* the
//! exit is reaped (the zombie pins the group id, so it cannot be recycled
//! meanwhile): stray prefork workers must not keep the port and make the
//! restart fail. It is restarted after an exponential backoff (1 s, 2 s,
//! 4 s, … at most 60 s), reset once a run lasted 60 s.
//!
//! On SIGTERM/SIGINT: SIGTERM to each process (the group leader only, like
//! systemd's `KillMode=mixed`: Odoo's prefork master then stops its workers
//! gracefully, letting requests finish, whereas a worker that receives
//! SIGTERM itself dies on the spot), up to the grace period (10 s) for them
//! to exit, SIGKILL to every group still there, pid file removed, exit 0. A
//! second SIGTERM/SIGINT cuts the grace period short. SIGHUP is ignored.
//!
//! A supervisor starting in a directory whose previous supervisor was
//! SIGKILLed first stops whatever that one's processes left behind (found
//! through the old `status.json`), so an orphaned worker cannot hold the
//! port.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, OdooError, Result};
use crate::http::http_get;
use crate::process::{describe_exit, ProcessEnv, DEFAULT_LANG};
use crate::rotate::RotatingLog;
use crate::sys;
use secrecy::{ExposeSecret, SecretString};

/// Name of the pid (and lock) file in the run directory.
pub const PID_FILE: &str = "supervisor.pid";
/// Name of the status file in the run directory.
pub const STATUS_FILE: &str = "status.json";
/// Logs directory in the run directory.
pub const LOGS_DIR: &str = "logs";
/// The supervisor's own log, in [`LOGS_DIR`].
pub const SUPERVISOR_LOG: &str = "supervisor.log";

/// What to keep running for one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorSpec {
    /// For messages, e.g. `"stmarys/production"`.
    pub name: String,
    /// The environment's run directory (pid file, status file, logs/).
    pub dir: PathBuf,
    /// The processes, started in this order.
    pub processes: Vec<ProcessSpec>,
    /// `(uid, gid)` the processes run as; `None` keeps the supervisor's.
    pub user: Option<(u32, u32)>,
    /// Timings and log sizes; defaults suit production.
    #[serde(default)]
    pub settings: SupervisorSettings,
    /// The processes' environment (secrets included) arrives on the
    /// supervisor's stdin ([`spawn_supervisor_with_env`]) and is kept in its
    /// memory only, instead of a file on disk.
    #[serde(default)]
    pub env_on_stdin: bool,
}

/// One supervised process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// `"web"` or `"cron"`; names the log file (`[A-Za-z0-9_-]+`).
    pub name: String,
    /// Program and arguments (no secrets: they are visible in `ps`).
    pub argv: Vec<String>,
    /// `KEY=VALUE` file ([`ProcessEnv::write_file`], mode 0600) read at each
    /// spawn: the process's whole environment besides `PATH`, `HOME` and
    /// `LANG` defaults, and the only way secrets reach it.
    pub env_file: Option<PathBuf>,
    /// Periodic `GET 127.0.0.1:<port><path>` expecting 200; the result is
    /// recorded in the status (it does not trigger restarts: a slow Odoo
    /// migrating a large database must not be killed in a loop).
    pub health: Option<HealthCheck>,
}

/// An HTTP health probe on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Request path, e.g. `/web/health`.
    pub path: String,
}

/// Supervisor timings and log sizes (milliseconds and bytes, so the spec
/// JSON stays plain numbers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SupervisorSettings {
    /// How long processes get to exit after SIGTERM before SIGKILL.
    pub grace_period_ms: u64,
    /// Size at which a process log is rotated.
    pub log_max_bytes: u64,
    /// Rotated files kept (`name.log.1` … `name.log.<keep>`).
    pub log_keep: u32,
    /// First restart delay.
    pub backoff_initial_ms: u64,
    /// Largest restart delay.
    pub backoff_max_ms: u64,
    /// A run at least this long resets the delay to the first one.
    pub backoff_reset_ms: u64,
    /// Time between health probes.
    pub health_interval_ms: u64,
    /// Timeout of one health probe.
    pub health_timeout_ms: u64,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            grace_period_ms: 10_000,
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 5,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            backoff_reset_ms: 60_000,
            health_interval_ms: 10_000,
            health_timeout_ms: 2_000,
        }
    }
}

impl SupervisorSpec {
    /// Reads a spec written by [`SupervisorSpec::save`].
    pub fn load(path: &Path) -> Result<SupervisorSpec> {
        let text = fs::read_to_string(path).map_err(io_err("reading supervisor spec", path))?;
        serde_json::from_str(&text).map_err(|e| OdooError::Json {
            context: "parsing supervisor spec".into(),
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Writes the spec as JSON, atomically, mode 0600. It holds no secret
    /// (those are in the env files), but it is the supervisor's input.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| OdooError::Json {
            context: "serializing supervisor spec".into(),
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        sys::atomic_write(path, &json, 0o600, None)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(OdooError::InvalidConfig(format!(
                "supervisor {}: {m}",
                self.name
            )))
        };
        if self.processes.is_empty() {
            return bad("no processes to supervise".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.processes {
            let valid = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return bad(format!(
                    "process name {:?} must match [A-Za-z0-9_-]+",
                    p.name
                ));
            }
            if p.name == "supervisor" {
                return bad(
                    "process name `supervisor` is reserved for the supervisor's own log".into(),
                );
            }
            if !seen.insert(&p.name) {
                return bad(format!("process name {:?} appears twice", p.name));
            }
            if p.argv.is_empty() || p.argv[0].is_empty() {
                return bad(format!("process {} has an empty command", p.name));
            }
        }
        Ok(())
    }
}

/// The supervisor's state as last written to `status.json`.
///
/// After the supervisor was SIGKILLed the file is stale (it still says
/// `running`); combine it with [`supervisor_pid`] to know what is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// The spec's name.
    pub name: String,
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// Unix time in milliseconds when the supervisor started.
    pub started_at: u64,
    /// Unix time in milliseconds of this write.
    pub updated_at: u64,
    /// Running, stopping or stopped.
    pub state: SupervisorState,
    /// One entry per process, in spec order.
    pub processes: Vec<ProcessStatus>,
}

/// The supervisor's own lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupervisorState {
    /// Supervising.
    Running,
    /// Got SIGTERM/SIGINT, stopping its processes.
    Stopping,
    /// Exited cleanly; no process left.
    Stopped,
}

/// One process's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Process name.
    pub name: String,
    /// Running, waiting to restart, or stopped.
    pub state: ProcessState,
    /// Pid (also its process group id) while running.
    pub pid: Option<u32>,
    /// `/proc/<pid>/stat` start time (clock ticks since boot) of `pid`: the
    /// pair identifies the process even after pid reuse.
    pub pid_start_time: Option<u64>,
    /// Spawn attempts so far (the first start included).
    pub starts: u32,
    /// `starts - 1`: how often it was restarted.
    pub restarts: u32,
    /// How the previous run ended.
    pub last_exit: Option<ExitInfo>,
    /// Unix ms when the current (or last) run started.
    pub started_at: Option<u64>,
    /// Unix ms of the last restart (`None` until the first restart).
    pub last_restart_at: Option<u64>,
    /// Unix ms of the next start while in backoff.
    pub next_start_at: Option<u64>,
    /// Delay (ms) before the pending restart, while in backoff.
    pub backoff_ms: Option<u64>,
    /// Why the last spawn failed (command missing, env file unsafe, ...).
    pub spawn_error: Option<String>,
    /// Result of the last health probe of the current run (`None`: no check
    /// configured or none done yet).
    pub healthy: Option<bool>,
    /// Unix ms of that probe.
    pub health_checked_at: Option<u64>,
    /// What the last failed probe saw.
    pub health_error: Option<String>,
}

/// A process's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// Spawned and not yet exited.
    Running,
    /// Exited (or failed to spawn); restart pending.
    Backoff,
    /// Stopped by the supervisor.
    Stopped,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit status, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// Unix ms of the exit.
    pub at: u64,
    /// How long the run lasted, in ms.
    pub uptime_ms: u64,
    /// "exited with status 3", "was killed by signal 9".
    pub description: String,
}

// ---------------------------------------------------------------------------
// Signals: a self-pipe, so SIGTERM/SIGINT/SIGCHLD wake the main loop's poll()
// whichever thread the kernel delivers them to.

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
static ACTIVE: AtomicBool = AtomicBool::new(false);
const HANDLED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD];

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls (write) and errno save/restore.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
        if fd >= 0 {
            let b = sig as u8;
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// Installed handlers and the pipe; restores the previous dispositions on
/// drop so an in-process caller (tests) gets its process back unchanged.
struct SignalPipe {
    read: File,
    /// Kept open for the handler, which writes to its raw descriptor.
    _write: File,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalPipe {
    fn install() -> io::Result<SignalPipe> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors we now own.
        let (read, write) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        SIGNAL_PIPE.store(write.as_raw_fd(), Ordering::SeqCst);
        let mut previous = Vec::new();
        for sig in HANDLED {
            // SAFETY: sigaction structs are plain data; the handler only
            // performs async-signal-safe operations.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut old) != 0 {
                    return Err(io::Error::last_os_error());
                }
                previous.push((sig, old));
            }
        }
        // Make sure none of them is blocked in this thread.
        // SAFETY: plain sigset manipulation.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in HANDLED {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
        Ok(SignalPipe {
            read,
            _write: write,
            previous,
        })
    }

    /// Waits up to `timeout` for signals; returns those received.
    fn wait(&mut self, timeout: Duration) -> Vec<libc::c_int> {
        let mut pfd = libc::pollfd {
            fd: self.read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match self.read.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend(buf[..n].iter().map(|&b| b as libc::c_int)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restoring a disposition obtained from sigaction.
            unsafe {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
        SIGNAL_PIPE.store(-1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------

/// Health state shared between a probe thread and the main loop.
#[derive(Debug, Default)]
struct Health {
    /// Pid the result belongs to (0: none yet).
    pid: u32,
    healthy: Option<bool>,
    checked_at: Option<u64>,
    error: Option<String>,
}

struct Proc {
    spec: ProcessSpec,
    status: ProcessStatus,
    log: Arc<Mutex<RotatingLog>>,
    /// Pid of the running child (0 when none), read by the probe thread.
    current: Arc<AtomicU32>,
    health: Option<Arc<Mutex<Health>>>,
    started: Option<Instant>,
    next_start: Option<Instant>,
    failures: u32,
}

impl Proc {
    fn event(&self, message: &str) {
        let line = format!(
            "{} careplane-supervisor: {}: {message}\n",
            timestamp(sys::now_ms()),
            self.spec.name
        );
        eprint!("{line}");
        if let Ok(mut log) = self.log.lock() {
            let _ = log.write(line.as_bytes());
        }
    }
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` for log lines.
pub(crate) fn timestamp(ms: u64) -> String {
    format!(
        "{}.{:03}Z",
        careplane_sys::utc_datetime(ms / 1000),
        ms % 1000
    )
}

struct Supervisor<'a> {
    spec: &'a SupervisorSpec,
    /// What arrived on stdin ([`SupervisorSpec::env_on_stdin`]).
    env: ProcessEnv,
    procs: Vec<Proc>,
    status_path: PathBuf,
    pid: u32,
    started_at: u64,
    state: SupervisorState,
    last_written: Option<String>,
}

impl Supervisor<'_> {
    fn snapshot(&self) -> SupervisorStatus {
        SupervisorStatus {
            name: self.spec.name.clone(),
            supervisor_pid: self.pid,
            started_at: self.started_at,
            updated_at: sys::now_ms(),
            state: self.state,
            processes: self.procs.iter().map(|p| p.status.clone()).collect(),
        }
    }

    /// Rewrites status.json when anything but the timestamp changed.
    fn write_status(&mut self) {
        let mut snap = self.snapshot();
        let updated = snap.updated_at;
        snap.updated_at = 0;
        let key = serde_json::to_string(&snap).unwrap_or_default();
        if self.last_written.as_deref() == Some(key.as_str()) {
            return;
        }
        snap.updated_at = updated;
        let json = serde_json::to_vec_pretty(&snap).unwrap_or_default();
        match sys::atomic_write(&self.status_path, &json, 0o644, None) {
            Ok(()) => self.last_written = Some(key),
            Err(e) => eprintln!("careplane-supervisor: {e}"),
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let s = &self.spec.settings;
        let factor = 1u64 << failures.min(32);
        Duration::from_millis(
            s.backoff_initial_ms
                .saturating_mul(factor)
                .min(s.backoff_max_ms),
        )
    }

    fn child_env(&self, p: &ProcessSpec) -> Result<ProcessEnv> {
        let mut env = ProcessEnv::base(&self.spec.dir);
        let from_file = match &p.env_file {
            Some(file) => ProcessEnv::read_file(file)?.vars,
            None => Vec::new(),
        };
        for (k, v) in from_file.iter().chain(&self.env.vars) {
            env.set_secret(k, v.expose_secret());
        }
        Ok(env)
    }

    fn start(&mut self, i: usize) {
        let now = sys::now_ms();
        let spec = self.procs[i].spec.clone();
        let attempt = self.procs[i].status.starts + 1;
        let result = self
            .child_env(&spec)
            .and_then(|env| self.spawn(&spec, &env, i));
        let p = &mut self.procs[i];
        p.status.starts = attempt;
        p.status.restarts = attempt - 1;
        if attempt > 1 {
            p.status.last_restart_at = Some(now);
        }
        p.next_start = None;
        p.status.next_start_at = None;
        p.status.backoff_ms = None;
        p.status.healthy = None;
        p.status.health_checked_at = None;
        p.status.health_error = None;
        match result {
            Ok(pid) => {
                p.status.state = ProcessState::Running;
                p.status.pid = Some(pid);
                p.status.pid_start_time = sys::proc_stat(pid).map(|s| s.start_time);
                p.status.started_at = Some(now);
                p.status.spawn_error = None;
                p.started = Some(Instant::now());
                p.current.store(pid, Ordering::SeqCst);
                p.event(&format!("started (pid {pid}, start {attempt})"));
            }
            Err(e) => {
                let message = e.to_string();
                p.event(&format!("could not be started: {message}"));
                p.status.spawn_error = Some(message);
                p.status.pid = None;
                p.status.pid_start_time = None;
                p.started = None;
                self.schedule_restart(i, "spawn failed");
            }
        }
    }

    fn spawn(&self, spec: &ProcessSpec, env: &ProcessEnv, i: usize) -> Result<u32> {
        let (reader, writer) =
            io::pipe().map_err(io_err("creating output pipe", &self.spec.dir))?;
        let writer2 = writer
            .try_clone()
            .map_err(io_err("creating output pipe", &self.spec.dir))?;
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            .process_group(0);
        env.apply(&mut cmd);
        sys::install_child_hook(&mut cmd, self.spec.user, true, 0o077);
        let child = cmd.spawn().map_err(|e| OdooError::Io {
            context: format!("spawning `{}`", spec.argv.join(" ")),
            path: PathBuf::from(&spec.argv[0]),
            source: e,
        })?;
        // Close our copies of the pipe's write end, or the reader would never
        // see end-of-file.
        drop(cmd);
        let pid = child.id();
        // The child is reaped with waitid/waitpid by pid; std's Child handle
        // is only dropped (which neither waits nor kills).
        drop(child);
        let log = Arc::clone(&self.procs[i].log);
        let name = spec.name.clone();
        let _ = thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || pump(reader, &log));
        Ok(pid)
    }

    fn schedule_restart(&mut self, i: usize, why: &str) {
        let reset = self.spec.settings.backoff_reset_ms;
        let p = &self.procs[i];
        let uptime = p.started.map(|t| t.elapsed()).unwrap_or_default();
        let failures = if uptime >= Duration::from_millis(reset) {
            0
        } else {
            p.failures
        };
        let delay = self.backoff(failures);
        let p = &mut self.procs[i];
        p.failures = failures + 1;
        p.next_start = Some(Instant::now() + delay);
        p.status.state = ProcessState::Backoff;
        p.status.backoff_ms = Some(delay.as_millis() as u64);
        p.status.next_start_at = Some(sys::now_ms() + delay.as_millis() as u64);
        p.event(&format!("{why}; restarting in {:.1}s", delay.as_secs_f64()));
    }

    /// Reaps every exited child; returns whether any did.
    fn reap(&mut self, restart: bool) -> bool {
        let mut any = false;
        for i in 0..self.procs.len() {
            let Some(pid) = self.procs[i].status.pid else {
                continue;
            };
            let Some(status) = reap_pid(pid) else {
                continue;
            };
            any = true;
            let p = &mut self.procs[i];
            p.current.store(0, Ordering::SeqCst);
            let uptime = p.started.map(|t| t.elapsed()).unwrap_or_default();
            let description = describe_exit(status);
            p.status.last_exit = Some(ExitInfo {
                code: status.code(),
                signal: std::os::unix::process::ExitStatusExt::signal(&status),
                at: sys::now_ms(),
                uptime_ms: uptime.as_millis() as u64,
                description: description.clone(),
            });
            p.status.pid = None;
            p.status.pid_start_time = None;
            if restart {
                let why = format!("pid {pid} {description} after {:.1}s", uptime.as_secs_f64());
                self.schedule_restart(i, &why);
            } else {
                p.status.state = ProcessState::Stopped;
                p.event(&format!("pid {pid} {description}"));
            }
        }
        any
    }

    fn refresh_health(&mut self) {
        for p in &mut self.procs {
            let Some(h) = &p.health else { continue };
            let Ok(h) = h.lock() else { continue };
            if p.status.pid.is_some_and(|pid| pid == h.pid) && h.checked_at.is_some() {
                p.status.healthy = h.healthy;
                p.status.health_checked_at = h.checked_at;
                p.status.health_error = h.error.clone();
            }
        }
    }

    fn running_groups(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.status.pid).collect()
    }

    fn shutdown(&mut self, signals: &mut SignalPipe) {
        self.state = SupervisorState::Stopping;
        for p in &mut self.procs {
            p.next_start = None;
            if p.status.pid.is_none() {
                p.status.state = ProcessState::Stopped;
                p.status.next_start_at = None;
                p.status.backoff_ms = None;
            }
        }
        self.write_status();
        for leader in self.running_groups() {
            sys::kill_pid(leader, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_millis(self.spec.settings.grace_period_ms);
        while !self.running_groups().is_empty() && Instant::now() < deadline {
            let got = signals.wait(Duration::from_millis(100).min(deadline - Instant::now()));
            self.reap(false);
            self.write_status();
            if got.iter().any(|&s| s == libc::SIGTERM || s == libc::SIGINT) {
                eprintln!("careplane-supervisor: second stop signal, killing now");
                break;
            }
        }
        let left = self.running_groups();
        for &pgrp in &left {
            if let Some(p) = self.procs.iter().find(|p| p.status.pid == Some(pgrp)) {
                p.event(&format!("pid {pgrp} still running, sending SIGKILL"));
            }
            sys::kill_group(pgrp, libc::SIGKILL);
        }
        // SIGKILL cannot be ignored; the loop ends as soon as they are reaped.
        let hard = Instant::now() + Duration::from_secs(10);
        while !self.running_groups().is_empty() && Instant::now() < hard {
            signals.wait(Duration::from_millis(50));
            self.reap(false);
        }
        self.state = SupervisorState::Stopped;
        self.write_status();
    }
}

/// Copies a child's output into its log until every writer is gone.
fn pump(mut reader: io::PipeReader, log: &Mutex<RotatingLog>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Ok(mut log) = log.lock() {
                    if let Err(e) = log.write(&buf[..n]) {
                        eprintln!("careplane-supervisor: writing log: {e}");
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

/// Non-blocking reap of `pid`. While the exited child is still a zombie
/// (`WNOWAIT`), the rest of its process group is SIGKILLed — the zombie
/// keeps the group id from being recycled — and only then is it reaped.
fn reap_pid(pid: u32) -> Option<std::process::ExitStatus> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; WNOHANG makes the call non-blocking.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after a successful waitid.
    if rc != 0 || unsafe { info.si_pid() } == 0 {
        return None;
    }
    sys::kill_group(pid, libc::SIGKILL);
    let mut raw = 0;
    // SAFETY: the child has exited; this reaps it without blocking for long.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut raw, 0) };
    if r != pid as libc::pid_t {
        return None;
    }
    Some(std::os::unix::process::ExitStatusExt::from_raw(raw))
}

fn probe_loop(
    check: HealthCheck,
    current: Arc<AtomicU32>,
    health: Arc<Mutex<Health>>,
    stop: Arc<AtomicBool>,
    interval: Duration,
    timeout: Duration,
) {
    // First probe soon after start, then every interval.
    let mut next = Instant::now() + interval.min(Duration::from_secs(1));
    let mut last_pid = 0;
    while !stop.load(Ordering::SeqCst) {
        let pid = current.load(Ordering::SeqCst);
        if pid != last_pid {
            last_pid = pid;
            next = Instant::now() + interval.min(Duration::from_secs(1));
        }
        if pid != 0 && Instant::now() >= next {
            let result = http_get(check.port, &check.path, timeout);
            let (healthy, error) = match result {
                Ok(200) => (true, None),
                Ok(code) => (false, Some(format!("status {code}"))),
                Err(OdooError::Http { message, .. }) => (false, Some(message)),
                Err(e) => (false, Some(e.to_string())),
            };
            if let Ok(mut h) = health.lock() {
                *h = Health {
                    pid,
                    healthy: Some(healthy),
                    checked_at: Some(sys::now_ms()),
                    error,
                };
            }
            next = Instant::now() + interval;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the supervisor in the foreground until SIGTERM/SIGINT (see the
/// [module docs](self)); `Ok(())` after a clean stop. Errors before anything
/// was started: invalid spec, unwritable run directory, or another
/// supervisor already holding the directory's lock.
///
/// Meant to be the whole life of a process (`careplane supervise`): it
/// installs process-wide signal handlers for SIGTERM, SIGINT, SIGHUP and
/// SIGCHLD (restored on return) and reaps its children by pid, so only one
/// `supervise` may run per process.
pub fn supervise(spec: &SupervisorSpec) -> Result<()> {
    spec.validate()?;
    let env = if spec.env_on_stdin {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .map_err(io_err("reading the environment from stdin", &spec.dir))?;
        ProcessEnv::parse(SecretString::from(text), Path::new("<stdin>"))?
    } else {
        ProcessEnv::default()
    };
    if ACTIVE.swap(true, Ordering::SeqCst) {
        return Err(OdooError::InvalidConfig(
            "supervise is already running in this process".into(),
        ));
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.store(false, Ordering::SeqCst);
        }
    }
    let _reset = Reset;

    let dir = &spec.dir;
    let logs = sys::ensure_dir(&dir.join(LOGS_DIR), 0o750)?;
    let pid_path = dir.join(PID_FILE);
    let Some(mut lock) = sys::try_lock(&pid_path)? else {
        let pid = read_pid(&pid_path).unwrap_or(0);
        return Err(OdooError::AlreadyRunning {
            dir: dir.clone(),
            pid,
        });
    };
    let pid = std::process::id();
    {
        use std::io::{Seek, Write};
        let write = |f: &mut File| -> io::Result<()> {
            f.set_len(0)?;
            f.seek(io::SeekFrom::Start(0))?;
            writeln!(f, "{pid}")?;
            f.sync_all()
        };
        write(&mut lock).map_err(io_err("writing pid file", &pid_path))?;
    }
    let mut signals = SignalPipe::install().map_err(io_err("installing signal handlers", dir))?;
    stop_leftovers(dir, Duration::from_millis(spec.settings.grace_period_ms));

    let settings = &spec.settings;
    let stop = Arc::new(AtomicBool::new(false));
    let mut probes = Vec::new();
    let mut procs = Vec::new();
    for p in &spec.processes {
        let log_path = logs.join(format!("{}.log", p.name));
        let log = RotatingLog::open(&log_path, settings.log_max_bytes, settings.log_keep)
            .map_err(io_err("opening process log", &log_path))?;
        let current = Arc::new(AtomicU32::new(0));
        let health = p.health.as_ref().map(|check| {
            let h = Arc::new(Mutex::new(Health::default()));
            let (check, current, h2, stop) =
                (check.clone(), current.clone(), h.clone(), stop.clone());
            let interval = Duration::from_millis(settings.health_interval_ms.max(100));
            let timeout = Duration::from_millis(settings.health_timeout_ms.max(100));
            if let Ok(t) = thread::Builder::new()
                .name(format!("health-{}", p.name))
                .spawn(move || probe_loop(check, current, h2, stop, interval, timeout))
            {
                probes.push(t);
            }
            h
        });
        procs.push(Proc {
            spec: p.clone(),
            status: ProcessStatus {
                name: p.name.clone(),
                state: ProcessState::Backoff,
                pid: None,
                pid_start_time: None,
                starts: 0,
                restarts: 0,
                last_exit: None,
                started_at: None,
                last_restart_at: None,
                next_start_at: None,
                backoff_ms: None,
                spawn_error: None,
                healthy: None,
                health_checked_at: None,
                health_error: None,
            },
            log: Arc::new(Mutex::new(log)),
            current,
            health,
            started: None,
            next_start: Some(Instant::now()),
            failures: 0,
        });
    }
    let mut sup = Supervisor {
        spec,
        env,
        procs,
        status_path: dir.join(STATUS_FILE),
        pid,
        started_at: sys::now_ms(),
        state: SupervisorState::Running,
        last_written: None,
    };
    eprintln!(
        "{} careplane-supervisor: supervising {} (pid {pid}): {}",
        timestamp(sys::now_ms()),
        spec.name,
        spec.processes
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut pending: Vec<libc::c_int> = Vec::new();
    loop {
        let stop_requested = pending
            .iter()
            .any(|&s| s == libc::SIGTERM || s == libc::SIGINT);
        pending.clear();
        if stop_requested {
            break;
        }
        sup.reap(true);
        let now = Instant::now();
        for i in 0..sup.procs.len() {
            if sup.procs[i].next_start.is_some_and(|t| t <= now) {
                sup.start(i);
            }
        }
        sup.refresh_health();
        sup.write_status();
        let next_due = sup
            .procs
            .iter()
            .filter_map(|p| p.next_start)
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(500));
        pending = signals.wait(next_due.min(Duration::from_millis(500)));
    }

    eprintln!(
        "{} careplane-supervisor: stopping {}",
        timestamp(sys::now_ms()),
        spec.name
    );
    sup.shutdown(&mut signals);
    stop.store(true, Ordering::SeqCst);
    for t in probes {
        let _ = t.join();
    }
    // Remove the pid file while still holding its lock, then release it.
    let _ = fs::remove_file(&pid_path);
    drop(lock);
    drop(signals);
    eprintln!(
        "{} careplane-supervisor: stopped {}",
        timestamp(sys::now_ms()),
        spec.name
    );
    Ok(())
}

/// [`supervise`] on a spec file: the body of `careplane supervise <spec>`.
pub fn supervise_file(spec_path: &Path) -> Result<()> {
    supervise(&SupervisorSpec::load(spec_path)?)
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The pid of the live supervisor of `dir`, if any: the pid file's lock is
/// held (so a stale file left by a SIGKILLed supervisor reads as `None`) and
/// the recorded process exists.
pub fn supervisor_pid(dir: &Path) -> Option<u32> {
    let path = dir.join(PID_FILE);
    for _ in 0..20 {
        if !sys::lock_held(&path) {
            return None;
        }
        // The lock is taken just before the pid is written: retry briefly.
        if let Some(pid) = read_pid(&path) {
            return sys::pid_alive(pid).then_some(pid);
        }
        thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Parses `<dir>/status.json`; `Ok(None)` when there is none.
pub fn read_status(dir: &Path) -> Result<Option<SupervisorStatus>> {
    let path = dir.join(STATUS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading supervisor status", &path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| OdooError::Json {
            context: "parsing supervisor status".into(),
            path,
            message: e.to_string(),
        })
}

/// Starts `exe args…` (careplane's own binary and `["supervise",
/// spec_path]`) fully detached, so it outlives careplane: a new session
/// (`setsid`: no controlling terminal, a Ctrl-C in careplane's terminal does
/// not reach it), stdin from /dev/null, stdout and stderr appended to
/// `<dir>/logs/supervisor.log`, an environment of only `PATH`, `HOME` and
/// `LANG` (careplane's own environment may hold credentials).
///
/// Returns the supervisor's pid once it has written `supervisor.pid` and a
/// status in which every process was spawned at least once (30 s at most).
/// If it exits first, or does not get there in time (it is then stopped),
/// the error carries the tail of its log. A thread of the calling process
/// reaps it when it exits, so a long-lived caller does not collect zombies.
pub fn spawn_supervisor(exe: &Path, args: &[OsString], dir: &Path) -> Result<u32> {
    spawn(exe, args, dir, None)
}

/// [`spawn_supervisor`] for a spec with [`SupervisorSpec::env_on_stdin`]:
/// `env` goes down a pipe to the supervisor's stdin, which is closed after
/// it, so the secrets exist only in the two processes' memory.
pub fn spawn_supervisor_with_env(
    exe: &Path,
    args: &[OsString],
    dir: &Path,
    env: &ProcessEnv,
) -> Result<u32> {
    spawn(exe, args, dir, Some(env))
}

fn spawn(exe: &Path, args: &[OsString], dir: &Path, env: Option<&ProcessEnv>) -> Result<u32> {
    const START_TIMEOUT: Duration = Duration::from_secs(30);
    // A supervisor that was just killed may hold its lock a moment longer
    // than its threads run (the kernel closes its files last): give a dying
    // one (a zombie, or gone) up to 2 s before calling it running.
    let dying_until = Instant::now() + Duration::from_secs(2);
    while let Some(pid) = supervisor_pid(dir) {
        let dying = sys::proc_stat(pid).is_none_or(|s| matches!(s.state, b'Z' | b'X'));
        if !dying || Instant::now() >= dying_until {
            return Err(OdooError::AlreadyRunning {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    let logs = sys::ensure_dir(&dir.join(LOGS_DIR), 0o750)?;
    let log_path = logs.join(SUPERVISOR_LOG);
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(io_err("opening supervisor log", &log_path))?;
    let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log2 = log
        .try_clone()
        .map_err(io_err("opening supervisor log", &log_path))?;

    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env_clear()
        .env("PATH", sys::DEFAULT_PATH)
        .env("HOME", dir)
        .env("LANG", DEFAULT_LANG)
        .current_dir(dir)
        .stdin(if env.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe and the hook allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let fail = |message: String| OdooError::SupervisorStart {
        dir: dir.to_path_buf(),
        message,
        log_tail: sys::tail(&log_path, offset, 20),
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("`{}` could not be started: {e}", exe.display())))?;
    drop(cmd);
    if let (Some(env), Some(mut stdin)) = (env, child.stdin.take()) {
        use std::io::Write;
        let text = env.serialize(dir)?;
        // A supervisor that died at once shows up below with its log.
        let _ = stdin.write_all(text.expose_secret().as_bytes());
    }
    let pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "the supervisor {} before it was up",
                describe_exit(status)
            )));
        }
        let up = read_pid(&dir.join(PID_FILE)) == Some(pid)
            && matches!(read_status(dir), Ok(Some(s)) if s.supervisor_pid == pid
                && s.processes.iter().all(|p| p.starts > 0));
        if up {
            break;
        }
        if Instant::now() >= deadline {
            sys::kill_pid(pid, libc::SIGTERM);
            let grace = Instant::now() + Duration::from_secs(15);
            while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(fail(format!(
                "the supervisor (pid {pid}) did not start its processes within {}s and was stopped",
                START_TIMEOUT.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(25));
    }
    let _ = thread::Builder::new()
        .name("supervisor-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    Ok(pid)
}

/// Stops the supervisor of `dir` and waits until it and every process it
/// ran are gone; `Ok` at once when nothing runs. Idempotent.
///
/// SIGTERM to the supervisor (which stops its children within its grace
/// period), then waiting up to `timeout`. Processes a SIGKILLed supervisor
/// left behind (its direct children got SIGTERM from the kernel, but not
/// their own children) get SIGTERM right away. Whatever is still alive at
/// `timeout` — supervisor or process group — is SIGKILLed, after checking
/// from `/proc` start times that a pid still names the same process. An
/// error only if something survives even that (5 s more).
pub fn stop_supervisor(dir: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let pid_path = dir.join(PID_FILE);
    // Every child (pid, start time) seen while the supervisor ran.
    let mut children: HashMap<u32, Option<u64>> = HashMap::new();
    let collect = |children: &mut HashMap<u32, Option<u64>>| {
        if let Ok(Some(s)) = read_status(dir) {
            for p in s.processes {
                if let Some(pid) = p.pid {
                    children.insert(pid, p.pid_start_time);
                }
            }
        }
    };
    collect(&mut children);
    let supervisor = supervisor_pid(dir);
    // The supervisor releases its lock a moment before its process is
    // gone: "stopped" means both, checked against its start time so a
    // reused pid is not waited for.
    let sup_start = supervisor.and_then(|p| sys::proc_stat(p).map(|s| s.start_time));
    let sup_running = || {
        supervisor.is_some_and(|p| {
            matches!(sys::proc_stat(p), Some(s)
                if Some(s.start_time) == sup_start && !matches!(s.state, b'Z' | b'X'))
        })
    };
    if let Some(pid) = supervisor {
        sys::kill_pid(pid, libc::SIGTERM);
    }
    let alive = |children: &HashMap<u32, Option<u64>>| -> Vec<u32> {
        children
            .iter()
            .filter(|&(&pid, &start)| group_alive(pid, start))
            .map(|(&pid, _)| pid)
            .collect()
    };
    let mut orphans_signalled = false;
    loop {
        let locked = sys::lock_held(&pid_path);
        if locked {
            collect(&mut children);
        }
        let sup_alive = locked || sup_running();
        let left = alive(&children);
        if !sup_alive && left.is_empty() {
            return Ok(());
        }
        if !sup_alive && !orphans_signalled {
            // Leftovers of a supervisor that died without stopping them
            // (SIGKILL: its direct children got SIGTERM from the kernel, but
            // not their own children, e.g. Odoo's prefork workers).
            for &pgrp in &left {
                sys::kill_group(pgrp, libc::SIGTERM);
            }
            orphans_signalled = true;
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Escalate.
    if let Some(pid) = supervisor.filter(|&p| sys::pid_alive(p)) {
        sys::kill_pid(pid, libc::SIGKILL);
    }
    for pgrp in alive(&children) {
        sys::kill_group(pgrp, libc::SIGKILL);
    }
    let hard = Instant::now() + Duration::from_secs(5);
    loop {
        let sup_alive = sys::lock_held(&pid_path) || sup_running();
        let left = alive(&children);
        if !sup_alive && left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= hard {
            let mut message = String::new();
            if sup_alive {
                let _ = write!(message, "supervisor still holds {}; ", pid_path.display());
            }
            if !left.is_empty() {
                let _ = write!(message, "processes still alive: {left:?}");
            }
            return Err(OdooError::Stop {
                dir: dir.to_path_buf(),
                message,
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the process group a supervised child `pid` (started at `start`)
/// led still has live members — without mistaking someone else's process
/// for it after pid reuse.
///
/// * The pid still names the recorded process (alive, or a zombie nobody
///   reaped): ours; alive if it runs or its group has live members.
/// * The pid names a *different* process: the kernel never hands out a pid
///   that is still in use as a process group id, so our group is gone.
/// * No process has that pid: any group with that id can only be the
///   leftovers (e.g. prefork workers) of ours.
fn group_alive(pid: u32, start: Option<u64>) -> bool {
    match sys::proc_stat(pid) {
        Some(stat) if start == Some(stat.start_time) => {
            !matches!(stat.state, b'Z' | b'X') || !sys::group_members(pid).is_empty()
        }
        Some(_) => false,
        None => !sys::group_members(pid).is_empty(),
    }
}

/// Stops what a previous, SIGKILLed supervisor of `dir` left running (per
/// its `status.json`): SIGTERM to each leftover leader (or to its group when
/// the leader is gone), then SIGKILL to the groups after `grace`.
fn stop_leftovers(dir: &Path, grace: Duration) {
    let Ok(Some(old)) = read_status(dir) else {
        return;
    };
    let left: Vec<(u32, Option<u64>)> = old
        .processes
        .iter()
        .filter_map(|p| Some((p.pid?, p.pid_start_time)))
        .filter(|&(pid, start)| group_alive(pid, start))
        .collect();
    if left.is_empty() {
        return;
    }
    eprintln!(
        "{} careplane-supervisor: stopping processes left by supervisor {}: {:?}",
        timestamp(sys::now_ms()),
        old.supervisor_pid,
        left.iter().map(|l| l.0).collect::<Vec<_>>()
    );
    for &(pid, start) in &left {
        match sys::proc_stat(pid) {
            Some(stat) if Some(stat.start_time) == start && stat.state != b'Z' => {
                sys::kill_pid(pid, libc::SIGTERM);
            }
            _ => sys::kill_group(pid, libc::SIGTERM),
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && left.iter().any(|&(p, s)| group_alive(p, s)) {
        thread::sleep(Duration::from_millis(50));
    }
    for &(pid, start) in &left {
        if group_alive(pid, start) {
            sys::kill_group(pid, libc::SIGKILL);
        }
    }
}

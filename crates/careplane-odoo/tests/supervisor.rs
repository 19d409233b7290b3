//! The supervisor, run for real: this test binary re-executes itself as a
//! detached supervisor process (`supervisor_entry` below), exactly the way
//! careplane re-executes itself as `careplane supervise <spec.json>`.
//! Children are small shell scripts and a python3 HTTP server.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use careplane_odoo::{
    read_status, spawn_supervisor, stop_supervisor, supervise, supervisor_pid, wait_healthy,
    HealthCheck, OdooError, ProcessEnv, ProcessSpec, ProcessState, SupervisorSettings,
    SupervisorSpec, SupervisorState, SupervisorStatus,
};

const SPEC_SUFFIX: &str = ".supervisor-spec.json";

/// Not a test of its own: when the binary is re-executed with a spec path,
/// this runs the supervisor in that process. Otherwise it does nothing.
#[test]
fn supervisor_entry() {
    let Some(spec) = std::env::args().find(|a| a.ends_with(SPEC_SUFFIX)) else {
        return;
    };
    careplane_odoo::supervise_file(Path::new(&spec)).unwrap();
}

fn settings() -> SupervisorSettings {
    SupervisorSettings {
        grace_period_ms: 3_000,
        backoff_initial_ms: 200,
        backoff_max_ms: 800,
        health_interval_ms: 200,
        health_timeout_ms: 500,
        ..SupervisorSettings::default()
    }
}

fn sh(name: &str, script: &str) -> ProcessSpec {
    ProcessSpec {
        name: name.into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env_file: None,
        health: None,
    }
}

fn spec(dir: &Path, processes: Vec<ProcessSpec>) -> SupervisorSpec {
    SupervisorSpec {
        name: "stmarys/test".into(),
        dir: dir.to_path_buf(),
        processes,
        user: None,
        settings: settings(),
        env_on_stdin: false,
    }
}

/// Saves the spec and starts a detached supervisor running it.
fn start(spec: &SupervisorSpec) -> u32 {
    let path = spec.dir.join(format!("sup{SPEC_SUFFIX}"));
    spec.save(&path).unwrap();
    let exe = std::env::current_exe().unwrap();
    let args: Vec<OsString> = vec![
        "--exact".into(),
        "supervisor_entry".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
        path.into(),
    ];
    spawn_supervisor(&exe, &args, &spec.dir).unwrap()
}

/// Polls `f` every 20 ms until it returns `Some` (at most 30 s).
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(dir: &Path) -> SupervisorStatus {
    read_status(dir).unwrap().expect("status.json")
}

fn proc_status(dir: &Path, name: &str) -> careplane_odoo::ProcessStatus {
    status(dir)
        .processes
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
}

/// A pid is gone when /proc has no live process for it (a zombie waiting
/// for a non-reaping init counts as gone).
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state == 'Z' || state == 'X'
        }
    }
}

fn log(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join("logs").join(format!("{name}.log"))).unwrap_or_default()
}

fn stop_and_check(dir: &Path, pids: &[u32]) {
    let sup = supervisor_pid(dir);
    stop_supervisor(dir, Duration::from_secs(30)).unwrap();
    if let Some(sup) = sup {
        assert!(gone(sup), "supervisor {sup} still alive");
    }
    for &pid in pids {
        assert!(gone(pid), "pid {pid} still alive after stop");
    }
    assert_eq!(supervisor_pid(dir), None);
    assert!(!dir.join("supervisor.pid").exists(), "pid file removed");
    let s = status(dir);
    assert_eq!(s.state, SupervisorState::Stopped);
    assert!(s
        .processes
        .iter()
        .all(|p| p.pid.is_none() && p.state == ProcessState::Stopped));
    // Idempotent.
    stop_supervisor(dir, Duration::from_secs(5)).unwrap();
}

#[test]
fn restarts_crashing_process_with_backoff_and_logs_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sup = start(&spec(
        dir,
        vec![
            sh("web", "echo started; exec sleep 1000"),
            sh("cron", "echo crashing; exit 3"),
        ],
    ));
    assert_eq!(supervisor_pid(dir), Some(sup));
    assert_eq!(
        fs::read_to_string(dir.join("supervisor.pid"))
            .unwrap()
            .trim(),
        sup.to_string()
    );
    let s = status(dir);
    assert_eq!(s.supervisor_pid, sup);
    assert_eq!(s.state, SupervisorState::Running);
    let web_pid = proc_status(dir, "web").pid.expect("web running");

    let cron = wait_for("cron restarted 4 times", || {
        let c = proc_status(dir, "cron");
        (c.restarts >= 4).then_some(c)
    });
    let exit = cron.last_exit.expect("last exit recorded");
    assert_eq!(exit.code, Some(3));
    assert_eq!(exit.signal, None);
    assert!(cron.last_restart_at.is_some());
    assert!(cron.started_at.is_some());

    // The backoff doubles up to its maximum: 0.2 s, 0.4 s, 0.8 s, 0.8 s.
    let cron_log = log(dir, "cron");
    let delays: Vec<&str> = cron_log
        .lines()
        .filter_map(|l| l.split("restarting in ").nth(1))
        .collect();
    assert!(delays.len() >= 4, "{cron_log}");
    assert_eq!(&delays[..4], ["0.2s", "0.4s", "0.8s", "0.8s"], "{cron_log}");
    assert!(cron_log.contains("crashing"), "child output captured");
    assert!(cron_log.contains("exited with status 3"), "{cron_log}");

    // Meanwhile web kept running, untouched.
    let web = proc_status(dir, "web");
    assert_eq!(web.pid, Some(web_pid));
    assert_eq!(web.restarts, 0);
    assert_eq!(web.state, ProcessState::Running);
    assert!(log(dir, "web").contains("started"));

    stop_and_check(dir, &[web_pid]);
}

#[test]
fn killed_child_is_restarted_with_a_new_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    start(&spec(dir, vec![sh("web", "echo up; exec sleep 1000")]));
    let first = proc_status(dir, "web").pid.unwrap();
    // SAFETY: signalling our own test child.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    let web = wait_for("web restarted", || {
        let w = proc_status(dir, "web");
        (w.state == ProcessState::Running && w.pid.is_some_and(|p| p != first)).then_some(w)
    });
    assert!(gone(first));
    assert_eq!(web.restarts, 1);
    assert_eq!(web.last_exit.as_ref().unwrap().signal, Some(9));
    assert!(web.pid_start_time.is_some());
    wait_for("output of the second run", || {
        (log(dir, "web").matches("up\n").count() >= 2).then_some(())
    });
    stop_and_check(dir, &[first, web.pid.unwrap()]);
}

#[test]
fn logs_rotate_by_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = spec(
        dir,
        vec![sh(
            "web",
            "i=0; while [ $i -lt 3000 ]; do echo \"line $i ..........................................\"; \
             i=$((i+1)); done; echo done-writing; exec sleep 1000",
        )],
    );
    s.settings.log_max_bytes = 8 * 1024;
    s.settings.log_keep = 2;
    start(&s);
    let logs = dir.join("logs");
    wait_for("all output written", || {
        let all: String = ["web.log", "web.log.1", "web.log.2"]
            .iter()
            .map(|f| fs::read_to_string(logs.join(f)).unwrap_or_default())
            .collect();
        all.contains("done-writing").then_some(())
    });
    for f in ["web.log.1", "web.log.2"] {
        let len = fs::metadata(logs.join(f)).unwrap().len();
        assert!(len > 0 && len <= 8 * 1024, "{f}: {len} bytes");
    }
    assert!(!logs.join("web.log.3").exists(), "keep = 2");
    assert!(fs::metadata(logs.join("web.log")).unwrap().len() <= 8 * 1024);
    let pid = proc_status(dir, "web").pid.unwrap();
    stop_and_check(dir, &[pid]);
}

#[test]
fn stop_reaches_grandchildren_and_processes_ignoring_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = spec(
        dir,
        vec![
            // Like Odoo's prefork workers: children in the same group.
            sh("web", "sleep 1000 & echo $! > worker.pid; echo up; wait"),
            // Ignores SIGTERM (its children inherit that): needs SIGKILL.
            sh(
                "cron",
                "trap '' TERM; echo stubborn; while :; do sleep 0.1; done",
            ),
        ],
    );
    s.settings.grace_period_ms = 500;
    start(&s);
    let worker: u32 = wait_for("worker pid", || {
        fs::read_to_string(dir.join("worker.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    wait_for("cron output", || {
        log(dir, "cron").contains("stubborn").then_some(())
    });
    let web = proc_status(dir, "web").pid.unwrap();
    let cron = proc_status(dir, "cron").pid.unwrap();
    assert!(!gone(worker));
    stop_and_check(dir, &[web, cron, worker]);
    assert!(log(dir, "cron").contains("SIGKILL"), "{}", log(dir, "cron"));
}

#[test]
fn sigkilled_supervisor_leaves_no_orphans() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sup = start(&spec(
        dir,
        vec![
            sh("web", "echo up; exec sleep 1000"),
            // A grandchild is outside PR_SET_PDEATHSIG's reach (fork clears
            // it); stop_supervisor cleans its group up.
            sh("cron", "sleep 1000 & echo $! > worker.pid; wait"),
        ],
    ));
    let worker: u32 = wait_for("worker pid", || {
        fs::read_to_string(dir.join("worker.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    let web = proc_status(dir, "web").pid.unwrap();
    let cron = proc_status(dir, "cron").pid.unwrap();
    // SAFETY: signalling our own test child.
    assert_eq!(unsafe { libc::kill(sup as i32, libc::SIGKILL) }, 0);
    wait_for("supervisor gone", || gone(sup).then_some(()));
    // The kernel sent SIGTERM (parent-death signal) to the direct children.
    wait_for("direct children gone", || {
        (gone(web) && gone(cron)).then_some(())
    });
    // The stale pid file does not count as a running supervisor.
    assert!(dir.join("supervisor.pid").exists());
    assert_eq!(supervisor_pid(dir), None);
    // The status still lists the children; stop cleans up what is left.
    stop_supervisor(dir, Duration::from_secs(10)).unwrap();
    assert!(gone(worker), "grandchild {worker} survived");
    stop_supervisor(dir, Duration::from_secs(1)).unwrap();
}

#[test]
fn new_supervisor_stops_leftovers_of_a_killed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = spec(
        dir,
        vec![sh(
            "web",
            "if [ ! -e worker.pid ]; then sleep 1000 & echo $! > worker.pid; fi; echo up; exec sleep 1000",
        )],
    );
    let first = start(&s);
    let worker: u32 = wait_for("worker pid", || {
        fs::read_to_string(dir.join("worker.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    let web = proc_status(dir, "web").pid.unwrap();
    // SAFETY: signalling our own test child.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    wait_for("web gone", || gone(web).then_some(()));
    assert!(!gone(worker), "the orphaned worker outlives its leader");
    // The kernel closes a killed process's files (its lock) after its
    // threads stopped, and signals children at thread exit: wait for both.
    wait_for("the killed supervisor's lock released", || {
        supervisor_pid(dir).is_none().then_some(())
    });
    let second = start(&s);
    assert_ne!(first, second);
    assert!(
        gone(worker),
        "the new supervisor stopped the orphaned worker first"
    );
    let log = fs::read_to_string(dir.join("logs/supervisor.log")).unwrap();
    assert!(
        log.contains(&format!("left by supervisor {first}")),
        "{log}"
    );
    let web = proc_status(dir, "web").pid.unwrap();
    stop_and_check(dir, &[web]);
}

#[test]
fn env_file_secrets_reach_only_the_child() {
    const SECRET: &str = "pg-Secret-c0ffee-42";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env_file = dir.join("web.env");
    let mut env = ProcessEnv::base(dir);
    env.set_secret("PGPASSWORD", SECRET);
    env.set("GREETING", "a=b c");
    env.write_file(&env_file).unwrap();
    assert_eq!(
        fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut p = sh(
        "web",
        "printf %s \"$PGPASSWORD\" > secret.out; env > env.out; \
         echo \"sha: $(printf %s \"$PGPASSWORD\" | sha256sum | cut -c1-16)\"; exec sleep 1000",
    );
    p.env_file = Some(env_file.clone());
    let mut bad = sh("cron", "exec sleep 1000");
    let loose = dir.join("loose.env");
    env.write_file(&loose).unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    bad.env_file = Some(loose);
    let sup = start(&spec(dir, vec![p, bad]));

    wait_for("child output", || {
        log(dir, "web").contains("sha: ").then_some(())
    });
    assert_eq!(fs::read_to_string(dir.join("secret.out")).unwrap(), SECRET);
    // umask 077 for what the child creates.
    assert_eq!(
        fs::metadata(dir.join("secret.out"))
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0
    );
    let child_env = fs::read_to_string(dir.join("env.out")).unwrap();
    assert!(child_env.contains("GREETING=a=b c"), "{child_env}");
    assert!(child_env.contains("LANG=C.UTF-8"), "{child_env}");
    assert!(
        !child_env.lines().any(|l| l.starts_with("CARGO")),
        "clean env: {child_env}"
    );

    // A group/world-readable env file is refused; the process is not started.
    let cron = wait_for("cron spawn error", || {
        let c = proc_status(dir, "cron");
        c.spawn_error.is_some().then_some(c)
    });
    assert!(
        cron.spawn_error.as_ref().unwrap().contains("0600"),
        "{cron:?}"
    );
    assert_eq!(cron.pid, None);
    assert_eq!(cron.state, ProcessState::Backoff);

    let web = proc_status(dir, "web").pid.unwrap();
    let mut places = vec![
        fs::read_to_string(dir.join(format!("sup{SPEC_SUFFIX}"))).unwrap(),
        fs::read_to_string(dir.join("status.json")).unwrap(),
        String::from_utf8_lossy(&fs::read(format!("/proc/{sup}/cmdline")).unwrap()).into(),
        String::from_utf8_lossy(&fs::read(format!("/proc/{sup}/environ")).unwrap()).into(),
        String::from_utf8_lossy(&fs::read(format!("/proc/{web}/cmdline")).unwrap()).into(),
    ];
    for entry in fs::read_dir(dir.join("logs")).unwrap() {
        places.push(fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    for text in &places {
        assert!(!text.contains(SECRET), "secret leaked into: {text}");
    }
    stop_and_check(dir, &[web]);
    assert!(!fs::read_to_string(dir.join("status.json"))
        .unwrap()
        .contains(SECRET));
}

#[test]
fn children_run_as_the_service_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root, user switch not tested");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = spec(
        dir,
        vec![sh(
            "web",
            "echo \"ids: $(id -u) $(id -g) $(id -G)\"; exec sleep 1000",
        )],
    );
    s.user = Some((65534, 65534));
    start(&s);
    wait_for("ids", || log(dir, "web").contains("ids: ").then_some(()));
    assert!(
        log(dir, "web").contains("ids: 65534 65534 65534\n"),
        "{}",
        log(dir, "web")
    );
    let pid = proc_status(dir, "web").pid.unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.contains("65534")));
    stop_and_check(dir, &[pid]);
}

#[test]
fn sigkilled_supervisor_kills_children_after_uid_switch() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root, skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = spec(dir, vec![sh("web", "exec sleep 1000")]);
    s.user = Some((65534, 65534));
    let sup = start(&s);
    let pid = proc_status(dir, "web").pid.unwrap();
    // SAFETY: signalling our own test child.
    unsafe { libc::kill(sup as i32, libc::SIGKILL) };
    wait_for("child gone after supervisor SIGKILL", || {
        gone(pid).then_some(())
    });
    stop_supervisor(dir, Duration::from_secs(5)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn health_checks_are_recorded() {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("note: /usr/bin/python3 missing, health test skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let server = format!(
        "import http.server\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(200 if self.path == '/web/health' else 404)\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(b'{{\"status\": \"pass\"}}')\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    );
    let web = ProcessSpec {
        name: "web".into(),
        argv: vec!["/usr/bin/python3".into(), "-c".into(), server],
        env_file: None,
        health: Some(HealthCheck {
            port,
            path: "/web/health".into(),
        }),
    };
    let mut cron = sh("cron", "exec sleep 1000");
    cron.health = Some(HealthCheck {
        port: free_port(),
        path: "/web/health".into(),
    });
    start(&spec(dir, vec![web, cron]));
    wait_healthy(port, "/web/health", Duration::from_secs(20)).unwrap();
    let w = wait_for("web healthy in status", || {
        let w = proc_status(dir, "web");
        (w.healthy == Some(true)).then_some(w)
    });
    assert!(w.health_checked_at.is_some());
    assert_eq!(w.health_error, None);
    let c = wait_for("cron unhealthy in status", || {
        let c = proc_status(dir, "cron");
        (c.healthy == Some(false)).then_some(c)
    });
    assert!(c.health_error.is_some());
    // Unhealthy is reported, not acted upon.
    assert_eq!(c.restarts, 0);
    let pids = [w.pid.unwrap(), c.pid.unwrap()];
    stop_and_check(dir, &pids);
}

#[test]
fn start_failures_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // An "exe" that exits at once.
    let err = spawn_supervisor(
        Path::new("/bin/sh"),
        &["-c".into(), "echo boom >&2; exit 7".into()],
        dir,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OdooError::SupervisorStart { .. }), "{text}");
    assert!(text.contains("exited with status 7"), "{text}");
    assert!(text.contains("boom"), "log tail: {text}");

    // A second supervisor for the same directory is refused.
    let sup = start(&spec(dir, vec![sh("web", "exec sleep 1000")]));
    let exe = std::env::current_exe().unwrap();
    let err = spawn_supervisor(&exe, &[], dir).unwrap_err();
    assert!(
        matches!(err, OdooError::AlreadyRunning { pid, .. } if pid == sup),
        "{err}"
    );
    // Also when bypassing the pre-check: the lock refuses it.
    let err = supervise(&spec(dir, vec![sh("web", "exec sleep 1000")])).unwrap_err();
    assert!(
        matches!(err, OdooError::AlreadyRunning { pid, .. } if pid == sup),
        "{err}"
    );
    let pid = proc_status(dir, "web").pid.unwrap();
    stop_and_check(dir, &[pid]);
}

#[test]
fn invalid_specs_are_refused_and_missing_commands_back_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for bad in [
        spec(dir, vec![]),
        spec(dir, vec![sh("web", "true"), sh("web", "true")]),
        spec(dir, vec![sh("../web", "true")]),
        spec(dir, vec![sh("supervisor", "true")]),
        spec(
            dir,
            vec![ProcessSpec {
                name: "web".into(),
                argv: vec![],
                env_file: None,
                health: None,
            }],
        ),
    ] {
        let err = supervise(&bad).unwrap_err();
        assert!(matches!(err, OdooError::InvalidConfig(_)), "{err}");
    }
    assert!(!dir.join("supervisor.pid").exists());

    let missing = ProcessSpec {
        name: "web".into(),
        argv: vec![dir.join("no-such-odoo-bin").display().to_string()],
        env_file: None,
        health: None,
    };
    start(&spec(dir, vec![missing]));
    let w = wait_for("two failed spawns", || {
        let w = proc_status(dir, "web");
        (w.starts >= 2).then_some(w)
    });
    assert!(w.spawn_error.unwrap().contains("no-such-odoo-bin"));
    stop_and_check(dir, &[]);
}

#[test]
fn spec_round_trips_through_json() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec(tmp.path(), vec![sh("web", "true")]);
    s.user = Some((1000, 1000));
    let path: PathBuf = tmp.path().join("x.json");
    s.save(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(SupervisorSpec::load(&path).unwrap(), s);
    // Settings default when absent.
    let json = r#"{"name":"a","dir":"/x","processes":[],"user":null}"#;
    let parsed: SupervisorSpec = serde_json::from_str(json).unwrap();
    assert_eq!(parsed.settings, SupervisorSettings::default());
    assert_eq!(parsed.settings.grace_period_ms, 10_000);
    assert_eq!(parsed.settings.log_max_bytes, 10 * 1024 * 1024);
    assert_eq!(parsed.settings.log_keep, 5);
}

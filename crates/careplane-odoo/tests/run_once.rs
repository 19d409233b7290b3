//! run_once against a fake odoo-bin (a shell script) that records what it
//! was given.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use careplane_odoo::{run_once, ModuleOp, OdooError, OdooInstall, ProcessEnv, SecretString};

const DB_PASSWORD: &str = "pg-Secret-9e81f0";

/// A world-readable directory (so a service user can exec the script).
fn open_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The fake odoo-bin: prints its arguments and uid, writes its environment
/// to `$OUT_DIR/env.txt` (not to the log), prints a few lines, and exits
/// with `$EXIT_CODE`.
fn fake_odoo(dir: &Path, executable: bool) -> PathBuf {
    let path = dir.join("odoo-bin");
    fs::write(
        &path,
        "#!/bin/sh\n\
         echo \"args: $*\"\n\
         echo \"uid: $(id -u)\"\n\
         env > \"$OUT_DIR/env.txt\"\n\
         i=0; while [ $i -lt 30 ]; do echo \"odoo line $i\"; i=$((i+1)); done\n\
         echo 'CRITICAL: Failed to initialize database' >&2\n\
         exit \"${EXIT_CODE:-0}\"\n",
    )
    .unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn env_for(dir: &Path, exit_code: u8) -> ProcessEnv {
    let mut env = ProcessEnv::for_odoo(
        dir,
        &SecretString::from(DB_PASSWORD.to_string()),
        Some(Path::new("/etc/ssl/ca.pem")),
        None,
    );
    env.set("OUT_DIR", &dir.display().to_string());
    env.set("EXIT_CODE", &exit_code.to_string());
    env
}

fn install(command: PathBuf, python: Option<PathBuf>) -> OdooInstall {
    OdooInstall {
        command,
        python,
        version: 18,
        addons_paths: vec![],
    }
}

#[test]
fn success_appends_output_and_passes_only_the_given_environment() {
    let tmp = open_tempdir();
    let inst = install(fake_odoo(tmp.path(), true), None);
    let conf = tmp.path().join("odoo-cron.conf");
    fs::write(&conf, "[options]\n").unwrap();
    let log = tmp.path().join("logs/odoo-init.log");
    fs::create_dir_all(log.parent().unwrap()).unwrap();
    fs::write(&log, "previous run\n").unwrap();

    run_once(
        &inst,
        &conf,
        "stmarys",
        ModuleOp::Install(vec!["base".into(), "web".into()]),
        &env_for(tmp.path(), 0),
        &log,
        None,
    )
    .unwrap();

    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("previous run\n"),
        "appended, not truncated"
    );
    assert!(text.contains("=== careplane "), "{text}");
    assert!(
        text.contains(&format!(
            "args: -c {} -d stmarys -i base,web --stop-after-init --no-http",
            conf.display()
        )),
        "{text}"
    );
    assert!(!text.contains(DB_PASSWORD));

    let env = fs::read_to_string(tmp.path().join("env.txt")).unwrap();
    assert!(env.contains(&format!("PGPASSWORD={DB_PASSWORD}")));
    assert!(env.contains("PGSSLROOTCERT=/etc/ssl/ca.pem"));
    assert!(env.contains("LANG=C.UTF-8"));
    assert!(env.lines().any(|l| l.starts_with("PATH=/usr/local/sbin:")));
    // Nothing from the test's own environment (cargo sets CARGO_* for it).
    assert!(!env.lines().any(|l| l.starts_with("CARGO")), "{env}");

    run_once(
        &inst,
        &conf,
        "stmarys",
        ModuleOp::Update(vec!["web".into()]),
        &env_for(tmp.path(), 0),
        &log,
        None,
    )
    .unwrap();
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("-d stmarys -u web --stop-after-init --no-http"),
        "{text}"
    );
}

#[test]
fn failure_reports_status_and_log_tail_without_secrets() {
    let tmp = open_tempdir();
    // Not executable: run through an interpreter, like `python odoo-bin`.
    let inst = install(fake_odoo(tmp.path(), false), Some(PathBuf::from("/bin/sh")));
    let conf = tmp.path().join("odoo.conf");
    let log = tmp.path().join("init.log");
    fs::write(&log, "OLD LINE FROM AN EARLIER RUN\n").unwrap();
    let err = run_once(
        &inst,
        &conf,
        "stmarys",
        ModuleOp::None,
        &env_for(tmp.path(), 3),
        &log,
        None,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OdooError::Command { .. }));
    assert!(text.contains("exited with status 3"), "{text}");
    assert!(text.contains("loading database stmarys"), "{text}");
    assert!(
        text.contains("CRITICAL: Failed to initialize database"),
        "{text}"
    );
    assert!(text.contains("odoo line 29"), "{text}");
    assert!(!text.contains("odoo line 5\n"), "only the tail: {text}");
    assert!(!text.contains("OLD LINE"), "only this run's lines: {text}");
    assert!(!text.contains(DB_PASSWORD));
    assert!(text.contains(&log.display().to_string()));
    // New log files are private.
    let fresh = tmp.path().join("fresh.log");
    let _ = run_once(
        &inst,
        &conf,
        "stmarys",
        ModuleOp::None,
        &env_for(tmp.path(), 0),
        &fresh,
        None,
    );
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn missing_command_and_bad_input_are_errors() {
    let tmp = open_tempdir();
    let inst = install(tmp.path().join("no-such-odoo-bin"), None);
    let conf = tmp.path().join("odoo.conf");
    let log = tmp.path().join("x.log");
    let env = env_for(tmp.path(), 0);
    let err = run_once(&inst, &conf, "db", ModuleOp::None, &env, &log, None).unwrap_err();
    assert!(err.to_string().contains("could not be started"), "{err}");
    for op in [
        ModuleOp::Install(vec![]),
        ModuleOp::Install(vec!["--dev=all".into()]),
        ModuleOp::Update(vec!["a,b".into()]),
    ] {
        let err = run_once(&inst, &conf, "db", op, &env, &log, None).unwrap_err();
        assert!(matches!(err, OdooError::InvalidConfig(_)), "{err}");
    }
    let err = run_once(&inst, &conf, "-db", ModuleOp::None, &env, &log, None).unwrap_err();
    assert!(matches!(err, OdooError::InvalidConfig(_)), "{err}");
}

#[test]
fn runs_as_the_service_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root, user switch not tested");
        return;
    }
    let tmp = open_tempdir();
    let inst = install(fake_odoo(tmp.path(), true), None);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let mut env = env_for(tmp.path(), 0);
    env.set("OUT_DIR", &out.display().to_string());
    let log = tmp.path().join("user.log");
    run_once(
        &inst,
        &tmp.path().join("odoo.conf"),
        "stmarys",
        ModuleOp::None,
        &env,
        &log,
        Some((65534, 65534)),
    )
    .unwrap();
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("uid: 65534"), "{text}");
    // umask 077: what the child creates is private to it.
    let m = fs::metadata(out.join("env.txt")).unwrap();
    assert_eq!(m.uid(), 65534);
    assert_eq!(m.mode() & 0o077, 0);
}

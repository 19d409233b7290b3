//! What the CLI promises an operator, through the real binary: data is
//! dropped only with `--delete-data` (destroy and apply alike), `status`
//! exits non-zero and tells the truth when an Odoo supervisor is dead,
//! `credentials` shows the Odoo login in text too, a closed stdout ends a
//! command quietly, and an error names its cause once.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn put_row(p: &Platform, tenant: &str, env: &str) {
    tenant_client(p, tenant, env)
        .batch_execute("CREATE TABLE patients_demo (id int); INSERT INTO patients_demo VALUES (1);")
        .unwrap();
}

fn rows(p: &Platform, tenant: &str, env: &str) -> i64 {
    tenant_client(p, tenant, env)
        .query_one("SELECT count(*) FROM patients_demo", &[])
        .unwrap()
        .get(0)
}

/// `args` fails, names each database and `--delete-data`, and the rows of
/// alpha/production and beta/test are still there.
fn refused(p: &Platform, args: &[&str], databases: &[&str]) {
    let out = p.run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "careplane {args:?} succeeded:\n{err}"
    );
    for db in databases {
        assert!(
            err.contains(&format!("(database {db})")) && err.contains("--delete-data"),
            "careplane {args:?} does not name {db}:\n{err}"
        );
    }
    assert_eq!(rows(p, "alpha", "production"), 1, "after {args:?}");
    assert_eq!(rows(p, "beta", "test"), 1, "after {args:?}");
}

fn databases(p: &Platform) -> Vec<String> {
    let mut v: Vec<String> = p.json(&["status"])["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["database"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Runs careplane with its stdout a pipe whose reading end is closed before
/// careplane starts (as `careplane journal | head` once head has exited).
fn with_closed_stdout(p: &Platform, args: &[&str]) -> std::process::Output {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds`; the reading end is closed at once and the
    // writing end is owned by `write` alone.
    let write = unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    };
    p.cmd(args)
        .stdout(Stdio::from(write))
        .output()
        .expect("spawn careplane")
}

fn assert_quiet_on_closed_stdout(p: &Platform, args: &[&str]) {
    let out = with_closed_stdout(p, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "careplane {args:?}:\n{err}");
    assert!(err.is_empty(), "careplane {args:?} said:\n{err}");
    // 141 = 128 + SIGPIPE, what a shell shows for `cat | head`; it also
    // proves the write did hit the closed pipe.
    assert_eq!(out.status.code(), Some(141), "careplane {args:?}");
}

#[test]
fn data_is_dropped_only_with_delete_data() {
    let p = Platform::new(TENANTS);
    p.ok(&["apply"]);
    put_row(&p, "alpha", "production");
    put_row(&p, "beta", "test");

    // --confirm allows deleting production, not dropping its data.
    refused(
        &p,
        &["destroy", "--tenant", "alpha", "--confirm", "alpha"],
        &["alpha-production"],
    );
    // A tenant with only dev/test environments needs no --confirm, but its
    // data is not dropped either.
    refused(&p, &["destroy", "--tenant", "beta"], &["beta-test"]);
    // The whole platform.
    refused(
        &p,
        &["destroy", "--confirm", "alpha"],
        &["alpha-production", "beta-test"],
    );
    assert_eq!(
        p.plan()["actions"],
        Value::Array(vec![]),
        "a refused destroy changed something"
    );
    // apply with a tenant removed from the specs.
    let without_beta: String = TENANTS
        .split("---")
        .filter(|d| !d.contains("name: beta"))
        .collect::<Vec<_>>()
        .join("---");
    p.write_tenants(&without_beta);
    refused(&p, &["apply"], &["beta-test"]);
    p.write_tenants(TENANTS);
    assert_eq!(p.plan()["actions"], Value::Array(vec![]));

    // A closed stdout ends a command quietly (`careplane journal | head`).
    assert_quiet_on_closed_stdout(&p, &["journal"]);
    assert_quiet_on_closed_stdout(&p, &["status"]);

    // A tenant whose databases hold nothing goes without --delete-data.
    p.ok(&["destroy", "--tenant", "gamma"]);
    assert!(!databases(&p).contains(&"gamma-uat".to_string()));
    // With --delete-data, data goes.
    p.ok(&["destroy", "--tenant", "beta", "--delete-data"]);
    assert_eq!(
        databases(&p),
        vec!["alpha-dev".to_string(), "alpha-production".to_string()]
    );
    assert_eq!(rows(&p, "alpha", "production"), 1);
    p.ok(&["destroy", "--confirm", "alpha", "--delete-data"]);
    assert_eq!(p.json(&["status"])["servers"], Value::Array(vec![]));
    assert_eq!(processes_in(&p.data_dir()), Vec::<u32>::new());
}

/// Commands that print without any server: a closed stdout, and an error
/// whose cause is part of its message.
#[test]
fn closed_stdout_and_error_causes() {
    let p = Platform::new(TENANTS);
    assert_quiet_on_closed_stdout(&p, &["plan"]);
    assert_quiet_on_closed_stdout(&p, &["validate"]);

    // A data directory that cannot exist: the OS error is said once.
    let file = p.dir.path().join("specs/platform.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let blocker = p.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    std::fs::write(
        &file,
        text.replace(
            &p.data_dir().display().to_string(),
            &blocker.join("data").display().to_string(),
        ),
    )
    .unwrap();
    let out = p.run(&["journal"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
}

const TENANT_ODOO: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: alpha
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
    - name: test
      kind: test
"#;

fn env<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tenant"] == "alpha" && e["environment"] == name)
        .unwrap_or_else(|| panic!("alpha/{name} missing from {st}"))
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

#[test]
fn odoo_status_and_credentials_tell_the_truth() {
    let p = Platform::with_odoo(TENANT_ODOO);
    p.ok(&["apply"]);
    let st = p.json(&["status"]);
    for e in ["dev", "test"] {
        assert_eq!(env(&st, e)["odooHealth"]["ok"], true, "{st}");
        assert_eq!(env(&st, e)["odooProcesses"]["supervisorRunning"], true);
    }

    // credentials in text: the Odoo URL, login and password of the JSON.
    let json = p.json(&["credentials", "alpha", "dev"]);
    let text = p.ok(&["credentials", "alpha", "dev"]);
    let odoo = &json["odoo"];
    for want in [&odoo["url"], &odoo["password"], &odoo["masterPassword"]] {
        let want = want.as_str().unwrap();
        assert!(
            !want.is_empty() && text.contains(want),
            "{want} not in\n{text}"
        );
    }
    assert_eq!(odoo["login"], "admin");
    assert!(text.contains("login admin"), "{text}");

    // kill -9 alpha/dev's supervisor and its processes.
    let root = p.data_dir().join("odoo/envs/alpha/dev");
    let supervisor: u32 = std::fs::read_to_string(root.join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut pids = vec![supervisor];
    for proc in env(&st, "dev")["odooProcesses"]["processes"]
        .as_array()
        .unwrap()
    {
        pids.push(proc["pid"].as_u64().expect("running process pid") as u32);
    }
    unsafe {
        libc::kill(supervisor as i32, libc::SIGKILL);
        for pid in &pids[1..] {
            // Each process leads its own group (its workers).
            libc::kill(-(*pid as i32), libc::SIGKILL);
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pids.iter().all(|p| gone(*p)) {
        assert!(Instant::now() < deadline, "{pids:?} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Path::new(&root.join("status.json")).exists());

    let out = p.run(&["status", "--output", "json"]);
    assert_eq!(out.status.code(), Some(3), "status must exit 3");
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dev = env(&st, "dev");
    assert_eq!(dev["odooHealth"]["ok"], false, "{dev}");
    let procs = &dev["odooProcesses"];
    assert_eq!(procs["supervisorRunning"], false, "{procs}");
    assert_ne!(procs["state"], "running", "{procs}");
    for proc in procs["processes"].as_array().unwrap() {
        assert_ne!(proc["state"], "running", "{proc}");
        assert_eq!(proc["pid"], Value::Null, "{proc}");
        assert_ne!(proc["healthy"], true, "{proc}");
    }
    let test = env(&st, "test");
    assert_eq!(test["odooHealth"]["ok"], true, "{test}");
    assert_eq!(test["odooProcesses"]["supervisorRunning"], true);

    let out = p.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("alpha/dev odoo:"), "{text}");

    // start brings it back; status is clean again.
    p.ok(&["start"]);
    let st = p.json(&["status"]);
    assert_eq!(env(&st, "dev")["odooHealth"]["ok"], true, "{st}");
    assert_eq!(env(&st, "dev")["odooProcesses"]["supervisorRunning"], true);
}

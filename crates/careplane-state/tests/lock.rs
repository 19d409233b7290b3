//! Apply-lock tests, including a lock holder killed with SIGKILL.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use careplane_state::{lock, StateError, Store};
use serde_json::json;

/// Set in the child process: the data directory to lock.
const CHILD_ENV: &str = "CAREPLANE_STATE_TEST_LOCK_HOLDER_DIR";
/// Name of the helper test the child runs.
const CHILD_TEST: &str = "lock_holder_child_process";

#[test]
fn second_lock_fails_naming_the_holder_and_drop_releases_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let held = lock(&dir, "apply").unwrap();
    assert_eq!(held.path(), dir.join("apply.lock"));

    // A second lock in the same process opens a new file description, which
    // conflicts with the first.
    let err = lock(&dir, "destroy").unwrap_err();
    match &err {
        StateError::Locked {
            pid,
            command,
            since,
            path,
        } => {
            assert_eq!(*pid, std::process::id());
            assert_eq!(command, "apply");
            assert!(since.ends_with('Z') && since.len() == 20, "{since}");
            assert_eq!(path, &dir.join("apply.lock"));
            assert_eq!(
                err.to_string(),
                format!(
                    "another careplane apply (pid {pid}, started {since}) holds the lock on {}; wait for it to finish",
                    dir.join("apply.lock").display()
                )
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }

    drop(held);
    assert_eq!(
        fs::read(dir.join("apply.lock")).unwrap(),
        b"",
        "holder record cleared"
    );
    let again = lock(&dir, "destroy").unwrap();
    let err = lock(&dir, "apply").unwrap_err();
    assert!(
        matches!(&err, StateError::Locked { command, .. } if command == "destroy"),
        "{err:?}"
    );
    drop(again);
}

/// Kills the child on drop so that a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("lock-holder child exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "lock-holder child did not get ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lock_of_a_killed_process_is_released_and_its_step_is_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let identity = dir.join("identity.age");
    // Create the store (and identity) up front.
    drop(Store::open_with_identity(&dir, &identity).unwrap());

    // Run this test binary again, executing only the helper below.
    let child = Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    wait_for(&dir.join("child-ready"), &mut child.0);

    let err = lock(&dir, "apply").unwrap_err();
    assert!(
        matches!(&err, StateError::Locked { pid, .. } if *pid == child.0.id()),
        "expected Locked by pid {}, got {err:?}",
        child.0.id()
    );

    child.0.kill().unwrap(); // SIGKILL: no destructors, no cleanup
    child.0.wait().unwrap();

    let _held = lock(&dir, "apply").expect("the kernel releases the dead holder's lock");
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    let interrupted = store.interrupted_steps().unwrap();
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    assert_eq!(interrupted[0].action, "create pg-database/killed");
    let op = store
        .operations(10)
        .unwrap()
        .into_iter()
        .find(|o| o.id == interrupted[0].op)
        .unwrap();
    assert_eq!(op.pid, child.0.id());
    assert_eq!(op.outcome, None);
}

/// Not a test on its own: when run by the test above (with `CHILD_ENV` set)
/// it takes the lock, starts an operation and a step, signals readiness and
/// sleeps until it is killed. In a normal test run it does nothing.
#[test]
fn lock_holder_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let _lock = lock(dir, "apply").unwrap();
    let store = Store::open_with_identity(dir, &dir.join("identity.age")).unwrap();
    let op = store.begin_operation("apply").unwrap();
    store
        .step_started(op, "create pg-database/killed", &json!({"name": "killed"}))
        .unwrap();
    fs::write(dir.join("child-ready"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(300));
    panic!("lock-holder child was not killed");
}

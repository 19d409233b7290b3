//! The OS plumbing against the real kernel.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use careplane_sys::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// As root: the child runs as exactly the uid and gid, with no other group
/// (root's supplementary groups must not survive). Not root: refused.
#[test]
fn drop_privileges_leaves_only_the_given_ids() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo $(id -u) $(id -g) $(id -G)"]);
    // SAFETY: drop_privileges is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| drop_privileges(65534, 65533));
    }
    let out = cmd.output();
    if is_root() {
        let out = out.unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "65534 65533 65533"
        );
    } else {
        let err = out.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    }
}

#[test]
fn pid_alive_sees_self_and_not_a_reaped_or_zombie_child() {
    assert!(pid_alive(std::process::id()));
    assert!(!pid_alive(0));
    assert!(!pid_alive(u32::MAX));
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    // Until reaped, the exited child is a zombie: dead.
    while proc_state(pid) != Some(b'Z') {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!pid_alive(pid));
    child.wait().unwrap();
    assert!(!pid_alive(pid));
}

#[test]
fn atomic_write_sets_mode_replaces_and_follows_no_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conf");
    atomic_write(&path, b"one", 0o640, None).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"one");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    atomic_write(&path, b"two", 0o600, None).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    // A symlink at the target is replaced, its target untouched.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    atomic_write(&link, b"new", 0o600, None).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(!std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    if is_root() {
        atomic_write(&path, b"x", 0o600, Some((65534, 65534))).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }
}

#[test]
fn civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(20_788), (2026, 12, 1));
    assert_eq!(utc_datetime(1_764_620_000), "2025-12-01T20:13:20");
}

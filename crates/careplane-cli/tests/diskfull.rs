//! Disk full: every step of creating an Odoo environment that runs out of
//! space fails with an error that says what and where, records nothing as
//! done, and the next apply (once space is freed) converges.
//!
//! The platform's data directory is a small tmpfs, and so are two places
//! inside it (the Redis servers' directory and one tenant's environment
//! directory): the state store lives in the data directory, so a step that
//! writes a few kilobytes could never be made to fail alone there; on its own
//! filesystem it can. A ballast file fills a filesystem to the byte before an
//! apply. Steps are reached with `CAREPLANE_CRASH_AT` (see crash.rs): the
//! apply killed just before the step, the next one resumed with the disk full.
//!
//! Mounting needs root (as in CI); otherwise the test prints why it skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// `omega/dev` stays throughout; `sigma/test` is created (and removed) once
/// per scenario, its directory on a filesystem of its own.
const TENANTS_BASE: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: omega
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
"#;

fn tenants_full() -> String {
    format!(
        "{TENANTS_BASE}---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: sigma
spec:
  tenancy: shared
  environments:
    - name: test
      kind: test
"
    )
}

/// What an error says when the disk was full: the OS's ENOSPC, SQLite's
/// SQLITE_FULL, or PostgreSQL's hint after a short write.
const DISK_FULL: [&str; 3] = [
    "No space left on device",
    "disk is full",
    "Check free disk space",
];

const BALLAST: &str = ".ballast";

/// tmpfs filesystems mounted for the test; unmounted (innermost first) and
/// the test directory removed when dropped, whatever happened.
struct Mounts {
    points: Vec<PathBuf>,
    root: PathBuf,
}

impl Mounts {
    fn mount(&mut self, dir: &Path, size: &str, mode: u32) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode={mode:o}"))
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.points.push(dir.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for dir in self.points.iter().rev() {
            let ok = Command::new("umount")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Something still holds it: detach it now, freed when released.
                let _ = Command::new("umount").arg("-l").arg(dir).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The platform and its filesystems. Dropped in this order: ballast files
/// (so `careplane stop` can record), the platform (servers stopped), the mounts.
struct Fixture {
    p: Platform,
    mounts: Mounts,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for dir in &self.mounts.points {
            let _ = std::fs::remove_file(dir.join(BALLAST));
        }
    }
}

fn statvfs(dir: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is a
    // valid NUL-terminated string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    st
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
fn available(dir: &Path) -> u64 {
    let st = statvfs(dir);
    st.f_bavail * st.f_frsize
}

/// Bytes in use on the filesystem of `dir`.
fn used(dir: &Path) -> u64 {
    let st = statvfs(dir);
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// Fills the filesystem mounted at `dir` with a ballast file until exactly
/// `slack` bytes are left.
fn fill(dir: &Path, slack: u64) {
    use std::os::fd::AsRawFd;
    unfill(dir);
    // A server still running on the filesystem (a checkpoint, a log line)
    // may take space between measuring and allocating: measure again and
    // retry rather than fail on a moving target.
    let mut attempts = 0;
    loop {
        let size = available(dir).saturating_sub(slack);
        let f = std::fs::File::create(dir.join(BALLAST)).unwrap();
        if size == 0 {
            break;
        }
        // SAFETY: fallocate on a file descriptor we own.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
        let err = std::io::Error::last_os_error();
        if rc == 0 {
            break;
        }
        attempts += 1;
        assert!(
            err.raw_os_error() == Some(libc::ENOSPC) && attempts < 20,
            "fallocate: {err}"
        );
    }
    eprintln!("{}: {} bytes free", dir.display(), available(dir));
}

fn unfill(dir: &Path) {
    match std::fs::remove_file(dir.join(BALLAST)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing the ballast: {e}"),
    }
}

/// Everything the specs ask for exists exactly once, and nothing else does
/// (crash.rs's check).
fn assert_converged(p: &Platform) {
    let plan = p.plan();
    assert_eq!(
        plan["actions"],
        Value::Array(vec![]),
        "plan not empty after convergence"
    );
    let status = p.json(&["status"]);
    let data = p.data_dir();
    let servers = status["servers"].as_array().unwrap();
    for s in servers {
        assert_eq!(s["state"], "ready", "{s}");
        assert_eq!(s["running"], true, "{s}");
    }
    let scopes = |prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = servers
            .iter()
            .filter_map(|s| s["id"].as_str()?.strip_prefix(prefix).map(str::to_string))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        dir_names(&data.join("pg")),
        scopes("pg-cluster/"),
        "cluster directories vs state"
    );
    assert_eq!(
        dir_names(&data.join("redis")),
        scopes("redis-server/"),
        "redis directories vs state"
    );
    for scope in scopes("pg-cluster/") {
        let pgdata = data.join("pg").join(&scope).join("data");
        let postmasters = processes_mentioning(&format!("-D {}", pgdata.display()));
        assert_eq!(postmasters.len(), 1, "postmasters of {scope}");
    }
    for s in servers {
        let id = s["id"].as_str().unwrap();
        let mut live: Vec<String> = s["members"]
            .as_array()
            .unwrap_or_else(|| panic!("status has no live members for {id}: {s}"))
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        live.sort();
        let mut recorded: Vec<String> = status["environments"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                if e["cluster"] == id {
                    Some(e["database"].as_str()?.to_string())
                } else if e["redisServer"] == id {
                    Some(e["redisUser"].as_str()?.to_string())
                } else {
                    None
                }
            })
            .collect();
        if let Some(t) = s.get("templates").and_then(Value::as_array) {
            recorded.extend(t.iter().map(|x| x.as_str().unwrap().to_string()));
        }
        recorded.sort();
        assert_eq!(live, recorded, "live members of {id} vs state");
    }
    for e in status["environments"].as_array().unwrap() {
        assert_eq!(e["pgHealth"]["ok"], true, "{e}");
        assert_eq!(e["redisHealth"]["ok"], true, "{e}");
        assert_eq!(e["state"], "ready", "{e}");
    }
    for step in p.json(&["journal"]).as_array().unwrap() {
        assert!(
            step["finished_at"].is_string() || step["resumed_by"].is_number(),
            "unfinished step left behind: {step}"
        );
    }
}

/// [`assert_converged`], plus Odoo (crash.rs's check): every environment
/// healthy under one supervisor, directories exactly the recorded ones, and
/// every attachment a database refers to present in its filestore.
fn assert_odoo_converged(p: &Platform) {
    assert_converged(p);
    let status = p.json(&["status"]);
    let odoo = p.data_dir().join("odoo");
    let mut expected = Vec::new();
    for e in status["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
        let (t, n) = (
            e["tenant"].as_str().unwrap(),
            e["environment"].as_str().unwrap(),
        );
        let root = odoo.join("envs").join(t).join(n);
        let sup = processes_mentioning(&format!(
            "supervise {}",
            root.join("supervisor.json").display()
        ));
        assert_eq!(sup.len(), 1, "supervisors of {t}/{n}: {sup:?}");
        expected.push(format!("{t}/{n}"));

        let files: Vec<String> = tenant_client(p, t, n)
            .query(
                "SELECT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!files.is_empty(), "{t}/{n} has no attachment to check");
        let store = root.join("data/filestore").join(format!("{t}-{n}"));
        for f in files {
            assert!(
                store.join(&f).is_file(),
                "{t}/{n}: {f} missing from {}",
                store.display()
            );
        }
    }
    let mut on_disk = Vec::new();
    for t in dir_names(&odoo.join("envs")) {
        for n in dir_names(&odoo.join("envs").join(&t)) {
            on_disk.push(format!("{t}/{n}"));
        }
    }
    expected.sort();
    assert_eq!(on_disk, expected, "environment directories vs state");
}

/// One scenario: `sigma/test` is added to the specs; an apply is killed at
/// `position` (so the steps before it are done); the filesystem of `full` is
/// filled to `slack` bytes; the next apply must fail, its error naming the
/// disk-full condition and everything in `expect`; nothing of the failed step
/// may be recorded as done; once the ballast is gone one apply converges.
/// Then `sigma/test` is removed again.
fn scenario(
    f: &Fixture,
    name: &str,
    position: Option<&str>,
    full: &Path,
    slack: impl FnOnce() -> u64,
    expect: &[&str],
) {
    let p = &f.p;
    eprintln!("--- disk full: {name}");
    p.write_tenants(&tenants_full());
    if let Some(at) = position {
        crash(p, &["apply"], at);
    }
    let pending = action_ids(&p.plan());
    fill(full, slack());
    let out = p.run(&["apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    unfill(full);
    eprintln!("{stderr}");
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "{name}: apply with the disk full must fail with an exit code, got {}:\n{stderr}",
        out.status
    );
    assert!(
        DISK_FULL.iter().any(|m| stderr.contains(m)),
        "{name}: the error does not say the disk is full:\n{stderr}"
    );
    for e in expect {
        assert!(
            stderr.contains(e),
            "{name}: the error does not name {e:?}:\n{stderr}"
        );
    }
    // Nothing half-recorded: whatever was pending is still pending, and the
    // failed step is in the journal, closed with its error.
    let still = action_ids(&p.plan());
    for id in &still {
        assert!(pending.contains(id), "{name}: {id} appeared in the plan");
    }
    if let Some(step) = expect.iter().find_map(|e| e.strip_suffix(" failed")) {
        let id = step.split_once(' ').map_or(step, |(_, id)| id);
        assert!(
            still.iter().any(|s| s == id),
            "{name}: {id} no longer planned after failing: {still:?}"
        );
        let journal = p.json(&["journal"]);
        let last = journal
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["action"] == step)
            .unwrap_or_else(|| panic!("{name}: {step} not in the journal"));
        assert!(
            last["finished_at"].is_string()
                && DISK_FULL
                    .iter()
                    .any(|m| last["error"].as_str().unwrap_or_default().contains(m)),
            "{name}: the journal does not close {step} with the disk-full error: {last}"
        );
    }
    p.ok(&["apply"]);
    assert_odoo_converged(p);

    p.write_tenants(TENANTS_BASE);
    p.ok(&["apply", "--delete-data"]);
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
}

#[test]
fn disk_full_at_every_step_converges() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting the small tmpfs filesystems this test fills needs root");
        return;
    }
    let p = Platform::with_odoo(TENANTS_BASE);
    let data = p.data_dir();
    let mut f = Fixture {
        mounts: Mounts {
            points: Vec::new(),
            root: p.dir.path().to_path_buf(),
        },
        p,
    };
    let redis = data.join("redis");
    for (dir, size, mode) in [(&data, "256m", 0o711), (&redis, "8m", 0o755)] {
        if let Err(e) = f.mounts.mount(dir, size, mode) {
            eprintln!("skipped: {e}");
            return;
        }
    }
    f.p.ok(&["apply"]);
    assert_odoo_converged(&f.p);
    // sigma's environments live on their own filesystem.
    let sigma = data.join("odoo/envs/sigma");
    f.mounts.mount(&sigma, "8m", 0o755).unwrap();

    // 1. pg-database: CREATE DATABASE needs megabytes; the state store a few
    //    pages.
    scenario(
        &f,
        "creating the tenant database",
        None,
        &data,
        || 512 << 10,
        &["create pg-database/sigma/test failed", "cluster shared"],
    );
    // 2. redis-user: the ACL file.
    scenario(
        &f,
        "writing the Redis ACL file",
        Some("redis-user/sigma/test@started"),
        &redis,
        || 0,
        &[
            "create redis-user/sigma/test failed",
            &redis.join("shared").display().to_string(),
        ],
    );
    // 3. odoo-env: the filestore copy.
    let env_root = sigma.join("test").display().to_string();
    scenario(
        &f,
        "copying the filestore",
        Some("odoo-env/sigma/test@prepared"),
        &sigma,
        || 0,
        &["create odoo-env/sigma/test failed", &env_root],
    );
    // 4. odoo-env: the database copy (the empty database made by
    //    pg-database already dropped).
    scenario(
        &f,
        "copying the template database",
        Some("odoo-env/sigma/test@clone-dropped"),
        &data,
        || 512 << 10,
        &[
            "create odoo-env/sigma/test failed",
            "creating sigma-test from template",
        ],
    );
    // 5. odoo-env: the configuration, after the clone. The resumed apply
    //    copies the filestore again (the clone was not finished), so exactly
    //    that much is left free.
    scenario(
        &f,
        "writing odoo.conf",
        Some("odoo-env/sigma/test@clone-reassigned"),
        &sigma,
        || used(&sigma),
        &[
            "create odoo-env/sigma/test failed",
            &format!("{env_root}/odoo-"),
        ],
    );
    // 6. PostgreSQL's WAL cannot grow: the server PANICs and its crash
    //    recovery cannot finish, so the cluster is down when space is freed.
    wal_full_crashes_the_cluster(&f);
    // 7. Everything full: the state store cannot even open its journal.
    state_store_full(&f);
}

/// The data directory's filesystem full to the last byte: the state store
/// cannot open its write-ahead log, so the apply fails before its first step
/// and records nothing; with space back, the next apply does everything.
fn state_store_full(f: &Fixture) {
    let p = &f.p;
    let data = p.data_dir();
    eprintln!("--- disk full: the state store");
    p.write_tenants(&tenants_full());
    let before = p.plan();
    let journal = p.json(&["journal"]);
    fill(&data, 0);
    let out = p.run(&["apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    unfill(&data);
    eprintln!("{stderr}");
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "apply with the disk full must fail with an exit code, got {}:\n{stderr}",
        out.status
    );
    // SQLite reports ENOSPC on its shared-memory file as SQLITE_IOERR_SHMSIZE
    // ("disk I/O error") and does not say why; careplane-state does not add
    // the OS error yet, so that message is accepted here.
    assert!(
        stderr.contains(&data.join("state.db").display().to_string())
            && (DISK_FULL.iter().any(|m| stderr.contains(m)) || stderr.contains("disk I/O error")),
        "the error does not name the state store and the full disk:\n{stderr}"
    );
    assert_eq!(p.plan(), before, "a failed apply changed the plan");
    assert_eq!(
        p.json(&["journal"]),
        journal,
        "a failed apply was journaled"
    );
    p.ok(&["apply"]);
    assert_odoo_converged(p);
    p.write_tenants(TENANTS_BASE);
    p.ok(&["apply", "--delete-data"]);
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
}

/// A tenant fills the disk with WAL (any role may emit WAL messages) while
/// an environment is half-created: PostgreSQL PANICs when it cannot create
/// the next WAL segment, and crash recovery stops for the same reason. The
/// apply after that fails naming the cluster and the full disk; once space
/// is freed, one apply brings the cluster back and finishes the environment.
fn wal_full_crashes_the_cluster(f: &Fixture) {
    let p = &f.p;
    let data = p.data_dir();
    let pgdata = data.join("pg/shared/data");
    let postmaster = format!("-D {}", pgdata.display());
    eprintln!("--- disk full: PostgreSQL's WAL");
    p.write_tenants(&tenants_full());
    crash(p, &["apply"], "odoo-env/sigma/test@clone-dropped");
    let mut tenant = tenant_client(p, "omega", "dev");
    fill(&data, 512 << 10);
    // 1 MB at a time, so the record that cannot be written starts near the
    // end of a segment: crash recovery then needs the next segment as well.
    let mut crashed = false;
    for _ in 0..400 {
        let r = tenant.batch_execute(
            "SELECT pg_catalog.pg_logical_emit_message(false, 'careplane-test', \
             pg_catalog.repeat('x', 1000000))",
        );
        match r {
            Ok(()) => continue,
            Err(e) if e.code().is_some_and(|c| c.code() == "42501") => {
                // Not allowed here: end the server the way the PANIC would.
                eprintln!("pg_logical_emit_message refused ({e}); killing the postmaster");
                let pid = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap();
                let pid: i32 = pid.lines().next().unwrap().trim().parse().unwrap();
                // SAFETY: kill(2) on the postmaster this test's platform runs.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                crashed = true;
                break;
            }
            Err(e) => {
                eprintln!("the tenant's session ended: {e}");
                crashed = true;
                break;
            }
        }
    }
    assert!(
        crashed,
        "400 MB of WAL on a full disk did not stop PostgreSQL"
    );
    drop(tenant);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !processes_mentioning(&postmaster).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        processes_mentioning(&postmaster).is_empty(),
        "PostgreSQL recovered on a full disk; nothing to test"
    );

    let out = p.run(&["apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    unfill(&data);
    eprintln!("{stderr}");
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "apply with the disk full must fail with an exit code, got {}:\n{stderr}",
        out.status
    );
    assert!(
        DISK_FULL.iter().any(|m| stderr.contains(m))
            && (stderr.contains("cluster shared") || stderr.contains("pg-cluster/shared")),
        "the error does not say that cluster shared is down for a full disk:\n{stderr}"
    );
    p.ok(&["apply"]);
    assert_odoo_converged(p);
    p.write_tenants(TENANTS_BASE);
    p.ok(&["apply", "--delete-data"]);
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
}

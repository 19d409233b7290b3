//! Fault injection: an apply killed with SIGKILL at every point of every step
//! is finished by the next apply, with nothing lost, duplicated or orphaned.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::*;
use serde_json::Value;

const POINTS: [&str; 4] = ["started", "prepared", "executed", "finished"];
/// Points inside an environment's clone: after its filestore is in place,
/// after the old database is dropped, after `CREATE DATABASE ... TEMPLATE`,
/// after `REASSIGN OWNED`.
const CLONE_POINTS: [&str; 4] = [
    "filestore",
    "clone-dropped",
    "clone-created",
    "clone-reassigned",
];

/// Kills `careplane <args>` at every point of every step in `ids`; the state
/// stays readable and plannable after each crash.
fn crash_everywhere(p: &Platform, ids: &[String], args: &[&str]) {
    for id in ids {
        for point in POINTS {
            crash(p, args, &format!("{id}@{point}"));
            p.plan();
        }
    }
}

/// Starts `careplane apply` and SIGKILLs it from outside as soon as its
/// progress output has a line `at` accepts; insists it died by the kill.
fn kill_apply_at(p: &Platform, at: impl Fn(&str) -> bool) {
    let mut child = p
        .cmd(&["apply"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if at(&line.unwrap()) {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    assert_eq!(
        child.wait().unwrap().signal(),
        Some(libc::SIGKILL),
        "apply finished before the kill"
    );
}

/// Everything the specs ask for exists exactly once, and nothing else does.
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
    // Directories on disk are exactly the recorded servers: no orphans.
    let scopes = |prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = servers
            .iter()
            .filter_map(|s| s["id"].as_str()?.strip_prefix(prefix).map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let dirs = |sub: &str| dir_names(&data.join(sub));
    assert_eq!(
        dirs("pg"),
        scopes("pg-cluster/"),
        "cluster directories vs state"
    );
    assert_eq!(
        dirs("redis"),
        scopes("redis-server/"),
        "redis directories vs state"
    );

    // One postmaster per cluster, one redis-server per server.
    for scope in scopes("pg-cluster/") {
        let pgdata = data.join("pg").join(&scope).join("data");
        let postmasters = processes_mentioning(&format!("-D {}", pgdata.display()));
        assert_eq!(
            postmasters.len(),
            1,
            "postmasters of {scope}: {postmasters:?}"
        );
    }
    for scope in scopes("redis-server/") {
        let n = processes_in(&data.join("redis").join(&scope)).len();
        assert_eq!(n, 1, "redis processes of {scope}");
    }
    // Live databases and ACL users are exactly the recorded ones.
    for s in servers {
        let id = s["id"].as_str().unwrap();
        let mut live: Vec<String> = match s.get("members").and_then(Value::as_array) {
            Some(m) => m.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
            None => panic!("status has no live members for {id}: {s}"),
        };
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
    // The journal has no step left unfinished.
    let journal = p.json(&["journal"]);
    for step in journal.as_array().unwrap() {
        assert!(
            step["finished_at"].is_string() || step["resumed_by"].is_number(),
            "unfinished step left behind: {step}"
        );
    }
}

#[test]
fn apply_killed_at_every_step_converges() {
    let p = Platform::new(TENANTS);
    let ids = action_ids(&p.plan());
    assert!(ids.len() >= 10, "{ids:?}");
    crash_everywhere(&p, &ids, &["apply"]);
    p.ok(&["apply"]);
    assert_converged(&p);

    // Removing tenants: kill every delete step too.
    let only_alpha: String = TENANTS.split("---").next().unwrap().to_string();
    p.write_tenants(&only_alpha);
    let ids = action_ids(&p.plan());
    assert!(ids.iter().any(|i| i == "pg-cluster/gamma"), "{ids:?}");
    crash_everywhere(&p, &ids, &["apply"]);
    p.ok(&["apply"]);
    assert_converged(&p);
}

#[test]
fn apply_killed_from_outside_converges() {
    let p = Platform::new(TENANTS);
    // Kill a real apply with SIGKILL from another process while it works: once
    // right after it reports its 4th step, and again in the resumed run.
    for marker in ["[4/", "[2/"] {
        kill_apply_at(&p, |line| line.starts_with(marker));
    }
    let out = p.run(&["apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_converged(&p);
}

/// A careplane killed while initdb runs leaves no initdb behind, and the
/// next apply converges at once (an initdb left writing into the data
/// directory used to fight the next apply's wipe: "Is a directory (os error
/// 21)"). initdb gets PR_SET_PDEATHSIG, and the wipe kills leftovers first;
/// here an orphaned initdb also dies of SIGPIPE on its next write to the
/// closed output pipe, so this test alone does not single out the former.
#[test]
fn initdb_dies_with_a_killed_apply() {
    let p = Platform::new(TENANTS);
    let root = p.data_dir().join("pg");
    let mut child = p
        .cmd(&["apply"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut saw_initdb = false;
    for line in stderr.lines() {
        if !line.unwrap().contains("create pg-cluster/") {
            continue;
        }
        // Kill as soon as an initdb of this platform runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if !processes_mentioning(&format!("initdb -D {}", root.display())).is_empty() {
                saw_initdb = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        break;
    }
    child.wait().unwrap();
    assert!(saw_initdb, "no initdb seen running");
    // The kernel kills it at once; initdb itself takes seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    let mut left = processes_mentioning(&format!("initdb -D {}", root.display()));
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = processes_mentioning(&format!("initdb -D {}", root.display()));
    }
    assert_eq!(left, Vec::<u32>::new(), "initdb outlived careplane");
    p.ok(&["apply"]);
    assert_converged(&p);
}

const TENANTS_ODOO: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: omega
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
    - name: test
      kind: test
"#;

/// [`assert_converged`], plus Odoo: every environment healthy under exactly
/// one supervisor, environment and template directories exactly the recorded
/// ones, and no Odoo or supervisor process that belongs to nothing recorded.
fn assert_odoo_converged(p: &Platform) {
    assert_converged(p);
    let status = p.json(&["status"]);
    let odoo = p.data_dir().join("odoo");
    let mut roots = Vec::new();
    let mut expected_envs = Vec::new();
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
        expected_envs.push(format!("{t}/{n}"));
        roots.push(root);
    }
    let mut on_disk = Vec::new();
    for t in dir_names(&odoo.join("envs")) {
        for n in dir_names(&odoo.join("envs").join(&t)) {
            on_disk.push(format!("{t}/{n}"));
        }
    }
    expected_envs.sort();
    assert_eq!(on_disk, expected_envs, "environment directories vs state");
    let mut templates: Vec<String> = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.get("templates").and_then(Value::as_array))
        .flatten()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    templates.sort();
    templates.dedup();
    let mut on_disk: Vec<String> = dir_names(&odoo.join("templates"))
        .iter()
        .flat_map(|scope| dir_names(&odoo.join("templates").join(scope)))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, templates, "template directories vs state");
    // A database and its files agree: every attachment a database refers to
    // is in its environment's filestore.
    for root in &roots {
        let (t, n) = (
            root.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap(),
            root.file_name().unwrap().to_str().unwrap(),
        );
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
    for pid in processes_mentioning(&format!("{}/", odoo.display())) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.is_empty() {
            continue; // exited meanwhile
        }
        assert!(
            roots
                .iter()
                .any(|r| cmdline.contains(&format!("{}/", r.display()))),
            "process {pid} belongs to no recorded environment: {cmdline}"
        );
    }
}

/// The Odoo steps (template initialization, clone + start, and their
/// deletion) killed at every point: the next apply converges with no orphan
/// process, database, template or directory.
#[test]
fn odoo_apply_killed_at_every_odoo_step_converges() {
    let p = Platform::with_odoo(TENANTS_ODOO);
    let ids: Vec<String> = action_ids(&p.plan())
        .into_iter()
        .filter(|i| i.starts_with("odoo-"))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    crash_everywhere(&p, &ids, &["apply"]);
    p.ok(&["apply"]);
    assert_odoo_converged(&p);

    // Every statement of a clone, and the filestore before it: remove the
    // test environment, then kill its re-creation at each point in turn.
    for point in CLONE_POINTS {
        p.write_tenants(&TENANTS_ODOO.replace("    - name: test\n      kind: test\n", ""));
        p.ok(&["apply", "--delete-data"]);
        p.write_tenants(TENANTS_ODOO);
        crash(&p, &["apply"], &format!("odoo-env/omega/test@{point}"));
        p.ok(&["apply"]);
        assert_odoo_converged(&p);
    }

    // Kill a real apply from outside while the dev environment is set up,
    // then change nothing and converge.
    p.write_tenants(&TENANTS_ODOO.replace("    - name: test\n      kind: test\n", ""));
    p.ok(&["apply", "--delete-data"]);
    p.write_tenants(TENANTS_ODOO);
    kill_apply_at(&p, |line| line.contains("create odoo-env/omega/test"));
    p.ok(&["apply"]);
    assert_odoo_converged(&p);

    // Deleting: every Odoo delete step killed at every point.
    p.write_tenants("");
    let ids: Vec<String> = action_ids(&p.plan())
        .into_iter()
        .filter(|i| i.starts_with("odoo-"))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    crash_everywhere(&p, &ids, &["apply", "--delete-data"]);
    p.ok(&["apply", "--delete-data"]);
    assert!(p.plan()["actions"].as_array().unwrap().is_empty());
    assert_eq!(
        dir_names(&p.data_dir().join("odoo/envs")),
        Vec::<String>::new()
    );
    assert_eq!(
        dir_names(&p.data_dir().join("odoo/templates")),
        Vec::<String>::new()
    );
    assert_eq!(
        processes_mentioning(&format!("{}/", p.data_dir().join("odoo").display())),
        Vec::<u32>::new(),
        "Odoo processes left after deleting every environment"
    );
}

//! Fault injection: an apply killed with SIGKILL at every point of every step
//! is finished by the next apply, with nothing lost, duplicated or orphaned.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::*;
use serde_json::Value;

const POINTS: [&str; 4] = ["started", "prepared", "executed", "finished"];

fn action_ids(plan: &Value) -> Vec<String> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `args` with a crash injected at `at`, and insists the process died by SIGKILL.
fn crash(p: &Platform, args: &[&str], at: &str) {
    let out = p
        .cmd(args)
        .env("CAREPLANE_CRASH_AT", at)
        .output()
        .expect("spawn");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "expected careplane {args:?} to be killed at {at}, got {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
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
    let dirs = |sub: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(data.join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
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
    for id in &ids {
        for point in POINTS {
            crash(&p, &["apply"], &format!("{id}@{point}"));
            // The state stays readable and plannable after every crash.
            p.plan();
        }
    }
    p.ok(&["apply"]);
    assert_converged(&p);

    // Removing tenants: kill every delete step too.
    let only_alpha: String = TENANTS.split("---").next().unwrap().to_string();
    p.write_tenants(&only_alpha);
    let ids = action_ids(&p.plan());
    assert!(ids.iter().any(|i| i == "pg-cluster/gamma"), "{ids:?}");
    for id in &ids {
        for point in POINTS {
            crash(&p, &["apply"], &format!("{id}@{point}"));
            p.plan();
        }
    }
    p.ok(&["apply"]);
    assert_converged(&p);
}

#[test]
fn apply_killed_from_outside_converges() {
    let p = Platform::new(TENANTS);
    // Kill a real apply with SIGKILL from another process while it works: once
    // right after it reports its 4th step, and again in the resumed run.
    for marker in ["[4/", "[2/"] {
        let mut child = p
            .cmd(&["apply"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        for line in stderr.lines() {
            if line.unwrap().starts_with(marker) {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "apply finished before the kill"
        );
    }
    let out = p.run(&["apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_converged(&p);
}

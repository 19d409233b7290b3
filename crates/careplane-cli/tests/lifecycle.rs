//! A platform's whole life through the real binary, against real PostgreSQL
//! and Redis: plan, apply, idempotence, spec changes, guards, stop/start,
//! secrets kept out of every output, destroy.

mod common;

use common::*;
use serde_json::Value;

fn ids(plan: &Value) -> Vec<(String, String)> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["op"].as_str().unwrap().to_string(),
                a["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn secrets_of(p: &Platform, tenant: &str, env: &str) -> Vec<String> {
    let c = p.json(&["credentials", tenant, env]);
    let mut v = vec![c["postgres"]["password"].as_str().unwrap().to_string()];
    if let Some(r) = c["redis"]["password"].as_str() {
        v.push(r.to_string());
    }
    for s in &v {
        assert!(s.len() >= 24, "generated secrets are long");
    }
    v
}

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

#[test]
fn platform_lifecycle() {
    let p = Platform::new(TENANTS);

    // plan shows everything and changes nothing on disk.
    let plan = p.plan();
    let actions = ids(&plan);
    assert_eq!(plan["summary"]["create"], actions.len());
    for want in [
        "ca/platform",
        "pg-cluster/shared",
        "pg-cluster/beta",
        "pg-cluster/gamma",
        "redis-server/shared",
        "redis-server/gamma",
        "pg-database/alpha/production",
        "pg-database/alpha/dev",
        "pg-database/beta/test",
        "pg-database/gamma/uat",
        "redis-user/alpha/production",
        "redis-user/beta/test",
        "redis-user/gamma/uat",
    ] {
        assert!(
            actions.contains(&("create".into(), want.into())),
            "{want} missing from {actions:?}"
        );
    }
    // beta is dedicated-db: its Redis user lives on the shared server.
    assert!(!actions.iter().any(|(_, id)| id == "redis-server/beta"));
    assert!(!p.data_dir().exists(), "plan must not create the data dir");

    p.ok(&["apply"]);
    assert_eq!(ids(&p.plan()), vec![], "a second apply must plan nothing");
    let out = p.ok(&["apply"]);
    assert!(out.contains("No changes"), "{out}");

    // status: every environment healthy with its own credentials; ports distinct.
    let st = p.json(&["status"]);
    let envs = st["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 4);
    for e in envs {
        assert_eq!(e["pgHealth"]["ok"], true, "{e}");
        assert_eq!(e["redisHealth"]["ok"], true, "{e}");
    }
    let mut ports: Vec<u64> = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["port"].as_u64().unwrap())
        .collect();
    let n = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), n, "every server has its own port");
    let text = p.ok(&["status"]);
    assert!(
        text.contains("alpha") && text.contains("pg-cluster/beta"),
        "{text}"
    );

    // Secrets appear nowhere but in `credentials`.
    let mut secrets = Vec::new();
    for (t, e) in [
        ("alpha", "production"),
        ("alpha", "dev"),
        ("beta", "test"),
        ("gamma", "uat"),
    ] {
        secrets.extend(secrets_of(&p, t, e));
    }
    let mut outputs = vec![
        p.ok(&["plan"]),
        serde_json::to_string(&p.plan()).unwrap(),
        p.ok(&["status"]),
        serde_json::to_string(&p.json(&["status"])).unwrap(),
        serde_json::to_string(&p.json(&["journal"])).unwrap(),
        p.ok(&["journal"]),
    ];
    let mut files = Vec::new();
    walk(&p.data_dir(), &mut files);
    assert!(
        files.len() > 50,
        "expected cluster files under the data dir"
    );
    for f in &files {
        if let Ok(bytes) = std::fs::read(f) {
            outputs.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    for s in &secrets {
        for (i, o) in outputs.iter().enumerate() {
            assert!(
                !o.contains(s.as_str()),
                "a secret leaked into output/file #{i}"
            );
        }
    }

    // Adding an environment plans exactly its database and Redis user.
    let with_staging = TENANTS.replace(
        "    - name: dev\n      kind: dev\n",
        "    - name: dev\n      kind: dev\n    - name: staging\n      kind: staging\n",
    );
    p.write_tenants(&with_staging);
    assert_eq!(
        ids(&p.plan()),
        vec![
            (
                "create".to_string(),
                "pg-database/alpha/staging".to_string()
            ),
            ("create".to_string(), "redis-user/alpha/staging".to_string()),
        ]
    );
    p.ok(&["apply"]);

    // Put data in alpha/dev, then remove the environment: refused without
    // --delete-data, and the refusal changes nothing.
    let c = p.json(&["credentials", "alpha", "dev"]);
    let ca = std::fs::read_to_string(p.data_dir().join("pki/ca.crt")).unwrap();
    let password = careplane_local::SecretString::from(
        c["postgres"]["password"].as_str().unwrap().to_string(),
    );
    let port = c["postgres"]["port"].as_u64().unwrap() as u16;
    let mut client = careplane_local::pg::connect_tenant(
        port,
        "alpha-dev",
        c["postgres"]["role"].as_str().unwrap(),
        &password,
        &ca,
    )
    .unwrap();
    client
        .batch_execute("CREATE TABLE patients_demo (id int); INSERT INTO patients_demo VALUES (1);")
        .unwrap();
    drop(client);
    let without_dev = with_staging.replace("    - name: dev\n      kind: dev\n", "");
    p.write_tenants(&without_dev);
    let before = p.plan();
    let out = p.run(&["apply"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pg-database/alpha/dev still holds data") && err.contains("--delete-data"),
        "{err}"
    );
    assert_eq!(p.plan(), before, "a refused apply must change nothing");
    let st = p.json(&["status"]);
    assert!(st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["database"] == "alpha-dev" && e["pgHealth"]["ok"] == true));
    p.ok(&["apply", "--delete-data"]);
    let st = p.json(&["status"]);
    assert!(!st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["database"] == "alpha-dev"));

    // Removing a whole dedicated-env tenant (no data, not production) stops and
    // removes its own servers.
    let without_gamma = without_dev
        .split("---")
        .take(2)
        .collect::<Vec<_>>()
        .join("---");
    p.write_tenants(&without_gamma);
    p.ok(&["apply"]);
    assert!(!p.data_dir().join("pg/gamma").exists());
    assert!(!p.data_dir().join("redis/gamma").exists());

    // Deleting a production environment needs --confirm <tenant>.
    let without_alpha = without_gamma.split("---").nth(1).unwrap().to_string();
    p.write_tenants(&without_alpha);
    let out = p.run(&["apply", "--delete-data"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--confirm alpha"), "{err}");
    p.write_tenants(&without_gamma);
    assert_eq!(ids(&p.plan()), vec![]);

    // stop: no server process left; start: everything healthy again, data kept.
    p.ok(&["stop"]);
    assert_eq!(
        processes_in(&p.data_dir()),
        Vec::<u32>::new(),
        "servers left after stop"
    );
    let st = p.json_allow_fail(&["status"]);
    assert!(st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["pgHealth"]["ok"] == false));
    p.ok(&["start"]);
    let st = p.json(&["status"]);
    assert!(st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["pgHealth"]["ok"] == true && e["redisHealth"]["ok"] == true));

    // Cluster settings: a reloadable one is applied without a restart (the
    // postmaster keeps its pid, tenants keep their connections); one that
    // needs a restart restarts the cluster.
    let pid_of = |id: &str| -> u64 {
        p.json(&["status"])["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()["pid"]
            .as_u64()
            .unwrap()
    };
    let show = |setting: &str| -> String {
        let c = p.json(&["credentials", "alpha", "production"]);
        let mut client = careplane_local::pg::connect_tenant(
            c["postgres"]["port"].as_u64().unwrap() as u16,
            "alpha-production",
            c["postgres"]["role"].as_str().unwrap(),
            &careplane_local::SecretString::from(
                c["postgres"]["password"].as_str().unwrap().to_string(),
            ),
            &ca,
        )
        .unwrap();
        client
            .query_one(&format!("SHOW {setting}"), &[])
            .unwrap()
            .get(0)
    };
    let platform_file = p.specs.join("platform.yaml");
    let original = std::fs::read_to_string(&platform_file).unwrap();
    let with_settings = |settings: &str| {
        original.replacen(
            "  defaults:",
            &format!("  postgres:\n    settings:\n{settings}  defaults:"),
            1,
        )
    };
    let before = pid_of("pg-cluster/shared");
    std::fs::write(&platform_file, with_settings("      work_mem: 8MB\n")).unwrap();
    let plan = p.plan();
    assert!(
        ids(&plan).contains(&("update".to_string(), "pg-cluster/shared".to_string())),
        "{plan}"
    );
    p.ok(&["apply"]);
    assert_eq!(show("work_mem"), "8MB");
    assert_eq!(
        pid_of("pg-cluster/shared"),
        before,
        "work_mem reloads, no restart"
    );
    std::fs::write(
        &platform_file,
        with_settings("      work_mem: 8MB\n      shared_buffers: 48MB\n"),
    )
    .unwrap();
    p.ok(&["apply"]);
    assert_eq!(show("shared_buffers"), "48MB");
    assert_ne!(
        pid_of("pg-cluster/shared"),
        before,
        "shared_buffers needs a restart"
    );

    // destroy: production needs --confirm; then nothing is left.
    let out = p.run(&["destroy"]);
    assert!(!out.status.success());
    p.ok(&["destroy", "--confirm", "alpha"]);
    assert_eq!(processes_in(&p.data_dir()), Vec::<u32>::new());
    assert!(!p.data_dir().join("pg/shared").exists());
    let st = p.json(&["status"]);
    assert_eq!(st["servers"], Value::Array(vec![]));
}

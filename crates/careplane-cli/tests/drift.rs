//! Plans from what is observed, not only from what was recorded (issue 15,
//! first drift slice; issue 14 item 11): a PostgreSQL server or an Odoo
//! supervisor that died shows in `plan` as a change, and `apply` repairs it.
//! A platform stopped on purpose (`careplane stop`) is not drift. Nor only
//! processes: a tenant role given attributes behind careplane's back and an
//! odoo.conf edited by hand are drift too.

mod common;

use common::*;
use serde_json::Value;

const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: delta
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
    - name: test
      kind: test
"#;

fn changed(plan: &Value) -> Vec<(String, String)> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["drift"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn kill(pid: u64, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid the test read from careplane's status.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

fn wait_gone(pid: u64) {
    for _ in 0..600 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{pid} did not go");
}

#[test]
fn dead_servers_and_supervisors_are_drift_that_apply_repairs() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);
    assert_eq!(changed(&p.plan()), vec![]);

    // An Odoo supervisor and its processes die (OOM killer, kill -9).
    let st = p.json(&["status"]);
    let env = st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "dev")
        .unwrap()
        .clone();
    let sup = env["odooProcesses"]["supervisor_pid"].as_u64().unwrap();
    let children: Vec<u64> = env["odooProcesses"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["pid"].as_u64())
        .collect();
    kill(sup, libc::SIGKILL);
    for c in &children {
        let _ = unsafe { libc::kill(*c as libc::pid_t, libc::SIGKILL) };
    }
    wait_gone(sup);
    let plan = p.plan();
    assert_eq!(
        changed(&plan),
        vec![(
            "odoo-env/delta/dev".to_string(),
            "its supervisor is not running (Odoo is not kept up)".to_string()
        )],
        "{plan}"
    );
    let text = p.ok(&["plan"]);
    assert!(
        text.contains("observed: its supervisor is not running"),
        "{text}"
    );
    p.ok(&["apply"]);
    assert_eq!(changed(&p.plan()), vec![]);
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }

    // The shared cluster's postmaster goes (fast shutdown).
    let pg = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "pg-cluster/shared")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    kill(pg, libc::SIGINT);
    wait_gone(pg);
    let plan = p.plan();
    let ids = changed(&plan);
    assert!(
        ids.contains(&(
            "pg-cluster/shared".to_string(),
            "PostgreSQL is not running".to_string()
        )),
        "{plan}"
    );
    p.ok(&["apply"]);
    assert_eq!(changed(&p.plan()), vec![]);
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["pgHealth"]["ok"], true, "{e}");
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }

    // Stopped on purpose: nothing to repair until `start`.
    p.ok(&["stop"]);
    assert_eq!(changed(&p.plan()), vec![]);
    p.ok(&["start"]);
    assert_eq!(changed(&p.plan()), vec![]);
}

/// A role turned superuser (or given a membership, a setting, another
/// connection limit) by someone with the superuser's password, and an
/// odoo.conf edited by hand: `plan` names each, `apply` puts each back, and
/// the next plan is empty.
#[test]
fn roles_and_configuration_changed_behind_careplanes_back_are_drift() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);
    let role = p.json(&["credentials", "delta", "dev"])["postgres"]["role"]
        .as_str()
        .unwrap()
        .to_string();
    let mut admin = admin_client(&p, "pg-cluster/shared");
    admin
        .batch_execute(&format!(
            "ALTER ROLE \"{role}\" SUPERUSER CREATEROLE CONNECTION LIMIT 500; \
             GRANT pg_read_server_files TO \"{role}\"; \
             ALTER ROLE \"{role}\" SET work_mem = '1GB'; \
             GRANT CONNECT ON DATABASE \"delta-dev\" TO PUBLIC"
        ))
        .unwrap();
    let conf = p.data_dir().join("odoo/envs/delta/test/odoo-web.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace("list_db = False", "list_db = True")).unwrap();

    let plan = changed(&p.plan());
    let why = |id: &str| {
        plan.iter()
            .find(|(i, _)| i == id)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{id} not in {plan:?}"))
    };
    let db = why("pg-database/delta/dev");
    for attr in [
        "SUPERUSER",
        "CREATEROLE",
        "CONNECTION LIMIT 500",
        "member of",
        "settings",
    ] {
        assert!(db.contains(attr), "{db}");
    }
    assert!(why("odoo-env/delta/test").contains("odoo.conf"), "{plan:?}");
    assert_eq!(plan.len(), 2, "{plan:?}");

    p.ok(&["apply"]);
    assert_eq!(changed(&p.plan()), vec![]);
    let row = admin
        .query_one(
            "SELECT rolsuper, rolcreaterole, rolconnlimit, \
             (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid), \
             (SELECT count(*) FROM pg_db_role_setting s WHERE s.setrole = r.oid) \
             FROM pg_roles r WHERE rolname = $1",
            &[&role],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1));
    assert_ne!(row.get::<_, i32>(2), 500);
    assert_eq!(row.get::<_, i64>(3), 0);
    assert_eq!(row.get::<_, i64>(4), 0);
    assert!(std::fs::read_to_string(&conf)
        .unwrap()
        .contains("list_db = False"));

    // A database dropped behind careplane's back: the database and its
    // Odoo environment are drift; apply makes both again, and Odoo answers.
    admin
        .batch_execute("DROP DATABASE \"delta-test\" WITH (FORCE)")
        .unwrap();
    let plan = changed(&p.plan());
    assert_eq!(
        plan,
        vec![
            (
                "pg-database/delta/test".to_string(),
                "database is missing".to_string()
            ),
            (
                "odoo-env/delta/test".to_string(),
                "its database is missing".to_string()
            ),
        ]
    );
    p.ok(&["apply"]);
    assert_eq!(changed(&p.plan()), vec![]);
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["pgHealth"]["ok"], true, "{e}");
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }
}

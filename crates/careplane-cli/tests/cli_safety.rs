//! What the CLI promises an operator, through the real binary: data is
//! dropped only with `--delete-data` (destroy and apply alike).

mod common;

use common::*;
use serde_json::Value;

/// A tenant client on `<tenant>-<env>`, with the tenant's own credentials.
fn tenant_client(p: &Platform, tenant: &str, env: &str) -> careplane_local::postgres::Client {
    let c = p.json(&["credentials", tenant, env]);
    let ca = std::fs::read_to_string(p.data_dir().join("pki/ca.crt")).unwrap();
    let password = careplane_local::SecretString::from(
        c["postgres"]["password"].as_str().unwrap().to_string(),
    );
    careplane_local::pg::connect_tenant(
        c["postgres"]["port"].as_u64().unwrap() as u16,
        c["postgres"]["database"].as_str().unwrap(),
        c["postgres"]["role"].as_str().unwrap(),
        &password,
        &ca,
    )
    .unwrap()
}

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

//! Platforms applied by earlier versions keep working.
//!
//! `fixtures/state-0c99148.json` holds the resource records (no secrets:
//! those live in the vault) that careplane 0c99148 — main before the driver
//! boundary and opaque role names — wrote when it applied
//! `fixtures/platform.yaml` on the Odoo stand-in. Every record must still
//! read as its kind, and the plan against the same specs must hold exactly
//! the changes this version means to make: each environment's role gets an
//! opaque name (its `pg-database` and `odoo-env` drop `props.role`), and
//! nothing else. When the state format changes again, add the previous
//! version's records next to this one and keep both tests.
//!
//! The whole path, servers included, was checked by hand with the 0c99148
//! binary: apply with it, then `plan` and `apply` with this version (see
//! the closing note of issue 15); CLI test `catalog.rs` replays the role
//! rename on real servers.

use std::collections::BTreeMap;

use careplane_engine::plan::plan;
use careplane_engine::Op;
use careplane_model::{Kind, Observed, Props};
use careplane_state::{ResourceRecord, ResourceStatus};
use serde_json::Value;

fn fixture() -> Vec<ResourceRecord> {
    let v: Value =
        serde_json::from_str(include_str!("fixtures/state-0c99148.json")).expect("fixture");
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ResourceRecord {
            id: r["id"].as_str().unwrap().into(),
            kind: r["kind"].as_str().unwrap().into(),
            status: match r["status"].as_str().unwrap() {
                "ready" => ResourceStatus::Ready,
                "pending" => ResourceStatus::Pending,
                _ => ResourceStatus::Deleting,
            },
            props: r["props"].clone(),
            observed: r["observed"].clone(),
            created_at: String::new(),
            updated_at: String::new(),
        })
        .collect()
}

fn desired() -> Vec<careplane_model::Resource> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("platform.yaml"),
        include_str!("fixtures/platform.yaml").replace("DATA_DIR", "/tmp/careplane-upgrade"),
    )
    .unwrap();
    careplane_model::desired(&careplane_spec::load(&[dir.path().to_path_buf()]).unwrap())
}

#[test]
fn every_record_of_0c99148_reads_as_its_kind() {
    let records = fixture();
    assert_eq!(records.len(), 18);
    for r in &records {
        let kind = Kind::parse(&r.kind).unwrap_or_else(|| panic!("{}: kind {}", r.id, r.kind));
        Props::decode(kind, &r.id, &r.props).unwrap_or_else(|e| panic!("{e}"));
        Observed::decode(kind, &r.id, &r.observed).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_0c99148_platform_plans_only_the_role_rename() {
    let p = plan(&desired(), &fixture(), &BTreeMap::new()).unwrap();
    let mut seen = Vec::new();
    for a in &p.actions {
        assert_eq!(a.op, Op::Update, "{}: {}", a.id, p.render());
        assert!(
            matches!(a.kind, Kind::PgDatabase | Kind::OdooEnv),
            "{}",
            a.id
        );
        let fields: Vec<&str> = a.changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["role"], "{}", a.id);
        assert!(a.changes[0].to.is_null(), "{}", a.id);
        if a.kind == Kind::PgDatabase {
            assert!(a.summary().contains("to an opaque name"), "{}", a.summary());
        }
        seen.push(a.id.as_str());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "odoo-env/alpha/dev",
            "odoo-env/alpha/test",
            "odoo-env/alpha/uat",
            "odoo-env/beta/dev",
            "pg-database/alpha/dev",
            "pg-database/alpha/test",
            "pg-database/alpha/uat",
            "pg-database/beta/dev",
        ]
    );
}

//! The example platform's resources: exactly the JSON earlier versions
//! planned and recorded (`example-desired.json` was written by the engine's
//! `desired` before it moved here, with roles already opaque), plus the
//! naming and sizing rules read off it.

use careplane_model::*;
use serde_json::Value;

#[test]
fn the_example_desires_what_earlier_versions_recorded() {
    let want: Value = serde_json::from_str(include_str!("example-desired.json")).expect("fixture");
    let got: Vec<Value> = example()
        .iter()
        .map(|r| serde_json::json!({"id": r.id, "kind": r.kind.as_str(), "props": r.props}))
        .collect();
    assert_eq!(Value::Array(got), want);
}

#[test]
fn every_resource_reads_back_as_its_kind() {
    for r in example() {
        let typed = r.typed().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(typed.kind(), r.kind);
        assert_eq!(typed.to_value(), r.props, "{}", r.id);
    }
}

/// What each resource needs exists among the desired ones, comes earlier
/// in their order, and an environment needs its database, Redis user and
/// template.
#[test]
fn needs_point_at_earlier_resources() {
    let all = example();
    for (i, r) in all.iter().enumerate() {
        for need in r.typed().unwrap().needs() {
            let j = all.iter().position(|x| x.id == need);
            assert!(matches!(j, Some(j) if j < i), "{} needs {need}", r.id);
        }
    }
    let env = all
        .iter()
        .find(|r| r.id == "odoo-env/stmarys/production")
        .unwrap();
    let mut needs = env.typed().unwrap().needs();
    needs.sort();
    assert_eq!(
        needs,
        [
            "odoo-template/shared/tpl-odoo18-5f1cc344",
            "pg-database/stmarys/production",
            "redis-user/stmarys/production",
        ]
    );
}

/// A record missing a field, or holding the wrong type, is an error that
/// names the resource and the field, not an empty string or a zero.
#[test]
fn a_broken_record_names_resource_and_field() {
    let all = example();
    let env = all
        .iter()
        .find(|r| r.id == "odoo-env/stmarys/production")
        .unwrap();
    let mut props = env.props.clone();
    props.as_object_mut().unwrap().remove("template");
    let e = Props::decode(Kind::OdooEnv, &env.id, &props).unwrap_err();
    assert!(e.to_string().contains("odoo-env/stmarys/production"), "{e}");
    assert!(e.to_string().contains("`template`"), "{e}");
    props["template"] = "x".into();
    props["workers"] = "two".into();
    let e = Props::decode(Kind::OdooEnv, &env.id, &props).unwrap_err();
    assert!(e.to_string().contains("invalid type"), "{e}");
    let e = Observed::decode(
        Kind::PgCluster,
        "pg-cluster/shared",
        &serde_json::json!({"root": "/x"}),
    )
    .unwrap_err();
    assert_eq!(e.part, "observed");
    assert!(e.to_string().contains("`port`"), "{e}");
}

/// Records written before a field existed read with the documented default.
#[test]
fn older_records_read_with_defaults() {
    let all = example();
    let env = all
        .iter()
        .find(|r| r.id == "odoo-env/stmarys/production")
        .unwrap();
    let mut props = env.props.clone();
    props.as_object_mut().unwrap().remove("configFormat");
    props["role"] = "stmarys-production".into();
    let Props::OdooEnv(p) = Props::decode(Kind::OdooEnv, &env.id, &props).unwrap() else {
        panic!("kind")
    };
    assert_eq!(p.config_format, 1);
    assert_eq!(p.role.as_deref(), Some("stmarys-production"));
}

fn example() -> Vec<Resource> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hospital-group");
    desired(&careplane_spec::load(&[dir]).expect("the example validates"))
}

fn props<'a>(all: &'a [Resource], id: &str) -> &'a Value {
    &all.iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("{id}"))
        .props
}

#[test]
fn names_are_those_existing_platforms_hold() {
    let all = example();
    let db = props(&all, "pg-database/stmarys/production");
    assert_eq!(db["database"], "stmarys-production");
    assert!(db.get("role").is_none(), "role names are allocated, opaque");
    assert_eq!(db["cluster"], "pg-cluster/shared");
    let user = props(&all, "redis-user/regional/dr");
    assert_eq!(user["user"], "regional-dr");
    assert_eq!(user["keyPrefix"], "regional:dr:");
    assert_eq!(user["server"], "redis-server/regional");
    assert_eq!(
        props(&all, "pg-database/citylab/uat")["cluster"],
        "pg-cluster/citylab"
    );
    // base + contacts (the platform defaults), stand-in, Odoo 18, no addons.
    let env = props(&all, "odoo-env/northclinic/dev");
    assert_eq!(env["template"], "odoo-template/shared/tpl-odoo18-d266fec6");
    assert!(all
        .iter()
        .any(|r| r.id == "odoo-template/shared/tpl-odoo18-d266fec6"));
}

#[test]
fn every_role_gets_a_connection_limit() {
    let all = example();
    let limit = |id: &str| props(&all, id)["connectionLimit"].as_u64();
    // Set on the environment, on the tenant.
    assert_eq!(limit("pg-database/stmarys/production"), Some(20));
    assert_eq!(limit("pg-database/stmarys/staging"), Some(10));
    // Unset: from workers and cron threads (2·2 + 3·2 + 6, 2·1 + 3·1 + 6).
    assert_eq!(limit("pg-database/northclinic/production"), Some(16));
    assert_eq!(limit("pg-database/northclinic/dev"), Some(11));
    // An environment's sizing overrides the tenant's field by field:
    // regional production sets workers only.
    assert_eq!(limit("pg-database/regional/production"), Some(10));
    let env = props(&all, "odoo-env/regional/production");
    assert_eq!(env["workers"], 2);
    assert_eq!(env["limits"]["memorySoft"], 512 * 1024 * 1024);
    assert!(all
        .iter()
        .filter(|r| r.kind == Kind::PgDatabase)
        .all(|r| r.props["connectionLimit"].is_u64()));
}

//! The shipped examples load, and they and the JSON Schema agree.

use std::path::{Path, PathBuf};

use careplane_spec::{documents_as_json, json_schema, load, Tenancy};
use serde_json::{json, Value};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Every YAML file under `examples/`, recursively.
fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&examples_dir(), &mut out);
    out
}

/// The directories of `examples/` that hold spec files: each is a spec set.
fn example_sets() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = example_files()
        .iter()
        .map(|f| f.parent().unwrap().to_path_buf())
        .collect();
    dirs.dedup();
    dirs
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&json_schema()).expect("schema compiles")
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn schema_is_valid_draft_2020_12() {
    let schema = json_schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("not a valid JSON Schema: {e}");
    }
}

#[test]
fn every_example_set_loads() {
    let sets = example_sets();
    assert!(!sets.is_empty());
    for dir in sets {
        if let Err(e) = load(std::slice::from_ref(&dir)) {
            panic!("{} does not load:\n{e}", dir.display());
        }
    }
}

#[test]
fn hospital_group_has_every_tenancy_tier() {
    let set = load(&[examples_dir().join("hospital-group")]).unwrap();
    assert_eq!(set.platform.metadata.name, "hospital-group");
    // The demo runs the stand-in by name (found on PATH).
    assert_eq!(set.platform.spec.odoo.as_ref().map(|o| o.version), Some(18));
    for tenancy in [Tenancy::Shared, Tenancy::DedicatedDb, Tenancy::DedicatedEnv] {
        assert!(
            set.tenants.iter().any(|t| t.spec.tenancy == tenancy),
            "no {} tenant",
            tenancy.as_str()
        );
    }
    for t in &set.tenants {
        assert!(
            set.tier_of(&t.spec).is_some(),
            "{} has no tier",
            t.metadata.name
        );
    }
    assert!(set
        .data_dir()
        .ends_with("examples/hospital-group/.careplane"));
}

#[test]
fn every_example_document_matches_the_schema() {
    let v = validator();
    let mut count = 0;
    for file in example_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs = documents_as_json(&file, &text).unwrap_or_else(|e| panic!("{e}"));
        for doc in docs {
            let errors = schema_errors(&v, &doc);
            assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
            count += 1;
        }
    }
    assert!(count >= 8, "only {count} documents");
}

/// Documents careplane rejects for shape reasons are rejected by the schema
/// too, so editors flag what `careplane validate` flags.
#[test]
fn schema_rejects_what_careplane_rejects() {
    let v = validator();
    let tenant = |spec: Value, name: &str| json!({"apiVersion": "careplane.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec});
    let good = tenant(
        json!({"environments": [{"name": "production", "kind": "production"}]}),
        "acme",
    );
    assert!(v.is_valid(&good), "{:?}", schema_errors(&v, &good));
    let near_miss = tenant(
        json!({"environments": [{"name": "production", "kind": "production"}]}),
        "tplx",
    );
    assert!(
        v.is_valid(&near_miss),
        "{:?}",
        schema_errors(&v, &near_miss)
    );
    let bad = [
        tenant(
            json!({"environments": [{"name": "production", "kind": "prod"}]}),
            "acme",
        ),
        tenant(
            json!({"environments": [{"name": "production", "kind": "production", "replicas": 2}]}),
            "acme",
        ),
        tenant(json!({"environments": []}), "acme"),
        tenant(
            json!({"environments": [{"name": "Prod", "kind": "production"}]}),
            "acme",
        ),
        tenant(
            json!({"environments": [{"name": "p", "kind": "dev", "sizing": {"workers": 0}}]}),
            "acme",
        ),
        tenant(
            json!({"environments": [{"name": "p", "kind": "dev"}], "modules": ["Sale"]}),
            "acme",
        ),
        tenant(
            json!({"environments": [{"name": "p", "kind": "dev"}]}),
            &"a".repeat(41),
        ),
        tenant(
            json!({"environments": [{"name": "p", "kind": "dev"}]}),
            "shared",
        ),
        tenant(
            json!({"environments": [{"name": "p", "kind": "dev"}]}),
            "tpl",
        ),
        tenant(
            json!({"environments": [{"name": "p", "kind": "dev"}]}),
            "tpl-odoo18",
        ),
        tenant(
            json!({"environments": [{"name": "admin", "kind": "dev"}]}),
            "careplane",
        ),
        tenant(
            json!({"environments": [{"name": "p", "kind": "dev"}]}),
            "template1",
        ),
        json!({"apiVersion": "careplane.dev/v1", "kind": "Tenant", "metadata": {"name": "a"},
               "spec": {"environments": [{"name": "p", "kind": "dev"}]}}),
        json!({"apiVersion": "careplane.dev/v1alpha1", "kind": "Tenants", "metadata": {"name": "a"}, "spec": {}}),
        json!({"apiVersion": "careplane.dev/v1alpha1", "kind": "ServiceTier", "metadata": {"name": "a"},
               "spec": {"availability": 100, "rto": "1h", "rpo": "1h", "supportHours": "x"}}),
        json!({"apiVersion": "careplane.dev/v1alpha1", "kind": "ServiceTier", "metadata": {"name": "a"},
               "spec": {"availability": 99, "rto": "1w", "rpo": "1h", "supportHours": "x"}}),
        json!({"apiVersion": "careplane.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "a"},
               "spec": {"schedule": "0 2 * *"}}),
        json!({"apiVersion": "careplane.dev/v1alpha1", "kind": "Platform", "metadata": {"name": "a"},
               "spec": {"dataDir": "x", "odoo": {"command": "odoo-bin", "version": 15}}}),
    ];
    for doc in bad {
        assert!(!v.is_valid(&doc), "schema accepts {doc}");
    }
}

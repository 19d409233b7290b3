//! The JSON Schema of spec documents, and walking it.
//!
//! The schema is generated from the same types serde deserializes, so editors
//! and careplane agree on what is valid. careplane also reads it itself: it is
//! where the known field names for "did you mean" come from, and where a
//! well-typed stand-in for a bad value comes from, so that checking can go on
//! past the first type error.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::model::{
    BackupPolicySpec, Kind, MaintenanceWindowSpec, Metadata, PlatformSpec, ServiceTierSpec,
    TenantSpec, API_VERSION, MAX_TENANT_NAME, RESERVED_TENANT_PATTERN,
};
use crate::yaml::Seg;

/// JSON Schema (draft 2020-12) of one careplane spec document: a `oneOf` the
/// four kinds, each pinning `apiVersion` and `kind` with `const` so editors
/// can pick the right branch and complete fields. This is what `careplane
/// schema` prints; point an editor's YAML language server at it.
pub fn json_schema() -> Value {
    schema().clone()
}

/// The schema, built once per process.
pub(crate) fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(build)
}

fn build() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let metadata = generator.subschema_for::<Metadata>().to_value();
    let specs = [
        (
            Kind::Platform,
            generator.subschema_for::<PlatformSpec>().to_value(),
            "The platform: where and how careplane runs everything. Exactly one per spec set.",
        ),
        (
            Kind::ServiceTier,
            generator.subschema_for::<ServiceTierSpec>().to_value(),
            "A service tier: availability, RTO/RPO and support promised to its tenants.",
        ),
        (
            Kind::BackupPolicy,
            generator.subschema_for::<BackupPolicySpec>().to_value(),
            "A backup schedule and retention, referenced by service tiers.",
        ),
        (
            Kind::Tenant,
            generator.subschema_for::<TenantSpec>().to_value(),
            "A tenant (organization) and its environments.",
        ),
        (
            Kind::MaintenanceWindow,
            generator
                .subschema_for::<MaintenanceWindowSpec>()
                .to_value(),
            "A tenant's maintenance window or change freeze, in its time zone.",
        ),
    ];
    let defs = generator.take_definitions(true);

    let branches: Vec<Value> = specs
        .into_iter()
        .map(|(kind, spec, description)| {
            let metadata = if kind == Kind::Tenant {
                json!({
                    "allOf": [
                        metadata.clone(),
                        {
                            "properties": {
                                "name": {
                                    "maxLength": MAX_TENANT_NAME,
                                    "not": { "pattern": RESERVED_TENANT_PATTERN }
                                }
                            }
                        }
                    ]
                })
            } else {
                metadata.clone()
            };
            json!({
                "title": kind.as_str(),
                "description": description,
                "type": "object",
                "properties": {
                    "apiVersion": { "const": API_VERSION },
                    "kind": { "const": kind.as_str() },
                    "metadata": metadata,
                    "spec": spec,
                },
                "required": ["apiVersion", "kind", "metadata", "spec"],
                "additionalProperties": false,
            })
        })
        .collect();

    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "careplane spec document",
        "description": format!("One YAML document of a careplane spec set ({API_VERSION})."),
        "oneOf": branches,
        "$defs": Value::Object(defs),
    })
}

/// Reads the generated schema the way careplane needs it.
pub(crate) struct Nav {
    root: &'static Value,
}

impl Nav {
    pub fn new() -> Nav {
        Nav { root: schema() }
    }

    fn branch(&self, kind: Kind) -> &'static Value {
        let index = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        &self.root["oneOf"][index]
    }

    /// Schema of `spec` for `kind`.
    pub fn spec(&self, kind: Kind) -> &'static Value {
        &self.branch(kind)["properties"]["spec"]
    }

    /// Schema of `metadata` for `kind`.
    pub fn metadata(&self, kind: Kind) -> &'static Value {
        &self.branch(kind)["properties"]["metadata"]
    }

    /// Follows `$ref`s into `$defs`.
    fn resolve(&self, mut s: &'static Value) -> &'static Value {
        for _ in 0..16 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix("#/$defs/") {
                    Some(name) => s = &self.root["$defs"][name],
                    None => return s,
                },
                None => return s,
            }
        }
        s
    }

    /// The schema and every alternative it combines (`anyOf`, `oneOf`,
    /// `allOf`), each resolved.
    fn alternatives(&self, s: &'static Value) -> Vec<&'static Value> {
        let mut out = Vec::new();
        let mut todo = vec![(s, 0)];
        while let Some((s, depth)) = todo.pop() {
            let s = self.resolve(s);
            out.push(s);
            if depth > 8 {
                continue;
            }
            for key in ["allOf", "anyOf", "oneOf"] {
                if let Some(items) = s.get(key).and_then(Value::as_array) {
                    todo.extend(items.iter().rev().map(|i| (i, depth + 1)));
                }
            }
        }
        out
    }

    /// Schema of the child at `seg`.
    pub fn child(&self, s: &'static Value, seg: &Seg) -> Option<&'static Value> {
        let alts = self.alternatives(s);
        match seg {
            Seg::Key(k) => alts
                .iter()
                .find_map(|a| a.get("properties").and_then(|p| p.get(k)))
                .or_else(|| {
                    alts.iter()
                        .find_map(|a| a.get("additionalProperties").filter(|v| v.is_object()))
                }),
            Seg::Index(_) => alts
                .iter()
                .find_map(|a| a.get("items").filter(|v| v.is_object())),
        }
    }

    pub fn at(&self, mut s: &'static Value, path: &[Seg]) -> Option<&'static Value> {
        for seg in path {
            s = self.child(s, seg)?;
        }
        Some(s)
    }

    /// The field names of an object schema that accepts no others; `None`
    /// for schemas that are not such objects (maps, scalars).
    pub fn closed_fields(&self, s: &'static Value) -> Option<Vec<&'static str>> {
        let alts = self.alternatives(s);
        if !alts
            .iter()
            .any(|a| a.get("additionalProperties") == Some(&Value::Bool(false)))
        {
            return None;
        }
        let mut fields: Vec<&'static str> = Vec::new();
        for a in alts {
            if let Some(props) = a.get("properties").and_then(Value::as_object) {
                for k in props.keys() {
                    if !fields.contains(&k.as_str()) {
                        fields.push(k);
                    }
                }
            }
        }
        Some(fields)
    }

    /// The values an enum-like schema accepts (`const`s and `enum`s).
    pub fn variants(&self, s: &'static Value) -> Vec<String> {
        let mut out = Vec::new();
        for a in self.alternatives(s) {
            if let Some(c) = a.get("const").and_then(Value::as_str) {
                out.push(c.to_string());
            }
            if let Some(e) = a.get("enum").and_then(Value::as_array) {
                out.extend(e.iter().filter_map(Value::as_str).map(String::from));
            }
        }
        out
    }

    /// A value of the right type for `s`, used in place of a bad value so
    /// that deserialization can go on and find the next problem. It is
    /// never used as data: a document with problems is rejected.
    pub fn placeholder(&self, s: &'static Value) -> Option<Value> {
        self.placeholder_at(s, 0)
    }

    fn placeholder_at(&self, s: &'static Value, depth: usize) -> Option<Value> {
        if depth > 16 {
            return None;
        }
        let alts = self.alternatives(s);
        if alts.iter().any(|a| allows_type(a, "null")) {
            return Some(Value::Null);
        }
        for a in &alts {
            if let Some(c) = a.get("const") {
                return Some(c.clone());
            }
            if let Some(first) = a
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
            {
                return Some(first.clone());
            }
        }
        for a in &alts {
            let v = if allows_type(a, "string") {
                Value::String(String::new())
            } else if allows_type(a, "integer") || allows_type(a, "number") {
                a.get("minimum").cloned().unwrap_or(json!(0))
            } else if allows_type(a, "boolean") {
                Value::Bool(false)
            } else if allows_type(a, "array") {
                Value::Array(Vec::new())
            } else if allows_type(a, "object") {
                let mut obj = Map::new();
                for name in a
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(name) = name.as_str() else { continue };
                    let field = self.child(a, &Seg::Key(name.to_string()))?;
                    obj.insert(name.to_string(), self.placeholder_at(field, depth + 1)?);
                }
                Value::Object(obj)
            } else {
                continue;
            };
            return Some(v);
        }
        None
    }
}

fn allows_type(s: &Value, ty: &str) -> bool {
    match s.get("type") {
        Some(Value::String(t)) => t == ty,
        Some(Value::Array(ts)) => ts.iter().any(|t| t == ty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_a_branch_per_kind() {
        let s = json_schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        let kinds: Vec<&str> = s["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["properties"]["kind"]["const"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "Platform",
                "ServiceTier",
                "BackupPolicy",
                "Tenant",
                "MaintenanceWindow"
            ]
        );
        for b in s["oneOf"].as_array().unwrap() {
            assert_eq!(b["properties"]["apiVersion"]["const"], API_VERSION);
        }
    }

    #[test]
    fn navigates_fields() {
        let nav = Nav::new();
        let tenant = nav.spec(Kind::Tenant);
        let fields = nav.closed_fields(tenant).unwrap();
        assert!(
            fields.contains(&"environments") && fields.contains(&"serviceTier"),
            "{fields:?}"
        );
        let env = nav
            .at(tenant, &[Seg::Key("environments".into()), Seg::Index(0)])
            .unwrap();
        assert_eq!(
            nav.closed_fields(env).unwrap(),
            ["addonsPaths", "kind", "modules", "name", "sizing"]
        );
        let kind = nav.child(env, &Seg::Key("kind".into())).unwrap();
        assert_eq!(
            nav.variants(kind),
            [
                "dev",
                "test",
                "uat",
                "training",
                "staging",
                "production",
                "dr"
            ]
        );
        // Maps are open.
        let labels = nav
            .at(nav.metadata(Kind::Tenant), &[Seg::Key("labels".into())])
            .unwrap();
        assert!(nav.closed_fields(labels).is_none());
        // Metadata of tenants is an allOf; its fields are still found.
        assert_eq!(
            nav.closed_fields(nav.metadata(Kind::Tenant)).unwrap(),
            ["annotations", "labels", "name"]
        );
    }

    #[test]
    fn placeholders_have_the_right_type() {
        let nav = Nav::new();
        let env = nav
            .at(
                nav.spec(Kind::Tenant),
                &[Seg::Key("environments".into()), Seg::Index(0)],
            )
            .unwrap();
        let v = nav.placeholder(env).unwrap();
        let _: crate::model::Environment = serde_json::from_value(v).unwrap();
        let spec: TenantSpec =
            serde_json::from_value(nav.placeholder(nav.spec(Kind::Tenant)).unwrap()).unwrap();
        assert!(spec.environments.is_empty());
        let _: PlatformSpec =
            serde_json::from_value(nav.placeholder(nav.spec(Kind::Platform)).unwrap()).unwrap();
        let _: ServiceTierSpec =
            serde_json::from_value(nav.placeholder(nav.spec(Kind::ServiceTier)).unwrap()).unwrap();
        let _: BackupPolicySpec =
            serde_json::from_value(nav.placeholder(nav.spec(Kind::BackupPolicy)).unwrap()).unwrap();
    }
}

//! Plans: the difference between what the specs ask for and what the state
//! store says careplane holds.
//!
//! A plan is computed, shown and discarded; `apply` computes it again under the
//! lock, so what runs is always based on the state at that moment. Plans never
//! carry secrets: resource properties are non-secret by construction.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use careplane_state::{ResourceRecord, ResourceStatus};
use serde::Serialize;
use serde_json::Value;

use crate::desired::{Kind, Resource};
use crate::error::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// One changed property of an update, as a dotted path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub op: Op,
    pub id: String,
    #[serde(serialize_with = "ser_kind")]
    pub kind: Kind,
    /// The desired properties (create/update) or the recorded ones (delete).
    pub props: Value,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// An earlier apply started this action and died before finishing it.
    pub resume: bool,
    /// What careplane observed that differs from what it recorded (a server
    /// or supervisor not running), when that is why the action is planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

fn ser_kind<S: serde::Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

impl Action {
    /// The tenant an action belongs to, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.props.get("tenant").and_then(Value::as_str)
    }

    /// The tenant environment the action belongs to, if any.
    pub fn environment(&self) -> Option<&str> {
        self.props.get("environment").and_then(Value::as_str)
    }

    /// Whether the action touches a production or DR environment.
    pub fn is_production(&self) -> bool {
        matches!(
            self.props.get("environmentKind").and_then(Value::as_str),
            Some("production") | Some("dr")
        )
    }

    /// One line describing what the action does, for humans.
    pub fn summary(&self) -> String {
        let p = |k: &str| self.props.get(k).and_then(Value::as_str).unwrap_or("?");
        match (self.kind, self.op) {
            (Kind::Ca, Op::Create) => "generate the platform's certificate authority".into(),
            (Kind::Ca, _) => "certificate authority".into(),
            (Kind::PgCluster, Op::Create) => format!(
                "initdb --data-checksums, TLS, loopback only; start PostgreSQL ({})",
                p("scope")
            ),
            (Kind::PgCluster, Op::Update) => "rewrite configuration and reload PostgreSQL (restart only for settings that need one)".into(),
            (Kind::PgCluster, Op::Delete) => {
                "stop PostgreSQL and remove the cluster's directory".into()
            }
            (Kind::PgDatabase, Op::Create) => format!(
                "role and database {} on {}, hostssl + SCRAM only",
                p("database"),
                p("cluster")
            ),
            (Kind::PgDatabase, Op::Update) => match self.changes.iter().find(|c| c.field == "role") {
                // A platform from before role names were opaque.
                Some(c) => format!(
                    "rename role {} to an opaque name (role names are readable by every tenant); \
                     converge role and database {}",
                    c.from,
                    p("database")
                ),
                None => format!("converge role and database {}", p("database")),
            },
            (Kind::PgDatabase, Op::Delete) => {
                format!(
                    "DROP database and role {} on {}",
                    p("database"),
                    p("cluster")
                )
            }
            (Kind::RedisServer, Op::Create) => format!(
                "start Redis ({}, {}, maxmemory {})",
                p("scope"),
                p("role"),
                p("maxMemory")
            ),
            (Kind::RedisServer, Op::Update) => "rewrite configuration and restart Redis".into(),
            (Kind::RedisServer, Op::Delete) => "stop Redis and remove its directory".into(),
            (Kind::RedisUser, Op::Create) => format!(
                "ACL user {} limited to keys {}* on {}",
                p("user"),
                p("keyPrefix"),
                p("server")
            ),
            (Kind::RedisUser, Op::Update) => format!("converge ACL user {}", p("user")),
            (Kind::RedisUser, Op::Delete) => format!(
                "remove ACL user {} and delete keys {}*",
                p("user"),
                p("keyPrefix")
            ),
            (Kind::OdooTemplate, Op::Create) => format!(
                "template database {} on {}: odoo -i {} --stop-after-init, once",
                p("database"),
                p("cluster"),
                self.props["modules"]
                    .as_array()
                    .map(|m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            ),
            (Kind::OdooTemplate, Op::Update) => format!("re-initialize template {}", p("database")),
            (Kind::OdooTemplate, Op::Delete) => format!("drop template database {}", p("database")),
            (Kind::OdooEnv, Op::Create) => format!(
                "clone {} into {}, fresh secrets, hardened odoo.conf, start web ({} worker{}) + cron",
                p("template").rsplit('/').next().unwrap_or("?"),
                p("database"),
                self.props["workers"],
                if self.props["workers"] == 1 { "" } else { "s" }
            ),
            (Kind::OdooEnv, Op::Update) => "rewrite odoo.conf, install new modules, restart Odoo".into(),
            (Kind::OdooEnv, Op::Delete) => {
                "stop Odoo and remove its configuration and filestore".into()
            }
            (Kind::Ingress, Op::Create | Op::Update) => format!(
                "HTTPS proxy for {} environment{} on {}: certificates from the platform CA, \
                 reload (or start) the proxy",
                self.props["routes"].as_array().map_or(0, Vec::len),
                if self.props["routes"].as_array().map_or(0, Vec::len) == 1 { "" } else { "s" },
                p("domain")
            ),
            (Kind::Ingress, Op::Delete) => "stop the HTTPS proxy and remove its files".into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// What the driver observed that differs from the specs but that apply
    /// does not change (e.g. modules installed outside the spec): shown,
    /// never acted on.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for a in &self.actions {
            match a.op {
                Op::Create => c.create += 1,
                Op::Update => c.update += 1,
                Op::Delete => c.delete += 1,
            }
        }
        c
    }

    /// The readable diff `careplane plan` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.actions.is_empty() {
            s.push_str("No changes: the platform matches the specs.\n");
            self.render_notes(&mut s);
            return s;
        }
        for a in &self.actions {
            let (sign, verb) = match a.op {
                Op::Create => ('+', "create"),
                Op::Update => ('~', "change"),
                Op::Delete => ('-', "delete"),
            };
            let resume = if a.resume {
                " (resume interrupted)"
            } else {
                ""
            };
            let _ = writeln!(s, "  {sign} {verb} {}{resume}", a.id);
            let _ = writeln!(s, "      {}", a.summary());
            if let Some(d) = &a.drift {
                let _ = writeln!(s, "      observed: {d}");
            }
            for c in &a.changes {
                let _ = writeln!(s, "      {}: {} -> {}", c.field, c.from, c.to);
            }
        }
        let c = self.counts();
        let _ = writeln!(
            s,
            "Plan: {} to create, {} to change, {} to delete.",
            c.create, c.update, c.delete
        );
        self.render_notes(&mut s);
        s
    }

    fn render_notes(&self, s: &mut String) {
        for n in &self.notes {
            let _ = writeln!(s, "Note: {n}");
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({ "actions": self.actions, "summary": self.counts() });
        if !self.notes.is_empty() {
            v["notes"] = serde_json::json!(self.notes);
        }
        v
    }
}

/// Properties whose change would move data between clusters or servers:
/// that is a migration, not an update.
const MOVE_FIELDS: [&str; 2] = ["cluster", "server"];

/// Diff desired resources against recorded ones. `drift` holds, by id, what
/// careplane observed of a recorded resource that differs from the record
/// (see `Engine::observe_drift`); such a resource is updated even when its
/// properties did not change.
pub fn plan(
    desired: &[Resource],
    recorded: &[ResourceRecord],
    drift: &BTreeMap<String, String>,
) -> Result<Plan, EngineError> {
    let by_id: BTreeMap<&str, &ResourceRecord> =
        recorded.iter().map(|r| (r.id.as_str(), r)).collect();
    let wanted: BTreeMap<&str, &Resource> = desired.iter().map(|r| (r.id.as_str(), r)).collect();

    let mut deletes = Vec::new();
    for rec in recorded {
        if wanted.contains_key(rec.id.as_str()) && rec.status != ResourceStatus::Deleting {
            continue;
        }
        let kind = Kind::parse(&rec.kind).ok_or_else(|| EngineError::Inconsistent {
            what: format!(
                "resource {} has kind {:?}, which this careplane does not know (state written by a newer version?)",
                rec.id, rec.kind
            ),
        })?;
        deletes.push(Action {
            op: Op::Delete,
            id: rec.id.clone(),
            kind,
            props: rec.props.clone(),
            changes: vec![],
            resume: rec.status == ResourceStatus::Deleting,
            drift: None,
        });
    }

    let mut rest = Vec::new();
    for want in desired {
        match by_id.get(want.id.as_str()) {
            None => rest.push(Action {
                op: Op::Create,
                id: want.id.clone(),
                kind: want.kind,
                props: want.props.clone(),
                changes: vec![],
                resume: false,
                drift: None,
            }),
            Some(rec) if rec.status == ResourceStatus::Pending => rest.push(Action {
                op: Op::Create,
                id: want.id.clone(),
                kind: want.kind,
                props: want.props.clone(),
                changes: vec![],
                resume: true,
                drift: None,
            }),
            Some(rec) if rec.status == ResourceStatus::Deleting => {
                // Finish the interrupted delete first (above), then create anew.
                rest.push(Action {
                    op: Op::Create,
                    id: want.id.clone(),
                    kind: want.kind,
                    props: want.props.clone(),
                    changes: vec![],
                    resume: false,
                    drift: None,
                })
            }
            Some(rec) => {
                let mut changes = Vec::new();
                diff_values("", &rec.props, &want.props, &mut changes);
                let drift = drift.get(&want.id).cloned();
                if changes.is_empty() && drift.is_none() {
                    continue;
                }
                if let Some(c) = changes
                    .iter()
                    .find(|c| MOVE_FIELDS.contains(&c.field.as_str()))
                {
                    return Err(EngineError::Unsupported {
                        what: format!(
                            "{} would move from {} to {}: moving a tenant between tenancy tiers \
                             is a data migration careplane does not do yet; keep the tenancy or \
                             recreate the tenant",
                            want.id, c.from, c.to
                        ),
                    });
                }
                rest.push(Action {
                    op: Op::Update,
                    id: want.id.clone(),
                    kind: want.kind,
                    props: want.props.clone(),
                    changes,
                    resume: false,
                    drift,
                });
            }
        }
    }
    // Creates and updates after what they need; deletes before it, in
    // reverse. What a resource needs comes from its typed properties (the
    // desired ones, or for a delete the recorded ones), so a record that
    // does not decode is refused here, naming resource and field.
    let mut needs: BTreeMap<String, (u8, Vec<String>)> = BTreeMap::new();
    for r in desired {
        needs.insert(r.id.clone(), (r.kind.rank(), r.typed()?.needs()));
    }
    for a in &deletes {
        let typed = careplane_model::Props::decode(a.kind, &a.id, &a.props)?;
        needs
            .entry(a.id.clone())
            .or_insert_with(|| (a.kind.rank(), typed.needs()));
    }
    let position = topological(&needs);
    deletes.sort_by_key(|a| std::cmp::Reverse(position[a.id.as_str()]));
    rest.sort_by_key(|a| position[a.id.as_str()]);
    deletes.extend(rest);
    Ok(Plan {
        actions: deletes,
        notes: Vec::new(),
    })
}

/// Each id's position in an order where everything comes after what it
/// needs (needs outside `graph` are already there). Among ids free to go,
/// the lowest (kind rank, id) first, so that plans read servers first,
/// then what lives on them, in a stable order.
fn topological(graph: &BTreeMap<String, (u8, Vec<String>)>) -> BTreeMap<&str, usize> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, (_, needs)) in graph {
        let id = id.as_str();
        let inside: Vec<&str> = needs
            .iter()
            .filter_map(|n| graph.get_key_value(n.as_str()).map(|(k, _)| k.as_str()))
            .collect();
        waiting.insert(id, inside.len());
        for n in inside {
            dependents.entry(n).or_default().push(id);
        }
    }
    let mut ready: BinaryHeap<Reverse<(u8, &str)>> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| Reverse((graph[*id].0, *id)))
        .collect();
    let mut position = BTreeMap::new();
    while let Some(Reverse((_, id))) = ready.pop() {
        position.insert(id, position.len());
        for d in dependents.get(id).into_iter().flatten() {
            let n = waiting.get_mut(d).expect("every dependent is in the graph");
            *n -= 1;
            if *n == 0 {
                ready.push(Reverse((graph[*d].0, d)));
            }
        }
    }
    // A cycle cannot be built from specs (needs point at lower ranks); were
    // one recorded, its members keep rank order after everything else.
    let mut rest: Vec<(u8, &str)> = graph
        .iter()
        .filter(|(id, _)| !position.contains_key(id.as_str()))
        .map(|(id, (rank, _))| (*rank, id.as_str()))
        .collect();
    rest.sort();
    for (_, id) in rest {
        position.insert(id, position.len());
    }
    position
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(
                    &p,
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if old != new => out.push(Change {
            field: path.to_string(),
            from: old.clone(),
            to: new.clone(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(id: &str, kind: &str, status: ResourceStatus, props: Value) -> ResourceRecord {
        ResourceRecord {
            id: id.into(),
            kind: kind.into(),
            status,
            props,
            observed: json!({}),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    /// A database's properties on `cluster` (the rest does not matter here).
    fn db(cluster: &str) -> Value {
        json!({"cluster": cluster, "tenant": "t", "environment": "dev",
               "environmentKind": "dev", "database": "t-dev", "connectionLimit": 5})
    }

    fn res(id: &str, kind: Kind, props: Value) -> Resource {
        Resource {
            id: id.into(),
            kind,
            props,
        }
    }

    #[test]
    fn create_update_delete_and_resume() {
        let desired = vec![
            res(
                "pg-cluster/shared",
                Kind::PgCluster,
                json!({"scope": "shared", "settings": {"a": "1"}}),
            ),
            res(
                "pg-database/t/dev",
                Kind::PgDatabase,
                db("pg-cluster/shared"),
            ),
            res(
                "pg-database/t/prod",
                Kind::PgDatabase,
                db("pg-cluster/shared"),
            ),
        ];
        let recorded = vec![
            rec(
                "pg-cluster/shared",
                "pg-cluster",
                ResourceStatus::Ready,
                json!({"scope": "shared", "settings": {"a": "2"}}),
            ),
            rec(
                "pg-database/t/dev",
                "pg-database",
                ResourceStatus::Pending,
                db("pg-cluster/shared"),
            ),
            rec(
                "pg-database/old/dev",
                "pg-database",
                ResourceStatus::Ready,
                db("pg-cluster/shared"),
            ),
        ];
        let p = plan(&desired, &recorded, &BTreeMap::new()).unwrap();
        let ops: Vec<(Op, &str, bool)> = p
            .actions
            .iter()
            .map(|a| (a.op, a.id.as_str(), a.resume))
            .collect();
        assert_eq!(
            ops,
            vec![
                (Op::Delete, "pg-database/old/dev", false),
                (Op::Update, "pg-cluster/shared", false),
                (Op::Create, "pg-database/t/dev", true),
                (Op::Create, "pg-database/t/prod", false),
            ]
        );
        assert_eq!(p.actions[1].changes[0].field, "settings.a");
        assert_eq!(
            p.counts(),
            Counts {
                create: 2,
                update: 1,
                delete: 1
            }
        );
    }

    #[test]
    fn nothing_to_do_when_recorded_matches() {
        let desired = vec![res("ca/platform", Kind::Ca, json!({"platform": "x"}))];
        let recorded = vec![rec(
            "ca/platform",
            "ca",
            ResourceStatus::Ready,
            json!({"platform": "x"}),
        )];
        let p = plan(&desired, &recorded, &BTreeMap::new()).unwrap();
        assert!(p.is_empty(), "{}", p.render());
    }

    #[test]
    fn moving_between_clusters_is_refused() {
        let desired = vec![res(
            "pg-database/t/dev",
            Kind::PgDatabase,
            db("pg-cluster/t"),
        )];
        let recorded = vec![rec(
            "pg-database/t/dev",
            "pg-database",
            ResourceStatus::Ready,
            db("pg-cluster/shared"),
        )];
        let err = plan(&desired, &recorded, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pg-database/t/dev would move"), "{err}");
    }

    /// Deletes run dependents first, by what each record needs, whatever
    /// order the store lists them in; a record that does not decode is
    /// refused, naming it and the field.
    #[test]
    fn deletes_follow_needs_in_reverse_and_broken_records_are_named() {
        let recorded = vec![
            rec(
                "ca/platform",
                "ca",
                ResourceStatus::Ready,
                json!({"platform": "x"}),
            ),
            rec(
                "pg-database/t/dev",
                "pg-database",
                ResourceStatus::Ready,
                db("pg-cluster/shared"),
            ),
            rec(
                "pg-cluster/shared",
                "pg-cluster",
                ResourceStatus::Ready,
                json!({"scope": "shared", "settings": {}}),
            ),
        ];
        let p = plan(&[], &recorded, &BTreeMap::new()).unwrap();
        let ids: Vec<&str> = p.actions.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            ["pg-database/t/dev", "pg-cluster/shared", "ca/platform"]
        );

        let mut broken = recorded.clone();
        broken[1].props.as_object_mut().unwrap().remove("cluster");
        let err = plan(&[], &broken, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pg-database/t/dev"), "{err}");
        assert!(err.contains("`cluster`"), "{err}");
    }
}

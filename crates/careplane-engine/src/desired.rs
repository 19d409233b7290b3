//! From specs to the resources careplane must hold.
//!
//! A resource is plain data: an id that says what and where
//! (`pg-database/stmarys/production`), a kind, and the non-secret properties
//! that decide whether it must change. Ports, paths and passwords are not
//! desired properties: careplane allocates them once and records them.

use std::collections::BTreeMap;

use careplane_spec::{EnvironmentKind, SpecSet};
use serde_json::{json, Value};

/// What kind of thing a resource is; decides which runtime calls apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The platform's certificate authority (signs every server certificate).
    Ca,
    PgCluster,
    PgDatabase,
    RedisServer,
    RedisUser,
    /// A database initialized once per (cluster, Odoo, modules) that
    /// environments are cloned from.
    OdooTemplate,
    /// An environment's Odoo: configuration, database content, supervised
    /// web and cron processes.
    OdooEnv,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Ca,
        Kind::PgCluster,
        Kind::PgDatabase,
        Kind::RedisServer,
        Kind::RedisUser,
        Kind::OdooTemplate,
        Kind::OdooEnv,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ca => "ca",
            Kind::PgCluster => "pg-cluster",
            Kind::PgDatabase => "pg-database",
            Kind::RedisServer => "redis-server",
            Kind::RedisUser => "redis-user",
            Kind::OdooTemplate => "odoo-template",
            Kind::OdooEnv => "odoo-env",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Creation order: a kind is created after every kind with a lower rank
    /// and deleted before them.
    pub fn rank(self) -> u8 {
        match self {
            Kind::Ca => 0,
            Kind::PgCluster | Kind::RedisServer => 1,
            Kind::PgDatabase | Kind::RedisUser => 2,
            Kind::OdooTemplate => 3,
            Kind::OdooEnv => 4,
        }
    }
}

/// One thing careplane must hold, as the specs describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: String,
    pub kind: Kind,
    /// Non-secret properties; a difference here is a change.
    pub props: Value,
}

// The naming rules live in the spec crate, whose validation refuses specs
// that would make two environments share a name (see `careplane_spec::names`).
pub use careplane_spec::names::{env_db_name, env_key_prefix, pg_scope, redis_scope, SHARED};

pub fn ca_id() -> String {
    "ca/platform".to_string()
}
pub fn pg_cluster_id(scope: &str) -> String {
    format!("pg-cluster/{scope}")
}
pub fn redis_server_id(scope: &str) -> String {
    format!("redis-server/{scope}")
}
pub fn pg_database_id(tenant: &str, env: &str) -> String {
    format!("pg-database/{tenant}/{env}")
}
pub fn redis_user_id(tenant: &str, env: &str) -> String {
    format!("redis-user/{tenant}/{env}")
}
pub fn odoo_env_id(tenant: &str, env: &str) -> String {
    format!("odoo-env/{tenant}/{env}")
}

/// Defaults an environment kind sets: production gets more workers and
/// stricter time limits, dev a single worker and generous limits for debugging.
pub fn kind_defaults(kind: EnvironmentKind) -> (u32, u32, Value) {
    const MIB: u64 = 1024 * 1024;
    let (workers, cron) = careplane_spec::connections::default_processes(kind);
    let (soft, hard, cpu, real) = match kind {
        EnvironmentKind::Production | EnvironmentKind::Dr => (2048, 2560, 60, 120),
        EnvironmentKind::Staging | EnvironmentKind::Uat | EnvironmentKind::Training => {
            (1536, 2048, 120, 240)
        }
        EnvironmentKind::Test | EnvironmentKind::Dev => (1024, 1536, 600, 1200),
    };
    (
        workers,
        cron,
        json!({
            "memorySoft": soft * MIB,
            "memoryHard": hard * MIB,
            "timeCpu": cpu,
            "timeReal": real,
            "request": 65536,
        }),
    )
}

/// Parses `512Mi`, `2Gi`, `1G`, `256mb` into bytes (validated by the spec crate).
fn memory_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let mult: u64 = match s[split..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1024,
        "m" | "mb" | "mi" | "mib" => 1024 * 1024,
        "g" | "gb" | "gi" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// See the `configFormat` property of `odoo-env`.
const ODOO_CONFIG_FORMAT: u32 = 2;

/// Everything the specs ask for, ordered by creation rank then id.
pub fn desired(specs: &SpecSet) -> Vec<Resource> {
    let platform = &specs.platform.spec;
    let mut out: BTreeMap<String, Resource> = BTreeMap::new();
    let mut add = |id: String, kind: Kind, props: Value| {
        out.insert(id.clone(), Resource { id, kind, props });
    };

    add(
        ca_id(),
        Kind::Ca,
        json!({ "platform": specs.platform.metadata.name }),
    );

    let pg_settings = json!(platform.postgres.settings);
    let redis_role = match platform.redis.role {
        careplane_spec::RedisRole::Cache => "cache",
        careplane_spec::RedisRole::Session => "session",
    };
    let max_memory = platform
        .redis
        .max_memory
        .clone()
        .unwrap_or_else(|| "256mb".to_string());

    for tenant in &specs.tenants {
        let t = &tenant.spec;
        let tname = &tenant.metadata.name;
        let pg = pg_scope(tname, t);
        let rs = redis_scope(tname, t);
        add(
            pg_cluster_id(&pg),
            Kind::PgCluster,
            json!({ "scope": pg, "settings": pg_settings }),
        );
        add(
            redis_server_id(&rs),
            Kind::RedisServer,
            json!({ "scope": rs, "role": redis_role, "maxMemory": max_memory }),
        );
        for env in &t.environments {
            // Each field from the environment, else the tenant, else the
            // kind; every role gets a connection limit (validation checks
            // that each cluster can serve the sum).
            let sizing = careplane_spec::connections::effective_sizing(t, env);
            let connection_limit = sizing.db_connections;
            add(
                pg_database_id(tname, &env.name),
                Kind::PgDatabase,
                json!({
                    "cluster": pg_cluster_id(&pg),
                    "tenant": tname,
                    "environment": env.name,
                    "environmentKind": env.kind.as_str(),
                    "database": env_db_name(tname, &env.name),
                    // No `role`: its name is opaque, allocated at apply
                    // (see runtime::db_role).
                    "connectionLimit": connection_limit,
                }),
            );
            if let Some(odoo) = &platform.odoo {
                let mut modules: Vec<String> = ["base".to_string()]
                    .into_iter()
                    .chain(platform.defaults.modules.iter().cloned())
                    .chain(t.modules.iter().cloned())
                    .chain(env.modules.iter().cloned())
                    .collect();
                modules.sort();
                modules.dedup();
                let addons: Vec<String> = odoo
                    .addons_paths
                    .iter()
                    .chain(&t.addons_paths)
                    .chain(&env.addons_paths)
                    .map(|p| p.display().to_string())
                    .collect();
                let command = odoo.command.display().to_string();
                let python = odoo.python.as_ref().map(|p| p.display().to_string());
                let mut key = vec![odoo.version.to_string(), command.clone()];
                key.extend(python.clone());
                key.push("modules".into());
                key.extend(modules.iter().cloned());
                key.push("addons".into());
                key.extend(addons.iter().cloned());
                let tpl_db = careplane_spec::names::template_db_name(odoo.version, &key);
                let tpl_id = format!("odoo-template/{pg}/{tpl_db}");
                add(
                    tpl_id.clone(),
                    Kind::OdooTemplate,
                    json!({
                        "cluster": pg_cluster_id(&pg),
                        "scope": pg,
                        "database": tpl_db,
                        "role": tpl_db,
                        "version": odoo.version,
                        "command": command,
                        "python": python,
                        "modules": modules,
                        "addonsPaths": addons,
                    }),
                );
                let (_, _, mut limits) = kind_defaults(env.kind);
                let (workers, cron) = (sizing.workers, sizing.cron_threads);
                if let Some(mem) = sizing.worker_memory.and_then(memory_bytes) {
                    limits["memorySoft"] = json!(mem);
                    limits["memoryHard"] = json!(mem + mem / 4);
                }
                add(
                    odoo_env_id(tname, &env.name),
                    Kind::OdooEnv,
                    json!({
                        "cluster": pg_cluster_id(&pg),
                        "server": redis_server_id(&rs),
                        "tenant": tname,
                        "environment": env.name,
                        "environmentKind": env.kind.as_str(),
                        "database": env_db_name(tname, &env.name),
                        "redisUser": redis_user_id(tname, &env.name),
                        "template": tpl_id,
                        "version": odoo.version,
                        "command": command,
                        "python": python,
                        "modules": modules,
                        "addonsPaths": addons,
                        "workers": workers,
                        "cronThreads": cron,
                        "limits": limits,
                        // The generation of odoo.conf careplane writes. 2:
                        // `db_name` with an empty `dbfilter`, so Odoo never
                        // lists pg_database (hidden from tenants). Platforms
                        // applied before see an update that rewrites it.
                        "configFormat": ODOO_CONFIG_FORMAT,
                    }),
                );
            }
            add(
                redis_user_id(tname, &env.name),
                Kind::RedisUser,
                json!({
                    "server": redis_server_id(&rs),
                    "tenant": tname,
                    "environment": env.name,
                    "environmentKind": env.kind.as_str(),
                    "user": env_db_name(tname, &env.name),
                    "keyPrefix": env_key_prefix(tname, &env.name),
                }),
            );
        }
    }
    let mut v: Vec<Resource> = out.into_values().collect();
    v.sort_by(|a, b| (a.kind.rank(), &a.id).cmp(&(b.kind.rank(), &b.id)));
    v
}

#[cfg(test)]
mod tests {
    /// `validate` refuses exactly the settings the runtime refuses.
    #[test]
    fn protected_postgres_settings_agree() {
        assert_eq!(
            careplane_spec::PROTECTED_PG_SETTINGS,
            careplane_local::pg::PROTECTED_SETTINGS
        );
    }

    use super::*;

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
}

//! From specs to the resources careplane must hold.
//!
//! A resource is plain data: an id that says what and where
//! (`pg-database/stmarys/production`), a kind, and the non-secret properties
//! that decide whether it must change. Ports, paths and passwords are not
//! desired properties: careplane allocates them once and records them.

use std::collections::BTreeMap;

use careplane_spec::{SpecSet, Tenancy, TenantSpec};
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
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Ca,
        Kind::PgCluster,
        Kind::PgDatabase,
        Kind::RedisServer,
        Kind::RedisUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ca => "ca",
            Kind::PgCluster => "pg-cluster",
            Kind::PgDatabase => "pg-database",
            Kind::RedisServer => "redis-server",
            Kind::RedisUser => "redis-user",
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

/// Names of a tenant environment's database objects. Kept in one place because
/// they become identifiers in PostgreSQL, Redis ACLs and (later) Odoo's dbfilter.
pub fn env_db_name(tenant: &str, env: &str) -> String {
    format!("{tenant}-{env}")
}

/// Redis key prefix of a tenant environment; its ACL user may touch only these keys.
pub fn env_key_prefix(tenant: &str, env: &str) -> String {
    format!("{tenant}:{env}:")
}

/// The PostgreSQL cluster scope a tenant lives on: `shared` or its own.
pub fn pg_scope(tenant_name: &str, tenant: &TenantSpec) -> String {
    match tenant.tenancy {
        Tenancy::Shared => SHARED.to_string(),
        Tenancy::DedicatedDb | Tenancy::DedicatedEnv => tenant_name.to_string(),
    }
}

/// The Redis server scope: only `dedicated-env` tenants get their own.
pub fn redis_scope(tenant_name: &str, tenant: &TenantSpec) -> String {
    match tenant.tenancy {
        Tenancy::Shared | Tenancy::DedicatedDb => SHARED.to_string(),
        Tenancy::DedicatedEnv => tenant_name.to_string(),
    }
}

/// Scope name of the shared cluster and server. Tenant names cannot collide with
/// it: validation reserves it (see `careplane_spec`), and a collision is caught
/// here again because ids must be unique.
pub const SHARED: &str = "shared";

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
            let sizing = env.sizing.as_ref().or(t.sizing.as_ref());
            let connection_limit = sizing.and_then(|s| s.db_connections);
            add(
                pg_database_id(tname, &env.name),
                Kind::PgDatabase,
                json!({
                    "cluster": pg_cluster_id(&pg),
                    "tenant": tname,
                    "environment": env.name,
                    "environmentKind": env.kind.as_str(),
                    "database": env_db_name(tname, &env.name),
                    "role": env_db_name(tname, &env.name),
                    "connectionLimit": connection_limit,
                }),
            );
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

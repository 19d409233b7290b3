//! Building the local runtime's server handles from state records.
//!
//! Everything a server needs (port, directory, passwords) comes from the state
//! store, never from a fresh allocation: that is what lets `start`, `stop`,
//! `status` and a resumed apply address exactly the servers that exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use careplane_local::pg::{PgBinaries, PgCluster, TenantDb};
use careplane_local::redis::{AclUser, Persistence, RedisServer};
use careplane_local::system::ServiceUser;
use careplane_spec::PlatformSpec;
use careplane_state::{ResourceRecord, ResourceStatus, SecretString, Store};
use serde_json::Value;

use crate::Error as EngineError;

/// Names of secrets in the state store, per resource.
pub const ADMIN_PASSWORD: &str = "admin-password";
/// A Redis server's `careplane-monitor` user (INFO and PING only).
pub const MONITOR_PASSWORD: &str = "monitor-password";
pub const PASSWORD: &str = "password";
pub const TLS_KEY: &str = "tls-key";
pub const CA_KEY: &str = "ca-key";

/// `v` (a resource's props or observed JSON) read as `T`, one of
/// `careplane_model`'s structs: a missing or mistyped field is an error
/// naming the resource and the field, never a default.
pub fn typed<T: serde::de::DeserializeOwned>(
    id: &str,
    v: &serde_json::Value,
) -> Result<T, EngineError> {
    T::deserialize(v).map_err(|e| {
        careplane_model::ModelError {
            id: id.to_string(),
            part: "props",
            message: e.to_string(),
        }
        .into()
    })
}

pub fn str_prop<'a>(rec: &'a ResourceRecord, key: &str) -> Result<&'a str, EngineError> {
    rec.props
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| EngineError::inconsistent(format!("state: {} has no {key:?}", rec.id)))
}

pub fn observed_str<'a>(rec: &'a ResourceRecord, key: &str) -> Result<&'a str, EngineError> {
    rec.observed
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            EngineError::inconsistent(format!("state: {} has no observed {key:?}", rec.id))
        })
}

pub fn observed_port(rec: &ResourceRecord) -> Result<u16, EngineError> {
    rec.observed
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| EngineError::inconsistent(format!("state: {} has no port", rec.id)))
}

pub fn secret(store: &Store, owner: &str, name: &str) -> Result<SecretString, EngineError> {
    store.secret(owner, name)?.ok_or_else(|| {
        EngineError::inconsistent(format!(
            "state: the {name} of {owner} is missing from the secret store"
        ))
    })
}

/// The PostgreSQL cluster a record describes.
pub fn pg_cluster(
    store: &Store,
    rec: &ResourceRecord,
    bin: PgBinaries,
    user: Option<ServiceUser>,
) -> Result<PgCluster, EngineError> {
    let p: careplane_model::PgClusterProps = typed(&rec.id, &rec.props)?;
    let mut settings: BTreeMap<String, String> = p.settings;
    // careplane's WAL archiving wins over anything of the same name
    // (validation refuses those settings in the spec).
    settings.extend(crate::backup::archive_settings(rec));
    Ok(PgCluster {
        name: p.scope,
        root: PathBuf::from(observed_str(rec, "root")?),
        port: observed_port(rec)?,
        bin,
        user,
        admin_password: secret(store, &rec.id, ADMIN_PASSWORD)?,
        settings,
    })
}

pub fn redis_server(
    store: &Store,
    rec: &ResourceRecord,
    binary: PathBuf,
    user: Option<ServiceUser>,
) -> Result<RedisServer, EngineError> {
    let persistence = match str_prop(rec, "role")? {
        "session" => Persistence::AppendOnly,
        _ => Persistence::None,
    };
    Ok(RedisServer {
        name: str_prop(rec, "scope")?.to_string(),
        root: PathBuf::from(observed_str(rec, "root")?),
        port: observed_port(rec)?,
        binary,
        persistence,
        max_memory: str_prop(rec, "maxMemory")?.to_string(),
        admin_password: secret(store, &rec.id, ADMIN_PASSWORD)?,
        monitor_password: store.secret(&rec.id, MONITOR_PASSWORD)?,
        user,
    })
}

pub fn tenant_db(store: &Store, rec: &ResourceRecord) -> Result<TenantDb, EngineError> {
    Ok(TenantDb {
        database: str_prop(rec, "database")?.to_string(),
        role: db_role(rec)?.to_string(),
        password: secret(store, &rec.id, PASSWORD)?,
        connection_limit: rec
            .props
            .get("connectionLimit")
            .and_then(Value::as_u64)
            .map(|n| n as u32),
        former_roles: former_role(rec).into_iter().map(str::to_string).collect(),
    })
}

/// The PostgreSQL role of a `pg-database` (or `odoo-template`) record.
///
/// An environment's role has an opaque name allocated with its intent
/// (`observed.role`, see [`opaque_role_name`]): every tenant of a shared
/// cluster can read every role name (`oid::regrole` is never
/// privilege-checked), so names must not say whose they are. Records from
/// before carry `props.role` (`<tenant>-<env>`) until their update renames
/// the role; a template's role (`tpl-…`) names no tenant and stays in props.
pub fn db_role(rec: &ResourceRecord) -> Result<&str, EngineError> {
    match rec.observed.get("role").and_then(Value::as_str) {
        Some(role) => Ok(role),
        None => str_prop(rec, "role"),
    }
}

/// The name a record's role had before it got its opaque one, while the
/// rename may not have happened yet (or a delete must drop either).
pub fn former_role(rec: &ResourceRecord) -> Option<&str> {
    let now = rec.observed.get("role").and_then(Value::as_str)?;
    rec.props
        .get("role")
        .and_then(Value::as_str)
        .filter(|old| *old != now)
}

/// A new role name that says nothing about its tenant: `r` and 24 hex
/// digits (96 random bits). Never a name of the old form, which always has a
/// `-`, nor a template's (`tpl-…`).
pub fn opaque_role_name() -> Result<String, EngineError> {
    Ok(format!("r{}", careplane_local::system::random_hex(12)?))
}

/// Records of `kind` that hang off `parent` (a cluster or server) and are not
/// being deleted: the set a cluster's pg_hba or a server's ACL file lists.
pub fn children<'a>(
    all: &'a [ResourceRecord],
    kind: &'a str,
    parent_key: &'a str,
    parent: &'a str,
) -> impl Iterator<Item = &'a ResourceRecord> {
    all.iter().filter(move |r| {
        r.kind == kind
            && r.status != ResourceStatus::Deleting
            && r.props.get(parent_key).and_then(Value::as_str) == Some(parent)
    })
}

/// Who may connect to a cluster: environments' roles to their databases, and
/// Odoo templates' roles to theirs (a sealed template refuses connections
/// anyway).
pub fn hba_entries(
    all: &[ResourceRecord],
    cluster_id: &str,
) -> Result<Vec<(String, String)>, EngineError> {
    children(all, "pg-database", "cluster", cluster_id)
        .chain(children(all, "odoo-template", "cluster", cluster_id))
        .map(|r| {
            Ok((
                str_prop(r, "database")?.to_string(),
                db_role(r)?.to_string(),
            ))
        })
        .collect()
}

pub fn acl_users(
    store: &Store,
    all: &[ResourceRecord],
    server_id: &str,
) -> Result<Vec<AclUser>, EngineError> {
    children(all, "redis-user", "server", server_id)
        .filter_map(|r| {
            // A user whose password was never generated cannot log in yet; it is
            // added when its own action runs.
            match store.secret(&r.id, PASSWORD) {
                Ok(Some(password)) => Some(Ok((r, password))),
                Ok(None) => None,
                Err(e) => Some(Err(EngineError::from(e))),
            }
        })
        .map(|x| {
            let (r, password) = x?;
            Ok(AclUser {
                name: str_prop(r, "user")?.to_string(),
                password,
                key_prefix: str_prop(r, "keyPrefix")?.to_string(),
            })
        })
        .collect()
}

/// `redis-server` from the platform spec, or found on PATH.
pub fn redis_binary(platform: &PlatformSpec) -> Result<PathBuf, EngineError> {
    if let Some(p) = &platform.redis.server {
        if p.is_file() {
            return Ok(p.clone());
        }
        return Err(EngineError::Refused {
            problems: vec![format!(
                "Platform spec.redis.server: {} does not exist",
                p.display()
            )],
        });
    }
    find_on_path("redis-server").ok_or_else(|| EngineError::Refused {
        problems: vec![
            "redis-server not found on PATH: install it (apt-get install redis-server) or set \
             Platform spec.redis.server"
                .to_string(),
        ],
    })
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

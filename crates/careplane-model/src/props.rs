//! One struct per kind: what the specs want. Serialized (camelCase, keys
//! sorted by serde_json) they are exactly the JSON that earlier versions
//! planned and recorded, so a platform's state reads back unchanged
//! (`tests/example.rs` pins that). Fields that older versions did not write
//! say what they default to.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ca_id, pg_database_id, redis_user_id, Kind, ModelError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaProps {
    pub platform: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PgClusterProps {
    pub scope: String,
    /// The operator's extra postgresql.conf settings.
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PgDatabaseProps {
    /// Id of its `pg-cluster`.
    pub cluster: String,
    pub tenant: String,
    pub environment: String,
    pub environment_kind: String,
    pub database: String,
    /// Absent before connection limits were set per role: unlimited.
    #[serde(default)]
    pub connection_limit: Option<u32>,
    /// The role name of platforms made before role names were opaque
    /// (`<tenant>-<env>`); never desired, only read from older records,
    /// whose next apply renames the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisServerProps {
    pub scope: String,
    /// `cache` or `session`.
    pub role: String,
    pub max_memory: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisUserProps {
    /// Id of its `redis-server`.
    pub server: String,
    pub tenant: String,
    pub environment: String,
    pub environment_kind: String,
    pub user: String,
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OdooTemplateProps {
    pub cluster: String,
    pub scope: String,
    pub database: String,
    /// `tpl-…`: names no tenant.
    pub role: String,
    pub version: u32,
    pub command: String,
    pub python: Option<String>,
    pub modules: Vec<String>,
    pub addons_paths: Vec<String>,
}

/// Odoo's per-process limits (`limit_memory_soft`, …), bytes and seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub memory_soft: u64,
    pub memory_hard: u64,
    pub time_cpu: u64,
    pub time_real: u64,
    pub request: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OdooEnvProps {
    pub cluster: String,
    pub server: String,
    pub tenant: String,
    pub environment: String,
    pub environment_kind: String,
    pub database: String,
    /// Id of its `redis-user`.
    pub redis_user: String,
    /// Id of its `odoo-template`.
    pub template: String,
    pub version: u32,
    pub command: String,
    pub python: Option<String>,
    pub modules: Vec<String>,
    pub addons_paths: Vec<String>,
    pub workers: u32,
    pub cron_threads: u32,
    pub limits: Limits,
    /// The generation of odoo.conf careplane writes. Absent (1) before 2:
    /// `db_name` with an empty `dbfilter`, so Odoo never lists pg_database.
    #[serde(default = "config_format_1")]
    pub config_format: u32,
    /// See [`PgDatabaseProps::role`]: only in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The platform's ingress proxy: one route per Odoo environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressProps {
    pub domain: String,
    /// The address every listener binds.
    pub listen: String,
    /// Fixed by the spec; `None`: allocated at the first apply and kept.
    pub https_port: Option<u16>,
    pub http_port: Option<u16>,
    pub routes: Vec<IngressRoute>,
    /// Path prefixes only `admin_allow` reaches (none before they existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_allow: Vec<String>,
    /// The operator's own certificates, by host; other hosts get one from
    /// the platform CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<IngressCertificate>,
}

/// Where the operator's certificate and key for one host are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressCertificate {
    pub host: String,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRoute {
    /// `<env>.<tenant>.<domain>`.
    pub host: String,
    /// Id of its `odoo-env`.
    pub env: String,
}

fn config_format_1() -> u32 {
    1
}

/// The typed properties of any resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Props {
    Ca(CaProps),
    PgCluster(PgClusterProps),
    PgDatabase(PgDatabaseProps),
    RedisServer(RedisServerProps),
    RedisUser(RedisUserProps),
    OdooTemplate(OdooTemplateProps),
    OdooEnv(OdooEnvProps),
    Ingress(IngressProps),
}

fn decode_as<T: DeserializeOwned>(id: &str, props: &Value) -> Result<T, ModelError> {
    T::deserialize(props).map_err(|e| ModelError {
        id: id.to_string(),
        part: "props",
        message: e.to_string(),
    })
}

impl Props {
    pub fn kind(&self) -> Kind {
        match self {
            Props::Ca(_) => Kind::Ca,
            Props::PgCluster(_) => Kind::PgCluster,
            Props::PgDatabase(_) => Kind::PgDatabase,
            Props::RedisServer(_) => Kind::RedisServer,
            Props::RedisUser(_) => Kind::RedisUser,
            Props::OdooTemplate(_) => Kind::OdooTemplate,
            Props::OdooEnv(_) => Kind::OdooEnv,
            Props::Ingress(_) => Kind::Ingress,
        }
    }

    /// Reads the JSON a plan or record holds for resource `id` of `kind`.
    pub fn decode(kind: Kind, id: &str, props: &Value) -> Result<Props, ModelError> {
        Ok(match kind {
            Kind::Ca => Props::Ca(decode_as(id, props)?),
            Kind::PgCluster => Props::PgCluster(decode_as(id, props)?),
            Kind::PgDatabase => Props::PgDatabase(decode_as(id, props)?),
            Kind::RedisServer => Props::RedisServer(decode_as(id, props)?),
            Kind::RedisUser => Props::RedisUser(decode_as(id, props)?),
            Kind::OdooTemplate => Props::OdooTemplate(decode_as(id, props)?),
            Kind::OdooEnv => Props::OdooEnv(decode_as(id, props)?),
            Kind::Ingress => Props::Ingress(decode_as(id, props)?),
        })
    }

    pub fn to_value(&self) -> Value {
        let v = match self {
            Props::Ca(p) => serde_json::to_value(p),
            Props::PgCluster(p) => serde_json::to_value(p),
            Props::PgDatabase(p) => serde_json::to_value(p),
            Props::RedisServer(p) => serde_json::to_value(p),
            Props::RedisUser(p) => serde_json::to_value(p),
            Props::OdooTemplate(p) => serde_json::to_value(p),
            Props::OdooEnv(p) => serde_json::to_value(p),
            Props::Ingress(p) => serde_json::to_value(p),
        };
        v.expect("plain structs of strings, numbers and maps with string keys serialize")
    }

    /// The ids of the resources this one cannot exist without: created
    /// before it, deleted after it.
    pub fn needs(&self) -> Vec<String> {
        match self {
            Props::Ca(_) => vec![],
            // Servers present certificates the CA signs.
            Props::PgCluster(_) | Props::RedisServer(_) => vec![ca_id()],
            Props::PgDatabase(p) => vec![p.cluster.clone()],
            Props::RedisUser(p) => vec![p.server.clone()],
            Props::OdooTemplate(p) => vec![p.cluster.clone()],
            Props::OdooEnv(p) => vec![
                pg_database_id(&p.tenant, &p.environment),
                redis_user_id(&p.tenant, &p.environment),
                p.template.clone(),
            ],
            // Certificates from the CA; upstreams are the environments' ports.
            Props::Ingress(p) => std::iter::once(ca_id())
                .chain(p.routes.iter().map(|r| r.env.clone()))
                .collect(),
        }
    }

    /// The tenant the resource exists for, if it belongs to one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Props::PgDatabase(p) => Some(&p.tenant),
            Props::RedisUser(p) => Some(&p.tenant),
            Props::OdooEnv(p) => Some(&p.tenant),
            _ => None,
        }
    }
}

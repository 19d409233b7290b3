//! What careplane allocated or observed for a recorded resource (ports,
//! directories, uids, role names), read back from the state store's
//! `observed` JSON. Each kind's fields are listed once here; a missing or
//! mistyped one is a [`ModelError`] naming the resource and the field,
//! never an empty string or a zero.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::{Kind, ModelError};

/// A PostgreSQL cluster or Redis server: where it lives and listens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerObserved {
    pub port: u16,
    pub root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PgDatabaseObserved {
    /// The opaque role name; absent in records made before role names were
    /// opaque, until their next apply (the role is `props.role` then).
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OdooTemplateObserved {
    pub root: PathBuf,
    /// Its own uid when careplane runs as root.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Initialized and closed to connections.
    #[serde(default)]
    pub sealed: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OdooEnvObserved {
    pub root: PathBuf,
    pub http_port: u16,
    pub gevent_port: u16,
    #[serde(default)]
    pub uid: Option<u32>,
    /// Where to log in; written once the environment answered.
    #[serde(default)]
    pub url: Option<String>,
    /// Digest of the odoo.conf files careplane wrote (absent before
    /// `status` compared them).
    #[serde(default)]
    pub config_digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressObserved {
    pub root: PathBuf,
    pub https_port: u16,
    pub http_port: u16,
    pub admin_port: u16,
    /// The proxy process (absent until first started).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The configuration generation last written.
    #[serde(default)]
    pub generation: u64,
}

/// The typed `observed` part of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Ca,
    Server(ServerObserved),
    PgDatabase(PgDatabaseObserved),
    RedisUser,
    OdooTemplate(OdooTemplateObserved),
    OdooEnv(OdooEnvObserved),
    Ingress(IngressObserved),
}

fn decode_as<T: DeserializeOwned>(id: &str, observed: &Value) -> Result<T, ModelError> {
    T::deserialize(observed).map_err(|e| ModelError {
        id: id.to_string(),
        part: "observed",
        message: e.to_string(),
    })
}

impl Observed {
    pub fn decode(kind: Kind, id: &str, observed: &Value) -> Result<Observed, ModelError> {
        Ok(match kind {
            Kind::Ca => Observed::Ca,
            Kind::PgCluster | Kind::RedisServer => Observed::Server(decode_as(id, observed)?),
            Kind::PgDatabase => Observed::PgDatabase(decode_as(id, observed)?),
            Kind::RedisUser => Observed::RedisUser,
            Kind::OdooTemplate => Observed::OdooTemplate(decode_as(id, observed)?),
            Kind::OdooEnv => Observed::OdooEnv(decode_as(id, observed)?),
            Kind::Ingress => Observed::Ingress(decode_as(id, observed)?),
        })
    }

    /// [`Self::decode`] for a kind known to be a server.
    pub fn server(id: &str, observed: &Value) -> Result<ServerObserved, ModelError> {
        decode_as(id, observed)
    }

    pub fn odoo_env(id: &str, observed: &Value) -> Result<OdooEnvObserved, ModelError> {
        decode_as(id, observed)
    }

    pub fn odoo_template(id: &str, observed: &Value) -> Result<OdooTemplateObserved, ModelError> {
        decode_as(id, observed)
    }

    pub fn ingress(id: &str, observed: &Value) -> Result<IngressObserved, ModelError> {
        decode_as(id, observed)
    }

    pub fn pg_database(id: &str, observed: &Value) -> Result<PgDatabaseObserved, ModelError> {
        decode_as(id, observed)
    }
}

//! careplane's typed resources.
//!
//! A resource is plain data: an id that says what and where
//! (`pg-database/stmarys/production`), a [`Kind`], and the non-secret
//! properties that decide whether it must change. Each kind has one struct
//! ([`CaProps`], [`PgClusterProps`], …) gathered in [`Props`]; [`desired`]
//! builds them from specs. The engine plans and records them as JSON (the
//! state store keeps JSON bags), and reads recorded JSON back through
//! [`Props::decode`] and [`Observed`]: the one boundary where a missing or
//! mistyped field becomes an error naming the resource and the field.
//!
//! Ports, paths and passwords are not desired properties: careplane
//! allocates them once and records them (see [`Observed`]).
//!
//! This crate depends on the spec crate only; it does no I/O.

mod desired;
pub mod ingress_policy;
mod kind;
mod observed;
mod props;

pub use desired::{desired, kind_defaults, ODOO_CONFIG_FORMAT};
pub use kind::Kind;
pub use observed::{
    IngressObserved, Observed, OdooEnvObserved, OdooTemplateObserved, PgDatabaseObserved,
    ServerObserved,
};
pub use props::{
    CaProps, IngressCertificate, IngressProps, IngressRoute, Limits, OdooEnvProps,
    OdooTemplateProps, PgClusterProps, PgDatabaseProps, Props, RedisServerProps, RedisUserProps,
};

use serde_json::Value;

// The naming rules live in the spec crate, whose validation refuses specs
// that would make two environments share a name (see `careplane_spec::names`).
pub use careplane_spec::names::{env_db_name, env_key_prefix, pg_scope, redis_scope, SHARED};

/// One thing careplane must hold, in the form it is planned and recorded:
/// `props` is the JSON of its kind's struct (see [`Props`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: String,
    pub kind: Kind,
    /// Non-secret properties; a difference here is a change.
    pub props: Value,
}

impl Resource {
    pub fn new(id: String, props: Props) -> Resource {
        Resource {
            id,
            kind: props.kind(),
            props: props.to_value(),
        }
    }

    /// The typed properties; an error names the resource and the field.
    pub fn typed(&self) -> Result<Props, ModelError> {
        Props::decode(self.kind, &self.id, &self.props)
    }
}

/// A stored or planned resource that does not have the shape its kind needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {id}: {part} {message} (state written by another careplane version, or edited by hand?)")]
pub struct ModelError {
    pub id: String,
    /// `props` or `observed`.
    pub part: &'static str,
    /// serde's message, which names the field (e.g. "missing field `port`").
    pub message: String,
}

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
/// The platform's one ingress proxy.
pub fn ingress_id() -> String {
    "ingress/platform".to_string()
}

pub fn odoo_template_id(scope: &str, database: &str) -> String {
    format!("odoo-template/{scope}/{database}")
}

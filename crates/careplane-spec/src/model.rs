//! The typed spec kinds.
//!
//! Field names are camelCase in YAML. Every struct rejects unknown fields
//! (reported with a "did you mean"), and optional sections default so that
//! later features can add fields without breaking existing specs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "careplane.dev/v1alpha1";

/// `metadata` of every document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Metadata {
    /// DNS-label safe name (lowercase letters, digits, '-'): it becomes
    /// database, role, namespace and host names.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Where a platform runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Real PostgreSQL, Redis and Odoo processes on this machine, started and
    /// supervised by careplane.
    #[default]
    Local,
    /// Rendered manifests applied to a Kubernetes cluster (not implemented yet).
    Kubernetes,
}

/// `kind: Platform` — one per spec set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PlatformSpec {
    #[serde(default)]
    pub target: Target,
    /// Where careplane keeps state, keys, clusters and logs. Relative paths are
    /// resolved against the directory of the file that declares the platform.
    pub data_dir: PathBuf,
    /// Unprivileged system user that runs PostgreSQL (and Redis) when careplane
    /// itself runs as root. PostgreSQL refuses to run as root. Default:
    /// `postgres` when running as root, ignored otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    #[serde(default)]
    pub postgres: PostgresSettings,
    #[serde(default)]
    pub redis: RedisSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odoo: Option<OdooSettings>,
    #[serde(default)]
    pub defaults: PlatformDefaults,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PostgresSettings {
    /// Directory holding `initdb`, `pg_ctl` and `postgres`. Default: `pg_config
    /// --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    /// Extra `postgresql.conf` settings applied to every cluster. Settings that
    /// careplane enforces for hardening (listen_addresses, ssl, password
    /// encryption, hba) cannot be overridden here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

/// What a Redis server is for; decides persistence and eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RedisRole {
    /// Cache: no persistence, keys evicted when memory is full. Must not hold PHI.
    #[default]
    Cache,
    /// Sessions/queues: append-only persistence, only keys with a TTL evicted.
    Session,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RedisSettings {
    /// Path of `redis-server`. Default: found on PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<PathBuf>,
    #[serde(default)]
    pub role: RedisRole,
    /// `maxmemory` of each Redis server, e.g. `256mb`. Default `256mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<String>,
}

/// The Odoo installation (used from M4 on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct OdooSettings {
    /// `odoo-bin` (or a stand-in), by path.
    pub command: PathBuf,
    /// Interpreter to run `command` with, e.g. a virtualenv's python.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PathBuf>,
    /// Odoo major version: 16, 17, 18 or 19.
    pub version: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons_paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PlatformDefaults {
    /// Service tier for tenants that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// Modules for tenants that list none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
}

/// `kind: ServiceTier` — the promise made to tenants on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ServiceTierSpec {
    /// Monthly availability target in percent, e.g. 99.9.
    pub availability: f64,
    /// Recovery time objective, e.g. `4h`, `30m`.
    pub rto: String,
    /// Recovery point objective, e.g. `15m`, `24h`.
    pub rpo: String,
    /// When support answers, e.g. `24x7` or `business-hours`.
    pub support_hours: String,
    /// Name of a `BackupPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_policy: Option<String>,
}

/// `kind: BackupPolicy` — schedule and retention. Validated and referenced
/// today; executed once backups (M8) land.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BackupPolicySpec {
    /// Cron expression in UTC, e.g. `0 2 * * *`.
    pub schedule: String,
    #[serde(default)]
    pub retention: Retention,
}

/// Grandfather-father-son retention counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
}

/// How much a tenant shares with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Tenancy {
    /// A database and role per environment on the platform's shared cluster.
    #[default]
    Shared,
    /// A PostgreSQL cluster of its own; shared Redis.
    DedicatedDb,
    /// Its own PostgreSQL cluster, Redis server and Odoo processes.
    DedicatedEnv,
}

impl Tenancy {
    pub fn as_str(self) -> &'static str {
        match self {
            Tenancy::Shared => "shared",
            Tenancy::DedicatedDb => "dedicated-db",
            Tenancy::DedicatedEnv => "dedicated-env",
        }
    }
}

/// What an environment is for; sets defaults (production: more workers, strict
/// limits; dev: one worker) and guards (production needs `--confirm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EnvironmentKind {
    Dev,
    Test,
    Uat,
    Training,
    Staging,
    Production,
    Dr,
}

impl EnvironmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentKind::Dev => "dev",
            EnvironmentKind::Test => "test",
            EnvironmentKind::Uat => "uat",
            EnvironmentKind::Training => "training",
            EnvironmentKind::Staging => "staging",
            EnvironmentKind::Production => "production",
            EnvironmentKind::Dr => "dr",
        }
    }

    /// Environments whose loss hurts patients or the business.
    pub fn is_production_like(self) -> bool {
        matches!(self, EnvironmentKind::Production | EnvironmentKind::Dr)
    }
}

/// Resources granted to a tenant or one of its environments. Unset fields fall
/// back to the tenant's sizing, then to the environment kind's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Sizing {
    /// Odoo HTTP workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Maximum PostgreSQL connections of the environment's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_connections: Option<u32>,
    /// Memory of one Odoo worker, e.g. `2Gi` (used from M4 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_memory: Option<String>,
}

/// One environment of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Environment {
    /// DNS-label safe, unique within the tenant.
    pub name: String,
    pub kind: EnvironmentKind,
    /// Modules in addition to the tenant's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizing: Option<Sizing>,
}

/// `kind: Tenant` — an organization and its environments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct TenantSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default)]
    pub tenancy: Tenancy,
    /// Name of a `ServiceTier`; default from the platform's `defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizing: Option<Sizing>,
    pub environments: Vec<Environment>,
}

/// A parsed document: metadata plus the typed spec of its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Document<S> {
    pub metadata: Metadata,
    pub spec: S,
    /// Where the document came from, for messages.
    pub source: Source,
}

/// The file and line a document starts at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub file: PathBuf,
    pub line: usize,
}

/// Everything in a run's `-f` files, validated: exactly one platform, and
/// every reference resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecSet {
    pub platform: Document<PlatformSpec>,
    pub service_tiers: Vec<Document<ServiceTierSpec>>,
    pub backup_policies: Vec<Document<BackupPolicySpec>>,
    pub tenants: Vec<Document<TenantSpec>>,
}

impl SpecSet {
    pub fn tenant(&self, name: &str) -> Option<&Document<TenantSpec>> {
        self.tenants.iter().find(|t| t.metadata.name == name)
    }

    pub fn service_tier(&self, name: &str) -> Option<&Document<ServiceTierSpec>> {
        self.service_tiers.iter().find(|t| t.metadata.name == name)
    }

    /// The platform's data directory, resolved against its spec file.
    pub fn data_dir(&self) -> PathBuf {
        let dir = &self.platform.spec.data_dir;
        if dir.is_absolute() {
            return dir.clone();
        }
        let base = self
            .platform
            .source
            .file
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        base.join(dir)
    }
}

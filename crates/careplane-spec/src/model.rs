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

/// Names become database, role, host and namespace names, so they are held to
/// the strictest of those: an RFC 1123 DNS label.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Tenant names are joined with environment names into PostgreSQL identifiers
/// `<tenant>-<env>`, which PostgreSQL truncates at 63 bytes; 40 + 1 + 20 fits.
pub const MAX_TENANT_NAME: usize = 40;

/// See [`MAX_TENANT_NAME`].
pub const MAX_ENVIRONMENT_NAME: usize = 20;

/// Longest name of any other kind: the DNS label limit.
pub const MAX_NAME: usize = 63;

/// Odoo technical module names.
pub const MODULE_PATTERN: &str = "^[a-z0-9_]+$";

/// Durations such as `30s`, `15m`, `4h`, `1d` or `1h30m` (see [`crate::parse_duration`]).
pub const DURATION_PATTERN: &str = "^([0-9]+[smhd])+$";

/// Tenant names nobody may take: the shared cluster and server's scope, and
/// names PostgreSQL or careplane use (see [`crate::names::reserved_tenant_name`]).
pub const RESERVED_TENANT_NAMES: &[&str] = &["shared", "tpl", "careplane", "postgres"];

/// Tenant name prefixes nobody may take: Odoo templates (`tpl-`), careplane's
/// own users (`careplane-`) and PostgreSQL's template databases (`template`).
pub const RESERVED_TENANT_PREFIXES: &[&str] = &["tpl-", "careplane-", "template"];

/// [`RESERVED_TENANT_NAMES`] and [`RESERVED_TENANT_PREFIXES`] as one regular
/// expression, for the JSON Schema.
pub const RESERVED_TENANT_PATTERN: &str =
    "^(shared|tpl|careplane|postgres)$|^(tpl-|careplane-|template)";

/// PostgreSQL settings careplane sets to harden every cluster (or that would
/// let a setting escape its managed configuration); `postgres.settings` may
/// not set them, nor any `ssl_*` (see [`crate::is_protected_pg_setting`]).
/// The same list as `careplane-local`'s `pg::PROTECTED_SETTINGS`, which
/// refuses them again when writing the configuration.
pub const PROTECTED_PG_SETTINGS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "unix_socket_permissions",
    "unix_socket_group",
    "password_encryption",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "ssl_crl_file",
    "ssl_crl_dir",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "ssl_passphrase_command",
    "ssl_passphrase_command_supports_reload",
    "hba_file",
    "ident_file",
    "config_file",
    "data_directory",
    "external_pid_file",
    "krb_server_keyfile",
    "log_connections",
    "log_disconnections",
    "log_statement",
    "logging_collector",
    "log_directory",
    "log_filename",
    "log_file_mode",
    "log_destination",
    "include",
    "include_if_exists",
    "include_dir",
    // Data integrity: healthcare data must survive crashes and detect corruption.
    "fsync",
    "full_page_writes",
    "ignore_checksum_failure",
    "zero_damaged_pages",
    "allow_system_table_mods",
];

/// Odoo major versions careplane knows how to run.
pub const ODOO_VERSIONS: std::ops::RangeInclusive<u32> = 16..=19;

/// `metadata` of every document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Metadata {
    /// DNS-label safe name (lowercase letters, digits, '-'): it becomes
    /// database, role, namespace and host names.
    #[schemars(pattern(NAME_PATTERN), length(min = 1, max = 63))]
    pub name: String,
    /// Free-form key/value pairs for people and tools; careplane does not
    /// interpret them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form notes; careplane does not interpret them.
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
    /// `local` (default) or `kubernetes`.
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
    /// The PostgreSQL clusters careplane runs (shared and dedicated).
    #[serde(default)]
    pub postgres: PostgresSettings,
    /// The Redis servers careplane runs (shared and dedicated).
    #[serde(default)]
    pub redis: RedisSettings,
    /// The Odoo installation; absent until Odoo is run (M4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odoo: Option<OdooSettings>,
    /// The HTTPS reverse proxy in front of every Odoo environment
    /// (`https://<env>.<tenant>.<domain>:<httpsPort>`). Absent: no proxy,
    /// environments answer on their loopback ports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSettings>,
    /// What only the Kubernetes target reads (issuer, storage classes,
    /// backups' object store, …); see `docs/kubernetes.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed: most platforms leave it out, and documents of every kind share
    // one enum.
    pub kubernetes: Option<Box<crate::kubernetes::KubernetesSettings>>,
    /// Where `careplane serve` sends incident notifications: named channels
    /// that service tiers' `slo.escalation` steps refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<NotificationSettings>,
    /// What tenants get when they leave a field unset.
    #[serde(default)]
    pub defaults: PlatformDefaults,
}

/// Notification channels of a platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct NotificationSettings {
    /// Named channels; names are unique.
    #[serde(default)]
    pub channels: Vec<NotificationChannel>,
}

/// One channel: exactly one of `webhook`, `alertmanager` and `smtp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct NotificationChannel {
    /// What escalation steps call it, e.g. `on-call`.
    #[schemars(pattern(NAME_PATTERN), length(min = 1, max = 63))]
    pub name: String,
    /// `http(s)://…`: receives a JSON POST per notification. Put no token in
    /// the URL; it is shown in `validate` errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Base URL of an Alertmanager, e.g. `http://127.0.0.1:9093`: receives the
    /// incident as an alert on `/api/v2/alerts`, resolved when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<String>,
    /// E-mail over SMTP: one plain-text message per notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpChannel>,
}

/// How an SMTP channel's connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (default;
    /// port 587 unless given).
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS", port 465 unless given).
    Implicit,
    /// No TLS: only for a relay on loopback (port 25 unless given).
    None,
}

/// An e-mail channel. The password is never in the spec: `passwordEnv` names
/// the environment variable of `careplane serve` that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SmtpChannel {
    /// `host` or `host:port` of the relay (`[::1]:25` for IPv6).
    pub server: String,
    /// `starttls` (default), `implicit` or `none` (loopback relays only).
    #[serde(default)]
    pub tls: SmtpTls,
    /// Sender address, e.g. `careplane@example.org`.
    pub from: String,
    /// Recipient addresses (at least one).
    pub to: Vec<String>,
    /// User to authenticate as (AUTH PLAIN/LOGIN); requires `passwordEnv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Name of the environment variable holding the password, e.g.
    /// `CAREPLANE_SMTP_PASSWORD`; requires `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Absolute path of a PEM file of the CA certificates to trust for this relay
    /// *instead of* the public (Mozilla) roots: for a hospital's internal relay whose
    /// certificate comes from its own CA. Read when a message is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl SmtpChannel {
    /// Host and port of `server`, the port defaulting by `tls`; `None` when
    /// `server` is not `host[:port]`.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let default = match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        };
        let s = self.server.as_str();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            h.parse::<std::net::Ipv6Addr>().ok()?;
            match after {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':')?)),
            }
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !host_ok {
            return None;
        }
        let port = match port {
            None => default,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
        };
        Some((host.to_string(), port))
    }

    /// Whether the relay is on this machine: `localhost`, 127.0.0.0/8 or `::1`.
    pub fn is_loopback(&self) -> bool {
        self.host_port().is_some_and(|(h, _)| {
            h == "localhost"
                || h.ends_with(".localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    }
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
    /// `cache` (default; never holds PHI) or `session`.
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
    #[schemars(range(min = 16, max = 19))]
    pub version: u32,
    /// Directories with extra addons, searched before Odoo's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons_paths: Vec<PathBuf>,
    /// Numeric uids for Odoo processes when careplane runs as root: each
    /// environment and template gets one of its own (gid = uid), without a
    /// passwd entry, so one environment's Odoo cannot read another's files.
    /// Default: 100000 uids from 1900000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uids: Option<UidRange>,
}

/// Where the ingress proxy listens and which domain it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct IngressSettings {
    /// Environments are `<env>.<tenant>.<domain>`. Default:
    /// `careplane.localhost`, which browsers resolve to loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// HTTPS port. Default: a free port allocated at the first apply and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub https_port: Option<u16>,
    /// Port of the plain-HTTP listener that only redirects to HTTPS.
    /// Default: a free port allocated at the first apply and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub http_port: Option<u16>,
    /// Address to listen on. Default: `127.0.0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::IpAddr>,
    /// Path prefixes (e.g. `/odoo/settings`) served only to `adminAllow`;
    /// everyone else gets 403. Odoo's database manager is blocked for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_paths: Vec<String>,
    /// Client addresses or CIDRs (`10.20.0.0/16`) that may reach `adminPaths`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_allow: Vec<String>,
    /// Certificates of your own for some hosts (e.g. from your public CA),
    /// instead of ones from the platform CA. Files are read at apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<HostCertificate>,
}

/// A certificate of the operator's own for one ingress host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct HostCertificate {
    /// The environment's host name, `<env>.<tenant>.<domain>`.
    pub host: String,
    /// PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The default ingress domain (see [`IngressSettings::domain`]).
pub const DEFAULT_INGRESS_DOMAIN: &str = "careplane.localhost";

/// A range of numeric uids careplane may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct UidRange {
    /// The first uid (at least 1000: below are system accounts).
    #[schemars(range(min = 1000))]
    pub first: u32,
    /// How many uids from `first` on.
    #[schemars(range(min = 1))]
    pub count: u32,
}

impl UidRange {
    /// Far from Debian's system (0–999), user (1000–59999) and reserved
    /// (60000–65535) ranges, systemd's dynamic users (61184–65519) and the
    /// usual subuid blocks (100000 and up, 65536 each).
    pub const DEFAULT: UidRange = UidRange {
        first: 1_900_000_000,
        count: 100_000,
    };
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
    #[schemars(inner(pattern(MODULE_PATTERN)))]
    pub modules: Vec<String>,
}

/// `kind: ServiceTier` — the promise made to tenants on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ServiceTierSpec {
    /// Monthly availability target in percent, e.g. 99.9.
    #[schemars(extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 100))]
    pub availability: f64,
    /// Recovery time objective, e.g. `4h`, `30m`.
    #[schemars(pattern(DURATION_PATTERN))]
    pub rto: String,
    /// Recovery point objective, e.g. `15m`, `24h`.
    #[schemars(pattern(DURATION_PATTERN))]
    pub rpo: String,
    /// When support answers, e.g. `24x7` or `business-hours`.
    pub support_hours: String,
    /// Name of a `BackupPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_policy: Option<String>,
    /// How `careplane serve` measures the availability objective; defaults when absent
    /// (docs/design/0012).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloSpec>,
}

/// The measured side of a service tier (issue 17): what a bad minute is, response and
/// restore targets per severity, and the service-credit table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SloSpec {
    /// A minute is bad once the critical journey has failed this many consecutive
    /// minutes (default 2); the same run opens an incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub bad_minute_after: Option<u32>,
    /// Per severity; severities not listed keep their defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<SeverityTargetSpec>,
    /// Replaces the default table (10 % below the objective, 25 % below 99, 50 % below 95).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credits: Vec<CreditSpec>,
    /// Who is notified of an incident, per severity. Default: every channel
    /// of the platform when the incident opens, for every severity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalation: Vec<EscalationSpec>,
}

/// Escalation of one severity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct EscalationSpec {
    /// `P1` to `P4`.
    #[schemars(pattern(r"^P[1-4]$"))]
    pub severity: String,
    /// In increasing `afterMinutes`; the first is normally 0 (on opening).
    #[schemars(length(min = 1))]
    pub steps: Vec<EscalationStepSpec>,
    /// While unacknowledged, notify the latest step's channels again this often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_minutes: Option<u32>,
    /// An incident not restored this long after it started notifies `executive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executive_after_minutes: Option<u32>,
    /// Channels for the executive notification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executive: Vec<String>,
}

/// After `afterMinutes` unacknowledged, notify these channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct EscalationStepSpec {
    pub after_minutes: u32,
    /// Names of the Platform's `notifications.channels`.
    #[schemars(length(min = 1))]
    pub notify: Vec<String>,
}

/// Minutes to acknowledge and to restore an incident of one severity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SeverityTargetSpec {
    /// `P1` (production down) to `P4`.
    #[schemars(pattern(r"^P[1-4]$"))]
    pub severity: String,
    pub respond_minutes: u32,
    pub restore_minutes: u32,
}

/// Below `below` percent availability in a month, `credit` percent of the monthly fee.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct CreditSpec {
    pub below: f64,
    pub credit: f64,
}

/// `kind: BackupPolicy` — where a tenant's backups go, when they are taken,
/// how long they are kept and who can read them (docs/design/0010). Every
/// field but `schedule` has a default, so a policy of one line backs up into
/// `<dataDir>/backups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BackupPolicySpec {
    /// Cron expression in UTC, e.g. `0 2 * * *`.
    #[schemars(pattern(r"^\s*\S+(\s+\S+){4}\s*$"))]
    pub schedule: String,
    /// How many backups to keep; at least one count (or `keepLast`) must be above 0.
    #[serde(default)]
    pub retention: Retention,
    /// The repository: `file:///absolute/path` or `s3://bucket/prefix`; each
    /// tenant gets its own repository below it (`tenants/<tenant>`), each
    /// cluster's WAL and base backups theirs (`clusters/<scope>`). S3
    /// credentials come from the environment (`AWS_ACCESS_KEY_ID`, …), never
    /// from the spec. Default: `file://<dataDir>/backups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// S3 endpoint for S3-compatible stores, e.g. `https://s3.example.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region. Default: the environment's (`AWS_REGION`), else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Keep at least the newest K backups whatever their age. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep what point-in-time recovery to any instant this far back needs,
    /// e.g. `7d`. Default `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub pitr_window: Option<String>,
    /// age public keys (`age1…`) every backup is also encrypted to, so that
    /// the customer can read them with their own private key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Whether careplane's own age key is a recipient too. Default `true`.
    /// `false`: the tenant's backups, and the WAL and base backups of its
    /// dedicated cluster, are encrypted to `recipients` only, so the
    /// customer holds the only private key. careplane still backs up, lists,
    /// verifies hashes and signatures, prunes and collects garbage (none of
    /// that decrypts); restore, `verify --deep` and `verify --restore` need
    /// the customer's identity (`--identity FILE`), and scheduled restore
    /// verification is recorded as skipped. Needs at least one recipient,
    /// and is refused for a shared tenant (its database is backed up in the
    /// shared cluster's repository, which careplane's key reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub careplane_key: Option<bool>,
    /// zstd level, 1–19. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 19))]
    pub compression_level: Option<i32>,
    /// Cron expression in UTC for verifying the newest backup (`backup
    /// run-due`). Default: no scheduled verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^\s*\S+(\s+\S+){4}\s*$"))]
    pub verify: Option<String>,
    /// Makes every backup undeletable and unchangeable for `days` days after
    /// it is taken, with S3 Object Lock (docs/design/0015), e.g.
    /// `{mode: compliance, days: 30}`. Only for `s3://` repositories whose
    /// bucket has Object Lock enabled (checked when the repository is
    /// opened). Objects later backups reuse (chunks) are locked for twice
    /// `days`. Pruning leaves a backup whose lock has not ended and says
    /// until when; a later prune deletes it. Default: no lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutability: Option<Immutability>,
}

/// S3 Object Lock retention of a [`BackupPolicySpec`]'s backups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Immutability {
    /// `compliance`: nobody can delete or overwrite a locked backup before
    /// its date, not even the bucket owner's root user. `governance`: users
    /// granted `s3:BypassGovernanceRetention` still can.
    pub mode: LockMode,
    /// How long each backup stays locked after it is taken, 1 to 36500.
    #[schemars(range(min = 1, max = 36500))]
    pub days: u32,
}

/// [`Immutability::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Governance,
    Compliance,
}

/// [`BackupPolicySpec::keep_last`]'s default.
pub const DEFAULT_BACKUP_KEEP_LAST: u32 = 1;
/// [`BackupPolicySpec::pitr_window`]'s default.
pub const DEFAULT_PITR_WINDOW: &str = "7d";
/// [`BackupPolicySpec::compression_level`]'s default (zstd's and pgBackRest's).
pub const DEFAULT_BACKUP_COMPRESSION: i32 = 3;

/// Grandfather-father-son retention counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Retention {
    /// Daily backups kept.
    #[serde(default)]
    pub daily: u32,
    /// Weekly backups kept.
    #[serde(default)]
    pub weekly: u32,
    /// Monthly backups kept.
    #[serde(default)]
    pub monthly: u32,
    /// Yearly backups kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub yearly: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    #[schemars(range(min = 1))]
    pub workers: Option<u32>,
    /// Maximum PostgreSQL connections of the environment's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
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
    #[schemars(pattern(NAME_PATTERN), length(min = 1, max = 20))]
    pub name: String,
    /// What the environment is for: dev, test, uat, training, staging,
    /// production or dr.
    pub kind: EnvironmentKind,
    /// Modules in addition to the tenant's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(MODULE_PATTERN)))]
    pub modules: Vec<String>,
    /// Overrides the tenant's sizing for this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizing: Option<Sizing>,
    /// Addons directories in addition to the platform's and the tenant's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons_paths: Vec<PathBuf>,
}

/// `kind: Tenant` — an organization and its environments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct TenantSpec {
    /// Human-readable name, e.g. "St Mary's Hospital".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `shared` (default), `dedicated-db` or `dedicated-env`.
    #[serde(default)]
    pub tenancy: Tenancy,
    /// Name of a `ServiceTier`; default from the platform's `defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// Odoo modules installed in every environment; default from the
    /// platform's `defaults`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(MODULE_PATTERN)))]
    pub modules: Vec<String>,
    /// Sizing of every environment, unless the environment overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizing: Option<Sizing>,
    /// Addons directories for every environment of the tenant, in addition
    /// to the platform's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons_paths: Vec<PathBuf>,
    /// At least one; names unique within the tenant.
    #[schemars(length(min = 1))]
    pub environments: Vec<Environment>,
    /// IANA time zone of the tenant, e.g. `Europe/Berlin`: its SLA months and
    /// its maintenance windows are counted in it. Default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// [`TenantSpec::time_zone`]'s default.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

impl TenantSpec {
    /// The tenant's time zone name, `UTC` when unset.
    pub fn zone(&self) -> &str {
        self.time_zone.as_deref().unwrap_or(DEFAULT_TIME_ZONE)
    }
}

/// `kind: MaintenanceWindow` — a recurring or one-off window of one tenant, in
/// the tenant's time zone (docs/design/0014). Downtime inside an approved
/// maintenance window is excluded from availability and reported apart; a
/// freeze excludes nothing, and `apply` refuses changes to the environments it
/// covers while it lasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct MaintenanceWindowSpec {
    /// The tenant (`metadata.name` of a Tenant).
    pub tenant: String,
    /// `maintenance` or `freeze`.
    #[serde(rename = "type")]
    pub window_type: WindowType,
    /// Environments of the tenant it covers. Default: every environment for
    /// maintenance, the production and DR ones for a freeze.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Every listed weekday (exactly one of `weekly` and `once`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<WeeklyWindow>,
    /// Once (exactly one of `weekly` and `once`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once: Option<OnceWindow>,
    /// Who approved the maintenance window in advance (a change ticket, a
    /// person). An unapproved maintenance window excludes no downtime. Not
    /// for freezes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Why, for people and reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a [`MaintenanceWindowSpec`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WindowType {
    /// Planned downtime; excluded from availability when approved.
    Maintenance,
    /// No changes to the covered environments (month-end close, audits,
    /// clinical peaks).
    Freeze,
}

impl WindowType {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowType::Maintenance => "maintenance",
            WindowType::Freeze => "freeze",
        }
    }
}

/// A weekly window: from `start` to `end` (`HH:MM`, local) on each of `days`;
/// an `end` at or before `start` ends the next day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct WeeklyWindow {
    /// Lowercase English weekday names, e.g. `[saturday, sunday]`.
    #[schemars(length(min = 1))]
    pub days: Vec<String>,
    /// `HH:MM`, local time.
    #[schemars(pattern(r"^[0-9]{2}:[0-9]{2}$"))]
    pub start: String,
    /// `HH:MM`, local time.
    #[schemars(pattern(r"^[0-9]{2}:[0-9]{2}$"))]
    pub end: String,
}

/// A one-off window from `start` to `end` (`YYYY-MM-DDTHH:MM`, local).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct OnceWindow {
    /// `YYYY-MM-DDTHH:MM`, local time.
    #[schemars(pattern(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}$"))]
    pub start: String,
    /// `YYYY-MM-DDTHH:MM`, local time; after `start`.
    #[schemars(pattern(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}$"))]
    pub end: String,
}

/// Weekday names a [`WeeklyWindow`] accepts.
pub const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The document kinds, as written in `kind:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// [`PlatformSpec`]
    Platform,
    /// [`ServiceTierSpec`]
    ServiceTier,
    /// [`BackupPolicySpec`]
    BackupPolicy,
    /// [`TenantSpec`]
    Tenant,
    /// [`MaintenanceWindowSpec`]
    MaintenanceWindow,
}

impl Kind {
    /// Every kind, in the order messages list them.
    pub const ALL: [Kind; 5] = [
        Kind::Platform,
        Kind::ServiceTier,
        Kind::BackupPolicy,
        Kind::Tenant,
        Kind::MaintenanceWindow,
    ];

    /// The name as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Platform => "Platform",
            Kind::ServiceTier => "ServiceTier",
            Kind::BackupPolicy => "BackupPolicy",
            Kind::Tenant => "Tenant",
            Kind::MaintenanceWindow => "MaintenanceWindow",
        }
    }

    /// The kind named exactly `name` (case matters, as in Kubernetes).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Longest `metadata.name` of this kind; see [`MAX_TENANT_NAME`].
    pub fn max_name_len(self) -> usize {
        match self {
            Kind::Tenant => MAX_TENANT_NAME,
            _ => MAX_NAME,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One document of any kind, as it comes out of a file before the documents
/// are sorted into a [`SpecSet`].
// A platform has one Platform document and a handful of others, each parsed
// once: boxing the large variant would buy nothing but noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AnyDocument {
    /// `kind: Platform`
    Platform(Document<PlatformSpec>),
    /// `kind: ServiceTier`
    ServiceTier(Document<ServiceTierSpec>),
    /// `kind: BackupPolicy`
    BackupPolicy(Document<BackupPolicySpec>),
    /// `kind: Tenant`
    Tenant(Document<TenantSpec>),
    /// `kind: MaintenanceWindow`
    MaintenanceWindow(Document<MaintenanceWindowSpec>),
}

impl AnyDocument {
    /// Which kind of document this is.
    pub fn kind(&self) -> Kind {
        match self {
            AnyDocument::Platform(_) => Kind::Platform,
            AnyDocument::ServiceTier(_) => Kind::ServiceTier,
            AnyDocument::BackupPolicy(_) => Kind::BackupPolicy,
            AnyDocument::Tenant(_) => Kind::Tenant,
            AnyDocument::MaintenanceWindow(_) => Kind::MaintenanceWindow,
        }
    }

    /// The document's `metadata`, whatever its kind.
    pub fn metadata(&self) -> &Metadata {
        match self {
            AnyDocument::Platform(d) => &d.metadata,
            AnyDocument::ServiceTier(d) => &d.metadata,
            AnyDocument::BackupPolicy(d) => &d.metadata,
            AnyDocument::Tenant(d) => &d.metadata,
            AnyDocument::MaintenanceWindow(d) => &d.metadata,
        }
    }

    /// Where the document is, for messages.
    pub fn source(&self) -> &Source {
        match self {
            AnyDocument::Platform(d) => &d.source,
            AnyDocument::ServiceTier(d) => &d.source,
            AnyDocument::BackupPolicy(d) => &d.source,
            AnyDocument::Tenant(d) => &d.source,
            AnyDocument::MaintenanceWindow(d) => &d.source,
        }
    }
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
    /// Every `MaintenanceWindow`, in file order.
    pub maintenance_windows: Vec<Document<MaintenanceWindowSpec>>,
}

impl SpecSet {
    /// The maintenance windows and freezes covering `tenant`'s environment
    /// `env` (docs/design/0014 for the defaults).
    pub fn windows_of<'a>(
        &'a self,
        tenant: &'a str,
        env: &'a str,
    ) -> impl Iterator<Item = &'a Document<MaintenanceWindowSpec>> + 'a {
        let kind = self
            .tenant(tenant)
            .and_then(|t| t.spec.environments.iter().find(|e| e.name == env))
            .map(|e| e.kind);
        self.maintenance_windows.iter().filter(move |w| {
            w.spec.tenant == tenant
                && if w.spec.environments.is_empty() {
                    match w.spec.window_type {
                        WindowType::Maintenance => kind.is_some(),
                        WindowType::Freeze => kind.is_some_and(|k| k.is_production_like()),
                    }
                } else {
                    w.spec.environments.iter().any(|e| e == env)
                }
        })
    }

    /// The backup policy named `name`.
    pub fn backup_policy(&self, name: &str) -> Option<&Document<BackupPolicySpec>> {
        self.backup_policies
            .iter()
            .find(|t| t.metadata.name == name)
    }

    /// The service tier a tenant is on: its own, else the platform default.
    /// Validation guarantees one of them names an existing tier.
    pub fn tier_of(&self, tenant: &TenantSpec) -> Option<&Document<ServiceTierSpec>> {
        let name = tenant.service_tier.as_deref().or(self
            .platform
            .spec
            .defaults
            .service_tier
            .as_deref())?;
        self.service_tier(name)
    }

    pub fn tenant(&self, name: &str) -> Option<&Document<TenantSpec>> {
        self.tenants.iter().find(|t| t.metadata.name == name)
    }

    pub fn service_tier(&self, name: &str) -> Option<&Document<ServiceTierSpec>> {
        self.service_tiers.iter().find(|t| t.metadata.name == name)
    }

    /// The platform's data directory, resolved against its spec file.
    pub fn data_dir(&self) -> PathBuf {
        crate::validate::absolute_data_dir(&self.platform.source.file, &self.platform.spec.data_dir)
    }
}

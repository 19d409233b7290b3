//! How many PostgreSQL connections each environment's role may open, and how
//! many a cluster can serve.
//!
//! Every tenant role gets a connection limit: `sizing.dbConnections` when set,
//! otherwise what its Odoo processes need ([`odoo_connections`]). Validation
//! refuses a cluster whose roles' limits add up to more than it can serve
//! ([`Budget::usable`]), so one tenant can never take the connection slots
//! another needs.

use std::collections::BTreeMap;

use crate::model::{Environment, EnvironmentKind, TenantSpec};

/// `max_connections` careplane writes into every cluster's configuration
/// unless the platform's `postgres.settings` override it.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 100;

/// PostgreSQL's default `superuser_reserved_connections`.
pub const DEFAULT_SUPERUSER_RESERVED: u32 = 3;

/// Connections kept for careplane itself on every cluster, beyond the
/// superuser reserve: its admin sessions (provisioning, health checks) and an
/// Odoo template being built (`-i ... --stop-after-init` as the template's
/// role, which has no limit of its own).
pub const CAREPLANE_CONNECTIONS: u32 = 10;

/// HTTP workers and cron threads an environment kind gets by default:
/// production and DR two of each, everything else one.
pub fn default_processes(kind: EnvironmentKind) -> (u32, u32) {
    match kind {
        EnvironmentKind::Production | EnvironmentKind::Dr => (2, 2),
        EnvironmentKind::Staging
        | EnvironmentKind::Uat
        | EnvironmentKind::Training
        | EnvironmentKind::Test
        | EnvironmentKind::Dev => (1, 1),
    }
}

/// Connections an environment's Odoo opens at most, as its role's default
/// limit:
/// * web: 2 per HTTP worker (a request's cursor, plus the one Odoo opens
///   beside it, e.g. for logging), 2 for the gevent (websocket/bus) process
///   and 1 for the prefork master;
/// * cron: 3 per cron thread (the trigger listener, job acquisition and the
///   job's own cursor) and 1 for the process;
/// * 2 for careplane connecting as the role (health checks, one-off module
///   installs and upgrades).
pub fn odoo_connections(workers: u32, cron_threads: u32) -> u32 {
    2u32.saturating_mul(workers)
        .saturating_add(3u32.saturating_mul(cron_threads))
        .saturating_add(2 + 1 + 1 + 2)
}

/// An environment's sizing, each field from the environment, else the
/// tenant, else the environment kind's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSizing<'a> {
    /// Odoo HTTP workers.
    pub workers: u32,
    /// Odoo cron threads (not configurable yet: the kind's default).
    pub cron_threads: u32,
    /// The role's connection limit.
    pub db_connections: u32,
    /// Memory of one worker as written, if the environment or tenant sets it.
    pub worker_memory: Option<&'a str>,
}

/// See [`EffectiveSizing`].
pub fn effective_sizing<'a>(tenant: &'a TenantSpec, env: &'a Environment) -> EffectiveSizing<'a> {
    let env_s = env.sizing.as_ref();
    let tenant_s = tenant.sizing.as_ref();
    let (default_workers, cron_threads) = default_processes(env.kind);
    let workers = env_s
        .and_then(|s| s.workers)
        .or(tenant_s.and_then(|s| s.workers))
        .unwrap_or(default_workers);
    let db_connections = env_s
        .and_then(|s| s.db_connections)
        .or(tenant_s.and_then(|s| s.db_connections))
        .unwrap_or_else(|| odoo_connections(workers, cron_threads));
    let worker_memory = env_s
        .and_then(|s| s.worker_memory.as_deref())
        .or(tenant_s.and_then(|s| s.worker_memory.as_deref()));
    EffectiveSizing {
        workers,
        cron_threads,
        db_connections,
        worker_memory,
    }
}

/// What a cluster can serve to tenant roles, from the platform's
/// `postgres.settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `max_connections`.
    pub max_connections: u32,
    /// `superuser_reserved_connections`.
    pub superuser_reserved: u32,
    /// `reserved_connections` (PostgreSQL 16+; 0 before).
    pub reserved: u32,
    /// [`CAREPLANE_CONNECTIONS`].
    pub careplane: u32,
}

impl Budget {
    /// Connections left for tenant roles.
    pub fn usable(&self) -> u32 {
        self.max_connections
            .saturating_sub(self.superuser_reserved)
            .saturating_sub(self.reserved)
            .saturating_sub(self.careplane)
    }

    /// How [`Budget::usable`] is made, for messages.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "max_connections {} minus {} superuser_reserved_connections",
            self.max_connections, self.superuser_reserved
        );
        if self.reserved > 0 {
            s.push_str(&format!(", {} reserved_connections", self.reserved));
        }
        s.push_str(&format!(
            " and {} for careplane leaves {}",
            self.careplane,
            self.usable()
        ));
        s
    }
}

/// The settings [`budget`] reads, as PostgreSQL names them.
pub const BUDGET_SETTINGS: [&str; 3] = [
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",
];

/// The value of setting `name` in `settings`, whose keys PostgreSQL reads
/// case-insensitively (and careplane trims).
pub fn setting<'a>(settings: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A cluster's [`Budget`]; the error names the setting that is not a whole
/// number.
pub fn budget(settings: &BTreeMap<String, String>) -> Result<Budget, String> {
    let read = |name: &str, default: u32| -> Result<u32, String> {
        match setting(settings, name) {
            None => Ok(default),
            Some(v) => v.trim().parse::<u32>().map_err(|_| {
                format!(
                    "{name} {} is not a whole number",
                    serde_json::Value::String(v.to_string())
                )
            }),
        }
    };
    Ok(Budget {
        max_connections: read(BUDGET_SETTINGS[0], DEFAULT_MAX_CONNECTIONS)?,
        superuser_reserved: read(BUDGET_SETTINGS[1], DEFAULT_SUPERUSER_RESERVED)?,
        reserved: read(BUDGET_SETTINGS[2], 0)?,
        careplane: CAREPLANE_CONNECTIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_workers_and_cron_threads() {
        assert_eq!(odoo_connections(2, 2), 16);
        assert_eq!(odoo_connections(1, 1), 11);
        assert_eq!(odoo_connections(u32::MAX, 1), u32::MAX);
    }

    #[test]
    fn budget_reads_settings_case_insensitively() {
        let b = budget(&BTreeMap::new()).unwrap();
        assert_eq!(b.usable(), 100 - 3 - 10);
        let s: BTreeMap<String, String> = [
            ("Max_Connections".to_string(), " 200".to_string()),
            ("reserved_connections".to_string(), "5".to_string()),
        ]
        .into();
        let b = budget(&s).unwrap();
        assert_eq!(b.usable(), 200 - 3 - 5 - 10);
        assert_eq!(
            b.explain(),
            "max_connections 200 minus 3 superuser_reserved_connections, 5 reserved_connections \
             and 10 for careplane leaves 182"
        );
        let s: BTreeMap<String, String> =
            [("max_connections".to_string(), "lots".to_string())].into();
        assert_eq!(
            budget(&s).unwrap_err(),
            "max_connections \"lots\" is not a whole number"
        );
        let s: BTreeMap<String, String> = [("max_connections".to_string(), "5".to_string())].into();
        assert_eq!(budget(&s).unwrap().usable(), 0);
    }
}

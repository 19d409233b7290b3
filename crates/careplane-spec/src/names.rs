//! The names careplane derives from specs, in one place.
//!
//! Tenant and environment names become PostgreSQL database names (an
//! environment's *role* name is opaque, allocated by the engine, because every
//! role of a cluster can read every role name), Redis ACL users and key prefixes, cluster scopes, directories and Odoo
//! template names. Existing platforms hold these names, so they never change;
//! instead, validation makes sure that two spec locations never derive the
//! same name (see the set-level checks of [`crate::load`]) and that no tenant
//! takes a name careplane or PostgreSQL use themselves
//! ([`reserved_tenant_name`]).
//!
//! Which derived names are unique by construction, and why:
//! * the key prefix `<tenant>:<env>:`: names hold no `:`, so the pair can be
//!   read back, and no prefix is a prefix of another;
//! * directories (`pg/<scope>`, `redis/<scope>`, `odoo/envs/<tenant>/<env>`,
//!   `odoo/templates/<scope>/<template>`): one path component per name;
//! * cluster and server scopes: tenant names are unique, and [`SHARED`] is
//!   reserved;
//! * template databases `tpl-odoo<version>-<hash>`: tenant names starting
//!   with [`TEMPLATE_PREFIX`] are reserved, and every other derived database
//!   name starts with its tenant's name.
//!
//! The one that is not is `<tenant>-<env>` (database and Redis user):
//! tenant `a-b` environment `c` and tenant `a` environment `b-c` both make
//! `a-b-c`, so validation refuses such pairs.

use crate::model::{Tenancy, TenantSpec, MAX_ENVIRONMENT_NAME, MAX_TENANT_NAME};
#[cfg(test)]
use crate::model::{RESERVED_TENANT_NAMES, RESERVED_TENANT_PATTERN, RESERVED_TENANT_PREFIXES};

/// Scope name of the shared PostgreSQL cluster and Redis server. Tenant names
/// cannot collide with it: validation reserves it.
pub const SHARED: &str = "shared";

/// Prefix of every Odoo template database and role.
pub const TEMPLATE_PREFIX: &str = "tpl-";

/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes. Longer names
/// are silently truncated, which would make two names one.
pub const PG_IDENTIFIER_MAX: usize = 63;

/// The Redis ACL user careplane administers a server with (see
/// `careplane-local`'s `redis::ADMIN_USER`).
pub const REDIS_ADMIN_USER: &str = "careplane-admin";

/// The PostgreSQL superuser careplane creates each cluster with (see
/// `careplane-local`'s `pg::ADMIN_ROLE`).
pub const PG_ADMIN_ROLE: &str = "careplane_admin";

// Every derived PostgreSQL identifier fits without truncation.
const _: () = assert!(MAX_TENANT_NAME + 1 + MAX_ENVIRONMENT_NAME <= PG_IDENTIFIER_MAX);
// "tpl-odoo" + at most 3 version digits + "-" + 8 hex digits.
const _: () = assert!(TEMPLATE_PREFIX.len() + 4 + 3 + 1 + 8 <= PG_IDENTIFIER_MAX);

/// The host name the ingress proxy serves an environment on:
/// `<env>.<tenant>.<domain>` (the same rule as `careplane_ingress::host_name`).
pub fn ingress_host(env: &str, tenant: &str, domain: &str) -> String {
    format!("{env}.{tenant}.{domain}")
}

/// Database, role and Redis user of a tenant environment: `<tenant>-<env>`.
/// They become identifiers in PostgreSQL, Redis ACLs and Odoo's dbfilter.
pub fn env_db_name(tenant: &str, env: &str) -> String {
    format!("{tenant}-{env}")
}

/// Redis key prefix of a tenant environment: `<tenant>:<env>:`; its ACL user
/// may touch only these keys.
pub fn env_key_prefix(tenant: &str, env: &str) -> String {
    format!("{tenant}:{env}:")
}

/// The PostgreSQL cluster scope a tenant lives on: [`SHARED`] or its own name.
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

/// Database and role of an Odoo template: `tpl-odoo<version>-<hash>`, where
/// the hash is a [`fingerprint`] of what makes two templates interchangeable.
pub fn template_db_name(version: u32, key: &[String]) -> String {
    format!("{TEMPLATE_PREFIX}odoo{version}-{}", fingerprint(key))
}

/// A short, stable fingerprint (8 hex digits) of `parts`.
pub fn fingerprint(parts: &[String]) -> String {
    // FNV-1a, 64 bit: identity, not security; collisions would only make two
    // module sets share a template name, and the props comparison catches that.
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

/// Why `name` cannot be a tenant name, or `None` if it can. The reason is a
/// sentence for a diagnostic's help.
pub fn reserved_tenant_name(name: &str) -> Option<String> {
    let starts = |p: &str| name.starts_with(p);
    if name == SHARED {
        Some(
            "it names the platform's shared PostgreSQL cluster and Redis server; pick another name"
                .into(),
        )
    } else if name == "tpl" || starts(TEMPLATE_PREFIX) {
        Some(format!(
            "databases and roles starting with \"{TEMPLATE_PREFIX}\" are careplane's Odoo templates \
             (\"{TEMPLATE_PREFIX}odoo<version>-<hash>\"), which a tenant's \"<tenant>-<environment>\" \
             names must not collide with; pick another name"
        ))
    } else if name == "careplane" || starts("careplane-") {
        Some(format!(
            "names starting with \"careplane\" are careplane's own (Redis user \"{REDIS_ADMIN_USER}\", \
             PostgreSQL role \"{PG_ADMIN_ROLE}\"); pick another name"
        ))
    } else if name == "postgres" || starts("template") {
        Some(
            "PostgreSQL uses it (the \"postgres\" superuser and database, the template0 and \
             template1 databases); pick another name"
                .into(),
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_what_existing_platforms_hold() {
        assert_eq!(env_db_name("stmarys", "production"), "stmarys-production");
        assert_eq!(
            env_key_prefix("stmarys", "production"),
            "stmarys:production:"
        );
        // FNV-1a as computed independently (Python) for the demo's template.
        let key: Vec<String> = [
            "18",
            "odoo-standin",
            "modules",
            "base",
            "contacts",
            "addons",
        ]
        .map(String::from)
        .into();
        assert_eq!(template_db_name(18, &key), "tpl-odoo18-d266fec6");
        assert_eq!(fingerprint(&[]), "4fd0bfc1");
    }

    #[test]
    fn reserved_names() {
        for name in [
            "shared",
            "tpl",
            "tpl-x",
            "careplane",
            "careplane-admin",
            "postgres",
            "template1",
            "templates",
        ] {
            assert!(reserved_tenant_name(name).is_some(), "{name}");
        }
        for name in [
            "stmarys",
            "tplx",
            "careplanet",
            "postgresx",
            "temp",
            "shared2",
        ] {
            assert_eq!(reserved_tenant_name(name), None, "{name}");
        }
        for name in RESERVED_TENANT_NAMES {
            assert!(reserved_tenant_name(name).is_some(), "{name}");
        }
        assert_eq!(
            RESERVED_TENANT_PATTERN,
            format!(
                "^({})$|^({})",
                RESERVED_TENANT_NAMES.join("|"),
                RESERVED_TENANT_PREFIXES.join("|")
            )
        );
        for prefix in RESERVED_TENANT_PREFIXES {
            assert!(
                reserved_tenant_name(&format!("{prefix}x")).is_some(),
                "{prefix}"
            );
        }
        // The Redis admin user is reachable only through a reserved tenant.
        let (tenant, env) = REDIS_ADMIN_USER.split_once('-').unwrap();
        assert_eq!(env_db_name(tenant, env), REDIS_ADMIN_USER);
        assert!(reserved_tenant_name(tenant).is_some());
    }
}

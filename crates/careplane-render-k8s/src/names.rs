//! Names on the cluster: namespaces, labels, uids and role names.

use std::collections::{BTreeMap, BTreeSet};

use careplane_spec::UidRange;
use sha2::{Digest, Sha256};

use crate::k8s::Labels;

/// An environment's namespace: `<tenant>-<env>`, which the spec already
/// keeps unique (it is also the database name).
pub fn env_namespace(tenant: &str, env: &str) -> String {
    careplane_model::env_db_name(tenant, env)
}

/// Tenant names may not start with `careplane-`, so these never collide
/// with an environment's namespace.
pub fn pg_namespace(scope: &str) -> String {
    format!("careplane-pg-{scope}")
}

pub fn redis_namespace(scope: &str) -> String {
    format!("careplane-redis-{scope}")
}

/// CloudNativePG cluster name in every PostgreSQL namespace.
pub const PG_CLUSTER: &str = "postgres";
/// Redis StatefulSet and Service name in every Redis namespace.
pub const REDIS: &str = "redis";

/// An environment's PostgreSQL role: `r` and 24 hex digits of SHA-256 over
/// the platform's role key and the environment, so that a tenant reading
/// `pg_roles` on a shared cluster learns nothing about the others. The local
/// target draws the same shape at random and records it; a renderer has no
/// state, hence the key.
pub fn role_name(role_key: &str, tenant: &str, env: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"careplane role\0");
    h.update(role_key.as_bytes());
    h.update([0]);
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(env.as_bytes());
    let d = h.finalize();
    let mut s = String::with_capacity(25);
    s.push('r');
    for b in &d[..12] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One uid per environment in `range`: the FNV fingerprint of
/// `<tenant>/<env>` picks a slot, collisions probe forward; environments are
/// placed in name order, so the result depends only on the set.
pub fn odoo_uids(envs: &[(String, String)], range: UidRange) -> BTreeMap<(String, String), u32> {
    let mut sorted: Vec<&(String, String)> = envs.iter().collect();
    sorted.sort();
    sorted.dedup();
    let count = range.count.max(1);
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for key in sorted {
        let fp = careplane_spec::names::fingerprint(&[key.0.clone(), key.1.clone()]);
        let mut slot = u32::from_str_radix(&fp, 16).unwrap_or(0) % count;
        // More environments than uids would loop forever; the range is
        // validated far larger than any platform, so wrap once and give up
        // on uniqueness rather than hang.
        for _ in 0..count {
            if taken.insert(slot) {
                break;
            }
            slot = (slot + 1) % count;
        }
        out.insert(key.clone(), range.first.saturating_add(slot));
    }
    out
}

pub fn common_labels() -> Labels {
    [
        ("app.kubernetes.io/managed-by", "careplane"),
        ("app.kubernetes.io/part-of", "careplane"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect()
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

pub fn with(mut base: Labels, pairs: &[(&str, &str)]) -> Labels {
    base.extend(labels(pairs));
    base
}

/// Pod Security `restricted`, enforced, audited and warned.
pub fn restricted(mut l: Labels) -> Labels {
    for mode in ["enforce", "audit", "warn"] {
        l.insert(
            format!("pod-security.kubernetes.io/{mode}").into(),
            "restricted".into(),
        );
        l.insert(
            format!("pod-security.kubernetes.io/{mode}-version").into(),
            "latest".into(),
        );
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_opaque_and_keyed() {
        let a = role_name("k".repeat(16).as_str(), "stmarys", "production");
        assert_eq!(a.len(), 25);
        assert!(a.starts_with('r') && a[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!a.contains("stmarys"));
        assert_ne!(
            a,
            role_name("x".repeat(16).as_str(), "stmarys", "production")
        );
        assert_ne!(a, role_name("k".repeat(16).as_str(), "stmarys", "staging"));
        // The separator keeps ("a-b", "c") and ("a", "b-c") apart.
        assert_ne!(role_name("k", "ab", "c"), role_name("k", "a", "bc"));
    }

    #[test]
    fn uids_are_unique_in_range_and_independent_of_input_order() {
        // A range of 8 for 8 environments forces collisions and probing.
        let range = UidRange {
            first: 5000,
            count: 8,
        };
        let envs: Vec<(String, String)> = (0..8)
            .map(|i| (format!("t{i}"), "prod".to_string()))
            .collect();
        let a = odoo_uids(&envs, range);
        let mut rev = envs.clone();
        rev.reverse();
        assert_eq!(a, odoo_uids(&rev, range));
        let set: BTreeSet<u32> = a.values().copied().collect();
        assert_eq!(set.len(), 8, "{a:?}");
        assert!(set.iter().all(|u| (5000..5008).contains(u)));
    }
}

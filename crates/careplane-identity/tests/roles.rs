//! Every role × every action, against the table of docs/design/0013
//! (copied here by hand, not derived from the code): with MFA, without it,
//! and for a tenant-operator outside its tenants.

use careplane_audit::ActorKind;
use careplane_identity::{authorize, Action, Binding, Principal, Role, Scope, Source, Target};

/// Columns: viewer, tenant-operator (on its own tenant), platform-operator,
/// security-officer, platform-admin. From the design note's matrix.
const MATRIX: &[(&str, [bool; 5])] = &[
    ("read", [true, true, true, true, true]),
    ("apply", [false, true, true, false, true]),
    ("destroy", [false, true, true, false, true]),
    ("start", [false, true, true, false, true]),
    ("stop", [false, true, true, false, true]),
    ("modules", [false, true, true, false, true]),
    ("credentials.show", [false, true, true, false, true]),
    ("backup.create", [false, true, true, false, true]),
    ("backup.restore", [false, false, true, false, true]),
    ("access.request", [true, true, true, true, true]),
    ("access.approve", [false, false, false, true, true]),
    ("access.change", [false, false, false, false, true]),
    ("access.review", [false, false, false, true, true]),
    ("audit.read", [false, false, false, true, true]),
    ("key.rotate", [false, false, false, false, true]),
    ("incident.update", [false, true, true, false, true]),
];

/// Privileged actions (design note, "MFA"): need MFA on a production target.
const NEEDS_MFA_ON_PRODUCTION: &[&str] = &[
    "apply",
    "destroy",
    "backup.restore",
    "access.approve",
    "access.change",
    "key.rotate",
];

fn principal(role: Role, mfa: bool) -> Principal {
    Principal {
        id: format!("{role}@example.org"),
        kind: ActorKind::User,
        auth: "oidc".into(),
        mfa,
        bindings: vec![Binding {
            role,
            scope: if role == Role::TenantOperator {
                Scope::Tenants(vec!["stmarys".into()])
            } else {
                Scope::All
            },
            source: Source::Group {
                group: format!("g-{role}"),
            },
        }],
    }
}

fn action(name: &str) -> Action {
    Action::ALL
        .into_iter()
        .find(|a| a.as_str() == name)
        .unwrap_or_else(|| panic!("the design note's action {name} is not in Action::ALL"))
}

#[test]
fn the_table_covers_every_action_once() {
    let mut names: Vec<&str> = MATRIX.iter().map(|(a, _)| *a).collect();
    names.sort();
    let mut all: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    all.sort();
    assert_eq!(names, all);
}

#[test]
fn every_role_against_every_action() {
    for production in [false, true] {
        let own = Target::tenant("stmarys", production);
        for (name, row) in MATRIX {
            for (i, role) in Role::ALL.into_iter().enumerate() {
                // With MFA: exactly the table.
                let d = authorize(&principal(role, true), action(name), &own);
                assert_eq!(
                    d.allowed, row[i],
                    "{role} {name} (production {production}, MFA): {}",
                    d.reason
                );
                // Without MFA: the table, less privileged actions on production.
                let privileged = NEEDS_MFA_ON_PRODUCTION.contains(name)
                    && (production || !matches!(*name, "apply" | "destroy"));
                let d = authorize(&principal(role, false), action(name), &own);
                assert_eq!(
                    d.allowed,
                    row[i] && !privileged,
                    "{role} {name} (production {production}, no MFA): {}",
                    d.reason
                );
                if row[i] && privileged {
                    assert!(d.reason.contains("multi-factor"), "{}", d.reason);
                }
            }
        }
    }
}

#[test]
fn a_tenant_operator_is_denied_everything_outside_its_tenants() {
    let p = principal(Role::TenantOperator, true);
    for (name, row) in MATRIX {
        // Other tenants: only what needs no tenant scope at all... which is
        // nothing a tenant-scoped binding grants, except asking for access.
        let d = authorize(&p, action(name), &Target::tenant("other", false));
        assert_eq!(d.allowed, *name == "access.request", "{name}: {}", d.reason);
        let d = authorize(&p, action(name), &Target::platform(false));
        assert_eq!(d.allowed, *name == "access.request", "{name}: {}", d.reason);
        if row[1] && *name != "access.request" {
            assert!(d.reason.contains("other tenants"), "{}", d.reason);
        }
    }
}

#[test]
fn no_role_means_no_access() {
    let p = Principal {
        bindings: vec![],
        ..principal(Role::Viewer, true)
    };
    for a in Action::ALL {
        let d = authorize(&p, a, &Target::tenant("stmarys", false));
        assert!(!d.allowed, "{a}");
        assert!(d.reason.contains("holds none"), "{}", d.reason);
    }
}

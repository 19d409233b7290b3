//! Roles, actions and the one authorization decision (docs/design/0013,
//! "Principals and roles"). Pure: no I/O, no clock.

use std::fmt;
use std::str::FromStr;

use careplane_audit::{Actor, ActorKind, Elevation};
use serde::{Deserialize, Serialize};

/// The five roles, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Viewer,
    TenantOperator,
    PlatformOperator,
    SecurityOfficer,
    PlatformAdmin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::TenantOperator,
        Role::PlatformOperator,
        Role::SecurityOfficer,
        Role::PlatformAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::TenantOperator => "tenant-operator",
            Role::PlatformOperator => "platform-operator",
            Role::SecurityOfficer => "security-officer",
            Role::PlatformAdmin => "platform-admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}: expected one of {}",
                    Role::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

/// Everything careplane authorizes. The string forms are the audit log's
/// action names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Read,
    Apply,
    Destroy,
    Start,
    Stop,
    Modules,
    CredentialsShow,
    BackupCreate,
    BackupRestore,
    AccessRequest,
    AccessApprove,
    AccessChange,
    AccessReview,
    AuditRead,
    KeyRotate,
    IncidentUpdate,
}

impl Action {
    pub const ALL: [Action; 16] = [
        Action::Read,
        Action::Apply,
        Action::Destroy,
        Action::Start,
        Action::Stop,
        Action::Modules,
        Action::CredentialsShow,
        Action::BackupCreate,
        Action::BackupRestore,
        Action::AccessRequest,
        Action::AccessApprove,
        Action::AccessChange,
        Action::AccessReview,
        Action::AuditRead,
        Action::KeyRotate,
        Action::IncidentUpdate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Apply => "apply",
            Action::Destroy => "destroy",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Modules => "modules",
            Action::CredentialsShow => "credentials.show",
            Action::BackupCreate => "backup.create",
            Action::BackupRestore => "backup.restore",
            Action::AccessRequest => "access.request",
            Action::AccessApprove => "access.approve",
            Action::AccessChange => "access.change",
            Action::AccessReview => "access.review",
            Action::AuditRead => "audit.read",
            Action::KeyRotate => "key.rotate",
            Action::IncidentUpdate => "incident.update",
        }
    }

    /// Which roles may take this action at all (before scope and MFA).
    /// This is the design note's matrix, kept as one table.
    fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Action::Read | Action::AccessRequest => &[
                Viewer,
                TenantOperator,
                PlatformOperator,
                SecurityOfficer,
                PlatformAdmin,
            ],
            Action::Apply
            | Action::Destroy
            | Action::Start
            | Action::Stop
            | Action::Modules
            | Action::IncidentUpdate
            | Action::CredentialsShow
            | Action::BackupCreate => &[TenantOperator, PlatformOperator, PlatformAdmin],
            Action::BackupRestore => &[PlatformOperator, PlatformAdmin],
            Action::AccessApprove | Action::AccessReview | Action::AuditRead => {
                &[SecurityOfficer, PlatformAdmin]
            }
            Action::AccessChange | Action::KeyRotate => &[PlatformAdmin],
        }
    }

    /// Whether this action on `target` needs MFA.
    pub fn needs_mfa(self, target: &Target) -> bool {
        match self {
            Action::Apply | Action::Destroy => target.production,
            Action::BackupRestore
            | Action::AccessApprove
            | Action::AccessChange
            | Action::KeyRotate => true,
            _ => false,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action is applied to, as far as authorization cares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `None` for platform-wide targets (the whole platform, shared servers,
    /// the access model itself).
    pub tenant: Option<String>,
    /// A production or DR environment, or a platform-wide change that
    /// includes them.
    pub production: bool,
}

impl Target {
    pub fn platform(production: bool) -> Target {
        Target {
            tenant: None,
            production,
        }
    }

    pub fn tenant(tenant: &str, production: bool) -> Target {
        Target {
            tenant: Some(tenant.to_string()),
            production,
        }
    }
}

/// Which tenants a binding covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    All,
    Tenants(Vec<String>),
}

impl Scope {
    fn covers(&self, target: &Target) -> bool {
        match (self, &target.tenant) {
            (Scope::All, _) => true,
            (Scope::Tenants(ts), Some(t)) => ts.iter().any(|x| x == t),
            (Scope::Tenants(_), None) => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all tenants"),
            Scope::Tenants(ts) => write!(f, "tenants {}", ts.join(",")),
        }
    }
}

/// Where a binding comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Source {
    /// An IdP group through the configured mapping.
    Group { group: String },
    /// An approved just-in-time grant.
    Grant {
        id: String,
        approved_by: String,
        expires: String,
        reason: String,
    },
    /// A break-glass elevation (flagged for review).
    BreakGlass {
        id: String,
        expires: String,
        reason: String,
    },
    /// The local root operator on the host.
    LocalRoot,
    /// The scope of one of `careplane serve`'s API tokens (a service
    /// identity): `read` is viewer, `operate` is platform-operator.
    ApiToken { scope: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub role: Role,
    pub scope: Scope,
    pub source: Source,
}

/// Someone (or something) asking to act.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub kind: ActorKind,
    /// `oidc`, `break-glass`, `local-root`, `api-token`, …
    pub auth: String,
    pub mfa: bool,
    pub bindings: Vec<Binding>,
}

impl Principal {
    /// The local root operator on the host: platform-admin everywhere,
    /// authenticated by the machine (docs/design/0013: no MFA asked).
    pub fn local_root(uid: u32) -> Principal {
        Principal {
            id: format!("uid:{uid}"),
            kind: ActorKind::LocalRoot,
            auth: "local-root".into(),
            mfa: false,
            bindings: vec![Binding {
                role: Role::PlatformAdmin,
                scope: Scope::All,
                source: Source::LocalRoot,
            }],
        }
    }

    /// A service identity holding `role` on all tenants through one of
    /// serve's API tokens (its scope named in the binding's source). No
    /// MFA: a token cannot take a privileged action.
    pub fn api_token(name: &str, scope: &str, role: Role) -> Principal {
        Principal {
            id: format!("token:{name}"),
            kind: ActorKind::Service,
            auth: "api-token".into(),
            mfa: false,
            bindings: vec![Binding {
                role,
                scope: Scope::All,
                source: Source::ApiToken {
                    scope: scope.into(),
                },
            }],
        }
    }

    /// The audit log's actor for this principal, with the elevation in
    /// force (the grant or break-glass binding with the strongest role).
    pub fn actor(&self) -> Actor {
        let elevation = self
            .bindings
            .iter()
            .filter(|b| matches!(b.source, Source::Grant { .. } | Source::BreakGlass { .. }))
            .max_by_key(|b| b.role)
            .map(|b| match &b.source {
                Source::Grant {
                    approved_by,
                    expires,
                    reason,
                    ..
                } => Elevation {
                    role: b.role.to_string(),
                    approved_by: Some(approved_by.clone()),
                    expires: expires.clone(),
                    break_glass: false,
                    reason: Some(reason.clone()),
                },
                Source::BreakGlass {
                    expires, reason, ..
                } => Elevation {
                    role: b.role.to_string(),
                    approved_by: None,
                    expires: expires.clone(),
                    break_glass: true,
                    reason: Some(reason.clone()),
                },
                _ => unreachable!("filtered above"),
            });
        Actor {
            kind: self.kind,
            id: self.id.clone(),
            auth: self.auth.clone(),
            mfa: self.mfa,
            elevation,
        }
    }
}

/// The answer of [`authorize`]: allowed or not, why, and through which
/// binding (to record its use for access reviews).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    pub binding: Option<Binding>,
}

impl Decision {
    fn deny(reason: String) -> Decision {
        Decision {
            allowed: false,
            reason,
            binding: None,
        }
    }
}

/// Deny by default: allowed only through a binding whose role may take
/// `action`, whose scope covers `target`, and — for privileged actions —
/// with MFA (or as the local root operator).
pub fn authorize(principal: &Principal, action: Action, target: &Target) -> Decision {
    let allowed_roles = action.roles();
    let what = match &target.tenant {
        Some(t) => format!("{action} on tenant {t}"),
        None => format!("{action} on the platform"),
    };
    let mut fitting: Vec<&Binding> = principal
        .bindings
        .iter()
        .filter(|b| allowed_roles.contains(&b.role))
        .collect();
    if fitting.is_empty() {
        let held: Vec<&str> = principal.bindings.iter().map(|b| b.role.as_str()).collect();
        // Nobody signed in (an OS user other than root, or a session that
        // did not verify): say how to become someone.
        let hint = if held.is_empty() && matches!(principal.auth.as_str(), "none" | "local-user") {
            " (not signed in: run careplane login)"
        } else {
            ""
        };
        return Decision::deny(format!(
            "{} may not {what}: it needs one of the roles {} and holds {}{hint}",
            principal.id,
            allowed_roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if held.is_empty() {
                "none".to_string()
            } else {
                held.join(", ")
            }
        ));
    }
    // Asking for access grants nothing: any role may ask, whatever its scope.
    if action != Action::AccessRequest {
        fitting.retain(|b| b.scope.covers(target));
    }
    // The strongest fitting role is the one recorded as used.
    let Some(binding) = fitting.into_iter().max_by_key(|b| b.role) else {
        return Decision::deny(format!(
            "{} may not {what}: its roles for this action are limited to other tenants{}",
            principal.id,
            if target.tenant.is_none() {
                " (a platform-wide target needs an unscoped role)"
            } else {
                ""
            }
        ));
    };
    if action.needs_mfa(target) && !principal.mfa {
        if principal.kind == ActorKind::LocalRoot && principal.auth == "local-root" {
            return Decision {
                allowed: true,
                reason: format!(
                    "{} may {what} as {} (local root on the host: no MFA asked)",
                    principal.id, binding.role
                ),
                binding: Some(binding.clone()),
            };
        }
        return Decision::deny(format!(
            "{what} requires multi-factor authentication, and {} signed in without it (the token's amr/acr shows none); sign in again with MFA",
            principal.id
        ));
    }
    Decision {
        allowed: true,
        reason: format!(
            "{} may {what} as {} ({})",
            principal.id, binding.role, binding.scope
        ),
        binding: Some(binding.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role, scope: Scope, mfa: bool) -> Principal {
        Principal {
            id: "alice".into(),
            kind: ActorKind::User,
            auth: "oidc".into(),
            mfa,
            bindings: vec![Binding {
                role,
                scope,
                source: Source::Group { group: "g".into() },
            }],
        }
    }

    #[test]
    fn no_binding_is_denied_with_a_reason() {
        let p = Principal {
            bindings: vec![],
            ..user(Role::Viewer, Scope::All, true)
        };
        let d = authorize(&p, Action::Read, &Target::platform(false));
        assert!(!d.allowed);
        assert!(d.reason.contains("holds none"), "{}", d.reason);
    }

    #[test]
    fn nobody_signed_in_is_told_how_to_sign_in() {
        let p = Principal {
            id: "uid:1000".into(),
            kind: ActorKind::User,
            auth: "local-user".into(),
            mfa: false,
            bindings: vec![],
        };
        let d = authorize(&p, Action::Apply, &Target::platform(false));
        assert!(!d.allowed);
        assert!(
            d.reason
                .ends_with("holds none (not signed in: run careplane login)"),
            "{}",
            d.reason
        );
        // A signed-in user without a role is not told to sign in again.
        let d = authorize(
            &Principal {
                auth: "oidc".into(),
                ..p
            },
            Action::Apply,
            &Target::platform(false),
        );
        assert!(d.reason.ends_with("holds none"), "{}", d.reason);
    }

    #[test]
    fn local_root_is_admin_without_mfa_and_says_so() {
        let d = authorize(
            &Principal::local_root(0),
            Action::Destroy,
            &Target::tenant("a", true),
        );
        assert!(d.allowed);
        assert!(d.reason.contains("no MFA asked"), "{}", d.reason);
        let a = Principal::local_root(0).actor();
        assert_eq!(
            (a.kind, a.auth.as_str(), a.mfa),
            (ActorKind::LocalRoot, "local-root", false)
        );
    }

    #[test]
    fn the_strongest_covering_binding_is_used() {
        let mut p = user(Role::TenantOperator, Scope::Tenants(vec!["a".into()]), true);
        p.bindings.push(Binding {
            role: Role::PlatformOperator,
            scope: Scope::All,
            source: Source::Grant {
                id: "r1".into(),
                approved_by: "bob".into(),
                expires: "2026-12-02T01:00:00Z".into(),
                reason: "INC-1".into(),
            },
        });
        let d = authorize(&p, Action::Apply, &Target::tenant("a", true));
        assert_eq!(d.binding.unwrap().role, Role::PlatformOperator);
        let actor = p.actor();
        let e = actor.elevation.unwrap();
        assert_eq!(
            (e.role.as_str(), e.approved_by.as_deref()),
            ("platform-operator", Some("bob"))
        );
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        assert_eq!(
            "security-officer".parse::<Role>(),
            Ok(Role::SecurityOfficer)
        );
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("platform-admin"));
    }
}

//! `<dataDir>/identity.json`: the IdP, the client, the group → role mapping
//! and what counts as MFA (docs/design/0013).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::authz::{Binding, Principal, Role, Scope, Source};
use crate::Error;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupRole {
    pub group: String,
    pub role: Role,
    /// Named tenants; absent means all (refused for tenant-operator).
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityConfig {
    /// The OpenID provider's issuer URL, exactly as its discovery says.
    pub issuer: String,
    /// careplane's (public) client id at the IdP; the ID tokens' audience.
    pub client_id: String,
    /// The audience of access tokens for `careplane serve`'s API.
    #[serde(default)]
    pub api_audience: Option<String>,
    /// The claim holding the user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claim naming the user (`sub` if absent; `email` reads better in
    /// the audit log when the IdP guarantees it is verified and stable).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default)]
    pub groups: Vec<GroupRole>,
    /// `amr` values that show MFA.
    #[serde(default = "default_mfa_amr")]
    pub mfa_amr: Vec<String>,
    /// `acr` values that show MFA.
    #[serde(default)]
    pub mfa_acr: Vec<String>,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_mfa_amr() -> Vec<String> {
    ["mfa", "otp", "hwk", "swk"].map(String::from).to_vec()
}

impl IdentityConfig {
    pub fn load(path: &Path) -> Result<IdentityConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let c: IdentityConfig = serde_json::from_str(&text).map_err(|e| Error::Invalid {
            field: format!("{}:{}:{}", path.display(), e.line(), e.column()),
            detail: e.to_string(),
        })?;
        c.check().map_err(|(i, detail)| Error::Invalid {
            field: format!("{} groups[{i}]", path.display()),
            detail,
        })?;
        Ok(c)
    }

    fn check(&self) -> Result<(), (usize, String)> {
        for (i, g) in self.groups.iter().enumerate() {
            match (&g.tenants, g.role) {
                (None, Role::TenantOperator) => {
                    return Err((i, "tenant-operator needs `tenants`".into()))
                }
                (Some(t), _) if t.is_empty() => {
                    return Err((i, "`tenants` is empty: omit it for all tenants".into()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A principal from verified ID token claims: id from `user_claim`,
    /// bindings from the groups through the mapping, MFA from `amr`/`acr`.
    pub fn principal(&self, claims: &serde_json::Value) -> Result<Principal, Error> {
        let id = claims
            .get(&self.user_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::Invalid {
                field: format!("token claim {}", self.user_claim),
                detail: "missing or not a string".into(),
            })?;
        let groups: Vec<&str> = match claims.get(&self.groups_claim) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|g| g.as_str()).collect(),
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        };
        let bindings = self
            .groups
            .iter()
            .filter(|m| groups.contains(&m.group.as_str()))
            .map(|m| Binding {
                role: m.role,
                scope: m.tenants.clone().map_or(Scope::All, Scope::Tenants),
                source: Source::Group {
                    group: m.group.clone(),
                },
            })
            .collect();
        let amr_mfa = claims
            .get("amr")
            .and_then(|v| v.as_array())
            .is_some_and(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .any(|x| self.mfa_amr.iter().any(|m| m == x))
            });
        let acr_mfa = claims
            .get("acr")
            .and_then(|v| v.as_str())
            .is_some_and(|acr| self.mfa_acr.iter().any(|m| m == acr));
        Ok(Principal {
            id: id.to_string(),
            kind: careplane_audit::ActorKind::User,
            auth: "oidc".into(),
            mfa: amr_mfa || acr_mfa,
            bindings,
        })
    }
}

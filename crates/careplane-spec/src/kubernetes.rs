//! `spec.kubernetes` of the Platform: what only the Kubernetes target reads
//! (`careplane render --target kubernetes`). Every field is optional; the
//! local target ignores the section.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{key, quoted, Ctx};
use crate::yaml::Seg;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// The cert-manager issuer of every environment's host certificate.
    /// Default: the `ClusterIssuer` named `careplane`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_issuer: Option<IssuerRef>,
    /// Traefik's ingress class, when the cluster runs several controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class: Option<String>,
    /// Storage classes; absent: the cluster's default. The filestore's must
    /// offer ReadWriteMany (NFS, CephFS, EFS, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_classes: Option<StorageClasses>,
    /// Source addresses (CIDRs) allowed on `adminPaths`; everyone else gets
    /// 403 there. Both or neither.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_allow: Vec<String>,
    /// Path prefixes only `adminAllow` may reach, e.g. `/odoo/settings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_paths: Vec<String>,
    /// `dedicated-env` tenants run on nodes of their own: nodes labelled
    /// and tainted `careplane.dev/pool=<tenant>` (`NoSchedule`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dedicated_node_pools: bool,
    /// Where CloudNativePG archives WAL and base backups (Barman Cloud
    /// plugin); absent: no backups are rendered (and production is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupStore>,
    /// The mail relay Odoo may reach; absent: no SMTP egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpEgress>,
    /// A Kyverno policy that admits only images pinned by digest and signed
    /// with this key; absent: no policy is rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_signatures: Option<ImageSignatures>,
    /// How credentials reach the cluster: absent, External Secrets
    /// `ExternalSecret`s referencing a secret store; with `sops`, SOPS files
    /// in the repository encrypted to age recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SecretsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sops: Option<SopsSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SopsSettings {
    /// age public keys (`age1…`) every secret file is encrypted to: the
    /// cluster's (Flux's `sops-age` secret, KSOPS) and the operators'.
    pub age_recipients: Vec<String>,
}

/// An age X25519 recipient: `age1` and 58 bech32 characters.
pub fn valid_age_recipient(s: &str) -> bool {
    s.len() == 62
        && s.starts_with("age1")
        && s[4..]
            .bytes()
            .all(|b| b"qpzry9x8gf2tvdw0s3jn54khce6mua7l".contains(&b))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct IssuerRef {
    pub name: String,
    /// `ClusterIssuer` (default) or `Issuer`.
    #[serde(default)]
    pub kind: IssuerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum IssuerKind {
    #[default]
    ClusterIssuer,
    Issuer,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::ClusterIssuer => "ClusterIssuer",
            IssuerKind::Issuer => "Issuer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct StorageClasses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filestore: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BackupStore {
    /// `s3://bucket/prefix` on S3 or an S3-compatible store; each cluster
    /// writes below `<destinationPath>/<scope>`. Credentials come from the
    /// secret store (`careplane/<platform>/backup-store`).
    pub destination_path: String,
    /// S3-compatible endpoint (MinIO, Ceph); absent: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "endpointURL")]
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SmtpEgress {
    /// Addresses of the relay (CIDRs).
    pub cidrs: Vec<String>,
    /// Default 587.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ImageSignatures {
    /// The cosign public key (PEM) images must be signed with.
    pub public_key: String,
}

/// A CIDR or a single address, IPv4 or IPv6, in the forms Traefik and
/// NetworkPolicy `ipBlock`s read.
pub fn valid_cidr(s: &str) -> bool {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len {
        None => true,
        Some(l) => {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && l.parse::<u32>().is_ok_and(|n| n <= max)
        }
    }
}

pub(crate) fn check(cx: &mut Ctx<'_>, k: &KubernetesSettings) {
    let at = |tail: &[Seg]| {
        let mut p = vec![key("spec"), key("kubernetes")];
        p.extend_from_slice(tail);
        p
    };
    let label_ok = |s: &str| crate::validate::is_dns_label(s) && s.len() <= 63;
    if let Some(i) = &k.certificate_issuer {
        if !label_ok(&i.name) && !s_is_dns_name(&i.name) {
            cx.at_value(
                &at(&[key("certificateIssuer"), key("name")]),
                format!("{} is not a Kubernetes object name", quoted(&i.name)),
                None,
            );
        }
    }
    if let Some(c) = &k.ingress_class {
        if !s_is_dns_name(c) {
            cx.at_value(
                &at(&[key("ingressClass")]),
                format!("{} is not a Kubernetes object name", quoted(c)),
                None,
            );
        }
    }
    if let Some(sc) = &k.storage_classes {
        for (name, v) in [("filestore", &sc.filestore), ("postgres", &sc.postgres)] {
            if let Some(v) = v {
                if !s_is_dns_name(v) {
                    cx.at_value(
                        &at(&[key("storageClasses"), key(name)]),
                        format!("{} is not a Kubernetes object name", quoted(v)),
                        None,
                    );
                }
            }
        }
    }
    for (i, a) in k.admin_allow.iter().enumerate() {
        if !valid_cidr(a) {
            cx.at_value(
                &at(&[key("adminAllow"), Seg::Index(i)]),
                format!("{} is neither an address nor a CIDR", quoted(a)),
                Some("write e.g. 10.20.0.0/16 or 192.0.2.7".into()),
            );
        }
    }
    for (i, p) in k.admin_paths.iter().enumerate() {
        let ok = p.starts_with('/')
            && p.len() > 1
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
            && !p.split('/').any(|s| s == "." || s == "..");
        if !ok {
            cx.at_value(
                &at(&[key("adminPaths"), Seg::Index(i)]),
                format!(
                    "{} must be an absolute path prefix of letters, digits, '-', '_', '.' and '/'",
                    quoted(p)
                ),
                None,
            );
        }
    }
    if k.admin_allow.is_empty() != k.admin_paths.is_empty() {
        let (field, missing) = if k.admin_allow.is_empty() {
            ("adminPaths", "adminAllow")
        } else {
            ("adminAllow", "adminPaths")
        };
        cx.at_value(
            &at(&[key(field)]),
            format!("{field} needs {missing} too: an allow-list guards named paths"),
            None,
        );
    }
    if let Some(b) = &k.backups {
        let ok = b
            .destination_path
            .strip_prefix("s3://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
            && !b
                .destination_path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            cx.at_value(
                &at(&[key("backups"), key("destinationPath")]),
                format!("{} is not an object store URL", quoted(&b.destination_path)),
                Some("write e.g. s3://hospital-backups/careplane".into()),
            );
        }
        if let Some(e) = &b.endpoint_url {
            let ok = (e.starts_with("https://") || e.starts_with("http://"))
                && !e.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                cx.at_value(
                    &at(&[key("backups"), key("endpointURL")]),
                    format!("{} is not an http(s) URL", quoted(e)),
                    None,
                );
            }
        }
    }
    if let Some(s) = &k.smtp {
        if s.cidrs.is_empty() {
            cx.at_value(
                &at(&[key("smtp"), key("cidrs")]),
                "name at least one address of the mail relay",
                None,
            );
        }
        for (i, c) in s.cidrs.iter().enumerate() {
            if !valid_cidr(c) {
                cx.at_value(
                    &at(&[key("smtp"), key("cidrs"), Seg::Index(i)]),
                    format!("{} is neither an address nor a CIDR", quoted(c)),
                    None,
                );
            }
        }
        if s.port == Some(0) {
            cx.at_value(
                &at(&[key("smtp"), key("port")]),
                "port 0 is not a port",
                None,
            );
        }
    }
    if let Some(sig) = &k.image_signatures {
        let t = sig.public_key.trim();
        if !(t.starts_with("-----BEGIN PUBLIC KEY-----") && t.ends_with("-----END PUBLIC KEY-----"))
        {
            cx.at_value(
                &at(&[key("imageSignatures"), key("publicKey")]),
                "must be a PEM public key (cosign.pub)",
                None,
            );
        }
    }
    if let Some(sops) = k.secrets.as_ref().and_then(|s| s.sops.as_ref()) {
        if sops.age_recipients.is_empty() {
            cx.at_value(
                &at(&[key("secrets"), key("sops"), key("ageRecipients")]),
                "name at least one age recipient (the cluster's key)",
                None,
            );
        }
        for (i, r) in sops.age_recipients.iter().enumerate() {
            if !valid_age_recipient(r) {
                cx.at_value(
                    &at(&[
                        key("secrets"),
                        key("sops"),
                        key("ageRecipients"),
                        Seg::Index(i),
                    ]),
                    format!("{} is not an age public key", quoted(r)),
                    Some("write the age1… line age-keygen prints as the public key".into()),
                );
            }
        }
    }
}

/// A DNS subdomain name (what most Kubernetes object names must be).
fn s_is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && crate::validate::is_dns_label(l))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cidrs() {
        for ok in ["10.0.0.0/8", "192.0.2.7", "::1/128", "2001:db8::/32"] {
            assert!(super::valid_cidr(ok), "{ok}");
        }
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "::/129",
            "1.2.3.4/+1",
        ] {
            assert!(!super::valid_cidr(bad), "{bad}");
        }
    }
}

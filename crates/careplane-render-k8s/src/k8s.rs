//! The Kubernetes objects careplane emits, as plain serde structs: only the
//! fields we set, named as in each API's reference (core/v1, apps/v1,
//! batch/v1, networking.k8s.io/v1, policy/v1, autoscaling/v2, CloudNativePG
//! `postgresql.cnpg.io/v1`, External Secrets `external-secrets.io`, Argo CD
//! `argoproj.io/v1alpha1`, Flux `kustomize.toolkit.fluxcd.io/v1`, kustomize
//! `kustomize.config.k8s.io/v1beta1`). Fields serialize in declaration order,
//! maps are `BTreeMap`s: the same input gives the same bytes.

use std::collections::BTreeMap;

use serde::Serialize;

/// Labels and annotations. Their keys and values are shared text: every
/// object of an environment carries the same label set, and copying it must
/// not copy its strings (label clones were the largest allocation cost of a
/// 10,000-environment render).
pub type Labels = BTreeMap<Text, Text>;

/// An immutable string whose clones share one allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(std::sync::Arc<str>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(s.into())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(s.into())
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text(s.as_str().into())
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
}

/// `apiVersion`, `kind`, `metadata` and the kind's own top-level fields.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<B: Serialize> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Meta,
    #[serde(flatten)]
    pub body: B,
}

pub fn object<B: Serialize>(
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta,
    body: B,
) -> Object<B> {
    Object {
        api_version,
        kind,
        metadata,
        body,
    }
}

/// A kind with nothing but metadata (Namespace).
#[derive(Debug, Clone, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize)]
pub struct Spec<T: Serialize> {
    pub spec: T,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountBody {
    pub automount_service_account_token: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigMapBody {
    pub data: BTreeMap<String, String>,
}

// ---- workloads ----

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// `None` when a HorizontalPodAutoscaler owns it: a rendered value
    /// would be put back by every sync, undoing the autoscaler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    pub revision_history_limit: u32,
    pub selector: LabelSelector,
    pub strategy: Strategy,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    pub max_surge: u32,
    pub max_unavailable: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetSpec {
    pub service_name: String,
    pub replicas: u32,
    pub selector: LabelSelector,
    pub template: PodTemplate,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<Object<Spec<PvcSpec>>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub backoff_limit: u32,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodTemplate {
    pub metadata: PodMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodMeta {
    pub labels: Labels,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub service_account_name: String,
    pub automount_service_account_token: bool,
    pub enable_service_links: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: Labels,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    pub security_context: PodSecurityContext,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Toleration {
    pub key: &'static str,
    pub operator: &'static str,
    pub value: String,
    pub effect: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    pub run_as_non_root: bool,
    pub run_as_user: u32,
    pub run_as_group: u32,
    pub fs_group: u32,
    pub fs_group_change_policy: &'static str,
    pub seccomp_profile: SeccompProfile,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeccompProfile {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: &'static str,
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    pub resources: Resources,
    pub security_context: SecurityContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

impl EnvVar {
    pub fn value(name: &'static str, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name,
            value: Some(value.into()),
            value_from: None,
        }
    }
    pub fn secret(name: &'static str, secret: &'static str, key: &'static str) -> EnvVar {
        EnvVar {
            name,
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: KeyRef { name: secret, key },
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    pub secret_key_ref: KeyRef,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRef {
    pub name: &'static str,
    pub key: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: &'static str,
    pub container_port: u16,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Resources {
    pub requests: BTreeMap<&'static str, String>,
    pub limits: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub allow_privilege_escalation: bool,
    pub privileged: bool,
    pub read_only_root_filesystem: bool,
    pub run_as_non_root: bool,
    pub capabilities: Capabilities,
    pub seccomp_profile: SeccompProfile,
}

impl SecurityContext {
    /// What Pod Security `restricted` asks for, plus a read-only root.
    pub fn hardened() -> SecurityContext {
        SecurityContext {
            allow_privilege_escalation: false,
            privileged: false,
            read_only_root_filesystem: true,
            run_as_non_root: true,
            capabilities: Capabilities { drop: vec!["ALL"] },
            seccomp_profile: SeccompProfile {
                kind: "RuntimeDefault",
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub drop: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpGet {
    pub path: &'static str,
    pub port: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpSocket {
    pub port: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: &'static str,
    pub mount_path: &'static str,
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDir>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcRef>,
}

impl Volume {
    fn named(name: &str) -> Volume {
        Volume {
            name: name.into(),
            config_map: None,
            secret: None,
            empty_dir: None,
            persistent_volume_claim: None,
        }
    }
    pub fn config_map(name: &str, config_map: &str) -> Volume {
        Volume {
            config_map: Some(ConfigMapVolume {
                name: config_map.into(),
                default_mode: 0o444,
            }),
            ..Volume::named(name)
        }
    }
    pub fn secret(name: &str, secret: &str, items: Vec<KeyToPath>) -> Volume {
        Volume {
            secret: Some(SecretVolume {
                secret_name: secret.into(),
                default_mode: 0o440,
                items,
            }),
            ..Volume::named(name)
        }
    }
    pub fn empty_dir(name: &str, memory: bool, size_limit: &str) -> Volume {
        Volume {
            empty_dir: Some(EmptyDir {
                medium: memory.then_some("Memory"),
                size_limit: size_limit.into(),
            }),
            ..Volume::named(name)
        }
    }
    pub fn pvc(name: &str, claim: &str) -> Volume {
        Volume {
            persistent_volume_claim: Some(PvcRef {
                claim_name: claim.into(),
            }),
            ..Volume::named(name)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolume {
    pub name: String,
    pub default_mode: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolume {
    pub secret_name: String,
    pub default_mode: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDir {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<&'static str>,
    pub size_limit: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcRef {
    pub claim_name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcSpec {
    pub access_modes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    pub resources: PvcResources,
}

#[derive(Debug, Clone, Serialize)]
pub struct PvcResources {
    pub requests: BTreeMap<String, String>,
}

// ---- services and policies ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<&'static str>,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: String,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    pub pod_selector: LabelSelector,
    pub policy_types: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngressRule {
    pub from: Vec<Peer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EgressRule {
    pub to: Vec<Peer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IpBlock {
    pub cidr: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyPort {
    pub protocol: &'static str,
    pub port: u16,
}

impl PolicyPort {
    pub fn tcp(port: u16) -> PolicyPort {
        PolicyPort {
            protocol: "TCP",
            port,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QuotaSpec {
    pub hard: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitRangeSpec {
    pub limits: Vec<LimitRangeItem>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitRangeItem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub default: BTreeMap<String, String>,
    pub default_request: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_available: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    pub selector: LabelSelector,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    pub scale_target_ref: ScaleTarget,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metrics: Vec<HpaMetric>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTarget {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HpaMetric {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub resource: HpaResource,
}

#[derive(Debug, Clone, Serialize)]
pub struct HpaResource {
    pub name: &'static str,
    pub target: HpaTarget,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaTarget {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub average_utilization: u32,
}

// ---- CloudNativePG ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpgClusterSpec {
    pub instances: u32,
    pub priority_class_name: &'static str,
    pub image_name: String,
    pub primary_update_strategy: &'static str,
    pub enable_superuser_access: bool,
    pub postgresql: CnpgPostgresql,
    pub storage: CnpgStorage,
    pub affinity: CnpgAffinity,
    /// Extra names in the server certificate: the pooler's service, so
    /// that Odoo's `verify-full` holds through PgBouncer.
    pub certificates: CnpgCertificates,
    pub managed: CnpgManaged,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<CnpgPlugin>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpgCertificates {
    /// With SOPS, the CA (certificate and key) the operator provides; CNPG
    /// signs the server certificate with it. Absent: CNPG makes its own.
    #[serde(rename = "serverCASecret", skip_serializing_if = "Option::is_none")]
    pub server_ca_secret: Option<String>,
    #[serde(rename = "serverAltDNSNames")]
    pub server_alt_dns_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpgPlugin {
    pub name: &'static str,
    #[serde(rename = "isWALArchiver")]
    pub is_wal_archiver: bool,
    pub parameters: BTreeMap<String, String>,
}

/// Barman Cloud plugin (`barmancloud.cnpg.io/v1`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreSpec {
    pub configuration: BarmanConfiguration,
    pub retention_policy: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BarmanConfiguration {
    pub destination_path: String,
    #[serde(rename = "endpointURL", skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    pub s3_credentials: S3Credentials,
    pub wal: BarmanCompression,
    pub data: BarmanData,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Credentials {
    pub access_key_id: SecretKeySelector,
    pub secret_access_key: SecretKeySelector,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretKeySelector {
    pub name: String,
    pub key: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct BarmanCompression {
    pub compression: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct BarmanData {
    pub compression: &'static str,
    pub jobs: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledBackupSpec {
    /// Six fields: seconds first.
    pub schedule: String,
    pub immediate: bool,
    pub backup_owner_reference: &'static str,
    pub cluster: NameRef,
    pub method: &'static str,
    pub plugin_configuration: PluginRef,
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginRef {
    pub name: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolerSpec {
    pub cluster: NameRef,
    pub instances: u32,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub pgbouncer: PgBouncer,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PgBouncer {
    pub pool_mode: &'static str,
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CnpgPostgresql {
    pub parameters: BTreeMap<String, String>,
    pub pg_hba: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<CnpgSynchronous>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CnpgSynchronous {
    pub method: &'static str,
    pub number: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpgStorage {
    pub size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpgAffinity {
    pub enable_pod_anti_affinity: bool,
    pub topology_key: &'static str,
    pub pod_anti_affinity_type: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: Labels,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PriorityClassBody {
    pub value: u32,
    pub global_default: bool,
    pub preemption_policy: &'static str,
    pub description: &'static str,
}

// ---- Kyverno ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KyvernoPolicySpec {
    pub background: bool,
    pub webhook_timeout_seconds: u32,
    pub rules: Vec<KyvernoRule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KyvernoRule {
    pub name: &'static str,
    #[serde(rename = "match")]
    pub matching: KyvernoMatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validate: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_images: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KyvernoMatch {
    pub any: Vec<KyvernoResources>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KyvernoResources {
    pub resources: KyvernoResourceFilter,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KyvernoResourceFilter {
    pub kinds: Vec<&'static str>,
    pub namespace_selector: LabelSelector,
    pub selector: SetSelector,
}

/// A label selector with `matchExpressions`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetSelector {
    pub match_expressions: Vec<SetRequirement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetRequirement {
    pub key: &'static str,
    pub operator: &'static str,
    pub values: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CnpgManaged {
    pub roles: Vec<CnpgRole>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpgRole {
    pub name: String,
    pub ensure: &'static str,
    pub comment: String,
    pub login: bool,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub inherit: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub connection_limit: i64,
    pub password_secret: NameRef,
}

#[derive(Debug, Clone, Serialize)]
pub struct NameRef {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpgDatabaseSpec {
    pub name: String,
    pub owner: String,
    pub cluster: NameRef,
    pub ensure: &'static str,
    pub database_reclaim_policy: &'static str,
}

// ---- External Secrets ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretSpec {
    pub refresh_interval: &'static str,
    pub secret_store_ref: StoreRef,
    pub target: EsTarget,
    pub data: Vec<EsData>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreRef {
    pub kind: &'static str,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EsTarget {
    pub name: String,
    pub creation_policy: &'static str,
    pub deletion_policy: &'static str,
    pub template: EsTemplate,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EsTemplate {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub engine_version: &'static str,
    /// Go templates over the fetched values: never a value itself.
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EsData {
    pub secret_key: String,
    pub remote_ref: RemoteRef,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteRef {
    pub key: String,
    pub property: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushSecretSpec {
    pub refresh_interval: &'static str,
    pub update_policy: &'static str,
    pub deletion_policy: &'static str,
    pub secret_store_refs: Vec<StoreRef>,
    pub selector: PushSelector,
    pub data: Vec<PushData>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushSelector {
    pub secret: NameRef,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushData {
    #[serde(rename = "match")]
    pub matching: PushMatch,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushMatch {
    pub secret_key: String,
    pub remote_ref: PushRemoteRef,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushRemoteRef {
    pub remote_key: String,
    pub property: String,
}

// ---- kustomize, Argo CD, Flux ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: &'static str,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSetSpec {
    pub go_template: bool,
    pub go_template_options: Vec<&'static str>,
    pub generators: Vec<AppSetGenerator>,
    pub template: AppTemplate,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppSetGenerator {
    pub git: GitGenerator,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GitGenerator {
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    pub revision: String,
    pub directories: Vec<GitDirectory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GitDirectory {
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppTemplate {
    pub metadata: AppTemplateMeta,
    pub spec: AppSpec,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppTemplateMeta {
    pub name: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    pub project: String,
    pub source: AppSource,
    pub destination: AppDestination,
    pub sync_policy: AppSyncPolicy,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSource {
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    pub target_revision: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppDestination {
    pub server: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSyncPolicy {
    pub automated: AppAutomated,
    pub sync_options: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppAutomated {
    pub prune: bool,
    pub self_heal: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxKustomizationSpec {
    pub interval: &'static str,
    pub path: String,
    pub prune: bool,
    pub wait: bool,
    pub timeout: &'static str,
    pub source_ref: FluxSourceRef,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<NameRef>,
    /// With SOPS: Flux decrypts the folder's SOPS files with the age
    /// identity in this secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decryption: Option<FluxDecryption>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxDecryption {
    pub provider: &'static str,
    pub secret_ref: NameRef,
}

#[derive(Debug, Clone, Serialize)]
pub struct FluxSourceRef {
    pub kind: &'static str,
    pub name: String,
}

// ---- cert-manager, Traefik ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub dns_names: Vec<String>,
    pub issuer_ref: IssuerRef,
    pub private_key: PrivateKey,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssuerRef {
    pub name: String,
    pub kind: &'static str,
    pub group: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKey {
    pub algorithm: &'static str,
    pub size: u32,
    pub rotation_policy: &'static str,
}

/// A Traefik `Middleware`: exactly one of the fields is set.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MiddlewareSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersMiddleware>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitMiddleware>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_allow_list: Option<IpAllowList>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadersMiddleware {
    pub sts_seconds: u64,
    pub sts_include_subdomains: bool,
    pub content_type_nosniff: bool,
    pub referrer_policy: &'static str,
    pub content_security_policy: &'static str,
    /// An empty value removes the header from responses.
    pub custom_response_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimitMiddleware {
    pub average: u64,
    pub period: &'static str,
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAllowList {
    pub source_range: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRouteSpec {
    pub entry_points: Vec<&'static str>,
    pub routes: Vec<TraefikRoute>,
    pub tls: TraefikTls,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraefikRoute {
    pub kind: &'static str,
    #[serde(rename = "match")]
    pub matching: String,
    pub priority: u32,
    pub middlewares: Vec<NameRef>,
    pub services: Vec<TraefikService>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraefikService {
    pub name: &'static str,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraefikTls {
    pub secret_name: &'static str,
}

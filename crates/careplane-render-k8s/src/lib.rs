//! careplane's Kubernetes target: the specs rendered as a GitOps repository.
//!
//! [`render`] turns a [`SpecSet`] into a [`Tree`] — relative paths and YAML —
//! from the typed desired resources of `careplane-model` (never the engine,
//! the state store or the local runtime: the model is the boundary). The tree
//! is a kustomize repository (bases, an overlay per environment kind, a folder
//! per tenant environment and per PostgreSQL/Redis scope) plus the Argo CD
//! `ApplicationSet` and Flux `Kustomization`s that sync it, on CloudNativePG
//! and External Secrets. See `docs/design/0008-kubernetes-target.md`.
//!
//! Rendering is deterministic (no timestamps, stable order) and holds no
//! secret: credentials are `ExternalSecret` references into a secret store.
//! [`write_tree`] writes a tree atomically and removes what is no longer
//! rendered; [`check_tree`] names the file and field of every hand edit.

mod data;
mod env;
mod gitops;
pub mod k8s;
mod names;
mod route;
pub mod sops;
mod tree;
mod yaml;

use std::collections::BTreeMap;

use careplane_model::{ModelError, Props};
use careplane_spec::SpecSet;
use serde::Serialize;

pub use names::{env_namespace, odoo_uids, pg_namespace, redis_namespace, role_name};
pub use sops::{SecretInput, SecretValues};
pub use tree::{check_tree, write_tree, Drift, DriftKind, WriteReport};

/// Top-level folders of the tree that careplane owns: [`write_tree`] removes
/// files in them that it no longer renders; everything else in the
/// repository (README, CI files) is left alone.
pub const MANAGED_DIRS: &[&str] = &[
    "argocd", "bases", "flux", "overlays", "platform", "postgres", "redis", "tenants",
];

/// What the specs do not say yet (see the report in issue 19): images, the
/// secret store, the Git repository and cluster-specific names.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Odoo image; production and DR environments need it pinned by digest
    /// (`repo@sha256:<64 hex>`).
    pub odoo_image: String,
    /// Redis image (same digest rule for servers with a production tenant).
    pub redis_image: String,
    /// PostgreSQL image for CloudNativePG's `imageName` (same rule).
    pub postgres_image: String,
    /// The Odoo command in the image.
    pub odoo_command: Vec<String>,
    /// `addons_path` inside the image (the spec's addons paths are paths on
    /// the local machine).
    pub odoo_addons_paths: Vec<String>,
    /// Key that makes PostgreSQL role names opaque (see [`role_name`]); at
    /// least 16 characters, kept where tenants cannot read it. Not a
    /// credential: it never reaches the tree or a message.
    pub role_key: String,
    /// The External Secrets `ClusterSecretStore` holding careplane's secrets.
    pub secret_store: String,
    /// Where Argo CD finds this repository.
    pub repo_url: String,
    pub revision: String,
    pub argocd_namespace: String,
    pub argocd_project: String,
    pub flux_namespace: String,
    /// The Flux `GitRepository` of this repository (`flux bootstrap` makes `flux-system`).
    pub flux_source: String,
    /// Namespace and pod labels of the ingress controller (Traefik), the only
    /// pods that may reach Odoo's ports.
    pub ingress_namespace: String,
    pub ingress_pod_labels: BTreeMap<String, String>,
    /// Namespace of the CloudNativePG operator.
    pub cnpg_namespace: String,
    /// Storage class of the filestore volume (must offer ReadWriteMany);
    /// `None`: the cluster's default.
    pub filestore_storage_class: Option<String>,
    pub filestore_size: String,
    pub postgres_storage_class: Option<String>,
    pub postgres_storage_size: String,
}

impl RenderOptions {
    /// Defaults for everything but the images and the role key.
    pub fn new(odoo_image: &str, redis_image: &str, postgres_image: &str, role_key: &str) -> Self {
        RenderOptions {
            odoo_image: odoo_image.into(),
            redis_image: redis_image.into(),
            postgres_image: postgres_image.into(),
            odoo_command: vec!["odoo".into()],
            odoo_addons_paths: vec![
                "/usr/lib/python3/dist-packages/odoo/addons".into(),
                "/mnt/extra-addons".into(),
            ],
            role_key: role_key.into(),
            secret_store: "careplane".into(),
            repo_url: "https://git.example.org/platform/careplane-gitops.git".into(),
            revision: "main".into(),
            argocd_namespace: "argocd".into(),
            argocd_project: "default".into(),
            flux_namespace: "flux-system".into(),
            flux_source: "flux-system".into(),
            ingress_namespace: "traefik".into(),
            ingress_pod_labels: [("app.kubernetes.io/name".to_string(), "traefik".to_string())]
                .into(),
            cnpg_namespace: "cnpg-system".into(),
            filestore_storage_class: None,
            filestore_size: "10Gi".into(),
            postgres_storage_class: None,
            postgres_storage_size: "20Gi".into(),
        }
    }
}

/// A rendered repository: relative paths (`/`-separated) to file contents.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tree {
    pub files: BTreeMap<String, String>,
}

impl Tree {
    fn add(&mut self, path: String, content: String) {
        let old = self.files.insert(path, content);
        debug_assert!(old.is_none(), "two objects rendered to one file");
    }

    /// Several objects in one file, as YAML documents.
    fn objects<T: Serialize>(&mut self, path: String, objs: &[T]) {
        let mut s = String::from(HEADER);
        for (i, o) in objs.iter().enumerate() {
            if i > 0 {
                s.push_str("---\n");
            }
            s.push_str(&to_yaml(o));
        }
        self.add(path, s);
    }
}

const HEADER: &str = "# Rendered by careplane from the specs: change the specs, not this file.\n";

fn to_yaml<T: Serialize>(obj: &T) -> String {
    yaml::to_string(obj)
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "environment {environment} ({kind}): {what} image {image:?} is not pinned by digest; \
         production and DR environments need `name@sha256:<64 hex digits>`"
    )]
    ImageNotPinned {
        environment: String,
        kind: String,
        what: &'static str,
        image: String,
    },
    #[error(
        "environment {environment} ({kind}): its PostgreSQL cluster would have no backups; \
         production and DR environments need the Platform's spec.kubernetes.backups \
         (an s3:// destinationPath for WAL archiving and base backups)"
    )]
    NoBackups { environment: String, kind: String },
    #[error("render option {option}: {message}")]
    Option {
        option: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "the Platform keeps its secrets in SOPS files (spec.kubernetes.secrets.sops): \
         rendering needs the secret values (careplane render --secret-values FILE)"
    )]
    SecretValuesNeeded,
    #[error(
        "{file}: the secret values have no non-empty {property:?} under {key:?} \
         (add it to the secret values file)"
    )]
    MissingSecretValue {
        file: String,
        key: String,
        property: String,
    },
}

/// The repository the specs ask for, when the Platform keeps its secrets in
/// an External Secrets store (the default). A Platform that chose SOPS files
/// needs [`render_with`] and the secret values.
pub fn render(specs: &SpecSet, opts: &RenderOptions) -> Result<Tree, RenderError> {
    render_with(specs, opts, None)
}

/// [`render`], with the secret values the SOPS files are made of (ignored
/// when the Platform uses External Secrets).
pub fn render_with(
    specs: &SpecSet,
    opts: &RenderOptions,
    secrets: Option<&SecretInput>,
) -> Result<Tree, RenderError> {
    check_options(opts)?;
    let sops = match specs
        .platform
        .spec
        .kubernetes
        .as_ref()
        .and_then(|k| k.secrets.as_ref())
        .and_then(|s| s.sops.as_ref())
    {
        None => None,
        Some(settings) => {
            let input = secrets.ok_or(RenderError::SecretValuesNeeded)?;
            let recipients = sops::recipients(&settings.age_recipients).map_err(|message| {
                RenderError::Option {
                    option: "platform spec.kubernetes.secrets.sops.ageRecipients",
                    message,
                }
            })?;
            Some(SopsCtx {
                input,
                recipients,
                fingerprint_key: sops::fingerprint_key(&opts.role_key),
            })
        }
    };
    let mut model = Model::default();
    for r in careplane_model::desired(specs) {
        match r.typed()? {
            Props::PgCluster(p) => {
                model.pg_clusters.insert(p.scope.clone(), p);
            }
            Props::PgDatabase(p) => model.pg_databases.push(p),
            Props::RedisServer(p) => {
                model.redis_servers.insert(p.scope.clone(), p);
            }
            Props::RedisUser(p) => model.redis_users.push(p),
            Props::OdooEnv(p) => model.odoo_envs.push(p),
            // The routes (a host per environment); Traefik serves them.
            Props::Ingress(p) => model.ingress = Some(p),
            // CNPG and cert-manager issue the certificates; templates are a
            // local-target optimisation (each environment's init Job
            // installs instead).
            Props::Ca(_) | Props::OdooTemplate(_) => {}
        }
    }
    // Stable order whatever desired() does.
    model
        .pg_databases
        .sort_by(|a, b| (&a.tenant, &a.environment).cmp(&(&b.tenant, &b.environment)));
    model
        .redis_users
        .sort_by(|a, b| (&a.tenant, &a.environment).cmp(&(&b.tenant, &b.environment)));
    model
        .odoo_envs
        .sort_by(|a, b| (&a.tenant, &a.environment).cmp(&(&b.tenant, &b.environment)));

    let ctx = Ctx::new(specs, opts, &model, sops);
    // Environments render independently: split them over the cores, in
    // order, so the first error reported is the first environment's by
    // name whatever the machine. The data folders render meanwhile.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = model.odoo_envs.len().div_ceil(threads).max(1);
    let (envs, data) = std::thread::scope(|s| {
        let handles: Vec<_> = model
            .odoo_envs
            .chunks(chunk)
            .map(|envs| {
                let ctx = &ctx;
                s.spawn(move || -> Result<Tree, RenderError> {
                    let mut tree = Tree::default();
                    for p in envs {
                        env::render(ctx, p, &mut tree)?;
                    }
                    Ok(tree)
                })
            })
            .collect();
        let data = (|| -> Result<Tree, RenderError> {
            let mut tree = Tree::default();
            data::render_postgres(&ctx, &model, &mut tree)?;
            data::render_redis(&ctx, &model, &mut tree)?;
            gitops::render(&ctx, &model, &mut tree);
            Ok(tree)
        })();
        let envs: Vec<Result<Tree, RenderError>> = handles
            .into_iter()
            .map(|h| h.join().expect("rendering an environment does not panic"))
            .collect();
        (envs, data)
    });
    let mut out = Tree::default();
    for t in envs {
        out.files.append(&mut t?.files);
    }
    out.files.append(&mut data?.files);
    Ok(out)
}

/// [`render`] then [`write_tree`].
pub fn write(
    specs: &SpecSet,
    opts: &RenderOptions,
    dir: &std::path::Path,
) -> Result<WriteReport, RenderError> {
    let tree = render(specs, opts)?;
    write_tree(&tree, dir)
}

/// [`render`] then [`check_tree`]: how `dir` differs from what the specs ask for.
pub fn check(
    specs: &SpecSet,
    opts: &RenderOptions,
    dir: &std::path::Path,
) -> Result<Vec<Drift>, RenderError> {
    let tree = render(specs, opts)?;
    check_tree(&tree, dir)
}

/// [`render_with`] then [`write_tree`]; unchanged SOPS files in `dir` are
/// kept as they are.
pub fn write_with(
    specs: &SpecSet,
    opts: &RenderOptions,
    values: &SecretValues,
    now: &str,
    dir: &std::path::Path,
) -> Result<WriteReport, RenderError> {
    let input = SecretInput {
        values,
        previous: Some(dir),
        now: now.to_string(),
    };
    let tree = render_with(specs, opts, Some(&input))?;
    write_tree(&tree, dir)
}

/// [`render_with`] then [`check_tree`]: a SOPS file whose secret values or
/// recipients changed is reported (by file; its values never are).
pub fn check_with(
    specs: &SpecSet,
    opts: &RenderOptions,
    values: &SecretValues,
    dir: &std::path::Path,
) -> Result<Vec<Drift>, RenderError> {
    let input = SecretInput {
        values,
        previous: Some(dir),
        now: "1970-01-01T00:00:00Z".to_string(),
    };
    let tree = render_with(specs, opts, Some(&input))?;
    check_tree(&tree, dir)
}

fn check_options(opts: &RenderOptions) -> Result<(), RenderError> {
    let bad = |option, message: &str| {
        Err(RenderError::Option {
            option,
            message: message.into(),
        })
    };
    if opts.role_key.chars().count() < 16 {
        return bad(
            "role_key",
            "must be at least 16 characters (it makes role names unguessable)",
        );
    }
    for (option, image) in [
        ("odoo_image", &opts.odoo_image),
        ("redis_image", &opts.redis_image),
        ("postgres_image", &opts.postgres_image),
    ] {
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad(
                option,
                "must be a non-empty image reference without whitespace",
            );
        }
    }
    if opts.odoo_command.is_empty() {
        return bad("odoo_command", "must name the Odoo executable");
    }
    for p in &opts.odoo_addons_paths {
        if !p.starts_with('/') || p.contains(',') || p.chars().any(char::is_control) {
            return bad(
                "odoo_addons_paths",
                &format!("{p:?} must be absolute, without commas or control characters"),
            );
        }
    }
    Ok(())
}

/// Whether `image` is pinned: `…@sha256:` and 64 lowercase hex digits.
pub fn pinned_by_digest(image: &str) -> bool {
    image.rsplit_once("@sha256:").is_some_and(|(name, d)| {
        !name.is_empty()
            && d.len() == 64
            && d.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The typed resources, by kind.
#[derive(Default)]
struct Model {
    pg_clusters: BTreeMap<String, careplane_model::PgClusterProps>,
    pg_databases: Vec<careplane_model::PgDatabaseProps>,
    redis_servers: BTreeMap<String, careplane_model::RedisServerProps>,
    redis_users: Vec<careplane_model::RedisUserProps>,
    odoo_envs: Vec<careplane_model::OdooEnvProps>,
    ingress: Option<careplane_model::IngressProps>,
}

/// With SOPS: the values, the recipients and the fingerprint key.
struct SopsCtx<'a> {
    input: &'a SecretInput<'a>,
    recipients: Vec<age::x25519::Recipient>,
    fingerprint_key: [u8; 32],
}

/// What every part of the rendering reads besides the resource at hand.
struct Ctx<'a> {
    specs: &'a SpecSet,
    opts: &'a RenderOptions,
    /// Set when the Platform keeps its secrets in SOPS files.
    sops: Option<SopsCtx<'a>>,
    platform: &'a str,
    /// (tenant, env) → uid.
    uids: BTreeMap<(String, String), u32>,
    /// `odoo-env` id → host name, when the Platform has an ingress.
    hosts: BTreeMap<String, String>,
    /// By name: `SpecSet::tenant` is a linear search, and every environment
    /// asks (10,000 environments made it quadratic).
    tenants: std::collections::HashMap<
        &'a str,
        &'a careplane_spec::Document<careplane_spec::TenantSpec>,
    >,
}

impl<'a> Ctx<'a> {
    fn new(
        specs: &'a SpecSet,
        opts: &'a RenderOptions,
        model: &Model,
        sops: Option<SopsCtx<'a>>,
    ) -> Ctx<'a> {
        let range = specs
            .platform
            .spec
            .odoo
            .as_ref()
            .and_then(|o| o.uids)
            .unwrap_or(careplane_spec::UidRange::DEFAULT);
        let envs: Vec<(String, String)> = model
            .odoo_envs
            .iter()
            .map(|p| (p.tenant.clone(), p.environment.clone()))
            .collect();
        Ctx {
            specs,
            opts,
            sops,
            platform: &specs.platform.metadata.name,
            uids: odoo_uids(&envs, range),
            tenants: specs
                .tenants
                .iter()
                .map(|t| (t.metadata.name.as_str(), t))
                .collect(),
            hosts: model
                .ingress
                .iter()
                .flat_map(|i| &i.routes)
                .map(|r| (r.env.clone(), r.host.clone()))
                .collect(),
        }
    }

    /// Node selector and toleration of a tenant's own node pool: only for
    /// `dedicated-env` tenants, when the Platform asks for node pools.
    /// `scope` is a tenant name or `shared`.
    fn node_pool(&self, scope: &str) -> (k8s::Labels, Vec<k8s::Toleration>) {
        let wanted = self.kubernetes().is_some_and(|k| k.dedicated_node_pools)
            && self
                .tenants
                .get(scope)
                .is_some_and(|t| t.spec.tenancy == careplane_spec::Tenancy::DedicatedEnv);
        if !wanted {
            return Default::default();
        }
        (
            names::labels(&[(NODE_POOL_LABEL, scope)]),
            vec![k8s::Toleration {
                key: NODE_POOL_LABEL,
                operator: "Equal",
                value: scope.to_string(),
                effect: "NoSchedule",
            }],
        )
    }

    /// The spec's storage classes win over the render options'.
    fn storage_classes(&self) -> Option<&'a careplane_spec::kubernetes::StorageClasses> {
        self.kubernetes().and_then(|k| k.storage_classes.as_ref())
    }

    /// The Platform's `spec.kubernetes`, if it has one.
    fn kubernetes(&self) -> Option<&'a careplane_spec::KubernetesSettings> {
        self.specs.platform.spec.kubernetes.as_deref()
    }

    /// The tenant's tier availability in percent (the model has no tier: read
    /// from the specs). No tier: treated as below 99.9.
    fn availability(&self, tenant: &str) -> f64 {
        self.tenants
            .get(tenant)
            .and_then(|t| self.specs.tier_of(&t.spec))
            .map(|t| t.spec.availability)
            .unwrap_or(0.0)
    }

    /// Remote key of a secret in the store; one place so that the keys
    /// careplane reads can be documented and populated.
    fn store_key(&self, parts: &[&str]) -> String {
        let mut k = format!("careplane/{}", self.platform);
        for p in parts {
            k.push('/');
            k.push_str(p);
        }
        k
    }
}

fn production_like(kind: &str) -> bool {
    matches!(kind, "production" | "dr")
}

/// Node label (and taint key) of a `dedicated-env` tenant's node pool.
pub const NODE_POOL_LABEL: &str = "careplane.dev/pool";

/// PriorityClasses (rendered in `platform/`): production and DR pods are
/// scheduled, and may preempt, ahead of everything else careplane runs.
pub const PRIORITY_PRODUCTION: &str = "careplane-production";
pub const PRIORITY_OTHER: &str = "careplane-non-production";

fn priority_class(production: bool) -> &'static str {
    if production {
        PRIORITY_PRODUCTION
    } else {
        PRIORITY_OTHER
    }
}

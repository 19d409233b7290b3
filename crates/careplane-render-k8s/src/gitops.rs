//! What every environment namespace shares (bases, an overlay per kind) and
//! the objects that make Argo CD or Flux sync the repository.

use std::collections::{BTreeMap, BTreeSet};

use crate::env::{ns_selector, scope_of, ErasedYaml};
use crate::k8s::*;
use crate::names::{common_labels, labels};
use crate::{production_like, Ctx, Model, Tree, HEADER, PRIORITY_OTHER, PRIORITY_PRODUCTION};

/// With SOPS: the Flux secret holding the cluster's age identity.
pub const SOPS_AGE_SECRET: &str = "sops-age";

fn kustomization(resources: Vec<String>) -> String {
    HEADER.to_string()
        + &crate::to_yaml(&Kustomization {
            api_version: "kustomize.config.k8s.io/v1beta1",
            kind: "Kustomization",
            namespace: None,
            resources,
        })
}

fn meta(name: &str) -> Meta {
    Meta {
        name: name.into(),
        namespace: None,
        labels: common_labels(),
        annotations: BTreeMap::new(),
    }
}

pub fn render(ctx: &Ctx, model: &Model, tree: &mut Tree) {
    // Base of every environment namespace: nothing in or out but DNS, until
    // the environment's own policies open exactly its flows.
    let deny = object(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        meta("default-deny"),
        Spec {
            spec: NetworkPolicySpec {
                pod_selector: LabelSelector::default(),
                policy_types: vec!["Ingress", "Egress"],
                ingress: vec![],
                egress: vec![],
            },
        },
    );
    let dns = object(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        meta("allow-dns"),
        Spec {
            spec: NetworkPolicySpec {
                pod_selector: LabelSelector::default(),
                policy_types: vec!["Egress"],
                ingress: vec![],
                egress: vec![EgressRule {
                    to: vec![Peer {
                        ip_block: None,
                        namespace_selector: Some(ns_selector("kube-system")),
                        pod_selector: Some(LabelSelector {
                            match_labels: labels(&[("k8s-app", "kube-dns")]),
                        }),
                    }],
                    ports: vec![
                        PolicyPort {
                            protocol: "UDP",
                            port: 53,
                        },
                        PolicyPort::tcp(53),
                    ],
                }],
            },
        },
    );
    tree.add(
        "bases/namespace/networkpolicy-default-deny.yaml".into(),
        deny.yaml(),
    );
    tree.add(
        "bases/namespace/networkpolicy-allow-dns.yaml".into(),
        dns.yaml(),
    );
    tree.add(
        "bases/namespace/kustomization.yaml".into(),
        kustomization(vec![
            "networkpolicy-allow-dns.yaml".into(),
            "networkpolicy-default-deny.yaml".into(),
        ]),
    );

    let kinds: BTreeSet<&str> = model
        .odoo_envs
        .iter()
        .map(|p| p.environment_kind.as_str())
        .collect();
    for kind in kinds {
        let q = |cpu: &str, mem: &str| -> BTreeMap<String, String> {
            [
                ("cpu".to_string(), cpu.to_string()),
                ("memory".to_string(), mem.to_string()),
            ]
            .into()
        };
        // Defaults for containers careplane did not size (debug pods, sidecars).
        let (default, default_request) = if production_like(kind) {
            (q("1000m", "1Gi"), q("100m", "256Mi"))
        } else {
            (q("500m", "512Mi"), q("50m", "128Mi"))
        };
        let lr = object(
            "v1",
            "LimitRange",
            meta("careplane"),
            Spec {
                spec: LimitRangeSpec {
                    limits: vec![LimitRangeItem {
                        kind: "Container",
                        default,
                        default_request,
                    }],
                },
            },
        );
        tree.add(format!("overlays/{kind}/limitrange.yaml"), lr.yaml());
        tree.add(
            format!("overlays/{kind}/kustomization.yaml"),
            kustomization(vec![
                "../../bases/namespace".into(),
                "limitrange.yaml".into(),
            ]),
        );
    }

    render_platform(ctx, tree);

    let opts = ctx.opts;
    let app_name = format!("careplane-{}", ctx.platform);
    let appset = object(
        "argoproj.io/v1alpha1",
        "ApplicationSet",
        Meta {
            name: app_name.clone(),
            namespace: Some(opts.argocd_namespace.clone()),
            labels: common_labels(),
            annotations: BTreeMap::new(),
        },
        Spec {
            spec: ApplicationSetSpec {
                go_template: true,
                go_template_options: vec!["missingkey=error"],
                generators: vec![AppSetGenerator {
                    git: GitGenerator {
                        repo_url: opts.repo_url.clone(),
                        revision: opts.revision.clone(),
                        directories: ["platform", "postgres/*", "redis/*", "tenants/*/*"]
                            .into_iter()
                            .map(|p| GitDirectory { path: p.into() })
                            .collect(),
                    },
                }],
                template: AppTemplate {
                    metadata: AppTemplateMeta {
                        // tenants/stmarys/production → tenants-stmarys-production.
                        name: "{{ join \"-\" .path.segments }}".into(),
                        labels: labels(&[("careplane.dev/platform", ctx.platform)]),
                    },
                    spec: AppSpec {
                        project: opts.argocd_project.clone(),
                        source: AppSource {
                            repo_url: opts.repo_url.clone(),
                            target_revision: opts.revision.clone(),
                            path: "{{ .path.path }}".into(),
                        },
                        destination: AppDestination {
                            server: "https://kubernetes.default.svc".into(),
                        },
                        sync_policy: AppSyncPolicy {
                            automated: AppAutomated {
                                prune: true,
                                self_heal: true,
                            },
                            sync_options: vec!["ServerSideApply=true"],
                        },
                    },
                },
            },
        },
    );
    // Argo CD applies files as they are: a SOPS file would reach the API
    // server with its ciphertext as the Secret's values (and a `sops` field
    // it drops). It needs KSOPS generators in every kustomization, which
    // careplane does not render; so with SOPS only Flux, which decrypts
    // natively, gets its objects.
    if ctx.sops.is_none() {
        tree.add("argocd/applicationset.yaml".into(), appset.yaml());
    }

    // Flux: one Kustomization per folder, environments after their data.
    // With SOPS, each decrypts with the cluster's age identity, a secret the
    // cluster's bootstrap creates (never rendered: it is the private key).
    let flux = |name: String, path: String, depends_on: Vec<String>| {
        object(
            "kustomize.toolkit.fluxcd.io/v1",
            "Kustomization",
            Meta {
                name,
                namespace: Some(opts.flux_namespace.clone()),
                labels: common_labels(),
                annotations: BTreeMap::new(),
            },
            Spec {
                spec: FluxKustomizationSpec {
                    interval: "10m",
                    path,
                    prune: true,
                    wait: true,
                    timeout: "15m",
                    source_ref: FluxSourceRef {
                        kind: "GitRepository",
                        name: opts.flux_source.clone(),
                    },
                    depends_on: depends_on
                        .into_iter()
                        .map(|name| NameRef { name })
                        .collect(),
                    decryption: ctx.sops.as_ref().map(|_| FluxDecryption {
                        provider: "sops",
                        secret_ref: NameRef {
                            name: SOPS_AGE_SECRET.into(),
                        },
                    }),
                },
            },
        )
    };
    // Everything runs with the platform's PriorityClasses (and under its
    // image policy): they come first.
    let mut docs = vec![flux(PLATFORM.into(), "./platform".into(), vec![])];
    for scope in model.pg_clusters.keys() {
        docs.push(flux(
            format!("pg-{scope}"),
            format!("./postgres/{scope}"),
            vec![PLATFORM.into()],
        ));
    }
    for scope in model.redis_servers.keys() {
        docs.push(flux(
            format!("redis-{scope}"),
            format!("./redis/{scope}"),
            vec![PLATFORM.into()],
        ));
    }
    for p in &model.odoo_envs {
        docs.push(flux(
            format!("env-{}-{}", p.tenant, p.environment),
            format!("./tenants/{}/{}", p.tenant, p.environment),
            vec![
                PLATFORM.into(),
                format!("pg-{}", scope_of(&p.cluster)),
                format!("redis-{}", scope_of(&p.server)),
            ],
        ));
    }
    tree.objects("flux/kustomizations.yaml".into(), &docs);
}

/// Flux Kustomization (and folder) of the cluster-wide objects.
const PLATFORM: &str = "platform";

/// `platform/`: cluster-scoped objects every namespace relies on.
fn render_platform(ctx: &Ctx, tree: &mut Tree) {
    let mut files = Vec::new();
    let mut put = |tree: &mut Tree, file: &str, obj: &dyn ErasedYaml| {
        tree.add(format!("platform/{file}"), obj.yaml());
        files.push(file.to_string());
    };
    for (name, value, preemption, description) in [
        (
            PRIORITY_PRODUCTION,
            100_000,
            "PreemptLowerPriority",
            "careplane: production and DR environments and their data",
        ),
        (
            PRIORITY_OTHER,
            10_000,
            "Never",
            "careplane: every other environment; never preempts",
        ),
    ] {
        put(
            tree,
            &format!("priorityclass-{name}.yaml"),
            &object(
                "scheduling.k8s.io/v1",
                "PriorityClass",
                meta(name),
                PriorityClassBody {
                    value,
                    global_default: false,
                    preemption_policy: preemption,
                    description,
                },
            ),
        );
    }
    if let Some(sig) = ctx.kubernetes().and_then(|k| k.image_signatures.as_ref()) {
        put(
            tree,
            "clusterpolicy-verify-images.yaml",
            &kyverno(&sig.public_key),
        );
    }
    tree.add("platform/kustomization.yaml".into(), kustomization(files));
}

/// Kyverno: the Odoo and Redis pods in careplane's namespaces run only
/// images pinned by digest and signed with the platform's key. CNPG's pods
/// are left out: their operator and plugin images are signed by their
/// project, not by the platform.
fn kyverno(public_key: &str) -> Object<Spec<KyvernoPolicySpec>> {
    let matching = || KyvernoMatch {
        any: vec![KyvernoResources {
            resources: KyvernoResourceFilter {
                kinds: vec!["Pod"],
                namespace_selector: LabelSelector {
                    match_labels: labels(&[("app.kubernetes.io/managed-by", "careplane")]),
                },
                selector: SetSelector {
                    match_expressions: vec![SetRequirement {
                        key: "app.kubernetes.io/name",
                        operator: "In",
                        values: vec!["odoo", "redis"],
                    }],
                },
            },
        }],
    };
    let pinned = serde_json::json!({
        "failureAction": "Enforce",
        "message": "careplane runs only images pinned by digest (name@sha256:…)",
        "pattern": {"spec": {
            "containers": [{"image": "*@sha256:*"}],
            "=(initContainers)": [{"image": "*@sha256:*"}],
        }},
    });
    let signed = serde_json::json!({
        "imageReferences": ["*"],
        "failureAction": "Enforce",
        "mutateDigest": false,
        "verifyDigest": true,
        "required": true,
        "attestors": [{"entries": [{"keys": {"publicKeys": public_key.trim()}}]}],
    });
    object(
        "kyverno.io/v1",
        "ClusterPolicy",
        meta("careplane-verify-images"),
        Spec {
            spec: KyvernoPolicySpec {
                background: false,
                webhook_timeout_seconds: 30,
                rules: vec![
                    KyvernoRule {
                        name: "require-digests",
                        matching: matching(),
                        validate: Some(pinned),
                        verify_images: vec![],
                    },
                    KyvernoRule {
                        name: "verify-signatures",
                        matching: matching(),
                        validate: None,
                        verify_images: vec![signed],
                    },
                ],
            },
        },
    )
}

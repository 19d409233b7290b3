//! One tenant environment (`odoo-env`): its namespace and everything in it.

use std::collections::BTreeMap;

use secrecy::ExposeSecret;
use std::fmt::Write as _;

use careplane_model::OdooEnvProps;

use crate::k8s::*;
use crate::names::{self, common_labels, labels, with, REDIS};
use crate::{pinned_by_digest, production_like, Ctx, RenderError, Tree};

pub const HTTP_PORT: u16 = 8069;
pub const WEBSOCKET_PORT: u16 = 8072;
const DATA_DIR: &str = "/var/lib/odoo";
const CONF_DIR: &str = "/etc/odoo";
const RUN_DIR: &str = "/run/odoo";
const CA_FILE: &str = "/etc/odoo/tls/ca.crt";
/// The secret the environment's `ExternalSecret` makes.
pub const CREDENTIALS: &str = "odoo-credentials";
const SERVICE_ACCOUNT: &str = "odoo";
const CONFIG_MAP: &str = "odoo-config";
const FILESTORE: &str = "odoo-filestore";
/// Pod annotation whose change rolls pods when their configuration changes.
pub const CONFIG_HASH: &str = "careplane.dev/config-hash";

/// Pod labels of an Odoo component; the selectors use name and component.
pub fn pod_labels(component: &str) -> Labels {
    labels(&[
        ("app.kubernetes.io/name", "odoo"),
        ("app.kubernetes.io/component", component),
    ])
}

pub fn scope_of(id: &str) -> &str {
    id.split_once('/').map_or(id, |(_, s)| s)
}

/// Requests and limits of one pod, in millicores and MiB.
#[derive(Debug, Clone, Copy)]
struct Size {
    cpu_req: u64,
    cpu_lim: u64,
    mem_req: u64,
    mem_lim: u64,
}

impl Size {
    fn resources(self) -> Resources {
        let q = |cpu: u64, mem: u64| -> BTreeMap<&'static str, String> {
            [("cpu", format!("{cpu}m")), ("memory", format!("{mem}Mi"))].into()
        };
        Resources {
            requests: q(self.cpu_req, self.mem_req),
            limits: q(self.cpu_lim, self.mem_lim),
        }
    }
}

const MASTER_MIB: u64 = 256;
/// The init container that assembles odoo.conf.
const CONFIG_INIT: Size = Size {
    cpu_req: 10,
    cpu_lim: 100,
    mem_req: 16,
    mem_lim: 64,
};

/// Web pod: `workers` prefork workers plus the gevent (websocket) process,
/// each up to Odoo's hard memory limit, plus the prefork master.
fn web_size(p: &OdooEnvProps) -> Size {
    let procs = u64::from(p.workers) + 1;
    let mem_lim = p.limits.memory_hard.div_ceil(1024 * 1024) * procs + MASTER_MIB;
    let w = u64::from(p.workers.max(1));
    Size {
        cpu_req: 250 * w,
        cpu_lim: 1000 * w,
        mem_req: mem_lim / 2,
        mem_lim,
    }
}

/// Cron (and init) pod: one threaded process.
fn cron_size(p: &OdooEnvProps) -> Size {
    let mem_lim = p.limits.memory_hard.div_ceil(1024 * 1024) + MASTER_MIB;
    Size {
        cpu_req: 250,
        cpu_lim: 1000,
        mem_req: mem_lim / 2,
        mem_lim,
    }
}

/// Replicas, HPA maximum and PDB by environment kind.
fn scaling(kind: &str) -> (u32, u32, PdbSpec) {
    let selector = LabelSelector {
        match_labels: pod_labels("web"),
    };
    if production_like(kind) {
        (
            2,
            4,
            PdbSpec {
                min_available: Some(1),
                max_unavailable: None,
                selector,
            },
        )
    } else {
        (
            1,
            2,
            PdbSpec {
                min_available: None,
                max_unavailable: Some(1),
                selector,
            },
        )
    }
}

pub fn render(ctx: &Ctx, p: &OdooEnvProps, tree: &mut Tree) -> Result<(), RenderError> {
    let opts = ctx.opts;
    let env_name = format!("{}/{}", p.tenant, p.environment);
    if production_like(&p.environment_kind) && !pinned_by_digest(&opts.odoo_image) {
        return Err(RenderError::ImageNotPinned {
            environment: env_name,
            kind: p.environment_kind.clone(),
            what: "Odoo",
            image: opts.odoo_image.clone(),
        });
    }
    let ns = names::env_namespace(&p.tenant, &p.environment);
    let dir = format!("tenants/{}/{}", p.tenant, p.environment);
    let pg_scope = scope_of(&p.cluster);
    let redis_scope = scope_of(&p.server);
    let uid = ctx.uids[&(p.tenant.clone(), p.environment.clone())];
    let role = names::role_name(&opts.role_key, &p.tenant, &p.environment);
    let base = with(
        common_labels(),
        &[
            ("careplane.dev/tenant", &p.tenant),
            ("careplane.dev/environment", &p.environment),
        ],
    );
    let meta = |name: &str| Meta {
        name: name.into(),
        namespace: None,
        labels: base.clone(),
        annotations: BTreeMap::new(),
    };
    let mut files: Vec<String> = Vec::new();
    let mut put = |tree: &mut Tree, file: &str, obj: &dyn ErasedYaml| {
        files.push(file.to_string());
        tree.add(format!("{dir}/{file}"), obj.yaml());
    };

    let ns_labels = names::restricted(with(
        base.clone(),
        &[
            ("careplane.dev/environment-kind", &p.environment_kind),
            ("careplane.dev/postgres-client", pg_scope),
            ("careplane.dev/redis-client", redis_scope),
        ],
    ));
    put(
        tree,
        "namespace.yaml",
        &object(
            "v1",
            "Namespace",
            Meta {
                name: ns.clone(),
                labels: ns_labels,
                ..Meta::default()
            },
            Empty {},
        ),
    );
    put(
        tree,
        "serviceaccount.yaml",
        &object(
            "v1",
            "ServiceAccount",
            meta(SERVICE_ACCOUNT),
            ServiceAccountBody {
                automount_service_account_token: false,
            },
        ),
    );

    // Through the cluster's PgBouncer (its name is in the server certificate).
    let pg_host = format!(
        "{}.{}.svc",
        crate::data::POOLER,
        names::pg_namespace(pg_scope)
    );
    let redis_host = format!("{REDIS}.{}.svc", names::redis_namespace(redis_scope));
    let conf = |role_kind: Role| odoo_conf(ctx, p, role_kind, &role, &pg_host, &redis_host);
    let (web_conf, cron_conf) = (conf(Role::Web), conf(Role::Cron));
    // In the pod templates: a changed odoo.conf rolls the pods (they copy it
    // at start).
    let config_hash = careplane_spec::names::fingerprint(&[web_conf.clone(), cron_conf.clone()]);
    put(
        tree,
        "configmap-odoo-config.yaml",
        &object(
            "v1",
            "ConfigMap",
            meta(CONFIG_MAP),
            ConfigMapBody {
                data: [
                    ("odoo-cron.conf".to_string(), cron_conf),
                    ("odoo-web.conf".to_string(), web_conf),
                ]
                .into(),
            },
        ),
    );

    let redis_user = careplane_model::env_db_name(&p.tenant, &p.environment);
    let es_data = vec![
        es(
            "admin_passwd",
            ctx.store_key(&["odoo", &p.tenant, &p.environment]),
            "admin_passwd_hash",
        ),
        es(
            "ca_crt",
            ctx.store_key(&["postgres-ca", pg_scope]),
            "ca.crt",
        ),
        es(
            "pg_password",
            ctx.store_key(&["postgres", &p.tenant, &p.environment]),
            "password",
        ),
        es(
            "redis_password",
            ctx.store_key(&["redis", &p.tenant, &p.environment]),
            "password",
        ),
    ];
    let template: BTreeMap<String, String> = [
        ("ADMIN_PASSWD", "{{ .admin_passwd }}".to_string()),
        (
            "CAREPLANE_REDIS_URL",
            format!(
                "redis://{redis_user}:{{{{ .redis_password | urlquery }}}}@{redis_host}:6379/0"
            ),
        ),
        ("ODOO_REDIS_PASSWORD", "{{ .redis_password }}".to_string()),
        ("PGPASSWORD", "{{ .pg_password }}".to_string()),
        ("ca.crt", "{{ .ca_crt }}".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (file, text) = credentials(
        ctx,
        &dir,
        meta(CREDENTIALS),
        CREDENTIALS,
        "Opaque",
        template,
        es_data,
    )?;
    put(tree, &file, &text);

    put(
        tree,
        "pvc-odoo-filestore.yaml",
        &object(
            "v1",
            "PersistentVolumeClaim",
            meta(FILESTORE),
            Spec {
                spec: PvcSpec {
                    access_modes: vec!["ReadWriteMany".into()],
                    storage_class_name: ctx
                        .storage_classes()
                        .and_then(|s| s.filestore.clone())
                        .or_else(|| opts.filestore_storage_class.clone()),
                    resources: PvcResources {
                        requests: [("storage".to_string(), opts.filestore_size.clone())].into(),
                    },
                },
            },
        ),
    );

    let (replicas, max_replicas, pdb) = scaling(&p.environment_kind);
    let mut web = odoo_pod(ctx, p, uid, "web", web_size(p), Role::Web, &[]);
    web.metadata
        .annotations
        .insert(CONFIG_HASH.into(), config_hash.as_str().into());
    put(
        tree,
        "deployment-odoo-web.yaml",
        &object(
            "apps/v1",
            "Deployment",
            meta("odoo-web"),
            Spec {
                spec: DeploymentSpec {
                    // The HPA starts it at `replicas` and owns it from then on.
                    replicas: None,
                    revision_history_limit: 3,
                    selector: LabelSelector {
                        match_labels: pod_labels("web"),
                    },
                    strategy: Strategy {
                        kind: "RollingUpdate",
                        rolling_update: Some(RollingUpdate {
                            max_surge: 1,
                            max_unavailable: 0,
                        }),
                    },
                    template: web,
                },
            },
        ),
    );
    let mut cron = odoo_pod(
        ctx,
        p,
        uid,
        "cron",
        cron_size(p),
        Role::Cron,
        &["--no-http"],
    );
    cron.metadata
        .annotations
        .insert(CONFIG_HASH.into(), config_hash.as_str().into());
    put(
        tree,
        "deployment-odoo-cron.yaml",
        &object(
            "apps/v1",
            "Deployment",
            meta("odoo-cron"),
            Spec {
                spec: DeploymentSpec {
                    // One scheduler: two would run each job twice.
                    replicas: Some(1),
                    revision_history_limit: 3,
                    selector: LabelSelector {
                        match_labels: pod_labels("cron"),
                    },
                    strategy: Strategy {
                        kind: "Recreate",
                        rolling_update: None,
                    },
                    template: cron,
                },
            },
        ),
    );
    let modules = p.modules.join(",");
    let mut init = odoo_pod(
        ctx,
        p,
        uid,
        "init",
        cron_size(p),
        Role::Cron,
        &["--no-http", "--stop-after-init", "-i", &modules],
    );
    init.spec.restart_policy = Some("Never");
    // A Job's pod template cannot change: a new module set, image or uid is
    // a new Job (which runs once), and the old one is pruned.
    let mut job_key = p.modules.clone();
    job_key.extend([opts.odoo_image.clone(), uid.to_string()]);
    let job_name = format!("odoo-init-{}", careplane_spec::names::fingerprint(&job_key));
    put(
        tree,
        "job-odoo-init.yaml",
        &object(
            "batch/v1",
            "Job",
            meta(&job_name),
            Spec {
                spec: JobSpec {
                    backoff_limit: 3,
                    template: init,
                },
            },
        ),
    );

    let service = |name: &str, port: u16, target: &str| {
        object(
            "v1",
            "Service",
            meta(name),
            Spec {
                spec: ServiceSpec {
                    kind: "ClusterIP",
                    cluster_ip: None,
                    selector: pod_labels("web"),
                    ports: vec![ServicePort {
                        name: target.into(),
                        port,
                        target_port: target.into(),
                        protocol: "TCP",
                    }],
                },
            },
        )
    };
    put(
        tree,
        "service-odoo-http.yaml",
        &service("odoo-http", HTTP_PORT, "http"),
    );
    put(
        tree,
        "service-odoo-websocket.yaml",
        &service("odoo-websocket", WEBSOCKET_PORT, "websocket"),
    );

    put(
        tree,
        "hpa-odoo-web.yaml",
        &object(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            meta("odoo-web"),
            Spec {
                spec: HpaSpec {
                    scale_target_ref: ScaleTarget {
                        api_version: "apps/v1",
                        kind: "Deployment",
                        name: "odoo-web".into(),
                    },
                    min_replicas: replicas,
                    max_replicas,
                    metrics: vec![HpaMetric {
                        kind: "Resource",
                        resource: HpaResource {
                            name: "cpu",
                            target: HpaTarget {
                                kind: "Utilization",
                                average_utilization: 70,
                            },
                        },
                    }],
                },
            },
        ),
    );
    put(
        tree,
        "pdb-odoo-web.yaml",
        &object(
            "policy/v1",
            "PodDisruptionBudget",
            meta("odoo-web"),
            Spec { spec: pdb },
        ),
    );

    // Everything the namespace's pods may ask for: web at the HPA's maximum
    // plus a rolling update's surge, cron, and the init Job.
    let (w, c) = (web_size(p), cron_size(p));
    let web_pods = u64::from(max_replicas) + 1;
    let sum = |f: fn(Size) -> u64| f(w) * web_pods + f(c) * 2;
    let hard: BTreeMap<String, String> = [
        ("limits.cpu", format!("{}m", sum(|s| s.cpu_lim))),
        ("limits.memory", format!("{}Mi", sum(|s| s.mem_lim))),
        ("persistentvolumeclaims", "1".to_string()),
        ("pods", (web_pods + 2).to_string()),
        ("requests.cpu", format!("{}m", sum(|s| s.cpu_req))),
        ("requests.memory", format!("{}Mi", sum(|s| s.mem_req))),
        ("requests.storage", opts.filestore_size.clone()),
        ("services", "2".to_string()),
        ("services.loadbalancers", "0".to_string()),
        ("services.nodeports", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    put(
        tree,
        "resourcequota.yaml",
        &object(
            "v1",
            "ResourceQuota",
            meta("careplane"),
            Spec {
                spec: QuotaSpec { hard },
            },
        ),
    );

    put(
        tree,
        "networkpolicy-odoo-web-from-ingress.yaml",
        &object(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            meta("odoo-web-from-ingress"),
            Spec {
                spec: NetworkPolicySpec {
                    pod_selector: LabelSelector {
                        match_labels: pod_labels("web"),
                    },
                    policy_types: vec!["Ingress"],
                    ingress: vec![IngressRule {
                        from: vec![Peer {
                            ip_block: None,
                            namespace_selector: Some(ns_selector(&opts.ingress_namespace)),
                            pod_selector: Some(LabelSelector {
                                match_labels: opts
                                    .ingress_pod_labels
                                    .iter()
                                    .map(|(k, v)| (k.into(), v.into()))
                                    .collect(),
                            }),
                        }],
                        ports: vec![PolicyPort::tcp(HTTP_PORT), PolicyPort::tcp(WEBSOCKET_PORT)],
                    }],
                    egress: vec![],
                },
            },
        ),
    );
    put(
        tree,
        "networkpolicy-odoo-to-data.yaml",
        &object(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            meta("odoo-to-data"),
            Spec {
                spec: NetworkPolicySpec {
                    pod_selector: LabelSelector {
                        match_labels: labels(&[("app.kubernetes.io/name", "odoo")]),
                    },
                    policy_types: vec!["Egress"],
                    ingress: vec![],
                    egress: vec![
                        EgressRule {
                            to: vec![Peer {
                                ip_block: None,
                                namespace_selector: Some(ns_selector(&names::pg_namespace(
                                    pg_scope,
                                ))),
                                pod_selector: Some(LabelSelector {
                                    match_labels: crate::data::pooler_pod_labels(),
                                }),
                            }],
                            ports: vec![PolicyPort::tcp(5432)],
                        },
                        EgressRule {
                            to: vec![Peer {
                                ip_block: None,
                                namespace_selector: Some(ns_selector(&names::redis_namespace(
                                    redis_scope,
                                ))),
                                pod_selector: Some(LabelSelector {
                                    match_labels: crate::data::redis_pod_labels(),
                                }),
                            }],
                            ports: vec![PolicyPort::tcp(6379)],
                        },
                    ],
                },
            },
        ),
    );

    // Mail leaves only for the relay the Platform names, and only from
    // the pods that send it (web and cron).
    if let Some(smtp) = ctx.kubernetes().and_then(|k| k.smtp.as_ref()) {
        put(
            tree,
            "networkpolicy-odoo-to-smtp.yaml",
            &object(
                "networking.k8s.io/v1",
                "NetworkPolicy",
                meta("odoo-to-smtp"),
                Spec {
                    spec: NetworkPolicySpec {
                        pod_selector: LabelSelector {
                            match_labels: labels(&[("app.kubernetes.io/name", "odoo")]),
                        },
                        policy_types: vec!["Egress"],
                        ingress: vec![],
                        egress: vec![EgressRule {
                            to: smtp
                                .cidrs
                                .iter()
                                .map(|c| Peer {
                                    ip_block: Some(IpBlock { cidr: cidr(c) }),
                                    ..Peer::default()
                                })
                                .collect(),
                            ports: vec![PolicyPort::tcp(smtp.port.unwrap_or(587))],
                        }],
                    },
                },
            ),
        );
    }

    let env_id = careplane_model::odoo_env_id(&p.tenant, &p.environment);
    if let Some(host) = ctx.hosts.get(&env_id) {
        for (file, obj) in crate::route::objects(host, ctx.kubernetes(), &meta) {
            put(tree, &file, obj.as_ref());
        }
    }

    let mut resources = vec![format!("../../../overlays/{}", p.environment_kind)];
    resources.extend(files);
    tree.add(
        format!("{dir}/kustomization.yaml"),
        crate::HEADER.to_string()
            + &crate::to_yaml(&Kustomization {
                api_version: "kustomize.config.k8s.io/v1beta1",
                kind: "Kustomization",
                namespace: Some(ns),
                resources,
            }),
    );
    Ok(())
}

/// Objects of different types in one list of files.
pub trait ErasedYaml {
    fn yaml(&self) -> String;
}

impl<B: serde::Serialize> ErasedYaml for Object<B> {
    fn yaml(&self) -> String {
        crate::yaml::to_string_after(crate::HEADER, self)
    }
}

pub fn ns_selector(ns: &str) -> LabelSelector {
    LabelSelector {
        match_labels: labels(&[("kubernetes.io/metadata.name", ns)]),
    }
}

pub fn es(secret_key: &str, key: String, property: &str) -> EsData {
    EsData {
        secret_key: secret_key.into(),
        remote_ref: RemoteRef {
            key,
            property: property.into(),
        },
    }
}

impl ErasedYaml for String {
    fn yaml(&self) -> String {
        self.clone()
    }
}

/// The object that makes the Secret `target` in the folder `dir`, and its
/// file name: an `ExternalSecret` that fetches `data` from the store and
/// fills `template`, or, when the Platform keeps secrets in SOPS files, the
/// Secret itself with the template filled from the secret values, encrypted.
#[allow(clippy::too_many_arguments)]
pub fn credentials(
    ctx: &Ctx,
    dir: &str,
    meta: Meta,
    target: &str,
    kind: &'static str,
    template: BTreeMap<String, String>,
    data: Vec<EsData>,
) -> Result<(String, String), RenderError> {
    let Some(s) = &ctx.sops else {
        return Ok((
            format!("externalsecret-{target}.yaml"),
            external_secret(ctx, meta, target, kind, template, data).yaml(),
        ));
    };
    let file = format!("secret-{target}.yaml");
    let path = format!("{dir}/{file}");
    let mut fetched = BTreeMap::new();
    for d in &data {
        let (key, property) = (&d.remote_ref.key, &d.remote_ref.property);
        let value = s
            .input
            .values
            .get(key, property)
            .filter(|v| !v.expose_secret().is_empty())
            .ok_or_else(|| RenderError::MissingSecretValue {
                file: path.clone(),
                key: key.clone(),
                property: property.clone(),
            })?;
        fetched.insert(d.secret_key.clone(), value);
    }
    let mut values = BTreeMap::new();
    for (k, tpl) in &template {
        let v = crate::sops::eval_template(tpl, &fetched).map_err(|message| RenderError::Io {
            path: path.clone(),
            message,
        })?;
        values.insert(k.clone(), v);
    }
    let previous = s
        .input
        .previous
        .and_then(|d| std::fs::read_to_string(d.join(&path)).ok());
    let text = crate::sops::secret_file(
        &path,
        meta,
        kind,
        &values,
        &s.recipients,
        &s.fingerprint_key,
        previous.as_deref(),
        &s.input.now,
    );
    Ok((file, text))
}

pub fn external_secret(
    ctx: &Ctx,
    meta: Meta,
    target: &str,
    kind: &'static str,
    template: BTreeMap<String, String>,
    data: Vec<EsData>,
) -> Object<Spec<ExternalSecretSpec>> {
    object(
        "external-secrets.io/v1",
        "ExternalSecret",
        meta,
        Spec {
            spec: ExternalSecretSpec {
                refresh_interval: "1h",
                secret_store_ref: StoreRef {
                    kind: "ClusterSecretStore",
                    name: ctx.opts.secret_store.clone(),
                },
                target: EsTarget {
                    name: target.into(),
                    creation_policy: "Owner",
                    deletion_policy: "Retain",
                    template: EsTemplate {
                        kind,
                        engine_version: "v2",
                        data: template,
                    },
                },
                data,
            },
        },
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Web,
    Cron,
}

impl Role {
    fn file(self) -> &'static str {
        match self {
            Role::Web => "odoo-web.conf",
            Role::Cron => "odoo-cron.conf",
        }
    }
}

/// A pod running Odoo with `role`'s configuration.
fn odoo_pod(
    ctx: &Ctx,
    p: &OdooEnvProps,
    uid: u32,
    component: &str,
    size: Size,
    role: Role,
    extra_args: &[&str],
) -> PodTemplate {
    let opts = ctx.opts;
    let mount = |name: &'static str, mount_path: &'static str, read_only: bool| VolumeMount {
        name,
        mount_path,
        read_only,
    };
    // odoo.conf must hold the master password's hash, which is kept in the
    // secret store: copy the ConfigMap's file and append it, in memory.
    let assemble = format!(
        "umask 077 && cat {CONF_DIR}/{} > {RUN_DIR}/odoo.conf && printf 'admin_passwd = %s\\n' \"$ADMIN_PASSWD\" >> {RUN_DIR}/odoo.conf",
        role.file()
    );
    let init = Container {
        name: "config".into(),
        image: opts.odoo_image.clone(),
        image_pull_policy: "IfNotPresent",
        command: vec!["sh".into(), "-c".into(), assemble],
        env: vec![EnvVar::secret("ADMIN_PASSWD", CREDENTIALS, "ADMIN_PASSWD")],
        ports: vec![],
        resources: CONFIG_INIT.resources(),
        security_context: SecurityContext::hardened(),
        startup_probe: None,
        readiness_probe: None,
        liveness_probe: None,
        volume_mounts: vec![
            mount("config", CONF_DIR, true),
            mount("run", RUN_DIR, false),
        ],
    };
    let mut command = opts.odoo_command.clone();
    command.extend(["-c".to_string(), format!("{RUN_DIR}/odoo.conf")]);
    command.extend(extra_args.iter().map(|s| s.to_string()));
    let web = role == Role::Web && component == "web";
    let probe = |failure_threshold: u32, period_seconds: u32| Probe {
        http_get: Some(HttpGet {
            path: "/web/health",
            port: "http",
        }),
        tcp_socket: None,
        period_seconds,
        timeout_seconds: 5,
        failure_threshold,
    };
    let main = Container {
        name: "odoo".into(),
        image: opts.odoo_image.clone(),
        image_pull_policy: "IfNotPresent",
        command,
        env: vec![
            EnvVar::value("LANG", "C.UTF-8"),
            EnvVar::value("PGSSLROOTCERT", CA_FILE),
            EnvVar::secret("PGPASSWORD", CREDENTIALS, "PGPASSWORD"),
            EnvVar::secret("CAREPLANE_REDIS_URL", CREDENTIALS, "CAREPLANE_REDIS_URL"),
            EnvVar::secret("ODOO_REDIS_PASSWORD", CREDENTIALS, "ODOO_REDIS_PASSWORD"),
        ],
        ports: if web {
            vec![
                ContainerPort {
                    name: "http",
                    container_port: HTTP_PORT,
                    protocol: "TCP",
                },
                ContainerPort {
                    name: "websocket",
                    container_port: WEBSOCKET_PORT,
                    protocol: "TCP",
                },
            ]
        } else {
            vec![]
        },
        resources: size.resources(),
        security_context: SecurityContext::hardened(),
        // Loading a large registry can take minutes; then fail fast.
        startup_probe: web.then(|| probe(60, 10)),
        readiness_probe: web.then(|| probe(3, 10)),
        liveness_probe: web.then(|| probe(3, 20)),
        volume_mounts: vec![
            mount("run", RUN_DIR, true),
            mount("tls", "/etc/odoo/tls", true),
            mount("filestore", DATA_DIR, false),
            mount("tmp", "/tmp", false),
        ],
    };
    let pool = ctx.node_pool(&p.tenant);
    PodTemplate {
        metadata: PodMeta {
            annotations: BTreeMap::new(),
            labels: with(
                pod_labels(component),
                &[
                    ("careplane.dev/tenant", &p.tenant),
                    ("careplane.dev/environment", &p.environment),
                ],
            ),
        },
        spec: PodSpec {
            service_account_name: SERVICE_ACCOUNT.into(),
            automount_service_account_token: false,
            enable_service_links: false,
            restart_policy: None,
            priority_class_name: Some(crate::priority_class(production_like(&p.environment_kind))),
            node_selector: pool.0,
            tolerations: pool.1,
            security_context: PodSecurityContext {
                run_as_non_root: true,
                run_as_user: uid,
                run_as_group: uid,
                fs_group: uid,
                fs_group_change_policy: "OnRootMismatch",
                seccomp_profile: SeccompProfile {
                    kind: "RuntimeDefault",
                },
            },
            init_containers: vec![init],
            containers: vec![main],
            volumes: vec![
                Volume::config_map("config", CONFIG_MAP),
                Volume::pvc("filestore", FILESTORE),
                Volume::empty_dir("run", true, "1Mi"),
                Volume::empty_dir("tmp", false, "1Gi"),
                Volume::secret(
                    "tls",
                    CREDENTIALS,
                    vec![KeyToPath {
                        key: "ca.crt".into(),
                        path: "ca.crt".into(),
                    }],
                ),
            ],
        },
    }
}

/// odoo.conf for one role: the local target's hardening (see
/// `careplane-odoo`'s `config` module) less what Kubernetes changes: Odoo
/// listens on the pod network (only the ingress controller may reach it, see
/// the NetworkPolicy) and `admin_passwd` is appended at start from the secret
/// store. No secret in it.
fn odoo_conf(
    ctx: &Ctx,
    p: &OdooEnvProps,
    role: Role,
    db_user: &str,
    pg_host: &str,
    redis_host: &str,
) -> String {
    let (workers, cron_threads) = match role {
        Role::Web => (p.workers, 0),
        Role::Cron => (0, p.cron_threads),
    };
    let mut s = String::new();
    let mut kv = |k: &str, v: &dyn std::fmt::Display| {
        let v = v.to_string();
        let _ = if v.is_empty() {
            writeln!(s, "{k} =")
        } else {
            writeln!(s, "{k} = {v}")
        };
    };
    kv("db_name", &p.database);
    kv("dbfilter", &"");
    kv("list_db", &"False");
    kv("db_host", &pg_host);
    kv("db_port", &5432);
    kv("db_user", &db_user);
    kv("db_password", &"False");
    kv("db_sslmode", &"verify-full");
    kv("proxy_mode", &"True");
    kv("http_interface", &"0.0.0.0");
    kv("http_port", &HTTP_PORT);
    match role {
        Role::Web if p.workers > 0 => kv("gevent_port", &WEBSOCKET_PORT),
        Role::Web => {}
        Role::Cron => kv("http_enable", &"False"),
    }
    kv("workers", &workers);
    kv("max_cron_threads", &cron_threads);
    kv("data_dir", &DATA_DIR);
    kv("addons_path", &ctx.opts.odoo_addons_paths.join(","));
    kv("server_wide_modules", &"base,web");
    kv("without_demo", &"True");
    kv("limit_memory_soft", &p.limits.memory_soft);
    kv("limit_memory_hard", &p.limits.memory_hard);
    kv("limit_time_cpu", &p.limits.time_cpu);
    kv("limit_time_real", &p.limits.time_real);
    kv("limit_request", &p.limits.request);
    kv("redis_host", &redis_host);
    kv("redis_port", &6379);
    kv(
        "redis_user",
        &careplane_model::env_db_name(&p.tenant, &p.environment),
    );
    kv(
        "redis_prefix",
        &careplane_model::env_key_prefix(&p.tenant, &p.environment),
    );
    format!(
        "# Odoo configuration ({} process) for database {}, rendered by careplane.\n\
         # It holds no secret: admin_passwd is appended at start from the secret store,\n\
         # the database password is passed as PGPASSWORD.\n\
         [options]\n{s}",
        match role {
            Role::Web => "web",
            Role::Cron => "cron",
        },
        p.database
    )
}

/// `ipBlock.cidr` needs a prefix length: a single address becomes /32 or /128.
fn cidr(s: &str) -> String {
    if s.contains('/') {
        s.to_string()
    } else if s.contains(':') {
        format!("{s}/128")
    } else {
        format!("{s}/32")
    }
}

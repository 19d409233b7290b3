//! PostgreSQL (CloudNativePG) and Redis, one namespace per scope.

use std::collections::BTreeMap;

use crate::env::{credentials, es, ns_selector, scope_of, ErasedYaml};
use crate::k8s::*;
use crate::names::{self, common_labels, labels, with, PG_CLUSTER, REDIS};
use crate::{
    pinned_by_digest, priority_class, production_like, Ctx, Model, RenderError, Tree, HEADER,
};

/// Labels CloudNativePG puts on its instance pods (and that policies select).
pub fn cnpg_pod_labels() -> Labels {
    labels(&[("cnpg.io/cluster", PG_CLUSTER)])
}

/// The PgBouncer `Pooler` of every cluster, and its service.
pub const POOLER: &str = "postgres-pooler-rw";

/// Labels CloudNativePG puts on a pooler's pods.
pub fn pooler_pod_labels() -> Labels {
    labels(&[("cnpg.io/poolerName", POOLER)])
}

/// The Barman Cloud plugin's name in a Cluster's `plugins` and a backup's
/// `pluginConfiguration`.
const BARMAN_PLUGIN: &str = "barman-cloud.cloudnative-pg.io";
const OBJECT_STORE: &str = "backups";
const BACKUP_CREDENTIALS: &str = "backup-credentials";

/// A BackupPolicy's retention as the plugin's recovery window: barman
/// keeps every backup inside a window (no grandfather-father-son
/// thinning), so the window is the longest horizon the counts ask for,
/// which keeps at least what they keep.
pub fn retention_window(r: &careplane_spec::Retention) -> String {
    // CNPG's retentionPolicy knows days, weeks and months only: years
    // become months.
    let candidates = [
        (
            u64::from(r.yearly) * 366,
            format!("{}m", u64::from(r.yearly) * 12),
        ),
        (u64::from(r.monthly) * 31, format!("{}m", r.monthly)),
        (u64::from(r.weekly) * 7, format!("{}w", r.weekly)),
        (u64::from(r.daily), format!("{}d", r.daily)),
    ];
    candidates
        .into_iter()
        .filter(|(days, _)| *days > 0)
        .max_by_key(|(days, _)| *days)
        .map_or_else(|| "30d".to_string(), |(_, w)| w)
}

/// When no tenant on a cluster names a BackupPolicy: nightly at 02:00 UTC,
/// 30 days.
const DEFAULT_SCHEDULE: &str = "0 2 * * *";

pub fn redis_pod_labels() -> Labels {
    labels(&[("app.kubernetes.io/name", "redis")])
}

/// Redis runs as a high uid of its own rather than the image's 999, which
/// could be a user of the node (checkov CKV_K8S_40); just below the Odoo
/// range (`odoo.uids`' default), far from the node's users. The image needs
/// no passwd entry for it: `/data` is the volume, group-owned via fsGroup.
const REDIS_UID: u32 = 1_899_999_999;
/// Volume of a `session` server's append-only file.
const REDIS_STORAGE: &str = "2Gi";

/// The same explicit allow list the local target gives every tenant's Redis
/// user (`careplane-local`'s `redis::TENANT_COMMAND_RULES`, where each entry
/// is explained): only commands that act on named keys and channels or on
/// the tenant's own connection. Kept equal by hand until the rules move to a
/// crate both targets may depend on.
pub const TENANT_COMMAND_RULES: &str = concat!(
    "-@all",
    " +auth +hello +ping +echo +quit +reset",
    " +client|id +client|info +client|setname +client|getname",
    " +multi +exec +discard +watch +unwatch",
    " +del +unlink +exists +type +touch +rename +renamenx",
    " +expire +pexpire +expireat +pexpireat +expiretime +pexpiretime +ttl +pttl +persist",
    " +get +set +setex +psetex +setnx +getex +getdel +getset +mget +mset +msetnx",
    " +incr +incrby +incrbyfloat +decr +decrby +append +strlen +getrange +setrange",
    " +hget +hset +hsetnx +hmget +hmset +hdel +hexists +hgetall +hkeys +hvals +hlen",
    " +hincrby +hincrbyfloat +hstrlen +hscan",
    " +lpush +rpush +lpushx +rpushx +lpop +rpop +lrange +llen +lindex +lset +lrem +ltrim",
    " +linsert +lpos +lmove",
    " +sadd +srem +smembers +sismember +smismember +scard +spop +srandmember",
    " +sinter +sunion +sdiff +sinterstore +sunionstore +sdiffstore +smove +sscan",
    " +zadd +zrem +zrange +zrangebyscore +zrevrange +zrevrangebyscore +zrank +zrevrank",
    " +zscore +zmscore +zcard +zcount +zincrby +zremrangebyscore +zremrangebyrank",
    " +zpopmin +zpopmax +zscan",
    " +publish +subscribe +unsubscribe +psubscribe +punsubscribe",
);

fn kustomization(tree: &mut Tree, dir: &str, namespace: &str, files: Vec<String>) {
    tree.add(
        format!("{dir}/kustomization.yaml"),
        HEADER.to_string()
            + &crate::to_yaml(&Kustomization {
                api_version: "kustomize.config.k8s.io/v1beta1",
                kind: "Kustomization",
                namespace: Some(namespace.into()),
                resources: files,
            }),
    );
}

fn meta(name: &str, base: &Labels) -> Meta {
    Meta {
        name: name.into(),
        namespace: None,
        labels: base.clone(),
        annotations: BTreeMap::new(),
    }
}

fn policy(name: &str, base: &Labels, spec: NetworkPolicySpec) -> Object<Spec<NetworkPolicySpec>> {
    object(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        meta(name, base),
        Spec { spec },
    )
}

fn default_deny(types: Vec<&'static str>) -> NetworkPolicySpec {
    NetworkPolicySpec {
        pod_selector: LabelSelector::default(),
        policy_types: types,
        ingress: vec![],
        egress: vec![],
    }
}

/// With SOPS: the Secret holding the cluster's server CA.
const SERVER_CA: &str = "postgres-server-ca";

pub fn render_postgres(ctx: &Ctx, model: &Model, tree: &mut Tree) -> Result<(), RenderError> {
    let opts = ctx.opts;
    for (scope, cluster) in &model.pg_clusters {
        let dbs: Vec<_> = model
            .pg_databases
            .iter()
            .filter(|d| scope_of(&d.cluster) == scope)
            .collect();
        if let Some(d) = dbs.iter().find(|d| production_like(&d.environment_kind)) {
            if !pinned_by_digest(&opts.postgres_image) {
                return Err(RenderError::ImageNotPinned {
                    environment: format!("{}/{}", d.tenant, d.environment),
                    kind: d.environment_kind.clone(),
                    what: "PostgreSQL",
                    image: opts.postgres_image.clone(),
                });
            }
        }
        let ns = names::pg_namespace(scope);
        let dir = format!("postgres/{scope}");
        let base = with(common_labels(), &[("careplane.dev/pg-cluster", scope)]);
        let mut files = Vec::new();
        let mut put = |tree: &mut Tree, file: String, obj: &dyn ErasedYaml| {
            tree.add(format!("{dir}/{file}"), obj.yaml());
            files.push(file);
        };
        put(
            tree,
            "namespace.yaml".into(),
            &object(
                "v1",
                "Namespace",
                Meta {
                    name: ns.clone(),
                    labels: names::restricted(base.clone()),
                    ..Meta::default()
                },
                Empty {},
            ),
        );

        // Highest tier among the tenants on the cluster decides its shape.
        let availability = dbs
            .iter()
            .map(|d| ctx.availability(&d.tenant))
            .fold(0.0, f64::max);
        let instances = if availability >= 99.9 { 3 } else { 2 };
        let mut parameters = cluster.settings.clone();
        for (k, v) in [
            ("log_connections", "on"),
            ("log_disconnections", "on"),
            ("password_encryption", "scram-sha-256"),
        ] {
            parameters.insert(k.into(), v.into());
        }
        let mut pg_hba = Vec::new();
        let mut roles = Vec::new();
        for d in &dbs {
            let role = names::role_name(&opts.role_key, &d.tenant, &d.environment);
            // Each role reaches its own database only; everything not listed
            // is refused before CloudNativePG's catch-all line.
            pg_hba.push(format!(
                "hostssl \"{}\" {role} all scram-sha-256",
                d.database
            ));
            roles.push(CnpgRole {
                name: role,
                ensure: "present",
                comment: String::new(),
                login: true,
                superuser: false,
                createdb: false,
                createrole: false,
                inherit: false,
                replication: false,
                bypassrls: false,
                connection_limit: d.connection_limit.map_or(-1, i64::from),
                password_secret: NameRef {
                    name: format!("role-{}", d.database),
                },
            });
        }
        pg_hba.push("host all all all reject".into());

        let backups = ctx.kubernetes().and_then(|k| k.backups.as_ref());
        if backups.is_none() {
            if let Some(d) = dbs.iter().find(|d| production_like(&d.environment_kind)) {
                return Err(RenderError::NoBackups {
                    environment: format!("{}/{}", d.tenant, d.environment),
                    kind: d.environment_kind.clone(),
                });
            }
        }
        // Each distinct policy of the cluster's tenants is a schedule of its
        // own, so every tenant gets at least what its tier promises.
        let mut policies: BTreeMap<String, (String, String)> = BTreeMap::new();
        for d in &dbs {
            let policy = ctx
                .tenants
                .get(d.tenant.as_str())
                .and_then(|t| ctx.specs.tier_of(&t.spec))
                .and_then(|tier| tier.spec.backup_policy.as_deref())
                .and_then(|name| ctx.specs.backup_policy(name));
            if let Some(p) = policy {
                policies.insert(
                    p.metadata.name.clone(),
                    (
                        p.spec.schedule.trim().to_string(),
                        retention_window(&p.spec.retention),
                    ),
                );
            }
        }
        if policies.is_empty() {
            policies.insert("default".into(), (DEFAULT_SCHEDULE.into(), "30d".into()));
        }
        let retention = policies
            .values()
            .map(|(_, w)| w.clone())
            .max_by_key(|w| window_days(w))
            .expect("at least one policy");
        let pooler_host = format!("{POOLER}.{ns}.svc");
        let pool = ctx.node_pool(scope);
        put(
            tree,
            "cluster.yaml".into(),
            &object(
                "postgresql.cnpg.io/v1",
                "Cluster",
                meta(PG_CLUSTER, &base),
                Spec {
                    spec: CnpgClusterSpec {
                        instances,
                        priority_class_name: priority_class(
                            dbs.iter().any(|d| production_like(&d.environment_kind)),
                        ),
                        image_name: opts.postgres_image.clone(),
                        primary_update_strategy: "unsupervised",
                        enable_superuser_access: false,
                        postgresql: CnpgPostgresql {
                            parameters,
                            pg_hba,
                            // A commit waits for one standby when there are two.
                            synchronous: (instances >= 3).then_some(CnpgSynchronous {
                                method: "any",
                                number: 1,
                            }),
                        },
                        storage: CnpgStorage {
                            size: opts.postgres_storage_size.clone(),
                            storage_class: ctx
                                .storage_classes()
                                .and_then(|s| s.postgres.clone())
                                .or_else(|| opts.postgres_storage_class.clone()),
                        },
                        affinity: CnpgAffinity {
                            enable_pod_anti_affinity: true,
                            topology_key: "kubernetes.io/hostname",
                            pod_anti_affinity_type: "required",
                            node_selector: pool.0.clone(),
                            tolerations: pool.1.clone(),
                        },
                        certificates: CnpgCertificates {
                            server_ca_secret: ctx.sops.as_ref().map(|_| SERVER_CA.to_string()),
                            server_alt_dns_names: vec![
                                pooler_host.clone(),
                                format!("{pooler_host}.cluster.local"),
                            ],
                        },
                        managed: CnpgManaged { roles },
                        plugins: backups
                            .map(|_| CnpgPlugin {
                                name: BARMAN_PLUGIN,
                                is_wal_archiver: true,
                                parameters: [(
                                    "barmanObjectName".to_string(),
                                    OBJECT_STORE.to_string(),
                                )]
                                .into(),
                            })
                            .into_iter()
                            .collect(),
                    },
                },
            ),
        );
        for d in &dbs {
            let role = names::role_name(&opts.role_key, &d.tenant, &d.environment);
            let obj_base = with(
                base.clone(),
                &[
                    ("careplane.dev/tenant", &d.tenant),
                    ("careplane.dev/environment", &d.environment),
                ],
            );
            put(
                tree,
                format!("database-{}.yaml", d.database),
                &object(
                    "postgresql.cnpg.io/v1",
                    "Database",
                    meta(&d.database, &obj_base),
                    Spec {
                        spec: CnpgDatabaseSpec {
                            name: d.database.clone(),
                            owner: role.clone(),
                            cluster: NameRef {
                                name: PG_CLUSTER.into(),
                            },
                            ensure: "present",
                            // Removing the object never drops a hospital's data.
                            database_reclaim_policy: "retain",
                        },
                    },
                ),
            );
            let secret = format!("role-{}", d.database);
            let template: BTreeMap<String, String> = [
                ("password".to_string(), "{{ .password }}".to_string()),
                ("username".to_string(), role),
            ]
            .into();
            let (file, text) = credentials(
                ctx,
                &dir,
                meta(&secret, &obj_base),
                &secret,
                "kubernetes.io/basic-auth",
                template,
                vec![es(
                    "password",
                    ctx.store_key(&["postgres", &d.tenant, &d.environment]),
                    "password",
                )],
            )?;
            put(tree, file, &text);
        }
        if let Some(b) = backups {
            put(
                tree,
                "objectstore-backups.yaml".into(),
                &object(
                    "barmancloud.cnpg.io/v1",
                    "ObjectStore",
                    meta(OBJECT_STORE, &base),
                    Spec {
                        spec: ObjectStoreSpec {
                            configuration: BarmanConfiguration {
                                destination_path: format!(
                                    "{}/{scope}",
                                    b.destination_path.trim_end_matches('/')
                                ),
                                endpoint_url: b.endpoint_url.clone(),
                                s3_credentials: S3Credentials {
                                    access_key_id: SecretKeySelector {
                                        name: BACKUP_CREDENTIALS.into(),
                                        key: "ACCESS_KEY_ID",
                                    },
                                    secret_access_key: SecretKeySelector {
                                        name: BACKUP_CREDENTIALS.into(),
                                        key: "ACCESS_SECRET_KEY",
                                    },
                                },
                                wal: BarmanCompression {
                                    compression: "gzip",
                                },
                                data: BarmanData {
                                    compression: "gzip",
                                    jobs: 2,
                                },
                            },
                            retention_policy: retention.clone(),
                        },
                    },
                ),
            );
            let (file, text) = credentials(
                ctx,
                &dir,
                meta(BACKUP_CREDENTIALS, &base),
                BACKUP_CREDENTIALS,
                "Opaque",
                [
                    (
                        "ACCESS_KEY_ID".to_string(),
                        "{{ .access_key_id }}".to_string(),
                    ),
                    (
                        "ACCESS_SECRET_KEY".to_string(),
                        "{{ .secret_access_key }}".to_string(),
                    ),
                ]
                .into(),
                vec![
                    es(
                        "access_key_id",
                        ctx.store_key(&["backup-store"]),
                        "access_key_id",
                    ),
                    es(
                        "secret_access_key",
                        ctx.store_key(&["backup-store"]),
                        "secret_access_key",
                    ),
                ],
            )?;
            put(tree, file, &text);
            for (name, (schedule, _)) in &policies {
                put(
                    tree,
                    format!("scheduledbackup-{name}.yaml"),
                    &object(
                        "postgresql.cnpg.io/v1",
                        "ScheduledBackup",
                        meta(&format!("backup-{name}"), &base),
                        Spec {
                            spec: ScheduledBackupSpec {
                                // CloudNativePG's cron has a seconds field.
                                schedule: format!("0 {schedule}"),
                                immediate: true,
                                backup_owner_reference: "self",
                                cluster: NameRef {
                                    name: PG_CLUSTER.into(),
                                },
                                method: "plugin",
                                plugin_configuration: PluginRef {
                                    name: BARMAN_PLUGIN,
                                },
                            },
                        },
                    ),
                );
            }
        }

        // PgBouncer in session mode: Odoo LISTENs on the bus channel for the
        // life of a connection and keeps session state (advisory locks held
        // across transactions by modules, `SET` parameters), which
        // transaction pooling would hand to another client.
        let limits: Vec<u64> = dbs
            .iter()
            .map(|d| u64::from(d.connection_limit.unwrap_or(100)))
            .collect();
        let pooler_params: BTreeMap<String, String> = [
            (
                "default_pool_size",
                limits.iter().max().copied().unwrap_or(20).to_string(),
            ),
            (
                "max_client_conn",
                limits.iter().sum::<u64>().max(100).to_string(),
            ),
            ("server_idle_timeout", "600".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        put(
            tree,
            "pooler.yaml".into(),
            &object(
                "postgresql.cnpg.io/v1",
                "Pooler",
                meta(POOLER, &base),
                Spec {
                    spec: PoolerSpec {
                        cluster: NameRef {
                            name: PG_CLUSTER.into(),
                        },
                        instances: if instances >= 3 { 2 } else { 1 },
                        kind: "rw",
                        pgbouncer: PgBouncer {
                            pool_mode: "session",
                            parameters: pooler_params,
                        },
                    },
                },
            ),
        );

        if ctx.sops.is_some() {
            // No store to push to: the operator provides the CA (certificate
            // and key, in the secret values), CNPG signs the server's
            // certificate with it, and each environment reads the same
            // certificate from the values for verify-full.
            let ca_key = ctx.store_key(&["postgres-ca", scope]);
            let (file, text) = credentials(
                ctx,
                &dir,
                meta(SERVER_CA, &base),
                SERVER_CA,
                "Opaque",
                [
                    ("ca.crt".to_string(), "{{ .ca_crt }}".to_string()),
                    ("ca.key".to_string(), "{{ .ca_key }}".to_string()),
                ]
                .into(),
                vec![
                    es("ca_crt", ca_key.clone(), "ca.crt"),
                    es("ca_key", ca_key, "ca.key"),
                ],
            )?;
            put(tree, file, &text);
        } else {
            // The cluster's CA certificate (never its key) into the store, from
            // where each environment's ExternalSecret fetches it for verify-full.
            put(
                tree,
                "pushsecret-postgres-ca.yaml".into(),
                &object(
                    "external-secrets.io/v1alpha1",
                    "PushSecret",
                    meta("postgres-ca", &base),
                    Spec {
                        spec: PushSecretSpec {
                            refresh_interval: "1h",
                            update_policy: "Replace",
                            deletion_policy: "None",
                            secret_store_refs: vec![StoreRef {
                                kind: "ClusterSecretStore",
                                name: opts.secret_store.clone(),
                            }],
                            selector: PushSelector {
                                secret: NameRef {
                                    name: format!("{PG_CLUSTER}-ca"),
                                },
                            },
                            data: vec![PushData {
                                matching: PushMatch {
                                    secret_key: "ca.crt".into(),
                                    remote_ref: PushRemoteRef {
                                        remote_key: ctx.store_key(&["postgres-ca", scope]),
                                        property: "ca.crt".into(),
                                    },
                                },
                            }],
                        },
                    },
                ),
            );
        }
        put(
            tree,
            "networkpolicy-default-deny-ingress.yaml".into(),
            &policy("default-deny-ingress", &base, default_deny(vec!["Ingress"])),
        );
        put(
            tree,
            "networkpolicy-cnpg.yaml".into(),
            &policy(
                "cnpg",
                &base,
                NetworkPolicySpec {
                    pod_selector: LabelSelector {
                        match_labels: cnpg_pod_labels(),
                    },
                    policy_types: vec!["Ingress"],
                    ingress: vec![
                        // Replication and the instance manager between the
                        // cluster's own pods.
                        IngressRule {
                            from: vec![Peer {
                                ip_block: None,
                                namespace_selector: None,
                                pod_selector: Some(LabelSelector {
                                    match_labels: cnpg_pod_labels(),
                                }),
                            }],
                            ports: vec![PolicyPort::tcp(5432), PolicyPort::tcp(8000)],
                        },
                        // PgBouncer, which the environments connect through.
                        IngressRule {
                            from: vec![Peer {
                                ip_block: None,
                                namespace_selector: None,
                                pod_selector: Some(LabelSelector {
                                    match_labels: pooler_pod_labels(),
                                }),
                            }],
                            ports: vec![PolicyPort::tcp(5432)],
                        },
                        // The operator's status checks and management.
                        IngressRule {
                            from: vec![Peer {
                                ip_block: None,
                                namespace_selector: Some(ns_selector(&opts.cnpg_namespace)),
                                pod_selector: None,
                            }],
                            ports: vec![PolicyPort::tcp(5432), PolicyPort::tcp(8000)],
                        },
                    ],
                    egress: vec![],
                },
            ),
        );
        put(
            tree,
            "networkpolicy-from-environments.yaml".into(),
            &policy(
                "from-environments",
                &base,
                NetworkPolicySpec {
                    pod_selector: LabelSelector {
                        match_labels: pooler_pod_labels(),
                    },
                    policy_types: vec!["Ingress"],
                    ingress: vec![IngressRule {
                        from: vec![Peer {
                            ip_block: None,
                            namespace_selector: Some(LabelSelector {
                                match_labels: labels(&[("careplane.dev/postgres-client", scope)]),
                            }),
                            pod_selector: Some(LabelSelector {
                                match_labels: labels(&[("app.kubernetes.io/name", "odoo")]),
                            }),
                        }],
                        ports: vec![PolicyPort::tcp(5432)],
                    }],
                    egress: vec![],
                },
            ),
        );
        kustomization(tree, &dir, &ns, files);
    }
    Ok(())
}

/// Redis `maxmemory` (`64mb`, `1gb`, `512mb`, bytes) in MiB, rounded up.
fn redis_memory_mib(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let bytes = n.checked_mul(match &s[split..] {
        "" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    })?;
    Some(bytes.div_ceil(1024 * 1024))
}

pub fn render_redis(ctx: &Ctx, model: &Model, tree: &mut Tree) -> Result<(), RenderError> {
    let opts = ctx.opts;
    for (scope, server) in &model.redis_servers {
        let users: Vec<_> = model
            .redis_users
            .iter()
            .filter(|u| scope_of(&u.server) == scope)
            .collect();
        if let Some(u) = users.iter().find(|u| production_like(&u.environment_kind)) {
            if !pinned_by_digest(&opts.redis_image) {
                return Err(RenderError::ImageNotPinned {
                    environment: format!("{}/{}", u.tenant, u.environment),
                    kind: u.environment_kind.clone(),
                    what: "Redis",
                    image: opts.redis_image.clone(),
                });
            }
        }
        let max_mib = redis_memory_mib(&server.max_memory).ok_or_else(|| RenderError::Option {
            option: "platform spec.redis.maxMemory",
            message: format!(
                "{:?} is not a Redis memory size such as 64mb or 1gb",
                server.max_memory
            ),
        })?;
        let session = server.role == "session";
        let ns = names::redis_namespace(scope);
        let dir = format!("redis/{scope}");
        let base = with(common_labels(), &[("careplane.dev/redis-server", scope)]);
        let mut files = Vec::new();
        let mut put = |tree: &mut Tree, file: &str, obj: &dyn ErasedYaml| {
            tree.add(format!("{dir}/{file}"), obj.yaml());
            files.push(file.to_string());
        };
        put(
            tree,
            "namespace.yaml",
            &object(
                "v1",
                "Namespace",
                Meta {
                    name: ns.clone(),
                    labels: names::restricted(base.clone()),
                    ..Meta::default()
                },
                Empty {},
            ),
        );

        // The local target's redis.conf, less what a container changes
        // (foreground, log to stdout, listen on the pod network: only the
        // environments' Odoo pods may connect, see the NetworkPolicy).
        let mut conf = String::from("# Rendered by careplane: edit the careplane spec instead.\n");
        for line in [
            "bind 0.0.0.0",
            "protected-mode yes",
            "port 6379",
            "daemonize no",
            "supervised no",
            "loglevel notice",
            "logfile \"\"",
            "dir /data",
            "aclfile /etc/redis/acl/users.acl",
            "acllog-max-len 128",
            "enable-protected-configs no",
            "enable-debug-command no",
            "enable-module-command no",
        ] {
            conf.push_str(line);
            conf.push('\n');
        }
        conf.push_str(&format!(
            "maxmemory {}\n",
            server.max_memory.to_ascii_lowercase()
        ));
        conf.push_str("save \"\"\n");
        if session {
            conf.push_str("maxmemory-policy volatile-lru\nappendonly yes\nappendfsync everysec\nappenddirname \"appendonlydir\"\n");
        } else {
            conf.push_str("maxmemory-policy allkeys-lru\nappendonly no\n");
        }
        let conf_for_hash = conf.clone();
        put(
            tree,
            "configmap-redis-config.yaml",
            &object(
                "v1",
                "ConfigMap",
                meta("redis-config", &base),
                ConfigMapBody {
                    data: [("redis.conf".to_string(), conf)].into(),
                },
            ),
        );

        // users.acl is assembled by External Secrets from the passwords in
        // the store: only their SHA-256 reaches the file, as on the local target.
        let mut acl = String::from("user default off resetpass resetkeys resetchannels -@all\n");
        acl.push_str(&format!(
            "user {} on #{{{{ index . \"admin\" | sha256sum }}}} ~* &* +@all\n",
            careplane_spec::names::REDIS_ADMIN_USER
        ));
        let mut data = vec![es(
            "admin",
            ctx.store_key(&["redis-admin", scope]),
            "password",
        )];
        for u in &users {
            acl.push_str(&format!(
                "user {user} on #{{{{ index . \"{user}\" | sha256sum }}}} resetkeys ~{prefix}* resetchannels &{prefix}* {TENANT_COMMAND_RULES}\n",
                user = u.user,
                prefix = u.key_prefix,
            ));
            data.push(es(
                &u.user,
                ctx.store_key(&["redis", &u.tenant, &u.environment]),
                "password",
            ));
        }
        // A new user or a changed configuration restarts the server.
        let config_hash = careplane_spec::names::fingerprint(&[conf_for_hash, acl.clone()]);
        let (file, text) = credentials(
            ctx,
            &dir,
            meta("redis-acl", &base),
            "redis-acl",
            "Opaque",
            [("users.acl".to_string(), acl)].into(),
            data,
        )?;
        put(tree, &file, &text);

        let mount = |name: &'static str, mount_path: &'static str, read_only: bool| VolumeMount {
            name,
            mount_path,
            read_only,
        };
        let probe = |failure_threshold, period_seconds| Probe {
            http_get: None,
            tcp_socket: Some(TcpSocket { port: "redis" }),
            period_seconds,
            timeout_seconds: 3,
            failure_threshold,
        };
        let mem_lim = max_mib * 2 + 64;
        let mut volumes = vec![
            Volume::secret(
                "acl",
                "redis-acl",
                vec![KeyToPath {
                    key: "users.acl".into(),
                    path: "users.acl".into(),
                }],
            ),
            Volume::config_map("config", "redis-config"),
        ];
        if !session {
            // A cache keeps nothing across restarts.
            volumes.insert(1, Volume::empty_dir("data", false, "64Mi"));
        }
        let redis_pool = ctx.node_pool(scope);
        let template = PodTemplate {
            metadata: PodMeta {
                labels: redis_pod_labels(),
                // Redis reads its configuration and ACL file at start only.
                annotations: [(crate::env::CONFIG_HASH.into(), config_hash.into())].into(),
            },
            spec: PodSpec {
                service_account_name: "default".into(),
                automount_service_account_token: false,
                enable_service_links: false,
                restart_policy: None,
                priority_class_name: Some(priority_class(
                    users.iter().any(|u| production_like(&u.environment_kind)),
                )),
                node_selector: redis_pool.0,
                tolerations: redis_pool.1,
                security_context: PodSecurityContext {
                    run_as_non_root: true,
                    run_as_user: REDIS_UID,
                    run_as_group: REDIS_UID,
                    fs_group: REDIS_UID,
                    fs_group_change_policy: "OnRootMismatch",
                    seccomp_profile: SeccompProfile {
                        kind: "RuntimeDefault",
                    },
                },
                init_containers: vec![],
                containers: vec![Container {
                    name: "redis".into(),
                    image: opts.redis_image.clone(),
                    image_pull_policy: "IfNotPresent",
                    command: vec!["redis-server".into(), "/etc/redis/conf/redis.conf".into()],
                    env: vec![],
                    ports: vec![ContainerPort {
                        name: "redis",
                        container_port: 6379,
                        protocol: "TCP",
                    }],
                    resources: Resources {
                        requests: [
                            ("cpu", "100m".to_string()),
                            ("memory", format!("{}Mi", max_mib + 32)),
                        ]
                        .into(),
                        limits: [
                            ("cpu", "1000m".to_string()),
                            ("memory", format!("{mem_lim}Mi")),
                        ]
                        .into(),
                    },
                    security_context: SecurityContext::hardened(),
                    startup_probe: None,
                    readiness_probe: Some(probe(3, 10)),
                    liveness_probe: Some(probe(3, 20)),
                    volume_mounts: vec![
                        mount("acl", "/etc/redis/acl", true),
                        mount("config", "/etc/redis/conf", true),
                        mount("data", "/data", false),
                    ],
                }],
                volumes,
            },
        };
        let claims = if session {
            vec![object(
                "v1",
                "PersistentVolumeClaim",
                Meta {
                    name: "data".into(),
                    ..Meta::default()
                },
                Spec {
                    spec: PvcSpec {
                        access_modes: vec!["ReadWriteOnce".into()],
                        storage_class_name: None,
                        resources: PvcResources {
                            requests: [("storage".to_string(), REDIS_STORAGE.to_string())].into(),
                        },
                    },
                },
            )]
        } else {
            vec![]
        };
        put(
            tree,
            "statefulset-redis.yaml",
            &object(
                "apps/v1",
                "StatefulSet",
                meta(REDIS, &base),
                Spec {
                    spec: StatefulSetSpec {
                        service_name: REDIS.into(),
                        replicas: 1,
                        selector: LabelSelector {
                            match_labels: redis_pod_labels(),
                        },
                        template,
                        volume_claim_templates: claims,
                    },
                },
            ),
        );
        put(
            tree,
            "service-redis.yaml",
            &object(
                "v1",
                "Service",
                meta(REDIS, &base),
                Spec {
                    spec: ServiceSpec {
                        kind: "ClusterIP",
                        cluster_ip: None,
                        selector: redis_pod_labels(),
                        ports: vec![ServicePort {
                            name: "redis".into(),
                            port: 6379,
                            target_port: "redis".into(),
                            protocol: "TCP",
                        }],
                    },
                },
            ),
        );
        put(
            tree,
            "networkpolicy-default-deny.yaml",
            &policy(
                "default-deny",
                &base,
                default_deny(vec!["Ingress", "Egress"]),
            ),
        );
        put(
            tree,
            "networkpolicy-from-environments.yaml",
            &policy(
                "from-environments",
                &base,
                NetworkPolicySpec {
                    pod_selector: LabelSelector {
                        match_labels: redis_pod_labels(),
                    },
                    policy_types: vec!["Ingress"],
                    ingress: vec![IngressRule {
                        from: vec![Peer {
                            ip_block: None,
                            namespace_selector: Some(LabelSelector {
                                match_labels: labels(&[("careplane.dev/redis-client", scope)]),
                            }),
                            pod_selector: Some(LabelSelector {
                                match_labels: labels(&[("app.kubernetes.io/name", "odoo")]),
                            }),
                        }],
                        ports: vec![PolicyPort::tcp(6379)],
                    }],
                    egress: vec![],
                },
            ),
        );
        kustomization(tree, &dir, &ns, files);
    }
    Ok(())
}

/// Days a recovery window (`30d`, `4w`, `6m`) spans, for comparing them.
fn window_days(w: &str) -> u64 {
    let (n, unit) = w.split_at(w.len() - 1);
    let n: u64 = n.parse().unwrap_or(0);
    n * match unit {
        "m" => 31,
        "w" => 7,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retention_windows_cover_the_longest_count() {
        let r = |daily, weekly, monthly| careplane_spec::Retention {
            daily,
            weekly,
            monthly,
            yearly: 0,
        };
        let yearly = careplane_spec::Retention {
            yearly: 2,
            ..r(7, 4, 6)
        };
        assert_eq!(super::retention_window(&yearly), "24m");
        assert_eq!(super::retention_window(&r(7, 4, 6)), "6m");
        assert_eq!(super::retention_window(&r(14, 0, 0)), "14d");
        assert_eq!(super::retention_window(&r(30, 2, 0)), "30d");
        assert_eq!(super::retention_window(&r(0, 0, 0)), "30d");
        assert_eq!(super::window_days("6m"), 186);
    }

    #[test]
    fn redis_memory() {
        assert_eq!(super::redis_memory_mib("64mb"), Some(64));
        assert_eq!(super::redis_memory_mib("1gb"), Some(1024));
        assert_eq!(super::redis_memory_mib("100m"), Some(96));
        assert_eq!(super::redis_memory_mib("64 mb"), None);
    }
}

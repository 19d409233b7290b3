//! From specs to the resources careplane must hold.

use std::collections::BTreeMap;

use careplane_spec::{EnvironmentKind, SpecSet};

use crate::props::*;
use crate::*;

/// See [`OdooEnvProps::config_format`].
pub const ODOO_CONFIG_FORMAT: u32 = 2;

/// Defaults an environment kind sets: production gets more workers and
/// stricter time limits, dev a single worker and generous limits for debugging.
pub fn kind_defaults(kind: EnvironmentKind) -> (u32, u32, Limits) {
    const MIB: u64 = 1024 * 1024;
    let (workers, cron) = careplane_spec::connections::default_processes(kind);
    let (soft, hard, cpu, real) = match kind {
        EnvironmentKind::Production | EnvironmentKind::Dr => (2048, 2560, 60, 120),
        EnvironmentKind::Staging | EnvironmentKind::Uat | EnvironmentKind::Training => {
            (1536, 2048, 120, 240)
        }
        EnvironmentKind::Test | EnvironmentKind::Dev => (1024, 1536, 600, 1200),
    };
    (
        workers,
        cron,
        Limits {
            memory_soft: soft * MIB,
            memory_hard: hard * MIB,
            time_cpu: cpu,
            time_real: real,
            request: 65536,
        },
    )
}

/// Parses `512Mi`, `2Gi`, `1G`, `256mb` into bytes (validated by the spec crate).
fn memory_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let mult: u64 = match s[split..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1024,
        "m" | "mb" | "mi" | "mib" => 1024 * 1024,
        "g" | "gb" | "gi" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Everything the specs ask for, ordered by kind rank then id.
pub fn desired(specs: &SpecSet) -> Vec<Resource> {
    let platform = &specs.platform.spec;
    let mut out: BTreeMap<String, Resource> = BTreeMap::new();
    let mut add = |id: String, props: Props| {
        out.insert(id.clone(), Resource::new(id, props));
    };

    add(
        ca_id(),
        Props::Ca(CaProps {
            platform: specs.platform.metadata.name.clone(),
        }),
    );

    let pg_settings: BTreeMap<String, String> = platform
        .postgres
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let redis_role = match platform.redis.role {
        careplane_spec::RedisRole::Cache => "cache",
        careplane_spec::RedisRole::Session => "session",
    };
    let max_memory = platform
        .redis
        .max_memory
        .clone()
        .unwrap_or_else(|| "256mb".to_string());

    for tenant in &specs.tenants {
        let t = &tenant.spec;
        let tname = &tenant.metadata.name;
        let pg = pg_scope(tname, t);
        let rs = redis_scope(tname, t);
        add(
            pg_cluster_id(&pg),
            Props::PgCluster(PgClusterProps {
                scope: pg.clone(),
                settings: pg_settings.clone(),
            }),
        );
        add(
            redis_server_id(&rs),
            Props::RedisServer(RedisServerProps {
                scope: rs.clone(),
                role: redis_role.to_string(),
                max_memory: max_memory.clone(),
            }),
        );
        for env in &t.environments {
            // Each field from the environment, else the tenant, else the
            // kind; every role gets a connection limit (validation checks
            // that each cluster can serve the sum).
            let sizing = careplane_spec::connections::effective_sizing(t, env);
            add(
                pg_database_id(tname, &env.name),
                Props::PgDatabase(PgDatabaseProps {
                    cluster: pg_cluster_id(&pg),
                    tenant: tname.clone(),
                    environment: env.name.clone(),
                    environment_kind: env.kind.as_str().to_string(),
                    database: env_db_name(tname, &env.name),
                    connection_limit: Some(sizing.db_connections),
                    // Its role's name is opaque, allocated at apply.
                    role: None,
                }),
            );
            if let Some(odoo) = &platform.odoo {
                let mut modules: Vec<String> = ["base".to_string()]
                    .into_iter()
                    .chain(platform.defaults.modules.iter().cloned())
                    .chain(t.modules.iter().cloned())
                    .chain(env.modules.iter().cloned())
                    .collect();
                modules.sort();
                modules.dedup();
                let addons: Vec<String> = odoo
                    .addons_paths
                    .iter()
                    .chain(&t.addons_paths)
                    .chain(&env.addons_paths)
                    .map(|p| p.display().to_string())
                    .collect();
                let command = odoo.command.display().to_string();
                let python = odoo.python.as_ref().map(|p| p.display().to_string());
                let mut key = vec![odoo.version.to_string(), command.clone()];
                key.extend(python.clone());
                key.push("modules".into());
                key.extend(modules.iter().cloned());
                key.push("addons".into());
                key.extend(addons.iter().cloned());
                let tpl_db = careplane_spec::names::template_db_name(odoo.version, &key);
                let tpl_id = odoo_template_id(&pg, &tpl_db);
                add(
                    tpl_id.clone(),
                    Props::OdooTemplate(OdooTemplateProps {
                        cluster: pg_cluster_id(&pg),
                        scope: pg.clone(),
                        database: tpl_db.clone(),
                        role: tpl_db,
                        version: odoo.version,
                        command: command.clone(),
                        python: python.clone(),
                        modules: modules.clone(),
                        addons_paths: addons.clone(),
                    }),
                );
                let (_, _, mut limits) = kind_defaults(env.kind);
                if let Some(mem) = sizing.worker_memory.and_then(memory_bytes) {
                    limits.memory_soft = mem;
                    limits.memory_hard = mem + mem / 4;
                }
                add(
                    odoo_env_id(tname, &env.name),
                    Props::OdooEnv(OdooEnvProps {
                        cluster: pg_cluster_id(&pg),
                        server: redis_server_id(&rs),
                        tenant: tname.clone(),
                        environment: env.name.clone(),
                        environment_kind: env.kind.as_str().to_string(),
                        database: env_db_name(tname, &env.name),
                        redis_user: redis_user_id(tname, &env.name),
                        template: tpl_id,
                        version: odoo.version,
                        command,
                        python,
                        modules,
                        addons_paths: addons,
                        workers: sizing.workers,
                        cron_threads: sizing.cron_threads,
                        limits,
                        config_format: ODOO_CONFIG_FORMAT,
                        role: None,
                    }),
                );
            }
            add(
                redis_user_id(tname, &env.name),
                Props::RedisUser(RedisUserProps {
                    server: redis_server_id(&rs),
                    tenant: tname.clone(),
                    environment: env.name.clone(),
                    environment_kind: env.kind.as_str().to_string(),
                    user: env_db_name(tname, &env.name),
                    key_prefix: env_key_prefix(tname, &env.name),
                }),
            );
        }
    }
    if let Some(ingress) = &platform.ingress {
        let domain = ingress
            .domain
            .clone()
            .unwrap_or_else(|| careplane_spec::DEFAULT_INGRESS_DOMAIN.to_string());
        // One route per Odoo environment; without Odoo there is nothing to
        // route to, yet the proxy is still what the spec asked for.
        let mut routes = Vec::new();
        if platform.odoo.is_some() {
            for tenant in &specs.tenants {
                for env in &tenant.spec.environments {
                    routes.push(IngressRoute {
                        host: careplane_spec::names::ingress_host(
                            &env.name,
                            &tenant.metadata.name,
                            &domain,
                        ),
                        env: odoo_env_id(&tenant.metadata.name, &env.name),
                    });
                }
            }
        }
        routes.sort_by(|a, b| a.host.cmp(&b.host));
        add(
            ingress_id(),
            Props::Ingress(IngressProps {
                domain,
                listen: ingress
                    .listen
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "127.0.0.1".to_string()),
                https_port: ingress.https_port,
                http_port: ingress.http_port,
                routes,
                admin_paths: ingress.admin_paths.clone(),
                admin_allow: ingress.admin_allow.clone(),
                certificates: ingress
                    .certificates
                    .iter()
                    .map(|c| IngressCertificate {
                        host: c.host.clone(),
                        cert_file: c.cert_file.clone(),
                        key_file: c.key_file.clone(),
                    })
                    .collect(),
            }),
        );
    }
    let mut v: Vec<Resource> = out.into_values().collect();
    v.sort_by(|a, b| (a.kind.rank(), &a.id).cmp(&(b.kind.rank(), &b.id)));
    v
}

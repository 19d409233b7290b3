//! `careplane status` on the local target: every tenant environment, where
//! it lives, and whether its servers answer to the tenant's own credentials.

use careplane_engine::{EnvStatus, Health, ServerStatus, Status};
use careplane_local::{pg, redis};
use careplane_state::{ResourceRecord, ResourceStatus};
use serde_json::Value;

use crate::runtime::{self, observed_port, secret, str_prop, PASSWORD};
use crate::{Error as EngineError, LocalDriver};

/// The supervisor's `status.json` as it stands now, with
/// `supervisorRunning`. A supervisor that died without stopping (SIGKILL,
/// OOM) left a file that still says `running`: its processes are then
/// reported stopped, without pid, and not healthy.
fn supervised_processes(root: &std::path::Path) -> Option<Value> {
    let mut st = careplane_odoo::read_status(root).ok()??;
    let alive = careplane_odoo::supervisor_pid(root) == Some(st.supervisor_pid);
    if !alive {
        use careplane_odoo::{ProcessState, SupervisorState};
        st.state = SupervisorState::Stopped;
        for p in st
            .processes
            .iter_mut()
            .filter(|p| p.state != ProcessState::Stopped || p.pid.is_some())
        {
            p.state = ProcessState::Stopped;
            p.pid = None;
            p.pid_start_time = None;
            p.next_start_at = None;
            p.backoff_ms = None;
            p.healthy = p.healthy.map(|_| false);
            p.health_error = Some("its supervisor is not running".into());
        }
    }
    let mut v = serde_json::to_value(st).ok()?;
    v["supervisorRunning"] = Value::Bool(alive);
    Some(v)
}

fn state_name(s: ResourceStatus) -> String {
    match s {
        ResourceStatus::Pending => "pending",
        ResourceStatus::Ready => "ready",
        ResourceStatus::Deleting => "deleting",
    }
    .to_string()
}

impl LocalDriver {
    pub(crate) fn collect_status(&mut self) -> Result<Status, EngineError> {
        let all = self.recorded()?;
        let mut servers = Vec::new();
        let mut host = crate::resources::Host::default();
        for r in all
            .iter()
            .filter(|r| r.kind == "pg-cluster" || r.kind == "redis-server")
        {
            let pid = r
                .observed
                .get("pid")
                .and_then(Value::as_u64)
                .map(|p| p as u32);
            let running = self.server_running(r);
            let members = if running && r.status == ResourceStatus::Ready {
                self.members(r, &mut host).ok()
            } else {
                None
            };
            let mut templates: Vec<String> = all
                .iter()
                .filter(|t| t.kind == "odoo-template" && t.props["cluster"] == r.id.as_str())
                .filter_map(|t| t.props["database"].as_str().map(str::to_string))
                .collect();
            templates.sort();
            let archiving =
                (r.kind == "pg-cluster" && running && r.status == ResourceStatus::Ready)
                    .then(|| self.archiving_status(r, &mut host));
            servers.push(ServerStatus {
                archiving,
                last_restore: r
                    .observed
                    .get("lastClusterRestore")
                    .and_then(|v| serde_json::from_value(v.clone()).ok()),
                members,
                templates,
                id: r.id.clone(),
                state: state_name(r.status),
                port: observed_port(r).ok(),
                pid: if running { pid } else { None },
                running,
            });
        }
        let mut environments = Vec::new();
        let ca = all
            .iter()
            .find(|r| r.kind == "ca")
            .and_then(|r| r.observed.get("certPem").and_then(Value::as_str))
            .map(str::to_string);
        for db in all.iter().filter(|r| r.kind == "pg-database") {
            let mut env = self.env_status(db, &all, ca.as_deref())?;
            env.recovery_point = servers
                .iter()
                .find(|s| s.id == env.cluster)
                .and_then(|s| s.archiving.as_ref())
                .and_then(|a| a.last_archived_time.clone());
            env.last_backup = self.last_backup(&env.tenant, &env.environment);
            env.last_restore = crate::restore::last_restore(db);
            env.last_restore_verification = db
                .observed
                .get("lastRestoreVerification")
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            env.pre_restore_databases = crate::restore::pre_restore_databases(db);
            environments.push(env);
        }
        Ok(Status {
            platform: self.specs.platform.metadata.name.clone(),
            data_dir: self.data_dir.display().to_string(),
            servers,
            environments,
        })
    }

    fn members(
        &mut self,
        r: &ResourceRecord,
        host: &mut crate::resources::Host,
    ) -> Result<Vec<String>, EngineError> {
        let mut v = if r.kind == "pg-cluster" {
            self.cluster_handle(r, host)?.databases()?
        } else {
            self.redis_handle(r, host)?.tenant_users()?
        };
        v.sort();
        Ok(v)
    }

    fn server_running(&self, r: &ResourceRecord) -> bool {
        // Liveness from the recorded pid; a stale pid file never counts.
        r.observed
            .get("pid")
            .and_then(Value::as_u64)
            .map(|p| careplane_local::system::pid_alive(p as u32))
            .unwrap_or(false)
            && match r.kind.as_str() {
                "pg-cluster" => runtime::observed_str(r, "root")
                    .map(|root| {
                        std::path::Path::new(root)
                            .join("data/postmaster.pid")
                            .exists()
                    })
                    .unwrap_or(false),
                _ => true,
            }
    }

    fn env_status(
        &mut self,
        db: &ResourceRecord,
        all: &[ResourceRecord],
        ca: Option<&str>,
    ) -> Result<EnvStatus, EngineError> {
        let tenant = str_prop(db, "tenant")?.to_string();
        let environment = str_prop(db, "environment")?.to_string();
        let cluster_id = str_prop(db, "cluster")?.to_string();
        let database = str_prop(db, "database")?.to_string();
        let role = crate::runtime::db_role(db)?.to_string();
        let crec = all.iter().find(|r| r.id == cluster_id);
        let pg_port = crec.and_then(|r| observed_port(r).ok());
        let store = self.store_ref()?;
        let pg_health = match (pg_port, ca, db.status) {
            (Some(port), Some(ca), ResourceStatus::Ready) => {
                let password = secret(store, &db.id, PASSWORD)?;
                Health::from(pg::check_tenant(port, &database, &role, &password, ca))
            }
            _ => Health {
                ok: false,
                detail: format!("not provisioned ({})", state_name(db.status)),
            },
        };
        let user_id = careplane_model::redis_user_id(&tenant, &environment);
        let urec = all.iter().find(|r| r.id == user_id);
        let (mut redis_server, mut redis_user, mut redis_port, mut key_prefix, mut redis_health) =
            (None, None, None, None, None);
        if let Some(u) = urec {
            let server_id = str_prop(u, "server")?.to_string();
            let port = all
                .iter()
                .find(|r| r.id == server_id)
                .and_then(|r| observed_port(r).ok());
            let user = str_prop(u, "user")?.to_string();
            redis_health = Some(match (port, u.status) {
                (Some(port), ResourceStatus::Ready) => {
                    let password = secret(store, &u.id, PASSWORD)?;
                    Health::from(redis::check_user(port, &user, &password))
                }
                _ => Health {
                    ok: false,
                    detail: format!("not provisioned ({})", state_name(u.status)),
                },
            });
            redis_server = Some(server_id);
            redis_user = Some(user);
            redis_port = port;
            key_prefix = Some(str_prop(u, "keyPrefix")?.to_string());
        }
        let odoo_id = careplane_model::odoo_env_id(&tenant, &environment);
        let (mut odoo_url, mut odoo_health, mut odoo_processes) = (None, None, None);
        let mut odoo_uid = None;
        if let Some(o) = all.iter().find(|r| r.id == odoo_id) {
            odoo_uid = o
                .observed
                .get("uid")
                .and_then(Value::as_u64)
                .map(|u| u as u32);
            // Through the proxy when one routes the environment.
            odoo_url = crate::ingress::env_url(all, &odoo_id).or_else(|| {
                o.observed
                    .get("url")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            let port = o
                .observed
                .get("httpPort")
                .and_then(Value::as_u64)
                .map(|p| p as u16);
            odoo_health = Some(match (port, o.status) {
                (Some(port), ResourceStatus::Ready) => {
                    let t = std::time::Duration::from_secs(10);
                    let check =
                        |port: u16, path: &str| match careplane_odoo::http_get(port, path, t) {
                            Ok(200) => Ok(()),
                            Ok(code) => Err(format!("GET {path} answered {code}")),
                            Err(e) => Err(e.to_string()),
                        };
                    let evented = crate::odoo::evented_port(&o.props, &o.observed);
                    Health::from(
                        check(port, "/web/health")
                            .and_then(|_| check(port, "/web/login"))
                            .and_then(|_| match evented {
                                Some(g) => check(g, "/web/health")
                                    .map_err(|e| format!("evented server (port {g}): {e}")),
                                None => Ok(()),
                            }),
                    )
                }
                _ => Health {
                    ok: false,
                    detail: format!("not provisioned ({})", state_name(o.status)),
                },
            });
            if let Some(root) = o.observed.get("root").and_then(Value::as_str) {
                odoo_processes = supervised_processes(std::path::Path::new(root));
            }
            // Answering without a supervisor is not healthy: nothing
            // restarts the next process to die.
            let unsupervised = odoo_processes
                .as_ref()
                .is_some_and(|p| p["supervisorRunning"] == false);
            if let Some(h) = odoo_health.as_mut().filter(|h| h.ok && unsupervised) {
                *h = Health {
                    ok: false,
                    detail: "its supervisor is not running (`careplane start` starts it)".into(),
                };
            }
            // Configuration that is no longer what careplane wrote (its
            // hardening may be off at the next restart).
            let root = o.observed.get("root").and_then(Value::as_str);
            let written = o.observed.get("configDigest").and_then(Value::as_str);
            if let (Some(root), Some(written)) = (root, written) {
                let now = careplane_odoo::config_digest(std::path::Path::new(root));
                if now.as_deref() != Some(written) {
                    if let Some(h) = odoo_health.as_mut() {
                        *h = Health {
                            ok: false,
                            detail: format!(
                                "odoo-web.conf / odoo-cron.conf in {root} differ from what \
                                 careplane wrote: changed behind its back"
                            ),
                        };
                    }
                }
            }
        }
        Ok(EnvStatus {
            odoo_uid,
            odoo_url,
            odoo_health,
            odoo_processes,
            kind: db
                .props
                .get("environmentKind")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            state: state_name(db.status),
            tenant,
            environment,
            cluster: cluster_id,
            database,
            pg_port,
            pg_health,
            redis_server,
            redis_user,
            redis_port,
            key_prefix,
            redis_health,
            last_backup: None,
            recovery_point: None,
            last_restore: None,
            last_restore_verification: None,
            pre_restore_databases: Vec::new(),
        })
    }
}

//! Odoo on the local target: template databases and environments.
//!
//! A template (`odoo-template/<scope>/<db>`) is initialized once per cluster,
//! Odoo version and module set with `odoo-bin -i <modules> --stop-after-init`,
//! then sealed. An environment (`odoo-env/<tenant>/<env>`) is its database
//! cloned from the template (`CREATE DATABASE … TEMPLATE`), its filestore
//! copied, the clone's identity regenerated, a hardened `odoo.conf` and a
//! supervisor that keeps web and cron running. Every step is an "ensure", so
//! a killed apply resumes cleanly (see `apply.rs`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use careplane_local::pg::{DatabaseState, TenantDb};
use careplane_odoo as odoo;
use careplane_state::{ExposeSecret, ResourceRecord, ResourceStatus, SecretString};
use serde_json::{json, Value};

use careplane_engine::{crash_point, Action, Op};
use careplane_model::{OdooEnvProps, OdooTemplateProps};

use crate::resources::{ready, remove_dir, Host};
use crate::runtime::{self, observed_port, observed_str, secret, str_prop, PASSWORD};
use crate::{Error as EngineError, LocalDriver};

/// Secrets of an `odoo-env`: the master password (`admin_passwd`, kept as
/// Odoo's pbkdf2 hash in odoo.conf) and the `admin` user's login password.
pub const MASTER_PASSWORD: &str = "master-password";
pub const ADMIN_LOGIN_PASSWORD: &str = "admin-password";
const MASTER_HASH: &str = "master-password-hash";
/// The `careplane-probe` user's password (docs/design/0012-serve-and-probes.md).
pub const PROBE_PASSWORD: &str = "probe-password";
/// Bounds each JSON-RPC exchange that keeps the probe user.
const PROBE_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a freshly started Odoo may take to answer `/web/login` (a real
/// Odoo loads its registry on the first request).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the evented (websocket/longpolling) server of a multi-worker Odoo
/// may lag behind the web server: Odoo's prefork master spawns it together
/// with the workers, so once `/web/login` answers it is normally up.
const EVENTED_TIMEOUT: Duration = Duration::from_secs(20);

/// The evented server's port when the environment runs one (workers > 0).
pub(crate) fn evented_port(props: &Value, observed: &Value) -> Option<u16> {
    (props["workers"].as_u64().unwrap_or(0) > 0)
        .then(|| observed["geventPort"].as_u64())
        .flatten()
        .map(|p| p as u16)
}
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl LocalDriver {
    /// The Odoo installation a resource names. A bare command is looked up on
    /// PATH, a relative path is relative to the platform's spec file.
    fn odoo_install(&self, props: &Value) -> Result<odoo::OdooInstall, EngineError> {
        let base = self
            .specs
            .platform
            .source
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let resolve = |s: &str, what: &str| -> Result<PathBuf, EngineError> {
            let p = PathBuf::from(s);
            let found = if p.is_absolute() {
                Some(p)
            } else if s.contains('/') {
                Some(std::path::absolute(base.join(&p)).unwrap_or_else(|_| base.join(&p)))
            } else {
                runtime::find_on_path(s)
            };
            match found {
                Some(p) if p.is_file() => Ok(p),
                _ => Err(EngineError::Refused {
                    problems: vec![format!(
                        "Platform spec.odoo.{what}: {s:?} not found (give an absolute path, a path \
                         relative to {}, or a command on PATH)",
                        self.specs.platform.source.file.display()
                    )],
                }),
            }
        };
        // The same four fields in a template's and an environment's props.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Software {
            command: String,
            python: Option<String>,
            version: u32,
            addons_paths: Vec<String>,
        }
        let s: Software = runtime::typed("the Odoo installation of a resource", props)?;
        let command = resolve(&s.command, "command")?;
        let python = match s.python.as_deref() {
            Some(p) => Some(resolve(p, "python")?),
            None => None,
        };
        Ok(odoo::OdooInstall {
            command,
            python,
            version: s.version,
            addons_paths: s
                .addons_paths
                .into_iter()
                .map(|p| {
                    let p = PathBuf::from(p);
                    if p.is_absolute() {
                        p
                    } else {
                        base.join(p)
                    }
                })
                .collect(),
        })
    }

    fn redis_settings(
        &self,
        all: &[ResourceRecord],
        urec: &ResourceRecord,
    ) -> Result<odoo::RedisSettings, EngineError> {
        let srec = ready(all, str_prop(urec, "server")?)?;
        Ok(odoo::RedisSettings {
            host: "127.0.0.1".into(),
            port: observed_port(&srec)?,
            user: str_prop(urec, "user")?.to_string(),
            key_prefix: str_prop(urec, "keyPrefix")?.to_string(),
        })
    }

    /// Preflight: the installation exists and the Odoo user can run it and
    /// read its addons and the platform CA.
    pub(crate) fn check_odoo(&self, a: &Action) -> Result<(), EngineError> {
        use careplane_local::system::{check_access, Access};
        let install = self.odoo_install(&a.props)?;
        // Any uid of the range stands for all: none owns the installation.
        let user = careplane_local::system::is_root()
            .then(|| careplane_local::system::numeric_user(self.odoo_uids().first));
        let user = user.as_ref();
        match &install.python {
            Some(py) => {
                check_access(py, user, Access::Execute)?;
                check_access(&install.command, user, Access::Read)?;
            }
            None => check_access(&install.command, user, Access::Execute)?,
        }
        for dir in &install.addons_paths {
            if !dir.is_dir() {
                return Err(EngineError::Refused {
                    problems: vec![format!(
                        "Platform spec.odoo.addonsPaths: {} is not a directory",
                        dir.display()
                    )],
                });
            }
            check_access(dir, user, Access::ReadDir)?;
        }
        // The configuration careplane writes depends on the version: refuse
        // an installation that is not the one the platform names.
        let mut env = odoo::ProcessEnv::base(Path::new("/"));
        env.set("USER", "odoo-version-check");
        env.set("LOGNAME", "odoo-version-check");
        let found = odoo::installed_version(&install, &env, user.map(|u| (u.uid, u.gid)))?;
        if found != install.version {
            return Err(EngineError::Refused {
                problems: vec![format!(
                    "Platform spec.odoo.version is {} but {} is Odoo {found}",
                    install.version,
                    install.argv_prefix().join(" ")
                )],
            });
        }
        Ok(())
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        self.data_dir.join("pki").join("ca.crt")
    }

    /// The platform CA's certificate, to verify clusters when careplane
    /// connects as a tenant.
    pub(crate) fn ca_pem(&self) -> Result<String, EngineError> {
        let path = self.ca_file();
        std::fs::read_to_string(&path).map_err(|source| EngineError::Io {
            what: format!("reading the platform CA {}", path.display()),
            source,
        })
    }

    fn odoo_uids(&self) -> careplane_spec::UidRange {
        self.specs
            .platform
            .spec
            .odoo
            .as_ref()
            .and_then(|o| o.uids)
            .unwrap_or(careplane_spec::UidRange::DEFAULT)
    }

    /// A uid for a new Odoo environment or template (None unless careplane is
    /// root): the first of the range that no recorded resource holds and no
    /// account has.
    fn allocate_uid(&self, all: &[ResourceRecord]) -> Result<Option<u32>, EngineError> {
        if !careplane_local::system::is_root() {
            return Ok(None);
        }
        let taken: std::collections::BTreeSet<u64> = all
            .iter()
            .filter_map(|r| r.observed.get("uid").and_then(Value::as_u64))
            .collect();
        let range = self.odoo_uids();
        for uid in range.first..range.first.saturating_add(range.count) {
            if !taken.contains(&u64::from(uid)) && !careplane_local::system::uid_has_account(uid)? {
                return Ok(Some(uid));
            }
        }
        Err(EngineError::Refused {
            problems: vec![format!(
                "no free uid left for Odoo in {}..{} (Platform spec.odoo.uids): widen the range",
                range.first,
                u64::from(range.first) + u64::from(range.count)
            )],
        })
    }

    /// The resource's recorded uid, allocating (and recording) one for a
    /// record that has none yet: right after its intent, before anything
    /// uses it, so a kill in between leaves nothing owned by it.
    fn ensure_uid(&mut self, rec: &mut ResourceRecord) -> Result<(), EngineError> {
        if careplane_local::system::is_root() && rec.observed.get("uid").is_none() {
            let all = self.store()?.resources()?;
            if let Some(uid) = self.allocate_uid(&all)? {
                rec.observed["uid"] = json!(uid);
                self.store()?.put_resource(rec)?;
            }
        }
        Ok(())
    }

    /// Who owns an environment's (or template's) files and runs its
    /// processes: its own uid and gid when careplane is root.
    pub(crate) fn owner(rec: &ResourceRecord) -> Option<(u32, u32)> {
        rec.observed
            .get("uid")
            .and_then(Value::as_u64)
            .filter(|_| careplane_local::system::is_root())
            .map(|u| (u as u32, u as u32))
    }

    #[allow(clippy::too_many_arguments)]
    fn env_config(
        &self,
        root: &Path,
        database: &str,
        role: &str,
        pg_port: u16,
        http_port: u16,
        gevent_port: u16,
        props: &Value,
        master_hash: String,
        redis: Option<odoo::RedisSettings>,
    ) -> Result<odoo::EnvConfig, EngineError> {
        // An environment's props, or the one-off settings a template is
        // initialized with (no `limits`: Odoo's production defaults).
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Processes {
            workers: u32,
            cron_threads: u32,
            #[serde(default)]
            limits: Option<careplane_model::Limits>,
        }
        let p: Processes = runtime::typed("the Odoo processes of a resource", props)?;
        let limits = p.limits.unwrap_or(careplane_model::Limits {
            memory_soft: 2048 << 20,
            memory_hard: 2560 << 20,
            time_cpu: 60,
            time_real: 120,
            request: 65536,
        });
        Ok(odoo::EnvConfig {
            database: database.to_string(),
            db_host: "127.0.0.1".into(),
            db_port: pg_port,
            db_user: role.to_string(),
            db_sslmode: odoo::DEFAULT_SSLMODE.into(),
            data_dir: root.join("data"),
            http_interface: "127.0.0.1".into(),
            http_port,
            gevent_port,
            workers: p.workers,
            cron_threads: p.cron_threads.max(1),
            limits: odoo::Limits {
                memory_soft: limits.memory_soft,
                memory_hard: limits.memory_hard,
                time_cpu: u32::try_from(limits.time_cpu).unwrap_or(u32::MAX),
                time_real: u32::try_from(limits.time_real).unwrap_or(u32::MAX),
                request: u32::try_from(limits.request).unwrap_or(u32::MAX),
            },
            admin_passwd_hash: master_hash,
            server_wide_modules: vec!["base".into(), "web".into()],
            addons_paths: self.odoo_install(props)?.addons_paths,
            redis,
            base_url: format!("http://127.0.0.1:{http_port}"),
        })
    }

    /// The environment Odoo runs with for `database`: database password, CA
    /// and Redis credentials (the only place its secrets go), and
    /// `USER`/`LOGNAME`, because its uid has no passwd entry and `odoo-bin`
    /// asks `getpass.getuser()` at start, which reads them first.
    fn process_env(
        &self,
        root: &Path,
        database: &str,
        db_password: &SecretString,
        redis: Option<(&odoo::RedisSettings, &SecretString)>,
    ) -> odoo::ProcessEnv {
        let mut env = odoo::ProcessEnv::for_odoo(root, db_password, Some(&self.ca_file()), redis);
        let login = format!("odoo-{database}");
        env.set("USER", &login);
        env.set("LOGNAME", &login);
        env
    }

    pub(crate) fn ensure_odoo_template(
        &mut self,
        a: &Action,
        host: &mut Host,
    ) -> Result<(), EngineError> {
        let p: OdooTemplateProps = runtime::typed(&a.id, &a.props)?;
        let database = p.database.clone();
        // One directory per cluster and template: templates of the same name
        // on two clusters are two databases with two filestores. (Templates
        // recorded before this keep the root they were given.)
        let scope = p.scope.clone();
        let mut rec = self.prepare(a, |dir| {
            Ok(json!({
                "root": dir.join("odoo").join("templates").join(&scope).join(&database).display().to_string(),
            }))
        })?;
        self.ensure_uid(&mut rec)?;
        self.store()?.get_or_create_secret(&a.id, PASSWORD)?;
        if a.op == Op::Create {
            crash_point(&a.id, "prepared");
        }
        let install = self.odoo_install(&a.props)?;
        let cluster_id = str_prop(&rec, "cluster")?.to_string();
        let all = self.store()?.resources()?;
        let crec = ready(&all, &cluster_id)?;
        let cluster = self.cluster_handle(&crec, host)?;
        let mut target = rec.clone();
        target.props = a.props.clone();
        let tdb = runtime::tenant_db(self.store()?, &target)?;
        let already = rec.observed.get("sealed").and_then(Value::as_bool) == Some(true)
            && rec.status == ResourceStatus::Ready
            && a.op == Op::Create;
        if !already {
            let root = PathBuf::from(observed_str(&rec, "root")?);
            if cluster.databases()?.contains(&tdb.database) {
                // An interrupted or repeated initialization starts over from an
                // empty database: `-i` is not guaranteed to finish a half-done
                // install, and a template holds nothing but what `-i` put there.
                cluster.unseal_template(&tdb.database)?;
                cluster.drop_tenant_database(&tdb.database, &tdb.role)?;
            }
            odoo::tree::remove_tree(&root.join("data"))?;
            cluster.ensure_tenant_database(&tdb)?;
            cluster.write_hba(&runtime::hba_entries(&all, &cluster_id)?)?;
            let owner = Self::owner(&rec);
            let master = odoo::hash_admin_password(&SecretString::from(
                careplane_local::system::generate_password()?
                    .expose_secret()
                    .to_string(),
            ));
            let ports = careplane_local::system::free_ports(2)?;
            let cfg = self.env_config(
                &root,
                &tdb.database,
                &tdb.role,
                observed_port(&crec)?,
                ports[0],
                ports[1],
                &json!({"workers": 0, "cronThreads": 1, "command": a.props["command"], "python": a.props["python"], "addonsPaths": a.props["addonsPaths"], "version": a.props["version"]}),
                master,
                None,
            )?;
            let (web_conf, _) = odoo::write_configs(&root, &cfg, owner)?;
            let env = self.process_env(&root, &tdb.database, &tdb.password, None);
            let modules = strings(&a.props["modules"]);
            odoo::run_once(
                &install,
                &web_conf,
                &tdb.database,
                odoo::ModuleOp::Install(modules.clone()),
                &env,
                &root.join("logs").join("init.log"),
                owner,
            )?;
            self.check_installed(
                &rec,
                host,
                &tdb,
                &modules,
                &root.join("logs").join("init.log"),
            )?;
            cluster.seal_template(&tdb.database)?;
            rec.observed["sealed"] = json!(true);
        }
        self.finish(a, rec)
    }

    pub(crate) fn delete_odoo_template(
        &mut self,
        a: &Action,
        host: &mut Host,
    ) -> Result<(), EngineError> {
        let Some(rec) = self.mark_deleting(a)? else {
            return Ok(());
        };
        let cluster_id = str_prop(&rec, "cluster")?.to_string();
        let all = self.store()?.resources()?;
        if let Some(crec) = all.iter().find(|r| r.id == cluster_id) {
            let cluster = self.cluster_handle(crec, host)?;
            let database = str_prop(&rec, "database")?;
            if cluster.databases()?.iter().any(|d| d == database) {
                cluster.unseal_template(database)?;
            }
            cluster.write_hba(&runtime::hba_entries(&all, &cluster_id)?)?;
            cluster.drop_tenant_database(database, str_prop(&rec, "role")?)?;
        }
        if let Some(root) = rec.observed.get("root").and_then(Value::as_str) {
            // Before templates had a directory per cluster, two clusters'
            // templates of one name shared it: the other keeps it then.
            let shared = all.iter().any(|r| {
                r.id != rec.id && r.observed.get("root").and_then(Value::as_str) == Some(root)
            });
            if !shared {
                remove_dir(Path::new(root))?;
                // The cluster's template directory goes with its last template.
                if let Some(parent) = Path::new(root).parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
        crash_point(&a.id, "executed");
        self.store()?.delete_resource(&a.id)?;
        Ok(())
    }

    /// Brings an environment to its spec and spawns its processes; the
    /// caller waits for them (see [`Starting`]) and then calls
    /// [`Engine::finish_odoo_env`]. Until then the record is not ready, so an
    /// apply killed while Odoo loads does the environment again.
    pub(crate) fn ensure_odoo_env(
        &mut self,
        a: &Action,
        host: &mut Host,
    ) -> Result<Starting, EngineError> {
        let p: OdooEnvProps = runtime::typed(&a.id, &a.props)?;
        let (tenant, envname) = (p.tenant.clone(), p.environment.clone());
        let mut rec = self.prepare(a, |dir| {
            let ports = careplane_local::system::free_ports(2)?;
            Ok(json!({
                "httpPort": ports[0],
                "geventPort": ports[1],
                "root": dir.join("odoo").join("envs").join(&tenant).join(&envname).display().to_string(),
            }))
        })?;
        self.ensure_uid(&mut rec)?;
        let store = self.store()?;
        let master = store.get_or_create_secret(&a.id, MASTER_PASSWORD)?;
        let admin_login = store.get_or_create_secret(&a.id, ADMIN_LOGIN_PASSWORD)?;
        let master_hash = match store.secret(&a.id, MASTER_HASH)? {
            Some(h) => h,
            None => {
                let h = SecretString::from(odoo::hash_admin_password(&master));
                store.put_secret(&a.id, MASTER_HASH, &h)?;
                h
            }
        };
        if a.op == Op::Create {
            crash_point(&a.id, "prepared");
        }
        let all = self.store()?.resources()?;
        let cluster_id = p.cluster.clone();
        let crec = ready(&all, &cluster_id)?;
        let tpl = ready(&all, &p.template)?;
        let dbrec = ready(&all, &careplane_model::pg_database_id(&tenant, &envname))?;
        let urec = ready(&all, &p.redis_user)?;
        let cluster = self.cluster_handle(&crec, host)?;
        let tdb: TenantDb = runtime::tenant_db(self.store()?, &dbrec)?;
        let root = PathBuf::from(observed_str(&rec, "root")?);
        let owner = Self::owner(&rec);
        let seen = careplane_model::Observed::odoo_env(&rec.id, &rec.observed)?;
        let (http_port, gevent_port) = (seen.http_port, seen.gevent_port);
        let base_url = format!("http://127.0.0.1:{http_port}");

        // Stop what runs before touching its database or configuration.
        odoo::stop_supervisor(&root, STOP_TIMEOUT)?;

        // 1. Database content: a clone of the template, unless it already
        //    holds an Odoo database (a resumed or repeated apply). Inside the
        //    tenant's database careplane works only as the tenant's own role
        //    (its tables and settings are the tenant's); the superuser works
        //    from the maintenance database, or in a clone no tenant has
        //    entered yet (see careplane_local::pg::DatabaseState::Pristine).
        let tpl_db = str_prop(&tpl, "database")?.to_string();
        let tpl_role = str_prop(&tpl, "role")?.to_string();
        let ca = self.ca_pem()?;
        cluster.ensure_tenant_role(&tdb)?;
        // Absent, pristine (a clone cut short) or invalid (a CREATE or DROP
        // cut short): no tenant has anything there, it is simply made again.
        let state = cluster.database_state(&tdb.database)?;
        // One connection as the tenant answers both questions.
        let mut tenant = match state {
            DatabaseState::Open { .. } => Some(cluster.tenant_connect(&tdb, &ca)?),
            _ => None,
        };
        let initialized = match tenant.as_mut() {
            Some(c) => odoo::db::is_initialized(c)?,
            None => false,
        };
        if !initialized {
            let has_data = match tenant.take() {
                Some(mut c) => careplane_local::pg::database_has_data(&mut c).map_err(|e| {
                    EngineError::inconsistent(format!(
                        "inspecting database {} as its role: {e}",
                        tdb.database
                    ))
                })?,
                None => false,
            };
            if has_data {
                return Err(EngineError::inconsistent(format!(
                    "database {} holds tables but no Odoo: refusing to replace it with a copy \
                     of template {tpl_db}",
                    tdb.database
                )));
            }
            // Files first, then the database: a database that answers as
            // initialized always has its template's files beside it.
            let tpl_root = PathBuf::from(observed_str(&tpl, "root")?);
            odoo::tree::install_filestore(
                &root,
                &tdb.database,
                &tpl_root.join("data").join("filestore").join(&tpl_db),
                owner,
            )?;
            crash_point(&a.id, "filestore");
            cluster.clone_database(&tpl_db, &tpl_role, &tdb, true, &|point| {
                crash_point(&a.id, point)
            })?;
        }
        cluster.ensure_tenant_database(&tdb)?;
        {
            let mut c = match tenant {
                Some(c) => c,
                None => cluster.tenant_connect(&tdb, &ca)?,
            };
            odoo::db::make_unique(
                &mut c,
                &a.id,
                &base_url,
                &odoo::hash_admin_password(&admin_login),
            )?;
        }

        // 2. Configuration (no secret in it) and the process environment.
        let redis = self.redis_settings(&all, &urec)?;
        let cfg = self.env_config(
            &root,
            &tdb.database,
            &tdb.role,
            observed_port(&crec)?,
            http_port,
            gevent_port,
            &a.props,
            master_hash.expose_secret().to_string(),
            Some(redis.clone()),
        )?;
        let (web_conf, cron_conf) = odoo::write_configs(&root, &cfg, owner)?;
        // What careplane wrote, so `status` can tell a file changed since.
        rec.observed["configDigest"] = json!(odoo::config_digest(&root));
        let redis_password = secret(self.store()?, &urec.id, PASSWORD)?;
        let env = self.process_env(
            &root,
            &tdb.database,
            &tdb.password,
            Some((&redis, &redis_password)),
        );

        // 3. Modules added since the clone (an update of the module list).
        if a.op == Op::Update {
            let old = self
                .store()?
                .resource(&a.id)?
                .map(|r| strings(&r.props["modules"]));
            let new: Vec<String> = strings(&a.props["modules"])
                .into_iter()
                .filter(|m| !old.as_ref().is_some_and(|o| o.contains(m)))
                .collect();
            if !new.is_empty() {
                odoo::run_once(
                    &self.odoo_install(&a.props)?,
                    &web_conf,
                    &tdb.database,
                    odoo::ModuleOp::Install(new.clone()),
                    &env,
                    &root.join("logs").join("modules.log"),
                    owner,
                )?;
                let log = root.join("logs").join("modules.log");
                self.check_installed(&rec, host, &tdb, &new, &log)?;
            }
        }

        // 4. Supervised processes.
        let (pid, ready) = self.spawn_odoo(
            &a.props,
            &root,
            &web_conf,
            &cron_conf,
            (http_port, evented_port(&a.props, &rec.observed)),
            env,
            owner,
        )?;
        rec.observed["supervisorPid"] = json!(pid);
        rec.observed["url"] = json!(format!("{base_url}/web/login"));
        Ok(Starting {
            rec,
            ready,
            database: tdb.database.clone(),
        })
    }

    /// Records an environment started by [`LocalDriver::ensure_odoo_env`] as
    /// ready, once its processes answer.
    pub(crate) fn finish_odoo_env(&mut self, a: &Action, s: Starting) -> Result<(), EngineError> {
        let p: OdooEnvProps = runtime::typed(&a.id, &a.props)?;
        // The write journey runs outside production and DR only (design 0012).
        let writes = !matches!(p.environment_kind.as_str(), "production" | "dr");
        self.ensure_probe_user(&a.id, s.ready.http_port, &s.database, writes)?;
        self.finish(a, s.rec)
    }

    /// [`Self::ensure_probe_user`] for a recorded, running environment: after an import or a
    /// restore replaced its database (whose probe user, if any, has another password).
    pub(crate) fn ensure_probe_user_of(&mut self, rec: &ResourceRecord) -> Result<(), EngineError> {
        let p: OdooEnvProps = runtime::typed(&rec.id, &rec.props)?;
        let writes = !matches!(p.environment_kind.as_str(), "production" | "dr");
        let port = careplane_model::Observed::odoo_env(&rec.id, &rec.observed)?.http_port;
        self.ensure_probe_user(&rec.id, port, &p.database, writes)
    }

    /// Makes or resets the environment's `careplane-probe` user (its password from the
    /// vault) through its running Odoo, as its `admin`.
    pub(crate) fn ensure_probe_user(
        &mut self,
        id: &str,
        http_port: u16,
        database: &str,
        writes: bool,
    ) -> Result<(), EngineError> {
        let store = self.store()?;
        let admin = store.get_or_create_secret(id, ADMIN_LOGIN_PASSWORD)?;
        let probe = store.get_or_create_secret(id, PROBE_PASSWORD)?;
        odoo::rpc::ensure_probe_user(
            http_port,
            database,
            &admin,
            &probe,
            writes,
            PROBE_USER_TIMEOUT,
        )
        .map_err(|e| {
            EngineError::inconsistent(format!(
                "{id}: keeping the {} user: {e}",
                odoo::rpc::PROBE_LOGIN
            ))
        })?;
        Ok(())
    }

    /// Writes the supervisor's spec and environment file and spawns it;
    /// returns its pid and what to wait for before calling it ready.
    #[allow(clippy::too_many_arguments)]
    fn spawn_odoo(
        &self,
        props: &Value,
        root: &Path,
        web_conf: &Path,
        cron_conf: &Path,
        (http_port, evented): (u16, Option<u16>),
        env: odoo::ProcessEnv,
        owner: Option<(u32, u32)>,
    ) -> Result<(u32, Readiness), EngineError> {
        let install = self.odoo_install(props)?;
        let who: OdooEnvProps = runtime::typed("an Odoo environment", props)?;
        // Secrets reach the supervisor on its stdin and live in memory only;
        // an environment file an earlier version wrote goes.
        let old_env_file = root.join("process.env");
        if old_env_file.exists() {
            std::fs::remove_file(&old_env_file).map_err(|source| EngineError::Io {
                what: format!("removing {}", old_env_file.display()),
                source,
            })?;
        }
        let spec = odoo::SupervisorSpec {
            name: format!("{}/{}", who.tenant, who.environment),
            dir: root.to_path_buf(),
            processes: vec![
                odoo::process_spec(&install, web_conf, odoo::Role::Web, None, http_port),
                odoo::process_spec(&install, cron_conf, odoo::Role::Cron, None, http_port),
            ],
            user: owner,
            settings: odoo::SupervisorSettings::default(),
            env_on_stdin: true,
        };
        let spec_file = root.join("supervisor.json");
        spec.save(&spec_file)?;
        // The running binary itself, through /proc: a careplane binary
        // replaced on disk during an apply (an upgrade) is still the one
        // that runs here, rather than a "careplane (deleted)" path.
        let exe = PathBuf::from("/proc/self/exe");
        let pid = odoo::spawn_supervisor_with_env(
            &exe,
            &[OsString::from("supervise"), spec_file.into_os_string()],
            root,
            &env,
        )?;
        Ok((
            pid,
            Readiness {
                root: root.to_path_buf(),
                http_port,
                evented,
            },
        ))
    }

    pub(crate) fn delete_odoo_env(
        &mut self,
        a: &Action,
        _host: &mut Host,
    ) -> Result<(), EngineError> {
        let Some(rec) = self.mark_deleting(a)? else {
            return Ok(());
        };
        if let Some(root) = rec.observed.get("root").and_then(Value::as_str) {
            odoo::stop_supervisor(Path::new(root), STOP_TIMEOUT)?;
            remove_dir(Path::new(root))?;
            // The tenant's directory goes with its last environment.
            if let Some(parent) = Path::new(root).parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        crash_point(&a.id, "executed");
        self.store()?.delete_resource(&a.id)?;
        Ok(())
    }

    /// Starts a recorded environment's supervisor again (`careplane start`)
    /// and waits until it is ready.
    pub(crate) fn start_odoo_env(&mut self, rec: &ResourceRecord) -> Result<u32, EngineError> {
        let (pid, ready) = self.spawn_odoo_env(rec)?;
        if let Some(ready) = ready {
            ready.wait()?;
        }
        Ok(pid)
    }

    /// Spawns a recorded environment's supervisor unless one runs; the
    /// readiness to wait for, when it was spawned now.
    pub(crate) fn spawn_odoo_env(
        &mut self,
        rec: &ResourceRecord,
    ) -> Result<(u32, Option<Readiness>), EngineError> {
        let root = PathBuf::from(observed_str(rec, "root")?);
        if let Some(pid) = odoo::supervisor_pid(&root) {
            return Ok((pid, None));
        }
        let (_, env) = self.recorded_process_env(rec, &root)?;
        let owner = Self::owner(rec);
        let http_port = careplane_model::Observed::odoo_env(&rec.id, &rec.observed)?.http_port;
        let (pid, ready) = self.spawn_odoo(
            &rec.props,
            &root,
            &root.join(odoo::Role::Web.config_file_name()),
            &root.join(odoo::Role::Cron.config_file_name()),
            (http_port, evented_port(&rec.props, &rec.observed)),
            env,
            owner,
        )?;
        Ok((pid, Some(ready)))
    }

    /// The database handle and process environment of a recorded
    /// environment, from its database and Redis user records.
    pub(crate) fn recorded_process_env(
        &mut self,
        rec: &ResourceRecord,
        root: &Path,
    ) -> Result<(TenantDb, odoo::ProcessEnv), EngineError> {
        let all = self.store()?.resources()?;
        let dbrec = ready(
            &all,
            &careplane_model::pg_database_id(
                str_prop(rec, "tenant")?,
                str_prop(rec, "environment")?,
            ),
        )?;
        let urec = ready(&all, str_prop(rec, "redisUser")?)?;
        let tdb = runtime::tenant_db(self.store()?, &dbrec)?;
        let redis_password = secret(self.store()?, &urec.id, PASSWORD)?;
        let redis = self.redis_settings(&all, &urec)?;
        let env = self.process_env(
            root,
            &tdb.database,
            &tdb.password,
            Some((&redis, &redis_password)),
        );
        Ok((tdb, env))
    }

    pub(crate) fn stop_odoo_env(&mut self, rec: &ResourceRecord) -> Result<(), EngineError> {
        stop_env_at(Path::new(observed_str(rec, "root")?))
    }

    /// `careplane modules install|upgrade`: stop web, run Odoo's `-i`/`-u`,
    /// start again, check health; journaled like an apply.
    pub(crate) fn modules_command(
        &mut self,
        tenant: &str,
        env: &str,
        install: bool,
        modules: &[String],
    ) -> Result<(), EngineError> {
        let _lock = careplane_state::lock(&self.data_dir, "modules")?;
        let id = careplane_model::odoo_env_id(tenant, env);
        let rec = self
            .store()?
            .resource(&id)?
            .filter(|r| r.status == ResourceStatus::Ready)
            .ok_or_else(|| EngineError::Inconsistent {
                what: format!("careplane runs no Odoo for {tenant}/{env} (see `careplane status`)"),
            })?;
        let verb = if install { "install" } else { "upgrade" };
        let op = self.store()?.begin_operation(&format!("modules {verb}"))?;
        let label = format!("modules {verb} {id} {}", modules.join(","));
        let step = self
            .store()?
            .step_started(op, &label, &json!({ "modules": modules }))?;
        let result = self.run_modules(&rec, install, modules);
        if install && result.is_ok() {
            // Remembered, so that `plan` can say which of them the spec
            // does not list (see Driver::notes).
            let mut rec = rec.clone();
            let mut installed = strings(&rec.observed["modulesInstalled"]);
            installed.extend(modules.iter().cloned());
            installed.sort();
            installed.dedup();
            rec.observed["modulesInstalled"] = json!(installed);
            self.store()?.put_resource(&rec)?;
        }
        let err = result.as_ref().err().map(|e| e.to_string());
        self.store()?.step_finished(step, err.as_deref())?;
        self.store()?.finish_operation(
            op,
            if err.is_some() { "failed" } else { "succeeded" },
            err.as_deref(),
        )?;
        result
    }

    fn run_modules(
        &mut self,
        rec: &ResourceRecord,
        install: bool,
        modules: &[String],
    ) -> Result<(), EngineError> {
        // Users see a maintenance page, not errors, while Odoo is down.
        self.set_maintenance(&rec.id, true)?;
        let result = self.run_modules_in_maintenance(rec, install, modules);
        // Whatever happened, the page goes; if careplane dies before this,
        // `plan` shows the route held in maintenance and `apply` clears it.
        let cleared = self.set_maintenance(&rec.id, false);
        result?;
        cleared.map(|_| ())
    }

    fn run_modules_in_maintenance(
        &mut self,
        rec: &ResourceRecord,
        install: bool,
        modules: &[String],
    ) -> Result<(), EngineError> {
        let root = PathBuf::from(observed_str(rec, "root")?);
        self.stop_odoo_env(rec)?;
        crash_point(&rec.id, "modules-stopped");
        let (tdb, env) = self.recorded_process_env(rec, &root)?;
        let owner = Self::owner(rec);
        let op = if install {
            odoo::ModuleOp::Install(modules.to_vec())
        } else {
            odoo::ModuleOp::Update(modules.to_vec())
        };
        let run = odoo::run_once(
            &self.odoo_install(&rec.props)?,
            &root.join(odoo::Role::Web.config_file_name()),
            &tdb.database,
            op,
            &env,
            &root.join("logs").join("modules.log"),
            owner,
        );
        // Whatever happened, bring the environment back up.
        let started = self.start_odoo_env(rec);
        run?;
        let mut host = Host::default();
        self.check_installed(
            rec,
            &mut host,
            &tdb,
            modules,
            &root.join("logs/modules.log"),
        )?;
        started.map(|_| ())
    }

    /// Errs naming the modules of `modules` that the database of `rec`
    /// (an environment or template record) does not have installed: Odoo
    /// ignores unknown names with a warning and exits 0.
    fn check_installed(
        &mut self,
        rec: &ResourceRecord,
        host: &mut Host,
        tdb: &TenantDb,
        modules: &[String],
        log: &Path,
    ) -> Result<(), EngineError> {
        let all = self.store()?.resources()?;
        let crec = ready(&all, str_prop(rec, "cluster")?)?;
        let cluster = self.cluster_handle(&crec, host)?;
        let ca = self.ca_pem()?;
        let missing = odoo::db::missing_modules(&mut cluster.tenant_connect(tdb, &ca)?, modules)?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(EngineError::inconsistent(format!(
            "Odoo did not install {} into database {}: it has no module of that name \
             (Odoo logs \"invalid module names, ignored\" in {}); check the spelling and \
             the addons paths",
            missing.join(", "),
            tdb.database,
            log.display()
        )))
    }
}

/// What makes a started environment ready: `/web/health` and `/web/login` on
/// its HTTP port, and `/web/health` on its evented port when it has workers.
/// Plain data, so several environments can be waited for at once.
/// An environment whose processes apply has spawned and that is still
/// loading: what to wait for, and the record to finish when it answers.
pub(crate) struct Starting {
    rec: ResourceRecord,
    pub(crate) ready: Readiness,
    database: String,
}

#[derive(Clone)]
pub(crate) struct Readiness {
    root: PathBuf,
    http_port: u16,
    evented: Option<u16>,
}

impl Readiness {
    pub(crate) fn wait(&self) -> Result<(), EngineError> {
        let http_port = self.http_port;
        let ready = odoo::wait_healthy(http_port, "/web/health", READY_TIMEOUT)
            .and_then(|_| odoo::wait_healthy(http_port, "/web/login", READY_TIMEOUT))
            .map_err(|e| e.to_string())
            .and_then(|_| match self.evented {
                Some(port) => {
                    odoo::wait_healthy(port, "/web/health", EVENTED_TIMEOUT).map_err(|e| {
                        format!(
                            "the web server answers but the evented (websocket/longpolling) \
                             server on port {port} does not: {e}"
                        )
                    })
                }
                None => Ok(()),
            });
        ready.map_err(|e| {
            // What Odoo itself said is what the operator needs next.
            let log = self.root.join("logs").join("web.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains(" ERROR ") || l.contains(" CRITICAL ") || l.contains("Error")
                })
                .collect();
            let tail = lines[lines.len().saturating_sub(6)..].join("\n  ");
            EngineError::Inconsistent {
                what: format!("{e}\n  last errors in {}:\n  {tail}", log.display()),
            }
        })
    }
}

/// Stops the supervisor of the environment kept in `root` and every process
/// it ran. Needs no engine, so `stop` can run it for all environments at once.
pub(crate) fn stop_env_at(root: &Path) -> Result<(), EngineError> {
    Ok(odoo::stop_supervisor(root, STOP_TIMEOUT)?)
}

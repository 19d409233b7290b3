//! The local target's resources: making, removing, starting and stopping
//! the CA, PostgreSQL clusters and databases, Redis servers and users (Odoo
//! is in `odoo.rs`), from state records through `careplane-local`.

use std::path::{Path, PathBuf};

use careplane_engine::{crash_point, run_all, ApplyOptions, Credentials, DbCredentials, Event};
use careplane_engine::{OdooCredentials, OdooLogin, RedisCredentials};
use careplane_local::pg::{PgBinaries, TlsFiles};
use careplane_local::pki;
use careplane_local::system::{self, ServiceUser};
use careplane_model::{Kind, PgClusterProps, PgDatabaseProps, RedisServerProps, RedisUserProps};
use careplane_state::{ResourceRecord, ResourceStatus};
use serde_json::{json, Value};

use crate::runtime::{self, *};
use crate::{Error as EngineError, LocalDriver};
use careplane_engine::{Action, Op, Plan};

/// Lazily resolved host facts: found once per run, and only when a step needs them.
#[derive(Default)]
pub(crate) struct Host {
    pg_bin: Option<PgBinaries>,
    redis_bin: Option<PathBuf>,
    user: Option<Option<ServiceUser>>,
}

impl LocalDriver {
    /// The target's checks before anything runs: binaries, the service
    /// user, Odoo, and databases that still hold data.
    pub(crate) fn check_plan(
        &mut self,
        plan: &Plan,
        opts: &ApplyOptions,
    ) -> Result<Vec<String>, EngineError> {
        let mut problems = Vec::new();
        let mut taken = std::mem::take(&mut self.host);
        let host = &mut taken;
        let needs_pg = plan
            .actions
            .iter()
            .any(|a| matches!(a.kind, Kind::PgCluster | Kind::PgDatabase));
        let needs_redis = plan
            .actions
            .iter()
            .any(|a| matches!(a.kind, Kind::RedisServer | Kind::RedisUser));
        if needs_pg {
            if let Err(e) = self.pg_bin(host) {
                problems.push(e.to_string());
            }
        }
        if needs_redis {
            if let Err(e) = self.redis_bin(host) {
                problems.push(e.to_string());
            }
        }
        if let Some(a) = plan
            .actions
            .iter()
            .find(|a| a.op != Op::Delete && matches!(a.kind, Kind::OdooEnv | Kind::OdooTemplate))
        {
            match self.check_odoo(a) {
                Ok(()) => {}
                Err(EngineError::Refused { problems: p }) => problems.extend(p),
                Err(e) => problems.push(e.to_string()),
            }
        }
        for a in plan
            .actions
            .iter()
            .filter(|a| a.op != Op::Delete && a.kind == Kind::Ingress)
        {
            match self.ingress_problems(a) {
                Ok(p) => problems.extend(p),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if needs_pg || needs_redis {
            if let Err(e) = self.user(host) {
                problems.push(e.to_string());
            }
        }
        if !opts.delete_data && problems.is_empty() {
            let all = self.store()?.resources()?;
            for a in plan
                .actions
                .iter()
                .filter(|a| a.op == Op::Delete && a.kind == Kind::PgDatabase)
            {
                match self.database_has_data(a, &all, host) {
                    Ok(false) => {}
                    Ok(true) => problems.push(format!(
                        "{} still holds data (database {}): pass --delete-data to drop it",
                        a.id,
                        a.props.get("database").and_then(Value::as_str).unwrap_or("?")
                    )),
                    Err(e) => problems.push(format!(
                        "cannot tell whether {} holds data ({e}); start the platform with `careplane start` first",
                        a.id
                    )),
                }
            }
        }
        if opts.delete_data && opts.final_backup && problems.is_empty() {
            problems.extend(self.final_backups(plan, host));
        }
        self.host = taken;
        Ok(problems)
    }

    /// [`Self::database_has_data`], for the final backup before a destroy.
    pub(crate) fn database_has_data_for_backup(
        &mut self,
        a: &Action,
        all: &[ResourceRecord],
        host: &mut Host,
    ) -> Result<bool, EngineError> {
        self.database_has_data(a, all, host)
    }

    fn database_has_data(
        &mut self,
        a: &Action,
        all: &[ResourceRecord],
        host: &mut Host,
    ) -> Result<bool, EngineError> {
        let p: PgDatabaseProps = typed(&a.id, &a.props)?;
        let cluster_id = p.cluster.as_str();
        let Some(crec) = all.iter().find(|r| r.id == cluster_id) else {
            return Ok(false);
        };
        let Some(rec) = all.iter().find(|r| r.id == a.id) else {
            return Ok(false);
        };
        let cluster = self.cluster_handle(crec, host)?;
        if cluster.running_pid().is_none() {
            return Err(EngineError::inconsistent(format!(
                "{cluster_id} is not running"
            )));
        }
        // Asked as the tenant's own role: the superuser never enters a
        // database a tenant controls.
        let tdb = runtime::tenant_db(self.store()?, rec)?;
        let ca = self.ca_pem()?;
        Ok(cluster.tenant_database_has_data(&tdb, &ca)?)
    }

    fn pg_bin(&self, host: &mut Host) -> Result<PgBinaries, EngineError> {
        if host.pg_bin.is_none() {
            let dir = self.specs.platform.spec.postgres.bin_dir.as_deref();
            host.pg_bin = Some(careplane_local::pg::find_binaries(dir)?);
        }
        Ok(host.pg_bin.clone().expect("set above"))
    }

    fn redis_bin(&self, host: &mut Host) -> Result<PathBuf, EngineError> {
        if host.redis_bin.is_none() {
            host.redis_bin = Some(runtime::redis_binary(&self.specs.platform.spec)?);
        }
        Ok(host.redis_bin.clone().expect("set above"))
    }

    pub(crate) fn user(&self, host: &mut Host) -> Result<Option<ServiceUser>, EngineError> {
        if host.user.is_none() {
            host.user = Some(system::service_user(
                self.specs.platform.spec.run_as.as_deref(),
            )?);
        }
        Ok(host.user.clone().expect("set above"))
    }

    pub(crate) fn cluster_handle(
        &mut self,
        rec: &ResourceRecord,
        host: &mut Host,
    ) -> Result<careplane_local::pg::PgCluster, EngineError> {
        let bin = self.pg_bin(host)?;
        let user = self.user(host)?;
        runtime::pg_cluster(self.store()?, rec, bin, user)
    }

    pub(crate) fn redis_handle(
        &mut self,
        rec: &ResourceRecord,
        host: &mut Host,
    ) -> Result<careplane_local::redis::RedisServer, EngineError> {
        let bin = self.redis_bin(host)?;
        let user = self.user(host)?;
        runtime::redis_server(self.store()?, rec, bin, user)
    }

    /// Creates, updates or deletes what `a` names; an Odoo environment is
    /// only started (see [`LocalDriver::ensure_odoo_env`]).
    pub(crate) fn execute(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        match (a.kind, a.op) {
            (Kind::Ca, Op::Create | Op::Update) => self.ensure_ca(a),
            (Kind::Ca, Op::Delete) => self.delete_plain(a, |_, _| Ok(())),
            (Kind::PgCluster, Op::Create | Op::Update) => self.ensure_pg_cluster(a, host),
            (Kind::PgCluster, Op::Delete) => self.delete_pg_cluster(a, host),
            (Kind::PgDatabase, Op::Create | Op::Update) => self.ensure_pg_database(a, host),
            (Kind::PgDatabase, Op::Delete) => self.delete_pg_database(a, host),
            (Kind::RedisServer, Op::Create | Op::Update) => self.ensure_redis_server(a, host),
            (Kind::RedisServer, Op::Delete) => self.delete_redis_server(a, host),
            (Kind::RedisUser, Op::Create | Op::Update) => self.ensure_redis_user(a, host),
            (Kind::RedisUser, Op::Delete) => self.delete_redis_user(a, host),
            (Kind::OdooTemplate, Op::Create | Op::Update) => self.ensure_odoo_template(a, host),
            (Kind::OdooTemplate, Op::Delete) => self.delete_odoo_template(a, host),
            (Kind::OdooEnv, Op::Create | Op::Update) => Err(EngineError::inconsistent(
                "an Odoo environment is started by ensure_odoo_env, not executed",
            )),
            (Kind::OdooEnv, Op::Delete) => self.delete_odoo_env(a, host),
            (Kind::Ingress, Op::Create | Op::Update) => self.ensure_ingress(a, host),
            (Kind::Ingress, Op::Delete) => self.delete_ingress(a),
        }
    }

    /// See [`careplane_engine::prepare`].
    pub(crate) fn prepare(
        &mut self,
        a: &Action,
        allocate: impl FnOnce(&Path) -> Result<Value, EngineError>,
    ) -> Result<ResourceRecord, EngineError> {
        let data_dir = self.data_dir.clone();
        let mut failed = None;
        let rec = careplane_engine::prepare(self.store()?, &data_dir, a, |dir| {
            allocate(dir).map_err(|e| {
                let shown = careplane_engine::EngineError::inconsistent(e.to_string());
                failed = Some(e);
                shown
            })
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(rec?),
        }
    }

    pub(crate) fn finish(&mut self, a: &Action, rec: ResourceRecord) -> Result<(), EngineError> {
        Ok(careplane_engine::finish(self.store()?, a, rec)?)
    }

    pub(crate) fn mark_deleting(
        &mut self,
        a: &Action,
    ) -> Result<Option<ResourceRecord>, EngineError> {
        Ok(careplane_engine::mark_deleting(self.store()?, a)?)
    }

    fn delete_plain(
        &mut self,
        a: &Action,
        undo: impl FnOnce(&mut LocalDriver, &ResourceRecord) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        if let Some(rec) = self.mark_deleting(a)? {
            undo(self, &rec)?;
            crash_point(&a.id, "executed");
            self.store()?.delete_resource(&a.id)?;
        }
        Ok(())
    }

    fn ensure_ca(&mut self, a: &Action) -> Result<(), EngineError> {
        let mut rec = self.prepare(a, |_| Ok(json!({})))?;
        let store = self.store()?;
        let have_key = store.secret(&a.id, CA_KEY)?.is_some();
        if !have_key || rec.observed.get("certPem").is_none() {
            let ca = pki::generate_ca(&format!(
                "careplane {} CA",
                self.specs.platform.metadata.name
            ))?;
            let store = self.store()?;
            store.put_secret(&a.id, CA_KEY, &ca.key_pem)?;
            rec.observed = json!({ "certPem": ca.cert_pem });
            store.put_resource(&rec)?;
        }
        crash_point(&a.id, "prepared");
        let cert = observed_str(&rec, "certPem")?.to_string();
        let path = self.data_dir.join("pki").join("ca.crt");
        write_public(&path, cert.as_bytes())?;
        rec.observed["certFile"] = json!(path.display().to_string());
        self.finish(a, rec)
    }

    pub(crate) fn ca(&mut self) -> Result<pki::Ca, EngineError> {
        let store = self.store()?;
        let rec = store
            .resource(&careplane_model::ca_id())?
            .filter(|r| r.status == ResourceStatus::Ready)
            .ok_or_else(|| EngineError::inconsistent("the platform CA is not ready"))?;
        Ok(pki::Ca {
            cert_pem: observed_str(&rec, "certPem")?.to_string(),
            key_pem: secret(store, &rec.id, CA_KEY)?,
        })
    }

    /// A server certificate issued once per resource and kept, so re-runs
    /// rewrite the same files.
    pub(crate) fn server_tls(
        &mut self,
        rec: &mut ResourceRecord,
        cn: &str,
    ) -> Result<TlsFiles, EngineError> {
        let ca = self.ca()?;
        let store = self.store()?;
        let key = store.secret(&rec.id, TLS_KEY)?;
        let cert = rec
            .observed
            .get("tlsCert")
            .and_then(Value::as_str)
            .map(str::to_string);
        let (cert, key) = match (cert, key) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let (c, k) = pki::issue_server_cert(&ca, cn, &[])?;
                store.put_secret(&rec.id, TLS_KEY, &k)?;
                rec.observed["tlsCert"] = json!(c);
                store.put_resource(rec)?;
                (c, k)
            }
        };
        Ok(TlsFiles {
            ca_cert_pem: ca.cert_pem,
            cert_pem: cert,
            key_pem: key,
        })
    }

    fn ensure_pg_cluster(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        let scope = typed::<PgClusterProps>(&a.id, &a.props)?.scope;
        let mut rec = self.prepare(a, |dir| {
            Ok(json!({
                "port": system::free_port()?,
                "root": dir.join("pg").join(&scope).display().to_string(),
            }))
        })?;
        self.store()?.get_or_create_secret(&a.id, ADMIN_PASSWORD)?;
        let tls = self.server_tls(&mut rec, &format!("careplane pg {scope}"))?;
        if a.op == Op::Create {
            crash_point(&a.id, "prepared");
        }
        // WAL archiving from the start: the repository, archiver and keys
        // exist before the configuration that uses them is written.
        self.ensure_archiving(&mut rec, host)?;
        // Apply the new settings (an update) through the handle.
        let mut target = rec.clone();
        target.props = a.props.clone();
        let cluster = self.cluster_handle(&target, host)?;
        // init rewrites the configuration and reloads a running server; a
        // restart (every tenant's connections dropped) only when a changed
        // setting needs one, as PostgreSQL itself reports.
        cluster.init(&tls)?;
        if a.op == Op::Update
            && cluster.running_pid().is_some()
            && !cluster.pending_restart()?.is_empty()
        {
            cluster.stop()?;
        }
        let pid = cluster.start()?;
        rec.observed["pid"] = json!(pid);
        rec.observed["majorVersion"] = json!(cluster.bin.major_version);
        self.finish(a, rec)
    }

    fn delete_pg_cluster(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        let Some(rec) = self.mark_deleting(a)? else {
            return Ok(());
        };
        if rec.observed.get("root").is_some()
            && self.store()?.secret(&a.id, ADMIN_PASSWORD)?.is_some()
        {
            let cluster = self.cluster_handle(&rec, host)?;
            cluster.stop()?;
            remove_dir(&cluster.root)?;
        } else if let Some(root) = rec.observed.get("root").and_then(Value::as_str) {
            remove_dir(Path::new(root))?;
        }
        crash_point(&a.id, "executed");
        self.store()?.delete_resource(&a.id)?;
        Ok(())
    }

    fn ensure_pg_database(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        let mut rec = self.prepare(a, |_| Ok(json!({ "role": runtime::opaque_role_name()? })))?;
        if rec.observed.get("role").is_none() {
            // Made before role names were opaque: the name to rename it to
            // is recorded before the rename, so a kill in between resumes it.
            rec.observed["role"] = json!(runtime::opaque_role_name()?);
            self.store()?.put_resource(&rec)?;
        }
        self.store()?.get_or_create_secret(&a.id, PASSWORD)?;
        if a.op == Op::Create {
            crash_point(&a.id, "prepared");
        }
        let cluster_id = typed::<PgDatabaseProps>(&a.id, &a.props)?.cluster;
        let all = self.store()?.resources()?;
        let crec = ready(&all, &cluster_id)?;
        let cluster = self.cluster_handle(&crec, host)?;
        let mut target = rec.clone();
        target.props = a.props.clone();
        let mut tdb = runtime::tenant_db(self.store()?, &target)?;
        // The name it had is in what was recorded, not in the new props.
        tdb.former_roles = runtime::former_role(&rec)
            .into_iter()
            .map(str::to_string)
            .collect();
        cluster.ensure_tenant_database(&tdb)?;
        cluster.write_hba(&hba_entries(&all, &cluster_id)?)?;
        self.finish(a, rec)
    }

    fn delete_pg_database(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        let Some(rec) = self.mark_deleting(a)? else {
            return Ok(());
        };
        let cluster_id = str_prop(&rec, "cluster")?.to_string();
        let all = self.store()?.resources()?;
        if let Some(crec) = all.iter().find(|r| r.id == cluster_id) {
            let cluster = self.cluster_handle(crec, host)?;
            // Close the door first, then drop.
            cluster.write_hba(&hba_entries(&all, &cluster_id)?)?;
            let roles: Vec<&str> = std::iter::once(runtime::db_role(&rec)?)
                .chain(runtime::former_role(&rec))
                .collect();
            // Databases a restore replaced and kept, or a killed restore
            // left, belong to the role too: they go with the environment
            // (else DROP ROLE would refuse).
            for kept in crate::restore::restore_leftovers(&rec) {
                cluster.drop_database(&kept)?;
            }
            cluster.drop_tenant_database_and_roles(str_prop(&rec, "database")?, &roles)?;
        }
        crash_point(&a.id, "executed");
        self.store()?.delete_resource(&a.id)?;
        Ok(())
    }

    fn ensure_redis_server(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        let scope = typed::<RedisServerProps>(&a.id, &a.props)?.scope;
        let mut rec = self.prepare(a, |dir| {
            Ok(json!({
                "port": system::free_port()?,
                "root": dir.join("redis").join(&scope).display().to_string(),
            }))
        })?;
        self.store()?.get_or_create_secret(&a.id, ADMIN_PASSWORD)?;
        self.store()?
            .get_or_create_secret(&a.id, MONITOR_PASSWORD)?;
        if a.op == Op::Create {
            crash_point(&a.id, "prepared");
        }
        let mut target = rec.clone();
        target.props = a.props.clone();
        let server = self.redis_handle(&target, host)?;
        let all = self.store()?.resources()?;
        server.write_config(&acl_users(self.store()?, &all, &a.id)?)?;
        if a.op == Op::Update {
            server.stop()?;
        }
        let pid = server.start()?;
        rec.observed["pid"] = json!(pid);
        self.finish(a, rec)
    }

    fn delete_redis_server(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        let Some(rec) = self.mark_deleting(a)? else {
            return Ok(());
        };
        if self.store()?.secret(&a.id, ADMIN_PASSWORD)?.is_some()
            && rec.observed.get("root").is_some()
        {
            let server = self.redis_handle(&rec, host)?;
            server.stop()?;
            remove_dir(&server.root)?;
        }
        crash_point(&a.id, "executed");
        self.store()?.delete_resource(&a.id)?;
        Ok(())
    }

    fn ensure_redis_user(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        let rec = self.prepare(a, |_| Ok(json!({})))?;
        self.store()?.get_or_create_secret(&a.id, PASSWORD)?;
        if a.op == Op::Create {
            crash_point(&a.id, "prepared");
        }
        let server_id = typed::<RedisUserProps>(&a.id, &a.props)?.server;
        let all = self.store()?.resources()?;
        let srec = ready(&all, &server_id)?;
        // A server made before careplane had a monitor user gets one with its users'
        // next change (the reload below brings it in).
        self.store()?
            .get_or_create_secret(&server_id, MONITOR_PASSWORD)?;
        let server = self.redis_handle(&srec, host)?;
        server.write_config(&acl_users(self.store()?, &all, &server_id)?)?;
        server.reload_acl()?;
        self.finish(a, rec)
    }

    fn delete_redis_user(&mut self, a: &Action, host: &mut Host) -> Result<(), EngineError> {
        let Some(rec) = self.mark_deleting(a)? else {
            return Ok(());
        };
        let server_id = str_prop(&rec, "server")?.to_string();
        let all = self.store()?.resources()?;
        if let Some(srec) = all.iter().find(|r| r.id == server_id) {
            let server = self.redis_handle(srec, host)?;
            server.write_config(&acl_users(self.store()?, &all, &server_id)?)?;
            server.reload_acl()?;
            server.delete_keys_with_prefix(str_prop(&rec, "keyPrefix")?)?;
        }
        crash_point(&a.id, "executed");
        self.store()?.delete_resource(&a.id)?;
        Ok(())
    }

    pub(crate) fn run_lifecycle(
        &mut self,
        command: &str,
        progress: &mut dyn FnMut(Event<'_>),
        start: bool,
    ) -> Result<i64, EngineError> {
        let verb = if start { "started" } else { "stopped" };
        let mut reached = |id: &str, error: Option<String>| {
            progress(Event::Reached {
                verb,
                id: id.to_string(),
                error,
            })
        };
        if !self.state_exists() {
            return Err(EngineError::inconsistent(format!(
                "nothing to {command}: no state in {} (run `careplane apply` first)",
                self.data_dir.display()
            )));
        }
        let _lock = careplane_state::lock(&self.data_dir, command)?;
        // Stopped on purpose: `plan` does not report the stopped servers as
        // drift (and `apply` does not start them) until `start`.
        let marker = self.data_dir.join(crate::STOPPED_MARKER);
        let marked = if start {
            std::fs::remove_file(&marker).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        } else {
            std::fs::write(&marker, "careplane stop\n")
        };
        marked.map_err(|source| EngineError::Io {
            what: format!("recording `careplane {command}` in {}", marker.display()),
            source,
        })?;
        let mut host = Host::default();
        let all = self.store()?.resources()?;
        let op = self.store()?.begin_operation(command)?;
        // Servers first on start, Odoo first on stop.
        let rank = |r: &ResourceRecord| match r.kind.as_str() {
            "pg-cluster" | "redis-server" => 0,
            _ => 1,
        };
        let mut servers: Vec<&ResourceRecord> = all
            .iter()
            .filter(|r| {
                r.status == ResourceStatus::Ready
                    && matches!(r.kind.as_str(), "pg-cluster" | "redis-server" | "odoo-env")
            })
            .collect();
        servers.sort_by_key(|r| rank(r));
        if !start {
            servers.reverse();
        }
        let mut failed = Vec::new();
        let proxies: Vec<&ResourceRecord> = all
            .iter()
            .filter(|r| r.status == ResourceStatus::Ready && r.kind == Kind::Ingress.as_str())
            .collect();
        if !start {
            // The proxy first: nothing is routed to an Odoo that is going.
            for rec in &proxies {
                let step =
                    self.store()?
                        .step_started(op, &format!("{command} {}", rec.id), &json!({}))?;
                let stopped = crate::ingress::stop_proxy(Path::new(observed_str(rec, "root")?));
                let err = stopped.as_ref().err().map(|e| e.to_string());
                self.store()?.step_finished(step, err.as_deref())?;
                stopped?;
                reached(&rec.id, None);
            }
            // Odoo environments stop all at once (each takes seconds to shut
            // its workers down gracefully), and before any server they use.
            let (envs, rest): (Vec<_>, Vec<_>) =
                servers.into_iter().partition(|r| r.kind == "odoo-env");
            servers = rest;
            let mut stopping = Vec::new();
            for rec in envs {
                let step =
                    self.store()?
                        .step_started(op, &format!("{command} {}", rec.id), &json!({}))?;
                let root = PathBuf::from(observed_str(rec, "root")?);
                stopping.push((rec, step, root));
            }
            let outcomes =
                run_all(stopping.iter().map(|(_, _, root)| {
                    move || crate::odoo::stop_env_at(root).map_err(Into::into)
                }));
            for ((rec, step, _), outcome) in stopping.iter().zip(outcomes) {
                let err = outcome.err().map(|e| e.to_string());
                self.store()?.step_finished(*step, err.as_deref())?;
                match err {
                    None => reached(&rec.id, None),
                    Some(msg) => {
                        reached(&rec.id, Some(msg.clone()));
                        failed.push(format!("{}: {msg}", rec.id));
                    }
                }
            }
        }
        let mut waiting = Vec::new();
        for rec in servers {
            let step =
                self.store()?
                    .step_started(op, &format!("{command} {}", rec.id), &json!({}))?;
            let result: Result<Option<u32>, EngineError> = match (rec.kind.as_str(), start) {
                ("pg-cluster", true) => self
                    .cluster_handle(rec, &mut host)?
                    .start()
                    .map(Some)
                    .map_err(Into::into),
                ("pg-cluster", false) => self
                    .cluster_handle(rec, &mut host)?
                    .stop()
                    .map(|_| None)
                    .map_err(Into::into),
                ("redis-server", true) => self
                    .redis_handle(rec, &mut host)?
                    .start()
                    .map(Some)
                    .map_err(Into::into),
                ("redis-server", false) => self
                    .redis_handle(rec, &mut host)?
                    .stop()
                    .map(|_| None)
                    .map_err(Into::into),
                // Odoo environments are spawned here and waited for below,
                // all at once: each takes seconds to load its registry.
                (_, true) => match self.spawn_odoo_env(rec) {
                    Ok((pid, Some(ready))) => {
                        waiting.push((rec, step, pid, ready));
                        continue;
                    }
                    Ok((pid, None)) => Ok(Some(pid)),
                    Err(e) => Err(e),
                },
                (_, false) => self.stop_odoo_env(rec).map(|_| None),
            };
            match result {
                Ok(pid) => {
                    if let Some(pid) = pid {
                        let mut r = rec.clone();
                        let key = if r.kind == "odoo-env" {
                            "supervisorPid"
                        } else {
                            "pid"
                        };
                        r.observed[key] = json!(pid);
                        self.store()?.put_resource(&r)?;
                    }
                    self.store()?.step_finished(step, None)?;
                    reached(&rec.id, None);
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.store()?.step_finished(step, Some(&msg))?;
                    // One Odoo environment that does not come up must not keep
                    // the others down: go on and report every failure at the
                    // end. A server failing stops everything after it.
                    if rec.kind == "odoo-env" {
                        reached(&rec.id, Some(msg.clone()));
                        failed.push(format!("{}: {msg}", rec.id));
                        continue;
                    }
                    self.store()?.finish_operation(op, "failed", Some(&msg))?;
                    return Err(e);
                }
            }
        }
        let outcomes = run_all(
            waiting
                .iter()
                .map(|(_, _, _, ready)| move || ready.wait().map_err(Into::into)),
        );
        for ((rec, step, pid, _), outcome) in waiting.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    let mut r = (*rec).clone();
                    r.observed["supervisorPid"] = json!(pid);
                    self.store()?.put_resource(&r)?;
                    self.store()?.step_finished(*step, None)?;
                    reached(&rec.id, None);
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.store()?.step_finished(*step, Some(&msg))?;
                    reached(&rec.id, Some(msg.clone()));
                    failed.push(format!("{}: {msg}", rec.id));
                }
            }
        }
        if start {
            // The proxy last, once the environments it routes to answer.
            for rec in &proxies {
                let step =
                    self.store()?
                        .step_started(op, &format!("{command} {}", rec.id), &json!({}))?;
                match self.start_ingress(rec) {
                    Ok(pid) => {
                        let mut r = (*rec).clone();
                        r.observed["pid"] = json!(pid);
                        self.store()?.put_resource(&r)?;
                        self.store()?.step_finished(step, None)?;
                        reached(&rec.id, None);
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        self.store()?.step_finished(step, Some(&msg))?;
                        reached(&rec.id, Some(msg.clone()));
                        failed.push(format!("{}: {msg}", rec.id));
                    }
                }
            }
        }
        if !failed.is_empty() {
            let msg = failed.join("\n");
            self.store()?.finish_operation(op, "failed", Some(&msg))?;
            return Err(EngineError::inconsistent(format!(
                "{} of the Odoo environments did not {command}:\n{msg}",
                failed.len()
            )));
        }
        self.store()?.finish_operation(op, "succeeded", None)?;
        Ok(op)
    }

    /// Each ready Redis server's monitor user (INFO and PING only), where the server
    /// has one (made or changed since careplane had it).
    pub(crate) fn find_redis_monitors(
        &mut self,
    ) -> Result<Vec<careplane_engine::RedisMonitor>, EngineError> {
        let all = self.recorded()?;
        let store = self.store()?;
        let mut out = Vec::new();
        for r in all
            .iter()
            .filter(|r| r.kind == "redis-server" && r.status == ResourceStatus::Ready)
        {
            let (Some(password), Ok(port)) =
                (store.secret(&r.id, MONITOR_PASSWORD)?, observed_port(r))
            else {
                continue;
            };
            out.push(careplane_engine::RedisMonitor {
                server: str_prop(r, "scope")?.to_string(),
                host: "127.0.0.1".into(),
                port,
                user: careplane_local::redis::MONITOR_USER.into(),
                password,
            });
        }
        Ok(out)
    }

    /// How to reach a tenant environment's database and Redis, with the
    /// generated passwords: only for the operator who asks explicitly.
    pub(crate) fn find_credentials(
        &mut self,
        tenant: &str,
        env: &str,
    ) -> Result<Credentials, EngineError> {
        let db_id = careplane_model::pg_database_id(tenant, env);
        let user_id = careplane_model::redis_user_id(tenant, env);
        let all = self.recorded()?;
        let db = all.iter().find(|r| r.id == db_id).ok_or_else(|| {
            EngineError::inconsistent(format!(
                "careplane holds no environment {tenant}/{env} (see `careplane status`)"
            ))
        })?;
        let cluster = all
            .iter()
            .find(|r| Some(r.id.as_str()) == db.props.get("cluster").and_then(Value::as_str));
        let ca_file = self
            .data_dir
            .join("pki")
            .join("ca.crt")
            .display()
            .to_string();
        let store = self.store()?;
        let postgres = DbCredentials {
            host: "127.0.0.1".into(),
            port: cluster.and_then(|c| observed_port(c).ok()),
            database: str_prop(db, "database")?.to_string(),
            role: runtime::db_role(db)?.to_string(),
            sslmode: "verify-full".into(),
            sslrootcert: ca_file,
            password: secret(store, &db_id, PASSWORD)?,
        };
        let redis = match all.iter().find(|r| r.id == user_id) {
            Some(u) => {
                let server = all
                    .iter()
                    .find(|r| Some(r.id.as_str()) == u.props.get("server").and_then(Value::as_str));
                Some(RedisCredentials {
                    host: "127.0.0.1".into(),
                    port: server.and_then(|c| observed_port(c).ok()),
                    user: str_prop(u, "user")?.to_string(),
                    key_prefix: str_prop(u, "keyPrefix")?.to_string(),
                    password: secret(store, &user_id, PASSWORD)?,
                })
            }
            None => None,
        };
        let odoo_id = careplane_model::odoo_env_id(tenant, env);
        let odoo = match all.iter().find(|r| r.id == odoo_id) {
            Some(o) => Some(OdooCredentials {
                // Through the ingress when it routes the environment, as
                // `status` shows it; else Odoo's own loopback port.
                url: crate::ingress::env_url(&all, &odoo_id).unwrap_or_else(|| {
                    o.observed
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                }),
                login: "admin".into(),
                password: secret(store, &odoo_id, crate::odoo::ADMIN_LOGIN_PASSWORD)?,
                master_password: secret(store, &odoo_id, crate::odoo::MASTER_PASSWORD)?,
                probe: store
                    .secret(&odoo_id, crate::odoo::PROBE_PASSWORD)?
                    .map(|password| OdooLogin {
                        login: careplane_odoo::rpc::PROBE_LOGIN.into(),
                        password,
                    }),
                workers: o.props["workers"].as_u64().unwrap_or(0) as u32,
            }),
            None => None,
        };
        Ok(Credentials {
            postgres,
            redis,
            odoo,
        })
    }
}

pub(crate) fn ready(all: &[ResourceRecord], id: &str) -> Result<ResourceRecord, EngineError> {
    all.iter()
        .find(|r| r.id == id && r.status == ResourceStatus::Ready)
        .cloned()
        .ok_or_else(|| {
            EngineError::inconsistent(format!("{id} is not ready; it must be created first"))
        })
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let io = |source, what: &str| EngineError::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(e, "creating the directory of"))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io(e, "writing"))?;
    std::fs::rename(&tmp, path).map_err(|e| io(e, "renaming into place"))
}

pub(crate) fn remove_dir(path: &Path) -> Result<(), EngineError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EngineError::Io {
            what: format!("removing {}", path.display()),
            source,
        }),
    }
}

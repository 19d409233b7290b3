//! Backups on the local target (issue 16, docs/design/0010), on
//! `careplane-backup`'s repository:
//!
//! - every PostgreSQL cluster archives its WAL from the moment it exists,
//!   into the cluster's repository (`<base>/clusters/<scope>`), through a
//!   copy of the `careplane` binary in `<dataDir>/bin` that the service user
//!   can run (`careplane backup-wal archive …`) and a WAL-keys file in the
//!   cluster's `conf/` that holds only the WAL key;
//! - `backup create` takes a direct base backup of the environment's cluster
//!   (incremental from the cluster's last one) into the cluster's
//!   repository, and the environment's filestore plus what was read over
//!   the tenant's own connection (versions, modules, per-table row counts
//!   and checksums) into the tenant's repository (`<base>/tenants/<tenant>`),
//!   pointing at that base backup;
//! - list, show, verify, prune (retention + WAL + gc) and run-due.
//!
//! Every repository secret and careplane's own age identity live in the
//! state store's vault; a tenant repository is encrypted to careplane's
//! recipient and the policy's `recipients`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use careplane_backup::{
    pg::PgSource, retention, BackupMetadata, FilestoreEntry, Manifest, Progress, RepoKeys,
    RepoOptions, Repository, SignedDuration, TableStat, Timestamp,
};
use careplane_engine::{
    Archiving, BackupDetail, BackupEvent, BackupSummary, BackupTable, LastBackup, PruneOutcome,
    PrunedRepository, RunDueOutcome, VerifyOutcome,
};
use careplane_local::pg::ADMIN_ROLE;
use careplane_spec::{BackupPolicySpec, Tenancy};
use careplane_state::{ExposeSecret, ResourceRecord, ResourceStatus, SecretString};
use serde_json::{json, Value};

use crate::resources::Host;
use crate::runtime::{self, observed_str, secret, str_prop, ADMIN_PASSWORD};
use crate::{Error, LocalDriver};

/// Vault entries: careplane's own age identity (and its public recipient),
/// and one repository secret per tenant and per cluster.
const VAULT_PLATFORM: &str = "backup";
const IDENTITY: &str = "identity";
const RECIPIENT: &str = "recipient";
const REPO_SECRET: &str = "backup-secret";

/// Unreferenced objects younger than this are kept by `gc` (a backup that
/// is still uploading elsewhere; the apply lock already serialises ours).
const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// S3 credentials for the archiver: careplane's environment variable, the
/// vault entry it is kept under, and the object store option it becomes.
const S3_CREDENTIALS: [(&str, &str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "s3-access-key-id", "aws_access_key_id"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "s3-secret-access-key",
        "aws_secret_access_key",
    ),
    ("AWS_SESSION_TOKEN", "s3-session-token", "aws_session_token"),
];

/// PostgreSQL forces a WAL switch after this many seconds in which WAL was
/// written, so the archived recovery point trails the cluster by about this
/// plus one archiver run. 5 s meets the RPO goal under pgbench load
/// (60 s lost 10.8 s there, and up to a minute on a lightly written
/// cluster); an idle cluster switches nothing, and the padded tail of a
/// switched segment compresses to almost nothing (docs/benchmarks.md, RPO).
const ARCHIVE_TIMEOUT: &str = "5";

/// A policy with its defaults filled in.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub base: String,
    pub store_options: Vec<(String, String)>,
    pub retention: retention::RetentionPolicy,
    pub recipients: Vec<String>,
    /// careplane's own recipient too (`careplaneKey`, default true).
    pub careplane_key: bool,
    pub compression_level: i32,
    pub schedule: Option<String>,
    pub verify: Option<String>,
}

pub(crate) fn err(what: impl Into<String>) -> Error {
    Error::inconsistent(what)
}

/// A backup error with the chain of its causes (which name the object).
pub(crate) fn berr(context: &str) -> impl FnOnce(careplane_backup::BackupError) -> Error + '_ {
    move |e| err(format!("{context}: {}", careplane_backup::error_chain(&e)))
}

fn join_url(base: &str, rel: &str) -> String {
    format!("{}/{rel}", base.trim_end_matches('/'))
}

pub(crate) fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

impl LocalDriver {
    /// `file://<dataDir>/backups`: where backups go with nothing configured.
    fn default_base(&self) -> String {
        format!("file://{}", self.data_dir.join("backups").display())
    }

    fn policy_from(&self, spec: Option<&BackupPolicySpec>) -> Policy {
        let base = spec
            .and_then(|s| s.repository.clone())
            .unwrap_or_else(|| self.default_base());
        let mut store_options = Vec::new();
        if let Some(s) = spec {
            if let Some(e) = &s.endpoint {
                store_options.push(("aws_endpoint".to_string(), e.clone()));
                if e.starts_with("http://") {
                    store_options.push(("aws_allow_http".to_string(), "true".to_string()));
                }
            }
            if let Some(r) = &s.region {
                store_options.push(("aws_region".to_string(), r.clone()));
            }
            // As store options, so archive_command locks WAL too.
            if let Some(lock) = &s.immutability {
                let mode = match lock.mode {
                    careplane_spec::LockMode::Governance => careplane_backup::LockMode::Governance,
                    careplane_spec::LockMode::Compliance => careplane_backup::LockMode::Compliance,
                };
                store_options.extend(
                    careplane_backup::Immutability {
                        mode,
                        days: lock.days,
                    }
                    .store_options(),
                );
            }
        }
        let r = spec.map(|s| s.retention.clone()).unwrap_or_default();
        let window = spec
            .and_then(|s| s.pitr_window.clone())
            .unwrap_or_else(|| careplane_spec::DEFAULT_PITR_WINDOW.to_string());
        let window = careplane_spec::parse_duration(&window)
            .ok()
            .and_then(|d| SignedDuration::try_from(d).ok());
        Policy {
            base,
            store_options,
            retention: retention::RetentionPolicy {
                keep_last: spec
                    .and_then(|s| s.keep_last)
                    .unwrap_or(careplane_spec::DEFAULT_BACKUP_KEEP_LAST),
                daily: r.daily,
                weekly: r.weekly,
                monthly: r.monthly,
                yearly: r.yearly,
                pitr_window: window,
            },
            recipients: spec.map(|s| s.recipients.clone()).unwrap_or_default(),
            careplane_key: spec.and_then(|s| s.careplane_key).unwrap_or(true),
            compression_level: spec
                .and_then(|s| s.compression_level)
                .unwrap_or(careplane_spec::DEFAULT_BACKUP_COMPRESSION),
            schedule: spec.map(|s| s.schedule.clone()),
            verify: spec.and_then(|s| s.verify.clone()),
        }
    }

    /// The backup policy of `tenant`'s service tier, or the defaults (no
    /// schedule) when its tier names none.
    pub(crate) fn tenant_policy(&self, tenant: &str) -> Result<Policy, Error> {
        let t = self
            .specs
            .tenant(tenant)
            .ok_or_else(|| err(format!("tenant {tenant} is not in the specs")))?;
        let name = self
            .specs
            .tier_of(&t.spec)
            .and_then(|tier| tier.spec.backup_policy.clone());
        let spec = name.as_deref().and_then(|n| self.specs.backup_policy(n));
        Ok(self.policy_from(spec.map(|d| &d.spec)))
    }

    /// The policy whose repository holds cluster `scope`'s WAL and base
    /// backups: its tenant's for a dedicated cluster; the defaults for the
    /// shared one, which holds many tenants' data and so must not be
    /// encrypted to any one tenant's keys.
    pub(crate) fn cluster_policy(&self, scope: &str) -> Policy {
        let owner = self.specs.tenants.iter().find(|t| {
            t.spec.tenancy != Tenancy::Shared
                && careplane_spec::names::pg_scope(&t.metadata.name, &t.spec) == scope
        });
        match owner {
            Some(t) => self
                .tenant_policy(&t.metadata.name)
                .unwrap_or_else(|_| self.policy_from(None)),
            None => self.policy_from(None),
        }
    }

    /// careplane's own age identity and recipient, made once and kept in
    /// the vault: what lets careplane itself verify deeply and restore.
    fn platform_identity(&mut self) -> Result<(SecretString, String), Error> {
        let store = self.store()?;
        if let (Some(id), Some(r)) = (
            store.secret(VAULT_PLATFORM, IDENTITY)?,
            store.secret(VAULT_PLATFORM, RECIPIENT)?,
        ) {
            return Ok((id, r.expose_secret().to_string()));
        }
        let (id, r) = careplane_backup::generate_identity();
        store.put_secret(VAULT_PLATFORM, IDENTITY, &id)?;
        store.put_secret(VAULT_PLATFORM, RECIPIENT, &SecretString::from(r.clone()))?;
        Ok((id, r))
    }

    pub(crate) fn repo_keys(&mut self, owner: &str, policy: &Policy) -> Result<RepoKeys, Error> {
        let (identity, recipient) = self.platform_identity()?;
        let store = self.store()?;
        let secret = match store.secret(owner, REPO_SECRET)? {
            Some(s) => s,
            None => {
                let s = careplane_backup::generate_secret();
                store.put_secret(owner, REPO_SECRET, &s)?;
                s
            }
        };
        // careplane's identity is always tried: backups made before the
        // policy left its key out stay readable by careplane.
        let recipients = if policy.careplane_key {
            std::iter::once(recipient)
                .chain(policy.recipients.iter().cloned())
                .collect()
        } else {
            policy.recipients.clone()
        };
        let mut identities = vec![identity];
        identities.extend(self.backup_identities.iter().cloned());
        Ok(RepoKeys {
            secret,
            recipients,
            identities,
        })
    }

    fn open_repo(&mut self, owner: &str, url: &str, policy: &Policy) -> Result<Repository, Error> {
        let keys = self.repo_keys(owner, policy)?;
        let opts = self.repo_options(url, policy)?;
        Repository::open_with(url, &keys, opts)
            .map_err(berr(&format!("opening backup repository {url}")))
    }

    pub(crate) fn tenant_repo_url(&self, tenant: &str, policy: &Policy) -> String {
        join_url(&policy.base, &format!("tenants/{tenant}"))
    }

    /// A repository that was never written to is not created by reading
    /// (`list`, `status`): only `file://` can be checked cheaply.
    pub(crate) fn repo_exists(url: &str) -> bool {
        match url.strip_prefix("file://") {
            Some(path) => Path::new(path).join("config.json").exists(),
            None => true,
        }
    }

    pub(crate) fn open_tenant_repo(&mut self, tenant: &str) -> Result<(Repository, Policy), Error> {
        let policy = self.tenant_policy(tenant)?;
        let url = self.tenant_repo_url(tenant, &policy);
        let repo = self.open_repo(&format!("backup/tenant/{tenant}"), &url, &policy)?;
        Ok((repo, policy))
    }

    pub(crate) fn open_cluster_repo(&mut self, crec: &ResourceRecord) -> Result<Repository, Error> {
        let scope = str_prop(crec, "scope")?.to_string();
        let policy = self.cluster_policy(&scope);
        let (url, owner) = cluster_repo_of(crec).ok_or_else(|| {
            err(format!(
                "{}: no backup repository recorded (WAL archiving was never set up;                  run `careplane apply`)",
                crec.id
            ))
        })?;
        self.open_repo(&owner, &url, &policy)
    }

    /// Makes WAL archiving of cluster `rec` possible before its
    /// configuration is written: the cluster's repository exists (the
    /// archiver does not create one), the archiver program is where the
    /// service user can run it, and the WAL-keys file (0600, the service
    /// user's, the WAL key only) is in the cluster's `conf/`. Records it in
    /// `observed.archive`, from which [`archive_settings`] derives the
    /// settings every handle of the cluster writes.
    pub(crate) fn ensure_archiving(
        &mut self,
        rec: &mut ResourceRecord,
        host: &mut Host,
    ) -> Result<(), Error> {
        let scope = str_prop(rec, "scope")?.to_string();
        let policy = self.cluster_policy(&scope);
        // One repository per cluster *incarnation*: a cluster destroyed and
        // made again under the same scope starts its WAL at segment 1 again,
        // which must not meet the old cluster's segments of the same names.
        // Its secret has an owner of its own, not the cluster's record:
        // deleting the record deletes the record's secrets, and backups must
        // outlive the cluster.
        let (url, vault_owner) = match cluster_repo_of(rec) {
            Some(known) => known,
            None => {
                let name = format!("{scope}-{}", Timestamp::now().strftime("%Y%m%dT%H%M%SZ"));
                (
                    join_url(&policy.base, &format!("clusters/{name}")),
                    format!("backup/cluster/{name}"),
                )
            }
        };
        let keys = self.repo_keys(&vault_owner, &policy)?;
        let opts = self.repo_options(&url, &policy)?;
        Repository::open_with(&url, &keys, opts)
            .map_err(berr(&format!("{}: backup repository {url}", rec.id)))?;
        let owner = self.service_owner(host)?;
        if let Some(path) = url.strip_prefix("file://") {
            // The archiver runs as the service user: it reads config.json
            // and writes wal/; everything else there is root's.
            let wal = Path::new(path).join("wal");
            std::fs::create_dir_all(&wal).map_err(|e| Error::Io {
                what: format!("creating {}", wal.display()),
                source: e,
            })?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&wal, Some(uid), Some(gid)).map_err(|e| Error::Io {
                    what: format!("handing {} to the service user", wal.display()),
                    source: e,
                })?;
            }
        }
        let root = PathBuf::from(observed_str(rec, "root")?);
        let conf = root.join("conf");
        std::fs::create_dir_all(&conf).map_err(|e| Error::Io {
            what: format!("creating {}", conf.display()),
            source: e,
        })?;
        let keys_file = conf.join("wal-keys.json");
        let mut wal_keys = keys
            .wal_keys()
            .map_err(berr(&format!("{}: WAL keys", rec.id)))?;
        // Archiving needs no private key; restore gets one when it runs.
        wal_keys.identities.clear();
        wal_keys
            .write_file(&keys_file, owner)
            .map_err(berr(&format!("writing {}", keys_file.display())))?;
        let credentials_file = if url.starts_with("s3://") {
            let creds = self.s3_credentials()?.ok_or_else(|| {
                err(format!(
                    "{} archives its WAL to {url}: careplane needs {} and {} in its environment \
                     (once: they are kept in careplane's vault and given to the archiver in a \
                     file only the cluster's service user reads)",
                    rec.id, S3_CREDENTIALS[0].0, S3_CREDENTIALS[1].0
                ))
            })?;
            let path = conf.join("wal-store.json");
            write_private_json(&path, &creds, owner)?;
            Some(path.display().to_string())
        } else {
            None
        };
        let program = self.install_archiver()?;
        rec.observed["archive"] = json!({
            "repository": url,
            "secretOwner": vault_owner,
            "keysFile": keys_file.display().to_string(),
            "program": program.display().to_string(),
            "storeOptions": policy.store_options.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        });
        if let Some(path) = credentials_file {
            rec.observed["archive"]["credentialsFile"] = json!(path);
        }
        self.store()?.put_resource(rec)?;
        Ok(())
    }

    /// careplane's S3 credentials: those in its environment when set (then
    /// kept in the vault, so that a command run without them, from cron or
    /// after a rotation reached only the environment of the next `apply`,
    /// still has the current ones), else the vault's. As object store
    /// options; `None` when neither has an access key and a secret key.
    fn s3_credentials(&mut self) -> Result<Option<BTreeMap<String, SecretString>>, Error> {
        let store = self.store()?;
        let from_env = |var: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(SecretString::from)
        };
        let env_has_keys =
            from_env(S3_CREDENTIALS[0].0).is_some() && from_env(S3_CREDENTIALS[1].0).is_some();
        let mut out = BTreeMap::new();
        for (var, vault_name, option) in S3_CREDENTIALS {
            let value = if env_has_keys {
                let v = from_env(var);
                match &v {
                    Some(v) => store.put_secret(VAULT_PLATFORM, vault_name, v)?,
                    None => store.delete_secret(VAULT_PLATFORM, vault_name)?,
                }
                v
            } else {
                store.secret(VAULT_PLATFORM, vault_name)?
            };
            if let Some(v) = value {
                out.insert(option.to_string(), v);
            }
        }
        let complete =
            out.contains_key(S3_CREDENTIALS[0].2) && out.contains_key(S3_CREDENTIALS[1].2);
        Ok(complete.then_some(out))
    }

    /// How to open repository `url`: the policy's settings, plus the
    /// vault's S3 credentials when careplane's environment has none.
    fn repo_options(&mut self, url: &str, policy: &Policy) -> Result<RepoOptions, Error> {
        let mut store_options = policy.store_options.clone();
        if url.starts_with("s3://") && std::env::var_os(S3_CREDENTIALS[0].0).is_none() {
            if let Some(creds) = self.s3_credentials()? {
                store_options.extend(
                    creds
                        .iter()
                        .map(|(k, v)| (k.clone(), v.expose_secret().to_string())),
                );
            }
        } else if url.starts_with("s3://") {
            // Keeps the vault's copy current for the runs without them.
            self.s3_credentials()?;
        }
        Ok(RepoOptions {
            compression_level: policy.compression_level,
            store_options,
            ..RepoOptions::default()
        })
    }

    pub(crate) fn service_owner(&mut self, host: &mut Host) -> Result<Option<(u32, u32)>, Error> {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        Ok(self.user(host)?.map(|u| (u.uid, u.gid)))
    }

    /// Copies the running `careplane` into `<dataDir>/bin/` (0755, root's):
    /// the service user may not reach where it was built or installed
    /// (a 0700 home), and the copy is what `archive_command` runs.
    pub(crate) fn install_archiver(&self) -> Result<PathBuf, Error> {
        use std::os::unix::fs::PermissionsExt;
        // The running program's inode, even when its file was replaced or
        // removed since it started (an upgrade during an apply).
        let exe = PathBuf::from("/proc/self/exe");
        let dir = self.data_dir.join("bin");
        let dest = dir.join("careplane");
        let io = |what: String| move |e| Error::Io { what, source: e };
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("setting the mode of {}", dir.display())))?;
        let new = std::fs::read(&exe).map_err(io(format!("reading {}", exe.display())))?;
        if std::fs::read(&dest).ok().as_deref() != Some(&new[..]) {
            // A running archiver keeps the old inode: replace, never rewrite in place.
            let tmp = dir.join(".careplane.new");
            std::fs::write(&tmp, &new).map_err(io(format!("writing {}", tmp.display())))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                .map_err(io(format!("setting the mode of {}", tmp.display())))?;
            std::fs::rename(&tmp, &dest).map_err(io(format!("installing {}", dest.display())))?;
        }
        Ok(dest)
    }

    pub(crate) fn records(&mut self) -> Result<Vec<ResourceRecord>, Error> {
        if !self.data_dir.join("state.db").exists() {
            return Ok(Vec::new());
        }
        Ok(self.store()?.resources()?)
    }

    /// `backup create`: see the module's documentation.
    pub(crate) fn create_backup(
        &mut self,
        tenant: &str,
        env: &str,
        reason: &str,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<BackupSummary, Error> {
        let _lock = careplane_state::lock(&self.data_dir, "backup create")?;
        self.create_backup_locked(tenant, env, reason, progress)
    }

    /// Before a destroy drops databases that hold data: a backup of each
    /// (reason `final`), under the apply lock the run already holds. What
    /// could not be backed up is a problem that refuses the run.
    pub(crate) fn final_backups(
        &mut self,
        plan: &careplane_engine::Plan,
        host: &mut Host,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let all = match self.records() {
            Ok(all) => all,
            Err(e) => return vec![e.to_string()],
        };
        for a in plan.actions.iter().filter(|a| {
            a.op == careplane_engine::Op::Delete && a.kind == careplane_model::Kind::PgDatabase
        }) {
            let Some((t, e)) =
                a.id.strip_prefix("pg-database/")
                    .and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            let has_data = self.database_has_data_for_backup(a, &all, host);
            let r = match has_data {
                Ok(false) => continue,
                Ok(true) => self
                    .create_backup_locked(t, e, "final", &|_| {})
                    .map(|_| ()),
                Err(err) => Err(err),
            };
            if let Err(err) = r {
                problems.push(format!(
                    "{t}/{e}: the final backup before dropping its data failed ({err}); \
                     fix that, or pass --no-final-backup to destroy without one"
                ));
            }
        }
        problems
    }

    pub(crate) fn create_backup_locked(
        &mut self,
        tenant: &str,
        env: &str,
        reason: &str,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<BackupSummary, Error> {
        let all = self.records()?;
        let db_id = format!("pg-database/{tenant}/{env}");
        let db = all
            .iter()
            .find(|r| r.id == db_id && r.status == ResourceStatus::Ready)
            .ok_or_else(|| {
                err(format!(
                    "environment {tenant}/{env} has no ready database ({db_id}): apply it first"
                ))
            })?
            .clone();
        let cluster_id = str_prop(&db, "cluster")?.to_string();
        let crec = all
            .iter()
            .find(|r| r.id == cluster_id && r.status == ResourceStatus::Ready)
            .ok_or_else(|| err(format!("{cluster_id} is not ready")))?
            .clone();
        if crec.observed.get("archive").is_none() {
            return Err(err(format!(
                "{cluster_id} does not archive its WAL yet: run `careplane apply` first \
                 (a base backup needs archived WAL to be restorable)"
            )));
        }
        let cluster = self.with_host(|d, h| d.cluster_handle(&crec, h))?;
        if cluster.running_pid().is_none() {
            return Err(err(format!(
                "{cluster_id} is not running: `careplane start` first"
            )));
        }

        progress(BackupEvent::Phase(format!(
            "reading {tenant}/{env} as its own role"
        )));
        let tdb = runtime::tenant_db(self.store()?, &db)?;
        let ca = self.ca_pem()?;
        let facts = read_facts(&cluster, &tdb, &ca)
            .map_err(|e| err(format!("reading {tenant}/{env} (as its own role): {e}")))?;

        // The cluster's base backup, incremental from its last one.
        let cluster_repo = self.open_cluster_repo(&crec)?;
        let parent = cluster_repo
            .list_backups()
            .map_err(berr(&format!("listing {cluster_id}'s base backups")))?
            .into_iter()
            .filter(|m| m.labels.get("kind").map(String::as_str) == Some("base"))
            .max_by_key(|m| m.finished)
            .map(|m| m.id);
        progress(BackupEvent::Phase(format!(
            "base backup of {cluster_id}{}",
            if parent.is_some() {
                " (unchanged files reused)"
            } else {
                ""
            }
        )));
        let src = PgSource {
            bin_dir: cluster.bin.dir.clone(),
            host: cluster.socket_dir().display().to_string(),
            port: cluster.port,
            user: ADMIN_ROLE.into(),
            password: secret(self.store()?, &crec.id, ADMIN_PASSWORD)?,
        };
        let report = |p: Progress| progress(BackupEvent::Bytes(p.bytes_read));
        let labels = BTreeMap::from([("cluster".to_string(), cluster_id.clone())]);
        let base = careplane_backup::pg::base_backup_direct(
            &cluster_repo,
            &src,
            &cluster.data_dir(),
            parent.as_deref(),
            labels,
            BackupMetadata {
                postgres_version: facts.postgres_version.clone(),
                ..Default::default()
            },
            &report,
        )
        .map_err(berr(&format!("base backup of {cluster_id}")))?;

        // The filestore and the facts, in the tenant's repository.
        let (repo, _) = self.open_tenant_repo(tenant)?;
        let mut labels = BTreeMap::from([
            ("kind".to_string(), "environment".to_string()),
            ("tenant".to_string(), tenant.to_string()),
            ("environment".to_string(), env.to_string()),
            ("cluster".to_string(), cluster_id.clone()),
            ("cluster.backup".to_string(), base.id.clone()),
            (
                "cluster.repository".to_string(),
                cluster_repo.url().to_string(),
            ),
            ("reason".to_string(), reason.to_string()),
            ("database".to_string(), tdb.database.clone()),
        ]);
        if let Some(w) = base.labels.get("wal.start") {
            labels.insert("wal.start".into(), w.clone());
        }
        let mut writer = repo
            .start_backup(labels)
            .map_err(berr(&format!("backup of {tenant}/{env}")))?;
        let mut filestore = Vec::new();
        let env_rec = all
            .iter()
            .find(|r| r.id == format!("odoo-env/{tenant}/{env}"));
        if let Some(root) = env_rec.and_then(|r| r.observed.get("root").and_then(Value::as_str)) {
            progress(BackupEvent::Phase(format!("filestore of {tenant}/{env}")));
            let rel = ["data", "filestore", tdb.database.as_str()];
            if let Some(dir) = open_beneath(Path::new(root), &rel)? {
                let fd_path = PathBuf::from(format!("/proc/self/fd/{}", dir.0));
                filestore = filestore_index(&fd_path);
                let quiet = |_: Progress| {};
                writer
                    .put_tree(&fd_path, "filestore", &quiet)
                    .map_err(berr(&format!(
                        "backup of {tenant}/{env}: filestore {root}/data/filestore/{}",
                        tdb.database
                    )))?;
            }
        }
        let metadata = BackupMetadata {
            postgres_version: facts.postgres_version,
            odoo_version: facts.odoo_version,
            modules: facts.modules,
            tables: facts.tables,
            filestore,
            extra: BTreeMap::new(),
        };
        let m = writer
            .commit(metadata)
            .map_err(berr(&format!("backup of {tenant}/{env}")))?;
        Ok(summary(&m, repo.url()))
    }

    /// Tenants of the specs (one, or all) with their repositories, where
    /// those exist.
    fn tenant_repos(
        &mut self,
        only: Option<&str>,
    ) -> Result<Vec<(String, Repository, Policy)>, Error> {
        let names: Vec<String> = self
            .specs
            .tenants
            .iter()
            .map(|t| t.metadata.name.clone())
            .filter(|n| only.is_none_or(|o| o == n))
            .collect();
        if let Some(o) = only {
            if names.is_empty() {
                return Err(err(format!("tenant {o} is not in the specs")));
            }
        }
        let mut out = Vec::new();
        for t in names {
            let policy = self.tenant_policy(&t)?;
            if !Self::repo_exists(&self.tenant_repo_url(&t, &policy)) {
                continue;
            }
            let (repo, policy) = self.open_tenant_repo(&t)?;
            out.push((t, repo, policy));
        }
        Ok(out)
    }

    pub(crate) fn list_backups(
        &mut self,
        scope: Option<(&str, &str)>,
    ) -> Result<Vec<BackupSummary>, Error> {
        let mut out = Vec::new();
        for (t, repo, _) in self.tenant_repos(scope.map(|s| s.0))? {
            let ms = repo
                .list_backups()
                .map_err(berr(&format!("listing the backups of tenant {t}")))?;
            out.extend(
                ms.iter()
                    .filter(|m| is_env_backup(m))
                    .filter(|m| scope.is_none_or(|(_, e)| label(m, "environment") == e))
                    .map(|m| summary(m, repo.url())),
            );
        }
        out.sort_by(|a, b| a.finished.cmp(&b.finished).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The tenant repository that holds backup `id`, and its manifest.
    pub(crate) fn find_backup(&mut self, id: &str) -> Result<(Repository, Manifest), Error> {
        for (_, repo, _) in self.tenant_repos(None)? {
            match repo.manifest(id) {
                Ok(m) if is_env_backup(&m) => return Ok((repo, m)),
                Ok(_) => {}
                Err(careplane_backup::BackupError::NotFound { .. }) => {}
                Err(e) => return Err(berr(&format!("backup {id}"))(e)),
            }
        }
        Err(err(format!(
            "backup {id} not found in any tenant's repository (see `careplane backup list`)"
        )))
    }

    pub(crate) fn show_backup(&mut self, id: &str) -> Result<BackupDetail, Error> {
        let (repo, m) = self.find_backup(id)?;
        let index = repo
            .index(&m)
            .map_err(|e| self.backup_error(&m, &format!("backup {id}: reading its index"), e))?;
        let md = index.metadata;
        Ok(BackupDetail {
            summary: summary(&m, repo.url()),
            postgres_version: md.postgres_version,
            odoo_version: md.odoo_version,
            modules: md.modules,
            tables: md
                .tables
                .into_iter()
                .map(|t| BackupTable {
                    table: t.table,
                    rows: t.rows,
                    checksum: t.checksum,
                })
                .collect(),
            filestore_files: md.filestore.len() as u64,
            filestore_bytes: md.filestore.iter().map(|f| f.size).sum(),
            objects: m.chunks.len() as u64 + 1,
            labels: m.labels.clone(),
            restore_checks: {
                let mut v: Vec<Manifest> = repo
                    .list_backups()
                    .map_err(berr(&format!("backup {id}: listing its restore checks")))?
                    .into_iter()
                    .filter(|c| {
                        crate::restore_check::is_restore_check(c) && label(c, "backup") == id
                    })
                    .collect();
                v.sort_by_key(|c| c.finished);
                v.iter().map(crate::restore_check::check_of).collect()
            },
        })
    }

    pub(crate) fn verify_backup(
        &mut self,
        id: &str,
        deep: bool,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<VerifyOutcome, Error> {
        let (repo, m) = self.find_backup(id)?;
        let (tenant, env) = (label(&m, "tenant"), label(&m, "environment"));
        progress(BackupEvent::Phase(format!(
            "verifying backup {id} of {tenant}/{env}{}",
            if deep {
                " (decrypting every object)"
            } else {
                ""
            }
        )));
        let r = repo.verify(id, deep).map_err(|e| {
            self.backup_error(
                &m,
                &format!("backup {id} of {tenant}/{env} (repository {})", repo.url()),
                e,
            )
        })?;
        let mut out = VerifyOutcome {
            id: id.to_string(),
            tenant: tenant.to_string(),
            environment: env.to_string(),
            deep,
            objects: r.objects,
            stored_bytes: r.stored_bytes,
            files: r.files,
            cluster_backup: None,
            cluster_objects: 0,
            shipments: 0,
            shipment_objects: 0,
        };
        // The filestore shipments made since this backup: a restore to a
        // later time takes files from them.
        let stream = crate::ship::stream_of(env);
        let ids = repo.list_record_ids(&stream).map_err(berr(&format!(
            "listing the filestore shipments of {tenant}/{env}"
        )))?;
        for sid in ids {
            let sm = repo
                .record(&stream, &sid)
                .map_err(berr(&format!("filestore shipment {sid} of {tenant}/{env}")))?;
            if sm.labels.get("since").map(String::as_str) != Some(id) {
                continue;
            }
            let sr = repo.verify_record(sm, deep).map_err(|e| {
                self.backup_error(
                    &m,
                    &format!(
                        "backup {id} of {tenant}/{env}: filestore shipment {sid} (repository {})",
                        repo.url()
                    ),
                    e,
                )
            })?;
            out.shipments += 1;
            out.shipment_objects += sr.objects;
        }
        if let Some(base) = m.labels.get("cluster.backup") {
            let cluster_id = label(&m, "cluster").to_string();
            let crec = self
                .records()?
                .into_iter()
                .find(|r| r.id == cluster_id)
                .ok_or_else(|| {
                    err(format!(
                        "backup {id}: its cluster {cluster_id} is no longer recorded"
                    ))
                })?;
            progress(BackupEvent::Phase(format!(
                "verifying base backup {base} of {cluster_id}"
            )));
            let crepo = self.open_cluster_repo(&crec)?;
            let cr = crepo.verify(base, deep).map_err(|e| {
                self.backup_error(
                    &m,
                    &format!(
                        "backup {id} of {tenant}/{env}: base backup {base} of {cluster_id} \
                         (repository {})",
                        crepo.url()
                    ),
                    e,
                )
            })?;
            out.cluster_backup = Some(base.clone());
            out.cluster_objects = cr.objects;
        }
        Ok(out)
    }

    pub(crate) fn prune_backups(
        &mut self,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<PruneOutcome, Error> {
        let _lock = careplane_state::lock(&self.data_dir, "backup prune")?;
        let now = Timestamp::now();
        let mut out = PruneOutcome::default();
        // Base backups that a kept environment backup restores from.
        let mut needed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (t, repo, policy) in self.tenant_repos(None)? {
            progress(BackupEvent::Phase(format!("pruning tenant {t}")));
            let all_ms = repo
                .list_backups()
                .map_err(berr(&format!("listing the backups of tenant {t}")))?;
            let (ms, checks): (Vec<Manifest>, Vec<Manifest>) = all_ms
                .into_iter()
                .filter(|m| is_env_backup(m) || crate::restore_check::is_restore_check(m))
                .partition(is_env_backup);
            // Retention per environment: one environment's backups never
            // count for another's.
            let mut by_env: BTreeMap<String, Vec<&Manifest>> = BTreeMap::new();
            for m in &ms {
                by_env
                    .entry(label(m, "environment").to_string())
                    .or_default()
                    .push(m);
            }
            let mut pr = PrunedRepository {
                repository: repo.url().to_string(),
                kept: Vec::new(),
                deleted: Vec::new(),
                wal_deleted: 0,
                gc_deleted_objects: 0,
                gc_deleted_bytes: 0,
                locked: Vec::new(),
                gc_locked_objects: 0,
                shipments_deleted: 0,
            };
            let mut kept_times: BTreeMap<String, Vec<Timestamp>> = BTreeMap::new();
            for (env, list) in &by_env {
                let times: Vec<Timestamp> = list.iter().map(|m| m.finished).collect();
                let keep = retention::select(&times, &policy.retention, now);
                // Backups retention lets go but Object Lock still keeps.
                let mut held = vec![false; list.len()];
                for ((m, why), held) in list.iter().zip(&keep).zip(&mut held) {
                    if !why.is_empty() {
                        continue;
                    }
                    // Its restore checks were written after it, so their
                    // locks end later: the backup waits for theirs too.
                    let mut until = repo.locked_until(&m.id).map_err(berr(&format!(
                        "reading the lock of backup {} of tenant {t}",
                        m.id
                    )))?;
                    for c in checks.iter().filter(|c| label(c, "backup") == m.id) {
                        let u = repo.locked_until(&c.id).map_err(berr(&format!(
                            "reading the lock of restore check {} of tenant {t}",
                            c.id
                        )))?;
                        until = until.max(u);
                    }
                    if let Some(until) = until {
                        pr.locked
                            .push(format!("{}: kept by object lock until {until}", m.id));
                        *held = true;
                    }
                }
                for ((m, why), held) in list.iter().zip(keep).zip(held) {
                    if why.is_empty() && !held {
                        // Its restore checks go with it (evidence of a
                        // backup that no longer exists proves nothing).
                        for c in checks.iter().filter(|c| label(c, "backup") == m.id) {
                            repo.delete_backup(&c.id).map_err(berr(&format!(
                                "deleting restore check {} of tenant {t}",
                                c.id
                            )))?;
                        }
                        repo.delete_backup(&m.id)
                            .map_err(berr(&format!("deleting backup {} of tenant {t}", m.id)))?;
                        pr.deleted.push(m.id.clone());
                    } else {
                        pr.kept.push(m.id.clone());
                        kept_times.entry(env.clone()).or_default().push(m.finished);
                        if let Some(b) = m.labels.get("cluster.backup") {
                            needed
                                .entry(label(m, "cluster").to_string())
                                .or_default()
                                .push(b.clone());
                        }
                    }
                }
            }
            // Filestore shipments no restore inside the PITR window needs.
            let mut envs: std::collections::BTreeSet<String> = by_env.keys().cloned().collect();
            if let Some(spec) = self.specs.tenant(&t) {
                envs.extend(spec.spec.environments.iter().map(|e| e.name.clone()));
            }
            for env in envs {
                let stream = crate::ship::stream_of(&env);
                let records = repo.list_records(&stream).map_err(berr(&format!(
                    "listing the filestore shipments of {t}/{env}"
                )))?;
                let times: Vec<Timestamp> = records.iter().map(|m| m.finished).collect();
                let kept = kept_times.get(&env).map(Vec::as_slice).unwrap_or_default();
                let needed =
                    retention::records_needed(kept, &times, policy.retention.pitr_window, now);
                for (m, needed) in records.iter().zip(needed) {
                    if needed {
                        continue;
                    }
                    match repo.delete_record(&stream, &m.id) {
                        Ok(()) => pr.shipments_deleted += 1,
                        Err(careplane_backup::BackupError::Locked { until, .. }) => pr
                            .locked
                            .push(format!("{}: kept by object lock until {until}", m.id)),
                        Err(e) => {
                            return Err(berr(&format!(
                                "deleting filestore shipment {} of {t}/{env}",
                                m.id
                            ))(e))
                        }
                    }
                }
            }
            let gc = repo.gc(GC_GRACE).map_err(berr(&format!(
                "collecting garbage of tenant {t}'s repository"
            )))?;
            pr.gc_deleted_objects = gc.deleted_objects;
            pr.gc_deleted_bytes = gc.deleted_bytes;
            pr.gc_locked_objects = gc.locked_objects;
            out.repositories.push(pr);
        }
        let clusters: Vec<ResourceRecord> = self
            .records()?
            .into_iter()
            .filter(|r| r.kind == "pg-cluster" && r.observed.get("archive").is_some())
            .collect();
        for crec in clusters {
            progress(BackupEvent::Phase(format!("pruning {}", crec.id)));
            let repo = self.open_cluster_repo(&crec)?;
            let ms = repo
                .list_backups()
                .map_err(berr(&format!("listing {}'s base backups", crec.id)))?;
            let newest = ms.iter().max_by_key(|m| m.finished).map(|m| m.id.clone());
            let keep = needed.get(&crec.id).cloned().unwrap_or_default();
            let mut pr = PrunedRepository {
                repository: repo.url().to_string(),
                kept: Vec::new(),
                deleted: Vec::new(),
                wal_deleted: 0,
                gc_deleted_objects: 0,
                gc_deleted_bytes: 0,
                locked: Vec::new(),
                gc_locked_objects: 0,
                shipments_deleted: 0,
            };
            let mut oldest_wal: Option<String> = None;
            for m in &ms {
                let needed = keep.contains(&m.id) || newest.as_deref() == Some(m.id.as_str());
                let locked = if needed {
                    None
                } else {
                    repo.locked_until(&m.id).map_err(berr(&format!(
                        "reading the lock of base backup {} of {}",
                        m.id, crec.id
                    )))?
                };
                if let Some(until) = locked {
                    pr.locked
                        .push(format!("{}: kept by object lock until {until}", m.id));
                }
                // The newest base backup stays: the parent of the next
                // incremental one and the base for recovery to now. One
                // Object Lock keeps stays whole, its WAL with it.
                if needed || locked.is_some() {
                    pr.kept.push(m.id.clone());
                    if let Some(w) = m.labels.get("wal.start") {
                        if oldest_wal.as_ref().is_none_or(|o| w < o) {
                            oldest_wal = Some(w.clone());
                        }
                    }
                } else {
                    repo.delete_backup(&m.id).map_err(berr(&format!(
                        "deleting base backup {} of {}",
                        m.id, crec.id
                    )))?;
                    pr.deleted.push(m.id.clone());
                }
            }
            if let Some(w) = oldest_wal {
                pr.wal_deleted = repo
                    .delete_wal_before(&w)
                    .map_err(berr(&format!("deleting {}'s WAL before {w}", crec.id)))?;
            }
            let gc = repo.gc(GC_GRACE).map_err(berr(&format!(
                "collecting garbage of {}'s repository",
                crec.id
            )))?;
            pr.gc_deleted_objects = gc.deleted_objects;
            pr.gc_deleted_bytes = gc.deleted_bytes;
            pr.gc_locked_objects = gc.locked_objects;
            out.repositories.push(pr);
        }
        Ok(out)
    }

    /// Backups whose schedule has come since the environment's last one,
    /// verifications likewise, then pruning. One environment's failure is
    /// listed and the others still run.
    pub(crate) fn run_due(
        &mut self,
        progress: &(dyn Fn(BackupEvent) + Sync),
    ) -> Result<RunDueOutcome, Error> {
        let now = Timestamp::now();
        let mut out = RunDueOutcome::default();
        let existing = self.list_backups(None)?;
        // With each environment, when a restore verification last ran (whatever its
        // outcome): a scheduled verification is due once per slot, not once per run.
        let envs: Vec<(String, String, Option<Timestamp>)> = self
            .records()?
            .iter()
            .filter(|r| r.kind == "pg-database" && r.status == ResourceStatus::Ready)
            .filter_map(|r| {
                let (t, e) = r.id.strip_prefix("pg-database/")?.split_once('/')?;
                let verified = r
                    .observed
                    .get("lastRestoreVerification")
                    .and_then(|v| v.get("verifiedAt"))
                    .and_then(|v| v.as_str())
                    .and_then(|v| v.parse::<Timestamp>().ok());
                Some((t.to_string(), e.to_string(), verified))
            })
            .collect();
        for (t, e, last_verified) in envs {
            let Ok(policy) = self.tenant_policy(&t) else {
                continue;
            };
            let last = existing
                .iter()
                .rfind(|b| b.tenant == t && b.environment == e)
                .cloned();
            let last_time = last
                .as_ref()
                .and_then(|b| b.finished.parse::<Timestamp>().ok());
            let due = |cron: &Option<String>| match (cron, last_time) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(c), Some(lt)) => cron_due(c, lt, now),
            };
            if due(&policy.schedule) {
                match self.create_backup(&t, &e, "schedule", progress) {
                    Ok(b) => {
                        // Every scheduled backup is proven by a restore,
                        // whose facts become the backup's verified ones
                        // (with a customer-held key: shallow, and skipped).
                        let r = match self.customer_key_skip(&t, &e, &b.id) {
                            Some(skipped) => {
                                self.verify_backup(&b.id, false, progress).and_then(|v| {
                                    out.verified.push(v);
                                    skipped
                                })
                            }
                            None => self.verify_restore(&t, &e, Some(&b.id), progress),
                        };
                        match r {
                            Ok(c) => out.restore_checks.push(c),
                            Err(err) => out
                                .failures
                                .push(format!("restore verification of {}: {err}", b.id)),
                        }
                        out.created.push(b);
                    }
                    // The environment's filestore is walked: a failure
                    // there names a document's file, which must not reach
                    // the audit log.
                    Err(err) => out.failures.push(crate::ship::without_names(&format!(
                        "backup of {t}/{e}: {err}"
                    ))),
                }
            } else if let (Some(b), Some(_)) = (&last, &policy.verify) {
                // Verification is due when its schedule came since the backup was
                // made and since the last verification (once per slot, so that
                // `careplane serve` running this every minute verifies once).
                let since = last_time.max(last_verified);
                let verify_due = match (&policy.verify, since) {
                    (Some(c), Some(t)) => cron_due(c, t, now),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if verify_due {
                    // A customer-held key: what careplane can check without
                    // it (hashes, signatures), and the restore recorded as
                    // skipped, never as passed.
                    let skipped = self.customer_key_skip(&t, &e, &b.id);
                    match self.verify_backup(&b.id, skipped.is_none(), progress) {
                        Ok(v) => out.verified.push(v),
                        Err(err) => out.failures.push(format!("verify of {}: {err}", b.id)),
                    }
                    match skipped {
                        Some(Ok(c)) => out.restore_checks.push(c),
                        Some(Err(err)) => out
                            .failures
                            .push(format!("restore verification of {}: {err}", b.id)),
                        None => match self.verify_restore(&t, &e, Some(&b.id), progress) {
                            Ok(c) => out.restore_checks.push(c),
                            Err(err) => out
                                .failures
                                .push(format!("restore verification of {}: {err}", b.id)),
                        },
                    }
                }
            }
        }
        // Files added since each environment's last backup reach the
        // repository within one run interval (docs/design/0010, "Filestore
        // shipping").
        match self.ship_filestores(None, true, progress) {
            Ok(s) => {
                out.shipped = s
                    .shipments
                    .into_iter()
                    .filter(|s| s.files > 0 || !s.skipped.is_empty() || !s.deferred.is_empty())
                    .collect();
                out.failures.extend(s.failures);
            }
            Err(e) => out.failures.push(format!("filestore shipping: {e}")),
        }
        match self.prune_backups(progress) {
            Ok(p) => out.pruned = p,
            Err(e) => out.failures.push(format!("prune: {e}")),
        }
        Ok(out)
    }

    /// WAL archiving of a running cluster, from `pg_stat_archiver`.
    pub(crate) fn archiving_status(&mut self, crec: &ResourceRecord, host: &mut Host) -> Archiving {
        let mut a = Archiving {
            enabled: false,
            ok: false,
            archived_count: 0,
            last_archived_wal: None,
            last_archived_time: None,
            failed_count: 0,
            last_failed_wal: None,
            last_failed_time: None,
            detail: None,
        };
        let read = (|| -> Result<(), Error> {
            let cluster = self.cluster_handle(crec, host)?;
            let mut c = cluster.admin()?;
            let row = c
                .query_one(
                    "SELECT pg_catalog.current_setting('archive_mode'), archived_count, \
                     last_archived_wal, \
                     pg_catalog.to_char(last_archived_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                     failed_count, last_failed_wal, \
                     pg_catalog.to_char(last_failed_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                     coalesce(last_failed_time > last_archived_time OR (last_failed_time IS NOT NULL AND last_archived_time IS NULL), false) \
                     FROM pg_catalog.pg_stat_archiver",
                    &[],
                )
                .map_err(|e| err(format!("{}: reading pg_stat_archiver: {e}", crec.id)))?;
            let mode: String = row.get(0);
            a.enabled = mode != "off";
            a.archived_count = row.get(1);
            a.last_archived_wal = row.get(2);
            a.last_archived_time = row.get(3);
            a.failed_count = row.get(4);
            a.last_failed_wal = row.get(5);
            a.last_failed_time = row.get(6);
            let failing: bool = row.get(7);
            a.ok = a.enabled && !failing;
            if !a.enabled {
                a.detail = Some(
                    "archive_mode is off: no point-in-time recovery (`careplane apply` turns it on)"
                        .into(),
                );
            } else if failing {
                a.detail = Some(format!(
                    "archive_command is failing (last failed WAL {}); see the cluster's log",
                    a.last_failed_wal.as_deref().unwrap_or("?")
                ));
            }
            Ok(())
        })();
        if let Err(e) = read {
            a.detail = Some(e.to_string());
        }
        a
    }

    /// The newest backup of `tenant`/`env`, for `status`.
    pub(crate) fn last_backup(&mut self, tenant: &str, env: &str) -> Option<LastBackup> {
        match self.list_backups(Some((tenant, env))) {
            Ok(list) => list.last().map(|b| LastBackup {
                id: Some(b.id.clone()),
                finished: Some(b.finished.clone()),
                error: None,
            }),
            Err(e) => Some(LastBackup {
                id: None,
                finished: None,
                error: Some(e.to_string()),
            }),
        }
    }
}

/// The settings that make a cluster archive its WAL through careplane, from
/// its record's `observed.archive` (see [`LocalDriver::ensure_archiving`]).
pub(crate) fn archive_settings(rec: &ResourceRecord) -> Vec<(String, String)> {
    let Some(a) = rec.observed.get("archive") else {
        return Vec::new();
    };
    let keys = a
        .get("keysFile")
        .and_then(Value::as_str)
        .unwrap_or_default();
    vec![
        ("archive_mode".into(), "on".into()),
        (
            "archive_command".into(),
            wal_command(rec, "archive", keys, "%p %f"),
        ),
        ("archive_timeout".into(), ARCHIVE_TIMEOUT.into()),
    ]
}

/// `careplane backup-wal <verb> …` for cluster `rec`'s repository (as in
/// its `observed.archive`) with the WAL-keys file `keys`, every value
/// single-quoted for the shell PostgreSQL runs it with.
pub(crate) fn wal_command(rec: &ResourceRecord, verb: &str, keys: &str, args: &str) -> String {
    let a = rec.observed.get("archive").cloned().unwrap_or(Value::Null);
    let s = |k: &str| {
        a.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
    let mut options = String::new();
    for o in a
        .get("storeOptions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        options.push_str(&format!(" --store-option {}", quote(o)));
    }
    if let Some(c) = a.get("credentialsFile").and_then(Value::as_str) {
        options.push_str(&format!(" --credentials {}", quote(c)));
    }
    format!(
        "{} backup-wal {verb} --keys {} --repository {}{options} {args}",
        quote(&s("program")),
        quote(keys),
        quote(&s("repository")),
    )
}

/// The repository URL of a cluster and the vault owner of its secret, as
/// recorded by [`LocalDriver::ensure_archiving`].
pub(crate) fn cluster_repo_of(rec: &ResourceRecord) -> Option<(String, String)> {
    let a = rec.observed.get("archive")?;
    Some((
        a.get("repository")?.as_str()?.to_string(),
        a.get("secretOwner")?.as_str()?.to_string(),
    ))
}

pub(crate) fn label<'a>(m: &'a Manifest, key: &str) -> &'a str {
    m.labels.get(key).map(String::as_str).unwrap_or("?")
}

pub(crate) fn is_env_backup(m: &Manifest) -> bool {
    m.labels.get("kind").map(String::as_str) == Some("environment")
}

pub(crate) fn summary(m: &Manifest, repository: &str) -> BackupSummary {
    BackupSummary {
        id: m.id.clone(),
        tenant: label(m, "tenant").into(),
        environment: label(m, "environment").into(),
        repository: repository.into(),
        started: rfc3339(m.started),
        finished: rfc3339(m.finished),
        cluster: label(m, "cluster").into(),
        cluster_backup: m.labels.get("cluster.backup").cloned(),
        cluster_repository: m.labels.get("cluster.repository").cloned(),
        reason: label(m, "reason").into(),
        files: m.files,
        plain_bytes: m.plain_bytes,
        stored_bytes: m.stored_bytes(),
        new_stored_bytes: m.new_stored_bytes,
    }
}

/// What a backup records of an environment's database, read over the
/// tenant's own connection.
struct Facts {
    postgres_version: Option<String>,
    odoo_version: Option<String>,
    modules: Vec<String>,
    tables: Vec<TableStat>,
}

/// Reads versions, installed modules and each table's row count and
/// checksum (md5 of the rows' text forms in order) as the tenant: whatever
/// the tenant planted runs with the tenant's rights only.
fn read_facts(
    cluster: &careplane_local::pg::PgCluster,
    tdb: &careplane_local::pg::TenantDb,
    ca: &str,
) -> Result<Facts, Error> {
    let mut c = cluster.tenant_connect(tdb, ca)?;
    let pe =
        |what: &'static str| move |e: careplane_local::postgres::Error| err(format!("{what}: {e}"));
    let postgres_version: String = c
        .query_one("SELECT pg_catalog.current_setting('server_version')", &[])
        .map_err(pe("reading the server version"))?
        .get(0);
    let has_modules: bool = c
        .query_one(
            "SELECT pg_catalog.to_regclass('public.ir_module_module') IS NOT NULL",
            &[],
        )
        .map_err(pe("looking for ir_module_module"))?
        .get(0);
    let (mut modules, mut odoo_version) = (Vec::new(), None);
    if has_modules {
        for row in c
            .query(
                "SELECT name::text, coalesce(latest_version::text, '') FROM public.ir_module_module \
                 WHERE state = 'installed' ORDER BY name",
                &[],
            )
            .map_err(pe("reading installed modules"))?
        {
            let name: String = row.get(0);
            let version: String = row.get(1);
            if name == "base" && !version.is_empty() {
                odoo_version = Some(version);
            }
            modules.push(name);
        }
    }
    let tables = table_facts(&mut c, &tdb.database)?;
    Ok(Facts {
        postgres_version: Some(postgres_version),
        odoo_version,
        modules,
        tables,
    })
}

/// Each table's row count and checksum (md5 of the rows' md5s in order),
/// of the tables `c`'s role may read: what a backup records and what a
/// restore verification compares.
pub(crate) fn table_facts(
    c: &mut careplane_local::postgres::Client,
    database: &str,
) -> Result<Vec<TableStat>, Error> {
    let pe =
        |what: &'static str| move |e: careplane_local::postgres::Error| err(format!("{what}: {e}"));
    let tables: Vec<(String, String)> = c
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_%' \
             AND pg_catalog.has_table_privilege(c.oid, 'SELECT') ORDER BY 1, 2",
            &[],
        )
        .map_err(pe("listing tables"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut stats = Vec::new();
    for (schema, table) in tables {
        let q = format!(
            "SELECT count(*), coalesce(pg_catalog.md5(pg_catalog.string_agg(pg_catalog.md5(t::text), '' \
             ORDER BY pg_catalog.md5(t::text))), '') FROM {}.{} t",
            careplane_local::pg::quote_ident(&schema),
            careplane_local::pg::quote_ident(&table)
        );
        let row = c
            .query_one(q.as_str(), &[])
            .map_err(|e| err(format!("counting rows of {schema}.{table}: {e}")))?;
        let rows: i64 = row.get(0);
        stats.push(TableStat {
            database: database.to_string(),
            table: format!("{schema}.{table}"),
            rows: rows as u64,
            checksum: row.get(1),
        });
    }
    Ok(stats)
}

/// An open directory descriptor, closed on drop.
pub(crate) struct Dir(pub i32);

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

/// Opens `root/<rel…>` one component at a time with `O_NOFOLLOW`: a
/// symlink that the tenant planted anywhere below `root` (root's own
/// directory) is refused, never followed. `None` when a component does not
/// exist (an environment without a filestore yet).
fn open_beneath(root: &Path, rel: &[&str]) -> Result<Option<Dir>, Error> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &[u8]| CString::new(p).map_err(|_| err(format!("{} has a NUL", root.display())));
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: open(2) of a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c(root.as_os_str().as_bytes())?.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::Io {
            what: format!("opening {}", root.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut dir = Dir(fd);
    let mut shown = root.to_path_buf();
    for part in rel {
        shown.push(part);
        // SAFETY: openat(2) relative to a descriptor we own.
        let fd = unsafe { libc::openat(dir.0, c(part.as_bytes())?.as_ptr(), flags) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(Error::Io {
                what: format!(
                    "opening {} (a symlink there is refused, not followed)",
                    shown.display()
                ),
                source: e,
            });
        }
        dir = Dir(fd);
    }
    Ok(Some(dir))
}

/// Odoo's filestore files (`ab/abcdef…`, named by their SHA-1) with sizes.
fn filestore_index(dir: &Path) -> Vec<FilestoreEntry> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if ft.is_dir() {
                stack.push((e.path(), r));
            } else if ft.is_file() {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                // Odoo names each file by the SHA-1 of its content.
                let base = r.rsplit('/').next().unwrap_or_default();
                let sha1 = if base.len() == 40 && base.bytes().all(|c| c.is_ascii_hexdigit()) {
                    base.to_string()
                } else {
                    String::new()
                };
                out.push(FilestoreEntry {
                    name: r,
                    size,
                    sha1,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether a 5-field cron schedule (UTC) fired after `last` and at or
/// before `now`. Searches minute by minute back from `now`, at most a year
/// and a day (a schedule that never fires in that span is never due).
pub(crate) fn cron_due(schedule: &str, last: Timestamp, now: Timestamp) -> bool {
    let Some(fields) = parse_cron(schedule) else {
        return false;
    };
    let floor = last.max(now - SignedDuration::from_hours(24 * 367));
    // Whole minutes at or before now, newest first, while after `last`.
    let mut minute = now.as_second() - now.as_second().rem_euclid(60);
    while let Ok(t) = Timestamp::from_second(minute) {
        if t <= floor {
            return false;
        }
        let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
        let dow = dt.weekday().to_sunday_zero_offset() as u32;
        if fields[0].contains(&(dt.minute() as u32))
            && fields[1].contains(&(dt.hour() as u32))
            && fields[3].contains(&(dt.month() as u32))
            && day_matches(&fields, dt.day() as u32, dow)
        {
            return true;
        }
        minute -= 60;
    }
    false
}

/// Cron's rule: when both day fields are restricted, either may match.
fn day_matches(fields: &[Vec<u32>; 5], dom: u32, dow: u32) -> bool {
    let dom_all = fields[2].len() == 31;
    let dow_all = fields[4].len() >= 7;
    let d = fields[2].contains(&dom);
    let w = fields[4].contains(&dow) || (dow == 0 && fields[4].contains(&7));
    match (dom_all, dow_all) {
        (true, true) => true,
        (true, false) => w,
        (false, true) => d,
        (false, false) => d || w,
    }
}

fn parse_cron(schedule: &str) -> Option<[Vec<u32>; 5]> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let f: Vec<&str> = schedule.split_whitespace().collect();
    if f.len() != 5 {
        return None;
    }
    let specs: [(u32, u32, &[&str], u32); 5] = [
        (0, 59, &[], 0),
        (0, 23, &[], 0),
        (1, 31, &[], 0),
        (1, 12, &MONTHS, 1),
        (0, 7, &DAYS, 0),
    ];
    let mut out: [Vec<u32>; 5] = Default::default();
    for (i, (field, (min, max, names, first))) in f.iter().zip(specs).enumerate() {
        let value = |s: &str| -> Option<u32> {
            if let Ok(n) = s.parse::<u32>() {
                return (min..=max).contains(&n).then_some(n);
            }
            let lower = s.to_ascii_lowercase();
            names
                .iter()
                .position(|n| *n == lower)
                .map(|p| p as u32 + first)
        };
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
                None => (part, 1),
            };
            let (lo, hi) = if range == "*" {
                (min, max)
            } else if let Some((a, b)) = range.split_once('-') {
                (value(a)?, value(b)?)
            } else {
                let v = value(range)?;
                (v, if part.contains('/') { max } else { v })
            };
            let mut v = lo;
            while v <= hi {
                out[i].push(v);
                v += step;
            }
        }
        out[i].sort_unstable();
        out[i].dedup();
    }
    Some(out)
}

/// `careplane backup-wal archive|restore`: PostgreSQL's `archive_command`
/// and `restore_command`, run as the cluster's service user with the WAL
/// key only. Exit 0 on success; for `restore`, 1 when the repository has no
/// such file (the normal end of recovery); 2 on any error (on stderr).
pub fn backup_wal(
    verb: &str,
    keys: &Path,
    repository: &str,
    store_options: &[String],
    credentials: Option<&Path>,
    a: &str,
    b: &str,
) -> Result<u8, String> {
    use careplane_backup::{error_chain, WalArchive, WalKeys};
    let keys = WalKeys::read_file(keys).map_err(|e| error_chain(&e))?;
    let mut options: Vec<(String, String)> = store_options
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--store-option {o:?} is not key=value"))
        })
        .collect::<Result<_, _>>()?;
    if let Some(path) = credentials {
        options.extend(read_credentials(path)?);
    }
    let archive = WalArchive::open(repository, &keys, &options).map_err(|e| error_chain(&e))?;
    match verb {
        "archive" => archive
            .archive_wal(Path::new(a), b)
            .map(|_| 0)
            .map_err(|e| format!("archiving WAL file {b}: {}", error_chain(&e))),
        "restore" => match archive.restore_wal(a, Path::new(b)) {
            Ok(true) => Ok(0),
            Ok(false) => Ok(1),
            Err(e) => Err(format!("restoring WAL file {a}: {}", error_chain(&e))),
        },
        other => Err(format!("unknown verb {other:?} (archive or restore)")),
    }
}

/// Writes `values` as a JSON object to `path`: 0600 from its creation,
/// owned by `owner`, replaced by rename so a reader sees the old or the new.
fn write_private_json(
    path: &Path,
    values: &BTreeMap<String, SecretString>,
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let json = SecretString::from(
        serde_json::to_string(
            &values
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose_secret()))
                .collect::<BTreeMap<_, _>>(),
        )
        .expect("a map of strings serializes"),
    );
    let tmp = path.with_extension("json.new");
    let io = |what: String| move |e| Error::Io { what, source: e };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .map_err(io(format!("handing {} to the service user", tmp.display())))?;
    }
    f.write_all(json.expose_secret().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("installing {}", path.display())))
}

/// The archiver's S3 credentials file (see [`write_private_json`]) as
/// object store options. Errors name the file, never its content.
fn read_credentials(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = SecretString::from(
        std::fs::read_to_string(path)
            .map_err(|e| format!("reading credentials file {}: {e}", path.display()))?,
    );
    let map: BTreeMap<String, String> =
        serde_json::from_str(text.expose_secret()).map_err(|_| {
            format!(
                "credentials file {} is not a JSON object of strings",
                path.display()
            )
        })?;
    map.into_iter()
        .map(|(k, v)| {
            if S3_CREDENTIALS.iter().any(|c| c.2 == k) {
                Ok((k, v))
            } else {
                Err(format!(
                    "credentials file {}: unexpected key {k:?} (only S3 credentials belong there)",
                    path.display()
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_daily_schedule_is_due_once_its_time_passed_since_the_last_backup() {
        let s = "0 2 * * *";
        assert!(cron_due(
            s,
            ts("2026-01-01T01:00:00Z"),
            ts("2026-01-01T02:00:30Z")
        ));
        assert!(!cron_due(
            s,
            ts("2026-01-01T02:00:30Z"),
            ts("2026-01-01T23:59:00Z")
        ));
        assert!(cron_due(
            s,
            ts("2026-01-01T02:00:30Z"),
            ts("2026-01-02T02:01:00Z")
        ));
        assert!(!cron_due(
            s,
            ts("2026-01-01T02:05:00Z"),
            ts("2026-01-01T03:00:00Z")
        ));
    }

    #[test]
    fn steps_names_and_either_day_field() {
        let every4h = "0 */4 * * *";
        assert!(cron_due(
            every4h,
            ts("2026-01-01T00:30:00Z"),
            ts("2026-01-01T04:00:00Z")
        ));
        assert!(!cron_due(
            every4h,
            ts("2026-01-01T00:30:00Z"),
            ts("2026-01-01T03:59:00Z")
        ));
        // Mondays at 01:00 (2026-01-05 is a Monday).
        let mon = "0 1 * * mon";
        assert!(!cron_due(
            mon,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-04T23:00:00Z")
        ));
        assert!(cron_due(
            mon,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-05T01:00:00Z")
        ));
        // Day 1 of the month or Sundays: 2026-01-04 is a Sunday.
        let either = "0 0 1 * 0";
        assert!(cron_due(
            either,
            ts("2026-01-02T00:00:00Z"),
            ts("2026-01-04T00:10:00Z")
        ));
        assert!(parse_cron("0 2 * *").is_none());
    }

    #[test]
    fn archive_command_quotes_every_path() {
        let rec = ResourceRecord {
            id: "pg-cluster/shared".into(),
            kind: "pg-cluster".into(),
            status: ResourceStatus::Ready,
            props: json!({}),
            observed: json!({"archive": {
                "repository": "file:///d/it's/backups/clusters/shared",
                "keysFile": "/d/pg/shared/conf/wal-keys.json",
                "program": "/d/bin/careplane",
                "storeOptions": ["aws_region=eu-west-1"],
            }}),
            created_at: String::new(),
            updated_at: String::new(),
        };
        let s: BTreeMap<String, String> = archive_settings(&rec).into_iter().collect();
        assert_eq!(s["archive_mode"], "on");
        assert_eq!(
            s["archive_command"],
            "'/d/bin/careplane' backup-wal archive --keys '/d/pg/shared/conf/wal-keys.json' \
             --repository 'file:///d/it'\\''s/backups/clusters/shared' \
             --store-option 'aws_region=eu-west-1' %p %f"
        );
    }
}

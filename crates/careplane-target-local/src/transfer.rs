//! `careplane export`: one environment's database and filestore as the zip
//! Odoo's own database manager restores (`careplane_odoo::dump`), and
//! `careplane import`: such a zip (or a `pg_dump` custom file) in place of an
//! environment's database and filestore.
//!
//! Everything inside the tenant's data happens with the tenant's rights or
//! none: `pg_dump` connects as the tenant's own role over verified TLS (so
//! whatever the tenant planted in its database runs as the tenant), and the
//! tenant-writable filestore is read through no-follow descriptors
//! (`careplane_odoo::tree::read_filestore`): a symlink planted there is
//! left out and reported, never followed as root.
//!
//! The dump is a snapshot at its start; the filestore is read after it,
//! while Odoo keeps running (as Odoo's own backup does): a file deleted in
//! between is missing from the archive, one added is extra and harmless.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use careplane_engine::{ExportReport, ImportReport};
use careplane_model::OdooEnvProps;
use careplane_odoo::dump::OdooZip;
use careplane_state::{ExposeSecret, ResourceStatus};

use crate::resources::{ready, Host};
use crate::runtime::{observed_str, str_prop, typed};
use crate::{Error as EngineError, LocalDriver};

/// A PostgreSQL client program (`pg_dump`, `psql`, `pg_restore`) that
/// connects to the tenant's database as the tenant's own role, over TLS
/// verified against the platform CA with channel binding; the password goes
/// through the environment, never the command line.
fn as_tenant(
    tool: &Path,
    port: u16,
    tdb: &careplane_local::pg::TenantDb,
    ca_file: &Path,
    app: &str,
) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", &tdb.role)
        .env("PGDATABASE", &tdb.database)
        .env("PGPASSWORD", tdb.password.expose_secret())
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", ca_file)
        .env("PGCHANNELBINDING", "require")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", app);
    cmd
}

impl LocalDriver {
    /// The record of `tenant`/`env`'s Odoo environment, when it is ready.
    fn ready_env(
        &mut self,
        tenant: &str,
        env: &str,
    ) -> Result<careplane_state::ResourceRecord, EngineError> {
        let id = careplane_model::odoo_env_id(tenant, env);
        self.store()?
            .resource(&id)?
            .filter(|r| r.status == ResourceStatus::Ready)
            .ok_or_else(|| EngineError::Inconsistent {
                what: format!("careplane runs no Odoo for {tenant}/{env} (see `careplane status`)"),
            })
    }

    pub(crate) fn export_env(
        &mut self,
        tenant: &str,
        env: &str,
        out: &Path,
    ) -> Result<ExportReport, EngineError> {
        let rec = self.ready_env(tenant, env)?;
        if out.is_dir() {
            return Err(EngineError::inconsistent(format!(
                "{} is a directory; give the archive's file name (e.g. {tenant}-{env}.zip)",
                out.display()
            )));
        }
        let props: OdooEnvProps = typed(&rec.id, &rec.props)?;
        let root = PathBuf::from(observed_str(&rec, "root")?);
        let (tdb, _) = self.recorded_process_env(&rec, &root)?;
        let all = self.store()?.resources()?;
        let crec = ready(&all, str_prop(&rec, "cluster")?)?;
        let mut host = Host::default();
        let cluster = self.cluster_handle(&crec, &mut host)?;
        let ca = self.ca_pem()?;
        // Through the tenant's own connection: proves the database holds
        // an Odoo before anything is written.
        let manifest = careplane_odoo::dump::manifest(
            &mut cluster.tenant_connect(&tdb, &ca)?,
            &tdb.database,
            props.version,
        )?;
        let mut zip = OdooZip::create(out)?;
        let pg_dump = cluster.bin.dir.join("pg_dump");
        let ca_file = self.ca_file();
        let filled = (|| -> Result<_, EngineError> {
            let manifest_text = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| EngineError::inconsistent(format!("manifest.json: {e}")))?;
            zip.add("manifest.json", &mut manifest_text.as_slice())?;
            let mut child = as_tenant(&pg_dump, cluster.port, &tdb, &ca_file, "careplane-export")
                // Owners and grants name careplane's roles, which the place
                // it is restored to does not have.
                .args(["--no-owner", "--no-privileges", "--format=plain"])
                // Both read catalogs careplane hides from tenants
                // (pg_database, pg_seclabels; see HIDDEN_CATALOG_RELATIONS),
                // and a tenant can have neither subscriptions nor labels.
                .args(["--no-subscriptions", "--no-security-labels"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| EngineError::Io {
                    what: format!("starting {}", pg_dump.display()),
                    source,
                })?;
            let mut stderr = child.stderr.take().expect("piped");
            let errors = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = stderr.read_to_string(&mut s);
                s
            });
            let mut stdout = child.stdout.take().expect("piped");
            let sql = zip.add("dump.sql", &mut stdout);
            drop(stdout);
            let status = child.wait().map_err(|source| EngineError::Io {
                what: "waiting for pg_dump".into(),
                source,
            })?;
            let errors = errors.join().unwrap_or_default();
            if !status.success() {
                return Err(EngineError::inconsistent(format!(
                    "pg_dump of database {} (as its tenant role) failed ({status}): {}",
                    tdb.database,
                    errors.trim()
                )));
            }
            let sql = sql?;
            let fs = careplane_odoo::tree::read_filestore(&root, &tdb.database, &mut |rel, f| {
                zip.add(&format!("filestore/{rel}"), f)
                    .map(|_| ())
                    .map_err(std::io::Error::other)
            })?;
            Ok((sql, fs))
        })();
        let (sql_bytes, fs) = match filled {
            Ok(v) => v,
            Err(e) => {
                zip.abandon();
                return Err(e);
            }
        };
        let bytes = zip.finish()?;
        Ok(ExportReport {
            tenant: tenant.to_string(),
            environment: env.to_string(),
            path: out.to_path_buf(),
            format: "odoo-zip".into(),
            database: tdb.database.clone(),
            bytes,
            sql_bytes,
            filestore_files: fs.files,
            filestore_bytes: fs.bytes,
            skipped: fs.skipped,
            modules: manifest["modules"].as_object().map_or(0, |m| m.len()),
            odoo_version: manifest["version"].as_str().unwrap_or_default().to_string(),
            postgres_version: manifest["pg_version"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// What an archive to import holds, unpacked into a root-only directory.
struct Unpacked {
    format: &'static str,
    /// `dump.sql`, or the custom-format file itself.
    dump: PathBuf,
    /// `filestore/` unpacked, when the archive has one.
    filestore: Option<PathBuf>,
    filestore_files: u64,
    odoo_version: Option<String>,
}

/// Unpacks `file` into `dir` (root's, 0700). Member names are checked
/// (`enclosed_name`): a member that would land outside `dir` is refused.
fn unpack(file: &Path, dir: &Path, odoo_major: u32) -> Result<Unpacked, EngineError> {
    let bad = |what: String| EngineError::inconsistent(format!("{}: {what}", file.display()));
    let mut head = [0u8; 5];
    let n = std::fs::File::open(file)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|source| EngineError::Io {
            what: format!("reading {}", file.display()),
            source,
        })?;
    if head[..n].starts_with(b"PGDMP") {
        return Ok(Unpacked {
            format: "pg-dump",
            dump: file.to_path_buf(),
            filestore: None,
            filestore_files: 0,
            odoo_version: None,
        });
    }
    if !head[..n].starts_with(b"PK") {
        return Err(bad(
            "neither an Odoo backup zip nor a pg_dump custom-format file".into(),
        ));
    }
    let f = std::fs::File::open(file).map_err(|source| EngineError::Io {
        what: format!("opening {}", file.display()),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(format!("not a readable zip: {e}")))?;
    let mut odoo_version = None;
    if let Ok(mut m) = zip.by_name("manifest.json") {
        let mut text = String::new();
        m.read_to_string(&mut text)
            .map_err(|e| bad(format!("manifest.json: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
        if let Some(major) = v["major_version"].as_str() {
            if major.split('.').next() != Some(odoo_major.to_string().as_str()) {
                return Err(bad(format!(
                    "the archive is from Odoo {major}, the environment runs Odoo {odoo_major}: \
                     upgrade the database to {odoo_major} first (Odoo's upgrade service or \
                     OpenUpgrade)"
                )));
            }
            odoo_version = Some(major.to_string());
        }
    }
    if zip.by_name("dump.sql").is_err() {
        return Err(bad(
            "no dump.sql in it (an Odoo backup zip has dump.sql, filestore/ and manifest.json)"
                .into(),
        ));
    }
    let mut filestore_files = 0;
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| bad(format!("member {i}: {e}")))?;
        let name = member
            .name()
            .map_err(|e| bad(format!("member {i}: {e}")))?
            .to_string();
        if name != "dump.sql" && !name.starts_with("filestore/") {
            continue; // What Odoo's restore ignores too (manifest.json, ...).
        }
        let Some(rel) = member.enclosed_name() else {
            return Err(bad(format!("member {name:?} points outside the archive")));
        };
        if member.is_symlink() {
            return Err(bad(format!("member {name:?} is a symbolic link")));
        }
        let to = dir.join(&rel);
        if member.is_dir() {
            std::fs::create_dir_all(&to).map_err(|source| EngineError::Io {
                what: format!("creating {}", to.display()),
                source,
            })?;
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|source| EngineError::Io {
                what: format!("creating {}", parent.display()),
                source,
            })?;
        }
        let mut out = std::fs::File::create(&to).map_err(|source| EngineError::Io {
            what: format!("creating {}", to.display()),
            source,
        })?;
        std::io::copy(&mut member, &mut out).map_err(|source| EngineError::Io {
            what: format!(
                "unpacking {name} from {} to {}",
                file.display(),
                to.display()
            ),
            source,
        })?;
        if name != "dump.sql" {
            filestore_files += 1;
        }
    }
    let filestore = dir.join("filestore");
    Ok(Unpacked {
        format: "odoo-zip",
        dump: dir.join("dump.sql"),
        filestore: filestore.is_dir().then_some(filestore),
        filestore_files,
        odoo_version,
    })
}

impl LocalDriver {
    /// See [`careplane_engine::Engine::import`]. In order: unpack and check
    /// the archive; export the environment as it is (the way back); stop it
    /// behind the maintenance page; move its database aside; load the dump
    /// into a new, empty one as the tenant's own role (a failure here puts
    /// the old database back, untouched); give it this environment's
    /// identity; put the archive's filestore in place; drop the old
    /// database; start Odoo and wait until it answers.
    pub(crate) fn import_env(
        &mut self,
        tenant: &str,
        env: &str,
        file: &Path,
    ) -> Result<ImportReport, EngineError> {
        let rec = self.ready_env(tenant, env)?;
        let props: OdooEnvProps = typed(&rec.id, &rec.props)?;
        let root = PathBuf::from(observed_str(&rec, "root")?);
        let (tdb, _) = self.recorded_process_env(&rec, &root)?;
        let all = self.store()?.resources()?;
        let crec = ready(&all, str_prop(&rec, "cluster")?)?;
        let mut host = Host::default();
        let cluster = self.cluster_handle(&crec, &mut host)?;
        let aside = format!("{}__pre_import", tdb.database);
        if cluster.databases()?.contains(&aside) {
            return Err(EngineError::inconsistent(format!(
                "database {aside} exists: an earlier import of {tenant}/{env} was interrupted. \
                 Its database is {aside}; rename it back to {} (dropping the half-loaded one) \
                 or drop it, then import again",
                tdb.database
            )));
        }

        let work = self
            .data_dir
            .join("tmp")
            .join(format!("import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|source| EngineError::Io {
                what: format!("creating {}", work.display()),
                source,
            })?;
        let result = self.import_unpacked(&rec, &props, &root, &tdb, &cluster, &aside, file, &work);
        let _ = std::fs::remove_dir_all(&work);
        let (unpacked, previous, new_identity) = result?;
        Ok(ImportReport {
            tenant: tenant.to_string(),
            environment: env.to_string(),
            database: tdb.database.clone(),
            format: unpacked.format.into(),
            odoo_version: unpacked.odoo_version,
            filestore_files: unpacked.filestore_files,
            previous,
            new_identity,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn import_unpacked(
        &mut self,
        rec: &careplane_state::ResourceRecord,
        props: &OdooEnvProps,
        root: &Path,
        tdb: &careplane_local::pg::TenantDb,
        cluster: &careplane_local::pg::PgCluster,
        aside: &str,
        file: &Path,
        work: &Path,
    ) -> Result<(Unpacked, PathBuf, bool), EngineError> {
        let unpacked = unpack(file, work, props.version)?;
        // The way back, before anything changes.
        let exports = self.data_dir.join("exports");
        std::fs::create_dir_all(&exports).map_err(|source| EngineError::Io {
            what: format!("creating {}", exports.display()),
            source,
        })?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let previous = exports.join(format!(
            "{}-{}-before-import-{stamp}.zip",
            props.tenant, props.environment
        ));
        self.export_env(&props.tenant, &props.environment, &previous)?;

        self.set_maintenance(&rec.id, true)?;
        self.stop_odoo_env(rec)?;
        cluster.rename_database(&tdb.database, aside)?;
        careplane_engine::crash_point(&rec.id, "import-aside");
        let loaded = (|| -> Result<bool, EngineError> {
            cluster.ensure_tenant_database(tdb)?;
            self.load_dump(cluster, tdb, &unpacked)?;
            let ca = self.ca_pem()?;
            let mut c = cluster.tenant_connect(tdb, &ca)?;
            if !careplane_odoo::db::is_initialized(&mut c)? {
                return Err(EngineError::inconsistent(format!(
                    "{}: the dump loaded, but it holds no Odoo database \
                     (no ir_module_module / ir_config_parameter)",
                    file.display()
                )));
            }
            let admin = self
                .store()?
                .get_or_create_secret(&rec.id, crate::odoo::ADMIN_LOGIN_PASSWORD)?;
            let http_port = careplane_model::Observed::odoo_env(&rec.id, &rec.observed)?.http_port;
            Ok(careplane_odoo::db::make_unique(
                &mut c,
                &rec.id,
                &format!("http://127.0.0.1:{http_port}"),
                &careplane_odoo::hash_admin_password(&admin),
            )?)
        })();
        let new_identity = match loaded {
            Ok(v) => v,
            Err(e) => {
                // Back to where it was: the half-loaded database goes, the
                // old one comes back under its name, Odoo starts again.
                let undo = cluster
                    .drop_database(&tdb.database)
                    .and_then(|()| cluster.rename_database(aside, &tdb.database));
                let started = self.start_odoo_env(rec);
                let _ = self.set_maintenance(&rec.id, false);
                if let Err(u) = undo {
                    return Err(EngineError::inconsistent(format!(
                        "{e}; putting the old database back failed too: {u}. \
                         It is database {aside}; the environment as it was is also in {}",
                        previous.display()
                    )));
                }
                started?;
                return Err(e);
            }
        };
        let owner = Self::owner(rec);
        let empty = work.join("empty-filestore");
        let fs = match &unpacked.filestore {
            Some(dir) => dir.clone(),
            None => {
                std::fs::create_dir_all(&empty).map_err(|source| EngineError::Io {
                    what: format!("creating {}", empty.display()),
                    source,
                })?;
                empty
            }
        };
        careplane_odoo::tree::install_filestore(root, &tdb.database, &fs, owner)?;
        cluster.drop_database(aside)?;
        self.start_odoo_env(rec)?;
        self.set_maintenance(&rec.id, false)?;
        self.ensure_probe_user_of(rec)?;
        Ok((unpacked, previous, new_identity))
    }

    /// Loads a dump into the (new, empty) database as the tenant's own role
    /// over verified TLS: whatever the dump holds runs with the tenant's
    /// rights only. Stops at the first error.
    fn load_dump(
        &mut self,
        cluster: &careplane_local::pg::PgCluster,
        tdb: &careplane_local::pg::TenantDb,
        dump: &Unpacked,
    ) -> Result<(), EngineError> {
        let (program, args): (&str, Vec<String>) = match dump.format {
            "pg-dump" => (
                "pg_restore",
                vec![
                    "--no-owner".into(),
                    "--no-privileges".into(),
                    "--exit-on-error".into(),
                    "--dbname".into(),
                    tdb.database.clone(),
                    dump.dump.display().to_string(),
                ],
            ),
            _ => (
                "psql",
                vec![
                    "-X".into(),
                    "-q".into(),
                    "-v".into(),
                    "ON_ERROR_STOP=1".into(),
                    "-f".into(),
                    dump.dump.display().to_string(),
                ],
            ),
        };
        let tool = cluster.bin.dir.join(program);
        let out = as_tenant(
            &tool,
            cluster.port,
            tdb,
            &self.ca_file(),
            "careplane-import",
        )
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| EngineError::Io {
            what: format!("running {}", tool.display()),
            source,
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            return Err(EngineError::inconsistent(format!(
                "loading the dump into {} as its tenant role failed ({program}, {}): {}",
                tdb.database,
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        Ok(())
    }
}

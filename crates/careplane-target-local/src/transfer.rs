//! `careplane export`: one environment's database and filestore as the zip
//! Odoo's own database manager restores (`careplane_odoo::dump`).
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

use careplane_engine::ExportReport;
use careplane_model::OdooEnvProps;
use careplane_odoo::dump::OdooZip;
use careplane_state::{ExposeSecret, ResourceStatus};

use crate::resources::{ready, Host};
use crate::runtime::{observed_str, str_prop, typed};
use crate::{Error as EngineError, LocalDriver};

impl LocalDriver {
    pub(crate) fn export_env(
        &mut self,
        tenant: &str,
        env: &str,
        out: &Path,
    ) -> Result<ExportReport, EngineError> {
        let id = careplane_model::odoo_env_id(tenant, env);
        let rec = self
            .store()?
            .resource(&id)?
            .filter(|r| r.status == ResourceStatus::Ready)
            .ok_or_else(|| EngineError::Inconsistent {
                what: format!("careplane runs no Odoo for {tenant}/{env} (see `careplane status`)"),
            })?;
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
            let mut child = Command::new(&pg_dump)
                // Owners and grants name careplane's roles, which the place
                // it is restored to does not have.
                .args(["--no-owner", "--no-privileges", "--format=plain"])
                // Both read catalogs careplane hides from tenants
                // (pg_database, pg_seclabels; see HIDDEN_CATALOG_RELATIONS),
                // and a tenant can have neither subscriptions nor labels.
                .args(["--no-subscriptions", "--no-security-labels"])
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", cluster.port.to_string())
                .env("PGUSER", &tdb.role)
                .env("PGDATABASE", &tdb.database)
                .env("PGPASSWORD", tdb.password.expose_secret())
                .env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", &ca_file)
                .env("PGCHANNELBINDING", "require")
                .env("PGCONNECT_TIMEOUT", "10")
                .env("PGAPPNAME", "careplane-export")
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

//! Odoo's own backup format: the zip its database manager's *Backup* writes
//! and *Restore* reads (`odoo/service/db.py`, `dump_db` / `restore_db`):
//! `dump.sql` (plain `pg_dump --no-owner`), `filestore/` (the database's
//! attachments, by their content-addressed names) and `manifest.json`
//! (informative: Odoo's restore reads only the first two).

use std::io::{Read, Write};
use std::path::Path;

use postgres::Client;
use serde_json::{json, Map, Value};

use crate::{OdooError, Result};

/// The `manifest.json` Odoo writes for `db_name` (`dump_db_manifest`):
/// versions, and every installed module with its `latest_version`. Read
/// over the tenant's own connection (see [`crate::db`]).
pub fn manifest(c: &mut Client, db_name: &str, odoo_major: u32) -> Result<Value> {
    let server: i32 = c
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .map_err(|e| db_err("reading the server version", e))?
        .get(0);
    let rows = c
        .query(
            "SELECT name::text, latest_version::text FROM public.ir_module_module \
             WHERE state = 'installed' ORDER BY name",
            &[],
        )
        .map_err(|e| db_err("listing installed modules", e))?;
    let mut modules = Map::new();
    for r in rows {
        let version: Option<String> = r.get(1);
        modules.insert(r.get(0), version.map_or(Value::Null, Value::String));
    }
    let version = format!("{odoo_major}.0");
    Ok(json!({
        "odoo_dump": "1",
        "db_name": db_name,
        "version": version,
        "version_info": [odoo_major, 0, 0, "final", 0, ""],
        "major_version": version,
        "pg_version": format!("{}.{}", server / 10000, (server / 100) % 100),
        "modules": modules,
    }))
}

fn db_err(what: &str, e: postgres::Error) -> OdooError {
    OdooError::Database {
        context: what.to_string(),
        message: crate::error::pg_message(&e),
    }
}

/// An Odoo backup zip being written (deflated members, as Odoo's
/// `zip_dir` writes them). Nothing is at `path` until [`OdooZip::finish`]
/// renames the finished file there: an interrupted export leaves no archive
/// that looks complete.
pub struct OdooZip {
    zip: zip::ZipWriter<std::fs::File>,
    partial: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl OdooZip {
    /// Starts `<path>.partial` (mode 0600: the archive holds the tenant's data).
    pub fn create(path: &Path) -> Result<OdooZip> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(crate::error::io_err("creating the archive", &partial))?;
        Ok(OdooZip {
            zip: zip::ZipWriter::new(file),
            partial,
            path: path.to_path_buf(),
        })
    }

    /// Adds member `name` with the bytes of `content`; returns their count.
    pub fn add(&mut self, name: &str, content: &mut dyn Read) -> Result<u64> {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true)
            .unix_permissions(0o644);
        self.zip
            .start_file(name, options)
            .map_err(|e| zip_err(&self.partial, name, e))?;
        std::io::copy(content, &mut self.zip).map_err(crate::error::io_err(
            format!("writing {name} into"),
            &self.partial,
        ))
    }

    /// Writes the central directory, syncs, and moves the archive to its
    /// name; returns its size.
    pub fn finish(self) -> Result<u64> {
        let OdooZip { zip, partial, path } = self;
        let mut file = zip
            .finish()
            .map_err(|e| zip_err(&partial, "the central directory", e))?;
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(crate::error::io_err("syncing", &partial))?;
        let size = file
            .metadata()
            .map_err(crate::error::io_err("reading the size of", &partial))?
            .len();
        std::fs::rename(&partial, &path).map_err(crate::error::io_err("renaming", &partial))?;
        Ok(size)
    }

    /// Removes the unfinished archive (after an error).
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.partial);
    }
}

fn zip_err(path: &Path, member: &str, e: zip::result::ZipError) -> OdooError {
    OdooError::Io {
        context: format!("writing {member} into the zip archive"),
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

//! Small filesystem and time helpers shared by the store and the lock.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::StateError;

/// Mode of a data directory careplane creates: the owner has full access;
/// others may traverse it (an unprivileged service user runs PostgreSQL in
/// subdirectories) but not list it.
pub(crate) const DATA_DIR_MODE: u32 = 0o711;

/// Creates `dir` (and missing parents) if absent, giving `dir` itself mode
/// [`DATA_DIR_MODE`] regardless of the umask. An existing directory is left
/// as the operator set it up.
pub(crate) fn ensure_data_dir(dir: &Path) -> Result<(), StateError> {
    let io_err = |action, source| StateError::Io {
        action,
        path: dir.to_path_buf(),
        source,
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io_err(
                "use as data directory",
                io::Error::other("it exists and is not a directory"),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("access data directory", e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| StateError::Io {
            action: "create parent directory of",
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    match DirBuilder::new().mode(DATA_DIR_MODE).create(dir) {
        Ok(()) => {
            // The umask may have removed the traverse bits; set them
            // explicitly. The directory is empty, so nothing is exposed
            // between creation and chmod.
            fs::set_permissions(dir, Permissions::from_mode(DATA_DIR_MODE))
                .map_err(|e| io_err("set mode 0711 on data directory", e))?;
            sync_dir(dir.parent().unwrap_or(Path::new(".")));
            Ok(())
        }
        // Another process created it between our check and now.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err("create data directory", e)),
    }
}

/// Best-effort fsync of a directory so that a newly created entry in it
/// survives a power loss.
pub(crate) fn sync_dir(dir: &Path) {
    careplane_sys::sync_dir(dir)
}

/// The current time as an RFC 3339 UTC string with second precision, e.g.
/// `2026-11-23T12:00:00Z`.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_unix_utc(secs)
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC.
pub(crate) fn format_unix_utc(secs: u64) -> String {
    format!("{}Z", careplane_sys::utc_datetime(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_unix_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_unix_utc(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(format_unix_utc(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn now_looks_like_rfc3339() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
        assert!(now.as_str() > "2024-01-01T00:00:00Z", "{now}");
    }

    #[test]
    fn creates_data_dir_with_mode_0711() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        ensure_data_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o711, "mode {mode:o}");
        // Idempotent, and an existing directory keeps its mode.
        fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        ensure_data_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn data_dir_that_is_a_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        let err = ensure_data_dir(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}

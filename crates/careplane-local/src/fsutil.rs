//! File helpers that stay safe when careplane (possibly root) writes into
//! directories owned by the service user.
//!
//! A compromised server could plant symlinks in its own directories hoping
//! careplane follows them as root. So files are opened with `O_NOFOLLOW`,
//! created with `O_EXCL` under a temporary name, chowned/chmodded through the
//! file descriptor and renamed into place (rename replaces a symlink instead of
//! writing through it). The rename also makes every rewrite atomic: a crash
//! leaves either the old or the new file, never a torn one.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{LocalError, Result};

/// Opens an existing file for reading without following a final symlink.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Reads a whole file without following a final symlink; `None` if absent.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    use std::io::Read;
    match open_nofollow(path) {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)
                .map_err(|e| LocalError::io("reading file", path, e))?;
            Ok(Some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LocalError::io("opening file", path, e)),
    }
}

/// Atomically (re)writes `path` with `contents`, permissions `mode` and, when
/// `owner` is given, that uid/gid.
pub(crate) fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    careplane_sys::atomic_write(path, contents, mode, owner)
        .map_err(|e| LocalError::io("writing file atomically", path, e))
}

/// Creates `path` if missing (not following a symlink in its place) and sets
/// its mode and owner through a file descriptor.
pub(crate) fn ensure_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(LocalError::state(
                path.display().to_string(),
                "is a symlink where careplane expects a directory; remove it",
            ))
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(LocalError::state(
                path.display().to_string(),
                "exists but is not a directory",
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(mode).create(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(LocalError::io("creating directory", path, e)),
            }
        }
        Err(e) => return Err(LocalError::io("inspecting directory", path, e)),
    }
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| LocalError::io("opening directory", path, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))
            .map_err(|e| LocalError::io("changing directory owner", path, e))?;
    }
    dir.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| LocalError::io("setting directory permissions", path, e))?;
    Ok(())
}

/// Removes a file (or symlink) if present.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LocalError::io("removing file", path, e)),
    }
}

/// Reads the first line of a pid file as a pid.
pub(crate) fn read_pid_file(path: &Path) -> Option<u32> {
    let text = read_optional(path).ok().flatten()?;
    text.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn write_replaces_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "original").unwrap();
        let link = dir.path().join("managed.conf");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_file(&link, b"new", 0o600, None).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
    }

    #[test]
    fn ensure_dir_refuses_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(ensure_dir(&link, 0o700, None).is_err());
        let fresh = dir.path().join("fresh");
        ensure_dir(&fresh, 0o700, None).unwrap();
        ensure_dir(&fresh, 0o700, None).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
    }
}

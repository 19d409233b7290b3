//! Root's file work inside an environment's directory.
//!
//! An environment's root directory (`<dataDir>/odoo/envs/<tenant>/<env>`)
//! belongs to root, but its `data/` and everything below belong to the
//! environment's uid, which runs tenant code. Tenant code can put a symlink
//! anywhere below `data/`, at any moment. So careplane, as root, never
//! resolves a path below `data/` by name: it opens `data/` and what it needs
//! under it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and
//! creates, moves and changes owners through those descriptors. Anything
//! that is a symlink where a directory belongs is refused, never followed.
//!
//! New content (a template's filestore) is assembled in a staging directory
//! beside `data/` that only root can enter, handed to the environment's uid
//! there, and moved into place with one `renameat`.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{
    fchmod, fchown, mkdirat, openat2, renameat, statat, AtFlags, Mode, OFlags, ResolveFlags, CWD,
};
use rustix::fs::{Gid, Uid};
use rustix::io::Errno;

use crate::{OdooError, Result};

/// Where root assembles new content for an environment: a `0700` root
/// directory directly in the environment's root, never inside `data/`.
pub const STAGING_DIR: &str = ".careplane-staging";

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn err(what: String, path: &Path, e: Errno) -> OdooError {
    let source = std::io::Error::from(e);
    let hint = if e == Errno::LOOP || e == Errno::XDEV || e == Errno::NOTDIR {
        " (a symbolic link or something else where a directory belongs: \
         careplane does not follow links inside an environment's files)"
    } else {
        ""
    };
    OdooError::Io {
        context: format!("{what}{hint}"),
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the directory `rel` below `dir` without following any symlink on
/// the way (also not a final one).
fn open_dir_beneath(dir: &OwnedFd, rel: &str, shown: &Path) -> Result<OwnedFd> {
    openat2(
        dir,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        resolve(),
    )
    .map_err(|e| err("opening directory".into(), shown, e))
}

/// Opens `rel` below `dir` as a directory, creating it (`mode`, owned by
/// `owner`) when missing; an existing one is handed to `owner` and `mode`.
fn ensure_dir_beneath(
    dir: &OwnedFd,
    rel: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
    shown: &Path,
) -> Result<OwnedFd> {
    match mkdirat(dir, rel, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(err("creating directory".into(), shown, e)),
    }
    let fd = open_dir_beneath(dir, rel, shown)?;
    if let Some((uid, gid)) = owner {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| err(format!("handing the directory to uid {uid}"), shown, e))?;
    }
    fchmod(&fd, Mode::from_raw_mode(mode))
        .map_err(|e| err(format!("setting mode {mode:o}"), shown, e))?;
    Ok(fd)
}

fn open_root(env_root: &Path) -> Result<OwnedFd> {
    // The environment's root and its ancestors belong to root: resolving
    // them by name is safe. Below it, nothing is.
    openat2(
        CWD,
        env_root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::empty(),
    )
    .map_err(|e| err("opening the environment directory".into(), env_root, e))
}

/// Gives `<env_root>/data/filestore/<database>` a fresh copy of
/// `template_filestore` (a tree root may trust: the template's, written
/// only by its own initialization), owned by `owner`. Whatever was there is
/// moved out first and removed, without following anything inside it.
///
/// `data/` and `data/filestore` are opened without following symlinks; if
/// tenant code replaced either with a link, this fails and changes nothing
/// outside the environment.
pub fn install_filestore(
    env_root: &Path,
    database: &str,
    template_filestore: &Path,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    if database.is_empty() || database.contains('/') || database.starts_with('.') {
        return Err(OdooError::InvalidConfig(format!(
            "database name {database:?} cannot name a filestore directory"
        )));
    }
    crate::sys::ensure_dir(env_root, 0o755)?;
    let root = open_root(env_root)?;
    let staging_path = env_root.join(STAGING_DIR);
    // A leftover staging directory (an apply killed while copying) is ours.
    remove_tree(&staging_path)?;
    let staging = ensure_dir_beneath(&root, STAGING_DIR, 0o700, None, &staging_path)?;
    let new = staging_path.join(database);
    if template_filestore.is_dir() {
        copy_tree(template_filestore, &new)?;
        if let Some((uid, gid)) = owner {
            chown_tree(&new, uid, gid)?;
        }
    } else {
        ensure_dir_beneath(&staging, database, 0o700, owner, &new)?;
    }

    let data_path = env_root.join("data");
    let data = ensure_dir_beneath(&root, "data", 0o700, owner, &data_path)?;
    let fs_path = data_path.join("filestore");
    let filestore = ensure_dir_beneath(&data, "filestore", 0o700, owner, &fs_path)?;
    let target = fs_path.join(database);
    match statat(&filestore, database, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => {
            // Out of the tenant's reach first (a rename moves the entry
            // itself, link or not), then removed as root's own.
            let old = format!("old-{database}");
            renameat(&filestore, database, &staging, old.as_str())
                .map_err(|e| err("moving the old filestore aside".into(), &target, e))?;
            remove_tree(&staging_path.join(old))?;
        }
        Err(Errno::NOENT) => {}
        Err(e) => return Err(err("looking at the filestore".into(), &target, e)),
    }
    renameat(&staging, database, &filestore, database)
        .map_err(|e| err("moving the new filestore into place".into(), &target, e))?;
    remove_tree(&staging_path)
}

/// What [`read_filestore`] went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilestoreRead {
    /// Regular files handed to the visitor.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries that are neither a directory nor a regular file (a symlink
    /// tenant code planted, a FIFO, ...), relative to the filestore: left out.
    pub skipped: Vec<String>,
}

/// Hands every regular file below `<env_root>/data/filestore/<database>` to
/// `visit` (its path relative to that directory, `/`-separated, and the
/// open file), in name order. Everything is opened through descriptors
/// without following any symlink (the tree is tenant-writable), so a link
/// tenant code planted is reported in [`FilestoreRead::skipped`], never
/// read. A missing filestore is an empty one.
pub fn read_filestore(
    env_root: &Path,
    database: &str,
    visit: &mut dyn FnMut(&str, &mut std::fs::File) -> std::io::Result<()>,
) -> Result<FilestoreRead> {
    if database.is_empty() || database.contains('/') || database.starts_with('.') {
        return Err(OdooError::InvalidConfig(format!(
            "database name {database:?} cannot name a filestore directory"
        )));
    }
    let root = open_root(env_root)?;
    let rel = format!("data/filestore/{database}");
    let shown = env_root.join(&rel);
    let dir = match openat2(
        &root,
        rel.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        resolve(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(FilestoreRead::default()),
        Err(e) => return Err(err("opening the filestore".into(), &shown, e)),
    };
    let mut out = FilestoreRead::default();
    walk(&dir, "", &shown, visit, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &OwnedFd,
    prefix: &str,
    shown: &Path,
    visit: &mut dyn FnMut(&str, &mut std::fs::File) -> std::io::Result<()>,
    out: &mut FilestoreRead,
) -> Result<()> {
    let mut names = Vec::new();
    let listing = rustix::fs::Dir::read_from(dir)
        .map_err(|e| err("listing directory".into(), &shown.join(prefix), e))?;
    for entry in listing {
        let entry = entry.map_err(|e| err("listing directory".into(), &shown.join(prefix), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = shown.join(&rel);
        let st = match statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed by Odoo meanwhile: not part of the copy.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(err("looking at".into(), &path, e)),
        };
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        if kind == rustix::fs::FileType::Directory {
            let sub = open_dir_beneath(dir, &name, &path)?;
            walk(&sub, &rel, shown, visit, out)?;
        } else if kind == rustix::fs::FileType::RegularFile {
            let fd = match openat2(
                dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
                resolve(),
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(err("opening".into(), &path, e)),
            };
            let mut file = std::fs::File::from(fd);
            // Checked on the open file: the entry may have been swapped for
            // something else since the stat.
            let meta = file
                .metadata()
                .map_err(crate::error::io_err("reading the size of", &path))?;
            if !meta.is_file() {
                out.skipped.push(rel);
                continue;
            }
            visit(&rel, &mut file).map_err(crate::error::io_err("copying", &path))?;
            out.files += 1;
            out.bytes += meta.len();
        } else {
            out.skipped.push(rel);
        }
    }
    Ok(())
}

/// Removes `path` and everything below it without following symlinks
/// (`std::fs::remove_dir_all` works with `openat`/`unlinkat` and
/// `O_NOFOLLOW` since Rust 1.58); a missing path is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::error::io_err("looking at", path)(e)),
        Ok(m) if !m.is_dir() => {
            return std::fs::remove_file(path).map_err(crate::error::io_err("removing", path))
        }
        Ok(_) => {}
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(crate::error::io_err("removing", path)(e))
        }
        _ => Ok(()),
    }
}

/// `cp -a` of a tree root trusts, into a directory only root can enter.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to)
        .output()
        .map_err(crate::error::io_err("running cp -a", to))?;
    if !out.status.success() {
        // cp's own words name the file and the errno (e.g. "No space left
        // on device"); keep them as the cause.
        return Err(OdooError::Io {
            context: format!("copying the template's filestore {}", from.display()),
            path: to.to_path_buf(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

/// Hands a tree in the staging directory to `uid`: nobody else can enter
/// the staging directory, so walking it by name is safe; links are changed
/// themselves, never followed.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    let io = |e| crate::error::io_err(format!("handing to uid {uid}"), path)(e);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io)?;
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            chown_tree(&entry.map_err(io)?.path(), uid, gid)?;
        }
    }
    Ok(())
}

//! Writing a rendered tree to a directory, and finding hand edits in one.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::{RenderError, Tree, MANAGED_DIRS};

/// What [`write_tree`] did, as relative paths.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReport {
    pub written: Vec<String>,
    pub unchanged: usize,
    pub removed: Vec<String>,
}

fn io_err(path: &Path, e: io::Error) -> RenderError {
    RenderError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn checked_rel(rel: &str) -> &str {
    // Paths come from names the spec validated as DNS labels; a path that
    // could leave `dir` is a bug here, not bad input.
    assert!(
        !rel.starts_with('/')
            && rel
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
        "rendered path {rel:?} is not a plain relative path"
    );
    rel
}

/// Writes `tree` under `dir`: each changed file atomically (a temporary file
/// in the same directory, then a rename), unchanged files untouched, and
/// files under [`MANAGED_DIRS`] that the tree no longer has removed (with
/// the directories they leave empty). Files outside those folders are left
/// alone.
pub fn write_tree(tree: &Tree, dir: &Path) -> Result<WriteReport, RenderError> {
    let mut report = WriteReport::default();
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    for (rel, content) in &tree.files {
        let path = dir.join(checked_rel(rel));
        match fs::read(&path) {
            Ok(old) if old == content.as_bytes() => {
                report.unchanged += 1;
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        let parent = path.parent().expect("a file under dir has a parent");
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let name = path.file_name().expect("a file name").to_string_lossy();
        let tmp = parent.join(format!(".{name}.careplane-tmp"));
        // The rename makes each file appear whole to readers (git, a sync
        // tool watching the directory). No fsync: the tree is re-rendered
        // from the specs at will and git is where it is kept, while 100,000
        // fsyncs would make a large platform's render take minutes.
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(content.as_bytes())?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path, e));
        }
        report.written.push(rel.clone());
    }
    for rel in managed_files(dir)? {
        if !tree.files.contains_key(&rel) {
            let path = dir.join(&rel);
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            report.removed.push(rel);
        }
    }
    for top in MANAGED_DIRS {
        remove_empty_dirs(&dir.join(top))?;
    }
    Ok(report)
}

/// Every file (or symlink) below the managed folders of `dir`, relative,
/// without following symlinks.
fn managed_files(dir: &Path) -> Result<BTreeSet<String>, RenderError> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeSet<String>) -> Result<(), RenderError> {
        let path = root.join(rel);
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = format!("{rel}/{name}");
            let ft = entry.file_type().map_err(|e| io_err(&entry.path(), e))?;
            if ft.is_dir() {
                walk(root, &child, out)?;
            } else {
                out.insert(child);
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    for top in MANAGED_DIRS {
        walk(dir, top, &mut out)?;
    }
    Ok(out)
}

fn remove_empty_dirs(path: &Path) -> Result<bool, RenderError> {
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut empty = true;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(path, e))?;
        let child: PathBuf = entry.path();
        let is_dir = entry.file_type().map_err(|e| io_err(&child, e))?.is_dir();
        if !(is_dir && remove_empty_dirs(&child)?) {
            empty = false;
        }
    }
    if empty {
        fs::remove_dir(path).map_err(|e| io_err(path, e))?;
    }
    Ok(empty)
}

/// How a repository differs from the rendered tree at one place.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// Relative path of the file.
    pub file: String,
    /// `Kind/name` of the object, when the file has one at that place.
    pub object: Option<String>,
    /// Field path inside the file (`spec.template.spec.containers[0].image`;
    /// `[2].spec.path` in a file of several documents), if the drift is in one.
    pub field: Option<String>,
    pub kind: DriftKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DriftKind {
    /// careplane renders the file; it is not there.
    Missing,
    /// The file is in a folder careplane owns but careplane does not render it.
    Extra,
    /// Not YAML any more.
    Unreadable(String),
    /// A field careplane renders has another value (both shown, shortened;
    /// values of a `Secret` someone added are never shown).
    Changed { expected: String, found: String },
    /// A field careplane does not render was added.
    Added,
    /// A field careplane renders was removed.
    Removed,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        match &self.kind {
            DriftKind::Missing => write!(f, ": missing (careplane renders it)"),
            DriftKind::Extra => write!(f, ": not rendered by careplane (added by hand?)"),
            DriftKind::Unreadable(m) => write!(f, ": not readable as YAML: {m}"),
            DriftKind::Changed { expected, found } => {
                write!(f, ": expected {expected}, found {found}")
            }
            DriftKind::Added => write!(f, ": added (careplane does not render it)"),
            DriftKind::Removed => write!(f, ": removed (careplane renders it)"),
        }
    }
}

fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| e.to_string())?;
        // An empty document (a file of comments only) is no object.
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Compares `dir` with `tree`: every rendered file must be there with the
/// same content (compared as YAML data, so formatting and comments do not
/// count), and the managed folders must hold nothing else. Sorted by file.
pub fn check_tree(tree: &Tree, dir: &Path) -> Result<Vec<Drift>, RenderError> {
    let mut drifts = Vec::new();
    for (rel, content) in &tree.files {
        let path = dir.join(checked_rel(rel));
        let found = match fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                drifts.push(Drift {
                    file: rel.clone(),
                    object: None,
                    field: None,
                    kind: DriftKind::Missing,
                });
                continue;
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        // Most files of a large repository are untouched: the same bytes
        // need no parsing.
        if found == *content {
            continue;
        }
        let expected = documents(content).expect("careplane renders YAML it can read back");
        let found = match documents(&found) {
            Ok(d) => d,
            Err(m) => {
                drifts.push(Drift {
                    file: rel.clone(),
                    object: None,
                    field: None,
                    kind: DriftKind::Unreadable(m),
                });
                continue;
            }
        };
        let multi = expected.len() > 1 || found.len() > 1;
        for i in 0..expected.len().max(found.len()) {
            let prefix = if multi {
                format!("[{i}]")
            } else {
                String::new()
            };
            let object = expected.get(i).or(found.get(i)).and_then(object_name);
            let mut out = Vec::new();
            match (expected.get(i), found.get(i)) {
                (Some(e), Some(f)) => {
                    let hide = f.get("kind").and_then(Value::as_str) == Some("Secret");
                    diff(e, f, &prefix, hide, &mut out);
                }
                (Some(_), None) => out.push((prefix.clone(), DriftKind::Removed)),
                (None, Some(_)) => out.push((prefix.clone(), DriftKind::Added)),
                (None, None) => {}
            }
            drifts.extend(out.into_iter().map(|(field, kind)| Drift {
                file: rel.clone(),
                object: object.clone(),
                field: (!field.is_empty()).then_some(field),
                kind,
            }));
        }
    }
    for rel in managed_files(dir)? {
        if !tree.files.contains_key(&rel) {
            drifts.push(Drift {
                file: rel,
                object: None,
                field: None,
                kind: DriftKind::Extra,
            });
        }
    }
    drifts.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(drifts)
}

fn object_name(v: &Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    match v
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
    {
        Some(name) => Some(format!("{kind}/{name}")),
        None => Some(kind.to_string()),
    }
}

fn key_path(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (prefix.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{prefix}.{key}"),
        (_, false) => format!("{prefix}[{key:?}]"),
    }
}

fn diff(
    expected: &Value,
    found: &Value,
    path: &str,
    hide: bool,
    out: &mut Vec<(String, DriftKind)>,
) {
    match (expected, found) {
        (Value::Object(e), Value::Object(f)) => {
            for (k, ev) in e {
                match f.get(k) {
                    Some(fv) => diff(ev, fv, &key_path(path, k), hide, out),
                    None => out.push((key_path(path, k), DriftKind::Removed)),
                }
            }
            for k in f.keys().filter(|k| !e.contains_key(*k)) {
                out.push((key_path(path, k), DriftKind::Added));
            }
        }
        (Value::Array(e), Value::Array(f)) if e.len() == f.len() => {
            for (i, (ev, fv)) in e.iter().zip(f).enumerate() {
                diff(ev, fv, &format!("{path}[{i}]"), hide, out);
            }
        }
        (e, f) if e == f => {}
        (Value::String(e), Value::String(f)) if !hide && (e.contains('\n') || f.contains('\n')) => {
            // A file in a ConfigMap (odoo.conf): name the first line that differs.
            let (mut el, mut fl) = (e.lines(), f.lines());
            let mut n = 1;
            loop {
                match (el.next(), fl.next()) {
                    (a, b) if a == b && a.is_some() => n += 1,
                    (a, b) => {
                        let show = |l: Option<&str>| {
                            l.map_or("(no line)".to_string(), |l| shorten(&format!("{l:?}")))
                        };
                        out.push((
                            format!("{path} line {n}"),
                            DriftKind::Changed {
                                expected: show(a),
                                found: show(b),
                            },
                        ));
                        break;
                    }
                }
            }
        }
        (e, f) => out.push((
            path.to_string(),
            DriftKind::Changed {
                expected: describe(e, false),
                found: describe(f, hide),
            },
        )),
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

fn describe(v: &Value, hide: bool) -> String {
    match v {
        _ if hide => "(a value of a Secret, not shown)".into(),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(_) => "a mapping".into(),
        v => shorten(&v.to_string()),
    }
}

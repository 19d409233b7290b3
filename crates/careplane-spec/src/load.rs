//! Files to a validated [`SpecSet`]: reading, per-document decoding, and the
//! rules that span documents (one platform, unique names, references,
//! derived names and connection budgets).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::decode::{decode, key, quoted};
use crate::diagnostic::{location, Diagnostic, Diagnostics};
use crate::model::{AnyDocument, Kind, SpecSet};
use crate::suggest::did_you_mean;
use crate::yaml::{parse_stream, path_string, Node, Pos, Seg};

/// One file's documents and problems, before the set-level checks of
/// [`validate_set`]. Split from loading so that callers holding text in
/// memory (tests, the fuzzer, an editor) need no files.
#[derive(Debug, Clone)]
pub struct ParsedFile {
    /// The name the text was parsed under, as used in messages.
    pub file: PathBuf,
    /// Documents that had no problems, in file order.
    pub documents: Vec<ParsedDocument>,
    /// Problems found in this file alone.
    pub diagnostics: Vec<Diagnostic>,
    identities: Vec<Identity>,
    /// Documents that type-checked but broke other rules; their references
    /// are still checked, so that one run reports those problems too.
    checked: Vec<ParsedDocument>,
}

/// A document that parsed and type-checked. It keeps the positions of its
/// fields, so that set-level problems (an unresolved reference) can still
/// point at a line and column.
#[derive(Debug, Clone)]
pub struct ParsedDocument {
    /// The typed document.
    pub document: AnyDocument,
    pub(crate) tree: Node,
}

/// Kind and name of every document whose kind and name are readable, valid
/// or not: uniqueness and references are checked against all of them, so
/// that one broken document does not cause a cascade of "not found" errors.
#[derive(Debug, Clone)]
struct Identity {
    kind: Kind,
    name: String,
    name_pos: Pos,
    kind_pos: Pos,
}

/// Parses and checks every document of one YAML text. Never panics, whatever
/// the text: it is the entry point the fuzzer drives.
pub fn parse_documents(file: &Path, text: &str) -> ParsedFile {
    let mut diagnostics = Vec::new();
    let roots = parse_stream(file, text, &mut diagnostics);
    let mut documents = Vec::new();
    let mut identities = Vec::new();
    let mut checked = Vec::new();
    for root in roots {
        let decoded = decode(file, &root, &mut diagnostics);
        if let Some((kind, name, name_pos)) = decoded.identity {
            let kind_pos = root.get("kind").map_or(root.pos, |e| e.value.pos);
            identities.push(Identity {
                kind,
                name,
                name_pos,
                kind_pos,
            });
        }
        if let Some(document) = decoded.document {
            documents.push(ParsedDocument {
                document,
                tree: root,
            });
        } else if let Some(document) = decoded.checked {
            checked.push(ParsedDocument {
                document,
                tree: root,
            });
        }
    }
    ParsedFile {
        file: file.to_path_buf(),
        documents,
        diagnostics,
        identities,
        checked,
    }
}

/// The documents of a YAML text as JSON values, typed the way careplane reads
/// YAML (1.2 core schema), without checking them against the model. For
/// checking files against [`crate::json_schema`] with other tools, and for
/// tests; YAML problems (syntax, duplicate keys) are the error.
pub fn documents_as_json(file: &Path, text: &str) -> Result<Vec<serde_json::Value>, Diagnostics> {
    let mut diagnostics = Vec::new();
    let roots = parse_stream(file, text, &mut diagnostics);
    if diagnostics.is_empty() {
        Ok(roots.iter().map(Node::to_json).collect())
    } else {
        Err(Diagnostics(diagnostics))
    }
}

/// Reads the spec files: each path is a file, or a directory whose `*.yaml`
/// and `*.yml` files are read in name order (not recursing, so that a
/// directory is one spec set). Every problem in every file is reported
/// together; see [`Diagnostics`].
pub fn load(paths: &[PathBuf]) -> Result<SpecSet, Diagnostics> {
    let mut diagnostics = Vec::new();
    let files = spec_files(paths, &mut diagnostics);
    let mut parsed = Vec::new();
    for file in &files {
        match read_text(file) {
            Ok(text) => parsed.push(parse_documents(file, &text)),
            Err(d) => diagnostics.push(d),
        }
    }
    let order: Vec<PathBuf> = files.into_iter().chain(paths.iter().cloned()).collect();
    check_set(parsed, diagnostics, &order)
}

/// [`load`] for one text held in memory, named `file` in messages.
pub fn load_str(file: &Path, text: &str) -> Result<SpecSet, Diagnostics> {
    validate_set(vec![parse_documents(file, text)])
}

/// [`load`] for several texts held in memory, as `(name, text)` pairs.
pub fn load_sources<I, P, S>(sources: I) -> Result<SpecSet, Diagnostics>
where
    I: IntoIterator<Item = (P, S)>,
    P: AsRef<Path>,
    S: AsRef<str>,
{
    let parsed = sources
        .into_iter()
        .map(|(p, s)| parse_documents(p.as_ref(), s.as_ref()))
        .collect();
    validate_set(parsed)
}

/// The files behind `paths`, expanding directories.
fn spec_files(paths: &[PathBuf], diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    let mut add = |files: &mut Vec<PathBuf>, f: PathBuf| {
        let id = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
        if seen.insert(id) {
            files.push(f);
        }
    };
    for path in paths {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                diagnostics.push(Diagnostic::new(path, 0, 0, "", format!("cannot read: {e}")));
                continue;
            }
        };
        if !meta.is_dir() {
            add(&mut files, path.clone());
            continue;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => {
                diagnostics.push(Diagnostic::new(
                    path,
                    0,
                    0,
                    "",
                    format!("cannot read directory: {e}"),
                ));
                continue;
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml") | Some("yml")
                    )
            })
            .collect();
        found.sort();
        if found.is_empty() {
            diagnostics.push(Diagnostic::new(
                path,
                0,
                0,
                "",
                "no .yaml or .yml files in this directory",
            ));
        }
        for f in found {
            add(&mut files, f);
        }
    }
    files
}

fn read_text(file: &Path) -> Result<String, Diagnostic> {
    let bytes = std::fs::read(file)
        .map_err(|e| Diagnostic::new(file, 0, 0, "", format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // Valid by construction: it is the prefix the error vouches for.
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Diagnostic::new(file, line, column, "", "file is not valid UTF-8")
            .with_help("spec files must be UTF-8 text")
    })
}

/// The set-level checks over already parsed files: exactly one `Platform`,
/// unique names per kind, and every reference resolved. Problems found while
/// parsing are returned too, so the result has every problem of the run.
pub fn validate_set(files: Vec<ParsedFile>) -> Result<SpecSet, Diagnostics> {
    let order: Vec<PathBuf> = files.iter().map(|f| f.file.clone()).collect();
    check_set(files, Vec::new(), &order)
}

/// [`validate_set`], joined with problems found before parsing (unreadable
/// files), sorted by `order`.
fn check_set(
    files: Vec<ParsedFile>,
    mut diags: Vec<Diagnostic>,
    order: &[PathBuf],
) -> Result<SpecSet, Diagnostics> {
    let mut ids: Vec<(&Path, &Identity)> = Vec::new();
    let mut docs: Vec<(&Path, &ParsedDocument)> = Vec::new();
    for f in &files {
        diags.extend(f.diagnostics.iter().cloned());
        ids.extend(f.identities.iter().map(|i| (f.file.as_path(), i)));
        docs.extend(
            f.documents
                .iter()
                .chain(&f.checked)
                .map(|d| (f.file.as_path(), d)),
        );
    }

    // Exactly one platform.
    let platforms: Vec<&(&Path, &Identity)> = ids
        .iter()
        .filter(|(_, i)| i.kind == Kind::Platform)
        .collect();
    if files.is_empty() {
        if diags.is_empty() {
            diags.push(Diagnostic::new(
                Path::new(""),
                0,
                0,
                "",
                "no spec files given",
            ));
        }
    } else if platforms.is_empty() {
        let names: Vec<String> = files.iter().map(|p| p.file.display().to_string()).collect();
        diags.push(
            Diagnostic::new(
                Path::new(""),
                0,
                0,
                "",
                format!("no Platform document in {}", names.join(", ")),
            )
            .with_help("a spec set needs exactly one document with `kind: Platform`"),
        );
    }
    if let Some(((first_file, first), rest)) = platforms.split_first() {
        for (file, p) in rest {
            diags.push(
                Diagnostic::new(
                    file,
                    p.kind_pos.line,
                    p.kind_pos.column,
                    "kind",
                    format!(
                        "a second Platform ({}); a spec set has exactly one",
                        quoted(&p.name)
                    ),
                )
                .with_help(format!(
                    "the first is {} at {}",
                    quoted(&first.name),
                    location(first_file, first.kind_pos.line)
                )),
            );
        }
    }

    // Unique names per kind.
    let mut first_of: HashMap<(Kind, &str), (&Path, &Identity)> = HashMap::new();
    for (file, id) in &ids {
        match first_of.get(&(id.kind, id.name.as_str())) {
            Some((ffile, first)) => diags.push(
                Diagnostic::new(
                    file,
                    id.name_pos.line,
                    id.name_pos.column,
                    "metadata.name",
                    format!("duplicate {} name {}", id.kind, quoted(&id.name)),
                )
                .with_help(format!(
                    "first defined at {}",
                    location(ffile, first.name_pos.line)
                )),
            ),
            None => {
                first_of.insert((id.kind, id.name.as_str()), (file, id));
            }
        }
    }

    // References.
    let names_of = |kind: Kind| -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for (_, i) in &ids {
            if i.kind == kind && !v.contains(&i.name.as_str()) {
                v.push(&i.name);
            }
        }
        v
    };
    let tiers = names_of(Kind::ServiceTier);
    let policies = names_of(Kind::BackupPolicy);
    let the_platform = match (
        platforms.len(),
        docs.iter()
            .find(|(_, d)| d.document.kind() == Kind::Platform),
    ) {
        (1, Some((_, d))) => match &d.document {
            AnyDocument::Platform(p) => Some(p),
            _ => None,
        },
        _ => None,
    };
    // Problems found while `check` holds `diags`.
    let mut late: Vec<Diagnostic> = Vec::new();
    for (file, d) in &docs {
        let mut check = |path: &[Seg], target: Kind, name: &str, existing: &[&str]| {
            if existing.contains(&name) {
                return;
            }
            let pos = d.tree.value_pos(path);
            let mut help = match did_you_mean(name, existing.iter().copied()) {
                Some(s) => format!("did you mean {}? ", quoted(s)),
                None => String::new(),
            };
            if existing.is_empty() {
                help.push_str(&format!("no {target} is defined in these files"));
            } else {
                help.push_str(&format!("defined: {}", existing.join(", ")));
            }
            diags.push(
                Diagnostic::new(
                    file,
                    pos.line,
                    pos.column,
                    path_string(path),
                    format!("unknown {target} {}", quoted(name)),
                )
                .with_help(help),
            );
        };
        match &d.document {
            AnyDocument::Platform(p) => {
                if let Some(t) = &p.spec.defaults.service_tier {
                    check(
                        &[key("spec"), key("defaults"), key("serviceTier")],
                        Kind::ServiceTier,
                        t,
                        &tiers,
                    );
                }
            }
            AnyDocument::ServiceTier(t) => {
                let channels: Vec<&str> = the_platform
                    .and_then(|p| p.spec.notifications.as_ref())
                    .map(|n| n.channels.iter().map(|c| c.name.as_str()).collect())
                    .unwrap_or_default();
                for (i, e) in t
                    .spec
                    .slo
                    .iter()
                    .flat_map(|s| s.escalation.iter())
                    .enumerate()
                {
                    let named = e
                        .steps
                        .iter()
                        .enumerate()
                        .flat_map(|(j, s)| {
                            s.notify.iter().enumerate().map(move |(k, n)| {
                                (
                                    vec![key("steps"), Seg::Index(j), key("notify"), Seg::Index(k)],
                                    n,
                                )
                            })
                        })
                        .chain(
                            e.executive
                                .iter()
                                .enumerate()
                                .map(|(k, n)| (vec![key("executive"), Seg::Index(k)], n)),
                        );
                    for (tail, name) in named {
                        if channels.contains(&name.as_str()) {
                            continue;
                        }
                        let mut path =
                            vec![key("spec"), key("slo"), key("escalation"), Seg::Index(i)];
                        path.extend(tail);
                        let pos = d.tree.value_pos(&path);
                        let help = match did_you_mean(name, channels.iter().copied()) {
                            Some(s) => format!("did you mean {}?", quoted(s)),
                            None if channels.is_empty() => {
                                "the Platform defines no notifications.channels".into()
                            }
                            None => format!("channels: {}", channels.join(", ")),
                        };
                        late.push(
                            Diagnostic::new(
                                file,
                                pos.line,
                                pos.column,
                                path_string(&path),
                                format!("unknown notification channel {}", quoted(name)),
                            )
                            .with_help(help),
                        );
                    }
                }
                if let Some(b) = &t.spec.backup_policy {
                    check(
                        &[key("spec"), key("backupPolicy")],
                        Kind::BackupPolicy,
                        b,
                        &policies,
                    );
                }
            }
            AnyDocument::BackupPolicy(_) => {}
            AnyDocument::MaintenanceWindow(w) => {
                let tenant = docs.iter().find_map(|(_, d)| match &d.document {
                    AnyDocument::Tenant(t) if t.metadata.name == w.spec.tenant => Some(t),
                    _ => None,
                });
                match tenant {
                    None => check(
                        &[key("spec"), key("tenant")],
                        Kind::Tenant,
                        &w.spec.tenant,
                        &names_of(Kind::Tenant),
                    ),
                    Some(t) => {
                        let envs: Vec<&str> = t
                            .spec
                            .environments
                            .iter()
                            .map(|e| e.name.as_str())
                            .collect();
                        for (i, e) in w.spec.environments.iter().enumerate() {
                            if envs.contains(&e.as_str()) {
                                continue;
                            }
                            let path = [key("spec"), key("environments"), Seg::Index(i)];
                            let pos = d.tree.value_pos(&path);
                            let help = match did_you_mean(e, envs.iter().copied()) {
                                Some(s) => format!("did you mean {}? ", quoted(s)),
                                None => String::new(),
                            };
                            diags.push(
                                Diagnostic::new(
                                    file,
                                    pos.line,
                                    pos.column,
                                    path_string(&path),
                                    format!(
                                        "tenant {} has no environment {}",
                                        quoted(&w.spec.tenant),
                                        quoted(e)
                                    ),
                                )
                                .with_help(format!(
                                    "{help}its environments: {} (at {})",
                                    envs.join(", "),
                                    location(&t.source.file, t.source.line)
                                )),
                            );
                        }
                    }
                }
            }
            AnyDocument::Tenant(t) => match &t.spec.service_tier {
                Some(name) => check(
                    &[key("spec"), key("serviceTier")],
                    Kind::ServiceTier,
                    name,
                    &tiers,
                ),
                None => {
                    if let Some(p) = the_platform.filter(|p| p.spec.defaults.service_tier.is_none())
                    {
                        let pos = d.tree.value_pos(&[key("spec")]);
                        diags.push(
                            Diagnostic::new(
                                file,
                                pos.line,
                                pos.column,
                                "spec.serviceTier",
                                "tenant has no service tier, and the platform sets no default",
                            )
                            .with_help(format!(
                                "set spec.serviceTier here, or spec.defaults.serviceTier in the Platform at {}",
                                location(&p.source.file, p.source.line)
                            )),
                        );
                    }
                }
            },
        }
    }

    diags.extend(late);

    // What careplane derives from the documents.
    crate::derived::check_names(&docs, &mut diags);
    crate::derived::check_connection_budget(&docs, &mut diags);
    crate::derived::check_socket_paths(&docs, &mut diags);
    crate::derived::check_customer_keys(&docs, &mut diags);

    if !diags.is_empty() {
        return Err(finish(diags, order));
    }

    let mut platform = None;
    let mut set_tiers = Vec::new();
    let mut set_policies = Vec::new();
    let mut tenants = Vec::new();
    let mut windows = Vec::new();
    for f in files {
        for d in f.documents {
            match d.document {
                AnyDocument::Platform(p) => platform = platform.or(Some(p)),
                AnyDocument::ServiceTier(t) => set_tiers.push(t),
                AnyDocument::BackupPolicy(b) => set_policies.push(b),
                AnyDocument::Tenant(t) => tenants.push(t),
                AnyDocument::MaintenanceWindow(w) => windows.push(w),
            }
        }
    }
    match platform {
        Some(platform) => Ok(SpecSet {
            platform,
            service_tiers: set_tiers,
            backup_policies: set_policies,
            tenants,
            maintenance_windows: windows,
        }),
        // Unreachable: no platform was reported above.
        None => Err(Diagnostics(vec![Diagnostic::new(
            Path::new(""),
            0,
            0,
            "",
            "no Platform document",
        )])),
    }
}

/// Sorts problems by file (in the order given), line and column, with
/// problems of the set as a whole last, and drops exact repeats.
fn finish(mut diags: Vec<Diagnostic>, order: &[PathBuf]) -> Diagnostics {
    let rank = |d: &Diagnostic| -> (usize, usize, usize) {
        let file = if d.file.as_os_str().is_empty() {
            usize::MAX
        } else {
            order
                .iter()
                .position(|f| *f == d.file)
                .unwrap_or(usize::MAX - 1)
        };
        (file, d.line, d.column)
    };
    diags.sort_by_key(rank);
    diags.dedup();
    Diagnostics(diags)
}

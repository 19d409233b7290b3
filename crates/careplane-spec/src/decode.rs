//! A positioned YAML document to a typed [`AnyDocument`], with every problem
//! on the way reported.
//!
//! Unknown fields are found by walking the document along the JSON Schema
//! (so all of them are found, even past a type error), with `serde_ignored`
//! as a second net. Type errors come from serde through
//! `serde_path_to_error`; after each one the bad value is swapped for a
//! well-typed stand-in from the schema and deserialization runs again, so a
//! document with several type errors reports them all.

use std::collections::HashSet;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diagnostic::Diagnostic;
use crate::model::{AnyDocument, Document, Kind, Metadata, Source, API_VERSION};
use crate::schema::Nav;
use crate::suggest::{did_you_mean, help_for};
use crate::yaml::{path_string, Node, NodeValue, Pos, Seg};

/// Most deserialization attempts per typed section; each attempt reports one
/// type error, so this also caps the errors reported for one section.
const MAX_ROUNDS: usize = 32;

const TOP_FIELDS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// What could be made of one document.
pub(crate) struct Decoded {
    /// The typed document, if it had no problems at all.
    pub document: Option<AnyDocument>,
    /// The typed document, if it type-checked but broke other rules: its
    /// references are still checked against the set.
    pub checked: Option<AnyDocument>,
    /// Kind and name, when readable even though the document has problems:
    /// set-level checks then still count it, instead of reporting e.g. a
    /// reference to it as unresolved.
    pub identity: Option<(Kind, String, Pos)>,
}

pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    pub root: &'a Node,
    pub diags: &'a mut Vec<Diagnostic>,
    pub nav: &'a Nav,
}

impl Ctx<'_> {
    /// A problem with the value at `path`.
    pub fn at_value(&mut self, path: &[Seg], message: impl Into<String>, help: Option<String>) {
        let pos = self.root.value_pos(path);
        self.push(pos, path, message.into(), help);
    }

    /// A problem with the field at `path` itself (its key).
    pub fn at_key(&mut self, path: &[Seg], message: impl Into<String>, help: Option<String>) {
        let pos = self.root.key_pos(path);
        self.push(pos, path, message.into(), help);
    }

    fn push(&mut self, pos: Pos, path: &[Seg], message: String, help: Option<String>) {
        self.diags.push(
            Diagnostic::new(self.file, pos.line, pos.column, path_string(path), message)
                .with_help_opt(help),
        );
    }
}

pub(crate) fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

pub(crate) fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

pub(crate) fn decode(file: &Path, root: &Node, diags: &mut Vec<Diagnostic>) -> Decoded {
    let nav = Nav::new();
    let before = diags.len();
    let mut cx = Ctx {
        file,
        root,
        diags,
        nav: &nav,
    };
    let mut out = Decoded {
        document: None,
        checked: None,
        identity: None,
    };

    let NodeValue::Map(entries) = &root.value else {
        cx.at_value(
            &[],
            format!(
                "a spec document must be a mapping with apiVersion, kind, metadata and spec; found {}",
                root.describe()
            ),
            None,
        );
        return out;
    };
    for e in entries {
        if !TOP_FIELDS.contains(&e.key.as_str()) {
            let help = unknown_field_help(&e.key, &TOP_FIELDS);
            cx.at_key(
                &[key(&e.key)],
                format!("unknown field {}", quoted(&e.key)),
                help,
            );
        }
    }

    // apiVersion
    match root.get("apiVersion").map(|e| &e.value) {
        None => cx.at_value(
            &[key("apiVersion")],
            "missing required field \"apiVersion\"",
            Some(format!("add `apiVersion: {API_VERSION}`")),
        ),
        Some(v) => match v.as_str() {
            Some(API_VERSION) => {}
            Some(other) => {
                let help = match did_you_mean(other, [API_VERSION]) {
                    Some(s) => format!("did you mean {}?", quoted(s)),
                    None => format!(
                        "this version of careplane understands {}",
                        quoted(API_VERSION)
                    ),
                };
                cx.at_value(
                    &[key("apiVersion")],
                    format!(
                        "unsupported apiVersion {}, expected {}",
                        quoted(other),
                        quoted(API_VERSION)
                    ),
                    Some(help),
                );
            }
            None => cx.at_value(
                &[key("apiVersion")],
                format!("expected a string, found {}", v.describe()),
                Some(format!("use `apiVersion: {API_VERSION}`")),
            ),
        },
    }

    // kind
    let kind_names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let kind = match root.get("kind").map(|e| &e.value) {
        None => {
            cx.at_value(
                &[key("kind")],
                "missing required field \"kind\"",
                Some(format!("add `kind:` with one of {}", kind_names.join(", "))),
            );
            None
        }
        Some(v) => match v.as_str() {
            Some(name) => {
                let kind = Kind::from_name(name);
                if kind.is_none() {
                    let help = did_you_mean(name, kind_names.iter().copied())
                        .map(|s| format!("did you mean {}?", quoted(s)));
                    cx.at_value(
                        &[key("kind")],
                        format!(
                            "unknown kind {}, expected one of {}",
                            quoted(name),
                            kind_names.join(", ")
                        ),
                        help,
                    );
                }
                kind
            }
            None => {
                cx.at_value(
                    &[key("kind")],
                    format!("expected a string, found {}", v.describe()),
                    Some(format!("one of {}", kind_names.join(", "))),
                );
                None
            }
        },
    };

    // metadata
    let mut reported = HashSet::new();
    let metadata_schema = nav.metadata(kind.unwrap_or(Kind::Platform));
    let mut clean = true;
    let metadata: Option<Metadata> = match root.get("metadata") {
        None => {
            cx.at_value(
                &[key("metadata")],
                "missing required field \"metadata\"",
                Some("add `metadata:` with at least `name:`".into()),
            );
            None
        }
        Some(e) => {
            let path = [key("metadata")];
            unknown_fields(
                &mut cx,
                &e.value,
                metadata_schema,
                &mut path.to_vec(),
                &mut reported,
            );
            let t = typed(&mut cx, &e.value, metadata_schema, &path, &reported);
            clean &= t.clean;
            t.checked(&mut cx, |cx, m: &Metadata| {
                crate::validate::metadata(cx, kind, m)
            })
        }
    };
    if let (Some(kind), Some(name)) = (kind, root.get("metadata").and_then(|m| m.value.get("name")))
    {
        if let Some(s) = name.value.as_str() {
            out.identity = Some((kind, s.to_string(), name.value.pos));
        }
    }

    // spec
    let Some(kind) = kind else { return out };
    let Some(spec) = root.get("spec") else {
        cx.at_value(&[key("spec")], "missing required field \"spec\"", None);
        return out;
    };
    let spec_schema = nav.spec(kind);
    let path = [key("spec")];
    unknown_fields(
        &mut cx,
        &spec.value,
        spec_schema,
        &mut path.to_vec(),
        &mut reported,
    );
    let metadata = metadata.unwrap_or_else(placeholder_metadata);
    let source = Source {
        file: file.to_path_buf(),
        line: root.pos.line,
    };
    let v = &spec.value;
    let doc = match kind {
        Kind::Platform => {
            let t = typed(&mut cx, v, spec_schema, &path, &reported);
            clean &= t.clean;
            t.checked(&mut cx, crate::validate::platform).map(|spec| {
                AnyDocument::Platform(Document {
                    metadata,
                    spec,
                    source,
                })
            })
        }
        Kind::ServiceTier => {
            let t = typed(&mut cx, v, spec_schema, &path, &reported);
            clean &= t.clean;
            t.checked(&mut cx, crate::validate::service_tier)
                .map(|spec| {
                    AnyDocument::ServiceTier(Document {
                        metadata,
                        spec,
                        source,
                    })
                })
        }
        Kind::BackupPolicy => {
            let t = typed(&mut cx, v, spec_schema, &path, &reported);
            clean &= t.clean;
            t.checked(&mut cx, crate::validate::backup_policy)
                .map(|spec| {
                    AnyDocument::BackupPolicy(Document {
                        metadata,
                        spec,
                        source,
                    })
                })
        }
        Kind::Tenant => {
            let t = typed(&mut cx, v, spec_schema, &path, &reported);
            clean &= t.clean;
            t.checked(&mut cx, crate::validate::tenant).map(|spec| {
                AnyDocument::Tenant(Document {
                    metadata,
                    spec,
                    source,
                })
            })
        }
        Kind::MaintenanceWindow => {
            let t = typed(&mut cx, v, spec_schema, &path, &reported);
            clean &= t.clean;
            t.checked(&mut cx, crate::validate::maintenance_window)
                .map(|spec| {
                    AnyDocument::MaintenanceWindow(Document {
                        metadata,
                        spec,
                        source,
                    })
                })
        }
    };
    if clean {
        if cx.diags.len() == before {
            out.document = doc;
        } else {
            out.checked = doc;
        }
    }
    out
}

fn placeholder_metadata() -> Metadata {
    Metadata {
        name: String::new(),
        labels: Default::default(),
        annotations: Default::default(),
    }
}

/// "Did you mean", else the known fields; merge keys get their own word,
/// as they look valid to anyone used to YAML 1.1 tools.
fn unknown_field_help(field: &str, known: &[&str]) -> Option<String> {
    if field == "<<" {
        return Some(
            "YAML merge keys (`<<`) are not supported; repeat the fields, or use an alias (`*name`) for a whole value"
                .into(),
        );
    }
    help_for(field, known, "known fields")
}

/// Reports every field the schema does not know, with a suggestion.
fn unknown_fields(
    cx: &mut Ctx<'_>,
    node: &Node,
    schema: &'static Value,
    path: &mut Vec<Seg>,
    reported: &mut HashSet<String>,
) {
    match &node.value {
        NodeValue::Map(entries) => {
            let fields = cx.nav.closed_fields(schema);
            for e in entries {
                path.push(key(&e.key));
                match &fields {
                    Some(fields) if !fields.contains(&e.key.as_str()) => {
                        let help = unknown_field_help(&e.key, fields);
                        cx.at_key(path, format!("unknown field {}", quoted(&e.key)), help);
                        reported.insert(path_string(path));
                    }
                    _ => {
                        if let Some(child) = cx.nav.child(schema, &key(&e.key)) {
                            unknown_fields(cx, &e.value, child, path, reported);
                        }
                    }
                }
                path.pop();
            }
        }
        NodeValue::Seq(items) => {
            if let Some(child) = cx.nav.child(schema, &Seg::Index(0)) {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    unknown_fields(cx, item, child, path, reported);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

fn ignored_path(p: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
    match p {
        serde_ignored::Path::Root => {}
        serde_ignored::Path::Seq { parent, index } => {
            ignored_path(parent, out);
            out.push(Seg::Index(*index));
        }
        serde_ignored::Path::Map { parent, key } => {
            ignored_path(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent, out),
    }
}

/// The outcome of deserializing one section.
struct Typed<T> {
    /// The value; where serde failed, with stand-ins in place of bad values.
    value: Option<T>,
    /// No problem at all was found.
    clean: bool,
    /// Paths (as displayed) where stand-ins were put.
    fixed: Vec<String>,
}

impl<T> Typed<T> {
    /// Runs the rules of `check` on the value, unless serde could not produce
    /// one, and keeps only the problems outside stand-ins: rules would
    /// otherwise complain about the stand-ins themselves. Returns the value
    /// if it is a real one.
    fn checked(self, cx: &mut Ctx<'_>, check: impl FnOnce(&mut Ctx<'_>, &T)) -> Option<T> {
        let value = self.value?;
        let before = cx.diags.len();
        check(cx, &value);
        if !self.fixed.is_empty() {
            let mut i = 0;
            cx.diags.retain(|d| {
                i += 1;
                i <= before || !self.fixed.iter().any(|f| is_under(&d.path, f))
            });
            return None;
        }
        self.clean.then_some(value)
    }
}

/// Whether displayed path `path` is `prefix` or inside it.
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Deserializes `node` (found at `prefix`) as `T`, reporting each type error.
fn typed<T: DeserializeOwned>(
    cx: &mut Ctx<'_>,
    node: &Node,
    schema: &'static Value,
    prefix: &[Seg],
    reported: &HashSet<String>,
) -> Typed<T> {
    let mut value = node.to_json();
    let mut clean = true;
    let mut fixed: Vec<Vec<Seg>> = Vec::new();
    let give_up = |fixed: Vec<Vec<Seg>>| Typed {
        value: None,
        clean: false,
        fixed: fixed
            .iter()
            .map(|f| path_string(&[prefix, f].concat()))
            .collect(),
    };
    for round in 0..MAX_ROUNDS {
        let mut ignored = Vec::new();
        let result = {
            let mut on_ignored = |p: serde_ignored::Path<'_>| {
                let mut segs = Vec::new();
                ignored_path(&p, &mut segs);
                ignored.push(segs);
            };
            let de = serde_ignored::Deserializer::new(value.clone(), &mut on_ignored);
            serde_path_to_error::deserialize::<_, T>(de)
        };
        if round == 0 {
            for rel in ignored {
                let full: Vec<Seg> = prefix.iter().cloned().chain(rel).collect();
                if !reported.contains(&path_string(&full)) {
                    clean = false;
                    let name = match full.last() {
                        Some(Seg::Key(k)) => k.clone(),
                        _ => String::new(),
                    };
                    cx.at_key(&full, format!("unknown field {}", quoted(&name)), None);
                }
            }
        }
        let err = match result {
            Ok(v) => {
                return Typed {
                    value: Some(v),
                    clean: clean && fixed.is_empty(),
                    fixed: fixed
                        .iter()
                        .map(|f| path_string(&[prefix, f].concat()))
                        .collect(),
                }
            }
            Err(e) => e,
        };
        let rel: Vec<Seg> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                _ => None,
            })
            .collect();
        let message = err.inner().to_string();
        let Some((fix_path, replacement)) =
            report_type_error(cx, node, schema, prefix, &rel, &message)
        else {
            return give_up(fixed);
        };
        if fixed.contains(&fix_path) || !set_value(&mut value, &fix_path, replacement) {
            return give_up(fixed);
        }
        fixed.push(fix_path);
    }
    give_up(fixed)
}

/// Reports one serde error; returns where to put which stand-in to go on.
fn report_type_error(
    cx: &mut Ctx<'_>,
    node: &Node,
    schema: &'static Value,
    prefix: &[Seg],
    rel: &[Seg],
    message: &str,
) -> Option<(Vec<Seg>, Value)> {
    let full: Vec<Seg> = prefix.iter().chain(rel).cloned().collect();
    let field_schema = cx.nav.at(schema, rel);

    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        let mut missing = full.clone();
        missing.push(key(field));
        let mut fix = rel.to_vec();
        fix.push(key(field));
        let missing_schema = cx.nav.at(schema, &fix);
        let help = missing_schema
            .map(|s| cx.nav.variants(s))
            .filter(|v| !v.is_empty())
            .map(|v| format!("one of {}", v.join(", ")));
        // The parent mapping's position: the field is not there to point at.
        let pos = cx.root.value_pos(&full);
        cx.push(
            pos,
            &missing,
            format!("missing required field {}", quoted(field)),
            help,
        );
        let stand_in = cx.nav.placeholder(missing_schema?)?;
        return Some((fix, stand_in));
    }

    let (found_node, exact) = node.find(rel);
    let found = if exact {
        found_node.describe()
    } else {
        String::new()
    };

    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let given = rest.split('`').next().unwrap_or_default();
        let mut variants = field_schema.map(|s| cx.nav.variants(s)).unwrap_or_default();
        if variants.is_empty() {
            variants = rest
                .split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect();
        }
        let help = did_you_mean(given, variants.iter().map(String::as_str))
            .map(|s| format!("did you mean {}?", quoted(s)));
        cx.at_value(
            &full,
            format!(
                "unknown variant {}, expected one of {}",
                quoted(given),
                variants.join(", ")
            ),
            help,
        );
    } else if let Some(expected) = type_mismatch_expected(message) {
        let expected = match field_schema
            .map(|s| cx.nav.variants(s))
            .filter(|v| !v.is_empty())
        {
            Some(v) => format!("one of {}", v.join(", ")),
            None => humanize_expected(expected),
        };
        let help = conversion_help(found_node, exact, &expected);
        let found = if found.is_empty() {
            message
                .split(", expected")
                .next()
                .unwrap_or(message)
                .to_string()
        } else {
            found
        };
        cx.at_value(&full, format!("expected {expected}, found {found}"), help);
    } else {
        cx.at_value(&full, message.replace('`', "\""), None);
    }
    let stand_in = cx.nav.placeholder(field_schema?)?;
    Some((rel.to_vec(), stand_in))
}

/// The `expected ...` part of serde's "invalid type"/"invalid value" errors.
fn type_mismatch_expected(message: &str) -> Option<&str> {
    if !(message.starts_with("invalid type: ") || message.starts_with("invalid value: ")) {
        return None;
    }
    message
        .rfind(", expected ")
        .map(|i| &message[i + ", expected ".len()..])
}

fn humanize_expected(expected: &str) -> String {
    match expected {
        "u32" => format!("a whole number from 0 to {}", u32::MAX),
        "u8" | "u16" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        "path string" => "a string (a path)".into(),
        e if e.starts_with("struct ") => "a mapping".into(),
        e => e.replace('`', "\""),
    }
}

/// Hints for the common YAML typing mistakes: a number where a string is
/// wanted (quote it), a quoted number where a number is wanted.
fn conversion_help(found: &Node, exact: bool, expected: &str) -> Option<String> {
    if !exact {
        return None;
    }
    let wants_string = expected.starts_with("a string");
    let wants_number = expected.starts_with("a whole number") || expected == "a number";
    match &found.value {
        NodeValue::Int(_) | NodeValue::UInt(_) | NodeValue::Float(_) | NodeValue::Bool(_)
            if wants_string =>
        {
            let text = found.to_json().to_string();
            Some(format!(
                "quote it to make it a string: \"{}\"",
                text.trim_matches('"')
            ))
        }
        NodeValue::Str(s) if wants_number && s.trim().parse::<f64>().is_ok() => {
            Some("remove the quotes".into())
        }
        NodeValue::Null if wants_string => {
            Some("the value is empty; write one after the colon".into())
        }
        NodeValue::Str(_)
        | NodeValue::Int(_)
        | NodeValue::UInt(_)
        | NodeValue::Float(_)
        | NodeValue::Bool(_)
            if expected == "a list" =>
        {
            let text = found.to_json().to_string();
            Some(format!("write a list: [{}]", text.trim_matches('"')))
        }
        _ => None,
    }
}

/// Puts `v` at `path` inside `root` (replacing, or adding a missing field).
fn set_value(root: &mut Value, path: &[Seg], v: Value) -> bool {
    let Some((last, parent)) = path.split_last() else {
        *root = v;
        return true;
    };
    let mut cur = root;
    for seg in parent {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(c) => c,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(c) => c,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => {
            m.insert(k.clone(), v);
            true
        }
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a[*i] = v;
            true
        }
        _ => false,
    }
}

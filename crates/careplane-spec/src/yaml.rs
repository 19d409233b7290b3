//! YAML text to a tree that remembers where every key and value was.
//!
//! serde-based YAML deserializers forget positions once a value is built, yet
//! every message careplane prints needs `file:line:col`. So the text is parsed
//! with `saphyr-parser`'s event stream into [`Node`]s that keep their
//! positions; the typed model is then deserialized from a JSON copy, and paths
//! from serde's errors are looked up in the tree again.
//!
//! The YAML 1.2 core schema decides scalar types (`yes` is a string, `1.0` a
//! float). Duplicate keys and non-string keys are errors, since a spec whose
//! meaning depends on which of two keys wins is a spec nobody reviewed.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::Value;

use crate::diagnostic::Diagnostic;

/// Deepest nesting accepted. Specs need about six levels; the limit keeps
/// recursive walks (and dropping the tree) far from the stack's end on
/// hostile input.
const MAX_DEPTH: usize = 64;

/// Most nodes aliases may copy into one file, against "billion laughs".
const MAX_ALIAS_NODES: usize = 10_000;

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a path the way users write it: `spec.environments[1].kind`; keys
/// that are not plain identifiers are quoted: `metadata.labels["app/x"]`.
pub(crate) struct PathDisplay<'a>(pub &'a [Seg]);

impl fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if is_plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Key(k) => write!(f, "[{}]", Value::String(k.clone()))?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

pub(crate) fn path_string(segs: &[Seg]) -> String {
    PathDisplay(segs).to_string()
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: NodeValue,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Node {
    /// Levels of nesting below and including this node.
    fn depth(&self) -> usize {
        1 + match &self.value {
            NodeValue::Seq(items) => items.iter().map(Node::depth).max().unwrap_or(0),
            NodeValue::Map(entries) => entries.iter().map(|e| e.value.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Number of nodes in this tree, for the alias budget.
    fn size(&self) -> usize {
        1 + match &self.value {
            NodeValue::Seq(items) => items.iter().map(Node::size).sum(),
            NodeValue::Map(entries) => entries.iter().map(|e| e.value.size()).sum(),
            _ => 0,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            NodeValue::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What the value is, for messages: `a list`, `integer 5`.
    pub fn describe(&self) -> String {
        match &self.value {
            NodeValue::Null => "nothing (null)".to_string(),
            NodeValue::Bool(b) => format!("boolean {b}"),
            NodeValue::Int(i) => format!("integer {i}"),
            NodeValue::UInt(i) => format!("integer {i}"),
            NodeValue::Float(x) => format!("number {x}"),
            NodeValue::Str(s) => format!("string {}", Value::String(s.clone())),
            NodeValue::Seq(_) => "a list".to_string(),
            NodeValue::Map(_) => "a mapping".to_string(),
        }
    }

    /// The JSON equivalent, for serde. Non-finite floats (`.inf`, `.nan`)
    /// have no JSON form and become their YAML spelling as a string, which
    /// then fails to type-check with a readable message.
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::UInt(i) => Value::from(*i),
            NodeValue::Float(x) => match serde_json::Number::from_f64(*x) {
                Some(n) => Value::Number(n),
                None if x.is_nan() => Value::String(".nan".into()),
                None if *x > 0.0 => Value::String(".inf".into()),
                None => Value::String("-.inf".into()),
            },
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// The node at `path`, or the deepest one on the way there.
    pub fn find(&self, path: &[Seg]) -> (&Node, bool) {
        let mut node = self;
        for seg in path {
            let next = match (seg, &node.value) {
                (Seg::Key(k), NodeValue::Map(_)) => node.get(k).map(|e| &e.value),
                (Seg::Index(i), NodeValue::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return (node, false),
            }
        }
        (node, true)
    }

    /// Where the value at `path` starts; the nearest parent's position when
    /// the path leads nowhere (e.g. a missing field).
    pub fn value_pos(&self, path: &[Seg]) -> Pos {
        self.find(path).0.pos
    }

    /// Where the key of the field at `path` starts, for messages about the
    /// field itself (unknown, duplicate); falls back like [`Node::value_pos`].
    pub fn key_pos(&self, path: &[Seg]) -> Pos {
        if let Some((Seg::Key(k), parent)) = path.split_last() {
            let (p, found) = self.find(parent);
            if found {
                if let Some(e) = p.get(k) {
                    return e.key_pos;
                }
            }
        }
        self.value_pos(path)
    }
}

/// Parses every document of `text`. A syntax error ends the document it is
/// in; parsing resumes at the next `---` so later documents are still
/// checked. Empty documents are skipped.
pub(crate) fn parse_stream(file: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Vec<Node> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // YAML breaks lines at CR, LF and CRLF alike (so do editors); make them
    // all LF so that line numbers agree everywhere.
    let normalized;
    let text = if text.contains('\r') {
        normalized = text.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        text
    };
    let lines: Vec<usize> = line_starts(text);
    let mut docs = Vec::new();
    let mut alias_budget = MAX_ALIAS_NODES;
    // Chunk start, as a 0-based line index into `lines`.
    let mut start_line = 0;
    loop {
        let chunk = &text[lines[start_line]..];
        let mut b = Builder {
            file,
            line_offset: start_line,
            stack: Vec::new(),
            anchors: HashMap::new(),
            alias_budget: &mut alias_budget,
            docs: &mut docs,
            diags,
            pending_root: None,
        };
        let failed_at = b.run(chunk);
        let Some(err_line) = failed_at else { break };
        // Resume at the first document marker on or after the error's line,
        // but strictly after this chunk's first line, so that we progress.
        let from = err_line.max(start_line + 1);
        match (from..lines.len() - 1).find(|&l| is_document_marker(&text[lines[l]..lines[l + 1]])) {
            Some(l) => start_line = l,
            None => break,
        }
    }
    docs
}

/// Byte offsets at which lines start, plus the text's length as a sentinel.
fn line_starts(text: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    if *v.last().unwrap_or(&0) != text.len() {
        v.push(text.len());
    }
    v
}

fn is_document_marker(line: &str) -> bool {
    let rest = match line.strip_prefix("---") {
        Some(r) => r,
        None => return false,
    };
    rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n'])
}

/// The path from the root through `frames` to the child each is building.
fn path_of_frames(frames: &[Frame]) -> Vec<Seg> {
    let mut path = Vec::new();
    for frame in frames {
        match frame {
            Frame::Seq { items, .. } => path.push(Seg::Index(items.len())),
            Frame::Map { key: Some(k), .. } => {
                if let Some(s) = k.as_str() {
                    path.push(Seg::Key(s.to_string()));
                }
            }
            Frame::Map { key: None, .. } => {}
        }
    }
    path
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        key: Option<Node>,
        seen: HashMap<String, Pos>,
    },
}

struct Builder<'a> {
    file: &'a Path,
    line_offset: usize,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    alias_budget: &'a mut usize,
    docs: &'a mut Vec<Node>,
    diags: &'a mut Vec<Diagnostic>,
    /// The current document's root, pushed when the document ends cleanly.
    pending_root: Option<Node>,
}

/// Why the current chunk had to stop.
struct Abort {
    /// 0-based line index (relative to the whole text) where it happened.
    line: usize,
}

impl Builder<'_> {
    /// Feeds the parser's events into the tree. Returns the 0-based line of
    /// a fatal error, after which the caller resumes at the next document.
    fn run(&mut self, chunk: &str) -> Option<usize> {
        let mut parser = Parser::new_from_str(chunk);
        while let Some(item) = parser.next_event() {
            match item {
                Ok((event, span)) => {
                    if let Err(abort) = self.event(event, span) {
                        return Some(abort.line);
                    }
                }
                Err(e) => {
                    let m = e.marker();
                    let pos = self.pos_of(m.line(), m.col());
                    self.diags.push(
                        Diagnostic::new(self.file, pos.line, pos.column, "", format!("YAML syntax error: {}", e.info()))
                            .with_help("the rest of this document is skipped; later documents are still checked"),
                    );
                    return Some(pos.line.saturating_sub(1));
                }
            }
        }
        None
    }

    fn pos_of(&self, line: usize, col: usize) -> Pos {
        Pos {
            line: line + self.line_offset,
            column: col + 1,
        }
    }

    fn span_pos(&self, span: &Span) -> Pos {
        self.pos_of(span.start.line(), span.start.col())
    }

    fn error(&mut self, pos: Pos, path: String, message: String, help: Option<String>) {
        self.diags.push(
            Diagnostic::new(self.file, pos.line, pos.column, path, message).with_help_opt(help),
        );
    }

    fn abort(&mut self, pos: Pos, message: String) -> Abort {
        self.error(pos, String::new(), message, None);
        self.stack.clear();
        self.pending_root = None;
        Abort {
            line: pos.line.saturating_sub(1),
        }
    }

    /// The path of the node now being built, for messages.
    fn current_path(&self) -> Vec<Seg> {
        path_of_frames(&self.stack)
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), Abort> {
        let pos = self.span_pos(&span);
        match event {
            Event::StreamStart | Event::Nothing => {}
            Event::DocumentStart(_) => {
                self.stack.clear();
                self.anchors.clear();
                self.pending_root = None;
            }
            Event::DocumentEnd | Event::StreamEnd => {
                if let Some(root) = self.pending_root.take() {
                    if root.value != NodeValue::Null {
                        self.docs.push(root);
                    }
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = self.scalar(&text, style, tag.as_deref(), pos);
                self.complete(Node { pos, value }, anchor);
            }
            Event::SequenceStart(anchor, tag) => {
                self.collection_tag(tag.as_deref(), "seq", pos);
                if self.stack.len() >= MAX_DEPTH {
                    return Err(self.abort(pos, format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.collection_tag(tag.as_deref(), "map", pos);
                if self.stack.len() >= MAX_DEPTH {
                    return Err(self.abort(pos, format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    seen: HashMap::new(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => self.complete(
                    Node {
                        pos,
                        value: NodeValue::Seq(items),
                    },
                    anchor,
                ),
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => self.complete(
                    Node {
                        pos,
                        value: NodeValue::Map(entries),
                    },
                    anchor,
                ),
                None => {}
            },
            Event::Alias(id) => {
                let node = match self.anchors.get(&id) {
                    Some(n) => {
                        if self.stack.len() + n.depth() > MAX_DEPTH {
                            return Err(self.abort(
                                pos,
                                format!("aliases nest deeper than {MAX_DEPTH} levels"),
                            ));
                        }
                        let size = n.size();
                        if size > *self.alias_budget {
                            return Err(self.abort(
                                pos,
                                format!("aliases expand to more than {MAX_ALIAS_NODES} nodes in this file"),
                            ));
                        }
                        *self.alias_budget -= size;
                        let mut n = n.clone();
                        n.pos = pos;
                        n
                    }
                    None => {
                        let path = path_string(&self.current_path());
                        self.error(
                            pos,
                            path,
                            "alias refers to an anchor that is not complete here (an anchor cannot contain an alias to itself)".into(),
                            None,
                        );
                        Node {
                            pos,
                            value: NodeValue::Null,
                        }
                    }
                };
                self.complete(node, 0);
            }
        }
        Ok(())
    }

    fn collection_tag(&mut self, tag: Option<&Tag>, expected: &str, pos: Pos) {
        if let Some(tag) = tag {
            let ok = (tag.is_yaml_core_schema() && tag.suffix == expected)
                || (tag.handle.is_empty() && tag.suffix == "!");
            if !ok {
                let path = path_string(&self.current_path());
                self.error(
                    pos,
                    path,
                    format!("unsupported YAML tag {}", tag_string(tag)),
                    Some("careplane specs use plain YAML; remove the tag".into()),
                );
            }
        }
    }

    fn scalar(&mut self, text: &str, style: ScalarStyle, tag: Option<&Tag>, pos: Pos) -> NodeValue {
        let Some(tag) = tag else {
            return if style == ScalarStyle::Plain {
                resolve_plain(text)
            } else {
                NodeValue::Str(text.to_string())
            };
        };
        if tag.handle.is_empty() && tag.suffix == "!" {
            // The non-specific tag `!`: a string, whatever it looks like.
            return NodeValue::Str(text.to_string());
        }
        if tag.is_yaml_core_schema() {
            let resolved = resolve_plain(text);
            let fits = match tag.suffix.as_str() {
                "str" => return NodeValue::Str(text.to_string()),
                "null" => matches!(resolved, NodeValue::Null),
                "bool" => matches!(resolved, NodeValue::Bool(_)),
                "int" => matches!(resolved, NodeValue::Int(_) | NodeValue::UInt(_)),
                "float" => {
                    return match resolved {
                        NodeValue::Int(i) => NodeValue::Float(i as f64),
                        NodeValue::UInt(i) => NodeValue::Float(i as f64),
                        v @ NodeValue::Float(_) => v,
                        _ => {
                            self.bad_tagged(pos, tag, text);
                            NodeValue::Str(text.to_string())
                        }
                    }
                }
                _ => false,
            };
            if fits {
                return resolved;
            }
            self.bad_tagged(pos, tag, text);
            return NodeValue::Str(text.to_string());
        }
        let path = path_string(&self.current_path());
        self.error(
            pos,
            path,
            format!("unsupported YAML tag {}", tag_string(tag)),
            Some("careplane specs use plain YAML; remove the tag".into()),
        );
        if style == ScalarStyle::Plain {
            resolve_plain(text)
        } else {
            NodeValue::Str(text.to_string())
        }
    }

    fn bad_tagged(&mut self, pos: Pos, tag: &Tag, text: &str) {
        let path = path_string(&self.current_path());
        self.error(
            pos,
            path,
            format!(
                "{} is not a valid {} value",
                Value::String(text.to_string()),
                tag_string(tag)
            ),
            None,
        );
    }

    /// Hands a finished node to its parent, or makes it the document root.
    fn complete(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let parent_path = path_of_frames(&self.stack[..self.stack.len().saturating_sub(1)]);
        match self.stack.last_mut() {
            None => self.pending_root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                key: key @ None, ..
            }) => *key = Some(node),
            Some(Frame::Map {
                key: key @ Some(_),
                entries,
                seen,
                ..
            }) => {
                let Some(key) = key.take() else { return };
                match key.value {
                    NodeValue::Str(k) => {
                        if let Some(first) = seen.get(&k) {
                            let mut p = parent_path.clone();
                            p.push(Seg::Key(k.clone()));
                            let msg = format!("duplicate key {}", Value::String(k));
                            let help =
                                format!("first defined at line {}; remove one of them", first.line);
                            self.error(key.pos, path_string(&p), msg, Some(help));
                        } else {
                            seen.insert(k.clone(), key.pos);
                            entries.push(Entry {
                                key: k,
                                key_pos: key.pos,
                                value: node,
                            });
                        }
                    }
                    other => {
                        let scalar = !matches!(
                            other,
                            NodeValue::Seq(_) | NodeValue::Map(_) | NodeValue::Null
                        );
                        let described = Node {
                            pos: key.pos,
                            value: other,
                        };
                        let help = if scalar {
                            Some(format!(
                                "quote it to make it a string: \"{}\"",
                                described.to_json().to_string().trim_matches('"')
                            ))
                        } else {
                            None
                        };
                        let msg = format!(
                            "mapping keys must be strings, found {}",
                            described.describe()
                        );
                        self.error(key.pos, path_string(&parent_path), msg, help);
                    }
                }
            }
        }
    }
}

/// A tag as it would be written: `!!int`, `!local`, `!<tag:x>`.
fn tag_string(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else if tag.handle.is_empty() {
        format!("!<{}>", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    }
}

/// Types a plain (unquoted) scalar by the YAML 1.2 core schema.
pub(crate) fn resolve_plain(s: &str) -> NodeValue {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return NodeValue::Null,
        "true" | "True" | "TRUE" => return NodeValue::Bool(true),
        "false" | "False" | "FALSE" => return NodeValue::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeValue::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeValue::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeValue::Float(f64::NAN),
        _ => {}
    }
    if let Some(v) = resolve_int(s) {
        return v;
    }
    if is_float(s) {
        if let Ok(x) = s.parse::<f64>() {
            return NodeValue::Float(x);
        }
    }
    NodeValue::Str(s.to_string())
}

fn resolve_int(s: &str) -> Option<NodeValue> {
    let radix = |digits: &str, radix: u32| {
        if digits.is_empty() {
            return None;
        }
        match i64::from_str_radix(digits, radix) {
            Ok(i) => Some(NodeValue::Int(i)),
            Err(_) => u64::from_str_radix(digits, radix).ok().map(NodeValue::UInt),
        }
    };
    if let Some(d) = s.strip_prefix("0o") {
        return d
            .bytes()
            .all(|b| (b'0'..=b'7').contains(&b))
            .then(|| radix(d, 8))
            .flatten();
    }
    if let Some(d) = s.strip_prefix("0x") {
        return d
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| radix(d, 16))
            .flatten();
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    match unsigned.parse::<i64>() {
        Ok(i) => Some(NodeValue::Int(i)),
        Err(_) => match unsigned.parse::<u64>() {
            Ok(u) => Some(NodeValue::UInt(u)),
            // Too large for 64 bits: still a number, if an imprecise one.
            Err(_) => unsigned.parse::<f64>().ok().map(NodeValue::Float),
        },
    }
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - f;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<Node>, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let docs = parse_stream(Path::new("t.yaml"), text, &mut diags);
        (docs, diags)
    }

    #[test]
    fn core_schema_scalars() {
        assert_eq!(resolve_plain("~"), NodeValue::Null);
        assert_eq!(resolve_plain("True"), NodeValue::Bool(true));
        assert_eq!(resolve_plain("yes"), NodeValue::Str("yes".into()));
        assert_eq!(resolve_plain("-12"), NodeValue::Int(-12));
        assert_eq!(resolve_plain("+12"), NodeValue::Int(12));
        assert_eq!(resolve_plain("0x1f"), NodeValue::Int(31));
        assert_eq!(resolve_plain("0o17"), NodeValue::Int(15));
        assert_eq!(
            resolve_plain("18446744073709551615"),
            NodeValue::UInt(u64::MAX)
        );
        assert_eq!(resolve_plain("99.95"), NodeValue::Float(99.95));
        assert_eq!(resolve_plain("1e3"), NodeValue::Float(1000.0));
        assert_eq!(resolve_plain(".5"), NodeValue::Float(0.5));
        assert_eq!(resolve_plain("1."), NodeValue::Float(1.0));
        assert_eq!(resolve_plain("inf"), NodeValue::Str("inf".into()));
        assert_eq!(resolve_plain("1e"), NodeValue::Str("1e".into()));
        assert_eq!(resolve_plain("4h"), NodeValue::Str("4h".into()));
        assert_eq!(resolve_plain("0x"), NodeValue::Str("0x".into()));
        assert_eq!(resolve_plain("-"), NodeValue::Str("-".into()));
    }

    #[test]
    fn positions_are_one_based() {
        let (docs, diags) = parse("a: 1\nb:\n  - x\n  - 'y'\n");
        assert!(diags.is_empty());
        let root = &docs[0];
        assert_eq!(
            root.key_pos(&[Seg::Key("b".into())]),
            Pos { line: 2, column: 1 }
        );
        let p = [Seg::Key("b".into()), Seg::Index(1)];
        assert_eq!(root.value_pos(&p), Pos { line: 4, column: 5 });
        // Missing: falls back to the parent.
        let p = [Seg::Key("b".into()), Seg::Index(7)];
        assert_eq!(root.value_pos(&p), Pos { line: 3, column: 3 });
    }

    #[test]
    fn duplicate_and_non_string_keys() {
        let (docs, diags) = parse("a: 1\nb:\n  c: 1\n  c: 2\n80: x\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert_eq!((diags[0].line, diags[0].column), (4, 3));
        assert_eq!(diags[0].path, "b.c");
        assert_eq!(diags[0].message, "duplicate key \"c\"");
        assert_eq!(
            diags[0].help.as_deref(),
            Some("first defined at line 3; remove one of them")
        );
        assert_eq!((diags[1].line, diags[1].column), (5, 1));
        assert_eq!(
            diags[1].message,
            "mapping keys must be strings, found integer 80"
        );
        assert_eq!(
            diags[1].help.as_deref(),
            Some("quote it to make it a string: \"80\"")
        );
    }

    #[test]
    fn syntax_error_skips_to_next_document() {
        let (docs, diags) = parse("a: 1\n---\nb: [1, 2\n---\nc: 3\n---\n");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].line, 4);
        assert!(
            diags[0].message.starts_with("YAML syntax error: "),
            "{}",
            diags[0].message
        );
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[1].get("c").unwrap().key_pos,
            Pos { line: 5, column: 1 }
        );
    }

    #[test]
    fn carriage_returns_break_lines() {
        let (docs, diags) = parse("a: 1\r\nb: 2\rc: [\r---\rd: 4\n");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].line, 4);
        assert_eq!(docs.len(), 1);
        assert_eq!(
            docs[0].get("d").unwrap().key_pos,
            Pos { line: 5, column: 1 }
        );
        let (docs, diags) = parse("a: 1\r\nb: 2\rc: 3\n");
        assert!(diags.is_empty());
        assert_eq!(
            docs[0].get("b").unwrap().key_pos,
            Pos { line: 2, column: 1 }
        );
        assert_eq!(
            docs[0].get("c").unwrap().key_pos,
            Pos { line: 3, column: 1 }
        );
    }

    #[test]
    fn aliases_are_copied_and_bounded() {
        let (docs, diags) = parse("a: &x {k: v}\nb: *x\n");
        assert!(diags.is_empty());
        assert_eq!(
            docs[0].to_json(),
            serde_json::json!({"a": {"k": "v"}, "b": {"k": "v"}})
        );

        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g"])
        {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let (_, diags) = parse(&bomb);
        assert!(
            diags.iter().any(|d| d.message.contains("aliases expand")),
            "{diags:?}"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let (docs, diags) = parse(&text);
        assert!(docs.is_empty());
        assert!(diags[0].message.contains("nesting deeper"), "{diags:?}");
    }

    #[test]
    fn tags() {
        let (docs, diags) = parse("a: !!str 12\nb: ! 13\nc: !!int x\nd: !custom y\n");
        assert_eq!(
            docs[0].to_json(),
            serde_json::json!({"a": "12", "b": "13", "c": "x", "d": "y"})
        );
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert_eq!(diags[0].message, "\"x\" is not a valid !!int value");
        assert_eq!(diags[0].path, "c");
        assert_eq!(diags[1].message, "unsupported YAML tag !custom");
    }

    #[test]
    fn path_display_quotes_odd_keys() {
        let p = [
            Seg::Key("metadata".into()),
            Seg::Key("labels".into()),
            Seg::Key("app.kubernetes.io/name".into()),
        ];
        assert_eq!(
            path_string(&p),
            "metadata.labels[\"app.kubernetes.io/name\"]"
        );
        let p = [
            Seg::Key("spec".into()),
            Seg::Key("environments".into()),
            Seg::Index(1),
            Seg::Key("kind".into()),
        ];
        assert_eq!(path_string(&p), "spec.environments[1].kind");
    }
}

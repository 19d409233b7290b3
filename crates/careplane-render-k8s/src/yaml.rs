//! YAML that Kubernetes reads the way careplane meant it.
//!
//! Kubernetes tools read YAML 1.1 (go-yaml v2 behind `sigs.k8s.io/yaml`),
//! where `on`, `off`, `yes`, `no`, `y`, `n`, `12:30` and `1_000` are not
//! strings. The maintained serde emitters (`serde_yaml_ng`, `serde_norway`)
//! quote only what YAML 1.2 would misread, so a PostgreSQL parameter
//! `log_connections: on` would reach CloudNativePG as a boolean and be
//! refused. So this module is a serde `Serializer` that writes block-style
//! YAML directly (struct field order kept, no intermediate value tree: a
//! platform of 10,000 environments is 280 MB of YAML) and quotes every
//! string that either YAML version could read as anything but that string.
//! `tests/tools.rs` checks the whole example tree against PyYAML, a YAML 1.1
//! reader; reading back is `serde_yaml_ng`'s job.

use std::fmt::{self, Write as _};

use serde::ser::{self, Serialize};

pub fn to_string<T: Serialize>(obj: &T) -> String {
    to_string_after("", obj)
}

/// `prefix` (a comment header) and the document, in one buffer.
pub fn to_string_after<T: Serialize>(prefix: &str, obj: &T) -> String {
    thread_local! {
        static BUF: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
    }
    // The text is built in a buffer each thread reuses, then copied once
    // into a string of its exact size: growing a fresh string per file, or
    // keeping a large one, made allocation most of the time of a large
    // render (glibc consolidates its free lists on every large request).
    let mut out = BUF.take();
    out.clear();
    out.push_str(prefix);
    let mut e = Emitter { out };
    obj.serialize(Value {
        e: &mut e,
        pos: Pos::Top,
    })
    .expect("careplane's objects are maps, lists, strings, numbers and booleans");
    let text = String::from(e.out.as_str());
    BUF.set(e.out);
    text
}

#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, Error>;

struct Emitter {
    out: String,
}

impl Emitter {
    fn pad(&mut self, mut indent: usize) {
        const SPACES: &str = "                                ";
        while indent > 0 {
            let n = indent.min(SPACES.len());
            self.out.push_str(&SPACES[..n]);
            indent -= n;
        }
    }
}

/// Where a value starts: the document's top, after `key:`, or after `-`;
/// `indent` is the column of that key or dash.
#[derive(Clone, Copy)]
enum Pos {
    Top,
    AfterKey(usize),
    AfterDash(usize),
}

impl Pos {
    /// Column of the lines a block scalar or nested mapping continues on.
    fn inner(self) -> usize {
        match self {
            Pos::Top => 0,
            Pos::AfterKey(i) | Pos::AfterDash(i) => i + 2,
        }
    }
}

struct Value<'a> {
    e: &'a mut Emitter,
    pos: Pos,
}

impl Value<'_> {
    fn scalar(self, text: &str) -> Result {
        if !matches!(self.pos, Pos::Top) {
            self.e.out.push(' ');
        }
        self.e.out.push_str(text);
        self.e.out.push('\n');
        Ok(())
    }
}

fn unsupported(what: &str) -> Error {
    Error(format!("{what} cannot be written as Kubernetes YAML"))
}

impl<'a> ser::Serializer for Value<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = ser::Impossible<(), Error>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Map<'a>;
    type SerializeStructVariant = ser::Impossible<(), Error>;

    fn serialize_bool(self, v: bool) -> Result {
        self.scalar(if v { "true" } else { "false" })
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result {
        self.scalar(&v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result {
        self.scalar(&v.to_string())
    }
    fn serialize_f32(self, v: f32) -> Result {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result {
        if !v.is_finite() {
            return Err(unsupported("a non-finite number"));
        }
        // `{:?}` keeps a `.0` on whole numbers, so it reads back as a float.
        self.scalar(&format!("{v:?}"))
    }
    fn serialize_char(self, v: char) -> Result {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result {
        let Value { e, pos } = self;
        if !matches!(pos, Pos::Top) {
            e.out.push(' ');
        }
        // Most strings are plain (names, labels, quantities), and a plain
        // one has no line break: decide that first, in one pass.
        if plain_safe(v) {
            e.out.push_str(v);
            e.out.push('\n');
        } else if let Some(header) = block_header(v) {
            e.out.push_str(header);
            e.out.push('\n');
            let indent = pos.inner();
            for line in v.split_inclusive('\n') {
                if line != "\n" {
                    e.pad(indent);
                }
                e.out.push_str(line);
            }
            if !v.ends_with('\n') {
                e.out.push('\n');
            }
        } else {
            write_quoted(&mut e.out, v);
            e.out.push('\n');
        }
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result {
        Err(unsupported("bytes"))
    }
    fn serialize_none(self) -> Result {
        self.scalar("null")
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result {
        self.scalar("null")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result {
        self.scalar("null")
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, value: &T) -> Result {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result {
        Err(unsupported("an enum variant with data"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>> {
        Ok(Seq {
            e: self.e,
            pos: self.pos,
            count: 0,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(unsupported("an enum variant with data"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Map<'a>> {
        Ok(Map {
            e: self.e,
            pos: self.pos,
            count: 0,
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Map<'a>> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(unsupported("an enum variant with data"))
    }
}

/// A list being written; nothing is written until its first item, so an
/// empty one becomes `[]`.
struct Seq<'a> {
    e: &'a mut Emitter,
    pos: Pos,
    count: usize,
}

impl Seq<'_> {
    fn item<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        // Kubernetes' own style: a list under a key is not indented.
        let indent = match self.pos {
            Pos::Top => 0,
            Pos::AfterKey(i) => i,
            Pos::AfterDash(i) => i + 2,
        };
        if self.count == 0 && !matches!(self.pos, Pos::Top) {
            self.e.out.push('\n');
        }
        self.count += 1;
        self.e.pad(indent);
        self.e.out.push('-');
        value.serialize(Value {
            e: self.e,
            pos: Pos::AfterDash(indent),
        })
    }

    fn finish(self) -> Result {
        if self.count == 0 {
            return Value {
                e: self.e,
                pos: self.pos,
            }
            .scalar("[]");
        }
        Ok(())
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        self.item(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        self.item(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        self.item(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

/// A mapping (or struct) being written; nothing is written until its first
/// entry, so an empty one becomes `{}` (and a flattened struct just adds
/// entries).
struct Map<'a> {
    e: &'a mut Emitter,
    pos: Pos,
    count: usize,
}

impl Map<'_> {
    fn start_entry(&mut self) {
        let first = self.count == 0;
        self.count += 1;
        match self.pos {
            Pos::Top => {}
            Pos::AfterKey(i) => {
                if first {
                    self.e.out.push('\n');
                }
                self.e.pad(i + 2);
            }
            // The first entry shares the dash's line.
            Pos::AfterDash(i) => {
                if first {
                    self.e.out.push(' ');
                } else {
                    self.e.pad(i + 2);
                }
            }
        }
    }

    fn key_indent(&self) -> usize {
        match self.pos {
            Pos::Top => 0,
            Pos::AfterKey(i) | Pos::AfterDash(i) => i + 2,
        }
    }

    fn finish(self) -> Result {
        if self.count == 0 {
            return Value {
                e: self.e,
                pos: self.pos,
            }
            .scalar("{}");
        }
        Ok(())
    }
}

impl ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result {
        self.start_entry();
        key.serialize(Key {
            out: &mut self.e.out,
        })?;
        self.e.out.push(':');
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        let indent = self.key_indent();
        value.serialize(Value {
            e: self.e,
            pos: Pos::AfterKey(indent),
        })
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeStruct for Map<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result {
        self.start_entry();
        write_string(&mut self.e.out, key);
        self.e.out.push(':');
        let indent = self.key_indent();
        value.serialize(Value {
            e: self.e,
            pos: Pos::AfterKey(indent),
        })
    }
    fn end(self) -> Result {
        self.finish()
    }
}

/// Mapping keys: strings (quoted like values) and numbers only.
struct Key<'a> {
    out: &'a mut String,
}

impl ser::Serializer for Key<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = ser::Impossible<(), Error>;
    type SerializeTuple = ser::Impossible<(), Error>;
    type SerializeTupleStruct = ser::Impossible<(), Error>;
    type SerializeTupleVariant = ser::Impossible<(), Error>;
    type SerializeMap = ser::Impossible<(), Error>;
    type SerializeStruct = ser::Impossible<(), Error>;
    type SerializeStructVariant = ser::Impossible<(), Error>;

    fn serialize_str(self, v: &str) -> Result {
        // Never a block: multi-line keys are double-quoted.
        write_string(self.out, v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.serialize_u64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, value: &T) -> Result {
        value.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> Result {
        Err(unsupported("a boolean mapping key"))
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_u8(self, v: u8) -> Result {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.serialize_u64(v.into())
    }
    fn serialize_f32(self, _: f32) -> Result {
        Err(unsupported("a float mapping key"))
    }
    fn serialize_f64(self, _: f64) -> Result {
        Err(unsupported("a float mapping key"))
    }
    fn serialize_char(self, v: char) -> Result {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result {
        Err(unsupported("a bytes mapping key"))
    }
    fn serialize_none(self) -> Result {
        Err(unsupported("a null mapping key"))
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result {
        Err(unsupported("a null mapping key"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result {
        Err(unsupported("a null mapping key"))
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result {
        Err(unsupported("a complex mapping key"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(unsupported("a complex mapping key"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
        Err(unsupported("a complex mapping key"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(unsupported("a complex mapping key"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(unsupported("a complex mapping key"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
        Err(unsupported("a complex mapping key"))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
        Err(unsupported("a complex mapping key"))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(unsupported("a complex mapping key"))
    }
}

/// Multi-line text as a literal block (`|`, `|-` without a final newline,
/// `|+` with several), when a block can hold it exactly.
fn block_header(s: &str) -> Option<&'static str> {
    if !s.contains('\n')
        || s.starts_with([' ', '\n'])
        || s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return None;
    }
    Some(if s.ends_with("\n\n") {
        "|+"
    } else if s.ends_with('\n') {
        "|"
    } else {
        "|-"
    })
}

fn write_string(out: &mut String, s: &str) {
    if plain_safe(s) {
        out.push_str(s);
    } else {
        write_quoted(out, s);
    }
}

fn write_quoted(out: &mut String, s: &str) {
    if s.chars().any(char::is_control) {
        // JSON's escapes are valid in a YAML double-quoted scalar.
        out.push_str(&serde_json::to_string(s).expect("a string serializes"));
    } else {
        out.push('\'');
        for (i, part) in s.split('\'').enumerate() {
            if i > 0 {
                out.push_str("''");
            }
            out.push_str(part);
        }
        out.push('\'');
    }
}

/// Words YAML 1.1 or 1.2 read as booleans or null, whatever their case.
const SPECIAL: &[&str] = &[
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
];

/// Whether `s` may be written without quotes and read back as the same
/// string by YAML 1.1 and 1.2 readers. Deliberately narrow: anything else is
/// quoted, which is always correct.
fn plain_safe(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(&first) = b.first() else {
        return false;
    };
    // One table look-up per byte: this loop runs over every string of a
    // large render.
    const ALLOWED: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b'@' | b'=' | b'+' | b',' | b' '
                );
            c += 1;
        }
        t
    };
    let mut prev = 0u8;
    for &c in b {
        if !ALLOWED[c as usize] || (prev == b':' && c == b' ') {
            return false;
        }
        prev = c;
    }
    if s.ends_with([' ', ':'])
        || (s.len() <= 5 && SPECIAL.iter().any(|w| w.eq_ignore_ascii_case(s)))
    {
        return false;
    }
    match first {
        c if c.is_ascii_alphabetic() || c == b'/' || c == b'_' => true,
        // Quantities such as 20Gi or 500m; never numbers, times or dates.
        c if c.is_ascii_digit() => {
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            digits < b.len() && b[digits..].iter().all(u8::is_ascii_alphabetic)
        }
        // `-c`, `--no-http`; not `-1` or `-.inf`.
        b'-' => {
            b.get(1)
                .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'-')
                && b.get(2) != Some(&b' ')
        }
        // Relative paths; not `.inf` or `.nan`.
        b'.' => b.get(1).is_some_and(|&c| c == b'.' || c == b'/'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    fn round_trip(s: &str) {
        let m: BTreeMap<String, Vec<String>> = [(s.to_string(), vec![s.to_string()])].into();
        let text = to_string(&m);
        let back: BTreeMap<String, Vec<String>> =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{s:?} → {text}: {e}"));
        assert_eq!(back, m, "{s:?} → {text}");
    }

    #[test]
    fn strings_that_look_like_something_else_are_quoted() {
        for s in [
            "on",
            "off",
            "On",
            "YES",
            "no",
            "y",
            "N",
            "true",
            "False",
            "null",
            "~",
            "",
            " ",
            "1e3",
            "0x1f",
            "012",
            "1_000",
            "12:30",
            "2026-12-01",
            "-1",
            "-.inf",
            ".inf",
            ".NaN",
            "-",
            "- x",
            "a: b",
            "#x",
            "x #y",
            " lead",
            "trail ",
            "key:",
            "{{ .x }}",
            "'q'",
            "\"d\"",
            "a\tb",
            "[x]",
            "*alias",
            "&anchor",
            "!tag",
            "%x",
            "@x",
            "`x`",
            "|",
            ">",
        ] {
            assert!(!plain_safe(s), "{s:?} must be quoted");
            round_trip(s);
        }
    }

    #[test]
    fn ordinary_values_stay_plain() {
        for s in [
            "odoo-web",
            "20Gi",
            "500m",
            "-c",
            "--no-http",
            "../../bases/namespace",
            "./postgres/shared",
            "/run/odoo/odoo.conf",
            "app.kubernetes.io/name",
            "scram-sha-256",
            "C.UTF-8",
            "docker.io/library/odoo:18.0@sha256:abc",
            "ServerSideApply=true",
            "v1",
            "base,contacts",
        ] {
            assert!(plain_safe(s), "{s:?} should be plain");
            round_trip(s);
        }
    }

    #[test]
    fn text_blocks_round_trip() {
        for s in [
            "a\nb\n",
            "a\nb",
            "a\n\n",
            "a\n  indented\n\nlast\n",
            " lead\nx\n",
            "\nfirst empty\n",
            "tab\there\n",
            "bell\u{7}\n",
            "x\r\ny\n",
        ] {
            round_trip(s);
        }
        let m: BTreeMap<&str, &str> = [("odoo.conf", "[options]\nx = 1\n")].into();
        assert_eq!(to_string(&m), "odoo.conf: |\n  [options]\n  x = 1\n");
    }

    #[test]
    fn layout_is_kubernetes_style() {
        #[derive(Serialize)]
        struct S {
            name: &'static str,
            list: Vec<BTreeMap<&'static str, u32>>,
            empty: Vec<u32>,
            nested: BTreeMap<&'static str, Vec<&'static str>>,
        }
        let s = S {
            name: "x",
            list: vec![[("a", 1), ("b", 2)].into()],
            empty: vec![],
            nested: [("k", vec!["v"])].into(),
        };
        assert_eq!(
            to_string(&s),
            "name: x\nlist:\n- a: 1\n  b: 2\nempty: []\nnested:\n  k:\n  - v\n"
        );
    }

    #[test]
    fn every_shape_reads_back_as_written() {
        #[derive(Serialize)]
        struct Inner {
            a: u32,
            #[serde(flatten)]
            rest: BTreeMap<&'static str, &'static str>,
        }
        #[derive(Serialize)]
        struct Outer {
            nested: Vec<Vec<&'static str>>,
            maps: Vec<BTreeMap<&'static str, Vec<u32>>>,
            empty_maps: Vec<BTreeMap<&'static str, u32>>,
            inner: Inner,
            flag: bool,
            text: Vec<&'static str>,
        }
        let v = Outer {
            nested: vec![vec!["a", "b"], vec![]],
            maps: vec![[("k", vec![1, 2]), ("l", vec![])].into()],
            empty_maps: vec![BTreeMap::new()],
            inner: Inner {
                a: 1,
                rest: [("b", "on")].into(),
            },
            flag: true,
            text: vec!["line 1\nline 2\n", "x"],
        };
        let text = to_string(&v);
        let back: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, serde_json::to_value(&v).unwrap(), "{text}");
    }
}

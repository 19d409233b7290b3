//! YAML that Kubernetes reads the way careplane meant it.
//!
//! Kubernetes tools read YAML 1.1 (go-yaml v2 behind `sigs.k8s.io/yaml`),
//! where `on`, `off`, `yes`, `no`, `y`, `n`, `12:30` and `1_000` are not
//! strings. The maintained serde emitters (`serde_yaml_ng`, `serde_norway`)
//! quote only what YAML 1.2 would misread, so a PostgreSQL parameter
//! `log_connections: on` would reach CloudNativePG as a boolean and be
//! refused. So serialization goes through `serde_yaml_ng::Value` (which keeps
//! struct field order) and this small emitter writes it, quoting every string
//! that either YAML version could read as anything but that string.
//! `tests/yaml11.rs` checks the whole example tree against PyYAML, a YAML 1.1
//! reader.

use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};

pub fn to_string<T: Serialize>(obj: &T) -> String {
    let v = serde_yaml_ng::to_value(obj)
        .expect("plain structs of strings, numbers and maps with string keys serialize");
    let mut out = String::new();
    match &v {
        Value::Mapping(m) if !m.is_empty() => map(m, 0, false, &mut out),
        Value::Sequence(s) if !s.is_empty() => seq(s, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn pad(indent: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn map(m: &Mapping, indent: usize, first_padded: bool, out: &mut String) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !first_padded {
            pad(indent, out);
        }
        out.push_str(&scalar(k));
        out.push(':');
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                out.push('\n');
                map(m, indent + 2, false, out);
            }
            // Kubernetes' own style: a list under a key is not indented.
            Value::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                seq(s, indent, out);
            }
            other => {
                out.push(' ');
                value_inline(other, indent + 2, out);
            }
        }
    }
}

fn seq(s: &[Value], indent: usize, out: &mut String) {
    for item in s {
        pad(indent, out);
        out.push('-');
        match item {
            Value::Mapping(m) if !m.is_empty() => {
                out.push(' ');
                map(m, indent + 2, true, out);
            }
            Value::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                seq(s, indent + 2, out);
            }
            other => {
                out.push(' ');
                value_inline(other, indent + 2, out);
            }
        }
    }
}

/// A scalar (or empty collection) after `key: ` or `- `, with its newline.
fn value_inline(v: &Value, indent: usize, out: &mut String) {
    if let Value::String(s) = v {
        if let Some(header) = block_header(s) {
            out.push_str(header);
            out.push('\n');
            for line in s.split_inclusive('\n') {
                if line != "\n" {
                    pad(indent, out);
                }
                out.push_str(line);
            }
            if !s.ends_with('\n') {
                out.push('\n');
            }
            return;
        }
    }
    out.push_str(&scalar(v));
    out.push('\n');
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

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Sequence(_) => "[]".into(),
        Value::Mapping(_) => "{}".into(),
        Value::Tagged(_) => unreachable!("careplane's objects carry no YAML tags"),
    }
}

fn string(s: &str) -> String {
    if plain_safe(s) {
        s.to_string()
    } else if s.chars().any(char::is_control) {
        // JSON's escapes are valid in a YAML double-quoted scalar.
        serde_json::to_string(s).expect("a string serializes")
    } else {
        format!("'{}'", s.replace('\'', "''"))
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
    let allowed = |c: u8| c.is_ascii_alphanumeric() || b"-_./:@=+, ".contains(&c);
    if !b.iter().all(|&c| allowed(c))
        || s.ends_with([' ', ':'])
        || s.contains(": ")
        || SPECIAL.contains(&s.to_ascii_lowercase().as_str())
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
}

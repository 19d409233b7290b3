//! Odoo-aware request filtering: which paths are never forwarded, and which
//! JSON-RPC bodies call the `db` service. The lists are
//! `careplane_model::ingress_policy`'s, shared with the Kubernetes target.

use std::borrow::Cow;

use careplane_model::ingress_policy as policy;

/// The path as Odoo's router (Werkzeug) will see it: percent-decoded once,
/// repeated slashes collapsed, `.` and `..` segments resolved. `None` when it
/// cannot be decoded (invalid UTF-8, NUL), which is refused.
pub fn normalize_path(raw: &str) -> Option<Cow<'_, str>> {
    if is_normal(raw) {
        return Some(Cow::Borrowed(raw));
    }
    let decoded = percent_decode(raw.as_bytes())?;
    let s = String::from_utf8(decoded).ok()?;
    if s.contains('\0') {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in s.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let mut path = String::with_capacity(s.len() + 1);
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || (s.ends_with('/') && !out.is_empty()) {
        path.push('/');
    }
    Some(Cow::Owned(path))
}

/// Whether `raw` is already what [`normalize_path`] would make of it (most
/// request paths are), so the decoding and rebuilding can be skipped: it
/// starts with `/`, has no `%` escape, no empty segment but a trailing one,
/// and no `.` or `..` segment.
fn is_normal(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    if rest.contains('%') || rest.contains('\0') {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
    }
    true
}

fn percent_decode(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = b.get(i + 1).copied().and_then(hex);
            let lo = b.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                // Werkzeug keeps a malformed escape as it is.
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

pub use careplane_model::ingress_policy::{blocked_path, under};

/// `/jsonrpc` dispatches to Odoo's services by `params.service`; its body has
/// to be read to block `db`.
pub fn is_jsonrpc(path: &str) -> bool {
    path.strip_suffix('/').unwrap_or(path) == policy::JSONRPC_PATH
}

/// Login attempts, which get the stricter rate limit.
pub fn is_login(method: &http::Method, path: &str) -> bool {
    (method == http::Method::POST && path.strip_suffix('/').unwrap_or(path) == policy::LOGIN_FORM)
        || under(path, policy::LOGIN_JSON)
}

#[derive(Debug, PartialEq, Eq)]
pub enum JsonRpcVerdict {
    Allow,
    /// Calls the `db` service (alone or in a batch).
    DbService,
    /// Not JSON serde can read: refused, since Odoo's parser accepts more
    /// (`NaN`, UTF-16) and the difference must not let a call through.
    Unparsable,
}

pub fn inspect_jsonrpc(body: &[u8]) -> JsonRpcVerdict {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return JsonRpcVerdict::Unparsable;
    };
    let calls_db = |v: &serde_json::Value| {
        v.get("params")
            .and_then(|p| p.get("service"))
            .and_then(|s| s.as_str())
            .is_some_and(|s| {
                s.trim()
                    .eq_ignore_ascii_case(policy::JSONRPC_BLOCKED_SERVICE)
            })
    };
    let db = match &value {
        serde_json::Value::Array(calls) => calls.iter().any(calls_db),
        other => calls_db(other),
    };
    if db {
        JsonRpcVerdict::DbService
    } else {
        JsonRpcVerdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_and_dotted_paths_are_normalized_before_matching() {
        for p in [
            "/web/database/manager",
            "/web/database",
            "/web/database/",
            "//web//database/list",
            "/web/%64atabase/manager",
            "/web%2Fdatabase/backup",
            "/web/./database/drop",
            "/foo/../web/database/restore",
            "/../web/database",
            "/xmlrpc/2/db",
            "/xmlrpc/db",
            "/xmlrpc/%32/db",
        ] {
            let n = normalize_path(p).unwrap();
            assert!(blocked_path(&n).is_some(), "{p} -> {n} not blocked");
        }
        for p in [
            "/web/databases",
            "/web/login",
            "/xmlrpc/2/object",
            "/xmlrpc/2/dbx",
            "/",
        ] {
            let n = normalize_path(p).unwrap();
            assert!(blocked_path(&n).is_none(), "{p} -> {n} blocked");
        }
        assert_eq!(normalize_path("/a%00b"), None);
        assert_eq!(normalize_path("/a%ffb"), None);
        assert_eq!(normalize_path("/100%").unwrap(), "/100%");
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b/");
        // Already normal paths are returned as they are; the rest match
        // what the full decoding makes of them.
        for p in [
            "/",
            "/web",
            "/web/",
            "/a/b/c",
            "/a.b/c..d/.e",
            "//",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/.",
            "/..",
            "/a/.",
            "/a/..",
            "/a/..b",
            "/%2e%2e/x",
            "*",
            "",
            "a/b",
            "/a/b//",
        ] {
            let fast = is_normal(p);
            let got = normalize_path(p).unwrap();
            assert_eq!(matches!(got, Cow::Borrowed(_)), fast, "{p}");
            if fast {
                assert_eq!(got, p);
            }
        }
        assert_eq!(normalize_path("/a/b//").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/a/..b").unwrap(), "/a/..b");
        assert_eq!(normalize_path("*").unwrap(), "/*");
    }

    #[test]
    fn jsonrpc_db_service_is_found_alone_and_in_a_batch() {
        let db = br#"{"jsonrpc":"2.0","method":"call","params":{"service":"db","method":"list","args":[]}}"#;
        assert_eq!(inspect_jsonrpc(db), JsonRpcVerdict::DbService);
        let batch = br#"[{"params":{"service":"common","method":"version"}},{"params":{"service":"db","method":"drop"}}]"#;
        assert_eq!(inspect_jsonrpc(batch), JsonRpcVerdict::DbService);
        let ok = br#"{"params":{"service":"object","method":"execute_kw","args":["db"]}}"#;
        assert_eq!(inspect_jsonrpc(ok), JsonRpcVerdict::Allow);
        // Later duplicate keys win in Python's json and in serde_json alike.
        let dup = br#"{"params":{"service":"common","service":"db"}}"#;
        assert_eq!(inspect_jsonrpc(dup), JsonRpcVerdict::DbService);
        assert_eq!(
            inspect_jsonrpc(br#"{"params":{"service":"db"},"x":NaN}"#),
            JsonRpcVerdict::Unparsable
        );
    }

    #[test]
    fn login_paths() {
        assert!(is_login(&http::Method::POST, "/web/login"));
        assert!(!is_login(&http::Method::GET, "/web/login"));
        assert!(is_login(&http::Method::POST, "/web/session/authenticate"));
    }
}

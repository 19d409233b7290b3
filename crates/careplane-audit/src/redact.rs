//! Redaction of events before they are encoded: values under secret-looking
//! keys, and every occurrence of a known secret anywhere.

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::event::{Event, Outcome};

pub const REDACTED: &str = "[redacted]";

/// The secrets that must never reach the log (e.g. every secret of the
/// vault). Debug shows how many, never which.
#[derive(Clone, Default)]
pub struct KnownSecrets {
    secrets: Vec<SecretString>,
}

impl std::fmt::Debug for KnownSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KnownSecrets({} secrets)", self.secrets.len())
    }
}

impl KnownSecrets {
    pub fn new(secrets: impl IntoIterator<Item = SecretString>) -> Self {
        let mut k = KnownSecrets::default();
        for s in secrets {
            k.add(s);
        }
        k
    }

    /// Empty secrets are ignored: they occur everywhere and protect nothing.
    pub fn add(&mut self, secret: SecretString) {
        if !secret.expose_secret().is_empty() {
            self.secrets.push(secret);
        }
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(|s| s.expose_secret())
    }

    fn any_in(&self, s: &str) -> bool {
        self.iter().any(|sec| s.contains(sec))
    }

    /// The replacement text, unless a secret hides inside it.
    fn marker(&self) -> &'static str {
        if self.any_in(REDACTED) {
            ""
        } else {
            REDACTED
        }
    }

    /// `s` with every (also overlapping) occurrence of a known secret cut
    /// out, or None when it has none.
    pub fn redact_str(&self, s: &str) -> Option<String> {
        let mut ranges = Vec::new();
        for sec in self.iter() {
            let mut from = 0;
            while let Some(i) = s[from..].find(sec) {
                let start = from + i;
                ranges.push((start, start + sec.len()));
                from = start + s[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if ranges.is_empty() {
            return None;
        }
        ranges.sort_unstable();
        let marker = self.marker();
        let mut out = String::with_capacity(s.len());
        let mut pos = 0;
        let mut i = 0;
        while i < ranges.len() {
            let (start, mut end) = ranges[i];
            while i + 1 < ranges.len() && ranges[i + 1].0 <= end {
                end = end.max(ranges[i + 1].1);
                i += 1;
            }
            out.push_str(&s[pos..start]);
            out.push_str(marker);
            pos = end;
            i += 1;
        }
        out.push_str(&s[pos..]);
        // The text around a cut and the marker can spell a secret again.
        if self.any_in(&out) {
            out = marker.to_string();
        }
        Some(out)
    }

    fn redact_string(&self, s: &mut String) {
        if let Some(r) = self.redact_str(s) {
            *s = r;
        }
    }

    fn redact_opt(&self, s: &mut Option<String>) {
        if let Some(s) = s {
            self.redact_string(s);
        }
    }
}

/// Keys whose values are secret whatever they hold. Matched
/// case-insensitively with `-` read as `_`.
const SECRET_KEY_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "private_key",
    "privatekey",
    "api_key",
    "apikey",
    "access_key",
    "authorization",
    "cookie",
    "totp",
];
const SECRET_KEYS: &[&str] = &["key", "pin", "otp", "pwd"];

pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('-', "_");
    SECRET_KEYS.contains(&k.as_str()) || SECRET_KEY_PARTS.iter().any(|p| k.contains(p))
}

/// Redacts a JSON value in place: values under secret-looking keys become
/// `"[redacted]"`, known secrets are cut out of strings, numbers whose
/// digits contain one become `"[redacted]"`, and object members whose key
/// contains one are dropped.
pub fn redact(value: &mut Value, known: &KnownSecrets) {
    match value {
        Value::String(s) => known.redact_string(s),
        Value::Number(n) => {
            if known.any_in(&n.to_string()) {
                *value = Value::String(known.marker().into());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, known)),
        Value::Object(map) => {
            map.retain(|k, _| !known.any_in(k));
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) {
                    *v = Value::String(known.marker().into());
                } else {
                    redact(v, known);
                }
            }
        }
        Value::Bool(_) | Value::Null => {
            if known.any_in(&value.to_string()) {
                *value = Value::String(known.marker().into());
            }
        }
    }
}

/// Redacts every string of an event (what `append` does before encoding).
pub fn redact_event(event: &mut Event, known: &KnownSecrets) {
    let a = &mut event.actor;
    known.redact_string(&mut a.id);
    known.redact_string(&mut a.auth);
    if let Some(e) = &mut a.elevation {
        known.redact_string(&mut e.role);
        known.redact_opt(&mut e.approved_by);
        known.redact_string(&mut e.expires);
        known.redact_opt(&mut e.reason);
    }
    known.redact_string(&mut event.action);
    known.redact_string(&mut event.target);
    known.redact_opt(&mut event.tenant);
    let Outcome { message, .. } = &mut event.result;
    known.redact_opt(message);
    known.redact_opt(&mut event.operation);
    redact(&mut event.parameters, known);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known(s: &[&str]) -> KnownSecrets {
        KnownSecrets::new(s.iter().map(|s| SecretString::from(s.to_string())))
    }

    #[test]
    fn secret_keys_and_known_values_are_redacted() {
        let k = known(&["hunter2-very-secret", "424242"]);
        let mut v = json!({
            "dbPassword": "anything",
            "API-Key": {"nested": 1},
            "url": "postgres://u:hunter2-very-secret@db/x",
            "list": ["hunter2-very-secret", 424242, "ok"],
            "key_prefix_note": "stmarys:prod:",
            "hunter2-very-secret": "key holds the secret",
        });
        redact(&mut v, &k);
        assert_eq!(
            v,
            json!({
                "dbPassword": "[redacted]",
                "API-Key": "[redacted]",
                "url": "postgres://u:[redacted]@db/x",
                "list": ["[redacted]", "[redacted]", "ok"],
                "key_prefix_note": "stmarys:prod:",
            })
        );
    }

    #[test]
    fn debug_names_no_secret() {
        let k = known(&["s3cr3t-value"]);
        assert_eq!(format!("{k:?}"), "KnownSecrets(1 secrets)");
    }

    #[test]
    fn a_secret_inside_the_marker_leaves_no_marker() {
        let k = known(&["dact"]);
        assert_eq!(k.redact_str("xdacty").as_deref(), Some("xy"));
        assert_eq!(k.redact_str("nothing here"), None);
    }

    #[test]
    fn overlapping_occurrences_are_all_cut() {
        let k = known(&["aba"]);
        assert_eq!(k.redact_str("ababa").as_deref(), Some("[redacted]"));
    }
}

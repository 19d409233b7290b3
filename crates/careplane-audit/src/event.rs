//! The event model and its canonical encoding (docs/design/0007-audit-log.md).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who acted. `kind` and `auth` are the actor's kind and how it proved who it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
    /// How the actor authenticated: `oidc`, `api-token`, `break-glass`, `local-root`, …
    pub auth: String,
    pub mfa: bool,
    pub elevation: Option<Elevation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    User,
    Service,
    LocalRoot,
}

/// A just-in-time elevation in force when the action ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elevation {
    pub role: String,
    pub approved_by: Option<String>,
    /// RFC 3339 UTC.
    pub expires: String,
    pub break_glass: bool,
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Succeeded,
    Failed,
    Refused,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    pub message: Option<String>,
}

/// What the caller hands to `append`; the log adds `seq`, `time` and `prev`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub actor: Actor,
    /// The operation: `apply`, `destroy`, `start`, `credentials.show`, …
    pub action: String,
    /// What it acted on: a resource id or a platform name.
    pub target: String,
    /// The tenant the target belongs to, if any (what per-tenant export selects on).
    pub tenant: Option<String>,
    /// Parameters as JSON; redacted by `append` (integers only, no fractions).
    pub parameters: Value,
    pub result: Outcome,
    /// The request or operation id the engine's journal uses.
    pub operation: Option<String>,
}

/// A stored entry: the event plus what the log stamped on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub v: u32,
    pub seq: u64,
    /// RFC 3339 UTC, six fractional digits.
    pub time: String,
    /// Hex leaf hash of entry `seq - 1` (zeros for entry 0).
    pub prev: String,
    pub actor: Actor,
    pub action: String,
    pub target: String,
    pub tenant: Option<String>,
    pub parameters: Value,
    pub result: Outcome,
    pub operation: Option<String>,
}

impl Entry {
    pub fn event(&self) -> Event {
        Event {
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            tenant: self.tenant.clone(),
            parameters: self.parameters.clone(),
            result: self.result.clone(),
            operation: self.operation.clone(),
        }
    }
}

pub const FORMAT_VERSION: u32 = 1;

/// Writes `v` canonically: keys sorted by UTF-8 bytes, no whitespace,
/// serde_json's string escaping. Sorting here, not through `Value`'s map,
/// keeps the bytes independent of serde_json's `preserve_order` feature.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("writing to a Vec cannot fail");
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).expect("writing to a Vec cannot fail"),
    }
}

/// The first non-integer number in `v`, as a JSON-pointer-like path.
pub fn find_fraction(v: &Value, path: &mut String) -> Option<String> {
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => Some(path.clone()),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let len = path.len();
            path.push('/');
            path.push_str(k);
            let found = find_fraction(v, path);
            path.truncate(len);
            found
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let len = path.len();
            path.push_str(&format!("/{i}"));
            let found = find_fraction(v, path);
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

/// The event's fields except `seq`, `time` and `prev`, as canonical JSON
/// fragments around them. Keys in canonical order are: action actor operation
/// parameters **prev** result **seq** target tenant **time** v, so an entry is
/// `head + prev + mid + seq + tail_a + time + tail_b`. Built before taking
/// the log's lock so that the lock covers only the splice.
pub struct Prepared {
    head: Vec<u8>,
    mid: Vec<u8>,
    tail_a: Vec<u8>,
}

pub fn prepare(event: &Event) -> Prepared {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"{\"action\":");
    write_canonical(&Value::String(event.action.clone()), &mut head);
    head.extend_from_slice(b",\"actor\":");
    write_canonical(&to_value(&event.actor), &mut head);
    head.extend_from_slice(b",\"operation\":");
    write_canonical(&to_value(&event.operation), &mut head);
    head.extend_from_slice(b",\"parameters\":");
    write_canonical(&event.parameters, &mut head);
    head.extend_from_slice(b",\"prev\":\"");
    let mut mid = Vec::with_capacity(64);
    mid.extend_from_slice(b"\",\"result\":");
    write_canonical(&to_value(&event.result), &mut mid);
    mid.extend_from_slice(b",\"seq\":");
    let mut tail_a = Vec::with_capacity(64);
    tail_a.extend_from_slice(b",\"target\":");
    write_canonical(&Value::String(event.target.clone()), &mut tail_a);
    tail_a.extend_from_slice(b",\"tenant\":");
    write_canonical(&to_value(&event.tenant), &mut tail_a);
    tail_a.extend_from_slice(b",\"time\":\"");
    Prepared { head, mid, tail_a }
}

impl Prepared {
    /// Appends the entry's bytes (without the newline) to `out`.
    pub fn splice(&self, seq: u64, time: &str, prev_hex: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(prev_hex.as_bytes());
        out.extend_from_slice(&self.mid);
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(&self.tail_a);
        out.extend_from_slice(time.as_bytes());
        out.extend_from_slice(b"\",\"v\":");
        out.extend_from_slice(FORMAT_VERSION.to_string().as_bytes());
        out.push(b'}');
    }
}

fn to_value<T: Serialize>(x: &T) -> Value {
    serde_json::to_value(x).expect("event fields serialize to JSON")
}

/// Formats a timestamp the one way entries carry it: RFC 3339 UTC with six
/// fractional digits, so that times compare as strings too.
pub fn format_time(micros: i64) -> String {
    let ts = jiff::Timestamp::from_microsecond(micros).expect("time within jiff's range");
    format!("{ts:.6}")
}

pub fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// Parses an RFC 3339 time (any offset) into microseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_microsecond())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample() -> Event {
        Event {
            actor: Actor {
                kind: ActorKind::User,
                id: "alice@example.org".into(),
                auth: "oidc".into(),
                mfa: true,
                elevation: Some(Elevation {
                    role: "platform-operator".into(),
                    approved_by: Some("bob@example.org".into()),
                    expires: "2026-12-02T01:00:00Z".into(),
                    break_glass: false,
                    reason: Some("INC-42 \"quoted\"\n".into()),
                }),
            },
            action: "apply".into(),
            target: "odoo-env/stmarys/production".into(),
            tenant: Some("stmarys".into()),
            parameters: json!({"z": [1, -2, {"b": null, "a": "é/\u{1}"}], "a": true}),
            result: Outcome {
                status: Status::Refused,
                message: Some("production delete".into()),
            },
            operation: Some("op-1".into()),
        }
    }

    #[test]
    fn spliced_entries_are_canonical_and_parse_back() {
        let ev = sample();
        let mut out = Vec::new();
        prepare(&ev).splice(
            42,
            "2026-12-02T00:00:00.000001Z",
            &"ab".repeat(32),
            &mut out,
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        let mut again = Vec::new();
        write_canonical(&v, &mut again);
        assert_eq!(
            String::from_utf8(again).unwrap(),
            String::from_utf8(out.clone()).unwrap()
        );
        let entry: Entry = serde_json::from_slice(&out).unwrap();
        assert_eq!(entry.seq, 42);
        assert_eq!(entry.event(), ev);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains(r#""a":"é/\u0001""#));
    }

    #[test]
    fn times_have_six_digits_and_round_trip() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_time(1_500_000), "1970-01-01T00:00:01.500000Z");
        assert_eq!(
            parse_time("1970-01-01T01:00:01.5+01:00").unwrap(),
            1_500_000
        );
        assert!(parse_time("yesterday").unwrap_err().contains("yesterday"));
    }

    #[test]
    fn fractions_are_found_with_their_path() {
        let v = json!({"a": [1, {"b": 2.5}], "c": 3});
        assert_eq!(
            find_fraction(&v, &mut String::new()).as_deref(),
            Some("/a/1/b")
        );
        assert_eq!(
            find_fraction(&json!({"x": [1, 2]}), &mut String::new()),
            None
        );
    }
}

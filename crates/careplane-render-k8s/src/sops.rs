//! SOPS files encrypted to age recipients: the Platform's alternative to
//! External Secrets (`spec.kubernetes.secrets.sops`). See design 0008,
//! "Third slice: SOPS files".
//!
//! The file format is SOPS's own (v3), so `sops -d`, Flux's
//! kustomize-controller and KSOPS read it: each value of `stringData` is
//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:str]` under a random 256-bit data
//! key with a 32-byte IV and the value's path (`stringData:password:`) as
//! additional data; the data key is age-encrypted (armored) to each
//! recipient under `sops.age`; `sops.mac` is the SHA-512 of every value of
//! the document in order, encrypted under the data key with `lastmodified`
//! as additional data.
//!
//! Encryption is randomised, so a re-render would rewrite every file. A
//! keyed fingerprint of the plaintext document and the recipients (HMAC with
//! a key derived from the render's role key, which never reaches the tree)
//! is kept as an annotation; when the file already in the repository
//! carries the same fingerprint, its bytes are kept.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::AesGcm;
use age::x25519;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256, Sha512};

use crate::k8s::Meta;

/// SOPS's AES-GCM: 256-bit key, 32-byte nonce, 16-byte tag.
type SopsAes = AesGcm<Aes256, U32>;

/// What this file format claims to be; SOPS 3.x reads it.
const SOPS_VERSION: &str = "3.9.0";
/// Only the secret's data is encrypted: names and labels stay readable in
/// review (they are covered by the MAC).
pub const ENCRYPTED_REGEX: &str = "^(data|stringData)$";
/// Annotation holding the keyed fingerprint of the plaintext.
pub const FINGERPRINT_ANNOTATION: &str = "careplane.dev/sops-fingerprint";

/// Secret values by store key and property (`careplane/<platform>/postgres/
/// <tenant>/<env>`, `password`): the same names the External Secrets mode
/// reads from its store. `Debug` never shows a value.
#[derive(Default)]
pub struct SecretValues(BTreeMap<(String, String), SecretString>);

impl SecretValues {
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        property: impl Into<String>,
        value: SecretString,
    ) {
        self.0.insert((key.into(), property.into()), value);
    }

    pub fn get(&self, key: &str, property: &str) -> Option<&SecretString> {
        self.0.get(&(key.to_string(), property.to_string()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads values from a SOPS file (YAML: store key → property → value),
    /// decrypted with `identity`: the operator keeps them encrypted in the
    /// specs' repository and edits them with `sops`.
    pub fn from_sops(text: &str, identity: &x25519::Identity) -> Result<SecretValues, SopsError> {
        let mut values = SecretValues::default();
        for (path, value) in decrypt(text, identity)? {
            match path.as_slice() {
                [key, property] => values.insert(key.clone(), property.clone(), value),
                _ => {
                    return Err(SopsError::Format(format!(
                        "{}: expected `<store key>: {{<property>: <value>}}`",
                        path.join(".")
                    )))
                }
            }
        }
        Ok(values)
    }
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValues({} values)", self.0.len())
    }
}

/// Reads the secret values from a SOPS file decrypted with the age identity
/// file at `identity` (one `AGE-SECRET-KEY-1…` line, `#` comments; not
/// readable by group or others). Errors name the file, never a value.
pub fn load_values(values: &Path, identity: &Path) -> Result<SecretValues, crate::RenderError> {
    use std::os::unix::fs::MetadataExt;
    let fail = |p: &Path, message: String| crate::RenderError::Io {
        path: p.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(identity).map_err(|e| fail(identity, e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(fail(
            identity,
            format!(
                "an age identity must be readable by its owner only (mode {:o}; chmod 600)",
                meta.mode() & 0o777
            ),
        ));
    }
    let text = secrecy::zeroize::Zeroizing::new(
        std::fs::read_to_string(identity).map_err(|e| fail(identity, e.to_string()))?,
    );
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let id = match (keys.next(), keys.next()) {
        (Some(k), None) => x25519::Identity::from_str(k).ok(),
        _ => None,
    }
    .ok_or_else(|| {
        fail(
            identity,
            "expected exactly one AGE-SECRET-KEY-1… line".into(),
        )
    })?;
    let text = std::fs::read_to_string(values).map_err(|e| fail(values, e.to_string()))?;
    SecretValues::from_sops(&text, &id).map_err(|e| fail(values, e.to_string()))
}

/// What rendering SOPS files needs besides the specs.
#[derive(Debug)]
pub struct SecretInput<'a> {
    pub values: &'a SecretValues,
    /// The repository being rendered into, if any: a file whose fingerprint
    /// still matches is kept byte for byte.
    pub previous: Option<&'a Path>,
    /// `sops.lastmodified` of files encrypted now (RFC 3339, UTC).
    pub now: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    #[error("not a SOPS file: {0}")]
    Format(String),
    #[error("none of the file's age recipients is the given identity")]
    NoMatchingRecipient,
    #[error("{0}: cannot be decrypted (wrong data key or tampered with)")]
    Value(String),
    #[error("the MAC does not match: the file was changed without its key")]
    Mac,
    #[error("age: {0}")]
    Age(String),
}

/// Parses age recipients (`age1…`).
pub fn recipients(list: &[String]) -> Result<Vec<x25519::Recipient>, String> {
    list.iter()
        .map(|r| x25519::Recipient::from_str(r).map_err(|e| format!("{r:?}: {e}")))
        .collect()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the operating system's random source");
    b
}

fn encrypt_value(key: &[u8; 32], plain: &[u8], aad: &str) -> String {
    let iv: [u8; 32] = random();
    let sealed = SopsAes::new(key.into())
        .encrypt(
            (&iv).into(),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .expect("AES-GCM encryption of a small value");
    let (data, tag) = sealed.split_at(sealed.len() - 16);
    format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:str]",
        B64.encode(data),
        B64.encode(iv),
        B64.encode(tag)
    )
}

/// Decrypts one `ENC[AES256_GCM,…]` value.
fn decrypt_value(key: &[u8; 32], enc: &str, aad: &str) -> Option<Vec<u8>> {
    let inner = enc.strip_prefix("ENC[AES256_GCM,")?.strip_suffix(']')?;
    let mut parts: BTreeMap<&str, &str> = BTreeMap::new();
    for p in inner.split(',') {
        let (k, v) = p.split_once(':')?;
        parts.insert(k, v);
    }
    let mut sealed = B64.decode(parts.get("data")?).ok()?;
    let iv = B64.decode(parts.get("iv")?).ok()?;
    sealed.extend(B64.decode(parts.get("tag")?).ok()?);
    if iv.len() != 32 {
        return None;
    }
    SopsAes::new(key.into())
        .decrypt(
            iv.as_slice().into(),
            Payload {
                msg: &sealed,
                aad: aad.as_bytes(),
            },
        )
        .ok()
}

/// The leaves of a YAML document in order, as SOPS hashes them.
fn leaves<'v>(v: &'v Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'v Value)>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                path.push(scalar(k));
                leaves(v, path, out);
                path.pop();
            }
        }
        // SOPS walks list items under their parent's path.
        Value::Sequence(s) => s.iter().for_each(|v| leaves(v, path, out)),
        Value::Tagged(t) => leaves(&t.value, path, out),
        v => out.push((path.clone(), v)),
    }
}

/// A scalar as SOPS's `ToBytes` writes it.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => serde_yaml_ng::to_string(other).unwrap_or_default(),
    }
}

fn mac_hex(h: Sha512) -> String {
    h.finalize().iter().map(|b| format!("{b:02X}")).collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretDoc<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a Meta,
    #[serde(rename = "type")]
    type_: &'a str,
    // Last, so that SOPS's walk meets the other values first (see `mac`).
    string_data: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sops: Option<SopsMeta>,
}

#[derive(Serialize)]
struct SopsMeta {
    age: Vec<AgeKey>,
    lastmodified: String,
    mac: String,
    encrypted_regex: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct AgeKey {
    recipient: String,
    enc: String,
}

/// A Kubernetes `Secret` as a SOPS file: `meta` gets the fingerprint
/// annotation; `previous` is the file now at the same path, kept when its
/// fingerprint matches.
#[allow(clippy::too_many_arguments)]
pub(crate) fn secret_file(
    path: &str,
    mut meta: Meta,
    type_: &str,
    data: &BTreeMap<String, SecretString>,
    recipients: &[x25519::Recipient],
    fingerprint_key: &[u8; 32],
    previous: Option<&str>,
    now: &str,
) -> String {
    // The plaintext document without its values, then the values: what a
    // reviewer sees plus what they do not, and who can read it.
    let skeleton = SecretDoc {
        api_version: "v1",
        kind: "Secret",
        metadata: &meta,
        type_,
        string_data: BTreeMap::new(),
        sops: None,
    };
    let mut fp = <Hmac<Sha256> as Mac>::new_from_slice(fingerprint_key).expect("any key length");
    for part in [path, &crate::yaml::to_string(&skeleton)] {
        fp.update(&(part.len() as u64).to_be_bytes());
        fp.update(part.as_bytes());
    }
    let mut rs: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    rs.sort();
    for r in &rs {
        fp.update(&(r.len() as u64).to_be_bytes());
        fp.update(r.as_bytes());
    }
    for (k, v) in data {
        for part in [k.as_bytes(), v.expose_secret().as_bytes()] {
            fp.update(&(part.len() as u64).to_be_bytes());
            fp.update(part);
        }
    }
    let fingerprint: String = fp
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(prev) = previous {
        let kept = serde_yaml_ng::from_str::<Value>(prev).is_ok_and(|v| {
            v["metadata"]["annotations"][FINGERPRINT_ANNOTATION].as_str()
                == Some(fingerprint.as_str())
                && v["sops"]["mac"].is_string()
        });
        if kept {
            return prev.to_string();
        }
    }
    meta.annotations
        .insert(FINGERPRINT_ANNOTATION.into(), fingerprint.into());

    let key: [u8; 32] = random();
    let mut mac = Sha512::new();
    let skeleton = SecretDoc {
        api_version: "v1",
        kind: "Secret",
        metadata: &meta,
        type_,
        string_data: BTreeMap::new(),
        sops: None,
    };
    let tree = serde_yaml_ng::to_value(&skeleton).expect("a Secret serializes");
    let mut found = Vec::new();
    leaves(&tree, &mut Vec::new(), &mut found);
    for (_, v) in found {
        // The empty `stringData: {}` of the skeleton is a mapping, not a leaf.
        mac.update(scalar(v).as_bytes());
    }
    let mut string_data = BTreeMap::new();
    for (k, v) in data {
        let plain = v.expose_secret().as_bytes();
        mac.update(plain);
        string_data.insert(
            k.as_str(),
            encrypt_value(&key, plain, &format!("stringData:{k}:")),
        );
    }
    let age = recipients
        .iter()
        .map(|r| AgeKey {
            recipient: r.to_string(),
            enc: age_encrypt(r, &key),
        })
        .collect();
    let doc = SecretDoc {
        api_version: "v1",
        kind: "Secret",
        metadata: &meta,
        type_,
        string_data,
        sops: Some(SopsMeta {
            age,
            lastmodified: now.to_string(),
            mac: encrypt_value(&key, mac_hex(mac).as_bytes(), now),
            encrypted_regex: ENCRYPTED_REGEX,
            version: SOPS_VERSION,
        }),
    };
    crate::yaml::to_string_after(crate::HEADER, &doc)
}

fn age_encrypt(r: &x25519::Recipient, key: &[u8; 32]) -> String {
    let enc = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient))
        .expect("one recipient");
    let mut out = Vec::new();
    let armored = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .expect("writing to memory");
    let mut w = enc.wrap_output(armored).expect("writing to memory");
    w.write_all(key).expect("writing to memory");
    w.finish()
        .and_then(|a| a.finish())
        .expect("writing to memory");
    String::from_utf8(out).expect("armor is ASCII")
}

/// Decrypts a SOPS file (YAML, one document) with an age identity and
/// checks its MAC: every string leaf with its path, in document order
/// (`sops` metadata excluded).
pub fn decrypt(
    text: &str,
    identity: &x25519::Identity,
) -> Result<Vec<(Vec<String>, SecretString)>, SopsError> {
    let fmt = |m: &str| SopsError::Format(m.into());
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|_| fmt("not YAML"))?;
    let meta = doc.get("sops").ok_or_else(|| fmt("no `sops` metadata"))?;
    let lastmodified = meta["lastmodified"]
        .as_str()
        .ok_or_else(|| fmt("no sops.lastmodified"))?;
    let mac = meta["mac"].as_str().ok_or_else(|| fmt("no sops.mac"))?;
    let mut key = None;
    for entry in meta["age"].as_sequence().into_iter().flatten() {
        let Some(enc) = entry["enc"].as_str() else {
            continue;
        };
        let reader = age::armor::ArmoredReader::new(enc.as_bytes());
        let Ok(d) = age::Decryptor::new(reader) else {
            continue;
        };
        if let Ok(mut r) = d.decrypt(std::iter::once(identity as &dyn age::Identity)) {
            let mut k = Vec::new();
            r.read_to_end(&mut k)
                .map_err(|e| SopsError::Age(e.to_string()))?;
            key = Some(
                <[u8; 32]>::try_from(k.as_slice())
                    .map_err(|_| fmt("the data key is not 256 bits"))?,
            );
            break;
        }
    }
    let key = key.ok_or(SopsError::NoMatchingRecipient)?;
    let mut body = doc.clone();
    if let Value::Mapping(m) = &mut body {
        m.remove("sops");
    }
    let mut found = Vec::new();
    leaves(&body, &mut Vec::new(), &mut found);
    let mut hash = Sha512::new();
    let mut out = Vec::new();
    for (path, v) in found {
        let s = scalar(v);
        let plain = if s.starts_with("ENC[") {
            let aad = format!("{}:", path.join(":"));
            let p =
                decrypt_value(&key, &s, &aad).ok_or_else(|| SopsError::Value(path.join(".")))?;
            if !s.ends_with(",type:str]") {
                return Err(fmt("only string values are supported"));
            }
            String::from_utf8(p).map_err(|_| fmt("a value is not UTF-8"))?
        } else {
            s
        };
        hash.update(plain.as_bytes());
        if v.is_string() {
            out.push((path, SecretString::from(plain)));
        }
    }
    let expected = decrypt_value(&key, mac, lastmodified).ok_or(SopsError::Mac)?;
    if !expected.eq_ignore_ascii_case(mac_hex(hash).as_bytes()) {
        return Err(SopsError::Mac);
    }
    Ok(out)
}

/// The key of the fingerprints: derived from the role key, which stays out
/// of the tree, so a reader of the repository cannot test guesses of a value
/// against its fingerprint.
pub(crate) fn fingerprint_key(role_key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"careplane sops fingerprint v1\0");
    h.update(role_key.as_bytes());
    h.finalize().into()
}

/// Evaluates an `ExternalSecret` template (the few forms careplane writes:
/// `{{ .name }}`, `{{ index . "name" }}`, piped to `urlquery` or
/// `sha256sum`) with the fetched values.
pub(crate) fn eval_template(
    tpl: &str,
    values: &BTreeMap<String, &SecretString>,
) -> Result<SecretString, String> {
    let mut out = String::with_capacity(tpl.len() + 64);
    let mut rest = tpl;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed template in {tpl:?}"))?;
        let mut stages = after[..end].split('|').map(str::trim);
        let head = stages.next().unwrap_or_default();
        let name = head
            .strip_prefix("index . \"")
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| head.strip_prefix('.'))
            .ok_or_else(|| format!("unsupported template expression {head:?}"))?;
        let mut v = values
            .get(name)
            .ok_or_else(|| format!("template value {name:?} is not fetched"))?
            .expose_secret()
            .to_string();
        for f in stages {
            v = match f {
                "urlquery" => urlquery(&v),
                "sha256sum" => Sha256::digest(v.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
                f => return Err(format!("unsupported template function {f:?}")),
            };
        }
        out.push_str(&v);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(SecretString::from(out))
}

/// Go's `url.QueryEscape`, which the template's `urlquery` is.
fn urlquery(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                o.push(b as char)
            }
            b' ' => o.push('+'),
            b => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            name: "odoo-credentials".into(),
            namespace: None,
            labels: [("app.kubernetes.io/part-of".into(), "careplane".into())].into(),
            annotations: Default::default(),
        }
    }

    #[test]
    fn round_trip_reuse_and_tamper() {
        let id = x25519::Identity::generate();
        let other = x25519::Identity::generate();
        let rs = vec![id.to_public(), other.to_public()];
        let data: BTreeMap<String, SecretString> = [
            (
                "PGPASSWORD".to_string(),
                SecretString::from("s3cr3t: yes #"),
            ),
            (
                "ca.crt".to_string(),
                SecretString::from(
                    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                ),
            ),
        ]
        .into();
        let fk = fingerprint_key("a-role-key-of-16-chars");
        let now = "2026-12-02T07:00:00Z";
        let a = secret_file(
            "t/e/secret-x.yaml",
            meta(),
            "Opaque",
            &data,
            &rs,
            &fk,
            None,
            now,
        );
        assert!(!a.contains("s3cr3t") && !a.contains("MIIB"), "{a}");
        for who in [&id, &other] {
            let got = decrypt(&a, who).unwrap();
            let m: BTreeMap<String, String> = got
                .into_iter()
                .map(|(p, v)| (p.join("."), v.expose_secret().to_string()))
                .collect();
            assert_eq!(m["stringData.PGPASSWORD"], "s3cr3t: yes #");
            assert_eq!(m["stringData.ca.crt"], data["ca.crt"].expose_secret());
            assert_eq!(m["kind"], "Secret");
        }
        // Same plaintext and recipients: the existing bytes are kept.
        let b = secret_file(
            "t/e/secret-x.yaml",
            meta(),
            "Opaque",
            &data,
            &rs,
            &fk,
            Some(&a),
            now,
        );
        assert_eq!(a, b);
        // A changed value, a changed recipient list or another role key: re-encrypted.
        let mut changed = data.clone();
        changed.insert("PGPASSWORD".into(), SecretString::from("other"));
        let c = secret_file(
            "t/e/secret-x.yaml",
            meta(),
            "Opaque",
            &changed,
            &rs,
            &fk,
            Some(&a),
            now,
        );
        assert_ne!(a, c);
        let d = secret_file(
            "t/e/secret-x.yaml",
            meta(),
            "Opaque",
            &data,
            &rs[..1],
            &fk,
            Some(&a),
            now,
        );
        assert_ne!(a, d);
        assert!(matches!(
            decrypt(&d, &other),
            Err(SopsError::NoMatchingRecipient)
        ));
        // A readable field changed by hand breaks the MAC.
        let tampered = a.replace("part-of: careplane", "part-of: careplanf");
        assert!(
            matches!(decrypt(&tampered, &id), Err(SopsError::Mac)),
            "{tampered}"
        );
    }

    #[test]
    fn templates_evaluate_like_external_secrets() {
        let pw = SecretString::from("a b/c&d");
        let v: BTreeMap<String, &SecretString> = [("pw".to_string(), &pw)].into();
        let out = eval_template("redis://u:{{ .pw | urlquery }}@h/0", &v).unwrap();
        assert_eq!(out.expose_secret(), "redis://u:a+b%2Fc%26d@h/0");
        let out = eval_template("user u on #{{ index . \"pw\" | sha256sum }} ~x*", &v).unwrap();
        let hex: String = Sha256::digest(b"a b/c&d")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(out.expose_secret(), format!("user u on #{hex} ~x*"));
        assert!(eval_template("{{ .nope }}", &v).is_err());
        assert!(eval_template("{{ .pw | b64enc }}", &v).is_err());
    }

    #[test]
    fn values_debug_hides_values() {
        let mut v = SecretValues::default();
        v.insert(
            "careplane/p/x",
            "password",
            SecretString::from("hunter2-hunter2"),
        );
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}

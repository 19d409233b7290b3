//! API tokens: `cpt_<id>_<secret>`, scoped (`read` or `operate`), expiring, revocable, kept
//! as SHA-256 hashes in `<dataDir>/serve/tokens.json` (0600, written atomically). The token
//! itself is shown once, at creation, and never logged; `Debug` of [`NewToken`] redacts it.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// What a token allows. `operate` includes `read`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Operate,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "operate" => Ok(Scope::Operate),
            _ => Err(format!("unknown scope {s:?} (read or operate)")),
        }
    }
}

/// One stored token: everything but the secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    #[schema(value_type = String)]
    pub expires_at: Timestamp,
    #[schema(value_type = Option<String>)]
    pub revoked_at: Option<Timestamp>,
    /// Hex SHA-256 of the whole token.
    #[serde(rename = "sha256")]
    #[schema(ignore)]
    pub hash: String,
}

/// A token just created: the record and the token, shown once.
#[derive(Debug)]
pub struct NewToken {
    pub record: TokenRecord,
    pub token: SecretString,
}

/// Why a request's token was refused (the answer never says which token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
    Expired,
    Revoked,
    Scope,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "a bearer token is required (careplane token create)",
            Refusal::Invalid => "the bearer token is not valid",
            Refusal::Expired => "the bearer token has expired",
            Refusal::Revoked => "the bearer token was revoked",
            Refusal::Scope => "the bearer token's scope does not allow this (operate needed)",
        }
    }
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("serve").join("tokens.json")
}

pub fn load(data_dir: &Path) -> Result<Vec<TokenRecord>, Error> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::File {
            path: p,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(&p, e)),
    }
}

fn save(data_dir: &Path, tokens: &[TokenRecord]) -> Result<(), Error> {
    let p = path(data_dir);
    let dir = p.parent().expect("has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_vec_pretty(tokens).expect("tokens serialize");
    careplane_sys::atomic_write(&p, &json, 0o600, None).map_err(|e| Error::io(&p, e))
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_hex(n: usize) -> Result<String, Error> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

/// Creates a token valid for `ttl` from `now`, under the token file's lock.
pub fn create(
    data_dir: &Path,
    name: &str,
    scope: Scope,
    ttl: jiff::SignedDuration,
    now: Timestamp,
) -> Result<NewToken, Error> {
    if name.trim().is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "token name {name:?}: 1 to 100 printable characters"
        )));
    }
    if ttl <= jiff::SignedDuration::ZERO {
        return Err(Error::Invalid("token lifetime: must be positive".into()));
    }
    let _lock = crate::lock(data_dir, "tokens")?;
    let mut all = load(data_dir)?;
    let id = random_hex(6)?;
    let token = format!("cpt_{id}_{}", random_hex(32)?);
    let record = TokenRecord {
        id,
        name: name.to_string(),
        scope,
        created_at: now,
        expires_at: now
            .checked_add(ttl)
            .map_err(|e| Error::Invalid(format!("token lifetime: {e}")))?,
        revoked_at: None,
        hash: hash(&token),
    };
    all.push(record.clone());
    save(data_dir, &all)?;
    Ok(NewToken {
        record,
        token: SecretString::from(token),
    })
}

/// Revokes the token `id` (from `token list`); revoking twice is refused.
pub fn revoke(data_dir: &Path, id: &str, now: Timestamp) -> Result<TokenRecord, Error> {
    let _lock = crate::lock(data_dir, "tokens")?;
    let mut all = load(data_dir)?;
    let t = all
        .iter_mut()
        .find(|t| t.id == id)
        .ok_or_else(|| Error::NotFound(format!("token {id:?} (see `careplane token list`)")))?;
    if let Some(at) = t.revoked_at {
        return Err(Error::Invalid(format!(
            "token {id} was already revoked at {at}"
        )));
    }
    t.revoked_at = Some(now);
    let r = t.clone();
    save(data_dir, &all)?;
    Ok(r)
}

/// Checks a presented token against the records for `need`.
pub fn check(
    records: &[TokenRecord],
    presented: Option<&str>,
    need: Scope,
    now: Timestamp,
) -> Result<TokenRecord, Refusal> {
    let presented = presented.ok_or(Refusal::Missing)?;
    let id = presented
        .strip_prefix("cpt_")
        .and_then(|r| r.split_once('_'))
        .map(|(id, _)| id)
        .ok_or(Refusal::Invalid)?;
    let rec = records
        .iter()
        .find(|r| r.id == id)
        .ok_or(Refusal::Invalid)?;
    // Both sides are hashes of fixed length: comparing them leaks nothing useful.
    let h = hash(presented);
    let same = h.len() == rec.hash.len()
        && h.bytes()
            .zip(rec.hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(Refusal::Invalid);
    }
    if rec.revoked_at.is_some() {
        return Err(Refusal::Revoked);
    }
    if now >= rec.expires_at {
        return Err(Refusal::Expired);
    }
    if rec.scope < need {
        return Err(Refusal::Scope);
    }
    Ok(rec.clone())
}

/// The token as shown once to its creator.
pub fn reveal(t: &NewToken) -> &str {
    t.token.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_scoped_expiring_revocable_and_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let day = jiff::SignedDuration::from_hours(24);
        let r = create(dir.path(), "ci", Scope::Read, day, now).unwrap();
        let o = create(dir.path(), "ops", Scope::Operate, day, now).unwrap();
        let file = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(!file.contains(reveal(&r)) && !file.contains(reveal(&o)));
        assert!(file.contains(&hash(reveal(&r))));
        assert!(!format!("{r:?}").contains(reveal(&r)), "Debug redacts");
        let all = load(dir.path()).unwrap();
        assert_eq!(
            check(&all, Some(reveal(&r)), Scope::Read, now)
                .unwrap()
                .name,
            "ci"
        );
        assert_eq!(
            check(&all, Some(reveal(&r)), Scope::Operate, now),
            Err(Refusal::Scope)
        );
        assert!(check(&all, Some(reveal(&o)), Scope::Operate, now).is_ok());
        assert_eq!(check(&all, None, Scope::Read, now), Err(Refusal::Missing));
        // Right id, wrong secret.
        let forged = format!("cpt_{}_{}", r.record.id, "0".repeat(64));
        assert_eq!(
            check(&all, Some(&forged), Scope::Read, now),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            check(&all, Some("Bearer x"), Scope::Read, now),
            Err(Refusal::Invalid)
        );
        let later = now.checked_add(day).unwrap();
        assert_eq!(
            check(&all, Some(reveal(&r)), Scope::Read, later),
            Err(Refusal::Expired)
        );
        revoke(dir.path(), &o.record.id, now).unwrap();
        assert!(revoke(dir.path(), &o.record.id, now).is_err(), "twice");
        let all = load(dir.path()).unwrap();
        assert_eq!(
            check(&all, Some(reveal(&o)), Scope::Read, now),
            Err(Refusal::Revoked)
        );
        assert!(check(&all, Some(reveal(&r)), Scope::Read, now).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

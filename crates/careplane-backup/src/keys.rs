//! The keys of a repository: one secret careplane keeps in its vault (chunk
//! ids, WAL MACs and manifest signatures are derived from it), the policy's
//! age recipients (public), and optionally the private keys to read.

use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::error::{invalid, BackupError, Result};

/// What a caller gives [`crate::Repository::open`].
///
/// `Debug` shows no secret (`SecretString` redacts itself).
#[derive(Debug, Clone)]
pub struct RepoKeys {
    /// The repository secret: 64 hex digits (32 bytes), one per tenant repository
    /// (see [`generate_secret`]). Whoever holds it can write backups; it cannot decrypt them.
    pub secret: SecretString,
    /// age X25519 recipients (`age1…`) every object is encrypted to.
    pub recipients: Vec<String>,
    /// age X25519 identities (`AGE-SECRET-KEY-1…`) to decrypt with; empty when
    /// the customer holds the only private key (then restore and deep verify refuse).
    pub identities: Vec<SecretString>,
}

/// What `archive_command`/`restore_command` need, and nothing more: the WAL
/// MAC key (derived from the repository secret; it can neither name chunks
/// nor sign manifests), the recipients, and for restore the identities.
#[derive(Debug, Clone)]
pub struct WalKeys {
    /// 64 hex digits.
    pub wal_key: SecretString,
    pub recipients: Vec<String>,
    pub identities: Vec<SecretString>,
}

impl RepoKeys {
    /// The WAL-only keys of this repository (for the archiver's key file).
    pub fn wal_keys(&self) -> Result<WalKeys> {
        let raw = parse_secret(&self.secret)?;
        let wal = blake3::derive_key(WAL_CONTEXT, &raw);
        Ok(WalKeys {
            wal_key: SecretString::from(hex::encode(wal)),
            recipients: self.recipients.clone(),
            identities: self.identities.clone(),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WalKeysFile {
    wal_key: String,
    recipients: Vec<String>,
    #[serde(default)]
    identities: Vec<String>,
}

impl WalKeys {
    /// Writes the keys as JSON to `path`, mode 0600, owned by `owner`
    /// (uid, gid) if given; through a temporary file renamed into place.
    pub fn write_file(&self, path: &std::path::Path, owner: Option<(u32, u32)>) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let file = WalKeysFile {
            wal_key: self.wal_key.expose_secret().to_string(),
            recipients: self.recipients.clone(),
            identities: self
                .identities
                .iter()
                .map(|i| i.expose_secret().to_string())
                .collect(),
        };
        let json = SecretString::from(serde_json::to_string(&file).expect("keys serialize"));
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let what = || format!("writing WAL keys file {}", path.display());
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(crate::error::io(what()))?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(crate::error::io(what()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))
                .map_err(crate::error::io(what()))?;
        }
        tmp.write_all(json.expose_secret().as_bytes())
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(crate::error::io(what()))?;
        tmp.persist(path).map_err(|e| BackupError::Io {
            what: what(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Reads a file written by [`WalKeys::write_file`]. Errors never quote it.
    pub fn read_file(path: &std::path::Path) -> Result<WalKeys> {
        let text = SecretString::from(std::fs::read_to_string(path).map_err(crate::error::io(
            format!("reading WAL keys file {}", path.display()),
        ))?);
        let f: WalKeysFile = serde_json::from_str(text.expose_secret()).map_err(|e| {
            invalid(
                format!("WAL keys file {}", path.display()),
                format!(
                    "not a WAL keys file (line {}, column {}); its content is not shown",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        Ok(WalKeys {
            wal_key: SecretString::from(f.wal_key),
            recipients: f.recipients,
            identities: f.identities.into_iter().map(SecretString::from).collect(),
        })
    }
}

fn parse_secret(secret: &SecretString) -> Result<[u8; 32]> {
    let secret = secret.expose_secret().trim();
    let mut raw = [0u8; 32];
    if secret.len() != 64 || hex::decode_to_slice(secret, &mut raw).is_err() {
        return Err(invalid(
            "repository secret",
            "must be 64 hex digits (32 bytes); the value is not shown",
        ));
    }
    Ok(raw)
}

/// A fresh random repository secret (64 hex digits).
pub fn generate_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let s = SecretString::from(hex::encode(bytes));
    bytes.fill(0);
    s
}

/// A fresh age identity and its recipient: `(AGE-SECRET-KEY-1…, age1…)`.
pub fn generate_identity() -> (SecretString, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    (
        SecretString::from(id.to_string().expose_secret().to_string()),
        public,
    )
}

/// Reads an age identity file as `age-keygen` writes it: `#` comments and
/// one `AGE-SECRET-KEY-1…` per line (the customer's key to their backups).
/// Errors name the file and the line, never what is in it.
pub fn read_identity_file(path: &std::path::Path) -> Result<Vec<SecretString>> {
    let what = || format!("age identity file {}", path.display());
    let text = SecretString::from(
        std::fs::read_to_string(path).map_err(crate::error::io(format!("reading {}", what())))?,
    );
    let mut out = Vec::new();
    for (n, line) in text.expose_secret().lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if age::x25519::Identity::from_str(line).is_err() {
            return Err(invalid(
                what(),
                format!(
                    "line {} is not an age X25519 identity (AGE-SECRET-KEY-1…, as `age-keygen` \
                     writes); its content is not shown",
                    n + 1
                ),
            ));
        }
        out.push(SecretString::from(line.to_string()));
    }
    if out.is_empty() {
        return Err(invalid(
            what(),
            "holds no identity (AGE-SECRET-KEY-1…, as `age-keygen` writes)",
        ));
    }
    Ok(out)
}

const CHUNK_CONTEXT: &str = "careplane-backup 2026-12 chunk id key";
const WAL_CONTEXT: &str = "careplane-backup 2026-12 WAL MAC key";
const SIGN_CONTEXT: &str = "careplane-backup 2026-12 manifest signing key";
const STATE_CONTEXT: &str = "careplane-backup 2026-12 file state key";
const CHECK_CONTEXT: &str = "careplane-backup 2026-12 key check";

/// The keys in usable form; no `Debug`, nothing here is ever printed.
pub(crate) struct Keys {
    chunk: SecretBox<[u8; 32]>,
    state: SecretBox<[u8; 32]>,
    pub(crate) wal: WalKey,
    signing: SigningKey,
    pub(crate) sealer: Sealer,
}

/// The WAL MAC key.
pub(crate) struct WalKey(SecretBox<[u8; 32]>);

/// age encryption to the recipients, decryption with the identities.
pub(crate) struct Sealer {
    recipients: Vec<age::x25519::Recipient>,
    identities: Vec<age::x25519::Identity>,
}

impl WalKey {
    pub(crate) fn new(keys: &WalKeys) -> Result<WalKey> {
        let raw = parse_secret(&keys.wal_key).map_err(|_| {
            invalid(
                "WAL key",
                "must be 64 hex digits (32 bytes); the value is not shown",
            )
        })?;
        Ok(WalKey(SecretBox::new(Box::new(raw))))
    }

    /// The MAC of a WAL segment, bound to its name.
    pub(crate) fn mac(&self, name: &str, data: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(self.0.expose_secret());
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(data);
        *h.finalize().as_bytes()
    }

    /// The check value stored in the repository's config.
    pub(crate) fn check(&self) -> String {
        blake3::keyed_hash(self.0.expose_secret(), CHECK_CONTEXT.as_bytes())
            .to_hex()
            .to_string()
    }
}

impl Sealer {
    pub(crate) fn new(recipients: &[String], identities: &[SecretString]) -> Result<Sealer> {
        if recipients.is_empty() {
            return Err(invalid(
                "encryption recipients",
                "at least one age recipient (age1…) is required",
            ));
        }
        let recipients = recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                age::x25519::Recipient::from_str(r.trim()).map_err(|e| {
                    invalid(
                        format!("encryption recipient #{} ({r})", i + 1),
                        format!("not an age X25519 public key: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let identities = identities
            .iter()
            .enumerate()
            .map(|(i, s)| {
                age::x25519::Identity::from_str(s.expose_secret().trim()).map_err(|_| {
                    invalid(
                        format!("private key #{}", i + 1),
                        "not an age X25519 identity (AGE-SECRET-KEY-1…); the value is not shown",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sealer {
            recipients,
            identities,
        })
    }
}

impl Keys {
    pub(crate) fn new(keys: &RepoKeys) -> Result<Keys> {
        let mut raw = parse_secret(&keys.secret)?;
        let derive = |ctx: &str| SecretBox::new(Box::new(blake3::derive_key(ctx, &raw)));
        let chunk = derive(CHUNK_CONTEXT);
        let state = derive(STATE_CONTEXT);
        let wal = WalKey(derive(WAL_CONTEXT));
        let signing = SigningKey::from_bytes(derive(SIGN_CONTEXT).expose_secret());
        raw.fill(0);
        Ok(Keys {
            chunk,
            state,
            wal,
            signing,
            sealer: Sealer::new(&keys.recipients, &keys.identities)?,
        })
    }

    pub(crate) fn encrypt(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.sealer.encrypt(data)
    }

    pub(crate) fn decrypt(&self, data: &[u8], what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        self.sealer.decrypt(data, what)
    }

    /// [`Keys::decrypt`] into `out` (cleared first), reusing its allocation.
    pub(crate) fn decrypt_into(
        &self,
        data: &[u8],
        out: &mut Vec<u8>,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        self.sealer.decrypt_into(data, out, what)
    }

    /// The id of a chunk: keyed BLAKE3 of its plaintext.
    pub(crate) fn chunk_id(&self, data: &[u8]) -> String {
        blake3::keyed_hash(self.chunk.expose_secret(), data)
            .to_hex()
            .to_string()
    }

    /// Seals data only the repository secret's holder can open (no age
    /// identity needed): random nonce ‖ ChaCha20-Poly1305, `aad` bound in.
    pub(crate) fn seal_with_secret(&self, data: &[u8], aad: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(self.state.expose_secret().into());
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend(
            cipher
                .encrypt((&nonce).into(), Payload { msg: data, aad })
                .expect("ChaCha20-Poly1305 encryption does not fail"),
        );
        out
    }

    /// Opens what [`Keys::seal_with_secret`] sealed; `None` if it was changed.
    pub(crate) fn open_with_secret(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        if sealed.len() < 12 {
            return None;
        }
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(self.state.expose_secret().into());
        let (nonce, ct) = sealed.split_at(12);
        cipher.decrypt(nonce.into(), Payload { msg: ct, aad }).ok()
    }

    /// Values stored in the repository's config that tell whether a later
    /// open uses the same secret, without revealing it.
    pub(crate) fn check_values(&self) -> (String, String) {
        let chunk = blake3::keyed_hash(self.chunk.expose_secret(), CHECK_CONTEXT.as_bytes());
        (chunk.to_hex().to_string(), self.wal.check())
    }

    pub(crate) fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> String {
        hex::encode(self.signing.sign(msg).to_bytes())
    }

    pub(crate) fn verify(&self, msg: &[u8], signature_hex: &str) -> bool {
        let mut sig = [0u8; 64];
        if hex::decode_to_slice(signature_hex, &mut sig).is_err() {
            return false;
        }
        self.verifying_key()
            .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_ok()
    }
}

impl Sealer {
    /// age-encrypts `data` to every recipient.
    pub(crate) fn encrypt(&self, data: &[u8]) -> Result<Vec<u8>> {
        use std::io::Write;
        let enc = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| invalid("encryption recipients", e.to_string()))?;
        let mut out = Vec::with_capacity(data.len() + 256);
        let fail = |e: std::io::Error| BackupError::Io {
            what: "encrypting".into(),
            source: e,
        };
        let mut w = enc.wrap_output(&mut out).map_err(fail)?;
        w.write_all(data).map_err(fail)?;
        w.finish().map_err(fail)?;
        Ok(out)
    }

    /// Decrypts an age object; `what` names it in errors.
    pub(crate) fn decrypt(&self, data: &[u8], what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decrypt_into(data, &mut out, what)?;
        Ok(out)
    }

    /// [`Sealer::decrypt`] into `out` (cleared first), reusing its allocation.
    pub(crate) fn decrypt_into(
        &self,
        data: &[u8],
        out: &mut Vec<u8>,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        use std::io::Read;
        out.clear();
        if self.identities.is_empty() {
            return Err(BackupError::NoPrivateKey { what: what() });
        }
        let dec = age::Decryptor::new_buffered(data).map_err(|e| decrypt_error(e, what))?;
        let mut r = dec
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| decrypt_error(e, what))?;
        r.read_to_end(out).map_err(|e| BackupError::Invalid {
            what: what(),
            problem: format!("encrypted content is damaged: {e}"),
        })?;
        Ok(())
    }
}

fn decrypt_error(e: age::DecryptError, what: &dyn Fn() -> String) -> BackupError {
    match e {
        age::DecryptError::NoMatchingKeys => BackupError::WrongKey { what: what() },
        other => BackupError::Invalid {
            what: what(),
            problem: format!("cannot be decrypted: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_files_are_read_as_age_keygen_writes_them_and_errors_show_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let (id, public) = generate_identity();
        let good = dir.path().join("key.txt");
        std::fs::write(
            &good,
            format!(
                "# created: 2026-12-02T10:00:00Z\n# public key: {public}\n{}\n\n",
                id.expose_secret()
            ),
        )
        .unwrap();
        let read = read_identity_file(&good).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].expose_secret(), id.expose_secret());

        // A damaged key: named by line, its text nowhere in the error.
        let damaged = format!("{}x", &id.expose_secret()[..40]);
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, format!("# a comment\n{damaged}\n")).unwrap();
        let e = read_identity_file(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2 is not an age X25519 identity"), "{e}");
        assert!(e.contains("bad.txt"), "{e}");
        assert!(!e.contains(&damaged[..20]), "{e}");

        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "# nothing\n").unwrap();
        let e = read_identity_file(&empty).unwrap_err().to_string();
        assert!(e.contains("holds no identity"), "{e}");
        let e = read_identity_file(&dir.path().join("missing.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.txt"), "{e}");
    }
}

//! Encryption of secrets at rest with an age X25519 identity.
//!
//! Each secret value is encrypted on its own to the identity's public key.
//! The plaintext that gets encrypted is an envelope binding the value to its
//! `(owner, name)`, so a ciphertext copied into another row (by someone able
//! to write `state.db`) is detected on decryption instead of silently handing
//! one resource's password to another.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::iter;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::x25519;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use crate::fsutil::{now_rfc3339, sync_dir};
use crate::StateError;

/// Prefix of the plaintext envelope; the version allows changing the layout.
const ENVELOPE_MAGIC: &[u8] = b"careplane-secret-v1\0";

/// The loaded identity and what it encrypts to.
pub(crate) struct Vault {
    identity: x25519::Identity,
    recipient: x25519::Recipient,
    path: PathBuf,
}

/// What [`Vault::load`] found at the identity path.
pub(crate) enum Loaded {
    /// The identity file exists and was parsed.
    Found(Vault),
    /// There is no file at the path.
    Missing,
}

impl Vault {
    /// Path of the identity file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The public key (`age1...`) secrets are encrypted to.
    pub(crate) fn public_key(&self) -> String {
        self.recipient.to_string()
    }

    /// Reads and parses the identity file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Loaded, StateError> {
        let io_err = |action, source| StateError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(e) => return Err(io_err("open identity file", e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| io_err("inspect identity file", e))?;
        if !meta.is_file() {
            return Err(StateError::IdentityInvalid {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(StateError::IdentityPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut contents = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
        file.read_to_end(&mut contents)
            .map_err(|e| io_err("read identity file", e))?;
        let identity = parse_identity(&contents).map_err(|reason| StateError::IdentityInvalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Loaded::Found(Vault::new(identity, path)))
    }

    /// Generates a new identity and writes it to `path` with mode 0600.
    ///
    /// The file is written under a temporary name created with `O_EXCL` and
    /// mode 0600 (never readable by others, not even briefly), synced, and
    /// then hard-linked to `path`, which fails if `path` exists: a
    /// concurrent opener either sees no file or the complete one, and if two
    /// processes race, both end up using the one that won.
    pub(crate) fn create(path: &Path) -> Result<Vault, StateError> {
        let io_err = |action, source| StateError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let identity = x25519::Identity::generate();
        let public = identity.to_public().to_string();
        let contents = Zeroizing::new(format!(
            "# careplane secret-encryption identity (age X25519), created {}\n\
             # public key: {public}\n\
             # Keep a backup of this file: without it the secrets in state.db cannot be decrypted.\n\
             {}\n",
            now_rfc3339(),
            identity.to_string().expose_secret(),
        ));

        let dir = path.parent().unwrap_or(Path::new("."));
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "identity".into());
        let tmp = dir.join(format!(
            ".{file_name}.tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let write_tmp = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        };
        if let Err(e) = write_tmp() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("create identity file", e));
        }
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        sync_dir(dir);
        match linked {
            Ok(()) => Ok(Vault::new(identity, path)),
            // Lost a race with another process creating it: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match Vault::load(path)? {
                Loaded::Found(v) => Ok(v),
                Loaded::Missing => Err(io_err("create identity file", e)),
            },
            Err(e) => Err(io_err("create identity file", e)),
        }
    }

    fn new(identity: x25519::Identity, path: &Path) -> Vault {
        let recipient = identity.to_public();
        Vault {
            identity,
            recipient,
            path: path.to_path_buf(),
        }
    }

    /// Encrypts `value` as the secret `name` of `owner`.
    pub(crate) fn encrypt(
        &self,
        owner: &str,
        name: &str,
        value: &SecretString,
    ) -> Result<Vec<u8>, StateError> {
        let value = value.expose_secret().as_bytes();
        let mut plain = Zeroizing::new(Vec::with_capacity(
            ENVELOPE_MAGIC.len() + 8 + owner.len() + name.len() + value.len(),
        ));
        plain.extend_from_slice(ENVELOPE_MAGIC);
        for field in [owner.as_bytes(), name.as_bytes()] {
            let len = u32::try_from(field.len()).map_err(|_| {
                StateError::InvalidArgument(format!(
                    "secret owner/name longer than 4 GiB for {owner:.40?}"
                ))
            })?;
            plain.extend_from_slice(&len.to_be_bytes());
            plain.extend_from_slice(field);
        }
        plain.extend_from_slice(value);
        age::encrypt(&self.recipient, &plain).map_err(|e| StateError::Encrypt {
            owner: owner.into(),
            name: name.into(),
            reason: e.to_string(),
        })
    }

    /// Decrypts the stored ciphertext of the secret `name` of `owner`.
    pub(crate) fn decrypt(
        &self,
        owner: &str,
        name: &str,
        ciphertext: &[u8],
    ) -> Result<SecretString, StateError> {
        let fail = |reason: String| StateError::Decrypt {
            owner: owner.into(),
            name: name.into(),
            identity: self.path.clone(),
            reason,
        };
        let decryptor =
            age::Decryptor::new_buffered(ciphertext).map_err(|e| fail(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(iter::once(&self.identity as &dyn age::Identity))
            .map_err(|e| fail(e.to_string()))?;
        // The plaintext is shorter than the ciphertext, so this buffer never
        // reallocates (which would leave an unzeroed copy behind).
        let mut plain = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
        reader
            .read_to_end(&mut plain)
            .map_err(|e| fail(e.to_string()))?;

        let value = open_envelope(&plain, owner, name).map_err(|what| fail(what.into()))?;
        let value = std::str::from_utf8(value)
            .map_err(|_| fail("the decrypted value is not valid UTF-8".into()))?;
        // Exact capacity: SecretString::from(String) shrinks the buffer, which
        // could reallocate and leave an unzeroed copy behind.
        let mut s = String::with_capacity(value.len());
        s.push_str(value);
        Ok(SecretString::from(s))
    }
}

/// Checks the envelope's magic and `(owner, name)` and returns the value.
fn open_envelope<'a>(plain: &'a [u8], owner: &str, name: &str) -> Result<&'a [u8], &'static str> {
    let mut rest = plain
        .strip_prefix(ENVELOPE_MAGIC)
        .ok_or("the decrypted data is not a careplane secret")?;
    for expected in [owner.as_bytes(), name.as_bytes()] {
        if rest.len() < 4 {
            return Err("the decrypted data is truncated");
        }
        let (len, tail) = rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if tail.len() < len {
            return Err("the decrypted data is truncated");
        }
        let (field, tail) = tail.split_at(len);
        if field != expected {
            return Err("the ciphertext belongs to a different secret (the row was copied or tampered with)");
        }
        rest = tail;
    }
    Ok(rest)
}

/// Parses an age identity file: `#` comments and blank lines, and exactly
/// one `AGE-SECRET-KEY-1...` line. Error messages never echo file contents.
fn parse_identity(contents: &[u8]) -> Result<x25519::Identity, String> {
    let text =
        std::str::from_utf8(contents).map_err(|_| "the file is not UTF-8 text".to_string())?;
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let key = keys
        .next()
        .ok_or_else(|| "the file holds no AGE-SECRET-KEY-1... line".to_string())?;
    if keys.next().is_some() {
        return Err(
            "the file holds more than one key; careplane needs exactly one X25519 identity".into(),
        );
    }
    x25519::Identity::from_str(key).map_err(|reason| format!("the key line is invalid ({reason})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::new(x25519::Identity::generate(), Path::new("/nonexistent/id"))
    }

    #[test]
    fn round_trip_and_binding() {
        let v = vault();
        let secret = SecretString::from("s3cr3t-value");
        let ct = v.encrypt("pg-database/a", "password", &secret).unwrap();
        assert!(!ct
            .windows(b"s3cr3t-value".len())
            .any(|w| w == b"s3cr3t-value"));
        let back = v.decrypt("pg-database/a", "password", &ct).unwrap();
        assert_eq!(back.expose_secret(), "s3cr3t-value");

        let err = v.decrypt("pg-database/b", "password", &ct).unwrap_err();
        assert!(err.to_string().contains("different secret"), "{err}");
        let err = v.decrypt("pg-database/a", "other", &ct).unwrap_err();
        assert!(err.to_string().contains("different secret"), "{err}");
        assert!(!err.to_string().contains("s3cr3t"));
    }

    #[test]
    fn other_identity_cannot_decrypt() {
        let ct = vault()
            .encrypt("o", "n", &SecretString::from("value"))
            .unwrap();
        let err = vault().decrypt("o", "n", &ct).unwrap_err();
        assert!(matches!(err, StateError::Decrypt { .. }), "{err}");
    }

    #[test]
    fn parses_age_keygen_style_files() {
        let id = x25519::Identity::generate();
        let file = format!(
            "# created: 2026-01-01T00:00:00Z\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        );
        let parsed = parse_identity(file.as_bytes()).unwrap();
        assert_eq!(parsed.to_public().to_string(), id.to_public().to_string());
        assert!(parse_identity(b"# nothing\n").is_err());
        let two = format!(
            "{}\n{}\n",
            id.to_string().expose_secret(),
            id.to_string().expose_secret()
        );
        let err = parse_identity(two.as_bytes()).err().unwrap();
        assert!(err.contains("more than one"), "{err}");
        let err = parse_identity(b"AGE-SECRET-KEY-1NOTAKEY\n").err().unwrap();
        assert!(!err.contains("NOTAKEY"), "{err}");
    }
}

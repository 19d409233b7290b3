//! Signed checkpoints and the witness they are published to.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::merkle::{from_hex, to_hex, Hash};
use crate::Error;

/// A tree size and root signed by the log's key. The signature covers
/// [`SignedCheckpoint::message`], nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    pub origin: String,
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub root: String,
    /// RFC 3339 UTC.
    pub time: String,
    /// Lower-case hex ed25519 signature of `message()`.
    pub signature: String,
}

impl SignedCheckpoint {
    pub fn sign(key: &SigningKey, origin: &str, size: u64, root: &Hash, time: String) -> Self {
        let mut c = SignedCheckpoint {
            origin: origin.to_string(),
            size,
            root: to_hex(root),
            time,
            signature: String::new(),
        };
        c.signature = to_hex(&key.sign(c.message().as_bytes()).to_bytes());
        c
    }

    /// The exact bytes signed (docs/design/0007-audit-log.md).
    pub fn message(&self) -> String {
        format!(
            "careplane-audit checkpoint v1\norigin {}\nsize {}\nroot {}\ntime {}\n",
            self.origin, self.size, self.root, self.time
        )
    }

    pub fn root_hash(&self) -> Option<Hash> {
        from_hex::<32>(&self.root)
    }

    /// Checks the signature (and that the fields are well formed).
    pub fn verify(&self, key: &VerifyingKey) -> Result<Hash, String> {
        let root = self.root_hash().ok_or("root is not 64 hex digits")?;
        let sig = from_hex::<64>(&self.signature).ok_or("signature is not 128 hex digits")?;
        if self.origin.contains('\n') || self.time.contains('\n') {
            return Err("origin or time contains a line break".into());
        }
        key.verify(self.message().as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| "signature does not verify with the given public key".to_string())?;
        Ok(root)
    }
}

/// A checkpoint as read from a file: parsed, or why it does not parse.
pub type Loaded = Result<SignedCheckpoint, String>;

/// Where checkpoints are published beyond the log's own directory, so that
/// someone who can rewrite the log cannot also hide a truncation. Each
/// checkpoint is a new object, never overwritten. An object-store variant
/// (with object lock) fits here without changing callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Witness {
    /// `checkpoint-<size, 20 digits>.json` files in this directory.
    Directory(PathBuf),
}

impl Witness {
    pub fn publish(&self, c: &SignedCheckpoint) -> Result<(), Error> {
        match self {
            Witness::Directory(dir) => {
                let path = dir.join(format!("checkpoint-{:020}.json", c.size));
                let werr = |e: std::io::Error| Error::Witness {
                    location: path.clone(),
                    detail: e.to_string(),
                };
                fs::create_dir_all(dir).map_err(werr)?;
                let body = serde_json::to_vec(c).expect("checkpoint serializes");
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&path)
                {
                    Ok(mut f) => {
                        f.write_all(&body).map_err(werr)?;
                        f.sync_all().map_err(werr)?;
                        careplane_sys::sync_dir(dir);
                        Ok(())
                    }
                    // Same size published twice (a checkpoint with no new
                    // entries): fine when it names the same root.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let old: SignedCheckpoint = serde_json::from_slice(
                            &fs::read(&path).map_err(werr)?,
                        )
                        .map_err(|e| Error::Witness {
                            location: path.clone(),
                            detail: e.to_string(),
                        })?;
                        if old.root == c.root && old.origin == c.origin {
                            Ok(())
                        } else {
                            Err(Error::Witness {
                                location: path.clone(),
                                detail: format!(
                                    "already holds a checkpoint of size {} with root {}, not {}",
                                    old.size, old.root, c.root
                                ),
                            })
                        }
                    }
                    Err(e) => Err(werr(e)),
                }
            }
        }
    }

    /// Every checkpoint the witness holds, in increasing size.
    pub fn checkpoints(&self) -> Result<Vec<(String, Loaded)>, Error> {
        match self {
            Witness::Directory(dir) => {
                let werr = |e: std::io::Error| Error::Witness {
                    location: dir.clone(),
                    detail: e.to_string(),
                };
                let mut names: Vec<String> = match fs::read_dir(dir) {
                    Ok(rd) => rd
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("checkpoint-") && n.ends_with(".json"))
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(werr(e)),
                };
                names.sort();
                let mut out = Vec::new();
                for n in names {
                    let p = dir.join(&n);
                    let parsed = fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                        serde_json::from_slice::<SignedCheckpoint>(&b).map_err(|e| e.to_string())
                    });
                    out.push((p.display().to_string(), parsed));
                }
                Ok(out)
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Witness::Directory(d) => d.display().to_string(),
        }
    }
}

pub(crate) fn read_checkpoints(path: &Path) -> Result<Vec<(usize, Loaded)>, Error> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            (
                i + 1,
                serde_json::from_str::<SignedCheckpoint>(l).map_err(|e| e.to_string()),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_every_field() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let c = SignedCheckpoint::sign(
            &key,
            "o",
            3,
            &[1u8; 32],
            "2026-01-01T00:00:00.000000Z".into(),
        );
        assert!(c.verify(&key.verifying_key()).is_ok());
        for tamper in [
            |c: &mut SignedCheckpoint| c.size += 1,
            |c: &mut SignedCheckpoint| c.origin.push('x'),
            |c: &mut SignedCheckpoint| c.root = to_hex(&[2u8; 32]),
            |c: &mut SignedCheckpoint| c.time = "2027-01-01T00:00:00.000000Z".into(),
        ] {
            let mut t = c.clone();
            tamper(&mut t);
            assert!(t.verify(&key.verifying_key()).is_err());
        }
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(c.verify(&other.verifying_key()).is_err());
    }
}

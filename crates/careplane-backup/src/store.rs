//! A blocking face on `object_store`: the engine and `archive_command` are
//! synchronous, so the repository owns a small tokio runtime and every call
//! waits for its answer. Errors name the repository and the object.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore, PutPayload};

use crate::error::{invalid, BackupError, Result};
use crate::objectlock::{lock_error, long_days, Direct, Immutability};

pub(crate) struct Store {
    rt: tokio::runtime::Runtime,
    inner: Arc<dyn ObjectStore>,
    /// The URL as shown in messages (no user info).
    pub(crate) url: String,
    /// With immutability, puts go through here with Object Lock retention.
    pub(crate) locked: Option<Direct>,
    /// A file:// repository's directory: objects are read from it directly
    /// (see [`Store::get`]).
    local: Option<std::path::PathBuf>,
}

/// An object as listed: its name below the repository prefix and its size.
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) modified: jiff::Timestamp,
}

impl Store {
    /// `file:///abs/path` or `s3://bucket/prefix`. For s3, endpoint, region
    /// and credentials come from the environment (`AWS_ENDPOINT`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP`...), overridden by `options` (same keys, e.g.
    /// `aws_endpoint`). careplane's own `object_lock_mode` and
    /// `object_lock_days` (see [`Immutability::store_options`]) make every
    /// put carry Object Lock retention; they need an s3:// repository.
    pub(crate) fn open(url: &str, options: &[(String, String)]) -> Result<Store> {
        let (lock, options) = Immutability::take_from(options)?;
        let options = &options[..];
        let mut locked = None;
        let mut local = None;
        let parsed = url::Url::parse(url)
            .map_err(|e| invalid(format!("repository URL {url:?}"), e.to_string()))?;
        let mut shown = parsed.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let shown = shown.to_string();
        let inner: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" if lock.is_some() => {
                return Err(invalid(
                    format!("repository {shown}"),
                    "immutability (S3 Object Lock) needs an s3:// repository; a file:// repository cannot lock its files",
                ))
            }
            "file" => {
                let path = parsed.to_file_path().map_err(|_| {
                    invalid(
                        format!("repository URL {shown}"),
                        "a file:// URL needs an absolute local path",
                    )
                })?;
                std::fs::create_dir_all(&path).map_err(|e| BackupError::Io {
                    what: format!("creating repository directory {}", path.display()),
                    source: e,
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .map_err(|e| store_error(&shown, "opening", e))?;
                local = Some(path);
                Arc::new(fs)
            }
            "s3" => {
                let retry = object_store::RetryConfig {
                    backoff: object_store::BackoffConfig::default(),
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                };
                let client = object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120));
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .with_client_options(client.clone());
                for (k, v) in options {
                    let key = k
                        .parse::<object_store::aws::AmazonS3ConfigKey>()
                        .map_err(|e| invalid(format!("repository option {k}"), e.to_string()))?;
                    b = b.with_config(key, v);
                }
                let s3 = b
                    .clone()
                    .build()
                    .map_err(|e| store_error(&shown, "opening", e))?;
                let prefix = parsed.path().trim_matches('/');
                if let Some(lock) = lock {
                    // Object Lock puts are careplane's own requests, which
                    // do not send object_store's encryption headers.
                    let sse = "aws_server_side_encryption"
                        .parse::<object_store::aws::AmazonS3ConfigKey>()
                        .expect("object_store knows its own key");
                    if b.get_config_value(&sse).is_some() {
                        return Err(invalid(
                            format!("repository {shown}"),
                            "immutability (S3 Object Lock) with server-side encryption options is not supported yet; \
                             use the bucket's default encryption instead",
                        ));
                    }
                    locked = Some(
                        Direct::new(&b, &s3, client, parsed.host_str().unwrap_or(""), prefix, lock)
                            .map_err(|e| store_error(&shown, "opening", e))?,
                    );
                }
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
                }
            }
            other => {
                return Err(invalid(
                    format!("repository URL {shown}"),
                    format!("unsupported scheme {other:?} (use file:// or s3://)"),
                ))
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| BackupError::Io {
                what: "starting the object store runtime".into(),
                source: e,
            })?;
        Ok(Store {
            rt,
            inner,
            url: shown,
            locked,
            local,
        })
    }

    /// The policy's immutability, if this store locks what it writes.
    pub(crate) fn lock(&self) -> Option<Immutability> {
        self.locked.as_ref().map(|d| d.lock)
    }

    fn err(&self, action: String, e: object_store::Error) -> BackupError {
        store_error(&self.url, action, e)
    }

    /// The object's bytes, or `None` if there is no such object.
    pub(crate) fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        if let Some(root) = &self.local {
            // object_store's local store hands every read to Tokio's
            // blocking pool and back, twice: four thread switches per
            // object, which on a busy machine made restoring a thousand
            // small catalog files take seconds. Names are careplane's own
            // (`chunks/…`, `manifests/…`); one that could leave the
            // directory is refused rather than joined.
            if name.is_empty()
                || name.starts_with('/')
                || name.contains('\0')
                || name
                    .split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(invalid(
                    format!("repository {}: object name {name:?}", self.url),
                    "is not a plain relative name",
                ));
            }
            return match std::fs::read(root.join(name)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(BackupError::Io {
                    what: format!("repository {}: reading {name}", self.url),
                    source: e,
                }),
            };
        }
        let path = ObjPath::from(name);
        let res = self.rt.block_on(async {
            let r = self.inner.get(&path).await?;
            r.bytes().await
        });
        match res {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("reading {name}"), e)),
        }
    }

    /// The first `len` bytes of an object, or `None` if there is no such object.
    pub(crate) fn get_head(&self, name: &str, len: u64) -> Result<Option<Vec<u8>>> {
        let path = ObjPath::from(name);
        match self.rt.block_on(self.inner.get_range(&path, 0..len)) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("reading {name}"), e)),
        }
    }

    /// Writes an object; with immutability, locked for the policy's days
    /// (objects of one backup: manifest, index, state, WAL).
    pub(crate) fn put(&self, name: &str, data: Vec<u8>) -> Result<()> {
        match &self.locked {
            Some(d) => self.put_locked(name, data, d.lock.days),
            None => self.put_plain(name, data),
        }
    }

    /// Writes an object later backups reuse (chunks, the config); with
    /// immutability, locked for twice the policy's days (docs/design/0015).
    pub(crate) fn put_shared(&self, name: &str, data: Vec<u8>) -> Result<()> {
        match &self.locked {
            Some(d) => self.put_locked(name, data, long_days(d.lock.days)),
            None => self.put_plain(name, data),
        }
    }

    fn put_locked(&self, name: &str, data: Vec<u8>, days: u32) -> Result<()> {
        let d = self.locked.as_ref().expect("only called when locked");
        let until = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(24 * days as i64))
            .unwrap_or(jiff::Timestamp::MAX);
        self.rt
            .block_on(d.put(name, data, until))
            .map_err(|e| lock_error(&self.url, format!("writing {name} with object lock"), e))
    }

    /// When Object Lock keeps the object until a later time than now: its
    /// retain-until date. `None` without immutability, or when the object
    /// has no retention left (or is gone).
    pub(crate) fn locked_until(&self, name: &str) -> Result<Option<jiff::Timestamp>> {
        let Some(d) = &self.locked else {
            return Ok(None);
        };
        let until = self
            .rt
            .block_on(d.retain_until(name))
            .map_err(|e| lock_error(&self.url, format!("reading the object lock of {name}"), e))?;
        Ok(until.filter(|u| *u > jiff::Timestamp::now()))
    }

    /// With immutability: fails unless the bucket has Object Lock enabled
    /// (which S3 allows only on versioned buckets), naming the bucket. A
    /// bucket's default retention is not needed: every put sets its own.
    pub(crate) fn check_bucket_lock(&self) -> Result<()> {
        let Some(d) = &self.locked else {
            return Ok(());
        };
        let lock = self.rt.block_on(d.bucket_lock()).map_err(|e| {
            lock_error(
                &self.url,
                format!(
                    "reading the Object Lock configuration of bucket {}",
                    d.bucket
                ),
                e,
            )
        })?;
        if !lock.enabled {
            return Err(BackupError::Repository {
                repository: self.url.clone(),
                problem: format!(
                    "the policy asks for immutability but bucket {} does not have S3 Object Lock enabled; \
                     create the bucket with Object Lock (`aws s3api create-bucket --object-lock-enabled-for-bucket`, \
                     or enable it with put-object-lock-configuration), or remove `immutability` from the policy",
                    d.bucket
                ),
            });
        }
        Ok(())
    }

    fn put_plain(&self, name: &str, data: Vec<u8>) -> Result<()> {
        let path = ObjPath::from(name);
        self.rt
            .block_on(self.inner.put(&path, PutPayload::from(data)))
            .map(|_| ())
            .map_err(|e| self.err(format!("writing {name}"), e))
    }

    /// When the object was last written, in the store's clock.
    pub(crate) fn modified(&self, name: &str) -> Result<Option<jiff::Timestamp>> {
        let path = ObjPath::from(name);
        match self.rt.block_on(self.inner.head(&path)) {
            Ok(m) => Ok(Some(
                jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis())
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("looking up {name}"), e)),
        }
    }

    pub(crate) fn exists(&self, name: &str) -> Result<bool> {
        let path = ObjPath::from(name);
        match self.rt.block_on(self.inner.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(format!("looking up {name}"), e)),
        }
    }

    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        let path = ObjPath::from(name);
        match self.rt.block_on(self.inner.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("deleting {name}"), e)),
        }
    }

    /// Every object below `prefix` (a directory name without trailing `/`).
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let path = ObjPath::from(prefix);
        let metas: Vec<ObjectMeta> = self
            .rt
            .block_on(self.inner.list(Some(&path)).try_collect())
            .map_err(|e| self.err(format!("listing {prefix}/"), e))?;
        Ok(metas
            .into_iter()
            .map(|m| Listed {
                name: m.location.to_string(),
                size: m.size,
                modified: jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis())
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            })
            .collect())
    }
}

fn store_error(url: &str, action: impl Into<String>, e: object_store::Error) -> BackupError {
    BackupError::Store {
        repository: url.to_string(),
        action: action.into(),
        source: e,
    }
}

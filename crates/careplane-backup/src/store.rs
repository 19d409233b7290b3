//! A blocking face on `object_store`: the engine and `archive_command` are
//! synchronous, so the repository owns a small tokio runtime and every call
//! waits for its answer. Errors name the repository and the object.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore, PutPayload};

use crate::error::{invalid, BackupError, Result};

pub(crate) struct Store {
    rt: tokio::runtime::Runtime,
    inner: Arc<dyn ObjectStore>,
    /// The URL as shown in messages (no user info).
    pub(crate) url: String,
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
    /// `aws_endpoint`).
    pub(crate) fn open(url: &str, options: &[(String, String)]) -> Result<Store> {
        let parsed = url::Url::parse(url)
            .map_err(|e| invalid(format!("repository URL {url:?}"), e.to_string()))?;
        let mut shown = parsed.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let shown = shown.to_string();
        let inner: Arc<dyn ObjectStore> = match parsed.scheme() {
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
                    .with_client_options(client);
                for (k, v) in options {
                    let key = k
                        .parse::<object_store::aws::AmazonS3ConfigKey>()
                        .map_err(|e| invalid(format!("repository option {k}"), e.to_string()))?;
                    b = b.with_config(key, v);
                }
                let s3 = b.build().map_err(|e| store_error(&shown, "opening", e))?;
                let prefix = parsed.path().trim_matches('/');
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
        })
    }

    fn err(&self, action: String, e: object_store::Error) -> BackupError {
        store_error(&self.url, action, e)
    }

    /// The object's bytes, or `None` if there is no such object.
    pub(crate) fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
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

    pub(crate) fn put(&self, name: &str, data: Vec<u8>) -> Result<()> {
        let path = ObjPath::from(name);
        self.rt
            .block_on(self.inner.put(&path, PutPayload::from(data)))
            .map(|_| ())
            .map_err(|e| self.err(format!("writing {name}"), e))
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

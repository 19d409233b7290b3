//! Test support: repositories on `file://` (a temp dir) and `s3://` (moto's
//! server mode on a free loopback port, started here and killed on drop), and
//! direct access to the stored objects to break them on purpose.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use careplane_backup::{generate_identity, generate_secret, RepoKeys, RepoOptions, Repository};
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;

/// Where a test's repository lives.
pub struct Backend {
    pub url: String,
    pub options: Vec<(String, String)>,
    raw: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
    _dir: Option<tempfile::TempDir>,
    _moto: Option<Moto>,
}

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `moto_server` on a free port; `None` (with the reason printed) when
/// it is not installed and we are not in CI. In CI a missing moto fails.
pub fn start_moto() -> Option<Moto> {
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        let msg = "moto_server is not installed (scripts/install-deps installs it with pip)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("skipping the s3:// variant: {msg}");
        return None;
    }
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

/// Creates a bucket with a plain HTTP request (moto does not check signatures).
fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "creating bucket: {answer}"
    );
}

pub fn s3_options(port: u16) -> Vec<(String, String)> {
    vec![
        ("aws_endpoint".into(), format!("http://127.0.0.1:{port}")),
        ("aws_allow_http".into(), "true".into()),
        ("aws_region".into(), "us-east-1".into()),
        ("aws_access_key_id".into(), "testing".into()),
        ("aws_secret_access_key".into(), "testing".into()),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

pub fn file_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    std::fs::create_dir(&path).unwrap();
    let raw = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&path).unwrap());
    Backend {
        url: format!("file://{}", path.display()),
        options: Vec::new(),
        raw,
        rt: runtime(),
        _dir: Some(dir),
        _moto: None,
    }
}

pub fn s3_backend() -> Option<Backend> {
    let moto = start_moto()?;
    create_bucket(moto.port, "careplane-test");
    let options = s3_options(moto.port);
    let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name("careplane-test");
    for (k, v) in &options {
        b = b.with_config(k.parse().unwrap(), v);
    }
    let raw = Arc::new(object_store::prefix::PrefixStore::new(
        b.build().unwrap(),
        "tenants/stmarys",
    ));
    Some(Backend {
        url: "s3://careplane-test/tenants/stmarys".into(),
        options,
        raw,
        rt: runtime(),
        _dir: None,
        _moto: Some(moto),
    })
}

impl Backend {
    pub fn open(&self, keys: &RepoKeys) -> careplane_backup::Result<Repository> {
        Repository::open_with(
            &self.url,
            keys,
            RepoOptions {
                store_options: self.options.clone(),
                threads: 2,
                ..RepoOptions::default()
            },
        )
    }

    pub fn names(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let mut v: Vec<String> = self
            .rt
            .block_on(
                self.raw
                    .list(Some(&ObjPath::from(prefix)))
                    .try_collect::<Vec<_>>(),
            )
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        v.sort();
        v
    }

    pub fn get(&self, name: &str) -> Vec<u8> {
        self.rt
            .block_on(async { self.raw.get(&ObjPath::from(name)).await?.bytes().await })
            .unwrap()
            .to_vec()
    }

    pub fn put(&self, name: &str, data: Vec<u8>) {
        self.rt
            .block_on(self.raw.put(&ObjPath::from(name), data.into()))
            .unwrap();
    }

    pub fn delete(&self, name: &str) {
        self.rt
            .block_on(self.raw.delete(&ObjPath::from(name)))
            .unwrap();
    }
}

/// Keys with one recipient and its identity.
pub fn keys() -> RepoKeys {
    let (identity, recipient) = generate_identity();
    RepoKeys {
        secret: generate_secret(),
        recipients: vec![recipient],
        identities: vec![identity],
    }
}

/// Deterministic pseudo-random bytes (incompressible).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs a test body on file:// and on s3:// (when moto is there).
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:path) => {
        mod $name {
            #[test]
            fn file() {
                $body(&$crate::common::file_backend());
            }
            #[test]
            fn s3() {
                if let Some(b) = $crate::common::s3_backend() {
                    $body(&b);
                }
            }
        }
    };
}

//! Runtime of careplane's `local` target: real PostgreSQL clusters and Redis
//! servers run as child processes on this machine, hardened, with tenant
//! databases, roles and Redis ACL users provisioned in them.
//!
//! The crate knows nothing about specs or the state store: plain parameters go
//! in, and every operation has *ensure* semantics. The engine may re-run any
//! call after a crash (even `kill -9` half-way through) and the re-run
//! converges instead of failing because something already exists.
//!
//! Secrets are carried as [`SecretString`] and never appear in errors, logs,
//! command lines or process arguments: PostgreSQL role passwords travel as
//! SCRAM verifiers computed client-side, the initdb superuser password goes
//! through a short-lived 0600 file, and the Redis ACL file only holds SHA-256
//! hashes.

#![warn(missing_docs)]

pub mod error;
pub mod pg;
pub mod pki;
pub mod redis;
pub mod system;
#[cfg(feature = "testing")]
pub mod testing;

mod fsutil;

/// Re-exported (as `redis_client`, since [`redis`] is this crate's module) so
/// callers of [`redis::RedisServer::admin`] use the exact `redis` version this
/// crate links.
pub use ::redis as redis_client;
pub use error::{LocalError, Result};
/// Re-exported so callers of [`pg::PgCluster::admin`] and [`pg::connect_tenant`]
/// use the exact `postgres` version this crate links.
pub use postgres;
pub use secrecy::{ExposeSecret, SecretString};

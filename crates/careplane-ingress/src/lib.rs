//! careplane's ingress proxy for the local target (issue 18, docs/design/0006-ingress.md).
//!
//! The engine writes a [`Config`] with [`write_config`], checks it with
//! [`load_config`], runs [`serve`] in a process of its own (`careplane
//! ingress-run <config>`), and sends it SIGHUP after rewriting the file. The
//! admin listener's `/status` reports the generation in use.

pub mod accesslog;
pub mod config;
pub mod filter;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
mod server;
pub mod snapshot;
mod upstream;

use std::path::PathBuf;

pub use config::{
    host_name, write_config, Config, LimitOverrides, Limits, Listen, Rate, Route, TlsFiles,
    Upstream, DEFAULT_DOMAIN,
};
pub use server::{load_config, serve, start, Running};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {field}: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{what} ({path}): {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

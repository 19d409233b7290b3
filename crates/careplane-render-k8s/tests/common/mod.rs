//! The example platform and options every test renders with.
#![allow(dead_code)]

use std::path::PathBuf;

use careplane_render_k8s::RenderOptions;
use careplane_spec::SpecSet;

pub fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hospital-group")
}

pub fn example() -> SpecSet {
    careplane_spec::load(&[example_dir()]).expect("the example validates")
}

/// Digests of the right shape; nothing pulls them in tests.
pub const ODOO: &str = "docker.io/library/odoo:18.0@sha256:1111111111111111111111111111111111111111111111111111111111111111";
pub const REDIS: &str = "docker.io/library/redis:7.2@sha256:2222222222222222222222222222222222222222222222222222222222222222";
pub const POSTGRES: &str = "ghcr.io/cloudnative-pg/postgresql:15.8@sha256:3333333333333333333333333333333333333333333333333333333333333333";

pub fn opts() -> RenderOptions {
    RenderOptions::new(ODOO, REDIS, POSTGRES, "test-role-key-not-a-secret")
}

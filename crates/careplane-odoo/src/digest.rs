//! A fingerprint of the configuration careplane wrote, so `status` can tell
//! when the files on disk are no longer what careplane wrote.

use std::path::Path;

use crate::config::Role;

/// SHA-256 (hex) over the web and cron configuration files in `dir`, in
/// that order; `None` when either cannot be read.
pub fn config_digest(dir: &Path) -> Option<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for role in [Role::Web, Role::Cron] {
        let bytes = std::fs::read(dir.join(role.config_file_name())).ok()?;
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(&bytes);
    }
    Some(
        ctx.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

//! `careplane audit prove`, `audit query` and `audit export --format`
//! (issue 20, M11; formats in docs/audit.md).

use anyhow::{bail, Context, Result};
use careplane_engine::careplane_audit::{self, Filter, Snapshot};
use careplane_engine::Engine;
use clap::ValueEnum;
use serde_json::{json, Value};

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One entry per line, exactly the stored bytes.
    Jsonl,
    /// RFC 5424 lines (facility log audit) for a SIEM.
    Syslog,
}

fn snapshot(engine: &Engine) -> Result<Snapshot> {
    let dir = engine.audit_dir();
    if !dir.join("meta.json").exists() {
        bail!("{} holds no audit log yet", dir.display());
    }
    Snapshot::load(&dir).with_context(|| format!("audit log {}", dir.display()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The inclusion proof of entry `seq` against the latest signed checkpoint:
/// `{"entry","proof","checkpoint","public_key"}` — what the script of
/// docs/audit.md checks.
pub fn prove_inclusion(engine: &Engine, seq: u64) -> Result<Value> {
    let (checkpoint, key) = engine.audit_checkpoint()?;
    let snap = snapshot(engine)?;
    if seq >= checkpoint.size {
        bail!(
            "entry {seq} is not covered by the latest signed checkpoint ({} entries; the log holds {})",
            checkpoint.size,
            snap.size()
        );
    }
    let proof = snap
        .prove_inclusion(seq, &checkpoint)
        .with_context(|| format!("proving entry {seq}"))?;
    let entry = String::from_utf8(snap.entry_bytes(seq).expect("seq below size").to_vec())
        .with_context(|| format!("entry {seq} is not UTF-8"))?;
    Ok(json!({
        "entry": entry,
        "proof": proof,
        "checkpoint": checkpoint,
        "public_key": hex(key.as_bytes()),
    }))
}

/// The consistency proof from the tree of `old` entries to the latest
/// signed checkpoint, with the log's own signed checkpoint of size `old`
/// when there is one: `{"proof","old_checkpoint","checkpoint","public_key"}`.
pub fn prove_consistency(engine: &Engine, old: u64) -> Result<Value> {
    let (checkpoint, key) = engine.audit_checkpoint()?;
    let snap = snapshot(engine)?;
    if old > checkpoint.size {
        bail!(
            "--consistency {old}: the latest signed checkpoint covers {} entries",
            checkpoint.size
        );
    }
    let proof = snap
        .prove_consistency(old, checkpoint.size)
        .with_context(|| format!("proving {old} -> {}", checkpoint.size))?;
    let path = engine.audit_dir().join("checkpoints.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let old_checkpoint = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<careplane_audit::SignedCheckpoint>(l).ok())
        .find(|c| c.size == old && c.verify(&key).is_ok());
    Ok(json!({
        "proof": proof,
        "old_checkpoint": old_checkpoint,
        "checkpoint": checkpoint,
        "public_key": hex(key.as_bytes()),
    }))
}

pub fn filter(
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    tenant: Option<String>,
    since: Option<String>,
    until: Option<String>,
) -> Result<Filter> {
    let time = |flag: &str, v: Option<String>| -> Result<Option<i64>> {
        v.map(|s| careplane_audit::parse_time(&s).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
            .transpose()
    };
    Ok(Filter {
        actor,
        action,
        target,
        tenant,
        since: time("--since", since)?,
        until: time("--until", until)?,
    })
}

/// Writes the selected entries to stdout in `format`; returns how many.
pub fn export(engine: &Engine, format: ExportFormat, filter: &Filter) -> Result<u64> {
    let snap = snapshot(engine)?;
    let mut out = std::io::stdout().lock();
    let n = match format {
        ExportFormat::Jsonl => snap.export_jsonl(filter, &mut out)?,
        ExportFormat::Syslog => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "-".into());
            snap.export_syslog(filter, &host, &mut out)?
        }
    };
    Ok(n)
}

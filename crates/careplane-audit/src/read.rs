//! Reading a log without its lock: proofs, queries and exports.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::SignedCheckpoint;
use crate::event::{format_time, Entry, Status};
use crate::merkle::{leaf_hash, to_hex, ConsistencyProof, Hash, InclusionProof, Tree};
use crate::{read_meta, Error, ENTRIES};

/// The complete lines of `entries.jsonl` at the time of loading, hashed
/// into a tree. A line still being written (no `\n` yet) is left out.
pub struct Snapshot {
    dir: PathBuf,
    origin: String,
    data: Vec<u8>,
    /// Start offset of every line, plus the end.
    offsets: Vec<usize>,
    tree: Tree,
}

/// Which entries a query or export selects; every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Matches the target itself or anything below it (`odoo-env/stmarys`
    /// matches `odoo-env/stmarys/production`).
    pub target: Option<String>,
    pub tenant: Option<String>,
    /// Microseconds since the epoch, inclusive.
    pub since: Option<i64>,
    /// Microseconds since the epoch, exclusive.
    pub until: Option<i64>,
}

impl Filter {
    fn matches(&self, e: &Entry, since: &Option<String>, until: &Option<String>) -> bool {
        self.actor.as_ref().is_none_or(|a| &e.actor.id == a)
            && self.action.as_ref().is_none_or(|a| &e.action == a)
            && self.target.as_ref().is_none_or(|t| {
                e.target == *t || (e.target.starts_with(t.as_str()) && e.target[t.len()..].starts_with('/'))
            })
            && self.tenant.as_ref().is_none_or(|t| e.tenant.as_ref() == Some(t))
            // Entry times share one fixed-width format, so strings compare as times.
            && since.as_ref().is_none_or(|s| e.time.as_str() >= s.as_str())
            && until.as_ref().is_none_or(|u| e.time.as_str() < u.as_str())
    }
}

/// One entry of a per-tenant export: its exact bytes (as a string) and the
/// proof that they are leaf `proof.leaf_index` of the checkpoint's tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenEntry {
    pub entry: String,
    pub proof: InclusionProof,
}

/// What a tenant's auditor receives: a signed checkpoint and the tenant's
/// entries with inclusion proofs against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantExport {
    pub tenant: String,
    pub public_key: String,
    pub checkpoint: SignedCheckpoint,
    pub entries: Vec<ProvenEntry>,
}

impl Snapshot {
    pub fn load(dir: &Path) -> Result<Snapshot, Error> {
        let meta = read_meta(dir)?.ok_or_else(|| Error::Corrupt {
            path: dir.join(crate::META),
            detail: "missing: is this an audit log directory?".into(),
        })?;
        let path = dir.join(ENTRIES);
        let mut data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        data.truncate(complete);
        let (lines, _) = crate::scan::split_lines(&data);
        let leaves = crate::scan::map_lines(&lines, leaf_hash);
        let mut offsets = Vec::with_capacity(lines.len() + 1);
        offsets.push(0);
        let mut pos = 0;
        for line in &lines {
            pos += line.len() + 1;
            offsets.push(pos);
        }
        drop(lines);
        let mut tree = Tree::new();
        for leaf in leaves {
            tree.push(leaf);
        }
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            origin: meta.origin,
            data,
            offsets,
            tree,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn size(&self) -> u64 {
        self.tree.len()
    }

    pub fn root(&self, size: u64) -> Option<Hash> {
        self.tree.root(size)
    }

    /// The exact bytes of entry `seq` (its leaf), without the newline.
    pub fn entry_bytes(&self, seq: u64) -> Option<&[u8]> {
        let i = usize::try_from(seq).ok()?;
        (i + 1 < self.offsets.len()).then(|| &self.data[self.offsets[i]..self.offsets[i + 1] - 1])
    }

    pub fn entry(&self, seq: u64) -> Result<Entry, Error> {
        let bytes = self.entry_bytes(seq).ok_or_else(|| {
            Error::Request(format!(
                "no entry {seq}: the log holds {} entries",
                self.size()
            ))
        })?;
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            path: self.dir.join(ENTRIES),
            detail: format!("entry {seq} (line {}): {e}", seq + 1),
        })
    }

    fn check_checkpoint(&self, c: &SignedCheckpoint) -> Result<(), Error> {
        if c.origin != self.origin {
            return Err(Error::Request(format!(
                "the checkpoint is of log {:?}, this log is {:?}",
                c.origin, self.origin
            )));
        }
        let root = self.root(c.size).ok_or_else(|| {
            Error::Request(format!(
                "the checkpoint covers {} entries, the log holds {}",
                c.size,
                self.size()
            ))
        })?;
        if to_hex(&root) != c.root {
            return Err(Error::Request(format!(
                "the log's first {} entries do not have the checkpoint's root {}: run verify",
                c.size, c.root
            )));
        }
        Ok(())
    }

    /// The RFC 9162 inclusion proof of entry `seq` in the checkpoint's tree
    /// (the checkpoint must describe this log; its signature is the
    /// verifier's business).
    pub fn prove_inclusion(
        &self,
        seq: u64,
        checkpoint: &SignedCheckpoint,
    ) -> Result<InclusionProof, Error> {
        self.check_checkpoint(checkpoint)?;
        if seq >= checkpoint.size {
            return Err(Error::Request(format!(
                "entry {seq} is not covered by the checkpoint of {} entries",
                checkpoint.size
            )));
        }
        Ok(InclusionProof {
            leaf_index: seq,
            tree_size: checkpoint.size,
            inclusion_path: self
                .tree
                .inclusion_path(seq, checkpoint.size)
                .expect("checked above"),
        })
    }

    /// The RFC 9162 consistency proof that the tree of `old_size` entries is
    /// a prefix of the tree of `new_size` entries.
    pub fn prove_consistency(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, Error> {
        let path = self
            .tree
            .consistency_path(old_size, new_size)
            .ok_or_else(|| {
                Error::Request(format!(
                "cannot prove {old_size} -> {new_size}: sizes must be increasing and at most {}",
                self.size()
            ))
            })?;
        Ok(ConsistencyProof {
            first: old_size,
            second: new_size,
            consistency_path: path,
        })
    }

    /// Entries matching `filter`, in sequence order, with their exact bytes.
    pub fn select(&self, filter: &Filter) -> Result<Vec<(Entry, &[u8])>, Error> {
        let since = filter.since.map(format_time);
        let until = filter.until.map(format_time);
        let mut out = Vec::new();
        for seq in 0..self.size() {
            let e = self.entry(seq)?;
            if filter.matches(&e, &since, &until) {
                out.push((e, self.entry_bytes(seq).expect("seq below size")));
            }
        }
        Ok(out)
    }

    pub fn query(&self, filter: &Filter) -> Result<Vec<Entry>, Error> {
        Ok(self.select(filter)?.into_iter().map(|(e, _)| e).collect())
    }

    /// JSON lines, each exactly the stored entry (so each line's leaf hash
    /// is checkable against a checkpoint).
    pub fn export_jsonl(&self, filter: &Filter, out: &mut dyn Write) -> Result<u64, Error> {
        let mut n = 0;
        for (_, bytes) in self.select(filter)? {
            out.write_all(bytes)
                .and_then(|_| out.write_all(b"\n"))
                .map_err(export_err)?;
            n += 1;
        }
        Ok(n)
    }

    /// RFC 5424 lines: facility 13 (log audit), severity notice for
    /// succeeded and warning otherwise; structured data carries seq, actor,
    /// action, result and tenant; the message is the entry itself.
    pub fn export_syslog(
        &self,
        filter: &Filter,
        hostname: &str,
        out: &mut dyn Write,
    ) -> Result<u64, Error> {
        let host = syslog_name(hostname, 255);
        let mut n = 0;
        for (e, bytes) in self.select(filter)? {
            let severity = if e.result.status == Status::Succeeded {
                5
            } else {
                4
            };
            let status = match e.result.status {
                Status::Succeeded => "succeeded",
                Status::Failed => "failed",
                Status::Refused => "refused",
            };
            let line = format!(
                "<{}>1 {} {host} careplane-audit - {} [careplane-audit@32473 seq=\"{}\" actor=\"{}\" action=\"{}\" result=\"{status}\" tenant=\"{}\"] ",
                13 * 8 + severity,
                e.time,
                syslog_name(&e.action, 32),
                e.seq,
                sd_escape(&e.actor.id),
                sd_escape(&e.action),
                sd_escape(e.tenant.as_deref().unwrap_or("")),
            );
            out.write_all(line.as_bytes())
                .and_then(|_| out.write_all(bytes))
                .and_then(|_| out.write_all(b"\n"))
                .map_err(export_err)?;
            n += 1;
        }
        Ok(n)
    }

    /// A tenant's entries, each with its inclusion proof against
    /// `checkpoint` (which must describe this log).
    pub fn export_tenant(
        &self,
        tenant: &str,
        checkpoint: &SignedCheckpoint,
        public_key: &ed25519_dalek::VerifyingKey,
    ) -> Result<TenantExport, Error> {
        self.check_checkpoint(checkpoint)?;
        let filter = Filter {
            tenant: Some(tenant.to_string()),
            ..Filter::default()
        };
        let mut entries = Vec::new();
        for (e, bytes) in self.select(&filter)? {
            if e.seq >= checkpoint.size {
                break;
            }
            entries.push(ProvenEntry {
                entry: String::from_utf8(bytes.to_vec()).map_err(|_| Error::Corrupt {
                    path: self.dir.join(ENTRIES),
                    detail: format!("entry {} is not UTF-8", e.seq),
                })?,
                proof: self.prove_inclusion(e.seq, checkpoint)?,
            });
        }
        Ok(TenantExport {
            tenant: tenant.to_string(),
            public_key: to_hex(public_key.as_bytes()),
            checkpoint: checkpoint.clone(),
            entries,
        })
    }
}

fn export_err(e: std::io::Error) -> Error {
    Error::Request(format!("writing the export: {e}"))
}

/// RFC 5424 header fields: printable US-ASCII without spaces, bounded.
fn syslog_name(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

/// RFC 5424 §6.3.3: `"`, `\` and `]` are escaped in PARAM-VALUE.
fn sd_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

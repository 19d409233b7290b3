//! `verify`: one streaming pass over a log, its checkpoints and a witness.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::checkpoint::{read_checkpoints, SignedCheckpoint, Witness};
use crate::merkle::{from_hex, leaf_hash, to_hex, Frontier, Hash};
use crate::{read_meta, Error, CHECKPOINTS, ENTRIES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A line that does not parse as an entry.
    Unreadable,
    /// The expected seq is not there (deleted, or its seq altered).
    Missing,
    /// Entries in the wrong order.
    OutOfOrder,
    /// A line that does not belong (its seq repeats, or the chain skips it).
    Inserted,
    /// An entry whose bytes are not the ones its successor was chained to.
    Modified,
    /// A signed checkpoint covers more entries than the log holds.
    Truncated,
    /// A checkpoint's root differs from the log's at that size: entries in
    /// the range were rewritten (with the chain recomputed).
    Rewritten,
    /// A checkpoint whose signature does not verify, or that is unreadable.
    BadCheckpoint,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The first sequence number the problem concerns (None for a bad
    /// checkpoint that says nothing about entries).
    pub seq: Option<u64>,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(s) => write!(f, "seq {s}: {:?}: {}", self.kind, self.detail),
            None => write!(f, "{:?}: {}", self.kind, self.detail),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Complete lines in `entries.jsonl`.
    pub entries: u64,
    /// The smallest seq any problem names.
    pub first_bad_seq: Option<u64>,
    pub problems: Vec<Problem>,
    /// Checkpoints (log and witness) with a valid signature and a matching root.
    pub checkpoints_ok: u64,
    /// The largest witnessed checkpoint that verified.
    pub witnessed_size: Option<u64>,
    /// Entries from this seq on are covered by no verified checkpoint: only
    /// the hash chain protects them.
    pub unsigned_from: Option<u64>,
    /// Bytes after the last complete line (a write in progress or a torn
    /// tail the next `open` cuts off); not part of the log.
    pub incomplete_tail_bytes: u64,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    seq: Option<u64>,
    #[serde(borrow)]
    prev: Option<&'a str>,
}

#[derive(Clone, Copy)]
struct Rec {
    seq: Option<u64>,
    prev: Option<Hash>,
    leaf: Hash,
    line: u64,
    /// Set once evaluated: the seq this line should have held.
    expected: u64,
    flagged: bool,
    out_of_order: bool,
}

struct Chain {
    window: Vec<Rec>,
    next_expected: u64,
    problems: Vec<Problem>,
}

impl Chain {
    fn push_problem(&mut self, kind: ProblemKind, seq: u64, detail: String) {
        self.problems.push(Problem {
            kind,
            seq: Some(seq),
            detail,
        });
    }

    /// Evaluates line `q` (window index `i`) knowing the next line, if any.
    fn evaluate(&mut self, i: usize, next: Option<Rec>) {
        let before = if i >= 1 {
            Some(self.window[i - 1])
        } else {
            None
        };
        let before2 = if i >= 2 {
            Some(self.window[i - 2])
        } else {
            None
        };
        let r = self.window[i];
        let exp = self.next_expected;
        let mut flagged = false;
        let mut out_of_order = false;
        match r.seq {
            None => {
                self.push_problem(
                    ProblemKind::Unreadable,
                    exp,
                    format!("line {} is not an entry", r.line),
                );
                flagged = true;
                self.next_expected = exp + 1;
            }
            Some(s) if s > exp => {
                if next.and_then(|n| n.seq) == Some(exp) {
                    out_of_order = true;
                    self.push_problem(
                        ProblemKind::OutOfOrder,
                        exp,
                        format!("line {} holds seq {s} and seq {exp} follows it", r.line),
                    );
                } else {
                    self.push_problem(
                        ProblemKind::Missing,
                        exp,
                        format!(
                            "line {} holds seq {s}; seq {exp}..{} are missing",
                            r.line,
                            s - 1
                        ),
                    );
                }
                flagged = true;
                self.next_expected = s + 1;
            }
            Some(s) if s < exp => {
                let prev_flagged = before.is_some_and(|b| b.flagged);
                if before.is_some_and(|b| b.out_of_order) {
                    // The second half of a reordering already reported.
                } else if !prev_flagged {
                    // If this line chains to the one two back, the line between is the intruder.
                    let skips = before2.is_some_and(|b2| r.prev == Some(b2.leaf));
                    let (seq, line) = if skips {
                        (before.map_or(exp, |b| b.expected), r.line - 1)
                    } else {
                        (exp, r.line)
                    };
                    self.push_problem(
                        ProblemKind::Inserted,
                        seq,
                        format!(
                            "line {line} does not belong (seq {s} appears again at line {})",
                            r.line
                        ),
                    );
                }
                flagged = true;
                self.next_expected = s + 1;
            }
            Some(s) => {
                self.next_expected = s + 1;
                let want = before.map_or([0u8; 32], |b| b.leaf);
                if r.prev != Some(want) && !before.is_some_and(|b| b.flagged) {
                    flagged = true;
                    if next.is_some_and(|n| n.seq == Some(s)) {
                        self.push_problem(
                            ProblemKind::Inserted,
                            s,
                            format!(
                                "line {} does not belong (seq {s} appears again at line {})",
                                r.line,
                                r.line + 1
                            ),
                        );
                    } else if s == 0 || next.is_some_and(|n| n.prev != Some(r.leaf)) {
                        self.push_problem(
                            ProblemKind::Modified,
                            s,
                            format!("line {} was altered (its prev field and its own hash fit neither neighbour)", r.line),
                        );
                    } else {
                        self.push_problem(
                            ProblemKind::Modified,
                            s - 1,
                            format!(
                                "line {} was altered: line {} was chained to different bytes",
                                r.line - 1,
                                r.line
                            ),
                        );
                    }
                }
            }
        }
        let w = &mut self.window[i];
        w.expected = exp;
        w.flagged = flagged;
        w.out_of_order = out_of_order;
    }
}

/// Verifies the log in `dir` against `public_key` and, when given, the
/// checkpoints held by `witness`. Errors only when the directory cannot be
/// read; everything wrong with its contents is in the report.
pub fn verify(
    dir: &Path,
    public_key: &VerifyingKey,
    witness: Option<&Witness>,
) -> Result<Report, Error> {
    let origin = read_meta(dir)?
        .ok_or_else(|| Error::Corrupt {
            path: dir.join(crate::META),
            detail: "missing: is this an audit log directory?".into(),
        })?
        .origin;

    // Checkpoints first: the sizes whose roots the pass must record.
    let mut cps: Vec<(String, SignedCheckpoint)> = Vec::new();
    let mut problems = Vec::new();
    let mut bad_cp = |where_: String, detail: String| {
        problems.push(Problem {
            kind: ProblemKind::BadCheckpoint,
            seq: None,
            detail: format!("{where_}: {detail}"),
        });
    };
    for (line, c) in read_checkpoints(&dir.join(CHECKPOINTS))? {
        let where_ = format!("{CHECKPOINTS} line {line}");
        match c {
            Ok(c) => cps.push((where_, c)),
            Err(e) => bad_cp(where_, e),
        }
    }
    let first_witness = cps.len();
    if let Some(w) = witness {
        for (name, c) in w.checkpoints()? {
            let where_ = format!("witness {name}");
            match c {
                Ok(c) => cps.push((where_, c)),
                Err(e) => bad_cp(where_, e),
            }
        }
    }
    let mut valid: Vec<(String, SignedCheckpoint, Hash, bool)> = Vec::new();
    for (i, (where_, c)) in cps.into_iter().enumerate() {
        let size = c.size;
        match c.verify(public_key) {
            Err(e) => bad_cp(format!("{where_} (size {size})"), e),
            Ok(_) if c.origin != origin => bad_cp(
                format!("{where_} (size {size})"),
                format!("is of log {:?}, not {origin:?}", c.origin),
            ),
            Ok(root) => valid.push((where_, c, root, i >= first_witness)),
        }
    }
    let mut roots: BTreeMap<u64, Option<Hash>> =
        valid.iter().map(|(_, c, _, _)| (c.size, None)).collect();

    // One pass over the entries.
    let path = dir.join(ENTRIES);
    let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(8 << 20);
    let mut frontier = Frontier::default();
    let mut chain = Chain {
        window: Vec::with_capacity(8),
        next_expected: 0,
        problems: Vec::new(),
    };
    if let Some(r) = roots.get_mut(&0) {
        *r = Some(frontier.root());
    }
    // Read in large chunks; hash and parse each chunk's lines on all cores
    // (`scan`), then walk them in order for the tree and the chain.
    let tail;
    loop {
        let len = buf.len();
        buf.resize(len + (8 << 20), 0);
        let n = file
            .read(&mut buf[len..])
            .map_err(|e| Error::io(&path, e))?;
        buf.truncate(len + n);
        let eof = n == 0;
        let (lines, end) = crate::scan::split_lines(&buf);
        let scanned = crate::scan::map_lines(&lines, |line| {
            let head = serde_json::from_slice::<Head>(line).ok();
            (
                leaf_hash(line),
                head.as_ref().and_then(|h| h.seq),
                head.as_ref().and_then(|h| h.prev).and_then(from_hex::<32>),
            )
        });
        for (leaf, seq, prev) in scanned {
            let rec = Rec {
                seq,
                prev,
                leaf,
                line: frontier.size() + 1,
                expected: 0,
                flagged: false,
                out_of_order: false,
            };
            frontier.push(leaf);
            if let Some(r) = roots.get_mut(&frontier.size()) {
                *r = Some(frontier.root());
            }
            chain.window.push(rec);
            if chain.window.len() >= 2 {
                let i = chain.window.len() - 2;
                chain.evaluate(i, Some(rec));
            }
            if chain.window.len() > 4 {
                chain.window.remove(0);
            }
        }
        buf.drain(..end);
        if eof {
            tail = buf.len();
            break;
        }
    }
    if !chain.window.is_empty() {
        let i = chain.window.len() - 1;
        chain.evaluate(i, None);
    }
    let entries = frontier.size();
    let incomplete_tail_bytes = tail as u64;
    let structural = chain.problems;

    // Checkpoints against the roots.
    let mut report = Report {
        entries,
        incomplete_tail_bytes,
        ..Report::default()
    };
    valid.sort_by_key(|(_, c, _, _)| c.size);
    let mut good_size = 0u64;
    for (where_, c, root, witnessed) in &valid {
        match roots.get(&c.size).copied().flatten() {
            None => problems.push(Problem {
                kind: ProblemKind::Truncated,
                seq: Some(entries),
                detail: format!(
                    "{where_}, signed {}, covers {} entries but the log holds {entries}: entries {entries}.. were removed",
                    c.time, c.size
                ),
            }),
            Some(actual) if &actual != root => {
                let first = structural
                    .iter()
                    .filter_map(|p| p.seq)
                    .filter(|&s| s >= good_size && s < c.size)
                    .min();
                problems.push(Problem {
                    kind: ProblemKind::Rewritten,
                    seq: Some(first.unwrap_or(good_size)),
                    detail: format!(
                        "{where_}, signed {}, has root {} for {} entries, the log has {}: {}",
                        c.time,
                        c.root,
                        c.size,
                        to_hex(&actual),
                        match first {
                            Some(s) => format!("the first damaged entry is seq {s}"),
                            None => format!(
                                "an entry in seq {good_size}..{} was rewritten with its chain recomputed",
                                c.size - 1
                            ),
                        }
                    ),
                });
            }
            Some(_) => {
                report.checkpoints_ok += 1;
                good_size = good_size.max(c.size);
                if *witnessed {
                    report.witnessed_size = Some(report.witnessed_size.unwrap_or(0).max(c.size));
                }
            }
        }
    }
    problems.extend(structural);
    problems.sort_by_key(|p| (p.seq.unwrap_or(u64::MAX), p.kind as u8));
    report.first_bad_seq = problems.iter().filter_map(|p| p.seq).min();
    report.unsigned_from = (good_size < entries).then_some(good_size);
    report.problems = problems;
    Ok(report)
}

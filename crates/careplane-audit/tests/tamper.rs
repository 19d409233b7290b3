//! Every kind of tampering is detected and names the right first bad seq.

mod common;

use std::path::{Path, PathBuf};

use careplane_audit::merkle::to_hex;
use careplane_audit::{leaf_hash, verify, ProblemKind, Report, SignedCheckpoint, Witness};
use common::*;
use serde_json::Value;

struct Fixture {
    _tmp: tempfile::TempDir,
    log: PathBuf,
    witness: PathBuf,
}

/// 20 entries, checkpoints at 10 and 20 (both witnessed).
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let witness = tmp.path().join("witness");
    let l = open(&log, Some(&witness));
    for i in 0..10 {
        l.append(event(i)).unwrap();
    }
    l.checkpoint().unwrap();
    for i in 10..20 {
        l.append(event(i)).unwrap();
    }
    l.checkpoint().unwrap();
    drop(l);
    Fixture {
        _tmp: tmp,
        log,
        witness,
    }
}

fn check(f: &Fixture, with_witness: bool) -> Report {
    let w = Witness::Directory(f.witness.clone());
    verify(&f.log, &key().verifying_key(), with_witness.then_some(&w)).unwrap()
}

fn kinds(r: &Report) -> Vec<(ProblemKind, Option<u64>)> {
    r.problems.iter().map(|p| (p.kind, p.seq)).collect()
}

fn edit(line: &str, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    f(v.as_object_mut().unwrap());
    // Re-encoded canonically: serde_json's map is sorted by key.
    serde_json::to_string(&v).unwrap()
}

#[test]
fn an_untouched_log_verifies() {
    let f = fixture();
    let r = check(&f, true);
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.entries, 20);
    assert_eq!(r.first_bad_seq, None);
    assert_eq!(r.checkpoints_ok, 4);
    assert_eq!(r.witnessed_size, Some(20));
    assert_eq!(r.unsigned_from, None);
}

#[test]
fn a_modified_entry_is_named() {
    let f = fixture();
    let mut l = lines(&f.log);
    l[7] = edit(&l[7], |m| {
        m.insert("action".into(), "status".into());
    });
    write_lines(&f.log, &l);
    let r = check(&f, true);
    assert_eq!(r.first_bad_seq, Some(7), "{:?}", r.problems);
    assert!(
        kinds(&r).contains(&(ProblemKind::Modified, Some(7))),
        "{:?}",
        r.problems
    );
    // The checkpoints at 10 and 20 (log and witness) no longer match either.
    assert_eq!(
        kinds(&r)
            .iter()
            .filter(|k| k.0 == ProblemKind::Rewritten)
            .count(),
        4
    );
}

#[test]
fn an_entry_whose_prev_field_was_edited_is_named() {
    let f = fixture();
    let mut l = lines(&f.log);
    l[12] = edit(&l[12], |m| {
        m.insert("prev".into(), "00".repeat(32).into());
    });
    write_lines(&f.log, &l);
    let r = check(&f, false);
    assert_eq!(r.first_bad_seq, Some(12), "{:?}", r.problems);
    assert!(kinds(&r).contains(&(ProblemKind::Modified, Some(12))));
}

#[test]
fn an_inserted_entry_is_named() {
    let f = fixture();
    let mut l = lines(&f.log);
    // A forged entry with the right seq and a correct chain link to entry 4.
    let prev = to_hex(&leaf_hash(l[4].as_bytes()));
    let forged = edit(&l[5], |m| {
        m.insert("prev".into(), prev.into());
        m.insert("actor".into(), serde_json::json!({"auth":"oidc","elevation":null,"id":"mallory","kind":"user","mfa":false}));
    });
    l.insert(5, forged);
    write_lines(&f.log, &l);
    let r = check(&f, false);
    assert_eq!(r.first_bad_seq, Some(5), "{:?}", r.problems);
    assert!(
        kinds(&r).contains(&(ProblemKind::Inserted, Some(5))),
        "{:?}",
        r.problems
    );

    // Without a proper chain link it is pinned too.
    let f = fixture();
    let mut l = lines(&f.log);
    let forged = edit(&l[5], |m| {
        m.insert("action".into(), "destroy".into());
    });
    l.insert(5, forged);
    write_lines(&f.log, &l);
    let r = check(&f, false);
    assert_eq!(r.first_bad_seq, Some(5), "{:?}", r.problems);
    assert!(
        kinds(&r).contains(&(ProblemKind::Inserted, Some(5))),
        "{:?}",
        r.problems
    );
}

#[test]
fn a_deleted_entry_is_named() {
    let f = fixture();
    let mut l = lines(&f.log);
    l.remove(12);
    write_lines(&f.log, &l);
    let r = check(&f, true);
    assert_eq!(r.first_bad_seq, Some(12), "{:?}", r.problems);
    assert!(kinds(&r).contains(&(ProblemKind::Missing, Some(12))));
    // 19 lines left while checkpoints say 20: truncation too.
    assert!(kinds(&r).contains(&(ProblemKind::Truncated, Some(19))));
}

#[test]
fn reordered_entries_are_named() {
    let f = fixture();
    let mut l = lines(&f.log);
    l.swap(3, 4);
    write_lines(&f.log, &l);
    let r = check(&f, false);
    assert_eq!(r.first_bad_seq, Some(3), "{:?}", r.problems);
    assert_eq!(r.problems[0].kind, ProblemKind::OutOfOrder);
}

#[test]
fn truncation_is_detected_against_the_witness() {
    let f = fixture();
    let mut l = lines(&f.log);
    l.truncate(15);
    write_lines(&f.log, &l);
    // The local checkpoint of 20 goes too: only the witness still knows.
    let cps = std::fs::read_to_string(f.log.join("checkpoints.jsonl")).unwrap();
    let first = cps.lines().next().unwrap();
    std::fs::write(f.log.join("checkpoints.jsonl"), format!("{first}\n")).unwrap();
    let without = check(&f, false);
    assert!(
        without.is_ok(),
        "the truncated log is self-consistent: {:?}",
        without.problems
    );
    assert_eq!(without.unsigned_from, Some(10));
    let r = check(&f, true);
    assert_eq!(r.first_bad_seq, Some(15), "{:?}", r.problems);
    assert_eq!(kinds(&r), vec![(ProblemKind::Truncated, Some(15))]);
    assert!(
        r.problems[0].detail.contains("witness"),
        "{}",
        r.problems[0]
    );
}

#[test]
fn a_swapped_checkpoint_signature_is_detected() {
    let f = fixture();
    let path = f.log.join("checkpoints.jsonl");
    let mut cps: Vec<SignedCheckpoint> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sig0 = cps[0].signature.clone();
    cps[1].signature = sig0;
    let text: String = cps
        .iter()
        .map(|c| serde_json::to_string(c).unwrap() + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    let r = check(&f, false);
    assert!(!r.is_ok());
    assert_eq!(
        kinds(&r),
        vec![(ProblemKind::BadCheckpoint, None)],
        "{:?}",
        r.problems
    );
    assert!(
        r.problems[0].detail.contains("line 2 (size 20)"),
        "{}",
        r.problems[0]
    );
    assert_eq!(r.unsigned_from, Some(10));
    // A checkpoint made by another key is refused the same way.
    let other = careplane_audit::SigningKey::from_bytes(&[9u8; 32]);
    let forged =
        SignedCheckpoint::sign(&other, &cps[0].origin, 20, &[0u8; 32], cps[1].time.clone());
    std::fs::write(&path, serde_json::to_string(&forged).unwrap() + "\n").unwrap();
    let r = check(&f, false);
    assert_eq!(kinds(&r), vec![(ProblemKind::BadCheckpoint, None)]);
}

/// An attacker who rewrites an entry and recomputes every later chain link
/// is caught by the checkpoint covering it, pinned to its range.
#[test]
fn a_rewrite_with_a_recomputed_chain_is_caught_by_the_checkpoint() {
    let f = fixture();
    let mut l = lines(&f.log);
    l[13] = edit(&l[13], |m| {
        m.insert("target".into(), "odoo-env/elsewhere/test".into());
    });
    for i in 14..l.len() {
        let prev = to_hex(&leaf_hash(l[i - 1].as_bytes()));
        l[i] = edit(&l[i], |m| {
            m.insert("prev".into(), prev.into());
        });
    }
    write_lines(&f.log, &l);
    let r = check(&f, true);
    assert_eq!(r.first_bad_seq, Some(10), "{:?}", r.problems);
    assert!(
        r.problems.iter().all(|p| p.kind == ProblemKind::Rewritten),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems[0].detail.contains("seq 10..19"),
        "{}",
        r.problems[0]
    );
}

#[test]
fn an_unreadable_line_is_named() {
    let f = fixture();
    let mut l = lines(&f.log);
    l[2] = "not json".into();
    write_lines(&f.log, &l);
    let r = check(&f, false);
    assert_eq!(r.first_bad_seq, Some(2));
    assert_eq!(r.problems[0].kind, ProblemKind::Unreadable);
}

#[test]
fn verify_of_a_missing_directory_is_an_error_naming_it() {
    let err = verify(
        Path::new("/nonexistent/audit"),
        &key().verifying_key(),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/audit/meta.json"),
        "{err}"
    );
}

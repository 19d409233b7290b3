//! The repository on file:// and s3:// (moto): round trips, deduplication,
//! and every fault of issue 16 with the error it must give.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use careplane_backup::{
    BackupError, BackupMetadata, ExposeSecret, FileKind, Progress, RepoKeys, Repository,
    SecretString, TableStat,
};
use common::{keys, noise, Backend};

fn quiet(_: Progress) {}

/// A tree: one 6 MiB incompressible file, one compressible 3 MiB file, 200
/// small files in a subdirectory, an empty directory and a symlink.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("filestore/ab")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("big.bin"), noise(1, 6 << 20)).unwrap();
    let text: String = (0..120_000)
        .map(|i| format!("row {i} patient-marker-XYZZY\n"))
        .collect();
    std::fs::write(root.join("table.txt"), &text[..3 << 20]).unwrap();
    for i in 0..200 {
        std::fs::write(
            root.join(format!("filestore/ab/file{i:03}")),
            noise(100 + i, 500 + i as usize * 37),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("big.bin", root.join("link")).unwrap();
    // Written an hour ago: files modified in the last seconds are always read
    // again by the next backup.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let f = std::fs::File::options().write(true).open(e.path()).unwrap();
                f.set_modified(old).unwrap();
            }
        }
    }
}

fn backup_tree(repo: &Repository, root: &Path) -> careplane_backup::Manifest {
    backup_tree_from(repo, root, None).0
}

/// A backup of `root`, taking unchanged files from `parent`; returns the
/// last progress report too.
fn backup_tree_from(
    repo: &Repository,
    root: &Path,
    parent: Option<&str>,
) -> (careplane_backup::Manifest, Progress) {
    let last = std::sync::Mutex::new(Progress::default());
    let record = |p: Progress| *last.lock().unwrap() = p;
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    if let Some(parent) = parent {
        assert_eq!(w.reuse_unchanged_from(parent).unwrap(), 202);
    }
    w.put_tree(root, "", &record).unwrap();
    let meta = BackupMetadata {
        postgres_version: Some("15.18".into()),
        odoo_version: Some("18.0".into()),
        modules: vec!["base".into(), "contacts".into()],
        tables: vec![TableStat {
            database: "stmarys-production".into(),
            table: "res_partner".into(),
            rows: 42,
            checksum: "abc".into(),
        }],
        ..Default::default()
    };
    let m = w.commit(meta).unwrap();
    let p = *last.lock().unwrap();
    (m, p)
}

fn read(repo: &Repository, id: &str, path: &str) -> careplane_backup::Result<Vec<u8>> {
    let mut out = Vec::new();
    repo.read_file(id, path, &mut out)?;
    Ok(out)
}

fn same_tree(a: &Path, b: &Path) {
    for e in std::fs::read_dir(a).unwrap() {
        let e = e.unwrap();
        let other = b.join(e.file_name());
        let ma = std::fs::symlink_metadata(e.path()).unwrap();
        let mb = std::fs::symlink_metadata(&other)
            .unwrap_or_else(|_| panic!("{} missing after restore", other.display()));
        assert_eq!(ma.file_type(), mb.file_type(), "{}", other.display());
        if ma.is_dir() {
            same_tree(&e.path(), &other);
        } else if ma.is_file() {
            assert!(
                std::fs::read(e.path()).unwrap() == std::fs::read(&other).unwrap(),
                "{} differs",
                other.display()
            );
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(ma.permissions().mode(), mb.permissions().mode());
        } else {
            assert_eq!(
                std::fs::read_link(e.path()).unwrap(),
                std::fs::read_link(&other).unwrap()
            );
        }
    }
}

fn round_trip_and_dedupe(b: &Backend) {
    let keys = keys();
    let repo = b.open(&keys).unwrap();
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());

    let m1 = backup_tree(&repo, src.path());
    assert_eq!(m1.files, 206); // 3 directories, 202 files, 1 symlink
    repo.verify(&m1.id, false).unwrap();
    let deep = repo.verify(&m1.id, true).unwrap();
    assert_eq!(deep.files, 206);
    assert_eq!(
        read(&repo, &m1.id, "big.bin").unwrap(),
        std::fs::read(src.path().join("big.bin")).unwrap()
    );
    let index = repo.index(&m1).unwrap();
    assert_eq!(index.metadata.tables[0].rows, 42);
    assert_eq!(index.metadata.modules, ["base", "contacts"]);
    assert!(index.files.iter().any(|f| f.path == "link"
        && f.kind
            == FileKind::Symlink {
                target: "big.bin".into()
            }));

    let dest = tempfile::tempdir().unwrap();
    let dest = dest.path().join("restored");
    repo.restore_tree(&m1.id, &dest, None, &|_| true).unwrap();
    same_tree(src.path(), &dest);
    assert!(dest.join("empty").is_dir());

    // Nothing in the repository is readable in clear.
    for name in b.names("") {
        let bytes = b.get(&name);
        assert!(
            !bytes.windows(21).any(|w| w == b"patient-marker-XYZZY\n"),
            "{name} holds plaintext"
        );
        assert!(
            !String::from_utf8_lossy(&bytes).contains(keys.secret.expose_secret()),
            "{name} holds the repository secret"
        );
    }

    // An unchanged second backup uploads no chunk, only its index and state.
    let (m2, p) = backup_tree_from(&repo, src.path(), None);
    assert_eq!(p.files_unchanged, 0);
    assert_eq!(p.chunks_new, 0, "{p:?}");
    assert_eq!(m1.chunks, m2.chunks);
    let state_size = b.get(&format!("backups/{}.state", m2.id)).len() as u64;
    assert_eq!(m2.new_stored_bytes, m2.index.size + state_size);
    // With m1 as parent, no file is even read.
    let (m2b, p) = backup_tree_from(&repo, src.path(), Some(&m1.id));
    assert_eq!(p.files_unchanged, 202, "{p:?}");
    assert_eq!(m2b.chunks, m1.chunks);
    repo.verify(&m2b.id, true).unwrap();
    repo.delete_backup(&m2b.id).unwrap();

    // 100 bytes inserted at 1 MiB into big.bin: content-defined chunking
    // keeps the later boundaries, so only the chunks around it are new.
    let mut big = noise(1, 6 << 20);
    big.splice(1 << 20..1 << 20, noise(9, 100));
    std::fs::write(src.path().join("big.bin"), &big).unwrap();
    let before = b.names("chunks").len();
    let m3 = backup_tree(&repo, src.path());
    let new_chunks = b.names("chunks").len() - before;
    assert!(
        new_chunks <= 2,
        "{new_chunks} new chunks for a 100-byte insertion"
    );
    assert_eq!(read(&repo, &m3.id, "big.bin").unwrap(), big);

    let ids: Vec<String> = repo
        .list_backups()
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, [m1.id.clone(), m2.id.clone(), m3.id.clone()]);

    // gc after deleting the first two removes only what m3 does not use.
    repo.delete_backup(&m1.id).unwrap();
    repo.delete_backup(&m2.id).unwrap();
    let gc = repo.gc(std::time::Duration::ZERO).unwrap();
    // The chunk(s) of big.bin that the insertion replaced (delete_backup
    // already removed the indexes).
    assert!((1..=2).contains(&gc.deleted_objects), "{gc:?}");
    assert_eq!(b.names("chunks").len(), m3.chunks.len());
    repo.verify(&m3.id, true).unwrap();
    assert!(matches!(
        repo.verify(&m1.id, false),
        Err(BackupError::NotFound { .. })
    ));
}
on_both!(round_trip_and_dedupe_t, super::round_trip_and_dedupe);

fn small_backup(repo: &Repository) -> careplane_backup::Manifest {
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    w.put_stream("a", 0o600, &mut &noise(5, 3 << 20)[..], &quiet)
        .unwrap();
    w.put_stream("b", 0o600, &mut &b"hello"[..], &quiet)
        .unwrap();
    w.commit(BackupMetadata::default()).unwrap()
}

fn problems(e: BackupError) -> String {
    match &e {
        BackupError::Verify { .. } => e.to_string(),
        other => panic!("expected a verification failure, got {other}"),
    }
}

fn flipped_byte_in_a_chunk(b: &Backend) {
    let repo = b.open(&keys()).unwrap();
    let m = small_backup(&repo);
    let victim = m.chunks[0].object();
    let mut bytes = b.get(&victim);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    b.put(&victim, bytes);
    let msg = problems(repo.verify(&m.id, false).unwrap_err());
    assert!(msg.contains(&m.id) && msg.contains(&victim), "{msg}");
    assert!(msg.contains("hash differs"), "{msg}");
    let msg = problems(repo.verify(&m.id, true).unwrap_err());
    assert!(msg.contains(&victim), "{msg}");
    // Reading any file that uses it fails naming backup and object.
    let file = repo
        .index(&m)
        .unwrap()
        .files
        .into_iter()
        .find(|f| f.chunks.contains(&m.chunks[0].id))
        .unwrap();
    let err = read(&repo, &m.id, &file.path).unwrap_err().to_string();
    assert!(err.contains(&m.id) && err.contains(&victim), "{err}");
}
on_both!(flipped_byte_in_a_chunk_t, super::flipped_byte_in_a_chunk);

fn missing_chunk(b: &Backend) {
    let repo = b.open(&keys()).unwrap();
    let m = small_backup(&repo);
    let victim = m.chunks.last().unwrap().object();
    b.delete(&victim);
    let msg = problems(repo.verify(&m.id, false).unwrap_err());
    assert!(
        msg.contains(&m.id) && msg.contains(&victim) && msg.contains("missing"),
        "{msg}"
    );
    let msg = problems(repo.verify(&m.id, true).unwrap_err());
    assert!(msg.contains(&victim), "{msg}");
}
on_both!(missing_chunk_t, super::missing_chunk);

fn swapped_and_changed_manifests(b: &Backend) {
    let repo = b.open(&keys()).unwrap();
    let a = small_backup(&repo);
    let bm = small_backup(&repo);
    let a_obj = format!("backups/{}.manifest", a.id);
    let b_obj = format!("backups/{}.manifest", bm.id);
    // A's manifest renamed to B.
    let original_b = b.get(&b_obj);
    b.put(&b_obj, b.get(&a_obj));
    let err = repo.verify(&bm.id, false).unwrap_err().to_string();
    assert!(
        err.contains(&bm.id) && err.contains(&b_obj) && err.contains("swapped"),
        "{err}"
    );
    let err = repo.list_backups().unwrap_err().to_string();
    assert!(err.contains(&bm.id), "{err}");
    b.put(&b_obj, original_b.clone());
    repo.verify(&bm.id, true).unwrap();

    // A changed manifest (a chunk hash edited) fails its signature.
    let text = String::from_utf8(original_b).unwrap();
    let h = &bm.chunks[0].hash;
    let forged = text.replacen(&h[..8], "00000000", 1);
    assert_ne!(forged, text);
    b.put(&b_obj, forged.into_bytes());
    let err = repo.verify(&bm.id, false).unwrap_err().to_string();
    assert!(err.contains(&b_obj) && err.contains("signature"), "{err}");

    // A missing manifest: the backup does not exist.
    b.delete(&a_obj);
    let err = repo.verify(&a.id, false).unwrap_err();
    assert!(matches!(err, BackupError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&a.id));

    // A changed index is found too.
    let idx = format!("backups/{}.index", a.id);
    assert!(b.names("backups").contains(&idx));
}
on_both!(
    swapped_and_changed_manifests_t,
    super::swapped_and_changed_manifests
);

/// Records of a stream: listed apart from backups, readable file by file,
/// kept by `gc` until deleted, and refused when moved to another stream or
/// among the backups.
fn stream_records(b: &Backend) {
    let k = keys();
    let repo = b.open(&k).unwrap();
    let backup = small_backup(&repo);
    let labels = BTreeMap::from([("kind".to_string(), "shipment".to_string())]);
    let mut w = repo.start_record("filestore-prod", labels.clone()).unwrap();
    let doc = noise(9, 700_000);
    w.put_stream("filestore/ab/abcdef", 0o640, &mut &doc[..], &quiet)
        .unwrap();
    w.put_stream("filestore/cd/half", 0o640, &mut &b"half"[..], &quiet)
        .unwrap();
    assert!(w.forget("filestore/cd/half"));
    w.seal_note(serde_json::json!({"shipped": ["ab/abcdef"]}));
    let r1 = w.commit(BackupMetadata::default()).unwrap();
    assert_eq!(r1.files, 1, "a forgotten file is in the record");
    assert_eq!(r1.stream.as_deref(), Some("filestore-prod"));
    // A record killed before its manifest does not exist.
    let mut w = repo.start_record("filestore-prod", labels.clone()).unwrap();
    w.put_stream("filestore/cd/cdef", 0o640, &mut &b"gone"[..], &quiet)
        .unwrap();
    drop(w);
    let mut w = repo.start_record("filestore-other", labels).unwrap();
    w.put_stream("x", 0o600, &mut &b"other"[..], &quiet)
        .unwrap();
    let other = w.commit(BackupMetadata::default()).unwrap();

    assert_eq!(
        repo.list_record_ids("filestore-prod").unwrap(),
        vec![r1.id.clone()]
    );
    let ids: Vec<String> = repo
        .list_backups()
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        ids,
        vec![backup.id.clone()],
        "a record is listed as a backup"
    );
    let m = repo.record("filestore-prod", &r1.id).unwrap();
    let index = repo.index(&m).unwrap();
    let mut out = Vec::new();
    repo.read_file_of(&m, &index, "filestore/ab/abcdef", &mut out)
        .unwrap();
    assert!(out == doc, "the record's file differs");
    // No name of a file in clear below the repository.
    for name in b.names("") {
        assert!(!name.contains("abcdef"), "{name} names a file");
    }

    // The note, and what a tree backup holds, read without a private key
    // (a customer may hold the only one).
    let tree = tempfile::tempdir().unwrap();
    make_tree(tree.path());
    let tb = backup_tree(&repo, tree.path());
    let secret_only = b
        .open(&RepoKeys {
            identities: Vec::new(),
            ..k.clone()
        })
        .unwrap();
    assert!(
        secret_only.index(&m).is_err(),
        "the index opened without a key"
    );
    assert_eq!(
        secret_only.note(&m).unwrap(),
        Some(serde_json::json!({"shipped": ["ab/abcdef"]}))
    );
    assert_eq!(secret_only.note(&backup).unwrap(), None);
    let paths = secret_only.state_paths(&tb).unwrap().unwrap();
    assert!(
        paths.contains(&"filestore/ab/file000".to_string()),
        "{paths:?}"
    );
    // A note moved to another record does not authenticate.
    let note = format!("streams/filestore-prod/{}.note", r1.id);
    let other_note = format!("streams/filestore-other/{}.note", other.id);
    b.put(&other_note, b.get(&note));
    let err = secret_only.note(&other).unwrap_err().to_string();
    assert!(err.contains("does not authenticate"), "{err}");
    b.delete(&other_note);
    repo.delete_backup(&tb.id).unwrap();

    // Moved: to another stream, or among the backups.
    let from = format!("streams/filestore-prod/{}.manifest", r1.id);
    let moved = format!("streams/filestore-other/{}.manifest", r1.id);
    b.put(&moved, b.get(&from));
    let err = repo
        .record("filestore-other", &r1.id)
        .unwrap_err()
        .to_string();
    assert!(err.contains("moved"), "{err}");
    b.delete(&moved);
    let as_backup = format!("backups/{}.manifest", r1.id);
    b.put(&as_backup, b.get(&from));
    let err = repo.manifest(&r1.id).unwrap_err().to_string();
    assert!(err.contains("moved"), "{err}");
    b.delete(&as_backup);

    // gc keeps what records reference; after delete_record it goes.
    let chunk = m.chunks[0].object();
    repo.gc(std::time::Duration::ZERO).unwrap();
    assert!(
        b.names("chunks").contains(&chunk),
        "gc took a record's chunk"
    );
    repo.read_file_of(&m, &index, "filestore/ab/abcdef", &mut Vec::new())
        .unwrap();
    repo.record("filestore-other", &other.id).unwrap();
    repo.delete_record("filestore-prod", &r1.id).unwrap();
    assert!(repo.list_record_ids("filestore-prod").unwrap().is_empty());
    repo.gc(std::time::Duration::ZERO).unwrap();
    assert!(
        !b.names("chunks").contains(&chunk),
        "a deleted record's chunk stayed"
    );
    assert!(
        !b.names("streams").iter().any(|n| n.contains(&r1.id)),
        "{:?}",
        b.names("streams")
    );
    repo.verify(&backup.id, true).unwrap();
}
on_both!(stream_records_t, super::stream_records);

fn wrong_or_missing_private_key(b: &Backend) {
    let k = keys();
    let repo = b.open(&k).unwrap();
    let m = small_backup(&repo);

    let mut no_key = k.clone();
    no_key.identities.clear();
    let repo = b.open(&no_key).unwrap();
    // Listing, shallow verification and gc need no private key.
    assert_eq!(repo.list_backups().unwrap().len(), 1);
    repo.verify(&m.id, false).unwrap();
    let err = repo.verify(&m.id, true).unwrap_err();
    assert!(matches!(err, BackupError::NoPrivateKey { .. }), "{err}");
    assert!(err.to_string().contains(&m.id), "{err}");
    let err = read(&repo, &m.id, "a").unwrap_err();
    assert!(matches!(err, BackupError::NoPrivateKey { .. }), "{err}");

    let mut wrong = k.clone();
    wrong.identities = vec![careplane_backup::generate_identity().0];
    let repo = b.open(&wrong).unwrap();
    let err = read(&repo, &m.id, "a").unwrap_err();
    assert!(matches!(err, BackupError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains(&m.id), "{err}");

    // Another repository secret: refused at open, the secret not shown.
    let mut other = k.clone();
    other.secret = careplane_backup::generate_secret();
    let err = b.open(&other).unwrap_err().to_string();
    assert!(err.contains("another repository secret"), "{err}");
    assert!(!err.contains(other.secret.expose_secret()));

    // A malformed secret or identity is refused without echoing it.
    let mut bad = k.clone();
    bad.secret = SecretString::from("not-hex-but-secret-ish-0123456789".to_string());
    let err = b.open(&bad).unwrap_err().to_string();
    assert!(!err.contains("secret-ish"), "{err}");
    let mut bad = k.clone();
    bad.identities = vec![SecretString::from("AGE-SECRET-KEY-1NOTREALLY".to_string())];
    let err = b.open(&bad).unwrap_err().to_string();
    assert!(!err.contains("NOTREALLY"), "{err}");

    // Debug output of keys and repository shows no secret.
    let dbg = format!("{k:?} {:?}", b.open(&k).unwrap());
    assert!(!dbg.contains(k.secret.expose_secret()), "{dbg}");
    assert!(!dbg.contains(k.identities[0].expose_secret()), "{dbg}");
}
on_both!(
    wrong_or_missing_private_key_t,
    super::wrong_or_missing_private_key
);

/// A reader that fails after `limit` bytes, like a backup killed midway.
struct Failing<'a> {
    data: &'a [u8],
    pos: usize,
    limit: usize,
}

impl Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.limit {
            return Err(std::io::Error::other("killed"));
        }
        let n = buf
            .len()
            .min(self.limit - self.pos)
            .min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn upload_aborted_midway(b: &Backend) {
    let repo = b.open(&keys()).unwrap();
    let data = noise(77, 24 << 20);
    {
        let mut w = repo.start_backup(BTreeMap::new()).unwrap();
        let mut r = Failing {
            data: &data,
            pos: 0,
            limit: 16 << 20,
        };
        let err = w.put_stream("db", 0o600, &mut r, &quiet).unwrap_err();
        assert!(err.to_string().contains("reading db"), "{err}");
        // The writer is dropped without commit.
    }
    assert!(
        repo.list_backups().unwrap().is_empty(),
        "an aborted backup is listed"
    );
    let uploaded = b.names("chunks").len();
    assert!(uploaded >= 4, "{uploaded} chunks uploaded before the abort");
    // Also a backup that finished uploading but never committed.
    {
        let mut w = repo.start_backup(BTreeMap::new()).unwrap();
        w.put_stream("small", 0o600, &mut &b"x"[..], &quiet)
            .unwrap();
    }
    assert!(repo.list_backups().unwrap().is_empty());

    // The rerun reuses what was uploaded.
    let last = std::sync::Mutex::new(Progress::default());
    let record = |p: Progress| *last.lock().unwrap() = p;
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    w.put_stream("db", 0o600, &mut &data[..], &record).unwrap();
    let m = w.commit(BackupMetadata::default()).unwrap();
    let p = *last.lock().unwrap();
    assert!(p.chunks_reused >= 3, "{p:?}");
    assert_eq!(p.bytes_read, data.len() as u64);
    assert_eq!(repo.list_backups().unwrap().len(), 1);
    assert_eq!(read(&repo, &m.id, "db").unwrap(), data);

    // gc with a grace period keeps the fresh orphan; without, removes it.
    let orphans = b.names("chunks").len() - m.chunks.len();
    assert!(orphans >= 1);
    assert_eq!(
        repo.gc(std::time::Duration::from_secs(3600))
            .unwrap()
            .deleted_objects,
        0
    );
    let gc = repo.gc(std::time::Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_objects as usize, orphans);
    repo.verify(&m.id, true).unwrap();
}
on_both!(upload_aborted_midway_t, super::upload_aborted_midway);

fn wal_archive_is_idempotent_and_refuses_other_content(b: &Backend) {
    let k = keys();
    let repo = b.open(&k).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("seg");
    let name = "000000010000000000000003";
    std::fs::write(&seg, noise(3, 1 << 20)).unwrap();
    assert_eq!(
        repo.archive_wal(&seg, name).unwrap(),
        careplane_backup::Archived::Stored
    );
    assert_eq!(
        repo.archive_wal(&seg, name).unwrap(),
        careplane_backup::Archived::AlreadyArchived
    );
    let other = dir.path().join("other");
    std::fs::write(&other, noise(4, 1 << 20)).unwrap();
    let err = repo.archive_wal(&other, name).unwrap_err();
    assert!(matches!(err, BackupError::WalConflict { .. }), "{err}");
    assert!(err.to_string().contains(name));

    let dest = dir.path().join("RECOVERYXLOG");
    assert!(repo.restore_wal(name, &dest).unwrap());
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&seg).unwrap());
    assert!(!repo.restore_wal("000000010000000000000009", &dest).unwrap());

    // A segment object put under another name is refused on restore.
    let name2 = "000000010000000000000004";
    b.put(&format!("wal/{name2}"), b.get(&format!("wal/{name}")));
    let err = repo.restore_wal(name2, &dest).unwrap_err().to_string();
    assert!(err.contains(name2) && err.contains("MAC"), "{err}");
    assert!(repo.archive_wal(&seg, "../escape").is_err());
    assert_eq!(repo.list_wal().unwrap(), [name, name2]);

    // Pruning keeps what recovery from a base backup starting at segment 4
    // needs, on any timeline, and every timeline history.
    let history = dir.path().join("history");
    std::fs::write(&history, "1\t0/4000000\tno recovery target specified\n").unwrap();
    repo.archive_wal(&history, "00000002.history").unwrap();
    repo.archive_wal(&seg, "000000020000000000000002.partial")
        .unwrap();
    assert_eq!(repo.delete_wal_before(name2).unwrap(), 2);
    assert_eq!(repo.list_wal().unwrap(), [name2, "00000002.history"]);
    assert!(repo.delete_wal_before("00000002.history").is_err());
    // Put segment 3 back for what follows.
    repo.archive_wal(&seg, name).unwrap();

    // The archiver's side: WAL keys only, from a 0600 file.
    let file = dir.path().join("wal-keys.json");
    k.wal_keys().unwrap().write_file(&file, None).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(k.secret.expose_secret()),
        "the repository secret is in the WAL keys file"
    );
    let wal_keys = careplane_backup::WalKeys::read_file(&file).unwrap();
    let archiver = careplane_backup::WalArchive::open(&b.url, &wal_keys, &b.options).unwrap();
    let name5 = "000000010000000000000005";
    assert_eq!(
        archiver.archive_wal(&other, name5).unwrap(),
        careplane_backup::Archived::Stored
    );
    assert_eq!(
        archiver.archive_wal(&other, name5).unwrap(),
        careplane_backup::Archived::AlreadyArchived
    );
    assert!(repo.restore_wal(name5, &dest).unwrap());
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&other).unwrap()
    );
    assert!(archiver.restore_wal(name, &dest).unwrap());
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&seg).unwrap());

    // Keys of another repository are refused; a malformed file is not quoted.
    let err = careplane_backup::WalArchive::open(&b.url, &keys().wal_keys().unwrap(), &b.options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another repository secret"), "{err}");
    std::fs::write(
        &file,
        format!("{{\"wal_key\": \"{}\"", k.secret.expose_secret()),
    )
    .unwrap();
    let err = careplane_backup::WalKeys::read_file(&file)
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains(k.secret.expose_secret()) && err.contains("wal-keys.json"),
        "{err}"
    );
}
on_both!(
    wal_archive_t,
    super::wal_archive_is_idempotent_and_refuses_other_content
);

#[test]
fn an_unreachable_repository_is_named() {
    // An S3 endpoint on a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Repository::open_with(
        "s3://careplane-test/tenants/x",
        &keys(),
        careplane_backup::RepoOptions {
            store_options: common::s3_options(port),
            ..Default::default()
        },
    )
    .unwrap_err();
    let msg = careplane_backup::error_chain(&err);
    assert!(matches!(err, BackupError::Store { .. }), "{msg}");
    assert!(
        msg.contains("s3://careplane-test/tenants/x") && msg.contains("config.json"),
        "{msg}"
    );

    // A file:// repository below a regular file cannot be created.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let url = format!("file://{}/f/repo", dir.path().display());
    let err = Repository::open(&url, &keys()).unwrap_err().to_string();
    assert!(err.contains("/f/repo"), "{err}");
}

#[test]
fn refuses_bad_urls_and_keys() {
    let k: RepoKeys = keys();
    let err = Repository::open("ftp://x/y", &k).unwrap_err().to_string();
    assert!(err.contains("unsupported scheme"), "{err}");
    let mut k2 = k.clone();
    k2.recipients = vec!["age1notakey".into()];
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let err = Repository::open(&url, &k2).unwrap_err().to_string();
    assert!(err.contains("recipient #1"), "{err}");
    k2.recipients.clear();
    assert!(Repository::open(&url, &k2).is_err());
    // The archiver never creates a repository.
    let err = careplane_backup::WalArchive::open(&url, &k.wal_keys().unwrap(), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no config.json"), "{err}");
}

/// Large files of many chunks restore byte for byte beside an empty and a small one,
/// and a damaged chunk in the middle of a large file fails the restore naming the
/// backup and the object.
#[test]
fn large_files_restore_whole_and_a_damaged_chunk_is_named() {
    let b = common::file_backend();
    let repo = b.open(&keys()).unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("segment.1"), noise(41, 37 << 20)).unwrap();
    std::fs::write(src.path().join("segment.2"), noise(42, (9 << 20) + 12345)).unwrap();
    std::fs::write(src.path().join("empty"), b"").unwrap();
    std::fs::write(src.path().join("small"), noise(43, 777)).unwrap();
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    w.put_tree(src.path(), "", &quiet).unwrap();
    let m = w.commit(BackupMetadata::default()).unwrap();
    let index = repo.index(&m).unwrap();
    let big = index.files.iter().find(|f| f.path == "segment.1").unwrap();
    assert!(big.chunks.len() > 8, "{} chunks", big.chunks.len());

    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("restored");
    let n = repo.restore_tree(&m.id, &out, None, &|_| true).unwrap();
    assert_eq!(n, (37 << 20) + (9 << 20) + 12345 + 777);
    same_tree(src.path(), &out);

    // A chunk far into the large file, damaged.
    let victim_id = &big.chunks[big.chunks.len() * 3 / 4];
    let victim = m
        .chunks
        .iter()
        .find(|c| &c.id == victim_id)
        .unwrap()
        .object();
    let mut bytes = b.get(&victim);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    b.put(&victim, bytes);
    let again = dest.path().join("again");
    let err = repo
        .restore_tree(&m.id, &again, None, &|_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&m.id) && err.contains(&victim), "{err}");
}

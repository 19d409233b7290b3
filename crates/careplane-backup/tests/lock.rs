//! Immutability with S3 Object Lock (docs/design/0015) against moto's
//! server: what careplane writes carries retention, the locked versions
//! cannot be deleted, pruning keeps a locked backup whole and says until
//! when, and a bucket without Object Lock is refused before anything is
//! written. moto enforces retention like S3: a DELETE of a locked version
//! (with `versionId`) is refused; a DELETE without one only adds a delete
//! marker in front of the locked version.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use careplane_backup::{
    BackupError, Immutability, LockMode, Progress, RepoOptions, Repository, Timestamp,
};
use common::{keys, noise, s3_options, start_moto};

fn quiet(_: Progress) {}

/// One plain HTTP request to moto: status, header block (lowercase) and
/// body. moto does not check signatures, but treats a request without an
/// Authorization header as anonymous (denied on private objects).
fn raw(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn create_bucket(port: u16, bucket: &str, object_lock: bool) {
    let headers: &[(&str, &str)] = if object_lock {
        &[("x-amz-bucket-object-lock-enabled", "true")]
    } else {
        &[]
    };
    let (status, _, body) = raw(port, "PUT", &format!("/{bucket}"), headers);
    assert_eq!(status, 200, "creating bucket {bucket}: {body}");
}

const BUCKET: &str = "locked-backups";
const PREFIX: &str = "tenants/stmarys";

fn lock(days: u32) -> Immutability {
    Immutability {
        mode: LockMode::Compliance,
        days,
    }
}

fn open(
    port: u16,
    bucket: &str,
    k: &careplane_backup::RepoKeys,
) -> careplane_backup::Result<Repository> {
    let mut store_options = s3_options(port);
    store_options.extend(lock(1).store_options());
    Repository::open_with(
        &format!("s3://{bucket}/{PREFIX}"),
        k,
        RepoOptions {
            store_options,
            threads: 2,
            ..RepoOptions::default()
        },
    )
}

/// The mode and retain-until date moto reports for an object.
fn retention(port: u16, name: &str) -> (String, Timestamp) {
    let (status, head, _) = raw(port, "HEAD", &format!("/{BUCKET}/{PREFIX}/{name}"), &[]);
    assert_eq!(status, 200, "HEAD {name}: {head}");
    let mode = header(&head, "x-amz-object-lock-mode")
        .unwrap_or_else(|| panic!("{name} has no lock mode: {head}"))
        .to_string();
    let until = header(&head, "x-amz-object-lock-retain-until-date")
        .unwrap_or_else(|| panic!("{name} has no retain-until date: {head}"))
        .to_ascii_uppercase()
        .parse()
        .unwrap();
    (mode, until)
}

/// Asserts `until` is `days` after a moment between `before` and now
/// (the date is whole seconds, so a second of slack below).
fn assert_locked_for(name: &str, until: Timestamp, days: i64, before: Timestamp) {
    let span = jiff::SignedDuration::from_hours(24 * days);
    let low = before.checked_add(span).unwrap() - jiff::SignedDuration::from_secs(1);
    let high = Timestamp::now().checked_add(span).unwrap();
    assert!(
        low <= until && until <= high,
        "{name}: retain-until {until} is not {days} days after the write ({low} ..= {high})"
    );
}

/// The version ids of an object (moto's ListObjectVersions).
fn versions(port: u16, name: &str) -> Vec<String> {
    let (status, _, body) = raw(
        port,
        "GET",
        &format!("/{BUCKET}?versions&prefix={PREFIX}/{name}"),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    body.split("<VersionId>")
        .skip(1)
        .filter_map(|s| s.split_once("</VersionId>").map(|(v, _)| v.to_string()))
        .collect()
}

#[test]
fn an_immutable_repository_locks_what_its_backups_depend_on_and_prune_keeps_them() {
    let Some(moto) = start_moto() else { return };
    let port = moto.port;
    create_bucket(port, BUCKET, true);
    let k = keys();
    let before = Timestamp::now();
    let repo = open(port, BUCKET, &k).unwrap();

    let data = noise(7, 8 << 20);
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    w.put_stream("db.dump", 0o600, &mut &data[..], &quiet)
        .unwrap();
    let m = w.commit(Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("seg");
    std::fs::write(&seg, noise(8, 64 << 10)).unwrap();
    let wal1 = "000000010000000000000001";
    repo.archive_wal(&seg, wal1).unwrap();
    // archive_command's side gets the lock from the same store options.
    let mut archiver_options = s3_options(port);
    archiver_options.extend(lock(1).store_options());
    let archiver = careplane_backup::WalArchive::open(
        &format!("s3://{BUCKET}/{PREFIX}"),
        &k.wal_keys().unwrap(),
        &archiver_options,
    )
    .unwrap();
    let wal2 = "000000010000000000000002";
    archiver.archive_wal(&seg, wal2).unwrap();

    // Every object the backup depends on carries compliance retention: the
    // backup's own objects and WAL for `days`, what later backups reuse
    // (chunks, the config) for twice that.
    let mut long = vec!["config.json".to_string()];
    long.extend(m.chunks.iter().map(|c| c.object()));
    assert!(m.chunks.len() >= 2, "{}", m.chunks.len());
    let short = [
        format!("backups/{}.manifest", m.id),
        m.index.object.clone(),
        format!("wal/{wal1}"),
        format!("wal/{wal2}"),
    ];
    for (names, days) in [(&long[..], 2), (&short[..], 1)] {
        for name in names {
            let (mode, until) = retention(port, name);
            assert_eq!(mode, "compliance", "{name}");
            assert_locked_for(name, until, days, before);
        }
    }

    // The locked version of the manifest cannot be deleted; it is still
    // there and the backup still verifies.
    let manifest = format!("backups/{}.manifest", m.id);
    let v = versions(port, &manifest);
    assert_eq!(v.len(), 1, "{v:?}");
    let (status, _, body) = raw(
        port,
        "DELETE",
        &format!("/{BUCKET}/{PREFIX}/{manifest}?versionId={}", v[0]),
        &[],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
    repo.verify(&m.id, true).unwrap();

    // A second backup of the same data within the lock reuses the chunks.
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    let new = std::sync::atomic::AtomicU64::new(0);
    let count = |p: Progress| new.store(p.chunks_new, std::sync::atomic::Ordering::Relaxed);
    w.put_stream("db.dump", 0o600, &mut &data[..], &count)
        .unwrap();
    let m2 = w.commit(Default::default()).unwrap();
    assert_eq!(
        new.into_inner(),
        0,
        "locked chunks with time left are reused"
    );

    // Pruning during the lock: the backup is refused with its date, nothing
    // of it is deleted, it is still listed and whole.
    let err = repo.delete_backup(&m.id).unwrap_err();
    let BackupError::Locked { backup, until, .. } = &err else {
        panic!("expected Locked, got {err}");
    };
    assert_eq!(backup, &m.id);
    let (_, manifest_until) = retention(port, &manifest);
    assert_eq!(*until, manifest_until);
    assert!(
        err.to_string().contains(&format!(
            "backup {} is kept by object lock until {until}",
            m.id
        )),
        "{err}"
    );
    assert_eq!(repo.locked_until(&m.id).unwrap(), Some(*until));
    let ids: Vec<String> = repo
        .list_backups()
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, vec![m.id.clone(), m2.id.clone()]);
    repo.verify(&m.id, true).unwrap();

    // Garbage (chunks of a backup never committed) under lock is kept and
    // counted; WAL under lock is not deleted either.
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    w.put_stream("other", 0o600, &mut &noise(9, 1 << 20)[..], &quiet)
        .unwrap();
    drop(w);
    let gc = repo.gc(std::time::Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_objects, 0, "{gc:?}");
    assert!(gc.locked_objects >= 1, "{gc:?}");
    assert!(
        gc.locked_until.is_some_and(|u| u > Timestamp::now()),
        "{gc:?}"
    );
    assert_eq!(
        repo.delete_wal_before("000000010000000000000009").unwrap(),
        0
    );
    assert_eq!(repo.list_wal().unwrap(), vec![wal1, wal2]);

    // What moto (like S3) does with a DELETE without a version id on a
    // locked object: it succeeds by adding a delete marker; the locked
    // version stays and can still be read by its id. (careplane never sends
    // one before the lock ends, so a locked backup never looks deleted.)
    let chunk = m.chunks[0].object();
    let v = versions(port, &chunk);
    let (status, _, body) = raw(port, "DELETE", &format!("/{BUCKET}/{PREFIX}/{chunk}"), &[]);
    assert_eq!(status, 204, "{body}");
    let (status, _, _) = raw(port, "GET", &format!("/{BUCKET}/{PREFIX}/{chunk}"), &[]);
    assert_eq!(status, 404);
    let (status, _, _) = raw(
        port,
        "GET",
        &format!("/{BUCKET}/{PREFIX}/{chunk}?versionId={}", v[0]),
        &[],
    );
    assert_eq!(status, 200);
}

#[test]
fn a_bucket_without_object_lock_is_refused_before_anything_is_written() {
    let Some(moto) = start_moto() else { return };
    create_bucket(moto.port, "plain-backups", false);
    let err = open(moto.port, "plain-backups", &keys())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bucket plain-backups does not have S3 Object Lock enabled"),
        "{err}"
    );
    assert!(err.contains("remove `immutability`"), "{err}");
    let (status, _, body) = raw(moto.port, "GET", "/plain-backups?list-type=2", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("<Key>"), "something was written: {body}");
    // A repository without immutability opens there as before.
    let mut store_options = s3_options(moto.port);
    store_options.retain(|(k, _)| !k.starts_with("object_lock"));
    Repository::open_with(
        &format!("s3://plain-backups/{PREFIX}"),
        &keys(),
        RepoOptions {
            store_options,
            ..RepoOptions::default()
        },
    )
    .unwrap();
}

#[test]
fn a_file_repository_cannot_be_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let err = Repository::open_with(
        &format!("file://{}/repo", dir.path().display()),
        &keys(),
        RepoOptions {
            store_options: lock(30).store_options(),
            ..RepoOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("immutability (S3 Object Lock) needs an s3:// repository"),
        "{err}"
    );
    assert!(!dir.path().join("repo").exists());
}

/// Chunks written before immutability was turned on carry no lock: an
/// immutable backup uploads them again (locked) instead of reusing them.
/// Turned off and on again, what was written while off is not reused.
#[test]
fn chunks_written_before_immutability_are_not_reused_by_an_immutable_backup() {
    let Some(moto) = start_moto() else { return };
    let port = moto.port;
    create_bucket(port, BUCKET, true);
    let k = keys();
    let url = format!("s3://{BUCKET}/{PREFIX}");
    let open_with = |lock: Option<Immutability>| {
        let mut store_options = s3_options(port);
        store_options.extend(lock.map(|l| l.store_options()).unwrap_or_default());
        Repository::open_with(
            &url,
            &k,
            RepoOptions {
                store_options,
                threads: 2,
                ..RepoOptions::default()
            },
        )
        .unwrap()
    };
    let data = noise(11, 6 << 20);
    let other = noise(12, 3 << 20);
    let backup = |repo: &Repository, data: &[u8]| {
        let new = std::sync::atomic::AtomicU64::new(0);
        let count = |p: Progress| new.store(p.chunks_new, std::sync::atomic::Ordering::Relaxed);
        let mut w = repo.start_backup(BTreeMap::new()).unwrap();
        w.put_stream("db.dump", 0o600, &mut &data[..], &count)
            .unwrap();
        let m = w.commit(Default::default()).unwrap();
        (m, new.into_inner())
    };

    let plain = open_with(None);
    let (m0, new0) = backup(&plain, &data);
    assert!(new0 >= 2, "{new0}");
    let chunk = m0.chunks[0].object();
    let (status, head, _) = raw(port, "HEAD", &format!("/{BUCKET}/{PREFIX}/{chunk}"), &[]);
    assert_eq!(status, 200);
    assert!(header(&head, "x-amz-object-lock-mode").is_none(), "{head}");
    drop(plain);

    let locked = open_with(Some(lock(1)));
    let (m1, new1) = backup(&locked, &data);
    assert_eq!(new1, new0, "every unlocked chunk is uploaded again");
    let ids =
        |m: &careplane_backup::Manifest| m.chunks.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&m1), ids(&m0), "same content, same chunk ids");
    // Encryption is randomised: the new copy is a new object, locked; the
    // old one is garbage once no manifest references it.
    for c in &m1.chunks {
        let (mode, _) = retention(port, &c.object());
        assert_eq!(mode, "compliance");
        assert_ne!(c.object(), chunk);
    }
    // The config written unlocked is locked now too.
    retention(port, "config.json");
    let (_, new2) = backup(&locked, &data);
    assert_eq!(new2, 0, "locked chunks are reused");
    drop(locked);

    // Off: the marker goes, and a backup of other data writes unlocked
    // chunks. On again: those are uploaded again, the locked ones reused.
    let plain = open_with(None);
    let (status, _, _) = raw(
        port,
        "HEAD",
        &format!("/{BUCKET}/{PREFIX}/object-lock.json"),
        &[],
    );
    assert_eq!(status, 404);
    let (_, new_other) = backup(&plain, &other);
    assert!(new_other >= 1, "{new_other}");
    drop(plain);
    let locked = open_with(Some(lock(1)));
    let (m3, new3) = backup(&locked, &other);
    assert_eq!(new3, new_other);
    // The chunks locked in the first period may be reused or (written
    // before the new period's second) uploaded again: either way, every
    // chunk an immutable backup references is locked for its days.
    let (m4, _) = backup(&locked, &data);
    for m in [&m1, &m3, &m4] {
        for c in &m.chunks {
            let (mode, until) = retention(port, &c.object());
            assert_eq!(mode, "compliance");
            let needed = m
                .finished
                .checked_add(jiff::SignedDuration::from_hours(24))
                .unwrap();
            assert!(until >= needed, "{}: {until} < {needed}", c.object());
        }
    }
}

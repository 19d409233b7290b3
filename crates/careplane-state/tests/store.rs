//! Store tests against real SQLite files in temporary directories.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};

use careplane_state::{
    ExposeSecret, ResourceRecord, ResourceStatus, SecretString, StateError, Store,
};
use serde_json::json;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn rec(id: &str, kind: &str, status: ResourceStatus, props: serde_json::Value) -> ResourceRecord {
    ResourceRecord {
        id: id.into(),
        kind: kind.into(),
        status,
        props,
        observed: json!({}),
        created_at: "ignored".into(),
        updated_at: "ignored".into(),
    }
}

/// A data directory below a temp dir, so that `Store::open` has to create it.
fn data_dir(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    tmp.path().join("data")
}

// ------------------------------------------------------------------ opening

#[test]
fn open_creates_private_files_and_runs_migrations_idempotently() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    assert_eq!(store.data_dir(), dir);
    assert_eq!(
        mode(&dir),
        0o711,
        "data dir must be traversable, not listable"
    );
    assert_eq!(mode(&dir.join("state.db")), 0o600);
    assert_eq!(store.schema_version().unwrap(), 1);
    store
        .put_resource(&rec(
            "pg-cluster/shared",
            "pg-cluster",
            ResourceStatus::Ready,
            json!({"port": 5432}),
        ))
        .unwrap();
    drop(store);

    // What another SQLite client sees.
    let raw = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    let version: i64 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
    let journal_mode: String = raw
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(journal_mode, "wal");
    let mut tables: Vec<String> = raw
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        ["meta", "operations", "resources", "secrets", "steps"]
    );
    drop(raw);

    // Reopening neither re-runs migrations (which would fail: CREATE TABLE
    // of existing tables) nor loses data.
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
    assert_eq!(store.resources().unwrap().len(), 1);
}

#[test]
fn open_uses_default_identity_path() {
    if std::env::var_os("CAREPLANE_IDENTITY").is_some_and(|v| !v.is_empty()) {
        eprintln!("CAREPLANE_IDENTITY is set; skipping the default-path test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.identity_path(), dir.join("identity.age"));
    assert!(dir.join("identity.age").is_file());
}

#[test]
fn schema_from_the_future_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    drop(Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap());
    let raw = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    raw.pragma_update(None, "user_version", 99).unwrap();
    drop(raw);
    let err = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::SchemaTooNew {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("use a newer careplane"), "{err}");
}

// ---------------------------------------------------------------- resources

#[test]
fn resources_upsert_get_list_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();

    assert!(store.resources().unwrap().is_empty());
    assert_eq!(store.resource("pg-cluster/shared").unwrap(), None);

    let mut db = rec(
        "pg-database/stmarys/production",
        "pg-database",
        ResourceStatus::Pending,
        json!({"owner": "stmarys", "encoding": "UTF8"}),
    );
    store.put_resource(&db).unwrap();
    store
        .put_resource(&rec(
            "pg-cluster/shared",
            "pg-cluster",
            ResourceStatus::Ready,
            json!({"version": 15}),
        ))
        .unwrap();

    let got = store.resource(&db.id).unwrap().expect("stored");
    assert_eq!(got.kind, "pg-database");
    assert_eq!(got.status, ResourceStatus::Pending);
    assert_eq!(got.props, db.props);
    assert_ne!(got.created_at, "ignored", "timestamps are set by the store");
    assert!(got.created_at.ends_with('Z'));
    assert_eq!(got.created_at, got.updated_at);

    let ids: Vec<String> = store
        .resources()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["pg-cluster/shared", "pg-database/stmarys/production"]);

    // Pretend the record is old, then update it: created_at must be kept.
    let raw = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    raw.execute(
        "UPDATE resources SET created_at = '2001-01-01T00:00:00Z', updated_at = '2001-01-01T00:00:00Z' WHERE id = ?1",
        [&db.id],
    )
    .unwrap();
    drop(raw);
    db.status = ResourceStatus::Ready;
    db.observed = json!({"oid": 16384});
    db.created_at = "2099-01-01T00:00:00Z".into();
    store.put_resource(&db).unwrap();
    let got = store.resource(&db.id).unwrap().unwrap();
    assert_eq!(got.status, ResourceStatus::Ready);
    assert_eq!(got.observed, json!({"oid": 16384}));
    assert_eq!(got.created_at, "2001-01-01T00:00:00Z");
    assert!(got.updated_at.as_str() > "2020", "{}", got.updated_at);
    assert_eq!(store.resources().unwrap().len(), 2);

    // Delete removes the record and its secrets, but not other owners'.
    store
        .put_secret(&db.id, "password", &SecretString::from("pw-of-db"))
        .unwrap();
    store
        .put_secret(
            "pg-cluster/shared",
            "superuser",
            &SecretString::from("pw-of-cluster"),
        )
        .unwrap();
    store.delete_resource(&db.id).unwrap();
    assert_eq!(store.resource(&db.id).unwrap(), None);
    assert!(store.secret_names(&db.id).unwrap().is_empty());
    assert_eq!(store.secret(&db.id, "password").unwrap().map(|_| ()), None);
    assert_eq!(
        store.secret_names("pg-cluster/shared").unwrap(),
        ["superuser"]
    );
    // Absent: not an error.
    store.delete_resource(&db.id).unwrap();
    store.delete_resource("never/existed").unwrap();
}

#[test]
fn resource_status_serializes_kebab_case() {
    assert_eq!(
        serde_json::to_value(ResourceStatus::Deleting).unwrap(),
        json!("deleting")
    );
    assert_eq!(
        serde_json::from_value::<ResourceStatus>(json!("pending")).unwrap(),
        ResourceStatus::Pending
    );
    assert_eq!(
        "ready".parse::<ResourceStatus>().unwrap(),
        ResourceStatus::Ready
    );
    assert!("Ready".parse::<ResourceStatus>().is_err());
}

#[test]
fn empty_resource_id_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    let err = store
        .put_resource(&rec("", "pg-cluster", ResourceStatus::Ready, json!({})))
        .unwrap_err();
    assert!(matches!(err, StateError::InvalidArgument(_)), "{err:?}");
}

// ------------------------------------------------------------------ secrets

#[test]
fn secrets_round_trip_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    assert_eq!(store.secret("platform", "redis").unwrap().map(|_| ()), None);

    store
        .put_secret("platform", "redis", &SecretString::from("first"))
        .unwrap();
    store
        .put_secret("platform", "admin", &SecretString::from("ädmin pässword ✓"))
        .unwrap();
    store
        .put_secret("platform", "redis", &SecretString::from("second"))
        .unwrap();
    assert_eq!(
        store
            .secret("platform", "redis")
            .unwrap()
            .unwrap()
            .expose_secret(),
        "second"
    );
    assert_eq!(store.secret_names("platform").unwrap(), ["admin", "redis"]);

    let generated = store
        .get_or_create_secret("pg-database/x", "password")
        .unwrap();
    let value = generated.expose_secret().to_string();
    assert_eq!(value.len(), 32);
    assert!(value.bytes().all(|b| b.is_ascii_alphanumeric()), "{value}");
    let again = store
        .get_or_create_secret("pg-database/x", "password")
        .unwrap();
    assert_eq!(again.expose_secret(), value);
    let other = store
        .get_or_create_secret("pg-database/y", "password")
        .unwrap();
    assert_ne!(other.expose_secret(), value);
    // An existing put_secret value is returned, not replaced.
    assert_eq!(
        store
            .get_or_create_secret("platform", "redis")
            .unwrap()
            .expose_secret(),
        "second"
    );
    drop(store);

    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    assert_eq!(
        store
            .secret("platform", "admin")
            .unwrap()
            .unwrap()
            .expose_secret(),
        "ädmin pässword ✓"
    );
    assert_eq!(
        store
            .get_or_create_secret("pg-database/x", "password")
            .unwrap()
            .expose_secret(),
        value
    );
    store.delete_secret("platform", "admin").unwrap();
    assert_eq!(store.secret_names("platform").unwrap(), ["redis"]);
}

#[test]
fn get_or_create_secret_is_atomic_across_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    drop(Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap());
    const N: usize = 4;
    for round in 0..5 {
        let name = format!("password-{round}");
        let barrier = Arc::new(Barrier::new(N));
        let handles: Vec<_> = (0..N)
            .map(|_| {
                let (dir, barrier, name) = (dir.clone(), barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
                    barrier.wait();
                    store
                        .get_or_create_secret("pg-database/race", &name)
                        .unwrap()
                        .expose_secret()
                        .to_string()
                })
            })
            .collect();
        let values: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            values.iter().all(|v| v == &values[0]),
            "round {round}: {values:?}"
        );
    }
}

#[test]
fn secret_plaintext_never_reaches_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    let plaintext = "Zq7-unmistakable-plaintext-4711";
    store
        .put_secret(
            "pg-database/stmarys/production",
            "unmistakable-name",
            &SecretString::from(plaintext),
        )
        .unwrap();
    let generated = store.get_or_create_secret("platform", "generated").unwrap();

    let read_all = || {
        let mut bytes = fs::read(dir.join("state.db")).unwrap();
        if let Ok(wal) = fs::read(dir.join("state.db-wal")) {
            bytes.extend_from_slice(&wal);
        }
        bytes
    };
    let check = |bytes: &[u8], when: &str| {
        // The rows are there (so we are looking at the right bytes) ...
        assert!(
            contains(bytes, b"unmistakable-name"),
            "{when}: secret row not found"
        );
        assert!(
            contains(bytes, b"age-encryption.org/v1"),
            "{when}: no age ciphertext found"
        );
        // ... but not the values.
        assert!(
            !contains(bytes, plaintext.as_bytes()),
            "{when}: plaintext on disk"
        );
        assert!(
            !contains(bytes, generated.expose_secret().as_bytes()),
            "{when}: generated plaintext on disk"
        );
    };
    check(&read_all(), "before checkpoint (state.db + state.db-wal)");
    store.checkpoint().unwrap();
    let db = fs::read(dir.join("state.db")).unwrap();
    check(&db, "after checkpoint (state.db)");
    check(&read_all(), "after checkpoint (state.db + state.db-wal)");
}

#[test]
fn identity_file_is_private_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    let identity = dir.join("identity.age");
    assert_eq!(mode(&identity), 0o600);
    let text = fs::read_to_string(&identity).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .count(),
        1,
        "one key line expected"
    );
    assert!(text.contains(&format!("# public key: {}", store.public_key())));
    assert!(store.public_key().starts_with("age1"));
    // No leftover temporary files next to it.
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Reopen keeps the same key.
    let key = store.public_key();
    drop(store);
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    assert_eq!(store.public_key(), key);
}

#[test]
fn missing_identity_with_secrets_is_an_error_not_a_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let identity = dir.join("identity.age");
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    store
        .put_secret("platform", "a", &SecretString::from("value-a"))
        .unwrap();
    store.get_or_create_secret("platform", "b").unwrap();
    drop(store);
    fs::remove_file(&identity).unwrap();

    let err = Store::open_with_identity(&dir, &identity).unwrap_err();
    match &err {
        StateError::IdentityMissing {
            count, identity: p, ..
        } => {
            assert_eq!(*count, 2);
            assert_eq!(p, &identity);
        }
        other => panic!("expected IdentityMissing, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("state.db holds 2 encrypted secrets but the identity")
            && msg.contains(&identity.display().to_string())
            && msg.contains("is missing; restore it from your key backup"),
        "{msg}"
    );
    assert!(
        !identity.exists(),
        "must not silently generate a new identity"
    );
}

#[test]
fn missing_identity_without_secrets_is_regenerated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let identity = dir.join("identity.age");
    let first = Store::open_with_identity(&dir, &identity)
        .unwrap()
        .public_key();
    fs::remove_file(&identity).unwrap();
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    assert_ne!(store.public_key(), first);
    store
        .put_secret("platform", "a", &SecretString::from("v"))
        .unwrap();
    assert_eq!(
        store
            .secret("platform", "a")
            .unwrap()
            .unwrap()
            .expose_secret(),
        "v"
    );
}

#[test]
fn wrong_identity_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let identity = dir.join("identity.age");
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    store
        .put_secret("platform", "a", &SecretString::from("v"))
        .unwrap();
    let expected = store.public_key();
    drop(store);

    // Another store's identity.
    let other_dir = tmp.path().join("other");
    let found = Store::open_with_identity(&other_dir, &other_dir.join("identity.age"))
        .unwrap()
        .public_key();
    let err = Store::open_with_identity(&dir, &other_dir.join("identity.age")).unwrap_err();
    match &err {
        StateError::IdentityMismatch {
            expected: e,
            found: f,
            count,
            ..
        } => {
            assert_eq!((e, f, *count), (&expected, &found, 1));
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
}

#[test]
fn identity_readable_by_others_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let identity = dir.join("identity.age");
    drop(Store::open_with_identity(&dir, &identity).unwrap());
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Store::open_with_identity(&dir, &identity).unwrap_err();
    assert!(
        matches!(err, StateError::IdentityPermissions { mode: 0o644, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn identity_can_live_outside_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let keys = tmp.path().join("keys");
    fs::create_dir(&keys).unwrap();
    let identity = keys.join("careplane.age");
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    assert_eq!(store.identity_path(), identity);
    assert!(identity.is_file());
    assert_eq!(mode(&identity), 0o600);
    assert!(!dir.join("identity.age").exists());
    store
        .put_secret("platform", "a", &SecretString::from("v"))
        .unwrap();
    drop(store);
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    assert_eq!(
        store
            .secret("platform", "a")
            .unwrap()
            .unwrap()
            .expose_secret(),
        "v"
    );
}

#[test]
fn errors_and_debug_never_show_secret_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    let value = SecretString::from("do-not-print-me");
    store.put_secret("platform", "x", &value).unwrap();
    let got = store.secret("platform", "x").unwrap().unwrap();
    assert!(!format!("{got:?} {value:?} {store:?}").contains("do-not-print-me"));

    // A ciphertext copied into another row is detected, and the error does
    // not reveal the value.
    let raw = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    raw.execute(
        "INSERT INTO secrets (owner, name, ciphertext, created_at, updated_at)
         SELECT 'platform', 'copy', ciphertext, created_at, updated_at FROM secrets
         WHERE owner = 'platform' AND name = 'x'",
        [],
    )
    .unwrap();
    drop(raw);
    let err = store.secret("platform", "copy").unwrap_err();
    assert!(matches!(err, StateError::Decrypt { .. }), "{err:?}");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("different secret"), "{msg}");
    assert!(!msg.contains("do-not-print-me"), "{msg}");
}

// ------------------------------------------------------------------ journal

#[test]
fn unfinished_steps_of_a_dead_operation_are_reported_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let identity = dir.join("identity.age");

    // First apply: one step finishes, one is cut short.
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    let op1 = store.begin_operation("apply").unwrap();
    let done = store
        .step_started(op1, "create pg-cluster/shared", &json!({"port": 5432}))
        .unwrap();
    store.step_finished(done, None).unwrap();
    let cut = store
        .step_started(op1, "create pg-database/a", &json!({"name": "a"}))
        .unwrap();
    // Its own running step is not "interrupted" for the process running it.
    assert!(store.interrupted_steps().unwrap().is_empty());
    drop(store); // the process "dies": no step_finished, no finish_operation

    // Next apply.
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    let interrupted = store.interrupted_steps().unwrap();
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    let step = &interrupted[0];
    assert_eq!((step.id, step.op), (cut, op1));
    assert_eq!(step.action, "create pg-database/a");
    assert_eq!(step.detail, json!({"name": "a"}));
    assert_eq!((step.finished_at.as_deref(), step.resumed_by), (None, None));

    let op2 = store.begin_operation("apply").unwrap();
    let own = store
        .step_started(op2, "create pg-database/a", &json!({}))
        .unwrap();
    // Still reported (and op2's running step is not).
    assert_eq!(
        store
            .interrupted_steps()
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect::<Vec<_>>(),
        [cut]
    );
    store.mark_interrupted_resumed(op2).unwrap();
    assert!(store.interrupted_steps().unwrap().is_empty());
    store.step_finished(own, Some("boom")).unwrap();
    store.finish_operation(op2, "failed", Some("boom")).unwrap();

    let journal = store.journal(10).unwrap();
    assert_eq!(
        journal.iter().map(|s| s.id).collect::<Vec<_>>(),
        [own, cut, done],
        "newest first"
    );
    assert_eq!(journal[0].error.as_deref(), Some("boom"));
    assert!(journal[0].finished_at.is_some());
    assert_eq!(journal[1].resumed_by, Some(op2));
    assert_eq!(journal[1].finished_at, None);
    assert_eq!(store.journal(1).unwrap().len(), 1);

    let ops = store.operations(10).unwrap();
    assert_eq!(ops.iter().map(|o| o.id).collect::<Vec<_>>(), [op2, op1]);
    assert_eq!(ops[0].outcome.as_deref(), Some("failed"));
    assert_eq!(ops[0].error.as_deref(), Some("boom"));
    assert_eq!(ops[0].pid, std::process::id());
    assert!(ops[0].finished_at.is_some());
    assert_eq!(ops[1].outcome.as_deref(), Some("interrupted"));
    assert_eq!(ops[1].finished_at, None);
    assert!(ops[1]
        .error
        .as_deref()
        .unwrap()
        .contains(&format!("operation {op2} took over")));
    drop(store);

    // A third run sees nothing left over.
    let store = Store::open_with_identity(&dir, &identity).unwrap();
    assert!(store.interrupted_steps().unwrap().is_empty());
    assert_eq!(store.operations(1).unwrap()[0].id, op2);
}

#[test]
fn journal_rejects_bad_ids_and_outcomes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let store = Store::open_with_identity(&dir, &dir.join("identity.age")).unwrap();
    let op = store.begin_operation("apply").unwrap();
    assert!(matches!(
        store.finish_operation(op, "done", None),
        Err(StateError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.finish_operation(op + 100, "succeeded", None),
        Err(StateError::UnknownOperation(_))
    ));
    assert!(matches!(
        store.step_started(op + 100, "x", &json!(null)),
        Err(StateError::UnknownOperation(_))
    ));
    assert!(matches!(
        store.step_finished(12345, None),
        Err(StateError::UnknownStep(12345))
    ));
    assert!(matches!(
        store.mark_interrupted_resumed(op + 100),
        Err(StateError::UnknownOperation(_))
    ));
    store.finish_operation(op, "succeeded", None).unwrap();
    let ops = store.operations(5).unwrap();
    assert_eq!(ops[0].outcome.as_deref(), Some("succeeded"));
    assert_eq!(ops[0].command, "apply");
}

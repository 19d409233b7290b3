//! Schema migrations for `state.db`.
//!
//! `MIGRATIONS[i]` takes the database from `user_version` `i` to `i + 1`.
//! Each runs in its own `BEGIN IMMEDIATE` transaction together with the
//! `user_version` bump, so a crash mid-migration leaves the previous version
//! intact. Never edit a released migration; append a new one.

use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

use crate::StateError;

/// The migrations, oldest first.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    -- Key/value facts about the store itself (e.g. the public key the
    -- secrets are encrypted to).
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) STRICT;

    -- What careplane created. props/observed are JSON texts.
    CREATE TABLE resources (
        id         TEXT PRIMARY KEY NOT NULL,
        kind       TEXT NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'deleting')),
        props      TEXT NOT NULL,
        observed   TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    ) STRICT;
    CREATE INDEX resources_kind ON resources (kind);

    -- Secrets, each value age-encrypted on its own. owner is a resource id
    -- or a platform-level owner such as 'platform', so there is no foreign
    -- key; Store::delete_resource removes a resource's secrets explicitly.
    CREATE TABLE secrets (
        owner      TEXT NOT NULL,
        name       TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (owner, name)
    ) STRICT;

    -- One row per command run.
    CREATE TABLE operations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        command     TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        outcome     TEXT CHECK (outcome IN ('succeeded', 'failed', 'interrupted')),
        error       TEXT
    ) STRICT;

    -- Steps of operations. A step with finished_at NULL whose operation is
    -- not running any more was interrupted; resumed_by records the
    -- operation that noticed it.
    CREATE TABLE steps (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        op          INTEGER NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
        action      TEXT NOT NULL,
        detail      TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        error       TEXT,
        resumed_by  INTEGER REFERENCES operations (id) ON DELETE SET NULL
    ) STRICT;
    CREATE INDEX steps_op ON steps (op);
    CREATE INDEX steps_unfinished ON steps (id) WHERE finished_at IS NULL;
    "#,
];

/// Latest schema version this build knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies pending migrations, one transaction each. Safe against a
/// concurrent process migrating the same file: each step re-reads the
/// version after taking the write lock.
pub(crate) fn migrate(conn: &mut Connection, db_path: &Path) -> Result<i64, StateError> {
    let db_err = |action: String| {
        let path = db_path.to_path_buf();
        move |source| StateError::Db {
            action,
            path,
            source,
        }
    };
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err("begin schema migration".into()))?;
        let version = user_version(&tx).map_err(db_err("read schema version".into()))?;
        if version < 0 {
            return Err(StateError::Corrupt {
                path: db_path.to_path_buf(),
                what: format!("negative schema version {version} (PRAGMA user_version)"),
            });
        }
        if version > latest_version() {
            return Err(StateError::SchemaTooNew {
                path: db_path.to_path_buf(),
                found: version,
                supported: latest_version(),
            });
        }
        if version == latest_version() {
            tx.commit()
                .map_err(db_err("finish schema migration".into()))?;
            return Ok(version);
        }
        let next = version + 1;
        let sql = MIGRATIONS[version as usize];
        tx.execute_batch(sql)
            .map_err(db_err(format!("migrate schema to version {next}")))?;
        tx.pragma_update(None, "user_version", next)
            .map_err(db_err(format!("set schema version {next}")))?;
        tx.commit()
            .map_err(db_err(format!("commit schema version {next}")))?;
    }
}

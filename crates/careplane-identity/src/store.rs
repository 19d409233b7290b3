//! `<dataDir>/access.db`: elevation requests and grants, break-glass
//! accounts, role usage, review decisions and rate-limit buckets
//! (docs/design/0013, "Storage"). Times are passed in (microseconds since
//! the epoch) so that expiry is tested without waiting.

use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

use crate::authz::{authorize, Action, Binding, Principal, Role, Scope, Source, Target};
use crate::ratelimit::{Bucket, Limits};
use crate::{time, Error};

pub const DB_FILE: &str = "access.db";
/// The longest elevation anyone may ask for.
pub const MAX_ELEVATION_SECS: u64 = 12 * 3600;
/// The longest break-glass elevation.
pub const MAX_BREAK_GLASS_SECS: u64 = 3600;
/// A pending request nobody approved within this is stale.
pub const REQUEST_TTL_SECS: i64 = 24 * 3600;

const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE requests (
        id           TEXT PRIMARY KEY NOT NULL,
        requester    TEXT NOT NULL,
        role         TEXT NOT NULL,
        scope        TEXT NOT NULL,          -- JSON of Scope
        duration     INTEGER NOT NULL,       -- seconds
        reason       TEXT NOT NULL,
        created      INTEGER NOT NULL,       -- µs since the epoch
        status       TEXT NOT NULL CHECK (status IN ('pending', 'approved')),
        approver     TEXT,
        approved_at  INTEGER,
        expires      INTEGER,
        break_glass  INTEGER NOT NULL DEFAULT 0,
        needs_review INTEGER NOT NULL DEFAULT 0,
        revoked_at   INTEGER,
        revoked_by   TEXT
    ) STRICT;
    CREATE INDEX requests_requester ON requests (requester);

    CREATE TABLE break_glass_accounts (
        name          TEXT PRIMARY KEY NOT NULL,
        password_hash TEXT NOT NULL,         -- argon2id PHC string
        last_step     INTEGER                -- last accepted TOTP step (replay)
    ) STRICT;

    -- When a principal last used a role, and through what (for reviews).
    CREATE TABLE uses (
        principal  TEXT NOT NULL,
        role       TEXT NOT NULL,
        source     TEXT NOT NULL,            -- group:<g>, grant:<id>, break-glass:<id>, local-root
        scope      TEXT NOT NULL,
        first_used INTEGER NOT NULL,
        last_used  INTEGER NOT NULL,
        PRIMARY KEY (principal, role, source)
    ) STRICT;

    CREATE TABLE reviews (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        reviewer  TEXT NOT NULL,
        principal TEXT NOT NULL,
        role      TEXT NOT NULL,
        source    TEXT NOT NULL,
        decision  TEXT NOT NULL CHECK (decision IN ('keep', 'revoke')),
        note      TEXT NOT NULL,
        time      INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE buckets (
        key         TEXT PRIMARY KEY NOT NULL,
        millitokens INTEGER NOT NULL,
        updated     INTEGER NOT NULL
    ) STRICT;
"#,
    r#"
    -- A break-glass elevation's session for later commands (the IdP is down,
    -- so there is no OIDC session): the SHA-256 of its bearer secret.
    CREATE TABLE break_glass_sessions (
        request    TEXT PRIMARY KEY NOT NULL REFERENCES requests (id),
        token_hash TEXT NOT NULL
    ) STRICT;
"#,
];

/// An elevation request, approved or not; break-glass elevations are
/// requests approved by nobody, flagged for review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: String,
    pub requester: String,
    pub role: Role,
    pub scope: Scope,
    pub duration_secs: u64,
    pub reason: String,
    pub created: String,
    /// `pending`, `approved`, `expired`, `revoked` or `stale` (as of the
    /// time it was read).
    pub status: String,
    pub approver: Option<String>,
    pub approved_at: Option<String>,
    pub expires: Option<String>,
    pub break_glass: bool,
    pub needs_review: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReviewDecision {
    Keep,
    Revoke,
}

/// One line of an access review: who holds what, through what, since and
/// until when, and when it was last used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewItem {
    pub principal: String,
    pub role: Role,
    pub scope: Scope,
    /// `group:<name>`, `grant:<id>`, `break-glass:<id>` or `local-root`.
    pub source: String,
    pub since: Option<String>,
    pub until: Option<String>,
    pub last_used: Option<String>,
    pub needs_review: bool,
    /// The latest recorded decision, if any: `keep`/`revoke` by whom, when.
    pub last_review: Option<String>,
}

/// A recorded review decision (the evidence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRecord {
    pub id: i64,
    pub reviewer: String,
    pub principal: String,
    pub role: Role,
    pub source: String,
    pub decision: ReviewDecision,
    pub note: String,
    pub time: String,
    /// What the decision changed: a grant revoked, or what must be done
    /// in the IdP for a group-derived role.
    pub effect: String,
}

/// id, reviewer, principal, role, source, decision, note, time.
type ReviewRow = (i64, String, String, String, String, String, String, i64);

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn source_key(s: &Source) -> String {
    match s {
        Source::Group { group } => format!("group:{group}"),
        Source::Grant { id, .. } => format!("grant:{id}"),
        Source::BreakGlass { id, .. } => format!("break-glass:{id}"),
        Source::LocalRoot => "local-root".into(),
        Source::ApiToken { scope } => format!("api-token:{scope}"),
    }
}

fn session_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn new_id(prefix: &str) -> Result<String, Error> {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).map_err(|e| Error::Invalid {
        field: "id".into(),
        detail: format!("no randomness: {e}"),
    })?;
    Ok(format!(
        "{prefix}-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

impl Store {
    /// Opens (creating and migrating) `<data_dir>/access.db`.
    pub fn open(data_dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let path = data_dir.join(DB_FILE);
        let db = |action: &str| {
            let path = path.clone();
            let action = action.to_string();
            move |source| Error::Db {
                path,
                action,
                source,
            }
        };
        let mut conn = Connection::open(&path).map_err(db("open"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db("set busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db("enable WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db("set synchronous"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        loop {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("begin migration"))?;
            let v: i64 = tx
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(db("read schema version"))?;
            if v as usize >= MIGRATIONS.len() {
                if v as usize > MIGRATIONS.len() {
                    return Err(Error::Invalid {
                        field: path.display().to_string(),
                        detail: format!(
                            "schema version {v} is newer than this careplane's {}",
                            MIGRATIONS.len()
                        ),
                    });
                }
                tx.commit().map_err(db("commit"))?;
                break;
            }
            tx.execute_batch(MIGRATIONS[v as usize])
                .map_err(db(&format!("migrate to version {}", v + 1)))?;
            tx.pragma_update(None, "user_version", v + 1)
                .map_err(db("set schema version"))?;
            tx.commit().map_err(db("commit migration"))?;
        }
        Ok(Store { conn, path })
    }

    fn db(&self, action: &str) -> impl FnOnce(rusqlite::Error) -> Error {
        let path = self.path.clone();
        let action = action.to_string();
        move |source| Error::Db {
            path,
            action,
            source,
        }
    }

    /// Asks for `role` on `scope` for `duration_secs`. Needs
    /// `access.request` and a reason; the role must be one the requester
    /// does not already hold with that scope.
    pub fn request(
        &self,
        requester: &Principal,
        role: Role,
        scope: Scope,
        duration_secs: u64,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequest, Error> {
        let d = authorize(requester, Action::AccessRequest, &Target::platform(false));
        if !d.allowed {
            return Err(Error::Refused(d.reason));
        }
        if reason.trim().is_empty() {
            return Err(Error::Invalid {
                field: "reason".into(),
                detail: "an elevation needs a reason (a ticket or incident)".into(),
            });
        }
        if duration_secs == 0 || duration_secs > MAX_ELEVATION_SECS {
            return Err(Error::Invalid {
                field: "duration".into(),
                detail: format!(
                    "{duration_secs} s: an elevation lasts from 1 s to {} h",
                    MAX_ELEVATION_SECS / 3600
                ),
            });
        }
        if let Scope::Tenants(ts) = &scope {
            if ts.is_empty() {
                return Err(Error::Invalid {
                    field: "tenants".into(),
                    detail: "a tenant-scoped elevation names at least one tenant".into(),
                });
            }
        }
        if role == Role::TenantOperator && scope == Scope::All {
            return Err(Error::Invalid {
                field: "tenants".into(),
                detail: "tenant-operator is scoped to named tenants: pass --tenant".into(),
            });
        }
        let id = new_id("r")?;
        self.conn
            .execute(
                "INSERT INTO requests (id, requester, role, scope, duration, reason, created, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
                params![
                    id,
                    requester.id,
                    role.as_str(),
                    serde_json::to_string(&scope).expect("scope serializes"),
                    duration_secs as i64,
                    reason,
                    now
                ],
            )
            .map_err(self.db("record the request"))?;
        self.get(&id, now)
    }

    /// Approves a pending request: never by its requester; the approver
    /// needs `access.approve` (security-officer or platform-admin, with
    /// MFA), and a platform-admin elevation needs a platform-admin approver.
    /// The grant runs from now for the requested duration.
    pub fn approve(
        &self,
        id: &str,
        approver: &Principal,
        now: i64,
    ) -> Result<AccessRequest, Error> {
        let req = self.get(id, now)?;
        if req.status != "pending" {
            return Err(Error::Refused(format!(
                "request {id} is {}, not pending",
                req.status
            )));
        }
        if req.requester.eq_ignore_ascii_case(&approver.id) {
            return Err(Error::Refused(format!(
                "{} requested {id} and cannot approve it: a different person must",
                approver.id
            )));
        }
        let target = match &req.scope {
            Scope::All => Target::platform(true),
            Scope::Tenants(ts) => Target::tenant(&ts[0], true),
        };
        let d = authorize(approver, Action::AccessApprove, &target);
        if !d.allowed {
            return Err(Error::Refused(d.reason));
        }
        if req.role == Role::PlatformAdmin
            && !approver
                .bindings
                .iter()
                .any(|b| b.role == Role::PlatformAdmin && b.scope == Scope::All)
        {
            return Err(Error::Refused(format!(
                "{} cannot approve a platform-admin elevation: only a platform-admin can",
                approver.id
            )));
        }
        let expires = now + (req.duration_secs as i64) * 1_000_000;
        let n = self
            .conn
            .execute(
                "UPDATE requests SET status = 'approved', approver = ?2, approved_at = ?3, expires = ?4
                 WHERE id = ?1 AND status = 'pending'",
                params![id, approver.id, now, expires],
            )
            .map_err(self.db("approve the request"))?;
        if n != 1 {
            return Err(Error::Refused(format!(
                "request {id} was approved by someone else meanwhile"
            )));
        }
        self.get(id, now)
    }

    pub fn get(&self, id: &str, now: i64) -> Result<AccessRequest, Error> {
        self.select("WHERE id = ?1", params![id], now)?
            .pop()
            .ok_or_else(|| Error::NotFound(format!("no access request {id}")))
    }

    /// Every request, newest first.
    pub fn list(&self, now: i64) -> Result<Vec<AccessRequest>, Error> {
        self.select("ORDER BY created DESC, id", params![], now)
    }

    fn select(
        &self,
        tail: &str,
        p: impl rusqlite::Params,
        now: i64,
    ) -> Result<Vec<AccessRequest>, Error> {
        let sql = format!(
            "SELECT id, requester, role, scope, duration, reason, created, status, approver,
                    approved_at, expires, break_glass, needs_review, revoked_at FROM requests {tail}"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.db("read requests"))?;
        let rows = stmt
            .query_map(p, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<i64>>(9)?,
                    r.get::<_, Option<i64>>(10)?,
                    r.get::<_, i64>(11)?,
                    r.get::<_, i64>(12)?,
                    r.get::<_, Option<i64>>(13)?,
                ))
            })
            .map_err(self.db("read requests"))?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                requester,
                role,
                scope,
                dur,
                reason,
                created,
                status,
                approver,
                at,
                exp,
                bg,
                nr,
                revoked,
            ) = row.map_err(self.db("read requests"))?;
            let corrupt = |field: &str, detail: String| Error::Invalid {
                field: format!("{} request {id} {field}", self.path.display()),
                detail,
            };
            let status = match (status.as_str(), exp, revoked) {
                (_, _, Some(_)) => "revoked",
                ("approved", Some(e), _) if e <= now => "expired",
                ("pending", _, _) if now - created > REQUEST_TTL_SECS * 1_000_000 => "stale",
                (s, _, _) => s,
            }
            .to_string();
            out.push(AccessRequest {
                role: role.parse().map_err(|e| corrupt("role", e))?,
                scope: serde_json::from_str(&scope).map_err(|e| corrupt("scope", e.to_string()))?,
                requester,
                duration_secs: dur as u64,
                reason,
                created: time(created),
                status,
                approver,
                approved_at: at.map(time),
                expires: exp.map(time),
                break_glass: bg != 0,
                needs_review: nr != 0,
                id,
            });
        }
        Ok(out)
    }

    /// `principal` with its grants in force at `now` added as bindings.
    /// Expired and revoked grants count for nothing.
    pub fn with_grants(&self, mut principal: Principal, now: i64) -> Result<Principal, Error> {
        for r in self.select(
            "WHERE requester = ?1 AND status = 'approved'",
            params![principal.id],
            now,
        )? {
            if r.status != "approved" {
                continue;
            }
            let expires = r.expires.clone().unwrap_or_default();
            let source = if r.break_glass {
                Source::BreakGlass {
                    id: r.id.clone(),
                    expires,
                    reason: r.reason.clone(),
                }
            } else {
                Source::Grant {
                    id: r.id.clone(),
                    approved_by: r.approver.clone().unwrap_or_default(),
                    expires,
                    reason: r.reason.clone(),
                }
            };
            principal.bindings.push(Binding {
                role: r.role,
                scope: r.scope.clone(),
                source,
            });
        }
        Ok(principal)
    }

    /// Records that `principal` used `binding` (after an allowed decision),
    /// for "last used" in reviews.
    pub fn note_use(&self, principal: &str, binding: &Binding, now: i64) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO uses (principal, role, source, scope, first_used, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (principal, role, source) DO UPDATE SET last_used = max(last_used, ?5), scope = ?4",
                params![
                    principal,
                    binding.role.as_str(),
                    source_key(&binding.source),
                    serde_json::to_string(&binding.scope).expect("scope serializes"),
                    now
                ],
            )
            .map_err(self.db("record a use"))?;
        Ok(())
    }

    /// Who holds what: every grant in force or flagged for review, and every
    /// role seen in use (group-derived roles are known from their use; the
    /// IdP holds the membership lists).
    pub fn review(&self, now: i64) -> Result<Vec<ReviewItem>, Error> {
        let mut items = Vec::new();
        let last_use = |p: &str, role: Role, src: &str| -> Result<Option<String>, Error> {
            self.conn
                .query_row(
                    "SELECT last_used FROM uses WHERE principal = ?1 AND role = ?2 AND source = ?3",
                    params![p, role.as_str(), src],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|o| o.map(time))
                .map_err(self.db("read uses"))
        };
        for r in self.list(now)? {
            if r.status != "approved" && !(r.needs_review && r.status != "pending") {
                continue;
            }
            let src = if r.break_glass {
                format!("break-glass:{}", r.id)
            } else {
                format!("grant:{}", r.id)
            };
            items.push(ReviewItem {
                last_used: last_use(&r.requester, r.role, &src)?,
                last_review: self.last_review(&r.requester, r.role, &src)?,
                principal: r.requester,
                role: r.role,
                scope: r.scope,
                source: src,
                since: r.approved_at,
                until: r.expires,
                needs_review: r.needs_review,
            });
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT principal, role, source, scope, first_used, last_used FROM uses
                 WHERE source NOT LIKE 'grant:%' AND source NOT LIKE 'break-glass:%'
                 ORDER BY principal, role, source",
            )
            .map_err(self.db("read uses"))?;
        let rows: Vec<(String, String, String, String, i64, i64)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.db("read uses"))?;
        for (p, role, src, scope, first, last) in rows {
            let role: Role = role.parse().map_err(|e| Error::Invalid {
                field: format!("{} uses of {p}", self.path.display()),
                detail: e,
            })?;
            items.push(ReviewItem {
                last_review: self.last_review(&p, role, &src)?,
                principal: p,
                role,
                scope: serde_json::from_str(&scope).unwrap_or(Scope::All),
                source: src,
                since: Some(time(first)),
                until: None,
                last_used: Some(time(last)),
                needs_review: false,
            });
        }
        Ok(items)
    }

    fn last_review(&self, p: &str, role: Role, src: &str) -> Result<Option<String>, Error> {
        self.conn
            .query_row(
                "SELECT decision, reviewer, time FROM reviews
                 WHERE principal = ?1 AND role = ?2 AND source = ?3 ORDER BY id DESC LIMIT 1",
                params![p, role.as_str(), src],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
            .map(|o| o.map(|(d, who, t)| format!("{d} by {who} at {}", time(t))))
            .map_err(self.db("read reviews"))
    }

    /// Records a reviewer's decision on one holding as evidence. Needs
    /// `access.review`; nobody reviews their own access. Revoking a grant
    /// ends it now; revoking a group-derived role is recorded with what must
    /// be done in the IdP.
    #[allow(clippy::too_many_arguments)]
    pub fn record_review(
        &self,
        reviewer: &Principal,
        principal: &str,
        role: Role,
        source: &str,
        decision: ReviewDecision,
        note: &str,
        now: i64,
    ) -> Result<ReviewRecord, Error> {
        let d = authorize(reviewer, Action::AccessReview, &Target::platform(false));
        if !d.allowed {
            return Err(Error::Refused(d.reason));
        }
        if reviewer.id.eq_ignore_ascii_case(principal) {
            return Err(Error::Refused(format!(
                "{} cannot review their own access",
                reviewer.id
            )));
        }
        let known = self
            .review(now)?
            .into_iter()
            .any(|i| i.principal == principal && i.role == role && i.source == source);
        if !known {
            return Err(Error::NotFound(format!(
                "{principal} holds no {role} through {source} (see `careplane access review`)"
            )));
        }
        let effect = match (decision, source.split_once(':')) {
            (ReviewDecision::Keep, _) => "kept".to_string(),
            (ReviewDecision::Revoke, Some(("grant" | "break-glass", id))) => {
                self.conn
                    .execute(
                        "UPDATE requests SET revoked_at = ?2, revoked_by = ?3 WHERE id = ?1 AND revoked_at IS NULL",
                        params![id, now, reviewer.id],
                    )
                    .map_err(self.db("revoke the grant"))?;
                format!("grant {id} revoked")
            }
            (ReviewDecision::Revoke, Some(("group", g))) => {
                format!("remove {principal} from IdP group {g}: careplane does not manage the IdP's groups")
            }
            (ReviewDecision::Revoke, _) => format!("revoke {source} outside careplane"),
        };
        if let Some(("break-glass", id)) = source.split_once(':') {
            self.conn
                .execute(
                    "UPDATE requests SET needs_review = 0 WHERE id = ?1",
                    params![id],
                )
                .map_err(self.db("clear the review flag"))?;
        }
        let tag = match decision {
            ReviewDecision::Keep => "keep",
            ReviewDecision::Revoke => "revoke",
        };
        self.conn
            .execute(
                "INSERT INTO reviews (reviewer, principal, role, source, decision, note, time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    reviewer.id,
                    principal,
                    role.as_str(),
                    source,
                    tag,
                    note,
                    now
                ],
            )
            .map_err(self.db("record the review"))?;
        Ok(ReviewRecord {
            id: self.conn.last_insert_rowid(),
            reviewer: reviewer.id.clone(),
            principal: principal.into(),
            role,
            source: source.into(),
            decision,
            note: note.into(),
            time: time(now),
            effect,
        })
    }

    /// Every recorded review decision, oldest first (the evidence).
    pub fn reviews(&self) -> Result<Vec<ReviewRecord>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, reviewer, principal, role, source, decision, note, time FROM reviews ORDER BY id")
            .map_err(self.db("read reviews"))?;
        let rows: Vec<ReviewRow> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.db("read reviews"))?;
        rows.into_iter()
            .map(
                |(id, reviewer, principal, role, source, decision, note, t)| {
                    Ok(ReviewRecord {
                        id,
                        reviewer,
                        principal,
                        role: role.parse().map_err(|e| Error::Invalid {
                            field: format!("{} review {id}", self.path.display()),
                            detail: e,
                        })?,
                        source,
                        decision: if decision == "keep" {
                            ReviewDecision::Keep
                        } else {
                            ReviewDecision::Revoke
                        },
                        note,
                        time: time(t),
                        effect: String::new(),
                    })
                },
            )
            .collect()
    }

    /// Creates or replaces a break-glass account; only an argon2id hash of
    /// the password is stored. The TOTP seed stays with the caller (the
    /// vault).
    pub fn set_break_glass_account(
        &self,
        name: &str,
        password: &SecretString,
    ) -> Result<(), Error> {
        if password.expose_secret().len() < 16 {
            return Err(Error::Invalid {
                field: "password".into(),
                detail: "a break-glass password has at least 16 characters".into(),
            });
        }
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt).map_err(|e| Error::Invalid {
            field: "salt".into(),
            detail: e.to_string(),
        })?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Invalid {
            field: "salt".into(),
            detail: e.to_string(),
        })?;
        let hash = Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map_err(|e| Error::Invalid {
                field: "password".into(),
                detail: format!("hashing failed: {e}"),
            })?
            .to_string();
        self.conn
            .execute(
                "INSERT INTO break_glass_accounts (name, password_hash) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET password_hash = ?2, last_step = NULL",
                params![name, hash],
            )
            .map_err(self.db("store the break-glass account"))?;
        Ok(())
    }

    /// Break-glass sign-in: password and TOTP code of a local account and a
    /// reason give an immediate elevation (at most 1 h), flagged for review.
    /// Failures are rate-limited per source and account and say nothing
    /// about which factor was wrong.
    #[allow(clippy::too_many_arguments)]
    pub fn break_glass(
        &self,
        account: &str,
        password: &SecretString,
        code: &SecretString,
        totp_seed: &SecretSlice<u8>,
        role: Role,
        duration_secs: u64,
        reason: &str,
        source: &str,
        now: i64,
    ) -> Result<(Principal, AccessRequest), Error> {
        if reason.trim().is_empty() {
            return Err(Error::Invalid {
                field: "reason".into(),
                detail: "break-glass needs a reason".into(),
            });
        }
        if duration_secs == 0 || duration_secs > MAX_BREAK_GLASS_SECS {
            return Err(Error::Invalid {
                field: "duration".into(),
                detail: format!("{duration_secs} s: break-glass lasts at most 1 h"),
            });
        }
        self.check_rate(source, account, now)?;
        let row: Option<(String, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT password_hash, last_step FROM break_glass_accounts WHERE name = ?1",
                params![account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db("read the break-glass account"))?;
        let failed = || {
            self.fail_rate(source, account, now)?;
            Err(Error::AuthFailed(format!(
                "break-glass sign-in as {account} failed (password or code wrong, or no such account)"
            )))
        };
        let Some((hash, last_step)) = row else {
            return failed();
        };
        let parsed = PasswordHash::new(&hash).map_err(|e| Error::Invalid {
            field: format!("{} break-glass account {account}", self.path.display()),
            detail: format!("bad password hash: {e}"),
        })?;
        let password_ok = Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok();
        let unix = (now / 1_000_000).max(0) as u64;
        let step = crate::totp::matching_step(
            totp_seed.expose_secret(),
            code.expose_secret(),
            unix,
            30,
            1,
        );
        let step = match step {
            Some(s) if password_ok && last_step.is_none_or(|l| (s as i64) > l) => s,
            _ => return failed(),
        };
        let id = new_id("bg")?;
        let expires = now + duration_secs as i64 * 1_000_000;
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.db("begin"))?;
        tx.execute(
            "UPDATE break_glass_accounts SET last_step = ?2 WHERE name = ?1",
            params![account, step as i64],
        )
        .map_err(self.db("record the TOTP step"))?;
        let who = format!("break-glass:{account}");
        tx.execute(
            "INSERT INTO requests (id, requester, role, scope, duration, reason, created, status,
                                   approved_at, expires, break_glass, needs_review)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'approved', ?7, ?8, 1, 1)",
            params![
                id,
                who,
                role.as_str(),
                serde_json::to_string(&Scope::All).expect("scope serializes"),
                duration_secs as i64,
                reason,
                now,
                expires
            ],
        )
        .map_err(self.db("record the break-glass elevation"))?;
        tx.commit().map_err(self.db("commit"))?;
        let principal = Principal {
            id: who,
            kind: careplane_audit::ActorKind::User,
            auth: "break-glass".into(),
            // Password and TOTP are two factors.
            mfa: true,
            bindings: Vec::new(),
        };
        let principal = self.with_grants(principal, now)?;
        Ok((principal, self.get(&id, now)?))
    }

    /// A bearer secret for later commands under break-glass elevation
    /// `request` (`cpbg_<request>_<secret>`); only its SHA-256 is kept.
    /// The session lasts as long as the elevation: expiry or revocation of
    /// the elevation ends it.
    pub fn open_break_glass_session(&self, request: &str) -> Result<SecretString, Error> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| Error::Invalid {
            field: "session".into(),
            detail: format!("no randomness: {e}"),
        })?;
        let token = format!(
            "cpbg_{request}_{}",
            secret
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        );
        secret.iter_mut().for_each(|b| *b = 0);
        let n = self
            .conn
            .execute(
                "INSERT INTO break_glass_sessions (request, token_hash)
                 SELECT id, ?2 FROM requests WHERE id = ?1 AND break_glass = 1",
                params![request, session_hash(&token)],
            )
            .map_err(self.db("record the break-glass session"))?;
        if n != 1 {
            return Err(Error::Invalid {
                field: "request".into(),
                detail: format!("{request} is not a break-glass elevation"),
            });
        }
        Ok(SecretString::from(token))
    }

    /// The principal of a break-glass session token: the break-glass
    /// account with its elevation, while the elevation is in force.
    pub fn break_glass_session(&self, token: &SecretString, now: i64) -> Result<Principal, Error> {
        let token = token.expose_secret();
        let refused = |why: &str| Err(Error::AuthFailed(format!("the break-glass session {why}")));
        let Some(request) = token
            .strip_prefix("cpbg_")
            .and_then(|r| r.rsplit_once('_'))
            .map(|(id, _)| id)
        else {
            return refused("token is malformed");
        };
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT token_hash FROM break_glass_sessions WHERE request = ?1",
                params![request],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db("read break-glass sessions"))?;
        let presented = session_hash(token);
        // Both are hex SHA-256 digests of one length: the comparison leaks nothing useful.
        let same = stored.is_some_and(|h| {
            h.len() == presented.len()
                && h.bytes()
                    .zip(presented.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !same {
            return refused("token is not valid");
        }
        let r = self.get(request, now)?;
        if !r.break_glass || r.status != "approved" {
            return refused(&format!(
                "ended: elevation {request} is {} (careplane access list)",
                r.status
            ));
        }
        let principal = Principal {
            id: r.requester.clone(),
            kind: careplane_audit::ActorKind::User,
            auth: "break-glass".into(),
            mfa: true,
            bindings: Vec::new(),
        };
        self.with_grants(principal, now)
    }

    fn bucket(&self, key: &str, now: i64) -> Result<Bucket, Error> {
        Ok(self
            .conn
            .query_row(
                "SELECT millitokens, updated FROM buckets WHERE key = ?1",
                params![key],
                |r| {
                    Ok(Bucket {
                        millitokens: r.get::<_, i64>(0)? as u64,
                        updated: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(self.db("read rate limits"))?
            .unwrap_or_else(|| Bucket::full(Limits::default(), now)))
    }

    /// Refuses while the source's or the identity's bucket of failed
    /// authentications is empty.
    pub fn check_rate(&self, source: &str, identity: &str, now: i64) -> Result<(), Error> {
        for key in [format!("source:{source}"), format!("identity:{identity}")] {
            let mut b = self.bucket(&key, now)?;
            if let Err(secs) = b.check(Limits::default(), now) {
                return Err(Error::RateLimited {
                    key,
                    retry_after_secs: secs,
                });
            }
        }
        Ok(())
    }

    /// Takes a token from the source's and the identity's bucket.
    pub fn fail_rate(&self, source: &str, identity: &str, now: i64) -> Result<(), Error> {
        for key in [format!("source:{source}"), format!("identity:{identity}")] {
            let mut b = self.bucket(&key, now)?;
            b.fail(Limits::default(), now);
            self.conn
                .execute(
                    "INSERT INTO buckets (key, millitokens, updated) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET millitokens = ?2, updated = ?3",
                    params![key, b.millitokens as i64, b.updated],
                )
                .map_err(self.db("record a failed authentication"))?;
        }
        Ok(())
    }
}

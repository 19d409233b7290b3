//! Redis servers run as child processes with ACL-isolated tenant users.
//!
//! Layout of a server root (owned by the service user, mode 0700):
//!
//! ```text
//! <root>/redis.conf   managed config (0600)
//! <root>/users.acl    ACL users with SHA-256 password hashes only (0600)
//! <root>/data/        working dir: AOF / RDB files
//! <root>/redis.pid    written by the daemonized server
//! <root>/redis.log    server log
//! ```
//!
//! Isolation model: loopback only, the `default` user is off (so
//! unauthenticated clients get NOAUTH), each tenant user reaches only keys and
//! channels under its own prefix and only the commands of an explicit allow
//! list ([`TENANT_COMMAND_RULES`]). Redis traffic is not TLS: it never leaves
//! 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use secrecy::{ExposeSecret, SecretString};

use crate::error::{LocalError, Result};
use crate::fsutil;
use crate::system::{self, ServiceUser};

/// The ACL user careplane administers the server with (all commands).
pub const ADMIN_USER: &str = "careplane-admin";

/// The ACL user `careplane serve` reads the server's memory with: `INFO` and `PING`,
/// no key, no channel, nothing that changes the server. Careplane's, never a tenant's:
/// `INFO` describes the whole instance (every tenant's memory, clients and key counts).
pub const MONITOR_USER: &str = "careplane-monitor";

/// The monitor user's rules: nothing but reading the server's state.
pub const MONITOR_COMMAND_RULES: &str = "resetkeys resetchannels -@all +auth +hello +ping +info";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The ACL rules every tenant user gets after its key/channel patterns: an
/// explicit allow list, everything else refused.
///
/// Key patterns (`~<prefix>*`) and channel patterns (`&<prefix>*`) only
/// guard commands that *name* a key or channel. Commands that list, count,
/// watch or log the keyspace, other connections or the server are not
/// filtered by them and would hand one tenant another tenant's key names
/// (session ids are credentials), so only commands that act on named keys
/// and channels, or on the tenant's own connection, are granted. Checked on
/// Redis 7.0: SCAN, KEYS and RANDOMKEY return every tenant's keys;
/// `CLIENT TRACKING ON BCAST` pushes invalidations naming every key written
/// by anyone; SLOWLOG, MONITOR, CLIENT LIST, PUBSUB CHANNELS/NUMSUB, INFO
/// keyspace, DBSIZE and MEMORY STATS reveal other tenants' keys, channels,
/// commands or counts.
///
/// Granted (what a Redis session or cache store for Odoo and its client
/// library use; OCA's `session_redis` needs SET, EXPIRE, GET and DEL):
///
/// * connection: AUTH, HELLO, PING, ECHO, QUIT, RESET and the
///   own-connection CLIENT ID / INFO / SETNAME / GETNAME (redis-py's
///   `CLIENT SETINFO` is refused and ignored by it; the subcommand does not
///   exist before Redis 7.2, and naming it would make ACL LOAD fail there);
/// * transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH;
/// * generic, string, hash, list, set and sorted-set commands that take
///   their keys by name (each key is checked against the prefix);
/// * PUBLISH, SUBSCRIBE, PSUBSCRIBE (Redis only accepts the literal
///   `<prefix>*` pattern) and their UNSUBSCRIBEs, on the tenant's channels.
///
/// Refused, among others: every other CLIENT subcommand (LIST, KILL,
/// TRACKING, CACHING, PAUSE, NO-EVICT, UNBLOCK, REPLY, ...), MONITOR, PUBSUB,
/// KEYS, SCAN, RANDOMKEY, DBSIZE, INFO, SLOWLOG, MEMORY, LATENCY, COMMAND,
/// CONFIG, ACL, DEBUG, scripts and functions (EVAL*, SCRIPT, FUNCTION,
/// FCALL*: server-global state, and a busy script blocks every tenant),
/// WAIT, SELECT, MOVE, COPY, SWAPDB (tenant data stays in database 0, where
/// [`RedisServer::delete_keys_with_prefix`] looks), SORT (its BY/GET
/// patterns name keys), OBJECT, DUMP/RESTORE, MIGRATE, FLUSH*, persistence
/// and replication commands, sharded pub/sub, streams and blocking pops.
///
/// Only commands that exist since Redis 7.0 may be named here: an unknown
/// name makes the whole ACL file fail to load.
pub const TENANT_COMMAND_RULES: &str = concat!(
    "-@all",
    " +auth +hello +ping +echo +quit +reset",
    " +client|id +client|info +client|setname +client|getname",
    " +multi +exec +discard +watch +unwatch",
    " +del +unlink +exists +type +touch +rename +renamenx",
    " +expire +pexpire +expireat +pexpireat +expiretime +pexpiretime +ttl +pttl +persist",
    " +get +set +setex +psetex +setnx +getex +getdel +getset +mget +mset +msetnx",
    " +incr +incrby +incrbyfloat +decr +decrby +append +strlen +getrange +setrange",
    " +hget +hset +hsetnx +hmget +hmset +hdel +hexists +hgetall +hkeys +hvals +hlen",
    " +hincrby +hincrbyfloat +hstrlen +hscan",
    " +lpush +rpush +lpushx +rpushx +lpop +rpop +lrange +llen +lindex +lset +lrem +ltrim",
    " +linsert +lpos +lmove",
    " +sadd +srem +smembers +sismember +smismember +scard +spop +srandmember",
    " +sinter +sunion +sdiff +sinterstore +sunionstore +sdiffstore +smove +sscan",
    " +zadd +zrem +zrange +zrangebyscore +zrevrange +zrevrangebyscore +zrank +zrevrank",
    " +zscore +zmscore +zcard +zcount +zincrby +zremrangebyscore +zremrangebyrank",
    " +zpopmin +zpopmax +zscan",
    " +publish +subscribe +unsubscribe +psubscribe +punsubscribe",
);

/// What a Redis server keeps across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Cache: nothing persisted (`save ""`, `appendonly no`), evicts any key
    /// under memory pressure (`allkeys-lru`).
    None,
    /// Sessions: append-only file fsynced every second, evicts only keys with
    /// a TTL (`volatile-lru`) so live sessions are not silently dropped.
    AppendOnly,
}

/// One Redis server.
#[derive(Debug, Clone)]
pub struct RedisServer {
    /// Used in messages.
    pub name: String,
    /// Server root directory (see the module docs for its layout).
    pub root: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// redis-server program; a bare name is looked up in PATH (see [`find_redis_server`]).
    pub binary: PathBuf,
    /// Cache or session persistence.
    pub persistence: Persistence,
    /// `maxmemory`, e.g. "256mb".
    pub max_memory: String,
    /// Password of the `careplane-admin` ACL user.
    pub admin_password: SecretString,
    /// Password of the `careplane-monitor` ACL user ([`MONITOR_USER`]); `None`: no such
    /// user (a server made before careplane had one, until its next apply).
    pub monitor_password: Option<SecretString>,
    /// Who runs the server; `None` when careplane itself is not root.
    pub user: Option<ServiceUser>,
}

/// A tenant's ACL user.
#[derive(Debug, Clone)]
pub struct AclUser {
    /// ACL user name (letters, digits, `_ - . :`).
    pub name: String,
    /// Its password; only the SHA-256 hash is written.
    pub password: SecretString,
    /// Keys and channels it may use start with this, e.g. "stmarys:production:".
    pub key_prefix: String,
}

/// Resolves the redis-server program: an explicit path is used as is, a bare
/// name is searched in PATH and then in /usr/bin and /usr/local/bin (the
/// server's children get a fixed PATH, so the full path is what runs).
pub fn find_redis_server(binary: Option<&Path>) -> Result<PathBuf> {
    let wanted = binary.unwrap_or(Path::new("redis-server"));
    if wanted.components().count() > 1 {
        return if wanted.is_file() {
            Ok(wanted.to_path_buf())
        } else {
            Err(LocalError::state(
                wanted.display().to_string(),
                "redis-server not found there",
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.push(PathBuf::from("/usr/local/bin"));
    dirs.into_iter()
        .map(|d| d.join(wanted))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            LocalError::state(
                wanted.display().to_string(),
                "not found in PATH; install Redis (e.g. `apt-get install redis-server`)",
            )
        })
}

impl RedisServer {
    fn subject(&self) -> String {
        format!("Redis server {}", self.name)
    }

    fn owner(&self) -> Option<(u32, u32)> {
        system::switch_ids(self.user.as_ref())
    }

    /// Path of the managed redis.conf.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("redis.conf")
    }

    /// Path of the ACL file.
    pub fn acl_path(&self) -> PathBuf {
        self.root.join("users.acl")
    }

    /// Directory of AOF/RDB files.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("redis.log")
    }

    /// Writes root/redis.conf and root/users.acl (0600); the ACL file holds only SHA-256 password hashes, `default` is off, `careplane-admin` has all commands and each tenant only its prefix (see [`TENANT_COMMAND_RULES`]).
    ///
    /// Both files are rewritten atomically, so this is safe to re-run at any
    /// time. ACL changes reach a running server with [`Self::reload_acl`];
    /// config changes (port, memory, persistence) apply at the next start.
    pub fn write_config(&self, users: &[AclUser]) -> Result<()> {
        let acl = self.acl_content(users)?;
        let conf = self.config_content()?;
        system::check_runner(&self.subject(), self.user.as_ref())?;
        if let Some(parent) = self.root.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| LocalError::io("creating the platform directory", parent, e))?;
            }
        }
        system::check_traversable(&self.root, self.user.as_ref())?;
        let owner = self.owner();
        fsutil::ensure_dir(&self.root, 0o700, owner)?;
        fsutil::ensure_dir(&self.data_dir(), 0o700, owner)?;
        fsutil::write_file(&self.acl_path(), acl.as_bytes(), 0o600, owner)?;
        fsutil::write_file(&self.config_path(), conf.as_bytes(), 0o600, owner)?;
        Ok(())
    }

    fn acl_content(&self, users: &[AclUser]) -> Result<String> {
        validate_password("admin password", &self.admin_password)?;
        let mut out = String::new();
        out.push_str("user default off resetpass resetkeys resetchannels -@all\n");
        out.push_str(&format!(
            "user {ADMIN_USER} on #{} ~* &* +@all\n",
            sha256_hex(self.admin_password.expose_secret())
        ));
        if let Some(monitor) = &self.monitor_password {
            validate_password("monitor password", monitor)?;
            out.push_str(&format!(
                "user {MONITOR_USER} on #{} {MONITOR_COMMAND_RULES}\n",
                sha256_hex(monitor.expose_secret())
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for user in users {
            validate_acl_name(&user.name)?;
            validate_prefix(&user.key_prefix)?;
            validate_password(
                &format!("password of Redis user {}", user.name),
                &user.password,
            )?;
            if !seen.insert(user.name.as_str()) {
                return Err(LocalError::invalid(
                    "Redis user name",
                    &user.name,
                    "listed twice",
                ));
            }
            out.push_str(&format!(
                "user {} on #{} resetkeys ~{prefix}* resetchannels &{prefix}* {TENANT_COMMAND_RULES}\n",
                user.name,
                sha256_hex(user.password.expose_secret()),
                prefix = user.key_prefix,
            ));
        }
        Ok(out)
    }

    fn config_content(&self) -> Result<String> {
        if self.name.is_empty() || self.name.contains(['\n', '\r', '\0']) {
            return Err(LocalError::invalid(
                "Redis server name",
                &self.name,
                "must be a non-empty single line",
            ));
        }
        if self.port == 0 {
            return Err(LocalError::invalid("port", "0", "a fixed port is required"));
        }
        validate_memory(&self.max_memory)?;
        let root = system::absolute(&self.root)?;
        let quote = |p: PathBuf| -> Result<String> {
            let s = p.display().to_string();
            if s.contains(['\n', '\r', '\0']) {
                return Err(LocalError::invalid(
                    "Redis server root",
                    &s,
                    "contains a line break or NUL",
                ));
            }
            Ok(format!(
                "\"{}\"",
                s.replace('\\', "\\\\").replace('"', "\\\"")
            ))
        };
        let mut c = String::new();
        c.push_str("# Managed by careplane: rewritten on every change. Do not edit.\n");
        c.push_str("bind 127.0.0.1\n");
        c.push_str("protected-mode yes\n");
        c.push_str(&format!("port {}\n", self.port));
        c.push_str("daemonize yes\n");
        c.push_str("supervised no\n");
        c.push_str(&format!("pidfile {}\n", quote(root.join("redis.pid"))?));
        c.push_str(&format!("logfile {}\n", quote(root.join("redis.log"))?));
        c.push_str("loglevel notice\n");
        c.push_str(&format!("dir {}\n", quote(root.join("data"))?));
        c.push_str(&format!("aclfile {}\n", quote(root.join("users.acl"))?));
        c.push_str("acllog-max-len 128\n");
        c.push_str("enable-protected-configs no\n");
        c.push_str("enable-debug-command no\n");
        c.push_str("enable-module-command no\n");
        c.push_str(&format!(
            "maxmemory {}\n",
            self.max_memory.to_ascii_lowercase()
        ));
        c.push_str("save \"\"\n");
        match self.persistence {
            Persistence::None => {
                c.push_str("maxmemory-policy allkeys-lru\n");
                c.push_str("appendonly no\n");
            }
            Persistence::AppendOnly => {
                c.push_str("maxmemory-policy volatile-lru\n");
                c.push_str("appendonly yes\n");
                c.push_str("appendfsync everysec\n");
                c.push_str("appenddirname \"appendonlydir\"\n");
            }
        }
        Ok(c)
    }

    /// Starts the server if not running and waits until it answers PING as admin; returns its pid. Idempotent.
    ///
    /// Redis daemonizes itself (fork + setsid, stdio to /dev/null) in a new
    /// session, so it survives careplane's exit and terminal.
    pub fn start(&self) -> Result<u32> {
        system::check_runner(&self.subject(), self.user.as_ref())?;
        if !self.config_path().exists() {
            return Err(LocalError::state(
                self.subject(),
                "has no redis.conf; run write_config first",
            ));
        }
        let logged_before = std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0);
        if self.running_pid().is_none() {
            let binary = find_redis_server(Some(&self.binary))?;
            let mut cmd = system::command(&binary, self.user.as_ref(), &self.root, true);
            cmd.arg(self.config_path());
            system::run(
                &mut cmd,
                &format!("{}: start", self.subject()),
                &[&self.log_path()],
            )?;
        }
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        loop {
            if let Some(pid) = self.running_pid() {
                if let Ok(mut conn) = self.admin() {
                    if ::redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return Ok(pid);
                    }
                }
            } else if started.elapsed() > Duration::from_secs(5)
                || startup_failed(&system::read_from(&self.log_path(), logged_before))
            {
                // The daemon writes its pid file once it listens; none after
                // 5 s (or a bind failure in the log) means it died during
                // startup (port taken, bad config).
                return Err(LocalError::state(
                    self.subject(),
                    format!(
                        "redis-server exited during startup; log tail:\n{}",
                        system::tail_file(&self.log_path(), 20)
                    ),
                ));
            }
            if Instant::now() > deadline {
                return Err(LocalError::Timeout {
                    subject: self.subject(),
                    what: format!("PING as {ADMIN_USER} on 127.0.0.1:{}", self.port),
                    secs: START_TIMEOUT.as_secs(),
                    log_tail: system::tail_file(&self.log_path(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SHUTDOWN (NOSAVE for a cache) as admin, falling back to SIGTERM; Ok if not running; waits until the pid is gone.
    pub fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            return Ok(());
        };
        let asked = match self.admin() {
            Ok(mut conn) => {
                let mut cmd = ::redis::cmd("SHUTDOWN");
                if self.persistence == Persistence::None {
                    cmd.arg("NOSAVE");
                }
                // The server closes the connection instead of replying.
                let _ = cmd.query::<::redis::Value>(&mut conn);
                true
            }
            Err(_) => false,
        };
        if !asked {
            system::signal(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut termed = !asked;
        while system::pid_alive(pid) {
            if Instant::now() > deadline {
                return Err(LocalError::Timeout {
                    subject: self.subject(),
                    what: format!("pid {pid} to exit"),
                    secs: STOP_TIMEOUT.as_secs(),
                    log_tail: system::tail_file(&self.log_path(), 20),
                });
            }
            if !termed && Instant::now() + STOP_TIMEOUT / 2 > deadline {
                system::signal(pid, libc::SIGTERM);
                termed = true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }

    /// The server's pid from its pid file, if alive and a redis-server
    /// (guards against pid reuse after a crash).
    pub fn running_pid(&self) -> Option<u32> {
        running_pid_at(&self.root)
    }

    /// ACL LOAD as admin (after write_config) so user changes apply without restart.
    ///
    /// Redis validates the whole file first and keeps the old users if it is
    /// invalid, so a bad file never leaves the server half-updated.
    pub fn reload_acl(&self) -> Result<()> {
        let mut conn = self.admin()?;
        ::redis::cmd("ACL")
            .arg("LOAD")
            .query::<()>(&mut conn)
            .map_err(|e| {
                LocalError::redis(
                    &self.name,
                    format!("ACL LOAD of {}", self.acl_path().display()),
                    e,
                )
            })
    }

    /// Tenant ACL users the running server knows (ACL USERS without
    /// `default`, the admin and the monitor), sorted: what status reports as members.
    pub fn tenant_users(&self) -> Result<Vec<String>> {
        let mut conn = self.admin()?;
        let mut users: Vec<String> = ::redis::cmd("ACL")
            .arg("USERS")
            .query(&mut conn)
            .map_err(|e| LocalError::redis(&self.name, "ACL USERS", e))?;
        users.retain(|u| u != "default" && u != ADMIN_USER && u != MONITOR_USER);
        users.sort();
        Ok(users)
    }

    /// Deletes every key under `prefix` (a removed tenant environment's data
    /// must not linger). Returns how many keys were removed. Idempotent.
    pub fn delete_keys_with_prefix(&self, prefix: &str) -> Result<u64> {
        if prefix.is_empty() || prefix.contains(['*', '?', '[', ']', '\\']) {
            return Err(LocalError::invalid(
                "Redis key prefix",
                prefix,
                "empty or contains glob characters",
            ));
        }
        let mut conn = self.admin()?;
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            // Key names are the tenant's bytes, not necessarily UTF-8.
            let (next, keys): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
                .map_err(|e| {
                    LocalError::redis(&self.name, "SCAN for a removed tenant's keys", e)
                })?;
            if !keys.is_empty() {
                removed += ::redis::cmd("UNLINK")
                    .arg(&keys)
                    .query::<u64>(&mut conn)
                    .map_err(|e| {
                        LocalError::redis(&self.name, "UNLINK of a removed tenant's keys", e)
                    })?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// A connection authenticated as `careplane-admin`.
    pub fn admin(&self) -> Result<::redis::Connection> {
        connect_user(self.port, ADMIN_USER, &self.admin_password).map_err(|e| match e {
            LocalError::Redis { context, error, .. } => LocalError::Redis {
                server: self.name.clone(),
                context,
                error,
            },
            other => other,
        })
    }
}

/// Health check of a tenant's access: authenticates as `user` and PINGs.
pub fn check_user(port: u16, user: &str, password: &SecretString) -> Result<()> {
    let mut conn = connect_user(port, user, password)?;
    ::redis::cmd("PING")
        .query::<String>(&mut conn)
        .map_err(|e| {
            LocalError::redis(&format!("127.0.0.1:{port}"), format!("PING as {user}"), e)
        })?;
    Ok(())
}

/// Whether new server log lines show Redis gave up starting (it logs and
/// exits before writing its pid file, e.g. when the port is taken).
fn startup_failed(new_log: &str) -> bool {
    new_log.contains("Could not create server")
        || new_log.contains(", aborting")
        || new_log.contains("Fatal error")
        || new_log.contains("FATAL")
}

/// A connection to 127.0.0.1:`port` authenticated as `user` (AUTH fails → error).
pub fn connect_user(port: u16, user: &str, password: &SecretString) -> Result<::redis::Connection> {
    let server = format!("127.0.0.1:{port}");
    let info = ConnectionAddr::Tcp("127.0.0.1".into(), port)
        .into_connection_info()
        .map_err(|e| LocalError::redis(&server, "building connection info", e))?
        .set_redis_settings(
            RedisConnectionInfo::default()
                .set_username(user)
                .set_password(password.expose_secret())
                .set_skip_set_lib_name(),
        );
    let client = ::redis::Client::open(info)
        .map_err(|e| LocalError::redis(&server, "building a client", e))?;
    let conn = client
        .get_connection_with_timeout(IO_TIMEOUT)
        .map_err(|e| LocalError::redis(&server, format!("connecting as {user}"), e))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| conn.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| LocalError::redis(&server, "setting timeouts", e))?;
    Ok(conn)
}

/// The pid of the Redis server kept in `root`, when it runs.
pub fn running_pid_at(root: &Path) -> Option<u32> {
    let pid = fsutil::read_pid_file(&root.join("redis.pid"))?;
    system::pid_alive_as(pid, "redis-server").then_some(pid)
}

/// Lowercase hex SHA-256, the form Redis ACL `#<hash>` rules take.
pub fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn validate_acl_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(LocalError::invalid(
            "Redis user name",
            name,
            "must be 1 to 128 characters",
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    {
        return Err(LocalError::invalid(
            "Redis user name",
            name,
            "may only contain ASCII letters, digits, `_`, `-`, `.` and `:`",
        ));
    }
    if name == "default" || name == ADMIN_USER || name == MONITOR_USER {
        return Err(LocalError::invalid("Redis user name", name, "is reserved"));
    }
    Ok(())
}

/// A key prefix must be non-empty (an empty one would grant `~*`: every
/// tenant's keys) and free of glob metacharacters, whitespace and quotes,
/// which would widen the pattern or break the ACL line.
fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(LocalError::invalid(
            "Redis key prefix",
            prefix,
            "must not be empty (it would grant access to every key)",
        ));
    }
    if prefix.len() > 256 {
        return Err(LocalError::invalid(
            "Redis key prefix",
            prefix,
            "is longer than 256 bytes",
        ));
    }
    if prefix.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '*' | '?' | '[' | ']' | '\\' | '"' | '\'' | '^')
    }) {
        return Err(LocalError::invalid(
            "Redis key prefix",
            prefix,
            "must not contain whitespace, quotes or glob characters (* ? [ ] \\ ^)",
        ));
    }
    Ok(())
}

fn validate_memory(value: &str) -> Result<()> {
    let lower = value.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "" | "b" | "k" | "kb" | "m" | "mb" | "g" | "gb");
    if !ok {
        return Err(LocalError::invalid(
            "Redis max memory",
            value,
            "expected a number with an optional unit (b, kb, mb, gb), e.g. 256mb",
        ));
    }
    Ok(())
}

fn validate_password(what: &str, password: &SecretString) -> Result<()> {
    if password.expose_secret().is_empty() {
        return Err(LocalError::invalid(what, "<redacted>", "must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> RedisServer {
        RedisServer {
            name: "cache".into(),
            root: PathBuf::from("/srv/careplane/redis-cache"),
            port: 6390,
            binary: PathBuf::from("redis-server"),
            persistence: Persistence::None,
            max_memory: "256mb".into(),
            admin_password: SecretString::from("admin-secret-value"),
            monitor_password: Some(SecretString::from("monitor-secret-value")),
            user: None,
        }
    }

    #[test]
    fn acl_file_has_hashes_not_passwords() {
        let users = [AclUser {
            name: "stmarys-prod".into(),
            password: SecretString::from("tenant-secret-value"),
            key_prefix: "stmarys:production:".into(),
        }];
        let acl = server().acl_content(&users).unwrap();
        assert!(!acl.contains("tenant-secret-value"));
        assert!(!acl.contains("admin-secret-value"));
        assert!(!acl.contains("monitor-secret-value"));
        assert!(acl.contains(&format!(
            "user {MONITOR_USER} on #{} resetkeys resetchannels -@all +auth",
            sha256_hex("monitor-secret-value")
        )));
        assert!(acl.contains(&format!("#{}", sha256_hex("tenant-secret-value"))));
        assert!(acl.contains("~stmarys:production:* resetchannels &stmarys:production:*"));
        assert!(acl.starts_with("user default off"));
    }

    #[test]
    fn tenant_rules_are_an_explicit_allow_list() {
        let rules: Vec<&str> = TENANT_COMMAND_RULES.split(' ').collect();
        assert_eq!(rules[0], "-@all");
        for rule in &rules[1..] {
            // Only named commands: a category would grant whatever a later
            // Redis version adds to it.
            assert!(rule.starts_with('+') && !rule.contains('@'), "{rule}");
            if let Some((command, _)) = rule.split_once('|') {
                assert_eq!(command, "+client", "{rule}");
            }
        }
        for refused in [
            "+keys",
            "+scan",
            "+pubsub",
            "+monitor",
            "+client|tracking",
            "+select",
        ] {
            assert!(!rules.contains(&refused), "{refused}");
        }
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn prefixes_and_names_validated() {
        for bad in ["", "a*", "a b", "a?", "x[1]", "q\"", "a\\"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
        validate_prefix("stmarys:production:").unwrap();
        for bad in ["default", ADMIN_USER, MONITOR_USER, "a b", ""] {
            assert!(validate_acl_name(bad).is_err(), "{bad:?}");
        }
        let users = [
            AclUser {
                name: "a".into(),
                password: SecretString::from("p"),
                key_prefix: "a:".into(),
            },
            AclUser {
                name: "a".into(),
                password: SecretString::from("p"),
                key_prefix: "b:".into(),
            },
        ];
        assert!(server().acl_content(&users).is_err());
    }

    #[test]
    fn config_per_persistence() {
        let cache = server().config_content().unwrap();
        assert!(cache.contains("appendonly no"));
        assert!(cache.contains("maxmemory-policy allkeys-lru"));
        assert!(cache.contains("bind 127.0.0.1\n"));
        let mut s = server();
        s.persistence = Persistence::AppendOnly;
        let sessions = s.config_content().unwrap();
        assert!(sessions.contains("appendonly yes"));
        assert!(sessions.contains("appendfsync everysec"));
        assert!(sessions.contains("maxmemory-policy volatile-lru"));
        s.max_memory = "lots".into();
        assert!(s.config_content().is_err());
        validate_memory("1gb").unwrap();
        validate_memory("1048576").unwrap();
    }
}

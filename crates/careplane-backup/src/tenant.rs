//! One tenant database of a shared cluster back to a point in time, while the
//! cluster and every other tenant keep running (issue 16,
//! docs/design/0011-per-tenant-pitr.md).
//!
//! Two steps here, and two on the live cluster that belong to
//! `careplane-local` (its superuser work happens in the maintenance database
//! only). The whole sequence, as the engine runs it:
//!
//! ```no_run
//! # fn demo(repo: &careplane_backup::Repository,
//! #         cluster: &careplane_local::pg::PgCluster,
//! #         wal_keys_file: &str, password: careplane_backup::SecretString,
//! #         ca_cert_pem: String) -> Result<(), Box<dyn std::error::Error>> {
//! use careplane_backup::tenant::{self, LiveCluster, ScratchOptions, Target, TenantLogin};
//! use careplane_backup::Timestamp;
//! let t: Timestamp = "2026-12-02T03:15:00Z".parse()?;
//! let target = Target::Time(t);
//! // 1. Nothing on the live cluster is touched: a scratch PostgreSQL with
//! //    only this database's files (and the shared catalogs) replays WAL to T.
//! let base = tenant::choose_base_backup(repo, &target)?;
//! let scratch = tenant::recover_database(repo, &base.id, "stmarys_prod", &target, &ScratchOptions {
//!     bin_dir: cluster.bin.dir.clone(),
//!     dir: "/var/lib/careplane/restore/stmarys_prod".into(),
//!     owner: Some((cluster.user.as_ref().unwrap().uid, cluster.user.as_ref().unwrap().gid)),
//!     restore_command: format!("/usr/lib/careplane/careplane-backup-wal restore {wal_keys_file} {} %f %p", repo.url()),
//!     admin_user: careplane_local::pg::ADMIN_ROLE.into(),
//!     timeout: std::time::Duration::from_secs(3600),
//! })?;
//! // 2. A new, pristine database handed to the tenant's role (and a
//! //    pg_hba.conf line for it while the copy runs: `write_hba`).
//! let now = Timestamp::now();
//! let work = tenant::restoring_name("stmarys_prod", now);
//! cluster.create_database_for_restore(&work, "r0123abcd")?;
//! // 3. pg_dump | pg_restore, both as the tenant's role: tenant code runs
//! //    with the tenant's rights only.
//! let login = TenantLogin { role: "r0123abcd".into(), password };
//! let live = LiveCluster { host: "127.0.0.1".into(), port: cluster.port, ca_cert_pem };
//! if let Err(e) = tenant::copy_database(&scratch, &login, &live, &work) {
//!     cluster.drop_tenant_database_and_roles(&work, &[])?;
//!     return Err(e.into());
//! }
//! // 4. The swap: old → kept under another name, new → old name.
//! cluster.swap_database("stmarys_prod", &work, &tenant::pre_restore_name("stmarys_prod", now))?;
//! drop(scratch); // stops the scratch PostgreSQL and removes its directory
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{invalid, io, BackupError, Result};
use crate::pg::recorded_databases;
use crate::repo::{FileKind, Manifest};
use crate::Repository;

/// Where recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The last transaction committed at or before this time
    /// (`recovery_target_time`, inclusive). WAL with a commit after it must
    /// be archived, or recovery cannot know it has reached the target.
    Time(Timestamp),
    /// The end of the base backup itself (`recovery_target = 'immediate'`).
    EndOfBackup,
}

/// The scratch PostgreSQL that recovers the database.
#[derive(Debug, Clone)]
pub struct ScratchOptions {
    /// PostgreSQL binaries of the cluster's major version (`pg_ctl`,
    /// `pg_dump`, `pg_restore`).
    pub bin_dir: PathBuf,
    /// The scratch directory (absent or empty; removed when the
    /// [`ScratchInstance`] is dropped). Its parents must let the service
    /// user through, and `<dir>/run/.s.PGSQL.5432` must stay under 107 bytes.
    pub dir: PathBuf,
    /// The service user (uid, gid) the scratch server and the dump and
    /// restore clients run as; `Some` whenever careplane runs as root.
    pub owner: Option<(u32, u32)>,
    /// `restore_command` reading this repository's WAL, run by the scratch
    /// server as `owner` (the program and its WAL key file must be readable
    /// by that user: the live cluster's archiver setup serves).
    pub restore_command: String,
    /// The cluster's superuser: it asks the scratch server, in its
    /// `postgres` database only, whether recovery is done.
    pub admin_user: String,
    /// Bound on starting the scratch server and replaying WAL.
    pub timeout: Duration,
}

/// What [`recover_database`] did.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub database: String,
    /// The database's oid at the recovered point.
    pub oid: u32,
    /// The base backup recovery started from.
    pub backup: String,
    pub target: Target,
    /// Commit time of the last transaction replayed (any database of the
    /// cluster): the point the database is at. `None` when no transaction
    /// was replayed after the base backup.
    pub recovered_to: Option<Timestamp>,
    /// `false` when the base backup recorded no database oids (taken by an
    /// older careplane) and the whole cluster had to be restored.
    pub selective: bool,
    /// Bytes of files restored from the repository.
    pub bytes_restored: u64,
    pub files_restored: u64,
    /// Other databases' relation files, written as sparse empty placeholders
    /// of their size instead of restored.
    pub files_skipped: u64,
    /// Bytes the placeholders stand for (not read, not written).
    pub bytes_skipped: u64,
    /// Restore of the files, start, WAL replay and promotion.
    pub duration: Duration,
    /// Of which the restore of the files.
    pub files_duration: Duration,
}

/// A scratch PostgreSQL holding the recovered database, promoted, on a unix
/// socket in its own directory (no TCP). Dropping it stops the server
/// (immediately: it is thrown away) and removes the directory.
#[derive(Debug)]
pub struct ScratchInstance {
    dir: PathBuf,
    bin_dir: PathBuf,
    owner: Option<(u32, u32)>,
    admin_user: String,
    recovered: Option<Recovered>,
}

/// Port number in the socket's name; there is no TCP listener.
const SCRATCH_PORT: u16 = 5432;

impl ScratchInstance {
    /// What recovery did.
    pub fn recovered(&self) -> &Recovered {
        self.recovered.as_ref().expect("set by recover_database")
    }

    /// The socket directory clients connect through.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The port in the socket's name (`.s.PGSQL.<port>`).
    pub fn port(&self) -> u16 {
        SCRATCH_PORT
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("log/postgres.log")
    }

    fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        careplane_sys::pid_alive(pid).then_some(pid)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn command(&self, program: &str) -> Command {
        client_command(&self.bin_dir.join(program), &self.dir, self.owner)
    }

    fn admin(&self, user: &str) -> std::result::Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host_path(self.socket_dir())
            .port(SCRATCH_PORT)
            .user(user)
            .dbname("postgres")
            .application_name("careplane-restore")
            .options("-c search_path=pg_catalog -c TimeZone=UTC")
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)
    }

    /// A connection to the recovered database as `role`, a tenant's own
    /// role (it needs no password on the scratch socket): whatever the
    /// tenant planted in the database runs with the tenant's rights only.
    pub fn connect_as(&self, role: &str) -> Result<postgres::Client> {
        let database = &self.recovered().database;
        postgres::Config::new()
            .host_path(self.socket_dir())
            .port(SCRATCH_PORT)
            .user(role)
            .dbname(database)
            .application_name("careplane-verify")
            .options("-c TimeZone=UTC")
            .connect_timeout(Duration::from_secs(10))
            .connect(postgres::NoTls)
            .map_err(pg_err(
                self,
                "connecting to the recovered database as its role",
            ))
    }

    /// Stops the server and removes the directory; what dropping does, with
    /// the error reported.
    pub fn stop(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            let _ = self
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "30", "-s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while careplane_sys::pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if careplane_sys::pid_alive(pid) {
                return Err(invalid(
                    format!("scratch PostgreSQL in {}", self.dir.display()),
                    format!("postmaster (pid {pid}) did not stop within 30 s"),
                ));
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", self.dir.display()))(e)),
        }
    }
}

impl Drop for ScratchInstance {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// A command run as `owner` (when given) in `dir`, with a clean environment.
fn client_command(program: &Path, dir: &Path, owner: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("HOME", dir)
        .current_dir(dir)
        .stdin(Stdio::null());
    if let Some((uid, gid)) = owner {
        // SAFETY: drop_privileges only calls async-signal-safe functions
        // and allocates nothing, as pre_exec requires.
        unsafe {
            cmd.pre_exec(move || careplane_sys::drop_privileges(uid, gid));
        }
    }
    cmd
}

/// The latest base backup of `repo` from which `target` is reachable: for a
/// time, the last one that finished at or before it.
pub fn choose_base_backup(repo: &Repository, target: &Target) -> Result<Manifest> {
    let bases = repo
        .list_backups()?
        .into_iter()
        .filter(|m| m.labels.get("kind").map(String::as_str) == Some("base"));
    let chosen = match target {
        Target::EndOfBackup => bases.max_by_key(|m| m.finished),
        Target::Time(t) => bases
            .filter(|m| m.finished <= *t)
            .max_by_key(|m| m.finished),
    };
    chosen.ok_or_else(|| {
        invalid(
            format!("repository {}", repo.url()),
            match target {
                Target::EndOfBackup => "holds no base backup".to_string(),
                Target::Time(t) => format!("holds no base backup that finished at or before {t}"),
            },
        )
    })
}

/// The name the current database keeps after a restore replaced it:
/// `<database>_pre_restore_<UTC yyyymmddThhmmss>`, the database part cut so
/// that the whole fits PostgreSQL's 63 bytes.
pub fn pre_restore_name(database: &str, at: Timestamp) -> String {
    suffixed(database, "_pre_restore_", at)
}

/// The name a restore loads into before the swap:
/// `<database>_restoring_<UTC yyyymmddThhmmss>`.
pub fn restoring_name(database: &str, at: Timestamp) -> String {
    suffixed(database, "_restoring_", at)
}

fn suffixed(database: &str, infix: &str, at: Timestamp) -> String {
    let stamp = at.strftime("%Y%m%dt%H%M%S").to_string();
    let room = 63 - infix.len() - stamp.len();
    let mut cut = database.len().min(room);
    while !database.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{infix}{stamp}", &database[..cut])
}

fn check_database_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.contains(['\0', '\n', '\r']) {
        return Err(invalid(
            format!("database name {name:?}"),
            "must be 1 to 63 bytes without NUL or line breaks",
        ));
    }
    Ok(())
}

/// A string as a postgresql.conf value.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Restores base backup `backup` into a scratch directory, but of the
/// databases' files only those of `database` and of `postgres` (the other
/// databases' relation files become sparse placeholders of their size, as
/// pgBackRest's `--db-include` does: WAL replay finds every file it may
/// write to, and full-page images restore every page touched after the
/// backup's checkpoint); starts a scratch PostgreSQL (unix socket only, no
/// archiving, no autovacuum) replaying this repository's WAL up to `target`;
/// and waits, bounded by `opts.timeout`, until it is promoted.
///
/// Checked before anything is written: `backup` is a base backup, a target
/// time is neither before the backup finished nor in the future, and a
/// direct backup's first WAL file is in the repository. A target that the
/// archived WAL does not reach, a WAL object that fails its check, or a
/// database that did not exist at the target fail with the scratch server's
/// log tail; the live cluster is never involved.
pub fn recover_database(
    repo: &Repository,
    backup: &str,
    database: &str,
    target: &Target,
    opts: &ScratchOptions,
) -> Result<ScratchInstance> {
    let started = Instant::now();
    check_database_name(database)?;
    if opts.admin_user.is_empty() || opts.admin_user.contains(['\0', '\n', '\r', '"']) {
        return Err(invalid(
            format!("admin user {:?}", opts.admin_user),
            "must be a plain role name",
        ));
    }
    if opts.restore_command.contains(['\0', '\n', '\r']) {
        return Err(invalid("restore_command", "contains a line break or NUL"));
    }
    let manifest = repo.manifest(backup)?;
    if manifest.labels.get("kind").map(String::as_str) != Some("base") {
        return Err(invalid(
            format!("backup {backup}"),
            "is not a PostgreSQL base backup",
        ));
    }
    if let Target::Time(t) = target {
        if *t < manifest.finished {
            return Err(invalid(
                format!("target time {t}"),
                format!(
                    "is before base backup {backup} finished ({}): a base backup can only be \
                     recovered to a later point; choose an earlier backup",
                    manifest.finished
                ),
            ));
        }
        let now = Timestamp::now();
        if *t > now {
            return Err(invalid(
                format!("target time {t}"),
                format!("is in the future (now is {now})"),
            ));
        }
    }
    if manifest.labels.get("method").map(String::as_str) == Some("direct") {
        if let Some(first) = manifest.labels.get("wal.start") {
            if !repo.list_wal()?.iter().any(|w| w == first) {
                return Err(invalid(
                    format!("repository {}, WAL file {first}", repo.url()),
                    format!("is missing, and base backup {backup} starts there"),
                ));
            }
        }
    }
    let socket = opts
        .dir
        .join("run")
        .join(format!(".s.PGSQL.{SCRATCH_PORT}"));
    if socket.as_os_str().len() > 107 {
        return Err(invalid(
            format!("scratch directory {}", opts.dir.display()),
            format!(
                "its socket path {} would be over the 107-byte limit",
                socket.display()
            ),
        ));
    }
    if opts.dir.exists()
        && std::fs::read_dir(&opts.dir)
            .map_err(io(format!("reading {}", opts.dir.display())))?
            .next()
            .is_some()
    {
        return Err(invalid(
            format!("scratch directory {}", opts.dir.display()),
            "is not empty",
        ));
    }

    let index = repo.index(&manifest)?;
    if let Some(link) = index
        .files
        .iter()
        .find(|f| f.path.starts_with("pg_tblspc/") && matches!(f.kind, FileKind::Symlink { .. }))
    {
        return Err(invalid(
            format!("backup {backup}"),
            format!(
                "has a tablespace ({}); a one-database restore supports the default tablespace only",
                link.path
            ),
        ));
    }
    // Which base/<oid>/ directories are restored whole: the target's and
    // postgres' (the scratch server is asked about recovery there), plus any
    // the backup did not record (made while it ran: unknown, so kept).
    let recorded = recorded_databases(&index.metadata);
    let skipped_oids: BTreeSet<u32> = match &recorded {
        Some(dbs) => {
            if !dbs.contains_key("postgres") {
                return Err(invalid(
                    format!("backup {backup}"),
                    "records no database postgres; it is not a careplane cluster's base backup",
                ));
            }
            dbs.iter()
                .filter(|(name, _)| name.as_str() != database && name.as_str() != "postgres")
                .map(|(_, oid)| *oid)
                .collect()
        }
        None => BTreeSet::new(),
    };
    let skipped = |path: &str| -> bool {
        let Some(rest) = path.strip_prefix("base/") else {
            return false;
        };
        let Some((oid, file)) = rest.split_once('/') else {
            return false;
        };
        // Their version and relation map files are tiny and keep the
        // directories valid databases (droppable, should anyone look).
        file != "PG_VERSION"
            && file != "pg_filenode.map"
            && oid.parse::<u32>().is_ok_and(|o| skipped_oids.contains(&o))
    };

    let mut scratch = ScratchInstance {
        dir: opts.dir.clone(),
        bin_dir: opts.bin_dir.clone(),
        owner: opts.owner,
        admin_user: opts.admin_user.clone(),
        recovered: None,
    };
    let mkdir = |path: &Path, mode: u32| -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(io(format!("creating {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {}", path.display())))?;
        chown(path, opts.owner)
    };
    // 0711: the service user must reach data/ and run/ below it, nobody
    // else may list it.
    mkdir(&opts.dir, 0o711)?;
    mkdir(&scratch.dir.join("run"), 0o700)?;
    mkdir(&scratch.dir.join("log"), 0o700)?;
    let data = scratch.data_dir();
    let select = |path: &str| !skipped(path);
    // Thrown away after use, and the server runs with fsync = off. The other
    // databases' files become sparse placeholders of their size, as
    // pgBackRest's --db-include makes them: WAL replay may read their pages.
    let bytes_restored =
        repo.restore_tree_with(backup, &data, opts.owner, &select, &skipped, false)?;
    let mut files_restored = 0;
    let (mut files_skipped, mut bytes_skipped) = (0u64, 0u64);
    for f in &index.files {
        if f.kind != FileKind::File {
            continue;
        }
        if skipped(&f.path) {
            files_skipped += 1;
            bytes_skipped += f.size;
        } else {
            files_restored += 1;
        }
    }

    let files_duration = started.elapsed();
    write_config(&scratch, opts, target)?;
    start(&scratch, opts)?;
    wait_promoted(&scratch, opts)?;

    let mut c = scratch.admin(&opts.admin_user).map_err(pg_err(
        &scratch,
        "connecting to the promoted scratch server",
    ))?;
    let row = c
        .query_one(
            "SELECT (extract(epoch FROM pg_catalog.pg_last_xact_replay_timestamp()) \
                     * 1000000)::int8, \
                    (SELECT oid::int8 FROM pg_catalog.pg_database WHERE datname = $1)",
            &[&database],
        )
        .map_err(pg_err(&scratch, "reading the recovered point"))?;
    let recovered_to = row
        .get::<_, Option<i64>>(0)
        .and_then(|us| Timestamp::from_microsecond(us).ok());
    let oid = row.get::<_, Option<i64>>(1).ok_or_else(|| {
        invalid(
            format!("database {database}"),
            format!(
                "did not exist at the recovered point ({}) of base backup {backup}",
                recovered_to.map_or("the end of the backup".into(), |t| t.to_string())
            ),
        )
    })? as u32;
    if skipped_oids.contains(&oid) {
        return Err(invalid(
            format!("database {database}"),
            format!(
                "at the recovered point is the database that base backup {backup} recorded with \
                 oid {oid} under another name (renamed since): restore it under that name"
            ),
        ));
    }
    scratch.recovered = Some(Recovered {
        database: database.to_string(),
        oid,
        backup: backup.to_string(),
        target: *target,
        recovered_to,
        selective: recorded.is_some(),
        bytes_restored,
        files_restored,
        files_skipped,
        bytes_skipped,
        duration: started.elapsed(),
        files_duration,
    });
    Ok(scratch)
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

fn pg_err<'a>(
    scratch: &'a ScratchInstance,
    action: &'a str,
) -> impl FnOnce(postgres::Error) -> BackupError + 'a {
    move |source| BackupError::Postgres {
        target: format!("scratch PostgreSQL in {}", scratch.dir.display()),
        action: action.to_string(),
        source,
    }
}

fn write_file(path: &Path, content: &str, owner: Option<(u32, u32)>) -> Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .map_err(io(format!("writing {}", path.display())))?;
    chown(path, owner)
}

/// The scratch server's own configuration: the backup's postgresql.conf
/// includes the live cluster's managed settings (its port, sockets, TLS
/// files, log directory and pg_hba.conf), none of which the scratch server
/// may use, so it is replaced whole.
fn write_config(scratch: &ScratchInstance, opts: &ScratchOptions, target: &Target) -> Result<()> {
    let data = scratch.data_dir();
    let run = scratch.socket_dir().display().to_string();
    let mut conf = String::from(
        "# careplane: scratch server of a one-database restore (thrown away afterwards)\n",
    );
    for (k, v) in [
        ("listen_addresses", "''".to_string()),
        ("port", SCRATCH_PORT.to_string()),
        ("unix_socket_directories", conf_quote(&run)),
        ("unix_socket_permissions", "0700".into()),
        ("max_connections", "20".into()),
        ("shared_buffers", "'128MB'".into()),
        // Connections are refused until promotion, so nothing reads a
        // half-recovered database and the primary's max_* settings (which a
        // hot standby must match) do not matter.
        ("hot_standby", "off".into()),
        ("archive_mode", "off".into()),
        ("autovacuum", "off".into()),
        // Thrown away on any failure: nothing here needs to survive a crash.
        ("fsync", "off".into()),
        ("synchronous_commit", "off".into()),
        ("ssl", "off".into()),
        ("logging_collector", "off".into()),
        ("log_timezone", "'UTC'".into()),
        ("timezone", "'UTC'".into()),
        ("log_line_prefix", "'%m [%p] '".into()),
        ("restore_command", conf_quote(&opts.restore_command)),
        ("recovery_target_action", "'promote'".into()),
        ("recovery_target_timeline", "'latest'".into()),
    ] {
        conf.push_str(&format!("{k} = {v}\n"));
    }
    match target {
        Target::Time(t) => conf.push_str(&format!(
            "recovery_target_time = {}\nrecovery_target_inclusive = on\n",
            conf_quote(&pg_timestamp(t))
        )),
        Target::EndOfBackup => conf.push_str("recovery_target = 'immediate'\n"),
    }
    write_file(&data.join("postgresql.conf"), &conf, opts.owner)?;
    write_file(&data.join("postgresql.auto.conf"), "", opts.owner)?;
    // The private socket directory (0700, the service user's) is the only
    // way in: root and the service user reach it, tenants' processes do
    // not. `trust` because the roles' passwords are those at the target
    // time, which the tenant may have set itself; every session still runs
    // with its role's own rights.
    write_file(
        &data.join("pg_hba.conf"),
        "# careplane: scratch server, reachable only through its 0700 socket directory\n\
         local all all trust\n",
        opts.owner,
    )?;
    for stale in ["standby.signal", "postmaster.pid", "postmaster.opts"] {
        let _ = std::fs::remove_file(data.join(stale));
    }
    write_file(&data.join("recovery.signal"), "", opts.owner)
}

/// A time as PostgreSQL's timestamptz input reads it (it refuses RFC 3339's
/// `T…Z` in `recovery_target_time`), to the microsecond, in UTC.
pub fn pg_timestamp(t: &Timestamp) -> String {
    let micros = t.subsec_microsecond().rem_euclid(1_000_000);
    let whole =
        Timestamp::from_second(t.as_second() - i64::from(t.subsec_microsecond() < 0)).unwrap_or(*t);
    format!("{}.{micros:06}+00", whole.strftime("%Y-%m-%d %H:%M:%S"))
}

fn start(scratch: &ScratchInstance, opts: &ScratchOptions) -> Result<()> {
    // pg_ctl returns once recovery runs (hot_standby off: status
    // "standby") or fails; the wait for promotion is ours.
    let program = opts.bin_dir.join("pg_ctl");
    let out = scratch
        .command("pg_ctl")
        .arg("start")
        .arg("-D")
        .arg(scratch.data_dir())
        .arg("-l")
        .arg(scratch.log_path())
        .args(["-w", "-s", "-t"])
        .arg(opts.timeout.as_secs().max(1).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(io(format!("running {}", program.display())))?;
    if !out.status.success() {
        // Recovery that fails fast (a target past the archived WAL) may end
        // the server before pg_ctl sees it start: the same failure as one
        // `wait_promoted` sees later, and said the same way.
        let log = scratch.log_tail();
        if scratch.pid().is_none()
            && (log.contains("starting point-in-time recovery")
                || log.contains("starting archive recovery"))
        {
            return Err(recovery_stopped(scratch));
        }
        return Err(BackupError::Program {
            program: program.display().to_string(),
            status: out.status.to_string(),
            stderr: format!(
                "{}\nscratch server log:\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                scratch.log_tail()
            ),
        });
    }
    Ok(())
}

/// The scratch server ended during recovery.
fn recovery_stopped(scratch: &ScratchInstance) -> BackupError {
    invalid(
        format!("scratch PostgreSQL in {}", scratch.dir.display()),
        format!(
            "stopped before recovery finished (a target the archived WAL does not \
             reach, or a WAL file that failed its check); server log:\n{}",
            scratch.log_tail()
        ),
    )
}

fn wait_promoted(scratch: &ScratchInstance, opts: &ScratchOptions) -> Result<()> {
    let deadline = Instant::now() + opts.timeout;
    let what = || format!("scratch PostgreSQL in {}", scratch.dir.display());
    loop {
        let Some(_) = scratch.pid() else {
            return Err(recovery_stopped(scratch));
        };
        // Connections are refused until promotion (hot_standby off).
        if let Ok(mut c) = scratch.admin(&opts.admin_user) {
            let in_recovery = c
                .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
                .map_err(pg_err(scratch, "asking whether recovery is done"))?
                .get::<_, bool>(0);
            if !in_recovery {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(invalid(
                what(),
                format!(
                    "recovery did not finish within {} s; server log:\n{}",
                    opts.timeout.as_secs(),
                    scratch.log_tail()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tenant's own role on the live cluster, and its password (from
/// careplane's vault). Its `Debug` shows no password.
#[derive(Debug, Clone)]
pub struct TenantLogin {
    pub role: String,
    pub password: SecretString,
}

/// How the tenant's role reaches the live cluster: TCP with TLS verified
/// against careplane's CA (`verify-full`) and SCRAM with channel binding,
/// as a tenant's Odoo does.
#[derive(Debug, Clone)]
pub struct LiveCluster {
    pub host: String,
    pub port: u16,
    /// PEM of the CA that signed the cluster's server certificate.
    pub ca_cert_pem: String,
}

/// What [`copy_database`] did.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    /// Size of the dump stream (custom format, uncompressed).
    pub dump_bytes: u64,
    pub duration: Duration,
}

/// How long a copy may take before both programs are killed.
pub const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Copies the recovered database into `into` on the live cluster:
/// `pg_dump -Fc` from the scratch server piped into `pg_restore`, both
/// connected as the tenant's own role (so whatever the tenant planted, an
/// index expression, a default or a trigger calling its functions, runs with
/// the tenant's rights only) and run as the service user (the dump is
/// tenant-controlled input to `pg_restore`). `into` must exist, be empty and
/// belong to the role (careplane-local's `create_database_for_restore`), and
/// pg_hba.conf must let the role in. Ownership and privileges are not
/// restored (`--no-owner --no-privileges`: everything belongs to the role,
/// the catalog's revocations are those careplane made in the new database);
/// the first error stops the restore and `into` must then be dropped.
pub fn copy_database(
    scratch: &ScratchInstance,
    login: &TenantLogin,
    live: &LiveCluster,
    into: &str,
) -> Result<Copied> {
    copy_database_with_timeout(scratch, login, live, into, COPY_TIMEOUT)
}

/// [`copy_database`] with another bound than [`COPY_TIMEOUT`].
pub fn copy_database_with_timeout(
    scratch: &ScratchInstance,
    login: &TenantLogin,
    live: &LiveCluster,
    into: &str,
    timeout: Duration,
) -> Result<Copied> {
    copy_database_as(scratch, &login.role, login, live, into, timeout)
}

/// [`copy_database`] where the dump connects to the scratch server as
/// `dump_role` (the role owning the recovered database's objects, which
/// needs no password there) and the restore as `login`: a restore of one
/// environment of a tenant into another of its environments, whose role is
/// another. Both are the tenant's own roles; never the superuser.
pub fn copy_database_as(
    scratch: &ScratchInstance,
    dump_role: &str,
    login: &TenantLogin,
    live: &LiveCluster,
    into: &str,
    timeout: Duration,
) -> Result<Copied> {
    let started = Instant::now();
    check_database_name(into)?;
    for role in [dump_role, login.role.as_str()] {
        if role.is_empty() || role.contains(['\0', '\n', '\r']) {
            return Err(invalid(
                format!("role name {role:?}"),
                "must be a plain role name",
            ));
        }
    }
    let database = &scratch.recovered().database;
    open_catalog_for_dump(scratch, database, dump_role)?;
    let ca = scratch.dir.join("live-ca.crt");
    write_file(&ca, &live.ca_cert_pem, scratch.owner)?;
    let dump_program = scratch.bin_dir.join("pg_dump");
    let restore_program = scratch.bin_dir.join("pg_restore");
    let mut dump = scratch
        .command("pg_dump")
        .args([
            "-Fc",
            "-Z0",
            "--no-password",
            "--no-subscriptions",
            "--no-security-labels",
            "-h",
        ])
        .arg(scratch.socket_dir())
        .arg("-p")
        .arg(SCRATCH_PORT.to_string())
        .arg("-U")
        .arg(dump_role)
        .arg("-d")
        .arg(database)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("starting {}", dump_program.display())))?;
    let mut restore = match scratch
        .command("pg_restore")
        .args([
            "--no-owner",
            "--no-privileges",
            "--no-tablespaces",
            "--no-subscriptions",
            "--no-security-labels",
            "--exit-on-error",
            "--no-password",
            "-h",
            &live.host,
            "-p",
            &live.port.to_string(),
            "-U",
            &login.role,
            "-d",
            into,
        ])
        .env("PGPASSWORD", login.password.expose_secret())
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &ca)
        .env("PGCHANNELBINDING", "require")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGOPTIONS", "-c search_path=pg_catalog")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = dump.kill();
            let _ = dump.wait();
            return Err(io(format!("starting {}", restore_program.display()))(e));
        }
    };
    let mut from = dump.stdout.take().expect("piped");
    let mut to = restore.stdin.take().expect("piped");
    let pump = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = from.read(&mut buf)?;
            if k == 0 {
                return Ok(n);
            }
            to.write_all(&buf[..k])?;
            n += k as u64;
        }
    });
    let dump_err = drain(dump.stderr.take().expect("piped"));
    let restore_err = drain(restore.stderr.take().expect("piped"));
    let deadline = Instant::now() + timeout;
    let dump_status = wait_bounded(&mut dump, deadline, &mut [&mut restore]);
    let restore_status = wait_bounded(&mut restore, deadline, &mut []);
    // A pg_restore that failed closes its stdin and the pump stops with a
    // broken pipe: pg_restore's own error is the one to report.
    let pumped = pump.join().unwrap_or(Ok(0));
    let dump_err = dump_err.join().unwrap_or_default();
    let restore_err = restore_err.join().unwrap_or_default();
    let describe = |status: &std::result::Result<std::process::ExitStatus, String>| match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(s.to_string()),
        Err(why) => Some(why.clone()),
    };
    // When both fail, one usually caused the other (an empty stream, a
    // broken pipe): both messages are given.
    match (describe(&dump_status), describe(&restore_status)) {
        (None, None) => {}
        (Some(status), None) => {
            return Err(BackupError::Program {
                program: dump_program.display().to_string(),
                status,
                stderr: dump_err.trim().to_string(),
            })
        }
        (None, Some(status)) => {
            return Err(BackupError::Program {
                program: restore_program.display().to_string(),
                status,
                stderr: restore_err.trim().to_string(),
            })
        }
        (Some(d), Some(r)) => {
            return Err(BackupError::Program {
                program: format!("{} | {}", dump_program.display(), restore_program.display()),
                status: format!("{d} | {r}"),
                stderr: format!(
                    "pg_dump: {}\npg_restore: {}",
                    dump_err.trim(),
                    restore_err.trim()
                ),
            })
        }
    }
    let dump_bytes = pumped.map_err(io("copying pg_dump's output to pg_restore"))?;
    Ok(Copied {
        dump_bytes,
        duration: started.elapsed(),
    })
}

/// careplane hides the cluster's database names from tenants inside each
/// tenant database (docs/security.md), and pg_dump reads its own database's
/// row of `pg_database` (and the comments and settings beside it). In the
/// scratch copy only, the role gets those back: one GRANT on catalog
/// relations, run by the superuser with a pinned `search_path`, which
/// executes nothing a tenant wrote (PostgreSQL 15 has no login triggers and
/// tenants cannot make event triggers). The scratch copy is thrown away, and
/// nothing but pg_dump connects to it as the tenant.
fn open_catalog_for_dump(scratch: &ScratchInstance, database: &str, role: &str) -> Result<()> {
    let admin = scratch.admin_user.as_str();
    let mut c = postgres::Config::new()
        .host_path(scratch.socket_dir())
        .port(SCRATCH_PORT)
        .user(admin)
        .dbname(database)
        .application_name("careplane-restore")
        .options("-c search_path=pg_catalog")
        .connect_timeout(Duration::from_secs(10))
        .connect(postgres::NoTls)
        .map_err(pg_err(scratch, "connecting to the recovered database"))?;
    c.batch_execute(&format!(
        "GRANT SELECT ON pg_catalog.pg_database, pg_catalog.pg_shdescription, \
         pg_catalog.pg_db_role_setting TO {}",
        quote_ident(role)
    ))
    .map_err(pg_err(
        scratch,
        "letting the role read its database's catalog row",
    ))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Waits for `child` until `deadline`; then kills it and `others`.
fn wait_bounded(
    child: &mut Child,
    deadline: Instant,
    others: &mut [&mut Child],
) -> std::result::Result<std::process::ExitStatus, String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            for o in others.iter_mut() {
                let _ = o.kill();
                let _ = o.wait();
            }
            return Err("killed: it did not finish in time".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_and_work_names_fit_postgres_and_say_when() {
        let at: Timestamp = "2026-12-02T04:05:06.789Z".parse().unwrap();
        assert_eq!(
            pre_restore_name("stmarys_prod", at),
            "stmarys_prod_pre_restore_20261202t040506"
        );
        assert_eq!(
            restoring_name("stmarys_prod", at),
            "stmarys_prod_restoring_20261202t040506"
        );
        let long = "é".repeat(40);
        for name in [pre_restore_name(&long, at), restoring_name(&long, at)] {
            assert!(name.len() <= 63, "{name}");
            assert!(name.ends_with("20261202t040506"), "{name}");
        }
    }

    #[test]
    fn target_times_are_written_as_postgres_reads_them() {
        let t: Timestamp = "2026-12-02T04:05:06.000789Z".parse().unwrap();
        assert_eq!(pg_timestamp(&t), "2026-12-02 04:05:06.000789+00");
        let t: Timestamp = "1969-12-31T23:59:59.5Z".parse().unwrap();
        assert_eq!(pg_timestamp(&t), "1969-12-31 23:59:59.500000+00");
    }
}

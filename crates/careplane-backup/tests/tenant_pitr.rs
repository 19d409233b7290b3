//! One tenant database of a shared PostgreSQL 15 cluster back to a point in
//! time while the other tenants keep running (careplane_backup::tenant),
//! with real servers: WAL archived by `careplane-backup-wal`, a direct base
//! backup, tenants writing over TLS as their own roles, a scratch server
//! replaying WAL, pg_dump | pg_restore as the tenant, and the swap.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use careplane_backup::pg::{base_backup_direct, PgSource};
use careplane_backup::tenant::{
    self, LiveCluster, ScratchInstance, ScratchOptions, Target, TenantLogin,
};
use careplane_backup::{BackupMetadata, Manifest, Progress, Repository, Timestamp};
use careplane_local::pg::{DatabaseState, TenantDb, ADMIN_ROLE};
use careplane_local::testing::{expose, password, TestPg, TestPlatform};

/// A shared cluster archiving its WAL into a repository, with tenants.
struct Shared {
    platform: TestPlatform,
    pg: TestPg,
    repo: Repository,
    restore_command: String,
    owner: Option<(u32, u32)>,
    tenants: Vec<TenantDb>,
}

fn tenant_db(name: &str) -> TenantDb {
    TenantDb {
        database: name.into(),
        role: format!("r{}", &hex_of(name)),
        password: password(),
        connection_limit: Some(20),
        former_roles: Vec::new(),
    }
}

fn hex_of(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn chown_tree(path: &std::path::Path, owner: Option<(u32, u32)>) {
    let Some((uid, gid)) = owner else { return };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), owner);
        }
    }
}

impl Shared {
    /// `extra_hba`: databases (and their tenant) a restore will load into.
    fn new(tenants: &[&str], extra_hba: &[(String, usize)]) -> Shared {
        let platform = TestPlatform::new();
        let owner = platform.user.as_ref().map(|u| (u.uid, u.gid));
        let repo_dir = platform.path().join("repo");
        let url = format!("file://{}", repo_dir.display());
        let keys = common::keys();
        let repo = Repository::open(&url, &keys).unwrap();
        std::fs::create_dir_all(repo_dir.join("wal")).unwrap();
        chown_tree(&repo_dir, owner);
        let keys_file = platform.path().join("wal-keys.json");
        keys.wal_keys()
            .unwrap()
            .write_file(&keys_file, owner)
            .unwrap();
        // The archiver runs as the service user, which may not reach cargo's
        // target directory under a 0700 home: its own copy, as an install.
        let bin = {
            use std::os::unix::fs::PermissionsExt;
            let bin = platform.path().join("careplane-backup-wal");
            std::fs::copy(env!("CARGO_BIN_EXE_careplane-backup-wal"), &bin).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            bin
        };
        let mut cluster = platform.pg_cluster("shared");
        cluster.settings.insert("archive_mode".into(), "on".into());
        cluster.settings.insert(
            "archive_command".into(),
            format!(
                "{} archive {} {url} %p %f",
                bin.display(),
                keys_file.display()
            ),
        );
        let pg = platform.guard_pg(cluster);
        pg.init(&platform.tls_files()).unwrap();
        pg.start().unwrap();
        let tenants: Vec<TenantDb> = tenants.iter().map(|t| tenant_db(t)).collect();
        for t in &tenants {
            pg.ensure_tenant_database(t).unwrap();
        }
        let mut hba: Vec<(String, String)> = tenants
            .iter()
            .map(|t| (t.database.clone(), t.role.clone()))
            .collect();
        for (db, i) in extra_hba {
            hba.push((db.clone(), tenants[*i].role.clone()));
        }
        pg.write_hba(&hba).unwrap();
        let restore_command = format!(
            "{} restore {} {url} %f %p",
            bin.display(),
            keys_file.display()
        );
        Shared {
            platform,
            pg,
            repo,

            restore_command,
            owner,
            tenants,
        }
    }

    fn connect(&self, i: usize) -> postgres::Client {
        self.pg
            .tenant_connect(&self.tenants[i], &self.platform.ca.cert_pem)
            .unwrap()
    }

    fn connect_as(&self, i: usize, database: &str) -> postgres::Client {
        let mut db = self.tenants[i].clone();
        db.database = database.into();
        self.pg
            .tenant_connect(&db, &self.platform.ca.cert_pem)
            .unwrap()
    }

    fn base_backup(&self) -> Manifest {
        let src = PgSource {
            bin_dir: self.pg.bin.dir.clone(),
            host: self.pg.socket_dir().display().to_string(),
            port: self.pg.port,
            user: ADMIN_ROLE.into(),
            password: self.pg.admin_password.clone(),
        };
        base_backup_direct(
            &self.repo,
            &src,
            &self.pg.data_dir(),
            None,
            BTreeMap::new(),
            BackupMetadata::default(),
            &|_: Progress| {},
        )
        .unwrap()
    }

    /// Switches WAL and waits (bounded) until the segment is archived.
    fn archive_now(&self) {
        let mut c = self.pg.admin().unwrap();
        let want: String = c
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .unwrap()
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last: String = c
                .query_one(
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                    &[],
                )
                .unwrap()
                .get(0);
            if last >= want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "WAL {want} not archived (last {last:?}); log:\n{}",
                std::fs::read_to_string(self.pg.latest_log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn scratch(&self, name: &str) -> ScratchOptions {
        ScratchOptions {
            bin_dir: self.pg.bin.dir.clone(),
            dir: self.platform.path().join(name),
            owner: self.owner,
            restore_command: self.restore_command.clone(),
            admin_user: ADMIN_ROLE.into(),
            timeout: Duration::from_secs(120),
        }
    }

    fn login(&self, i: usize) -> TenantLogin {
        TenantLogin {
            role: self.tenants[i].role.clone(),
            password: self.tenants[i].password.clone(),
        }
    }

    fn live(&self) -> LiveCluster {
        LiveCluster {
            host: "127.0.0.1".into(),
            port: self.pg.port,
            ca_cert_pem: self.platform.ca.cert_pem.clone(),
        }
    }

    /// Steps 2 and 3 of a restore: a new database for the tenant, the copy
    /// (dropped again when the copy fails).
    fn copy_into(&self, scratch: &ScratchInstance, i: usize, into: &str) {
        self.pg
            .create_database_for_restore(into, &self.tenants[i].role)
            .unwrap();
        if let Err(e) = tenant::copy_database(scratch, &self.login(i), &self.live(), into) {
            self.pg.drop_tenant_database_and_roles(into, &[]).unwrap();
            panic!("{}", careplane_backup::error_chain(&e));
        }
    }

    fn databases(&self) -> Vec<String> {
        self.pg.databases().unwrap()
    }
}

/// Per table: rows and the md5 of the rows' text in order, as the tenant sees them.
fn checksums(c: &mut postgres::Client) -> BTreeMap<String, (i64, String)> {
    let tables = c
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 1",
            &[],
        )
        .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let name: String = t.get(0);
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') \
                     FROM {name} AS x"
                ),
                &[],
            )
            .unwrap();
        out.insert(name, (row.get(0), row.get(1)));
    }
    assert!(!out.is_empty(), "no tables to compare");
    out
}

fn server_now(c: &mut postgres::Client) -> Timestamp {
    let us: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
            &[],
        )
        .unwrap()
        .get(0);
    Timestamp::from_microsecond(us).unwrap()
}

const SCHEMA: &str = "CREATE TABLE public.visits (id serial PRIMARY KEY, patient text NOT NULL, \
                      n int NOT NULL, note text); \
                      INSERT INTO public.visits (patient, n, note) \
                      SELECT 'p' || i, i, md5(i::text) FROM generate_series(1, 300) i;";

/// A tenant writing as its own role until stopped: inserts, updates and
/// deletes in small transactions; it can be paused between transactions.
struct Writer {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Writer {
    fn start(mut c: postgres::Client, seed: i32) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let (s, p, pd, n) = (stop.clone(), pause.clone(), paused.clone(), commits.clone());
        let handle = std::thread::spawn(move || -> Result<(), String> {
            let mut i = seed;
            while !s.load(Ordering::SeqCst) {
                if p.load(Ordering::SeqCst) {
                    pd.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                pd.store(false, Ordering::SeqCst);
                i += 1;
                c.batch_execute(&format!(
                    "BEGIN; \
                     INSERT INTO public.visits (patient, n, note) VALUES ('w{i}', {i}, md5('{i}')); \
                     UPDATE public.visits SET n = n + 1 WHERE id = {}; \
                     DELETE FROM public.visits WHERE id = {}; \
                     COMMIT;",
                    i % 250 + 1,
                    i % 97 + 1000
                ))
                .map_err(|e| format!("writer {seed}: {e}"))?;
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        Writer {
            stop,
            pause,
            paused,
            commits,
            handle: Some(handle),
        }
    }

    fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.paused.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "writer did not pause");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap().unwrap();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Three tenants on one cluster under write load. Tenant 0 goes back to T
/// (its rows equal those it had at T; the database it had is kept under
/// another name, its sessions were ended); tenant 1, paused across the
/// restore, has the same rows after it and its connection opened before
/// keeps working; tenant 2 keeps writing throughout. Then tenant 2 is
/// restored to the end of the base backup under another name (`--as`),
/// beside its live database, which is untouched.
#[test]
fn one_tenant_goes_back_to_t_while_the_others_keep_running() {
    let now = Timestamp::now();
    let names = ["stmarys", "stjude", "stluke"];
    let work = tenant::restoring_name(names[0], now);
    let copy = "stluke_asof_backup".to_string();
    let sh = Shared::new(&names, &[(work.clone(), 0), (copy.clone(), 2)]);
    for i in 0..3 {
        sh.connect(i).batch_execute(SCHEMA).unwrap();
    }
    let mut c2 = sh.connect(2);
    let at_backup_2 = checksums(&mut c2);
    let base = sh.base_backup();

    let writers: Vec<Writer> = (0..3)
        .map(|i| Writer::start(sh.connect(i), 10_000 * (i as i32 + 1)))
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // T: tenant 0 is between transactions, so its rows at T are these.
    writers[0].pause();
    let mut c0 = sh.connect(0);
    let at_t = checksums(&mut c0);
    let t = server_now(&mut c0);
    std::thread::sleep(Duration::from_millis(200));
    writers[0].resume();
    std::thread::sleep(Duration::from_millis(700));
    // The others committed after T, so recovery sees the target passed.
    sh.archive_now();
    let mut writers = writers.into_iter();
    let (w0, w1, w2) = (
        writers.next().unwrap(),
        writers.next().unwrap(),
        writers.next().unwrap(),
    );
    w0.finish();
    assert_ne!(checksums(&mut c0), at_t, "tenant 0 changed after T");
    w1.pause();
    let mut c1 = sh.connect(1);
    let before_1 = checksums(&mut c1);
    let commits_2 = w2.commits();

    assert_eq!(
        tenant::choose_base_backup(&sh.repo, &Target::Time(t))
            .unwrap()
            .id,
        base.id
    );
    let scratch = tenant::recover_database(
        &sh.repo,
        &base.id,
        names[0],
        &Target::Time(t),
        &sh.scratch("scratch0"),
    )
    .unwrap_or_else(|e| panic!("{}", careplane_backup::error_chain(&e)));
    let r = scratch.recovered().clone();
    assert!(r.selective, "{r:?}");
    assert!(
        r.files_skipped > 100,
        "other databases' files are not restored: {r:?}"
    );
    let recovered_to = r.recovered_to.expect("transactions were replayed");
    assert!(
        recovered_to <= t && recovered_to > base.finished,
        "{recovered_to} vs T {t}"
    );
    sh.copy_into(&scratch, 0, &work);
    assert!(sh.databases().contains(&names[0].to_string()));
    let keep = tenant::pre_restore_name(names[0], now);
    sh.pg.swap_database(names[0], &work, &keep).unwrap();
    scratch.stop().unwrap();
    assert!(!sh.platform.path().join("scratch0").exists());

    // Tenant 0: the rows it had at T, under its own name and role.
    let mut restored = sh.connect(0);
    assert_eq!(checksums(&mut restored), at_t);
    assert!(matches!(
        sh.pg.database_state(names[0]).unwrap(),
        DatabaseState::Open { owner } if owner == sh.tenants[0].role
    ));
    // Made like every tenant database: the catalog's names are hidden.
    assert!(restored
        .query("SELECT datname FROM pg_database", &[])
        .is_err());
    // Its session opened before the restore was ended.
    assert!(c0.simple_query("SELECT 1").is_err());
    // The database it had is kept, closed, with the rows written after T.
    assert!(matches!(
        sh.pg.database_state(&keep).unwrap(),
        DatabaseState::Open { owner } if owner == sh.tenants[0].role
    ));
    assert!(sh.databases().contains(&keep));

    // Tenant 1: same rows, its old connection works, it writes on.
    assert_eq!(checksums(&mut c1), before_1);
    w1.resume();
    c1.batch_execute("INSERT INTO public.visits (patient, n) VALUES ('after', 1)")
        .unwrap();
    w1.finish();
    // Tenant 2 wrote throughout.
    assert!(w2.commits() > commits_2, "tenant 2's writes stopped");

    // Tenant 2 as of its base backup, under another name (`--as`): no swap.
    let live_before: i64 = c2
        .query_one("SELECT count(*) FROM public.visits", &[])
        .unwrap()
        .get(0);
    let scratch = tenant::recover_database(
        &sh.repo,
        &base.id,
        names[2],
        &Target::EndOfBackup,
        &sh.scratch("scratch2"),
    )
    .unwrap_or_else(|e| panic!("{}", careplane_backup::error_chain(&e)));
    sh.copy_into(&scratch, 2, &copy);
    drop(scratch);
    assert_eq!(checksums(&mut sh.connect_as(2, &copy)), at_backup_2);
    w2.finish();
    let live_after: i64 = c2
        .query_one("SELECT count(*) FROM public.visits", &[])
        .unwrap()
        .get(0);
    assert!(
        live_after > live_before,
        "tenant 2's live database moved on"
    );
    assert_ne!(checksums(&mut c2), at_backup_2);
}

/// The tenant plants an index expression and a trigger calling its own
/// function, which tries to make its role a superuser (and records who ran
/// it). The restore runs it (building the index) as the tenant: the role
/// stays a plain one. The same dump restored by a superuser with
/// `--no-owner`, the control, does escalate: the trap is real.
#[test]
fn a_restore_runs_the_tenants_code_as_the_tenant_only() {
    let now = Timestamp::now();
    let work = tenant::restoring_name("trapped", now);
    let sh = Shared::new(&["trapped"], &[(work.clone(), 0)]);
    let role = sh.tenants[0].role.clone();
    let mut c = sh.connect(0);
    c.batch_execute(&format!(
        "CREATE TABLE public.trap_log (who text, session text); \
         CREATE FUNCTION public.escalate() RETURNS int LANGUAGE plpgsql AS $$ \
         BEGIN \
           INSERT INTO public.trap_log VALUES (current_user::text, session_user::text); \
           BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; \
           EXCEPTION WHEN insufficient_privilege THEN NULL; END; \
           RETURN 1; \
         END $$; \
         CREATE FUNCTION public.trap(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ \
         BEGIN PERFORM public.escalate(); RETURN x; END $$; \
         CREATE FUNCTION public.trap_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM public.escalate(); RETURN NEW; END $$; \
         {SCHEMA} \
         CREATE INDEX visits_trap ON public.visits (public.trap(n)); \
         CREATE TRIGGER visits_trap BEFORE INSERT ON public.visits \
           FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();"
    ))
    .unwrap();
    let planted: i64 = c
        .query_one("SELECT count(*) FROM public.trap_log", &[])
        .unwrap()
        .get(0);
    assert!(planted >= 300, "the trap ran when the index was built");
    let base = sh.base_backup();
    c.batch_execute("INSERT INTO public.visits (patient, n) VALUES ('x', 1)")
        .unwrap();
    let t = server_now(&mut c);
    std::thread::sleep(Duration::from_millis(100));
    c.batch_execute("INSERT INTO public.visits (patient, n) VALUES ('y', 2)")
        .unwrap();
    sh.archive_now();

    let scratch = tenant::recover_database(
        &sh.repo,
        &base.id,
        "trapped",
        &Target::Time(t),
        &sh.scratch("scratch"),
    )
    .unwrap_or_else(|e| panic!("{}", careplane_backup::error_chain(&e)));
    sh.copy_into(&scratch, 0, &work);
    let superuser = |role: &str| -> bool {
        sh.pg
            .admin()
            .unwrap()
            .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
            .unwrap()
            .get(0)
    };
    assert!(!superuser(&role), "the restore made the tenant a superuser");
    let mut w = sh.connect_as(0, &work);
    let runs = w
        .query(
            "SELECT who, session, count(*) FROM public.trap_log GROUP BY 1, 2",
            &[],
        )
        .unwrap();
    let total: i64 = runs.iter().map(|r| r.get::<_, i64>(2)).sum();
    assert!(
        total > planted + 300,
        "the index build during the restore ran the trap ({total} runs logged)"
    );
    for r in &runs {
        assert_eq!(r.get::<_, String>(0), role, "trap ran as another role");
        assert_eq!(r.get::<_, String>(1), role, "trap ran in another session");
    }

    // The control: the same content restored by a superuser escalates.
    let control = "trap_control";
    sh.pg
        .admin()
        .unwrap()
        .batch_execute(&format!("CREATE DATABASE {control}"))
        .unwrap();
    let bin = &sh.pg.bin.dir;
    let dump = std::process::Command::new(bin.join("pg_dump"))
        .args(["-Fc", "--no-subscriptions", "--no-security-labels", "-h"])
        .arg(scratch.socket_dir())
        .args([
            "-p",
            &scratch.port().to_string(),
            "-U",
            &role,
            "-d",
            "trapped",
        ])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{dump:?}");
    let mut restore = std::process::Command::new(bin.join("pg_restore"))
        .args(["--no-owner", "-h"])
        .arg(sh.pg.socket_dir())
        .args([
            "-p",
            &sh.pg.port.to_string(),
            "-U",
            ADMIN_ROLE,
            "-d",
            control,
        ])
        .env("PGPASSWORD", expose(&sh.pg.admin_password))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    restore
        .stdin
        .take()
        .unwrap()
        .write_all(&dump.stdout)
        .unwrap();
    restore.wait().unwrap();
    assert!(
        superuser(&role),
        "control: a superuser restore runs the trap as superuser"
    );
}

/// A target before the base backup finished, a target past the archived
/// WAL and a WAL object that fails its check all fail with a clear error;
/// the live database is untouched, no database is made and the scratch
/// directory is gone. Secrets appear in no error.
#[test]
fn a_failed_recovery_leaves_the_live_database_as_it_was() {
    let work = tenant::restoring_name("faulty", Timestamp::now());
    let sh = Shared::new(&["faulty", "other"], &[(work.clone(), 0)]);
    let mut c = sh.connect(0);
    c.batch_execute(SCHEMA).unwrap();
    let early = server_now(&mut c);
    std::thread::sleep(Duration::from_millis(50));
    let base = sh.base_backup();
    c.batch_execute("INSERT INTO public.visits (patient, n) VALUES ('a', 1)")
        .unwrap();
    sh.archive_now();
    let t = server_now(&mut c);
    std::thread::sleep(Duration::from_millis(100));
    let mut other = sh.connect(1);
    other.batch_execute(SCHEMA).unwrap();
    let before = checksums(&mut c);
    let dbs = sh.databases();
    let check_untouched = |what: &str| {
        assert_eq!(checksums(&mut sh.connect(0)), before, "{what}");
        assert_eq!(sh.databases(), dbs, "{what}");
        assert!(
            !sh.platform.path().join("scratch").exists(),
            "{what}: scratch directory left"
        );
    };
    let fail = |target: Target| -> String {
        let e = tenant::recover_database(
            &sh.repo,
            &base.id,
            "faulty",
            &target,
            &sh.scratch("scratch"),
        )
        .expect_err("recovery must fail");
        let msg = careplane_backup::error_chain(&e);
        for t in &sh.tenants {
            assert!(!msg.contains(expose(&t.password)), "secret in {msg}");
        }
        assert!(!msg.contains(expose(&sh.pg.admin_password)));
        msg
    };

    let msg = fail(Target::Time(early));
    assert!(msg.contains("is before base backup"), "{msg}");
    check_untouched("target before the backup");

    // Nothing after T is archived: the WAL does not reach the target.
    let later = server_now(&mut c);
    let msg = fail(Target::Time(later));
    assert!(msg.contains("stopped before recovery finished"), "{msg}");
    assert!(
        msg.contains("recovery ended before configured recovery target was reached"),
        "{msg}"
    );
    check_untouched("target past the archived WAL");

    // A WAL object between the backup and T changed in the repository.
    let wal_dir = sh.platform.path().join("repo/wal");
    let first = base.labels["wal.start"].clone();
    let path = wal_dir.join(&first);
    let original = std::fs::read(&path).unwrap();
    let mut bytes = original.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let msg = fail(Target::Time(t));
    assert!(msg.contains(&first), "names the WAL file: {msg}");
    check_untouched("corrupt WAL object");

    let login = sh.login(0);
    assert!(!format!("{login:?}").contains(expose(&login.password)));

    // Recovery works once the object is back; a copy that fails (a wrong
    // password) leaves only the new database to drop, and a swap refused
    // before its renames changes nothing.
    std::fs::write(&path, original).unwrap();
    // The other tenant committed after T: archived, T is reachable.
    sh.archive_now();
    let scratch = tenant::recover_database(
        &sh.repo,
        &base.id,
        "faulty",
        &Target::Time(t),
        &sh.scratch("scratch"),
    )
    .unwrap_or_else(|e| panic!("{}", careplane_backup::error_chain(&e)));
    sh.pg
        .create_database_for_restore(&work, &sh.tenants[0].role)
        .unwrap();
    let wrong = TenantLogin {
        role: login.role.clone(),
        password: password(),
    };
    let e = tenant::copy_database(&scratch, &wrong, &sh.live(), &work)
        .expect_err("a wrong password must fail");
    let msg = careplane_backup::error_chain(&e);
    assert!(msg.contains("pg_restore"), "{msg}");
    assert!(!msg.contains(expose(&wrong.password)), "secret in {msg}");
    sh.pg.drop_tenant_database_and_roles(&work, &[]).unwrap();
    let refused = sh
        .pg
        .swap_database("faulty", "no_such_database", "faulty_kept")
        .expect_err("a swap with nothing to swap in must be refused");
    assert!(
        refused.to_string().contains("no_such_database"),
        "{refused}"
    );
    drop(scratch);
    check_untouched("failed copy and refused swap");
    sh.connect(0).simple_query("SELECT 1").unwrap();
}

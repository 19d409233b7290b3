//! Benchmark: one tenant database of a shared cluster back to a point in
//! time, side by side in one run on one cluster (docs/design/0011):
//!
//! - a PostgreSQL 15 cluster with 10 tenant databases, each filled by
//!   `pgbench -i -s SCALE` as its own role (BENCH_TENANT_SCALE, default 5:
//!   about 75 MB each); its WAL archived to careplane's repository and to
//!   pgBackRest's (one `archive_command` running both);
//! - a careplane direct base backup and a pgBackRest full backup, then
//!   `pgbench` on tenant 3 for a few seconds with T in the middle;
//! - careplane: `tenant::recover_database` (only tenant 3's files, WAL
//!   replay to T), `create_database_for_restore`, `copy_database` (pg_dump |
//!   pg_restore as the tenant), `swap_database`;
//! - pgBackRest by hand: `restore --type=time --target=T` of the whole
//!   cluster into a scratch path, start it on its own socket, pg_dump the one
//!   database and pg_restore it into a new database of the live cluster;
//! - the floor: a plain `pg_restore` of tenant 3's dump (the same data) into
//!   a new database.
//!
//! Prints each time and the ratios. Run: `scripts/bench-tenant-pitr` or
//! `cargo bench -p careplane-backup --bench tenant_pitr`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use careplane_backup::pg::{base_backup_direct, PgSource};
use careplane_backup::tenant::{self, LiveCluster, ScratchOptions, Target, TenantLogin};
use careplane_backup::{
    generate_identity, generate_secret, BackupMetadata, ExposeSecret, Progress, RepoKeys,
    Repository, Timestamp,
};
use careplane_local::pg::{TenantDb, ADMIN_ROLE};
use careplane_local::testing::{password, TestPlatform};

const TENANTS: usize = 10;
const VICTIM: usize = 3;

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command as the service user (when given), panicking with its
/// output on failure; returns the elapsed time.
fn run_as(user: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Duration {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "env"]);
            for (k, v) in env {
                c.arg(format!("{k}={v}"));
            }
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c.envs(env.iter().copied());
            c
        }
    };
    let t = Instant::now();
    let out = cmd.output().expect("running a command");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn sh(cmd: &str, env: &[(&str, &str)]) -> Duration {
    run_as(None, env, &["sh", "-c", cmd])
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                n += dir_size(&e.path());
            } else {
                n += m.len();
            }
        }
    }
    n
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn wait_archived(c: &mut postgres::Client) {
    let want: String = c
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(300);
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
        assert!(Instant::now() < deadline, "WAL {want} not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale: u32 = std::env::var("BENCH_TENANT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!(
        "# One tenant's PITR on a shared cluster: {TENANTS} databases, pgbench scale {scale} each"
    );
    if !have("pgbackrest") || !have("pgbench") {
        println!("skipped: pgbackrest or pgbench not installed (apt-get install pgbackrest)");
        return;
    }
    let platform = TestPlatform::new();
    let work = platform.path().join("w");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711)).unwrap();
    let user = platform.user.as_ref().map(|u| u.name.clone());
    let owner = platform.user.as_ref().map(|u| (u.uid, u.gid));
    let chown = |p: &Path| {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
        }
    };

    // careplane's repository and the archiver's copy of its program.
    let (identity, recipient) = generate_identity();
    let keys = RepoKeys {
        secret: generate_secret(),
        recipients: vec![recipient],
        identities: vec![identity],
    };
    let repo_dir = work.join("cp-repo");
    let url = format!("file://{}", repo_dir.display());
    let repo = Repository::open(&url, &keys).unwrap();
    std::fs::create_dir_all(repo_dir.join("wal")).unwrap();
    sh(
        &format!(
            "chown -R {} {}",
            user.as_deref().unwrap_or("root"),
            repo_dir.display()
        ),
        &[],
    );
    let keys_file = work.join("wal-keys.json");
    keys.wal_keys()
        .unwrap()
        .write_file(&keys_file, owner)
        .unwrap();
    let wal_bin = work.join("careplane-backup-wal");
    let built = env!("CARGO_BIN_EXE_careplane-backup-wal");
    std::fs::copy(built, &wal_bin).unwrap_or_else(|e| panic!("copying {built}: {e}"));
    std::fs::set_permissions(&wal_bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    // pgBackRest's repository.
    let conf = work.join("pgbackrest.conf");
    for d in ["pgbr-repo", "pgbr-log", "pgbr-lock", "pgbr-spool"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
        chown(&work.join(d));
    }
    let mut cluster = platform.pg_cluster("bench");
    cluster.settings.insert("archive_mode".into(), "on".into());
    cluster.settings.insert(
        "archive_command".into(),
        format!(
            "{} archive {} {url} %p %f && pgbackrest --config={} --stanza=bench archive-push %p",
            wal_bin.display(),
            keys_file.display(),
            conf.display()
        ),
    );
    cluster
        .settings
        .insert("shared_buffers".into(), "128MB".into());
    cluster.settings.insert("max_wal_size".into(), "2GB".into());
    cluster
        .settings
        .insert("max_connections".into(), "200".into());
    let pg = platform.guard_pg(cluster);
    pg.init(&platform.tls_files()).unwrap();
    let cipher = password();
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={}\n\
             compress-type=zst\ncompress-level=3\nprocess-max=2\nlog-path={}\nlock-path={}\n\
             spool-path={}\nlog-level-console=warn\nlog-level-file=info\nstart-fast=y\n\n\
             [bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user={ADMIN_ROLE}\n",
            work.join("pgbr-repo").display(),
            cipher.expose_secret(),
            work.join("pgbr-log").display(),
            work.join("pgbr-lock").display(),
            work.join("pgbr-spool").display(),
            pg.data_dir().display(),
            pg.port,
            pg.socket_dir().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown(&conf);
    pg.start().unwrap();

    let tenants: Vec<TenantDb> = (0..TENANTS)
        .map(|i| TenantDb {
            database: format!("tenant{i}"),
            role: format!("rbench{i}"),
            password: password(),
            connection_limit: Some(10),
            former_roles: Vec::new(),
        })
        .collect();
    let now = Timestamp::now();
    let victim = &tenants[VICTIM];
    let work_db = tenant::restoring_name(&victim.database, now);
    let mut hba: Vec<(String, String)> = tenants
        .iter()
        .map(|t| (t.database.clone(), t.role.clone()))
        .collect();
    for extra in [work_db.as_str(), "pgbr_restored", "plain_restored"] {
        hba.push((extra.to_string(), victim.role.clone()));
    }
    for t in &tenants {
        pg.ensure_tenant_database(t).unwrap();
    }
    pg.write_hba(&hba).unwrap();
    let ca_file = work.join("ca.crt");
    std::fs::write(&ca_file, &platform.ca.cert_pem).unwrap();
    let ca = ca_file.display().to_string();
    let port = pg.port.to_string();
    let tenant_env = |t: &TenantDb| -> Vec<(String, String)> {
        vec![
            ("PGPASSWORD".into(), t.password.expose_secret().to_string()),
            ("PGSSLMODE".into(), "verify-full".into()),
            ("PGSSLROOTCERT".into(), ca.clone()),
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), port.clone()),
            ("PGUSER".into(), t.role.clone()),
        ]
    };
    let t0 = Instant::now();
    let pgbench = pg.bin.tool("pgbench");
    for t in &tenants {
        let env = tenant_env(t);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_as(
            None,
            &env,
            &[
                pgbench.to_str().unwrap(),
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                &t.database,
            ],
        );
    }
    let mut admin = pg.admin().unwrap();
    admin.batch_execute("CHECKPOINT").unwrap();
    let victim_bytes: i64 = admin
        .query_one("SELECT pg_database_size($1)", &[&victim.database])
        .unwrap()
        .get(0);
    println!(
        "cluster: {:.0} MB data directory, tenant {VICTIM}'s database {:.0} MB (pgbench -i of all in {:.0} s)",
        dir_size(&pg.data_dir()) as f64 / 1e6,
        victim_bytes as f64 / 1e6,
        secs(t0.elapsed())
    );

    // Base backups.
    let pgbr_args = |args: &[&str]| -> Vec<String> {
        let mut all = vec![
            "pgbackrest".to_string(),
            format!("--config={}", conf.display()),
            "--stanza=bench".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        all
    };
    let admin_pw = pg.admin_password.expose_secret().to_string();
    let admin_env = [("PGPASSWORD", admin_pw.as_str())];
    let pgbr = |args: &[&str]| {
        let all = pgbr_args(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_as(user.as_deref(), &admin_env, &all)
    };
    pgbr(&["stanza-create"]);
    let src = PgSource {
        bin_dir: pg.bin.dir.clone(),
        host: pg.socket_dir().display().to_string(),
        port: pg.port,
        user: ADMIN_ROLE.into(),
        password: pg.admin_password.clone(),
    };
    let t0 = Instant::now();
    let base = base_backup_direct(
        &repo,
        &src,
        &pg.data_dir(),
        None,
        BTreeMap::new(),
        BackupMetadata::default(),
        &|_: Progress| {},
    )
    .unwrap();
    println!("careplane direct base backup: {:.2} s", secs(t0.elapsed()));
    let d = pgbr(&["backup", "--type=full"]);
    println!("pgBackRest full backup: {:.2} s", secs(d));

    // Load on the victim with T in the middle, and on a neighbour.
    let victim_env = tenant_env(victim);
    let venv: Vec<(&str, &str)> = victim_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let bench = |env: &[(&str, &str)], db: &str| {
        run_as(
            None,
            env,
            &[pgbench.to_str().unwrap(), "-n", "-c", "2", "-T", "4", db],
        );
    };
    bench(&venv, &victim.database);
    std::thread::sleep(Duration::from_millis(200));
    let t_us: i64 = admin
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
            &[],
        )
        .unwrap()
        .get(0);
    let t = Timestamp::from_microsecond(t_us).unwrap();
    let t_text: String = admin
        .query_one(
            "SELECT to_char(to_timestamp($1::float8 / 1000000) AT TIME ZONE 'UTC', \
             'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
            &[&(t_us as f64)],
        )
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(200));
    bench(&venv, &victim.database);
    wait_archived(&mut admin);
    println!("T = {t}; WAL archived to both repositories");

    // careplane: the one database, to T.
    let login = TenantLogin {
        role: victim.role.clone(),
        password: victim.password.clone(),
    };
    let live = LiveCluster {
        host: "127.0.0.1".into(),
        port: pg.port,
        ca_cert_pem: platform.ca.cert_pem.clone(),
    };
    let t0 = Instant::now();
    let scratch = tenant::recover_database(
        &repo,
        &base.id,
        &victim.database,
        &Target::Time(t),
        &ScratchOptions {
            bin_dir: pg.bin.dir.clone(),
            dir: work.join("cp-scratch"),
            owner,
            restore_command: format!(
                "{} restore {} {url} %f %p",
                wal_bin.display(),
                keys_file.display()
            ),
            admin_user: ADMIN_ROLE.into(),
            timeout: Duration::from_secs(1800),
        },
    )
    .unwrap_or_else(|e| panic!("{}", careplane_backup::error_chain(&e)));
    let recovered = scratch.recovered().clone();
    let cp_recover = t0.elapsed();
    let t1 = Instant::now();
    pg.create_database_for_restore(&work_db, &victim.role)
        .unwrap();
    let cp_create = t1.elapsed();
    let copied = tenant::copy_database(&scratch, &login, &live, &work_db)
        .unwrap_or_else(|e| panic!("{}", careplane_backup::error_chain(&e)));
    let t1 = Instant::now();
    pg.swap_database(
        &victim.database,
        &work_db,
        &tenant::pre_restore_name(&victim.database, now),
    )
    .unwrap();
    let cp_swap = t1.elapsed();
    let t1 = Instant::now();
    drop(scratch);
    let cp_drop = t1.elapsed();
    let cp_total = t0.elapsed();
    println!(
        "careplane: {:.2} s ({:.2} s restore + replay, of which {:.2} s the files: {:.0} MB restored, {} other files as sparse placeholders for {:.0} MB; {:.2} s dump | restore of {:.0} MB; {:.2} s new database, {:.2} s swap, {:.2} s scratch stopped and removed; recovered to {:?})",
        secs(cp_total),
        secs(cp_recover),
        secs(recovered.files_duration),
        recovered.bytes_restored as f64 / 1e6,
        recovered.files_skipped,
        recovered.bytes_skipped as f64 / 1e6,
        secs(copied.duration),
        copied.dump_bytes as f64 / 1e6,
        secs(cp_create),
        secs(cp_swap),
        secs(cp_drop),
        recovered.recovered_to,
    );

    // pgBackRest by hand: the whole cluster to T in a scratch path.
    let scratch = work.join("pgbr-scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(&scratch);
    let run = work.join("pgbr-run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(&run);
    let t0 = Instant::now();
    pgbr(&[
        "restore",
        "--type=time",
        &format!("--target={t_text}"),
        "--target-action=promote",
        &format!("--pg1-path={}", scratch.display()),
    ]);
    let pgbr_restore = t0.elapsed();
    // Its own socket, no TCP, no archiving: postgresql.auto.conf comes last.
    let auto = scratch.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap();
    text.push_str(&format!(
        "listen_addresses = ''\nunix_socket_directories = '{}'\narchive_mode = off\n\
         logging_collector = off\nssl = off\nport = 5432\n",
        run.display()
    ));
    std::fs::write(&auto, text).unwrap();
    let pg_ctl = pg.bin.tool("pg_ctl");
    let log = work.join("pgbr-scratch.log");
    std::fs::write(&log, "").unwrap();
    chown(&log);
    run_as(
        user.as_deref(),
        &[],
        &[
            pg_ctl.to_str().unwrap(),
            "start",
            "-D",
            scratch.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "1800",
            "-s",
        ],
    );
    let mut sc = postgres::Config::new()
        .host_path(&run)
        .port(5432)
        .user(ADMIN_ROLE)
        .password(pg.admin_password.expose_secret())
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while sc
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            Instant::now() < deadline,
            "pgBackRest's restore did not promote"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(sc);
    let pgbr_recover = t0.elapsed();
    pg.create_database_for_restore("pgbr_restored", &victim.role)
        .unwrap();
    let dump = pg.bin.tool("pg_dump");
    let restore = pg.bin.tool("pg_restore");
    let mut copy_env = tenant_env(victim);
    copy_env.push(("ADMINPW".into(), admin_pw.clone()));
    let cenv: Vec<(&str, &str)> = copy_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sh(
        &format!(
            "PGPASSWORD=$ADMINPW {} -Fc -Z0 -h {} -p 5432 -U {ADMIN_ROLE} -d {} | \
             {} --no-owner --no-privileges --exit-on-error -d pgbr_restored",
            dump.display(),
            run.display(),
            victim.database,
            restore.display()
        ),
        &cenv,
    );
    let pgbr_total = t0.elapsed();
    run_as(
        user.as_deref(),
        &[],
        &[
            pg_ctl.to_str().unwrap(),
            "stop",
            "-D",
            scratch.to_str().unwrap(),
            "-m",
            "immediate",
            "-s",
        ],
    );
    println!(
        "pgBackRest by hand: {:.2} s ({:.2} s restore of the cluster, {:.2} s to promoted, {:.2} s dump | restore)",
        secs(pgbr_total),
        secs(pgbr_restore),
        secs(pgbr_recover),
        secs(pgbr_total - pgbr_recover)
    );

    // The floor: a plain restore of the same data from a dump.
    let dump_file = work.join("victim.dump");
    sh(
        &format!(
            "PGPASSWORD=$ADMINPW {} -Fc -Z0 -h {} -p {} -U {ADMIN_ROLE} -d {} -f {}",
            dump.display(),
            pg.socket_dir().display(),
            pg.port,
            victim.database,
            dump_file.display()
        ),
        &cenv,
    );
    pg.create_database_for_restore("plain_restored", &victim.role)
        .unwrap();
    let plain = sh(
        &format!(
            "{} --no-owner --no-privileges --exit-on-error -d plain_restored {}",
            restore.display(),
            dump_file.display()
        ),
        &cenv,
    );
    println!("plain pg_restore of the same data: {:.2} s", secs(plain));
    println!(
        "\nratio careplane / plain restore: {:.2}x (goal < 2x)\nratio pgBackRest by hand / careplane: {:.2}x",
        secs(cp_total) / secs(plain),
        secs(pgbr_total) / secs(cp_total)
    );
}

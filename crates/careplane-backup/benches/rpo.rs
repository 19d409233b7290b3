//! Benchmark: the recovery point under write load (issue 16: "RPO measured
//! under pgbench write load at 5 s or less: lose the cluster, restore, count
//! committed transactions lost"), side by side in one run:
//!
//! - `archive_timeout = 60` (careplane's setting before this benchmark): WAL
//!   reaches the repository through `archive_command` one 16 MB segment at a
//!   time, or when the timeout forces a switch;
//! - `archive_timeout = 5` (careplane's setting): the same with a switch
//!   forced every 5 s while WAL is written;
//! - `pg_receivewal --synchronous` beside `archive_timeout = 60`: PostgreSQL's
//!   own WAL receiver streaming over the replication protocol (the peer a
//!   user would add for an RPO of seconds), its files used by the restore
//!   when the repository has no such segment.
//!
//! Each run: a PostgreSQL 15 cluster archiving into careplane's repository
//! (`careplane-backup-wal archive`), `pgbench -i -s SCALE` in a tenant
//! database, a direct base backup, then `pgbench -l` (a client-side log of
//! every committed transaction) for LOAD seconds, `kill -9` of the postmaster
//! mid-load, its data directory moved away, the base backup restored and WAL
//! replayed to the end of what was archived (received). Lost = transactions
//! pgbench saw committed minus rows of `pgbench_history` after the restore;
//! the span lost is the last commit pgbench saw minus the last restored one.
//!
//! Run: `scripts/bench-rpo` or `cargo bench -p careplane-backup --bench rpo`.
//! BENCH_RPO_SCALE (default 5), BENCH_RPO_LOAD seconds before the kill
//! (default 30), BENCH_RPO_CLIENTS (default 4).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use careplane_backup::pg::{base_backup_direct, restore_base_backup, PgSource};
use careplane_backup::{
    generate_identity, generate_secret, BackupMetadata, ExposeSecret, Progress, RepoKeys,
    Repository,
};
use careplane_local::pg::{TenantDb, ADMIN_ROLE};
use careplane_local::testing::{password, TestPlatform};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) {
    let Some((uid, gid)) = owner else { return };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), owner);
        }
    }
}

/// Committed transactions in pgbench's per-transaction logs (`client_id
/// transaction_no time script_no time_epoch time_us`), and the last one's
/// completion time.
fn committed(dir: &Path, prefix: &str) -> (u64, f64) {
    let (mut n, mut last) = (0u64, 0f64);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // A failed or skipped transaction has no latency number.
            if f.len() >= 6 && f[2].parse::<u64>().is_ok() {
                let (s, us): (f64, f64) = (f[4].parse().unwrap(), f[5].parse().unwrap());
                n += 1;
                last = last.max(s + us / 1e6);
            }
        }
    }
    (n, last)
}

struct Outcome {
    name: String,
    committed: u64,
    restored: u64,
    lost_span: f64,
    segments: usize,
    repo_bytes: u64,
    recovery: Duration,
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn run(name: &str, archive_timeout: u32, receiver: bool) -> Outcome {
    let scale = env_num("BENCH_RPO_SCALE", 5);
    let load = env_num("BENCH_RPO_LOAD", 30);
    let clients = env_num("BENCH_RPO_CLIENTS", 4);
    let platform = TestPlatform::new();
    let work = platform.path().join("w");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711)).unwrap();
    let owner = platform.user.as_ref().map(|u| (u.uid, u.gid));

    let (identity, recipient) = generate_identity();
    let keys = RepoKeys {
        secret: generate_secret(),
        recipients: vec![recipient],
        identities: vec![identity],
    };
    let repo_dir = work.join("repo");
    let url = format!("file://{}", repo_dir.display());
    let repo = Repository::open(&url, &keys).unwrap();
    std::fs::create_dir_all(repo_dir.join("wal")).unwrap();
    chown_tree(&repo_dir, owner);
    let keys_file = work.join("wal-keys.json");
    keys.wal_keys()
        .unwrap()
        .write_file(&keys_file, owner)
        .unwrap();
    let bin = work.join("careplane-backup-wal");
    std::fs::copy(env!("CARGO_BIN_EXE_careplane-backup-wal"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let received = work.join("received");
    std::fs::create_dir_all(&received).unwrap();
    std::fs::set_permissions(&received, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut cluster = platform.pg_cluster("rpo");
    cluster.settings.insert("archive_mode".into(), "on".into());
    cluster.settings.insert(
        "archive_command".into(),
        format!(
            "{} archive {} {url} %p %f",
            bin.display(),
            keys_file.display()
        ),
    );
    cluster
        .settings
        .insert("archive_timeout".into(), archive_timeout.to_string());
    cluster.settings.insert("max_wal_size".into(), "1GB".into());
    let mut pg = platform.guard_pg(cluster);
    let tls = platform.tls_files();
    pg.init(&tls).unwrap();
    let mut hba = std::fs::read_to_string(pg.hba_path()).unwrap();
    hba.push_str(&format!(
        "local    replication  \"{ADMIN_ROLE}\"  scram-sha-256\n"
    ));
    std::fs::write(pg.hba_path(), hba).unwrap();
    pg.start().unwrap();

    let t = TenantDb {
        database: "bench".into(),
        role: "rbench".into(),
        password: password(),
        connection_limit: Some(20),
        former_roles: Vec::new(),
    };
    pg.ensure_tenant_database(&t).unwrap();
    pg.write_hba(&[(t.database.clone(), t.role.clone())])
        .unwrap();
    // write_hba rewrote pg_hba.conf: the receiver's replication line again.
    let mut hba = std::fs::read_to_string(pg.hba_path()).unwrap();
    hba.push_str(&format!(
        "local    replication  \"{ADMIN_ROLE}\"  scram-sha-256\n"
    ));
    std::fs::write(pg.hba_path(), hba).unwrap();
    pg.admin()
        .unwrap()
        .batch_execute("SELECT pg_reload_conf()")
        .unwrap();
    let ca_file = work.join("ca.crt");
    std::fs::write(&ca_file, &platform.ca.cert_pem).unwrap();
    let tenant_env: Vec<(String, String)> = vec![
        ("PGPASSWORD".into(), t.password.expose_secret().to_string()),
        ("PGSSLMODE".into(), "verify-full".into()),
        ("PGSSLROOTCERT".into(), ca_file.display().to_string()),
        ("PGHOST".into(), "127.0.0.1".into()),
        ("PGPORT".into(), pg.port.to_string()),
        ("PGUSER".into(), t.role.clone()),
    ];
    let pgbench = pg.bin.tool("pgbench");
    let st = Command::new(&pgbench)
        .args(["-i", "-q", "-s", &scale.to_string(), &t.database])
        .envs(tenant_env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "pgbench -i failed");

    let src = PgSource {
        bin_dir: pg.bin.dir.clone(),
        host: pg.socket_dir().display().to_string(),
        port: pg.port,
        user: ADMIN_ROLE.into(),
        password: pg.admin_password.clone(),
    };
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

    let mut receivewal = receiver.then(|| {
        Command::new(pg.bin.tool("pg_receivewal"))
            .args(["--synchronous", "--no-loop", "-n", "-D"])
            .arg(&received)
            .arg("-h")
            .arg(pg.socket_dir())
            .args(["-p", &pg.port.to_string(), "-U", ADMIN_ROLE])
            .env("PGPASSWORD", pg.admin_password.expose_secret())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    });

    // The load, logged client-side; the loss mid-load.
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut bench = Command::new(&pgbench)
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &(load + 60).to_string(),
            "-l",
            "--log-prefix",
        ])
        .arg(logs.join("tx"))
        .arg(&t.database)
        .envs(tenant_env.iter().cloned())
        .current_dir(&logs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(load));
    let pid: i32 = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the postmaster this run started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed_at = now_secs();
    let deadline = Instant::now() + Duration::from_secs(60);
    while bench.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = bench.kill();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(r) = receivewal.as_mut() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = r.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (committed_n, last_commit) = committed(&logs, "tx");
    // The backends of the dead postmaster exit when they notice.
    std::thread::sleep(Duration::from_secs(2));
    let segments = repo.list_wal().unwrap().len();
    let repo_bytes = dir_size(&repo_dir.join("wal"));

    // The cluster is lost: only the repository (and the receiver's files) remain.
    std::fs::rename(pg.data_dir(), pg.root.join("data.lost")).unwrap();
    let t_recovery = Instant::now();
    restore_base_backup(&repo, &base.id, &pg.data_dir(), owner).unwrap();
    chown_tree(&received, owner);
    let fallback = if receiver {
        format!(
            " || cp {dir}/%f %p || cp {dir}/%f.partial %p",
            dir = received.display()
        )
    } else {
        String::new()
    };
    pg.cluster.settings.insert(
        "restore_command".into(),
        format!(
            "{} restore {} {url} %f %p{fallback}",
            bin.display(),
            keys_file.display()
        ),
    );
    pg.cluster
        .settings
        .insert("archive_mode".into(), "off".into());
    pg.init(&tls).unwrap();
    let signal = pg.data_dir().join("recovery.signal");
    std::fs::write(&signal, "").unwrap();
    chown_tree(&signal, owner);
    pg.start().unwrap();
    let mut admin = pg.admin().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while admin
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            Instant::now() < deadline,
            "recovery did not finish in 600 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovery = t_recovery.elapsed();
    let mut c = pg.tenant_connect(&t, &platform.ca.cert_pem).unwrap();
    // pgbench_history.mtime is a timestamp without time zone, written in
    // the server's default TimeZone.
    c.batch_execute("RESET TimeZone").unwrap();
    let row = c
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM max(mtime) \
             AT TIME ZONE pg_catalog.current_setting('TimeZone'))::float8, 0) \
             FROM public.pgbench_history",
            &[],
        )
        .unwrap();
    let restored: i64 = row.get(0);
    let last_restored: f64 = row.get(1);
    println!(
        "{name}: killed at {killed_at:.3}, last commit pgbench saw {last_commit:.3}, \
         last restored {last_restored:.3}"
    );
    Outcome {
        name: name.to_string(),
        committed: committed_n,
        restored: restored as u64,
        lost_span: (last_commit - last_restored).max(0.0),
        segments,
        repo_bytes,
        recovery,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "# RPO under pgbench load: scale {}, {} clients, cluster killed after {} s",
        env_num("BENCH_RPO_SCALE", 5),
        env_num("BENCH_RPO_CLIENTS", 4),
        env_num("BENCH_RPO_LOAD", 30)
    );
    let runs = [
        run("archive_command, archive_timeout 60 s", 60, false),
        run("archive_command, archive_timeout 5 s (careplane)", 5, false),
        run(
            "pg_receivewal --synchronous (+ archive_timeout 60 s)",
            60,
            true,
        ),
    ];
    println!(
        "| WAL shipping | committed | restored | lost | span lost (s) | segments archived | WAL stored (MB) | restore (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in &runs {
        println!(
            "| {} | {} | {} | {} | {:.1} | {} | {:.1} | {:.1} |",
            o.name,
            o.committed,
            o.restored,
            o.committed.saturating_sub(o.restored),
            o.lost_span,
            o.segments,
            o.repo_bytes as f64 / 1e6,
            o.recovery.as_secs_f64()
        );
    }
    println!("goal: at most 5 s of committed transactions lost");
}

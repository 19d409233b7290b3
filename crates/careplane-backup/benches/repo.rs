//! Benchmark of the backup repository (issue 16), side by side in one run:
//!
//! Part 1, a ~1 GB synthetic data directory (six 128 MiB table-like files
//! that compress about 3:1, two 64 MiB incompressible files, 3000 small
//! filestore-like files): careplane backup to file://, a second backup of the
//! unchanged directory, a restore; against `tar | zstd -3 -T2` (no
//! encryption, no deduplication) as the floor a script would reach.
//!
//! Part 2, a real PostgreSQL 15 cluster filled by `pgbench -i -s SCALE`
//! (BENCH_PG_SCALE, default 100, about 1.5 GB of tables) and a filestore of
//! BENCH_FILESTORE_FILES (default 3000) Odoo-like attachments in the data
//! directory, so both tools carry it: careplane's base backups
//! (pg_basebackup stream, and direct: pg_backup_start + the data directory
//! read on the repository's threads, the second one with the first as
//! parent) against `pgbackrest backup` (zstd level 3,
//! aes-256-cbc repository encryption, process-max 2): full backup, a second
//! backup of the unchanged cluster (pgBackRest: incremental), restore.
//! Skipped with a printed reason when pgbackrest or pgbench is missing.
//!
//! Run: `cargo bench -p careplane-backup --bench repo` (BENCH_SIZE_MB scales
//! part 1, BENCH_PG_SCALE and BENCH_FILESTORE_FILES part 2, BENCH_SKIP_PG=1
//! skips part 2).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use careplane_backup::pg::{base_backup, base_backup_direct, restore_base_backup, PgSource};
use careplane_backup::{
    generate_identity, generate_secret, BackupMetadata, ExposeSecret, Progress, RepoKeys,
    Repository,
};
use careplane_local::pg::ADMIN_ROLE;
use careplane_local::testing::TestPlatform;

const MB: f64 = 1e6;

fn quiet(_: Progress) {}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Rows of text with random numbers, like heap pages of an ERP table.
fn table_like(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut out = Vec::with_capacity(len + 128);
    let names = ["Jane", "Omar", "Li", "Ana", "Kwame", "Sofia", "Ravi", "Mia"];
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(
            out,
            "{:08x}|{}|patient|{:04}-{:02}-{:02}|{:x}|approved",
            x as u32,
            names[(x >> 40) as usize % names.len()],
            1950 + (x >> 20) % 70,
            1 + (x >> 8) % 12,
            1 + (x >> 12) % 28,
            x >> 44
        );
    }
    out.truncate(len);
    out
}

/// `n` files laid out like an Odoo filestore (`ab/abcdef…`, SHA-1-like
/// names): mostly scans and photos (incompressible, 4–200 KB), a third
/// text-heavy PDFs (compressible, 20–400 KB), one in twenty a large scan
/// (1–2 MB). Returns (files, bytes).
fn make_filestore(root: &Path, n: u64) -> (u64, u64) {
    let mut bytes = 0u64;
    for i in 0..n {
        let name = format!(
            "{:040x}",
            (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u128 * 2_654_435_761
        );
        let dir = root.join(&name[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        let spread = (i * 7919) % 1000;
        let d = if i % 20 == 0 {
            noise(5000 + i, (1 << 20) + (spread as usize) * 1000)
        } else if i % 3 == 0 {
            table_like(5000 + i, 20_000 + (spread as usize) * 380)
        } else {
            noise(5000 + i, 4096 + (spread as usize) * 196)
        };
        bytes += d.len() as u64;
        std::fs::write(dir.join(&name), d).unwrap();
    }
    (n, bytes)
}

fn chown_tree(root: &Path, owner: Option<(u32, u32)>) {
    let Some((uid, gid)) = owner else { return };
    std::os::unix::fs::lchown(root, Some(uid), Some(gid)).unwrap();
    if root.is_dir() {
        for e in std::fs::read_dir(root).unwrap() {
            chown_tree(&e.unwrap().path(), owner);
        }
    }
}

fn make_dataset(root: &Path, total_mb: usize) -> u64 {
    let scale = total_mb as f64 / 1000.0;
    let big = ((128 << 20) as f64 * scale) as usize;
    let rnd = ((64 << 20) as f64 * scale) as usize;
    std::fs::create_dir_all(root.join("base")).unwrap();
    let mut bytes = 0u64;
    for i in 0..6 {
        let d = table_like(i, big);
        bytes += d.len() as u64;
        std::fs::write(root.join(format!("base/1663{i}")), d).unwrap();
    }
    for i in 0..2 {
        let d = noise(100 + i, rnd);
        bytes += d.len() as u64;
        std::fs::write(root.join(format!("base/blob{i}")), d).unwrap();
    }
    for i in 0..3000u64 {
        let dir = root.join(format!("filestore/{:02x}", i % 256));
        std::fs::create_dir_all(&dir).unwrap();
        let d = noise(1000 + i, 4096 + ((i * 7919) % 60_000) as usize);
        bytes += d.len() as u64;
        std::fs::write(dir.join(format!("{:040x}", i * 2_654_435_761)), d).unwrap();
    }
    bytes
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
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

fn keys() -> RepoKeys {
    let (identity, recipient) = generate_identity();
    RepoKeys {
        secret: generate_secret(),
        recipients: vec![recipient],
        identities: vec![identity],
    }
}

fn drop_caches() {
    // Page cache is left warm for both sides alike; only sync so writes of one
    // step do not land in the next one's time.
    let _ = Command::new("sync").status();
}

fn part1(work: &Path, total_mb: usize) {
    println!("## Part 1: synthetic data directory, ~{total_mb} MB, file://");
    let data = work.join("data");
    let t = Instant::now();
    let bytes = make_dataset(&data, total_mb);
    println!(
        "dataset: {:.0} MB in {} files (generated in {:.1} s)",
        bytes as f64 / MB,
        3008,
        secs(t.elapsed())
    );
    drop_caches();
    // Files modified in the last 2 s are never trusted by a later backup.
    std::thread::sleep(Duration::from_secs(2));
    let repo_dir = work.join("repo");
    let repo = Repository::open(&format!("file://{}", repo_dir.display()), &keys()).unwrap();

    let t = Instant::now();
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    w.put_tree(&data, "", &quiet).unwrap();
    let m1 = w.commit(BackupMetadata::default()).unwrap();
    drop_caches();
    let first = t.elapsed();
    let repo_size = dir_size(&repo_dir);

    let t = Instant::now();
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    w.put_tree(&data, "", &quiet).unwrap();
    let m2 = w.commit(BackupMetadata::default()).unwrap();
    let second = t.elapsed();

    let t = Instant::now();
    let mut w = repo.start_backup(BTreeMap::new()).unwrap();
    w.reuse_unchanged_from(&m1.id).unwrap();
    w.put_tree(&data, "", &quiet).unwrap();
    let m3 = w.commit(BackupMetadata::default()).unwrap();
    let third = t.elapsed();
    assert_eq!(m3.chunks, m1.chunks);

    let dest = work.join("restored");
    let t = Instant::now();
    repo.restore_tree(&m2.id, &dest, None, &|_| true).unwrap();
    drop_caches();
    let restore = t.elapsed();
    assert_eq!(dir_size(&dest), dir_size(&data), "restore differs in size");
    std::fs::remove_dir_all(&dest).unwrap();

    // Floor: tar | zstd -3 -T2 (what a script does; no encryption, no dedupe).
    let tar_out = work.join("data.tar.zst");
    let t = Instant::now();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -cf - . | zstd -q -3 -T2 -o {}",
            data.display(),
            tar_out.display()
        ))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    drop_caches();
    let tar_time = t.elapsed();

    let mbps = |d: Duration| bytes as f64 / MB / secs(d);
    println!();
    println!("| | time | MB/s | repository size |");
    println!("|---|---|---|---|");
    println!(
        "| careplane first backup (chunk, dedupe, zstd 3, age, 2 threads) | {:.2} s | **{:.0}** | {:.0} MB ({} chunks) |",
        secs(first),
        mbps(first),
        repo_size as f64 / MB,
        m1.chunks.len()
    );
    println!(
        "| careplane second backup, unchanged, every file read again | **{:.2} s** | {:.0} | +{:.3} MB |",
        secs(second),
        mbps(second),
        m2.new_stored_bytes as f64 / MB
    );
    println!(
        "| careplane second backup, unchanged, files checked against the first's state (not read) | **{:.2} s** | {:.0} | +{:.3} MB |",
        secs(third),
        mbps(third),
        m3.new_stored_bytes as f64 / MB
    );
    println!(
        "| careplane restore (2 threads) | {:.2} s | **{:.0}** | |",
        secs(restore),
        mbps(restore)
    );
    if ok {
        println!(
            "| `tar \\| zstd -3 -T2` (no encryption, no dedupe) | {:.2} s | {:.0} | {:.0} MB |",
            secs(tar_time),
            mbps(tar_time),
            std::fs::metadata(&tar_out).map(|m| m.len()).unwrap_or(0) as f64 / MB
        );
        println!(
            "\nratio careplane / tar+zstd first-backup throughput: {:.2}x",
            secs(tar_time) / secs(first)
        );
    } else {
        println!("(tar | zstd baseline skipped: zstd CLI not found)");
    }
    let _ = std::fs::remove_file(&tar_out);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::remove_dir_all(&repo_dir).unwrap();
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command as the PostgreSQL service user (when root), panicking with
/// its output on failure; returns the elapsed time.
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

fn part2(platform: &TestPlatform, scale: u32, filestore_files: u64) {
    println!("\n## Part 2: PostgreSQL 15, pgbench scale {scale}, file:// vs pgBackRest");
    if !have("pgbackrest") || !have("pgbench") {
        println!("skipped: pgbackrest or pgbench not installed (apt-get install pgbackrest)");
        return;
    }
    let work = platform.path().join("pg-bench");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let user = platform.user.as_ref().map(|u| u.name.clone());
    let owner = platform.user.as_ref().map(|u| (u.uid, u.gid));
    let chown = |p: &Path| {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
        }
    };
    let conf = work.join("pgbackrest.conf");
    let mut cluster = platform.pg_cluster("bench");
    let cipher = careplane_local::testing::password();
    cluster.settings.insert("archive_mode".into(), "on".into());
    cluster.settings.insert(
        "archive_command".into(),
        format!(
            "pgbackrest --config={} --stanza=bench archive-push %p",
            conf.display()
        ),
    );
    cluster
        .settings
        .insert("shared_buffers".into(), "128MB".into());
    cluster.settings.insert("max_wal_size".into(), "2GB".into());
    let pg = platform.guard_pg(cluster);
    pg.init(&platform.tls_files()).unwrap();
    let mut hba = std::fs::read_to_string(pg.hba_path()).unwrap();
    hba.push_str(&format!(
        "local    replication  \"{ADMIN_ROLE}\"  scram-sha-256\n"
    ));
    std::fs::write(pg.hba_path(), hba).unwrap();
    let pgbr_repo = work.join("pgbr-repo");
    for d in ["pgbr-repo", "pgbr-log", "pgbr-lock", "pgbr-spool"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
        chown(&work.join(d));
    }
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={}\n\
             compress-type=zst\ncompress-level=3\nprocess-max=2\nlog-path={}\nlock-path={}\n\
             spool-path={}\nlog-level-console=warn\nlog-level-file=info\nstart-fast=y\n\n\
             [bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user={ADMIN_ROLE}\n",
            pgbr_repo.display(),
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
    let pw = pg.admin_password.expose_secret().to_string();
    let env = [("PGPASSWORD", pw.as_str())];
    let socket = pg.socket_dir().display().to_string();
    let port = pg.port.to_string();
    let pgbench = pg.bin.tool("pgbench");
    let t = Instant::now();
    run_as(
        user.as_deref(),
        &env,
        &[
            pgbench.to_str().unwrap(),
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "-h",
            &socket,
            "-p",
            &port,
            "-U",
            ADMIN_ROLE,
            "postgres",
        ],
    );
    let mut c = pg.admin().unwrap();
    c.batch_execute("CHECKPOINT").unwrap();
    let pgbench_secs = secs(t.elapsed());
    // The environment's Odoo filestore, inside the data directory so that
    // both tools back up and restore the same bytes (pgBackRest copies
    // every file under pg1-path it does not know to leave out).
    let (fs_files, fs_bytes) =
        make_filestore(&pg.data_dir().join("filestore/bench"), filestore_files);
    chown_tree(&pg.data_dir().join("filestore"), owner);
    let size = dir_size(&pg.data_dir());
    println!(
        "cluster: {:.0} MB data directory (pgbench -i in {:.0} s), of which a filestore of {fs_files} files, {:.0} MB",
        size as f64 / MB,
        pgbench_secs,
        fs_bytes as f64 / MB,
    );
    let conf_arg = format!("--config={}", conf.display());
    let pgbr = |args: &[&str]| {
        let mut all = vec!["pgbackrest", conf_arg.as_str(), "--stanza=bench"];
        all.extend_from_slice(args);
        run_as(user.as_deref(), &env, &all)
    };
    pgbr(&["stanza-create"]);
    drop_caches();

    // careplane
    let repo_dir = work.join("cp-repo");
    let repo = Repository::open(&format!("file://{}", repo_dir.display()), &keys()).unwrap();
    let src = PgSource {
        bin_dir: pg.bin.dir.clone(),
        host: socket.clone(),
        port: pg.port,
        user: ADMIN_ROLE.into(),
        password: pg.admin_password.clone(),
    };
    let t = Instant::now();
    base_backup(
        &repo,
        &src,
        BTreeMap::new(),
        BackupMetadata::default(),
        &quiet,
    )
    .unwrap();
    drop_caches();
    let cp_full = t.elapsed();
    let cp_size = dir_size(&repo_dir);
    let t = Instant::now();
    let m2 = base_backup(
        &repo,
        &src,
        BTreeMap::new(),
        BackupMetadata::default(),
        &quiet,
    )
    .unwrap();
    drop_caches();
    let cp_again = t.elapsed();
    // A repository of its own, so the direct backup finds no chunk of the
    // pg_basebackup ones to reuse.
    let direct_dir = work.join("cp-repo-direct");
    let direct = Repository::open(&format!("file://{}", direct_dir.display()), &keys()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let d1 = base_backup_direct(
        &direct,
        &src,
        &pg.data_dir(),
        None,
        BTreeMap::new(),
        BackupMetadata::default(),
        &quiet,
    )
    .unwrap();
    drop_caches();
    let cp_direct = t.elapsed();
    let t = Instant::now();
    let d2 = base_backup_direct(
        &direct,
        &src,
        &pg.data_dir(),
        Some(&d1.id),
        BTreeMap::new(),
        BackupMetadata::default(),
        &quiet,
    )
    .unwrap();
    drop_caches();
    let cp_direct_again = t.elapsed();
    let direct_size = dir_size(&direct_dir);
    let dest: PathBuf = work.join("cp-restore");
    let t = Instant::now();
    restore_base_backup(&repo, &m2.id, &dest, owner).unwrap();
    drop_caches();
    let cp_restore = t.elapsed();
    assert_eq!(
        dir_size(&dest.join("filestore")),
        fs_bytes,
        "careplane's restored filestore"
    );
    std::fs::remove_dir_all(&dest).unwrap();

    // pgBackRest
    let t = Instant::now();
    pgbr(&["--type=full", "backup"]);
    drop_caches();
    let br_full = t.elapsed();
    let br_size = dir_size(&pgbr_repo.join("backup"));
    let t = Instant::now();
    pgbr(&["--type=incr", "backup"]);
    drop_caches();
    let br_again = t.elapsed();
    let br_dest = work.join("br-restore");
    std::fs::create_dir_all(&br_dest).unwrap();
    std::fs::set_permissions(&br_dest, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(&br_dest);
    let path_arg = format!("--pg1-path={}", br_dest.display());
    let t = Instant::now();
    pgbr(&[&path_arg, "restore"]);
    drop_caches();
    let br_restore = t.elapsed();
    assert_eq!(
        dir_size(&br_dest.join("filestore")),
        fs_bytes,
        "pgBackRest's restored filestore"
    );

    let mbps = |d: Duration| size as f64 / MB / secs(d);
    println!();
    println!("| | careplane | pgBackRest 2 processes | ratio (pgBackRest time / careplane time) |");
    println!("|---|---|---|---|");
    println!(
        "| full backup | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | **{:.2}x** |",
        secs(cp_full),
        mbps(cp_full),
        secs(br_full),
        mbps(br_full),
        secs(br_full) / secs(cp_full)
    );
    println!(
        "| full backup, careplane direct (pg_backup_start + data directory read on 2 threads) | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | **{:.2}x** |",
        secs(cp_direct),
        mbps(cp_direct),
        secs(br_full),
        mbps(br_full),
        secs(br_full) / secs(cp_direct)
    );
    println!(
        "| second backup, unchanged cluster, careplane direct with parent vs pgBackRest incr | {:.2} s (+{:.1} MB) | {:.2} s | **{:.2}x** |",
        secs(cp_direct_again),
        d2.new_stored_bytes as f64 / MB,
        secs(br_again),
        secs(br_again) / secs(cp_direct_again)
    );
    println!(
        "| second backup, unchanged cluster (pgBackRest: incr) | {:.2} s (+{:.1} MB) | {:.2} s | **{:.2}x** |",
        secs(cp_again),
        m2.new_stored_bytes as f64 / MB,
        secs(br_again),
        secs(br_again) / secs(cp_again)
    );
    println!(
        "| restore | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | **{:.2}x** |",
        secs(cp_restore),
        mbps(cp_restore),
        secs(br_restore),
        mbps(br_restore),
        secs(br_restore) / secs(cp_restore)
    );
    println!(
        "| repository size after the full backup | {:.0} MB (direct: {:.0} MB after both) | {:.0} MB | |",
        cp_size as f64 / MB,
        direct_size as f64 / MB,
        br_size as f64 / MB
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let total_mb: usize = std::env::var("BENCH_SIZE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let scale: u32 = std::env::var("BENCH_PG_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let filestore_files: u64 = std::env::var("BENCH_FILESTORE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let platform = TestPlatform::new();
    println!(
        "careplane-backup benchmark, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let work = platform.path().join("part1");
    std::fs::create_dir_all(&work).unwrap();
    part1(&work, total_mb);
    if std::env::var("BENCH_SKIP_PG").as_deref() != Ok("1") {
        part2(&platform, scale, filestore_files);
    }
}

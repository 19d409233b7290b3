//! Point-in-time recovery with a real PostgreSQL 15: WAL archived by
//! `archive_command` into the repository, a base backup with
//! pg_basebackup, more writes, then a restore of the base backup with
//! `restore_command` from the repository and `recovery_target_time` between
//! two batches of rows: exactly the rows committed by T come back.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use careplane_backup::pg::{base_backup, base_backup_direct, restore_base_backup, PgSource};
use careplane_backup::{BackupMetadata, Progress, Repository};
use careplane_local::pg::ADMIN_ROLE;
use careplane_local::testing::TestPlatform;

fn chown_tree(path: &std::path::Path, owner: Option<(u32, u32)>) {
    let Some((uid, gid)) = owner else { return };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), owner);
        }
    }
}

fn count(c: &mut postgres::Client, phase: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM public.visits WHERE phase = $1",
        &[&phase],
    )
    .unwrap()
    .get(0)
}

fn wait_archived(c: &mut postgres::Client, log: &std::path::Path) {
    let lsn: String = c
        .query_one("SELECT pg_switch_wal()::text", &[])
        .unwrap()
        .get(0);
    let want: String = c
        .query_one("SELECT pg_walfile_name($1::text::pg_lsn)", &[&lsn])
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = c
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') \
                 FROM pg_stat_archiver",
                &[],
            )
            .unwrap();
        let (last, failed, failed_wal): (String, i64, String) =
            (row.get(0), row.get(1), row.get(2));
        if failed > 0 {
            panic!(
                "archive_command failed for {failed_wal}; server log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if last.as_str() >= want.as_str() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "WAL {want} not archived (last {last:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The archiver runs as the cluster's service user, which may not reach
/// cargo's target directory (under a 0700 home when the tests run as root):
/// it gets its own copy in the platform directory, as an install would.
fn wal_binary(platform: &TestPlatform) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = platform.path().join("careplane-backup-wal");
    std::fs::copy(env!("CARGO_BIN_EXE_careplane-backup-wal"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A direct base backup whose WAL cannot be archived fails, naming the WAL
/// file, instead of waiting forever in pg_backup_stop; nothing is committed.
#[test]
fn a_direct_base_backup_fails_clearly_when_archiving_fails() {
    let platform = TestPlatform::new();
    let repo_dir = platform.path().join("repo");
    let url = format!("file://{}", repo_dir.display());
    let repo = Repository::open(&url, &common::keys()).unwrap();
    let mut cluster = platform.pg_cluster("noarchive");
    cluster.settings.insert("archive_mode".into(), "on".into());
    cluster
        .settings
        .insert("archive_command".into(), "/bin/false".into());
    let pg = platform.guard_pg(cluster);
    pg.init(&platform.tls_files()).unwrap();
    pg.start().unwrap();
    let src = PgSource {
        bin_dir: pg.bin.dir.clone(),
        host: pg.socket_dir().display().to_string(),
        port: pg.port,
        user: ADMIN_ROLE.into(),
        password: pg.admin_password.clone(),
    };
    let err = base_backup_direct(
        &repo,
        &src,
        &pg.data_dir(),
        None,
        BTreeMap::new(),
        BackupMetadata::default(),
        &|_: Progress| {},
    )
    .expect_err("a backup whose WAL is never archived must fail");
    let msg = err.to_string();
    assert!(msg.contains("WAL file 0000"), "{msg}");
    assert!(msg.contains("archive_command failed"), "{msg}");
    assert!(repo.list_backups().unwrap().is_empty());
}

#[test]
fn point_in_time_recovery_restores_exactly_the_rows_committed_by_t() {
    pitr(false);
}

/// The same with base backups read from the data directory between
/// pg_backup_start and pg_backup_stop: a second one takes the files
/// unchanged since the first without reading them, and is the base of the
/// recovery.
#[test]
fn point_in_time_recovery_from_a_direct_incremental_base_backup() {
    pitr(true);
}

fn pitr(direct: bool) {
    let platform = TestPlatform::new();
    let owner = platform.user.as_ref().map(|u| (u.uid, u.gid));
    let repo_dir = platform.path().join("repo");
    let url = format!("file://{}", repo_dir.display());
    let keys = common::keys();
    let repo = Repository::open(&url, &keys).unwrap();
    std::fs::create_dir_all(repo_dir.join("wal")).unwrap();
    chown_tree(&repo_dir, owner);

    // The archiver's keys: the WAL key only, in a file only the service user reads.
    let keys_file = platform.path().join("wal-keys.json");
    keys.wal_keys()
        .unwrap()
        .write_file(&keys_file, owner)
        .unwrap();

    let bin = wal_binary(&platform);
    let mut cluster = platform.pg_cluster("pitr");
    cluster.settings.insert("archive_mode".into(), "on".into());
    cluster.settings.insert(
        "archive_command".into(),
        format!(
            "{} archive {} {url} %p %f",
            bin.display(),
            keys_file.display()
        ),
    );
    let mut pg = platform.guard_pg(cluster);
    let tls = platform.tls_files();
    pg.init(&tls).unwrap();
    // pg_basebackup needs a replication connection for the admin.
    let mut hba = std::fs::read_to_string(pg.hba_path()).unwrap();
    hba.push_str(&format!(
        "local    replication  \"{ADMIN_ROLE}\"  scram-sha-256\n"
    ));
    std::fs::write(pg.hba_path(), hba).unwrap();
    pg.start().unwrap();
    let log = pg.latest_log();

    let mut c = pg.admin().unwrap();
    c.batch_execute(
        "CREATE TABLE public.visits (id serial PRIMARY KEY, phase text NOT NULL);
         INSERT INTO public.visits (phase) SELECT 'a' FROM generate_series(1, 100);",
    )
    .unwrap();

    let src = PgSource {
        bin_dir: pg.bin.dir.clone(),
        host: pg.socket_dir().display().to_string(),
        port: pg.port,
        user: ADMIN_ROLE.into(),
        password: pg.admin_password.clone(),
    };
    let quiet = |_: Progress| {};
    let labels = BTreeMap::from([("cluster".to_string(), "pitr".to_string())]);
    let metadata = BackupMetadata {
        postgres_version: Some(pg.bin.major_version.to_string()),
        ..Default::default()
    };
    let base = if direct {
        // Files written in the last 2 s are never trusted by the next backup.
        std::thread::sleep(Duration::from_millis(2500));
        let first = base_backup_direct(
            &repo,
            &src,
            &pg.data_dir(),
            None,
            labels.clone(),
            metadata.clone(),
            &quiet,
        )
        .unwrap();
        let last = std::sync::Mutex::new(Progress::default());
        let record = |p: Progress| *last.lock().unwrap() = p;
        let second = base_backup_direct(
            &repo,
            &src,
            &pg.data_dir(),
            Some(&first.id),
            labels,
            metadata,
            &record,
        )
        .unwrap();
        let p = *last.lock().unwrap();
        assert!(p.files_unchanged > 100, "{p:?}");
        assert_eq!(second.labels["method"], "direct");
        assert!(
            second.labels.contains_key("wal.stop_lsn"),
            "{:?}",
            second.labels
        );
        second
    } else {
        base_backup(&repo, &src, labels, metadata, &quiet).unwrap()
    };
    assert_eq!(base.labels["kind"], "base");
    assert!(base.labels.contains_key("wal.start"), "{:?}", base.labels);
    assert!(base.files > 100, "{base:?}");
    repo.verify(&base.id, true).unwrap();

    c.batch_execute("INSERT INTO public.visits (phase) SELECT 'b' FROM generate_series(1, 100)")
        .unwrap();
    let t: String = c
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
            &[],
        )
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(300));
    c.batch_execute("INSERT INTO public.visits (phase) SELECT 'c' FROM generate_series(1, 100)")
        .unwrap();
    assert_eq!(count(&mut c, "c"), 100);
    wait_archived(&mut c, &log);
    drop(c);
    assert!(repo.list_wal().unwrap().len() >= 2);

    // Lose the cluster; restore the base backup and replay WAL up to T.
    pg.stop().unwrap();
    std::fs::rename(pg.data_dir(), pg.root.join("data.lost")).unwrap();
    restore_base_backup(&repo, &base.id, &pg.data_dir(), owner).unwrap();
    pg.cluster.settings.insert(
        "restore_command".into(),
        format!(
            "{} restore {} {url} %f %p",
            bin.display(),
            keys_file.display()
        ),
    );
    pg.cluster
        .settings
        .insert("recovery_target_time".into(), t.clone());
    pg.cluster
        .settings
        .insert("recovery_target_action".into(), "promote".into());
    pg.init(&tls).unwrap();
    let signal = pg.data_dir().join("recovery.signal");
    std::fs::write(&signal, "").unwrap();
    chown_tree(&signal, owner);
    pg.start().unwrap();

    let mut c = pg.admin().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            Instant::now() < deadline,
            "recovery did not finish; server log:\n{}",
            std::fs::read_to_string(pg.latest_log()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&mut c, "a"), 100, "rows before the base backup");
    assert_eq!(
        count(&mut c, "b"),
        100,
        "rows committed after the base backup, before T"
    );
    assert_eq!(count(&mut c, "c"), 0, "rows committed after T = {t}");
    // Promoted: it takes writes on a new timeline.
    c.batch_execute("INSERT INTO public.visits (phase) VALUES ('d')")
        .unwrap();
}

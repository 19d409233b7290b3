//! Audit log benchmark: durable appends per second with 1, 8, 64, 256
//! and 1024 concurrent appenders, side by side with what a user would otherwise do
//! (JSON lines with an fdatasync per line; SQLite in WAL mode with
//! synchronous=FULL, one insert per transaction), and `verify` of a large log.
//!
//! cargo bench -p careplane-audit --bench audit -- [SECONDS per run] [ENTRIES to verify]
//! (defaults 3 and 1000000; AUDIT_BENCH_DIR chooses the file system, default the temp dir).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use careplane_audit::{
    verify, Actor, ActorKind, AuditLog, Event, Options, Outcome, SigningKey, Snapshot, Status,
};
use serde_json::json;

fn event(i: u64) -> Event {
    Event {
        actor: Actor {
            kind: ActorKind::User,
            id: format!("user{}@example.org", i % 17),
            auth: "oidc".into(),
            mfa: true,
            elevation: None,
        },
        action: "modules.install".into(),
        target: format!("odoo-env/tenant{}/production", i % 50),
        tenant: Some(format!("tenant{}", i % 50)),
        parameters: json!({"modules": ["base", "contacts", "stock"], "force": false, "attempt": i % 3}),
        result: Outcome {
            status: Status::Succeeded,
            message: None,
        },
        operation: Some(format!("op-{i:016x}")),
    }
}

/// Runs `threads` appenders calling `f` until `secs` elapse; returns appends/s.
fn run(threads: usize, secs: f64, f: impl Fn(u64) + Send + Sync + 'static) -> (u64, f64) {
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (f, stop, count) = (f.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut i = t as u64 * 1_000_000_000;
                while !stop.load(Ordering::Relaxed) {
                    f(i);
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let n = count.load(Ordering::Relaxed);
    (n, n as f64 / start.elapsed().as_secs_f64())
}

fn careplane(dir: &Path, threads: usize, secs: f64) -> (u64, f64) {
    let opts = Options {
        checkpoint_every: 100_000,
        ..Options::default()
    };
    let log = Arc::new(AuditLog::open_with(dir, SigningKey::from_bytes(&[1; 32]), opts).unwrap());
    let l = log.clone();
    let r = run(threads, secs, move |i| {
        l.append(event(i)).unwrap();
    });
    assert_eq!(log.size(), r.0, "every counted append is durable");
    r
}

/// `tasks` futures on a 2-worker Tokio runtime, each appending with
/// `append_async` until `secs` elapse (what an async server's request
/// handlers would do); returns appends/s.
fn careplane_async(dir: &Path, tasks: usize, secs: f64) -> (u64, f64) {
    let opts = Options {
        checkpoint_every: 100_000,
        ..Options::default()
    };
    let log = Arc::new(AuditLog::open_with(dir, SigningKey::from_bytes(&[1; 32]), opts).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (log, stop, count) = (log.clone(), stop.clone(), count.clone());
            rt.spawn(async move {
                let mut i = t as u64 * 1_000_000_000;
                while !stop.load(Ordering::Relaxed) {
                    log.append_async(event(i)).await.unwrap();
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for h in handles {
            h.await.unwrap();
        }
    });
    let n = count.load(Ordering::Relaxed);
    assert_eq!(log.size(), n, "every counted append is durable");
    (n, n as f64 / start.elapsed().as_secs_f64())
}

fn jsonl_fsync(dir: &Path, threads: usize, secs: f64) -> (u64, f64) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("events.jsonl"))
        .unwrap();
    let file = Arc::new(Mutex::new(file));
    run(threads, secs, move |i| {
        let mut line = serde_json::to_vec(&event(i)).unwrap();
        line.push(b'\n');
        let mut f = file.lock().unwrap();
        f.write_all(&line).unwrap();
        f.sync_data().unwrap();
    })
}

fn sqlite_wal(dir: &Path, threads: usize, secs: f64) -> (u64, f64) {
    let c = rusqlite::Connection::open(dir.join("audit.db")).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, \
         actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, tenant TEXT, body TEXT NOT NULL)",
    )
    .unwrap();
    let c = Arc::new(Mutex::new(c));
    run(threads, secs, move |i| {
        let e = event(i);
        let body = serde_json::to_string(&e).unwrap();
        let c = c.lock().unwrap();
        c.execute(
            "INSERT INTO events (time, actor, action, target, tenant, body) \
             VALUES (strftime('%Y-%m-%dT%H:%M:%fZ','now'), ?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![e.actor.id, e.action, e.target, e.tenant, body],
        )
        .unwrap();
    })
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = args.first().map_or(3.0, |s| s.parse().expect("SECONDS"));
    let verify_n: u64 = args
        .get(1)
        .map_or(1_000_000, |s| s.parse().expect("ENTRIES"));
    let base = std::env::var_os("AUDIT_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);

    println!("durable appends/s, {secs} s per run, {}", base.display());
    println!(
        "{:>9} {:>14} {:>16} {:>16} {:>10} {:>10}",
        "appenders", "careplane", "jsonl+fdatasync", "sqlite WAL FULL", "vs jsonl", "vs sqlite"
    );
    for threads in [1usize, 8, 64, 256, 1024] {
        let d = tempfile::tempdir_in(&base).unwrap();
        let (_, cp) = careplane(&d.path().join("audit"), threads, secs);
        let (_, jl) = jsonl_fsync(d.path(), threads, secs);
        let (_, sq) = sqlite_wal(d.path(), threads, secs);
        println!(
            "{threads:>9} {cp:>14.0} {jl:>16.0} {sq:>16.0} {:>9.1}x {:>9.1}x",
            cp / jl,
            cp / sq
        );
    }

    println!("\ndurable appends/s with append_async: N tasks on a 2-worker Tokio runtime");
    println!(
        "{:>9} {:>14} {:>20}",
        "tasks", "careplane", "vs jsonl (1 thread)"
    );
    let d = tempfile::tempdir_in(&base).unwrap();
    let (_, jl1) = jsonl_fsync(d.path(), 1, secs);
    for tasks in [64usize, 256, 1024, 4096] {
        let d = tempfile::tempdir_in(&base).unwrap();
        let (_, cp) = careplane_async(&d.path().join("audit"), tasks, secs);
        println!("{tasks:>9} {cp:>14.0} {:>19.1}x", cp / jl1);
    }

    // A log of verify_n entries, written through the API.
    let d = tempfile::tempdir_in(&base).unwrap();
    let dir = d.path().join("audit");
    let key = SigningKey::from_bytes(&[1; 32]);
    let opts = Options {
        checkpoint_every: 100_000,
        ..Options::default()
    };
    let log = Arc::new(AuditLog::open_with(&dir, key.clone(), opts).unwrap());
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..64)
        .map(|_| {
            let (log, next) = (log.clone(), next.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= verify_n {
                    break;
                }
                log.append(event(i)).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let build = t.elapsed().as_secs_f64();
    let log = Arc::try_unwrap(log).unwrap();
    log.close().unwrap();
    let bytes = std::fs::metadata(dir.join("entries.jsonl")).unwrap().len();
    println!(
        "\nbuilt a log of {verify_n} entries ({:.0} MB) with 64 appenders in {build:.2} s ({:.0} appends/s)",
        bytes as f64 / 1e6,
        verify_n as f64 / build
    );
    let t = Instant::now();
    let r = verify(&dir, &key.verifying_key(), None).unwrap();
    let v = t.elapsed().as_secs_f64();
    assert!(r.is_ok() && r.entries == verify_n, "{:?}", r.problems);
    let t = Instant::now();
    let s = Snapshot::load(&dir).unwrap();
    let load = t.elapsed().as_secs_f64();
    assert_eq!(s.size(), verify_n);
    let t = Instant::now();
    let out = std::process::Command::new("sha256sum")
        .arg(dir.join("entries.jsonl"))
        .output();
    let sha = t.elapsed().as_secs_f64();
    println!(
        "verify (chain, {} checkpoints, Merkle roots)  {v:.2} s",
        r.checkpoints_ok
    );
    println!("Snapshot::load (tree for proofs and queries)  {load:.2} s");
    if out.is_ok_and(|o| o.status.success()) {
        println!(
            "sha256sum of the file (reference)             {sha:.2} s   verify/sha256sum {:.2}x",
            v / sha
        );
    }
}

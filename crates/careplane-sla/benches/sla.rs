//! SLA storage and report benchmark, side by side in one run:
//!
//! - careplane: `Store::record` of E environments × 30 days × one result per minute (the
//!   server's ingest path), `flush` (journal append + fsync) after every 1,000 results,
//!   `compact` (month files rewritten atomically) once per simulated day and at the end, then
//!   every environment's monthly report (`month_timeline` + `month_latency` + `monthly_report`,
//!   and the JSON of them all) from a freshly opened store.
//! - baseline: what one would otherwise write: SQLite (WAL, synchronous=FULL so a commit is
//!   durable like a flush), one row per result with an index on (tenant, environment, probe,
//!   at), one transaction per 1,000 rows (a minute of results of a 1,000-environment
//!   platform), and the report's minute fold as a `GROUP BY` query per environment feeding
//!   the same accounting code (no latency percentiles, which favours the baseline).
//!
//! cargo bench -p careplane-sla --bench sla -- [ENVS] [BASELINE_ENVS]   (defaults 1000 100)
//! SLA_BENCH_DIR chooses the file system (default the temp dir).

use std::path::Path;
use std::time::Instant;

use careplane_sla::account::{Observation, Timeline};
use careplane_sla::calendar::{
    zone, CalendarEntry, EntryKind, Month, MonthSpan, Schedule, Weekday,
};
use careplane_sla::model::*;
use careplane_sla::{
    month_latency, month_timeline, monthly_report, render_json, Percent, ReportInput, SeriesKey,
    Store,
};
use jiff::civil::time;
use jiff::Timestamp;

fn slo() -> Slo {
    let p = |s: &str| Percent::parse(s).unwrap();
    Slo {
        tier: "gold".into(),
        objective: p("99.9"),
        bad_minute: BadMinuteRule {
            probe: "journey".into(),
            consecutive_failures: 3,
        },
        unknown: UnknownPolicy::Down,
        support_hours: Default::default(),
        targets: vec![],
        severity: Default::default(),
        credits: vec![
            CreditTier {
                below: p("99.9"),
                credit: p("10"),
            },
            CreditTier {
                below: p("99"),
                credit: p("25"),
            },
        ],
        escalation: vec![],
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// Each environment has three outages of 1-40 minutes and a 20-minute gap at
/// environment-specific places; latency 80-400 ms.
fn outcome(env: u64, minute: u32) -> Option<(Outcome, u32)> {
    let lat = 80 + (mix(env * 1_000_003 + u64::from(minute)) % 320) as u32;
    for k in 0..3 {
        let h = mix(env * 7 + k);
        let (s, len) = ((h % 43_000) as u32, 1 + ((h >> 20) % 40) as u32);
        if (s..s + len).contains(&minute) {
            return Some((Outcome::Down, lat));
        }
    }
    let g = (mix(env * 13 + 5) % 43_000) as u32;
    if (g..g + 20).contains(&minute) {
        return None;
    }
    Some((Outcome::Up, lat))
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn env_name(e: u64) -> (String, String) {
    (format!("tenant{e:04}"), "production".to_string())
}

fn calendar() -> Vec<CalendarEntry> {
    vec![CalendarEntry {
        id: "sunday".into(),
        kind: EntryKind::Maintenance,
        approved: true,
        schedule: Schedule::Weekly {
            days: vec![Weekday::Sunday],
            start: time(1, 0, 0, 0),
            end: time(3, 0, 0, 0),
        },
        reason: None,
    }]
}

struct Figures {
    ingest_s: f64,
    results: u64,
    bytes: u64,
    report_s: f64,
    availability_sum: u64,
}

fn careplane(root: &Path, envs: u64, span: &MonthSpan) -> Figures {
    let dir = root.join("careplane");
    let mut store = Store::open(&dir).unwrap();
    let ids: Vec<_> = (0..envs)
        .map(|e| {
            let (t, env) = env_name(e);
            store.series(&SeriesKey::new(&t, &env, "journey")).unwrap()
        })
        .collect();
    let started = Instant::now();
    let mut results = 0u64;
    let mut files = 0;
    let mut compacting = std::time::Duration::ZERO;
    for minute in 0..span.minutes {
        let at =
            Timestamp::from_second(span.start.as_second() + 60 * i64::from(minute) + 2).unwrap();
        for (e, &id) in ids.iter().enumerate() {
            if let Some((o, lat)) = outcome(e as u64, minute) {
                store.record(id, at, o, lat).unwrap();
                results += 1;
                if results.is_multiple_of(1000) {
                    store.flush().unwrap();
                }
            }
        }
        if minute % 1440 == 1439 {
            let t = Instant::now();
            files += store.compact().unwrap();
            compacting += t.elapsed();
        }
    }
    store.flush().unwrap();
    let t = Instant::now();
    files += store.compact().unwrap();
    compacting += t.elapsed();
    let compact_s = compacting.as_secs_f64();
    let ingest_s = started.elapsed().as_secs_f64() - compact_s;
    drop(store);
    let bytes = dir_bytes(&dir);
    println!("careplane-sla: daily compactions wrote {files} month files in {compact_s:.2} s (two fsyncs each; a real day has one compaction, the benchmark has 30 back to back)");

    let started = Instant::now();
    let mut store = Store::open(&dir).unwrap();
    let (slo, cal) = (slo(), calendar());
    let now = span.end;
    let mut reports = Vec::with_capacity(envs as usize);
    for e in 0..envs {
        let (t, env) = env_name(e);
        let key = SeriesKey::new(&t, &env, "journey");
        let timeline = month_timeline(&mut store, &key, span, &slo).unwrap();
        let hist = month_latency(&mut store, &key, span).unwrap();
        reports.push(
            monthly_report(&ReportInput {
                tenant: &t,
                environment: &env,
                environment_kind: EnvironmentKind::Production,
                time_zone: "Europe/Berlin",
                month: span.month,
                slo: &slo,
                calendar: &cal,
                timeline: &timeline,
                incidents: &[],
                latency: Some(&hist),
                monthly_fee_cents: Some(100_000),
                now,
            })
            .unwrap(),
        );
    }
    let json = render_json(&reports);
    let report_s = started.elapsed().as_secs_f64();
    eprintln!("careplane-sla: {} bytes of JSON reports", json.len());
    let availability_sum = reports
        .iter()
        .map(|r| u64::from(r.availability.map_or(0, |p| p.ppm())))
        .sum();
    Figures {
        ingest_s,
        results,
        bytes,
        report_s,
        availability_sum,
    }
}

fn baseline(root: &Path, envs: u64, span: &MonthSpan) -> Figures {
    let path = root.join("baseline.sqlite");
    let mut db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE results(tenant TEXT NOT NULL, environment TEXT NOT NULL, probe TEXT NOT NULL,
                              at INTEGER NOT NULL, outcome INTEGER NOT NULL, latency_ms INTEGER NOT NULL);
         CREATE INDEX results_series ON results(tenant, environment, probe, at);",
    )
    .unwrap();
    let names: Vec<_> = (0..envs).map(env_name).collect();
    let started = Instant::now();
    let mut results = 0u64;
    let mut tx = db.transaction().unwrap();
    for minute in 0..span.minutes {
        let at = span.start.as_second() + 60 * i64::from(minute) + 2;
        for (e, (t, env)) in names.iter().enumerate() {
            if let Some((o, lat)) = outcome(e as u64, minute) {
                let code = match o {
                    Outcome::Up => 2,
                    Outcome::Down => 3,
                    Outcome::Unknown => 1,
                };
                tx.prepare_cached("INSERT INTO results VALUES (?1, ?2, 'journey', ?3, ?4, ?5)")
                    .unwrap()
                    .execute(rusqlite::params![t, env, at, code, lat])
                    .unwrap();
                results += 1;
                if results.is_multiple_of(1000) {
                    tx.commit().unwrap();
                    tx = db.transaction().unwrap();
                }
            }
        }
    }
    tx.commit().unwrap();
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let ingest_s = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).unwrap().len();

    let started = Instant::now();
    let (slo, cal) = (slo(), calendar());
    let lead = slo.bad_minute.consecutive_failures - 1;
    let from = span.start.as_second() - 60 * i64::from(lead);
    let minutes = span.minutes + 2 * lead;
    let mut availability_sum = 0u64;
    let mut reports = Vec::new();
    let mut q = db
        .prepare(
            "SELECT at / 60, MAX(outcome) FROM results WHERE tenant = ?1 AND environment = ?2 AND probe = 'journey'
             AND at >= ?3 AND at < ?4 GROUP BY at / 60",
        )
        .unwrap();
    for (t, env) in &names {
        let mut timeline = Timeline::empty(Timestamp::from_second(from).unwrap(), minutes);
        let rows = q
            .query_map(
                rusqlite::params![t, env, from, from + 60 * i64::from(minutes)],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, u8>(1)?)),
            )
            .unwrap();
        for row in rows {
            let (m, code) = row.unwrap();
            timeline.record(
                Timestamp::from_second(m * 60).unwrap(),
                Observation::from_code(code),
            );
        }
        let r = monthly_report(&ReportInput {
            tenant: t,
            environment: env,
            environment_kind: EnvironmentKind::Production,
            time_zone: "Europe/Berlin",
            month: span.month,
            slo: &slo,
            calendar: &cal,
            timeline: &timeline,
            incidents: &[],
            latency: None,
            monthly_fee_cents: Some(100_000),
            now: span.end,
        })
        .unwrap();
        availability_sum += u64::from(r.availability.map_or(0, |p| p.ppm()));
        reports.push(r);
    }
    let _ = render_json(&reports);
    let report_s = started.elapsed().as_secs_f64();
    Figures {
        ingest_s,
        results,
        bytes,
        report_s,
        availability_sum,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let envs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let base_envs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let root = match std::env::var_os("SLA_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    // June 2026 in Berlin: 30 days, 43,200 minutes, read from two UTC months.
    let span = MonthSpan::new(
        Month::parse("2026-06").unwrap(),
        &zone("Europe/Berlin", "bench").unwrap(),
    )
    .unwrap();
    println!(
        "SLA storage and monthly reports: 30 days of 1-minute results, Europe/Berlin, June 2026"
    );

    let c = careplane(root.path(), envs, &span);
    let b = baseline(root.path(), base_envs, &span);
    // Same outcomes for the first BASELINE_ENVS environments, so both must agree on them.
    let check = careplane(&root.path().join("check"), base_envs, &span);
    assert_eq!(
        check.availability_sum, b.availability_sum,
        "careplane and the SQLite baseline disagree"
    );

    let per = |f: &Figures, envs: u64| {
        (
            f.results as f64 / f.ingest_s,
            f.bytes as f64 / envs as f64,
            f.report_s / envs as f64,
        )
    };
    let (ci, cb, cr) = per(&c, envs);
    let (bi, bb, br) = per(&b, base_envs);
    println!("| | environments | results | ingest, durable every 1,000 results | results/s | bytes on disk | bytes per env-month | all monthly reports | per report |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| careplane-sla store | {envs} | {} | {:.2} s | {:.0} | {} | {:.0} | {:.3} s | {:.1} µs |",
        c.results,
        c.ingest_s,
        ci,
        c.bytes,
        cb,
        c.report_s,
        cr * 1e6
    );
    println!(
        "| SQLite, one row per result | {base_envs} | {} | {:.2} s | {:.0} | {} | {:.0} | {:.3} s | {:.1} µs |",
        b.results, b.ingest_s, bi, b.bytes, bb, b.report_s, br * 1e6
    );
    println!("ratios careplane vs SQLite: ingest {:.1}x faster, {:.0}x fewer bytes per env-month, reports {:.1}x faster per environment", ci / bi, bb / cb, br / cr);
    println!("(both computed the same availability for the first {base_envs} environments)");
}

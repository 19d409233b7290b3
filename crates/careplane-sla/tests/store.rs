//! The result store: what is flushed survives a restart, months are read across UTC month
//! edges, corrupt files and unsafe names are refused with their place named.

use careplane_sla::account::Observation;
use careplane_sla::calendar::Month;
use careplane_sla::model::{Outcome, ProbeResult};
use careplane_sla::{Error, SeriesKey, Store};
use jiff::Timestamp;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn at(base: Timestamp, minute: i64) -> Timestamp {
    Timestamp::from_second(base.as_second() + 60 * minute + 5).unwrap()
}

#[test]
fn flushed_results_survive_a_restart_and_the_month_continues() {
    let dir = tempfile::tempdir().unwrap();
    let key = SeriesKey::new("stmarys", "production", "journey");
    let base = ts("2026-05-31T22:00:00Z"); // two hours before the UTC month ends
    {
        let mut s = Store::open(dir.path()).unwrap();
        let id = s.series(&key).unwrap();
        for m in 0..180 {
            let o = if (100..110).contains(&m) {
                Outcome::Down
            } else {
                Outcome::Up
            };
            s.record(id, at(base, m), o, 100 + m as u32).unwrap();
        }
        assert_eq!(s.compact().unwrap(), 2, "May and June files");
        // Recorded after the last flush: lost by a crash, which is why the server
        // acknowledges only flushed results.
        s.record(id, at(base, 200), Outcome::Down, 1).unwrap();
    }
    let mut s = Store::open(dir.path()).unwrap();
    let t = s.timeline(&key, base, 240).unwrap();
    assert_eq!(t.obs[0], Observation::Up);
    assert_eq!(t.obs[100..110], [Observation::Failed; 10]);
    assert_eq!(t.obs[179], Observation::Up);
    assert!(t.obs[180..].iter().all(|&o| o == Observation::NoData));
    // The server restarts and goes on recording in the same month.
    s.ingest(&ProbeResult {
        probe: "journey".into(),
        tenant: "stmarys".into(),
        environment: "production".into(),
        at: at(base, 185),
        outcome: Outcome::Unknown,
        latency_ms: 0,
        steps: vec![],
    })
    .unwrap();
    s.flush().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    let t = s.timeline(&key, base, 240).unwrap();
    assert_eq!(t.obs[100], Observation::Failed);
    assert_eq!(t.obs[185], Observation::Unknown);
    assert_eq!(t.obs[184], Observation::NoData);
    let h = s
        .histogram(
            &key,
            Month::parse("2026-05").unwrap(),
            Month::parse("2026-06").unwrap(),
        )
        .unwrap();
    assert_eq!(h.count(), 180, "unknown results carry no latency");
    assert!(h.quantile_permille(1000).unwrap() >= 279);
    assert_eq!(s.keys().unwrap(), vec![key]);
}

#[test]
fn several_results_in_one_minute_merge_failure_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    let key = SeriesKey::new("t", "e", "p");
    let id = s.series(&key).unwrap();
    let base = ts("2026-07-01T00:00:00Z");
    s.record(id, at(base, 0), Outcome::Up, 1).unwrap();
    s.record(id, at(base, 0), Outcome::Down, 1).unwrap();
    s.record(id, at(base, 0), Outcome::Up, 1).unwrap();
    s.record(id, at(base, 1), Outcome::Unknown, 1).unwrap();
    s.record(id, at(base, 1), Outcome::Up, 1).unwrap();
    s.record(id, at(base, 2), Outcome::Unknown, 1).unwrap();
    let t = s.timeline(&key, base, 4).unwrap();
    assert_eq!(
        t.obs,
        [
            Observation::Failed,
            Observation::Up,
            Observation::Unknown,
            Observation::NoData
        ]
    );
}

#[test]
fn a_month_of_one_minute_results_is_a_few_bytes_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    let key = SeriesKey::new("t", "e", "p");
    let id = s.series(&key).unwrap();
    let base = ts("2026-06-01T00:00:00Z");
    for m in 0..30 * 1440 {
        let o = if m % 5000 < 3 {
            Outcome::Down
        } else {
            Outcome::Up
        };
        s.record(id, at(base, m), o, 80 + (m % 50) as u32).unwrap();
    }
    s.compact().unwrap();
    let size = std::fs::metadata(dir.path().join("t/e/p/2026-06.cpm"))
        .unwrap()
        .len();
    // 9 outages → 19 runs, a histogram of ~20 buckets, names and a checksum.
    assert!(size < 150, "{size} bytes");
}

#[test]
fn a_corrupt_file_is_refused_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let key = SeriesKey::new("t", "e", "p");
    let base = ts("2026-06-01T00:00:00Z");
    {
        let mut s = Store::open(dir.path()).unwrap();
        let id = s.series(&key).unwrap();
        s.record(id, base, Outcome::Up, 5).unwrap();
        s.compact().unwrap();
    }
    let path = dir.path().join("t/e/p/2026-06.cpm");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 12] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    let e = s.timeline(&key, base, 10).unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { path: p, .. } if p == &path),
        "{e}"
    );
    assert!(
        e.to_string().contains("2026-06.cpm") && e.to_string().contains("checksum"),
        "{e}"
    );
    // Recording into it is refused too, rather than overwriting what is there.
    let id = s.series(&key).unwrap();
    assert!(s.record(id, base, Outcome::Up, 5).is_err());

    std::fs::write(&path, b"hello").unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    let e = s.timeline(&key, base, 10).unwrap_err().to_string();
    assert!(e.contains("bad magic") && e.contains("byte 0"), "{e}");
}

#[test]
fn names_that_are_not_one_path_component_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    for (t, e, p, field) in [
        ("../x", "e", "p", "tenant"),
        ("t", "a/b", "p", "environment"),
        ("t", "e", ".hidden", "probe"),
        ("", "e", "p", "tenant"),
    ] {
        let err = s.series(&SeriesKey::new(t, e, p)).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn flushed_results_survive_a_kill_without_compaction_and_a_torn_batch_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let key = SeriesKey::new("stmarys", "production", "journey");
    let base = ts("2026-06-30T23:58:00Z");
    {
        let mut s = Store::open(dir.path()).unwrap();
        let id = s.series(&key).unwrap();
        for m in 0..4 {
            s.record(id, at(base, m), Outcome::Down, 10).unwrap();
        }
        s.flush().unwrap(); // acknowledged
        s.record(id, at(base, 4), Outcome::Up, 10).unwrap(); // never flushed
                                                             // The process dies here (no compaction, no destructor work): forget the store.
        std::mem::forget(s);
    }
    // A batch torn by the crash at the journal's end.
    let jpath = dir.path().join(".journal");
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(&jpath)
        .unwrap();
    std::io::Write::write_all(&mut j, &[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(j);
    let mut s = Store::open(dir.path()).unwrap();
    let t = s.timeline(&key, base, 5).unwrap();
    assert_eq!(
        t.obs,
        [
            Observation::Failed,
            Observation::Failed,
            Observation::Failed,
            Observation::Failed,
            Observation::NoData
        ]
    );
    // Opening compacted the journal into the month files (June and July) and emptied it.
    assert_eq!(std::fs::metadata(&jpath).unwrap().len(), 0);
    assert!(dir
        .path()
        .join("stmarys/production/journey/2026-07.cpm")
        .exists());
    // And recording goes on, journaled again from scratch.
    let id = s.series(&key).unwrap();
    s.record(id, at(base, 4), Outcome::Up, 10).unwrap();
    s.flush().unwrap();
    std::mem::forget(s);
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(s.timeline(&key, base, 5).unwrap().obs[4], Observation::Up);
}

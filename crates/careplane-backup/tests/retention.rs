//! The retention rule, checked against an independent calendar (days from
//! the epoch with careplane-sys's civil conversion; ISO weeks from the
//! week's Thursday) over times that cluster at month ends, leap days and
//! ISO-week year boundaries.

use std::collections::BTreeMap;

use careplane_backup::retention::{select, Reason, RetentionPolicy};
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

fn civil(secs: i64) -> (i64, u32, u32) {
    careplane_sys::civil_from_days(secs.div_euclid(86_400))
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Howard Hinnant's algorithm, the inverse of civil_from_days.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn iso_week(secs: i64) -> (i64, i64) {
    let days = secs.div_euclid(86_400);
    let weekday = (days + 3).rem_euclid(7); // Monday = 0; 1970-01-01 was a Thursday
    let thursday = days - weekday + 3;
    let (year, _, _) = careplane_sys::civil_from_days(thursday);
    (year, (thursday - days_from_civil(year, 1, 1)) / 7 + 1)
}

fn bucket_of(reason: Reason, secs: i64) -> (i64, i64, i64) {
    let (y, m, d) = civil(secs);
    match reason {
        Reason::Daily => (y, m as i64, d as i64),
        Reason::Weekly => {
            let (wy, w) = iso_week(secs);
            (wy, w, 0)
        }
        Reason::Monthly => (y, m as i64, 0),
        Reason::Yearly => (y, 0, 0),
        _ => unreachable!(),
    }
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

/// Seconds near interesting dates: month ends, Feb 28/29 (2023, 2024, 2100
/// is not in range), new year across ISO week 53 (2020) and week 1.
fn interesting_time() -> impl Strategy<Value = i64> {
    let days = prop_oneof![
        Just(days_from_civil(2024, 2, 28)),
        Just(days_from_civil(2024, 2, 29)),
        Just(days_from_civil(2023, 2, 28)),
        Just(days_from_civil(2020, 12, 31)),
        Just(days_from_civil(2021, 1, 3)),
        Just(days_from_civil(2024, 12, 30)),
        Just(days_from_civil(2025, 1, 31)),
        Just(days_from_civil(2025, 4, 30)),
        (days_from_civil(2019, 1, 1)..days_from_civil(2026, 12, 31)),
    ];
    (days, -2i64..3, 0i64..86_400).prop_map(|(d, off, s)| (d + off) * 86_400 + s)
}

fn policy() -> impl Strategy<Value = RetentionPolicy> {
    (
        0u32..4,
        0u32..8,
        0u32..6,
        0u32..14,
        0u32..4,
        proptest::option::of(0i64..40 * 86_400),
    )
        .prop_map(
            |(keep_last, daily, weekly, monthly, yearly, w)| RetentionPolicy {
                keep_last,
                daily,
                weekly,
                monthly,
                yearly,
                pitr_window: w.map(SignedDuration::from_secs),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn selection_matches_the_calendar(
        times in proptest::collection::vec(interesting_time(), 0..60),
        policy in policy(),
        now_offset in -86_400i64..200 * 86_400,
    ) {
        let max = times.iter().copied().max().unwrap_or(0);
        let now = max + now_offset;
        let stamps: Vec<Timestamp> = times.iter().map(|&s| ts(s)).collect();
        let got = select(&stamps, &policy, ts(now));
        prop_assert_eq!(got.len(), times.len());

        // Newest first, ties in input order.
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(a.cmp(&b)));

        // keep_last: exactly the K newest carry Last.
        for (rank, &i) in order.iter().enumerate() {
            prop_assert_eq!(got[i].contains(&Reason::Last), rank < policy.keep_last as usize);
        }

        // GFS: exactly the newest backup of each of the N newest buckets.
        for (reason, n) in [
            (Reason::Daily, policy.daily),
            (Reason::Weekly, policy.weekly),
            (Reason::Monthly, policy.monthly),
            (Reason::Yearly, policy.yearly),
        ] {
            let mut newest: BTreeMap<(i64, i64, i64), usize> = BTreeMap::new();
            for &i in order.iter().rev() {
                newest.insert(bucket_of(reason, times[i]), i); // last insert = newest
            }
            let chosen: Vec<usize> = newest.values().rev().take(n as usize).copied().collect();
            for i in 0..times.len() {
                prop_assert_eq!(
                    got[i].contains(&reason),
                    chosen.contains(&i),
                    "{:?} of {} ({:?})", reason, times[i], civil(times[i])
                );
            }
        }

        // PITR: everything after the cutoff, and the newest at or before it.
        if let Some(w) = policy.pitr_window {
            let cutoff = now - w.as_secs();
            let base = order.iter().copied().find(|&i| times[i] <= cutoff);
            for i in 0..times.len() {
                let want = times[i] > cutoff || Some(i) == base;
                prop_assert_eq!(got[i].contains(&Reason::Pitr), want);
            }
        }

        // Backups from the future are never pruned.
        for i in 0..times.len() {
            prop_assert_eq!(got[i].contains(&Reason::Future), times[i] > now);
        }

        // Pruning is stable: selecting again over what is kept keeps all of it.
        let kept: Vec<Timestamp> =
            (0..times.len()).filter(|&i| !got[i].is_empty()).map(|i| stamps[i]).collect();
        let again = select(&kept, &policy, ts(now));
        prop_assert!(again.iter().all(|r| !r.is_empty()), "second pass would delete more");
    }
}

fn at(y: i16, m: i8, d: i8, h: i8, min: i8, s: i8) -> Timestamp {
    jiff::civil::date(y, m, d)
        .at(h, min, s, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
}

#[test]
fn calendar_edges() {
    let monthly = RetentionPolicy {
        monthly: 3,
        ..Default::default()
    };
    // Jan 31 23:59:59 and Feb 1 00:00:00 are two months; Feb 29 of a leap
    // year is February's newest.
    let times = [
        at(2024, 1, 31, 23, 59, 59),
        at(2024, 2, 1, 0, 0, 0),
        at(2024, 2, 29, 12, 0, 0),
        at(2024, 3, 1, 0, 0, 1),
        at(2024, 3, 31, 23, 0, 0),
    ];
    let r = select(&times, &monthly, at(2024, 4, 1, 0, 0, 0));
    let kept: Vec<bool> = r.iter().map(|r| !r.is_empty()).collect();
    assert_eq!(kept, [true, false, true, false, true]);

    // 2020-12-31 and 2021-01-03 are both in ISO week 2020-W53; 2021-01-04 is W01.
    let weekly = RetentionPolicy {
        weekly: 2,
        ..Default::default()
    };
    let times = [
        at(2020, 12, 27, 10, 0, 0), // W52
        at(2020, 12, 31, 10, 0, 0),
        at(2021, 1, 3, 10, 0, 0),
        at(2021, 1, 4, 10, 0, 0),
    ];
    let r = select(&times, &weekly, at(2021, 1, 5, 0, 0, 0));
    let kept: Vec<bool> = r.iter().map(|r| !r.is_empty()).collect();
    assert_eq!(kept, [false, false, true, true]);

    // Nothing configured keeps nothing; a PITR window keeps its base.
    assert!(
        select(&times, &RetentionPolicy::default(), at(2021, 2, 1, 0, 0, 0))
            .iter()
            .all(Vec::is_empty)
    );
    let pitr = RetentionPolicy {
        pitr_window: Some(SignedDuration::from_hours(24 * 2)),
        ..Default::default()
    };
    let r = select(&times, &pitr, at(2021, 1, 5, 0, 0, 0));
    let kept: Vec<bool> = r.iter().map(|r| !r.is_empty()).collect();
    // Jan 3 10:00 and Jan 4 are inside; Dec 31 is the base recovery to the
    // window's start (Jan 3 00:00) replays from.
    assert_eq!(kept, [false, true, true, true]);
}

//! Properties over random months: every minute is counted exactly once, and availability,
//! credits and the store agree with a direct computation.

use careplane_sla::account::{
    account_month, bad_minutes, credit_owed, MinuteClass, Observation, Timeline,
};
use careplane_sla::calendar::{
    zone, CalendarEntry, EntryKind, Month, MonthSpan, Schedule, Weekday,
};
use careplane_sla::model::*;
use careplane_sla::{Percent, SeriesKey, Store};
use jiff::civil::Time;
use jiff::Timestamp;
use proptest::prelude::*;

fn slo(n: u32, unknown: UnknownPolicy) -> Slo {
    Slo {
        tier: "t".into(),
        objective: Percent::parse("99.5").unwrap(),
        bad_minute: BadMinuteRule {
            probe: "j".into(),
            consecutive_failures: n,
        },
        unknown,
        support_hours: Default::default(),
        targets: vec![],
        severity: Default::default(),
        credits: vec![],
        escalation: vec![],
    }
}

const ZONES: [&str; 5] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
];
const DAYS: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];

/// Random outage runs over the month (and its edges) as (start minute, length, observation).
fn runs() -> impl Strategy<Value = Vec<(u32, u32, u8)>> {
    prop::collection::vec((0u32..46_000, 1u32..600, 0u8..4), 0..40)
}

fn windows() -> impl Strategy<Value = Vec<(u8, u8, u8, u8, u8, bool)>> {
    prop::collection::vec(
        (0u8..7, 0u8..24, 0u8..4, 0u8..24, 0u8..4, any::<bool>()),
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_minute_is_counted_once(
        zi in 0usize..ZONES.len(), year in 2024i16..2029, m in 1i8..=12, n in 1u32..6,
        excluded_policy in any::<bool>(), rs in runs(), ws in windows(),
    ) {
        let tz = zone(ZONES[zi], "z").unwrap();
        let span = MonthSpan::new(Month::new(year, m).unwrap(), &tz).unwrap();
        let lead = n - 1;
        let start = Timestamp::from_second(span.start.as_second() - 60 * i64::from(lead)).unwrap();
        let mut t = Timeline::empty(start, span.minutes + 2 * lead);
        // Mostly up, with random runs of each observation painted over.
        t.obs.iter_mut().for_each(|o| *o = Observation::Up);
        for (s, len, o) in rs {
            for i in s..(s + len).min(t.obs.len() as u32) {
                t.obs[i as usize] = Observation::from_code(o);
            }
        }
        let calendar: Vec<CalendarEntry> = ws.iter().enumerate().map(|(k, &(d, sh, sq, eh, eq, approved))| CalendarEntry {
            id: format!("w{k}"),
            kind: EntryKind::Maintenance,
            approved,
            schedule: Schedule::Weekly { days: vec![DAYS[d as usize]], start: Time::new(sh as i8, (sq * 15) as i8, 0, 0).unwrap(), end: Time::new(eh as i8, (eq * 15) as i8, 0, 0).unwrap() },
            reason: None,
        }).collect();
        let policy = if excluded_policy { UnknownPolicy::Excluded } else { UnknownPolicy::Down };
        let a = account_month(&t, &span, &calendar, &slo(n, policy)).unwrap();
        prop_assert_eq!(a.up + a.down + a.excluded + a.unknown, span.minutes);
        prop_assert_eq!(a.classes.len() as u32, span.minutes);
        // Recount from the classes, and from first principles.
        let count = |c| a.classes.iter().filter(|&&x| x == c).count() as u32;
        prop_assert_eq!((count(MinuteClass::Up), count(MinuteClass::Down), count(MinuteClass::Excluded), count(MinuteClass::Unknown)), (a.up, a.down, a.excluded, a.unknown));
        let bad = bad_minutes(&t.obs, n);
        for (i, c) in a.classes.iter().enumerate() {
            let k = i + lead as usize;
            match c {
                MinuteClass::Down => prop_assert!(bad[k]),
                MinuteClass::Up => prop_assert!(!bad[k] && matches!(t.obs[k], Observation::Up | Observation::Failed)),
                MinuteClass::Unknown => prop_assert!(matches!(t.obs[k], Observation::Unknown | Observation::NoData)),
                MinuteClass::Excluded => {}
            }
        }
        // Unknown never helps availability: counting it as down can only lower it.
        let other = account_month(&t, &span, &calendar, &slo(n, if excluded_policy { UnknownPolicy::Down } else { UnknownPolicy::Excluded })).unwrap();
        let (down_policy, excl_policy) = if excluded_policy { (&other, &a) } else { (&a, &other) };
        if let (Some(d), Some(e)) = (down_policy.availability(), excl_policy.availability()) {
            prop_assert!(d <= e);
        }
        // Runs cover the month exactly.
        prop_assert_eq!(a.runs().iter().map(|r| r.1).sum::<u32>(), span.minutes);
    }

    #[test]
    fn credits_match_a_direct_comparison(good in 0u64..50_000, extra in 0u64..50_000, below in 1u32..=1_000_000) {
        let valid = good + extra;
        let table = [CreditTier { below: Percent::from_ppm(below).unwrap(), credit: Percent::parse("10").unwrap() }];
        let owed = credit_owed(good, valid, &table, None).is_some();
        // good/valid < below/1e6, in exact rationals.
        let expected = valid > 0 && (good as u128) * 1_000_000 < (below as u128) * (valid as u128);
        prop_assert_eq!(owed, expected);
    }

    #[test]
    fn the_store_gives_back_what_it_was_given(obs in prop::collection::vec(0u8..4, 1..3000), offset in 0i64..90_000) {
        let dir = tempfile::tempdir().unwrap();
        let key = SeriesKey::new("t", "e", "p");
        // Start somewhere in the last two days of June so the series crosses into July.
        let start = Timestamp::from_second(1_782_604_800 + offset * 60 - 2 * 86_400).unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            let id = s.series(&key).unwrap();
            for (i, &o) in obs.iter().enumerate() {
                let at = Timestamp::from_second(start.as_second() + 60 * i as i64 + 30).unwrap();
                match o {
                    0 => {}
                    1 => s.record(id, at, Outcome::Unknown, 0).unwrap(),
                    2 => s.record(id, at, Outcome::Up, 10).unwrap(),
                    _ => s.record(id, at, Outcome::Down, 10).unwrap(),
                }
            }
            s.flush().unwrap();
            std::mem::forget(s);
        }
        let mut s = Store::open(dir.path()).unwrap();
        let t = s.timeline(&key, start, obs.len() as u32).unwrap();
        let expected: Vec<Observation> = obs.iter().map(|&o| Observation::from_code(o)).collect();
        prop_assert_eq!(t.obs, expected);
    }
}

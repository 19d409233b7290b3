//! Monthly accounting on a simulated clock: month lengths, daylight saving, windows, gaps,
//! credits at their exact boundaries.

use careplane_sla::account::{
    account_month, bad_minutes, credit_owed, MinuteClass, Observation, Timeline,
};
use careplane_sla::calendar::{
    excluded_minutes, freeze_at, maintenance_at, zone, CalendarEntry, EntryKind, Month, MonthSpan,
    Schedule, Weekday,
};
use careplane_sla::model::{BadMinuteRule, CreditTier, Outcome, ProbeResult, Slo, UnknownPolicy};
use careplane_sla::{Error, Percent};
use jiff::civil::{date, time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

fn pct(s: &str) -> Percent {
    Percent::parse(s).unwrap()
}

fn slo(n: u32, unknown: UnknownPolicy) -> Slo {
    Slo {
        tier: "gold".into(),
        objective: pct("99.9"),
        bad_minute: BadMinuteRule {
            probe: "journey".into(),
            consecutive_failures: n,
        },
        unknown,
        support_hours: Default::default(),
        targets: vec![],
        severity: Default::default(),
        credits: vec![
            CreditTier {
                below: pct("99.9"),
                credit: pct("10"),
            },
            CreditTier {
                below: pct("99"),
                credit: pct("25"),
            },
            CreditTier {
                below: pct("95"),
                credit: pct("50"),
            },
        ],
        escalation: vec![],
    }
}

fn span(m: &str, tz: &str) -> MonthSpan {
    MonthSpan::new(Month::parse(m).unwrap(), &zone(tz, "test").unwrap()).unwrap()
}

/// A simulated prober: one result per minute from `from` to `to` with outcome `f(minute start)`.
fn probe(
    from: Timestamp,
    to: Timestamp,
    f: impl Fn(Timestamp) -> Option<Outcome>,
) -> Vec<ProbeResult> {
    let mut out = Vec::new();
    let mut t = from.as_second();
    while t < to.as_second() {
        let at = Timestamp::from_second(t + 7).unwrap(); // probes run a few seconds into the minute
        if let Some(outcome) = f(at) {
            out.push(ProbeResult {
                probe: "journey".into(),
                tenant: "stmarys".into(),
                environment: "production".into(),
                at,
                outcome,
                latency_ms: 120,
                steps: vec![],
            });
        }
        t += 60;
    }
    out
}

/// The timeline the report reads: the month plus a day either side.
fn timeline(s: &MonthSpan, results: &[ProbeResult]) -> Timeline {
    let from = Timestamp::from_second(s.start.as_second() - 86_400).unwrap();
    Timeline::from_results(results, "journey", from, s.minutes + 2 * 1440)
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn weekly(id: &str, days: &[Weekday], start: (i8, i8), end: (i8, i8)) -> CalendarEntry {
    CalendarEntry {
        id: id.into(),
        kind: EntryKind::Maintenance,
        approved: true,
        schedule: Schedule::Weekly {
            days: days.to_vec(),
            start: time(start.0, start.1, 0, 0),
            end: time(end.0, end.1, 0, 0),
        },
        reason: None,
    }
}

fn once(
    id: &str,
    start: jiff::civil::DateTime,
    end: jiff::civil::DateTime,
    approved: bool,
) -> CalendarEntry {
    CalendarEntry {
        id: id.into(),
        kind: EntryKind::Maintenance,
        approved,
        schedule: Schedule::Once { start, end },
        reason: None,
    }
}

#[test]
fn months_of_28_29_30_31_days_have_their_minutes_all_up() {
    for (m, days) in [
        ("2026-02", 28),
        ("2028-02", 29),
        ("2026-04", 30),
        ("2026-01", 31),
        ("2026-12", 31),
    ] {
        let s = span(m, "UTC");
        assert_eq!(s.minutes, days * 1440, "{m}");
        let r = probe(s.start, s.end, |_| Some(Outcome::Up));
        let a = account_month(&timeline(&s, &r), &s, &[], &slo(3, UnknownPolicy::Down)).unwrap();
        assert_eq!(
            (a.up, a.down, a.excluded, a.unknown),
            (days * 1440, 0, 0, 0),
            "{m}"
        );
        assert_eq!(a.availability(), Some(pct("100")));
        assert_eq!(a.met_objective(), Some(true));
        assert_eq!(
            credit_owed(
                a.good(),
                a.valid(),
                &slo(3, UnknownPolicy::Down).credits,
                None
            ),
            None
        );
    }
}

#[test]
fn berlin_months_with_a_dst_change_have_an_hour_less_or_more() {
    // 2026: last Sunday of March is the 29th (23-hour day), of October the 25th (25 hours).
    let march = span("2026-03", "Europe/Berlin");
    assert_eq!(march.minutes, 31 * 1440 - 60);
    assert_eq!(march.start, ts("2026-02-28T23:00:00Z"));
    assert_eq!(march.end, ts("2026-03-31T22:00:00Z"));
    let october = span("2026-10", "Europe/Berlin");
    assert_eq!(october.minutes, 31 * 1440 + 60);
    assert_eq!(october.end, ts("2026-10-31T23:00:00Z"));
    assert_eq!(span("2026-06", "Europe/Berlin").minutes, 30 * 1440);
    // Zones east of UTC: the local month starts the previous UTC day.
    assert_eq!(
        span("2026-01", "Asia/Kolkata").start,
        ts("2025-12-31T18:30:00Z")
    );
}

#[test]
fn a_nightly_window_in_local_time_follows_the_dst_change() {
    // Every night 01:00-04:00 Berlin time. On 29 March 02:00-03:00 does not exist, so that
    // night's window is two real hours; on 25 October 02:00-03:00 happens twice: four hours.
    let s = span("2026-03", "Europe/Berlin");
    let all = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ];
    let nightly = weekly("nightly", &all, (1, 0), (4, 0));
    let ex = excluded_minutes(std::slice::from_ref(&nightly), &s).unwrap();
    assert_eq!(ex.iter().filter(|&&e| e).count() as u32, 30 * 180 + 120);
    // The short night: from 00:00 UTC (01:00 CET) to 02:00 UTC (04:00 CEST).
    let z = s.zone.clone();
    let on = |t: &str| ex[s.minute_of(ts(t)).unwrap() as usize];
    assert!(!on("2026-03-28T23:59:00Z"));
    assert!(on("2026-03-29T00:00:00Z"));
    assert!(on("2026-03-29T01:59:00Z"));
    assert!(!on("2026-03-29T02:00:00Z"));
    assert_eq!(
        maintenance_at(
            std::slice::from_ref(&nightly),
            &z,
            ts("2026-03-29T01:30:00Z")
        )
        .unwrap()
        .map(|e| e.id.as_str()),
        Some("nightly")
    );

    let o = span("2026-10", "Europe/Berlin");
    let ex = excluded_minutes(std::slice::from_ref(&nightly), &o).unwrap();
    assert_eq!(ex.iter().filter(|&&e| e).count() as u32, 30 * 180 + 240);
    let on = |t: &str| ex[o.minute_of(ts(t)).unwrap() as usize];
    assert!(on("2026-10-24T23:00:00Z")); // 01:00 CEST
    assert!(on("2026-10-25T02:59:00Z")); // 03:59 CET
    assert!(!on("2026-10-25T03:00:00Z"));
}

#[test]
fn downtime_inside_an_approved_window_is_excluded_and_shown_apart() {
    let s = span("2026-06", "Europe/Berlin");
    // The service is down every Sunday 02:00-03:30 local; the window is 02:00-04:00 Sundays.
    let z = s.zone.clone();
    let down = |at: Timestamp| {
        let l = at.to_zoned(z.clone());
        let mins = i32::from(l.hour()) * 60 + i32::from(l.minute());
        l.weekday() == jiff::civil::Weekday::Sunday && (120..210).contains(&mins)
    };
    let r = probe(s.start, s.end, |at| {
        Some(if down(at) { Outcome::Down } else { Outcome::Up })
    });
    let win = weekly("sunday", &[Weekday::Sunday], (2, 0), (4, 0));
    let a = account_month(
        &timeline(&s, &r),
        &s,
        std::slice::from_ref(&win),
        &slo(3, UnknownPolicy::Down),
    )
    .unwrap();
    // June 2026 has four Sundays.
    assert_eq!(a.excluded, 4 * 120);
    assert_eq!(a.down_in_maintenance, 4 * 90);
    assert_eq!(a.down, 0);
    assert_eq!(a.up + a.excluded, s.minutes);
    // Not approved: the same downtime counts.
    let unapproved = CalendarEntry {
        approved: false,
        ..win
    };
    let a = account_month(
        &timeline(&s, &r),
        &s,
        &[unapproved],
        &slo(3, UnknownPolicy::Down),
    )
    .unwrap();
    assert_eq!((a.down, a.excluded, a.down_in_maintenance), (4 * 90, 0, 0));
}

#[test]
fn a_window_crossing_midnight_and_the_month_end_is_cut_at_the_month_edges() {
    // 30 June 22:00 to 1 July 02:00 local, one-off, plus a weekly Tuesday 23:00-01:00
    // (30 June 2026 is a Tuesday) overlapping it: the union is counted once.
    let w1 = once(
        "upgrade",
        date(2026, 6, 30).at(22, 0, 0, 0),
        date(2026, 7, 1).at(2, 0, 0, 0),
        true,
    );
    let w2 = weekly("tuesday-night", &[Weekday::Tuesday], (23, 0), (1, 0));
    let june = span("2026-06", "Europe/Berlin");
    let july = span("2026-07", "Europe/Berlin");
    let count = |s: &MonthSpan, w: &[CalendarEntry]| {
        excluded_minutes(w, s)
            .unwrap()
            .iter()
            .filter(|&&e| e)
            .count()
    };
    assert_eq!(count(&june, std::slice::from_ref(&w1)), 120);
    assert_eq!(count(&july, std::slice::from_ref(&w1)), 120);
    // June: w1's 2 hours, plus w2 on the Tuesdays 2, 9, 16, 23 June; its 30 June part
    // (23:00-24:00) lies inside w1 and adds nothing.
    assert_eq!(
        count(&june, &[w1.clone(), w2.clone()]),
        120 + 4 * 120,
        "overlap counted twice in June"
    );
    // July: 02:00 from w1 on the 1st (w2's Tuesday night ends at 01:00 inside it), then w2 on
    // the Tuesdays 7, 14, 21, 28 July (2 h each), one of them (28th) ending on 29 July.
    assert_eq!(count(&july, &[w1.clone(), w2.clone()]), 120 + 4 * 120);
    // The last Tuesday of a month whose window ends in the next month.
    let sept = span("2026-09", "Europe/Berlin"); // 29 Sept is a Tuesday; 30th is the last day
    assert_eq!(count(&sept, std::slice::from_ref(&w2)), 5 * 120);
    let march = span("2026-03", "Europe/Berlin"); // 31 March 2026 is a Tuesday
    let ex = excluded_minutes(&[w2], &march).unwrap();
    assert!(
        *ex.last().unwrap(),
        "the window must run to the end of the month"
    );
    assert_eq!(ex.iter().filter(|&&e| e).count(), 5 * 120 - 60);
}

#[test]
fn probes_with_no_data_are_unknown_and_count_by_policy_never_as_up() {
    let s = span("2026-04", "UTC");
    // Only the first 10 days have results.
    let cut = ts("2026-04-11T00:00:00Z");
    let r = probe(s.start, cut, |_| Some(Outcome::Up));
    let a = account_month(&timeline(&s, &r), &s, &[], &slo(3, UnknownPolicy::Down)).unwrap();
    assert_eq!((a.up, a.unknown), (10 * 1440, 20 * 1440));
    assert_eq!(a.valid(), 30 * 1440);
    assert_eq!(a.availability(), Some(Percent::from_ppm(333_333).unwrap()));
    assert_eq!(
        credit_owed(
            a.good(),
            a.valid(),
            &slo(3, UnknownPolicy::Down).credits,
            None
        )
        .unwrap()
        .credit,
        pct("50")
    );
    let a = account_month(&timeline(&s, &r), &s, &[], &slo(3, UnknownPolicy::Excluded)).unwrap();
    assert_eq!(a.valid(), 10 * 1440);
    assert_eq!(a.availability(), Some(pct("100")));
    // The prober's own "unknown" is unknown too.
    let r = probe(s.start, s.end, |_| Some(Outcome::Unknown));
    let a = account_month(&timeline(&s, &r), &s, &[], &slo(3, UnknownPolicy::Excluded)).unwrap();
    assert_eq!((a.up, a.unknown, a.valid()), (0, 30 * 1440, 0));
    assert_eq!(a.availability(), None);
    assert_eq!(a.met_objective(), None);
}

#[test]
fn a_server_restart_mid_month_leaves_a_gap_of_unknown_minutes() {
    let s = span("2026-05", "Europe/Berlin");
    // careplane serve was down from 14 May 10:00 to 10:47 local: no results at all.
    let (gap_from, gap_to) = (ts("2026-05-14T08:00:00Z"), ts("2026-05-14T08:47:00Z"));
    let r = probe(s.start, s.end, |at| {
        (at < gap_from || at >= gap_to).then_some(Outcome::Up)
    });
    let a = account_month(&timeline(&s, &r), &s, &[], &slo(3, UnknownPolicy::Down)).unwrap();
    assert_eq!((a.unknown, a.down, a.up), (47, 0, s.minutes - 47));
    assert_eq!(
        a.classes[s.minute_of(gap_from).unwrap() as usize],
        MinuteClass::Unknown
    );
    // A failure run interrupted by the gap is two runs: 2 + 2 failed minutes with N = 3 are not down.
    let fail = |at: Timestamp| {
        let m = (at.as_second() - gap_from.as_second()).div_euclid(60);
        (-2..0).contains(&m) || (47..49).contains(&m)
    };
    let r = probe(s.start, s.end, |at| {
        if at >= gap_from && at < gap_to {
            None
        } else {
            Some(if fail(at) { Outcome::Down } else { Outcome::Up })
        }
    });
    let a = account_month(&timeline(&s, &r), &s, &[], &slo(3, UnknownPolicy::Down)).unwrap();
    assert_eq!((a.down, a.unknown), (0, 47));
}

#[test]
fn the_bad_minute_rule_needs_n_consecutive_failures_and_judges_runs_across_month_edges() {
    use Observation::*;
    let obs = [
        Failed, Failed, Up, Failed, Failed, Failed, NoData, Failed, Failed, Failed, Failed,
    ];
    let bad = bad_minutes(&obs, 3);
    assert_eq!(
        bad,
        [false, false, false, true, true, true, false, true, true, true, true]
    );
    assert_eq!(bad_minutes(&obs, 1).iter().filter(|&&b| b).count(), 9);

    // Two failed minutes at the end of June and one at the start of July, N = 3: all three
    // are down (each in its own month), because the run is judged whole.
    let june = span("2026-06", "UTC");
    let july = span("2026-07", "UTC");
    let boundary = june.end;
    let r = probe(june.start, july.end, |at| {
        let d = (at.as_second() - boundary.as_second()).div_euclid(60);
        Some(if (-2..1).contains(&d) {
            Outcome::Down
        } else {
            Outcome::Up
        })
    });
    let s3 = slo(3, UnknownPolicy::Down);
    assert_eq!(
        account_month(&timeline(&june, &r), &june, &[], &s3)
            .unwrap()
            .down,
        2
    );
    assert_eq!(
        account_month(&timeline(&july, &r), &july, &[], &s3)
            .unwrap()
            .down,
        1
    );
    let s4 = slo(4, UnknownPolicy::Down);
    assert_eq!(
        account_month(&timeline(&june, &r), &june, &[], &s4)
            .unwrap()
            .down,
        0
    );
}

#[test]
fn credits_apply_exactly_at_the_thresholds() {
    let table = slo(3, UnknownPolicy::Down).credits;
    // 30-day month, 43,200 valid minutes: 99.9 % is 43,156.8 good minutes.
    let valid = 43_200;
    assert_eq!(credit_owed(43_157, valid, &table, None), None);
    assert_eq!(
        credit_owed(43_156, valid, &table, None).unwrap().credit,
        pct("10")
    );
    // Exactly 99 %: 42,768 good minutes meets it.
    assert_eq!(
        credit_owed(42_768, valid, &table, None).unwrap().credit,
        pct("10")
    );
    assert_eq!(
        credit_owed(42_767, valid, &table, None).unwrap().credit,
        pct("25")
    );
    // Exactly 95 %: 41,040.
    assert_eq!(
        credit_owed(41_040, valid, &table, None).unwrap().credit,
        pct("25")
    );
    let c = credit_owed(41_039, valid, &table, Some(123_457)).unwrap();
    assert_eq!(
        (c.tier, c.credit, c.amount_cents),
        (2, pct("50"), Some(61_729))
    ); // 617.285 rounds half up
    assert_eq!(credit_owed(0, 0, &table, None), None);
    // A threshold with four decimals, exact: 99.9999 % of 1,000,000 minutes is 999,999.
    let fine = [CreditTier {
        below: pct("99.9999"),
        credit: pct("1"),
    }];
    assert_eq!(credit_owed(999_999, 1_000_000, &fine, None), None);
    assert!(credit_owed(999_998, 1_000_000, &fine, None).is_some());
}

#[test]
fn the_error_budget_is_used_in_exact_proportion() {
    let s = span("2026-04", "UTC");
    // 99.9 % of 43,200 minutes: a budget of 43.2 minutes. 43 down minutes use 99.53 %.
    let start_down = s.start.as_second() + 86_400 * 3;
    let r = probe(s.start, s.end, |at| {
        let m = (at.as_second() - start_down).div_euclid(60);
        Some(if (0..43).contains(&m) {
            Outcome::Down
        } else {
            Outcome::Up
        })
    });
    let a = account_month(&timeline(&s, &r), &s, &[], &slo(3, UnknownPolicy::Down)).unwrap();
    assert_eq!(a.down, 43);
    assert_eq!(a.budget_milli_minutes(), 43_200);
    assert_eq!(a.budget_used_bp(), 9953);
    assert_eq!(a.met_objective(), Some(true));
    let runs = a.runs();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[1], (3 * 1440, 43, MinuteClass::Down));
}

#[test]
fn freezes_exclude_nothing_but_are_found_for_plan() {
    let freeze = CalendarEntry {
        id: "month-end-close".into(),
        kind: EntryKind::Freeze,
        approved: false,
        schedule: Schedule::Once {
            start: date(2026, 6, 29).at(0, 0, 0, 0),
            end: date(2026, 7, 3).at(0, 0, 0, 0),
        },
        reason: Some("month-end close".into()),
    };
    let s = span("2026-06", "Europe/Berlin");
    assert!(excluded_minutes(std::slice::from_ref(&freeze), &s)
        .unwrap()
        .iter()
        .all(|&e| !e));
    let z = zone("Europe/Berlin", "t").unwrap();
    assert!(freeze_at(
        std::slice::from_ref(&freeze),
        &z,
        ts("2026-06-28T22:00:00Z")
    )
    .unwrap()
    .is_some());
    assert!(freeze_at(
        std::slice::from_ref(&freeze),
        &z,
        ts("2026-06-28T21:59:59Z")
    )
    .unwrap()
    .is_none());
    assert!(freeze_at(
        std::slice::from_ref(&freeze),
        &z,
        ts("2026-07-02T21:59:59Z")
    )
    .unwrap()
    .is_some());
    assert!(freeze_at(
        std::slice::from_ref(&freeze),
        &z,
        ts("2026-07-02T22:00:00Z")
    )
    .unwrap()
    .is_none());
}

#[test]
fn bad_configuration_is_refused_naming_the_field() {
    let mut s = slo(3, UnknownPolicy::Down);
    s.objective = pct("100");
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("\"gold\"") && e.contains("objective"), "{e}");
    let mut s = slo(0, UnknownPolicy::Down);
    s.tier = "silver".into();
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("badMinute.consecutiveFailures"), "{e}");
    let w = once(
        "bad",
        date(2026, 6, 2).at(3, 0, 0, 0),
        date(2026, 6, 2).at(1, 0, 0, 0),
        true,
    );
    let e = excluded_minutes(&[w], &span("2026-06", "UTC"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"bad\"") && e.contains("schedule.end"), "{e}");
    assert!(matches!(
        zone("Europe/Atlantis", "tenant stmarys: timeZone"),
        Err(Error::UnknownZone { .. })
    ));
    let e = Month::parse("2026-13").unwrap_err().to_string();
    assert!(e.contains("2026-13"), "{e}");
    // A YAML/JSON tier with a misspelt field names it.
    let e = serde_json::from_str::<Slo>(r#"{"tier":"g","objective":"99.9","badMinute":{"probe":"j","consecutiveFailures":3},"credit":[]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("credit"), "{e}");
    let _ = TimeZone::UTC;
}

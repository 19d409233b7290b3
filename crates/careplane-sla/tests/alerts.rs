//! Burn-rate alerts, incident detection, clocks and escalation on a simulated clock.

use careplane_sla::account::{Observation, Timeline};
use careplane_sla::calendar::{zone, CalendarEntry, EntryKind, Schedule, SupportHours, Weekday};
use careplane_sla::incident::Reason;
use careplane_sla::model::*;
use careplane_sla::{
    detect, due_notifications, evaluate_burn, observe_recovery, BurnRule, ClockStatus, Incident,
    Percent,
};
use jiff::civil::{date, time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

fn pct(s: &str) -> Percent {
    Percent::parse(s).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn plus(t: Timestamp, minutes: i64) -> Timestamp {
    Timestamp::from_second(t.as_second() + 60 * minutes).unwrap()
}

fn slo(objective: &str, n: u32, unknown: UnknownPolicy) -> Slo {
    Slo {
        tier: "gold".into(),
        objective: pct(objective),
        bad_minute: BadMinuteRule {
            probe: "journey".into(),
            consecutive_failures: n,
        },
        unknown,
        support_hours: SupportHours::Always,
        targets: vec![
            SeverityTarget {
                severity: Severity::P1,
                respond_minutes: 15,
                restore_minutes: 240,
                clock: TargetClock::Always,
            },
            SeverityTarget {
                severity: Severity::P3,
                respond_minutes: 60,
                restore_minutes: 24 * 60,
                clock: TargetClock::SupportHours,
            },
        ],
        severity: SeverityMatrix::default(),
        credits: vec![],
        escalation: vec![EscalationPolicy {
            severity: Severity::P1,
            steps: vec![
                EscalationStep {
                    after_minutes: 0,
                    notify: vec!["on-call".into()],
                },
                EscalationStep {
                    after_minutes: 15,
                    notify: vec!["team-lead".into(), "webhook:ops".into()],
                },
            ],
            repeat_minutes: Some(5),
            executive_after_minutes: Some(30),
            executive: vec!["cio".into()],
        }],
    }
}

const NOW: &str = "2026-06-10T12:00:30Z";

/// 4 days of minutes ending at the minute before NOW, with `f(minutes before now)`.
fn timeline(f: impl Fn(i64) -> Observation) -> Timeline {
    let now = ts(NOW);
    let minutes = 4 * 1440;
    let start = plus(
        Timestamp::from_second(now.as_second().div_euclid(60) * 60).unwrap(),
        -minutes,
    );
    let mut t = Timeline::empty(start, minutes as u32);
    for i in 0..minutes {
        t.obs[i as usize] = f(minutes - i);
    }
    t
}

fn fire(t: &Timeline, s: &Slo, rules: &[BurnRule], cal: &[CalendarEntry]) -> Vec<bool> {
    evaluate_burn(t, cal, &TimeZone::UTC, s, rules, ts(NOW))
        .unwrap()
        .iter()
        .map(|a| a.firing)
        .collect()
}

#[test]
fn a_healthy_service_burns_nothing() {
    let t = timeline(|_| Observation::Up);
    let a = evaluate_burn(
        &t,
        &[],
        &TimeZone::UTC,
        &slo("99.9", 3, UnknownPolicy::Down),
        &BurnRule::defaults(),
        ts(NOW),
    )
    .unwrap();
    assert!(a.iter().all(|a| !a.firing
        && a.long.rate_milli == 0
        && a.long.valid == u64::from(a.rule.long_minutes)));
}

#[test]
fn a_hard_outage_pages_within_the_short_window_and_stops_after_recovery() {
    let s = slo("99", 3, UnknownPolicy::Down);
    let rules = BurnRule::defaults();
    // Down for the last 12 minutes: 12/60 of the hour at 1 % budget is 20x.
    let t = timeline(|ago| {
        if ago <= 12 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    assert_eq!(fire(&t, &s, &rules, &[]), [true, false, false]);
    // The same outage, recovered 10 minutes ago: the 5-minute window is clean.
    let t = timeline(|ago| {
        if (11..=22).contains(&ago) {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    assert_eq!(fire(&t, &s, &rules, &[]), [false, false, false]);
    // Only two failed minutes so far with N = 3: not bad yet.
    let t = timeline(|ago| {
        if ago <= 2 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    assert_eq!(fire(&t, &s, &rules, &[]), [false, false, false]);
}

#[test]
fn burn_thresholds_are_exact() {
    // 2.0x over 100 minutes at 99 %: exactly 2 bad minutes reach it, 1 does not.
    let rule = [BurnRule {
        name: "t".into(),
        long_minutes: 100,
        short_minutes: 10,
        factor_tenths: 20,
        page: true,
    }];
    let s = slo("99", 1, UnknownPolicy::Down);
    let t = timeline(|ago| {
        if ago == 3 || ago == 5 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    let a = evaluate_burn(&t, &[], &TimeZone::UTC, &s, &rule, ts(NOW)).unwrap();
    assert_eq!(
        (
            a[0].long.bad,
            a[0].long.valid,
            a[0].long.rate_milli,
            a[0].firing
        ),
        (2, 100, 2000, true)
    );
    let t = timeline(|ago| {
        if ago == 3 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    assert!(!evaluate_burn(&t, &[], &TimeZone::UTC, &s, &rule, ts(NOW)).unwrap()[0].firing);
    // A slow burn: 0.2 % of minutes bad over three days at 99.9 % opens a ticket only.
    let s = slo("99.9", 1, UnknownPolicy::Down);
    let t = timeline(|ago| {
        if ago % 500 == 7 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    assert_eq!(
        fire(&t, &s, &BurnRule::defaults(), &[]),
        [false, false, true]
    );
}

#[test]
fn maintenance_and_missing_data_follow_the_report_rules() {
    let s = slo("99", 3, UnknownPolicy::Down);
    let rules = BurnRule::defaults();
    let t = timeline(|ago| {
        if ago <= 20 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    let window = CalendarEntry {
        id: "upgrade".into(),
        kind: EntryKind::Maintenance,
        approved: true,
        schedule: Schedule::Once {
            start: date(2026, 6, 10).at(11, 30, 0, 0),
            end: date(2026, 6, 10).at(12, 30, 0, 0),
        },
        reason: None,
    };
    assert_eq!(
        fire(&t, &s, &rules, std::slice::from_ref(&window)),
        [false, false, false]
    );
    assert_eq!(
        fire(
            &t,
            &s,
            &rules,
            &[CalendarEntry {
                approved: false,
                ..window
            }]
        ),
        [true, false, false]
    );
    // The prober has been blind for an hour: under the "down" policy that burns the budget.
    let blind = timeline(|ago| {
        if ago <= 60 {
            Observation::NoData
        } else {
            Observation::Up
        }
    });
    // (60 of 4,320 minutes is 1.4x over three days: the ticket rule too.)
    assert_eq!(fire(&blind, &s, &rules, &[]), [true, true, true]);
    assert_eq!(
        fire(&blind, &slo("99", 3, UnknownPolicy::Excluded), &rules, &[]),
        [false, false, false]
    );
}

/// Before the first result there is nothing to burn: an environment careplane has watched
/// for ten minutes, all up, pages nobody (under the "down" policy those empty days would
/// otherwise be three days of outage). Once it has results, a gap is a blind spot again.
#[test]
fn minutes_before_the_first_result_burn_nothing() {
    let s = slo("99", 3, UnknownPolicy::Down);
    let rules = BurnRule::defaults();
    let fresh = timeline(|ago| {
        if ago <= 10 {
            Observation::Up
        } else {
            Observation::NoData
        }
    });
    assert_eq!(fire(&fresh, &s, &rules, &[]), [false, false, false]);
    // Ten minutes up, then blind for the last ten: the blind minutes count again.
    let then_blind = timeline(|ago| {
        if (11..=20).contains(&ago) {
            Observation::Up
        } else {
            Observation::NoData
        }
    });
    assert_eq!(fire(&then_blind, &s, &rules, &[]), [true, true, true]);
    // And a fresh environment that fails from its first minutes still pages.
    let failing = timeline(|ago| {
        if ago <= 10 {
            Observation::Failed
        } else {
            Observation::NoData
        }
    });
    assert_eq!(fire(&failing, &s, &rules, &[]), [true, true, true]);
}

#[test]
fn an_incident_opens_after_n_failed_minutes_with_severity_from_the_matrix() {
    let s = slo("99.9", 3, UnknownPolicy::Down);
    let t = timeline(|ago| {
        if ago <= 2 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    assert_eq!(detect(&t, &s, ts(NOW)), None);
    let t = timeline(|ago| {
        if ago <= 4 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    let d = detect(&t, &s, ts(NOW)).unwrap();
    assert_eq!(
        (d.started_at, d.failing_minutes),
        (ts("2026-06-10T11:56:00Z"), 4)
    );
    let i = Incident::open(
        "inc-1",
        "stmarys",
        "production",
        EnvironmentKind::Production,
        "journey",
        Impact::Down,
        d,
        &s,
        ts(NOW),
    );
    assert_eq!(i.severity, Severity::P1);
    let i = Incident::open(
        "inc-2",
        "stmarys",
        "staging",
        EnvironmentKind::NonProduction,
        "journey",
        Impact::Degraded,
        d,
        &s,
        ts(NOW),
    );
    assert_eq!(i.severity, Severity::P4);
    let mut bronze = s.clone();
    bronze.severity.production_down = Severity::P2;
    let i = Incident::open(
        "inc-3",
        "clinic",
        "production",
        EnvironmentKind::Production,
        "journey",
        Impact::Down,
        d,
        &bronze,
        ts(NOW),
    );
    assert_eq!(i.severity, Severity::P2);
}

fn p1(s: &Slo, started: &str, opened: &str) -> Incident {
    let d = careplane_sla::Detection {
        started_at: ts(started),
        failing_minutes: 3,
    };
    Incident::open(
        "inc-7",
        "stmarys",
        "production",
        EnvironmentKind::Production,
        "journey",
        Impact::Down,
        d,
        s,
        ts(opened),
    )
}

#[test]
fn actions_are_checked_against_the_incident_state() {
    let s = slo("99.9", 3, UnknownPolicy::Down);
    let mut i = p1(&s, "2026-06-10T11:57:00Z", "2026-06-10T12:00:00Z");
    let e = i
        .acknowledge("alice", ts("2026-06-10T11:59:00Z"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("inc-7") && e.contains("before the incident opened"),
        "{e}"
    );
    assert!(i.acknowledge(" ", ts("2026-06-10T12:05:00Z")).is_err());
    i.acknowledge("alice", ts("2026-06-10T12:05:00Z")).unwrap();
    let e = i
        .acknowledge("bob", ts("2026-06-10T12:06:00Z"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already acknowledged by alice"), "{e}");
    i.note(
        "alice",
        ts("2026-06-10T12:10:00Z"),
        "restarting web workers",
    )
    .unwrap();
    assert!(i.note("alice", ts("2026-06-10T12:10:00Z"), "").is_err());
    let e = i
        .resolve("alice", ts("2026-06-10T12:04:00Z"), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("before its acknowledgement"), "{e}");
    i.resolve(
        "alice",
        ts("2026-06-10T12:40:00Z"),
        "worker pool exhausted; raised limit",
    )
    .unwrap();
    assert!(!i.is_open());
    assert_eq!(i.restored_at, Some(ts("2026-06-10T12:40:00Z")));
    assert!(i
        .resolve("bob", ts("2026-06-10T12:41:00Z"), "again")
        .is_err());
    assert!(i.acknowledge("bob", ts("2026-06-10T12:41:00Z")).is_err());
    i.note(
        "bob",
        ts("2026-06-11T09:00:00Z"),
        "post-incident review done",
    )
    .unwrap();
    assert_eq!(i.notes.len(), 2);
    // Round trip through JSON (how the server stores it).
    let back: Incident = serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
    assert_eq!(back, i);
}

#[test]
fn clocks_measure_against_the_targets_on_their_own_clock() {
    let s = slo("99.9", 3, UnknownPolicy::Down);
    let mut i = p1(&s, "2026-06-10T11:57:00Z", "2026-06-10T12:00:00Z");
    let later = ts("2026-06-10T12:10:00Z");
    assert_eq!(
        i.time_to_acknowledge(&s, later).unwrap(),
        ClockStatus::Running {
            seconds: 600,
            target_seconds: 900
        }
    );
    assert_eq!(
        i.time_to_acknowledge(&s, ts("2026-06-10T12:16:00Z"))
            .unwrap(),
        ClockStatus::Breached {
            seconds: 960,
            target_seconds: 900,
            running: true
        }
    );
    i.acknowledge("alice", ts("2026-06-10T12:15:00Z")).unwrap();
    assert_eq!(
        i.time_to_acknowledge(&s, ts("2026-06-11T00:00:00Z"))
            .unwrap()
            .compliant(),
        Some(true)
    );
    let t = timeline(|ago| {
        if (3..=8).contains(&ago) {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    // At NOW the journey has answered for 2 minutes after failing since 11:52.
    let mut j = p1(&s, "2026-06-10T11:52:00Z", "2026-06-10T11:55:00Z");
    assert!(observe_recovery(&mut j, &t, ts(NOW)));
    assert_eq!(j.restored_at, Some(ts("2026-06-10T11:58:00Z")));
    assert_eq!(
        j.time_to_restore(&s, ts(NOW)).unwrap(),
        ClockStatus::Met {
            seconds: 360,
            target_seconds: 14_400
        }
    );
    let still = timeline(|ago| {
        if ago <= 8 {
            Observation::Failed
        } else {
            Observation::Up
        }
    });
    let mut k = p1(&s, "2026-06-10T11:52:00Z", "2026-06-10T11:55:00Z");
    assert!(!observe_recovery(&mut k, &still, ts(NOW)));

    // A P3 on the support-hours clock: opened Friday 17:30 Berlin, support Mon-Fri 08:00-18:00,
    // acknowledged Monday 08:20: 50 support minutes (target 60) over 63 wall-clock hours.
    let mut s3 = s.clone();
    s3.support_hours = SupportHours::Weekly {
        time_zone: "Europe/Berlin".into(),
        days: vec![
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
        ],
        start: time(8, 0, 0, 0),
        end: time(18, 0, 0, 0),
    };
    s3.validate().unwrap();
    let d = careplane_sla::Detection {
        started_at: ts("2026-06-12T15:25:00Z"),
        failing_minutes: 5,
    };
    let mut p3 = Incident::open(
        "inc-9",
        "stmarys",
        "uat",
        EnvironmentKind::NonProduction,
        "journey",
        Impact::Down,
        d,
        &s3,
        ts("2026-06-12T15:30:00Z"),
    );
    assert_eq!(p3.severity, Severity::P3);
    p3.acknowledge("bob", ts("2026-06-15T06:20:00Z")).unwrap();
    assert_eq!(
        p3.time_to_acknowledge(&s3, ts("2026-06-15T07:00:00Z"))
            .unwrap(),
        ClockStatus::Met {
            seconds: 3000,
            target_seconds: 3600
        }
    );
    let _ = zone("Europe/Berlin", "t").unwrap();
}

#[test]
fn escalation_is_due_by_schedule_until_acknowledged_and_executives_hear_of_long_outages() {
    let s = slo("99.9", 3, UnknownPolicy::Down);
    let opened = ts("2026-06-10T12:00:00Z");
    let mut i = p1(&s, "2026-06-10T11:57:00Z", "2026-06-10T12:00:00Z");
    let keys =
        |v: &[careplane_sla::DueNotification]| v.iter().map(|n| n.key.clone()).collect::<Vec<_>>();
    let due = due_notifications(&i, &s, opened);
    assert_eq!(keys(&due), ["step-0"]);
    assert_eq!(due[0].recipients, ["on-call"]);
    // The server was busy: at +12 the first page and two repeats are due.
    let due = due_notifications(&i, &s, plus(opened, 12));
    assert_eq!(keys(&due), ["step-0", "step-0-repeat-1", "step-0-repeat-2"]);
    for n in &due {
        i.record_notification(n, plus(opened, 12));
    }
    assert!(due_notifications(&i, &s, plus(opened, 14)).is_empty());
    let due = due_notifications(&i, &s, plus(opened, 15));
    assert_eq!(keys(&due), ["step-1"]);
    assert_eq!(due[0].reason, Reason::Step { step: 1 });
    i.record_notification(&due[0], plus(opened, 15));
    assert_eq!(
        keys(&due_notifications(&i, &s, plus(opened, 21))),
        ["step-1-repeat-1"]
    );
    i.acknowledge("alice", plus(opened, 22)).unwrap();
    // Acknowledged: no more repeats, but the outage (started 11:57) passes 30 minutes at 12:27.
    let due = due_notifications(&i, &s, plus(opened, 40));
    assert_eq!(keys(&due), ["step-1-repeat-1", "executive"]);
    assert_eq!(due[1].due_at, ts("2026-06-10T12:27:00Z"));
    assert_eq!(due[1].recipients, ["cio"]);
    // Restored before the threshold: no executive notice.
    let mut quick = p1(&s, "2026-06-10T11:57:00Z", "2026-06-10T12:00:00Z");
    quick.acknowledge("alice", plus(opened, 2)).unwrap();
    quick.restored_at = Some(plus(opened, 20));
    assert_eq!(
        keys(&due_notifications(&quick, &s, plus(opened, 60))),
        ["step-0"]
    );
    // Resolved: nothing is due.
    i.resolve("alice", plus(opened, 41), "fixed").unwrap();
    assert!(due_notifications(&i, &s, plus(opened, 90)).is_empty());
}

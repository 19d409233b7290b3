//! A month of probe results on a simulated clock, through the store, into the report, its
//! JSON and its self-contained HTML.

use careplane_sla::calendar::{
    zone, CalendarEntry, EntryKind, Month, MonthSpan, Schedule, Weekday,
};
use careplane_sla::model::*;
use careplane_sla::{
    month_latency, month_timeline, monthly_report, render_html, render_json, Detection, Incident,
    Percent, ReportInput, SeriesKey, Store,
};
use jiff::civil::time;
use jiff::Timestamp;

fn pct(s: &str) -> Percent {
    Percent::parse(s).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn gold() -> Slo {
    Slo {
        tier: "gold".into(),
        objective: pct("99.9"),
        bad_minute: BadMinuteRule {
            probe: "journey".into(),
            consecutive_failures: 3,
        },
        unknown: UnknownPolicy::Down,
        support_hours: Default::default(),
        targets: vec![SeverityTarget {
            severity: Severity::P1,
            respond_minutes: 15,
            restore_minutes: 60,
            clock: TargetClock::Always,
        }],
        severity: SeverityMatrix::default(),
        credits: vec![
            CreditTier {
                below: pct("99.9"),
                credit: pct("10"),
            },
            CreditTier {
                below: pct("99"),
                credit: pct("25"),
            },
        ],
        escalation: vec![],
    }
}

#[test]
fn a_march_in_berlin_from_probes_to_html() {
    let dir = tempfile::tempdir().unwrap();
    let tz = zone("Europe/Berlin", "t").unwrap();
    let month = Month::parse("2026-03").unwrap();
    let span = MonthSpan::new(month, &tz).unwrap();
    let key = SeriesKey::new("stmarys", "production", "journey");
    let outage = (ts("2026-03-10T09:00:00Z"), ts("2026-03-10T10:00:00Z")); // 60 min down
    let in_window = (ts("2026-03-29T00:10:00Z"), ts("2026-03-29T00:40:00Z")); // 30 min, maintenance
    let gap = (ts("2026-03-20T12:00:00Z"), ts("2026-03-20T12:05:00Z")); // server restart
    {
        let mut store = Store::open(dir.path()).unwrap();
        let id = store.series(&key).unwrap();
        let mut t = span.start.as_second() - 3600;
        while t < span.end.as_second() + 3600 {
            let at = Timestamp::from_second(t + 3).unwrap();
            let inside = |(a, b): (Timestamp, Timestamp)| at >= a && at < b;
            if !inside(gap) {
                let o = if inside(outage) || inside(in_window) {
                    Outcome::Down
                } else {
                    Outcome::Up
                };
                store.record(id, at, o, 150 + (t % 7) as u32 * 10).unwrap();
            }
            t += 60;
        }
        store.compact().unwrap();
    }
    let mut store = Store::open(dir.path()).unwrap();
    let slo = gold();
    let timeline = month_timeline(&mut store, &key, &span, &slo).unwrap();
    let hist = month_latency(&mut store, &key, &span).unwrap();
    // March's UTC month only: the hour of February before the local month is not in it.
    assert_eq!(hist.count(), 31 * 1440 - 60 - 5);
    let calendar = [CalendarEntry {
        id: "sunday-night".into(),
        kind: EntryKind::Maintenance,
        approved: true,
        schedule: Schedule::Weekly {
            days: vec![Weekday::Sunday],
            start: time(1, 0, 0, 0),
            end: time(4, 0, 0, 0),
        },
        reason: Some("patching".into()),
    }];
    let mut inc = Incident::open(
        "inc-<1>",
        "stmarys",
        "production",
        EnvironmentKind::Production,
        "journey",
        Impact::Down,
        Detection {
            started_at: outage.0,
            failing_minutes: 3,
        },
        &slo,
        ts("2026-03-10T09:03:00Z"),
    );
    inc.acknowledge("alice", ts("2026-03-10T09:25:00Z"))
        .unwrap();
    inc.restored_at = Some(outage.1);
    inc.resolve("alice", ts("2026-03-10T10:30:00Z"), "db failover")
        .unwrap();
    let other = Incident {
        tenant: "other".into(),
        ..inc.clone()
    };
    let r = monthly_report(&ReportInput {
        tenant: "stmarys",
        environment: "production",
        environment_kind: EnvironmentKind::Production,
        time_zone: "Europe/Berlin",
        month,
        slo: &slo,
        calendar: &calendar,
        timeline: &timeline,
        incidents: &[inc, other],
        latency: Some(&hist),
        monthly_fee_cents: Some(500_000),
        now: ts("2026-04-01T08:00:00Z"),
    })
    .unwrap();
    // 5 Sundays × 3 h, except the DST night: 01:00-04:00 is 2 h.
    assert_eq!(r.minutes_in_month, 31 * 1440 - 60);
    assert_eq!(r.excluded_minutes, 4 * 180 + 120);
    assert_eq!(r.down_in_maintenance_minutes, 30);
    assert_eq!((r.down_minutes, r.unknown_minutes), (60, 5));
    assert_eq!(
        r.up_minutes + r.down_minutes + r.excluded_minutes + r.unknown_minutes,
        r.minutes_in_month
    );
    // (44,580 − 840 − 65) good of (44,580 − 840): 99.8513 %, below 99.9: 10 % credit = 500.00.
    assert_eq!(r.availability, Some(Percent::from_ppm(998_513).unwrap()));
    assert_eq!(r.objective_met, Some(false));
    assert_eq!(
        r.credit.as_ref().map(|c| (c.credit, c.amount_cents)),
        Some((pct("10"), Some(50_000)))
    );
    assert_eq!(r.error_budget_minutes, "43.740");
    assert_eq!(r.error_budget_used_percent, "148.60");
    assert_eq!(r.incidents.len(), 1);
    assert_eq!(
        r.incidents[0].time_to_acknowledge.compliant(),
        Some(false),
        "22 minutes against 15"
    );
    assert_eq!(
        r.incidents[0].time_to_restore.compliant(),
        Some(true),
        "60 minutes against 60"
    );
    let l = r.latency.as_ref().unwrap();
    assert!(
        l.p50_ms >= 180 && l.p99_ms >= 210 && l.p99_ms < 240,
        "{l:?}"
    );

    let json = render_json(std::slice::from_ref(&r));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["availability"], "99.8513");
    assert_eq!(v[0]["downMinutes"], 60);
    assert_eq!(v[0]["credit"]["credit"], "10");
    assert_eq!(
        v[0]["incidents"][0]["timeToAcknowledge"]["status"],
        "breached"
    );
    let back: Vec<careplane_sla::MonthlyReport> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, vec![r.clone()]);

    let html = render_html(std::slice::from_ref(&r)).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for external in ["<script", "src=", "href=", "url(", "@import", "<link"] {
        assert!(
            !html.contains(external),
            "the page must be self-contained: found {external}"
        );
    }
    assert!(
        html.contains("inc-&lt;1&gt;") && !html.contains("inc-<1>"),
        "names are escaped"
    );
    assert!(html.contains("99.8513 %") && html.contains("BREACHED") && html.contains("= 500.00"));
    // One SVG row per local day, with the outage drawn red on 10 March and the short DST day.
    assert_eq!(html.matches("<svg").count(), 1);
    assert_eq!(html.matches("<text x=\"0\"").count(), 31);
    assert!(html.contains("<title>2026-03-29</title>Sun 29</text>"));
    assert!(
        html.contains("2026-03-01 00:00 CET to 2026-04-01 00:00 CEST"),
        "period in local time"
    );
    assert!(
        html.contains(r##"fill="#c62828"><title>down 60 min from 10:00 CET</title>"##),
        "outage missing"
    );
    // The short night's window: 01:00 CET to 04:00 CEST is two real hours.
    assert!(
        html.contains("<title>excluded 120 min from 01:00 CET</title>"),
        "DST-night window missing"
    );
    assert!(html.contains("<title>excluded 180 min from 01:00 CET</title>"));
}

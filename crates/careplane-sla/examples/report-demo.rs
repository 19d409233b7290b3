//! Writes a demo monthly report (HTML and JSON) for a simulated March in Berlin, to look at:
//! cargo run -p careplane-sla --example report-demo -- /tmp/report.html
//! (an outage on the 10th, Sunday-night maintenance including the short DST night, a restart
//! gap on the 20th and an incident acknowledged late).

use careplane_sla::calendar::{
    zone, CalendarEntry, EntryKind, Month, MonthSpan, Schedule, Weekday,
};
use careplane_sla::model::*;
use careplane_sla::{
    monthly_report, render_html, render_json, Detection, Incident, Percent, ReportInput, Timeline,
};
use jiff::civil::time;
use jiff::Timestamp;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "report.html".into());
    let p = |s: &str| Percent::parse(s).unwrap();
    let ts = |s: &str| s.parse::<Timestamp>().unwrap();
    let slo = Slo {
        tier: "gold".into(),
        objective: p("99.9"),
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
                below: p("99.9"),
                credit: p("10"),
            },
            CreditTier {
                below: p("99"),
                credit: p("25"),
            },
        ],
        escalation: vec![],
    };
    let month = Month::parse("2026-03")?;
    let span = MonthSpan::new(month, &zone("Europe/Berlin", "demo")?)?;
    let mut t = Timeline::empty(span.start, span.minutes);
    let outage = (ts("2026-03-10T09:00:00Z"), ts("2026-03-10T10:00:00Z"));
    let gap = (ts("2026-03-20T12:00:00Z"), ts("2026-03-20T12:45:00Z"));
    for i in 0..span.minutes {
        let at = span.minute_start(i);
        let within = |(a, b): (Timestamp, Timestamp)| at >= a && at < b;
        if within(gap) {
            continue;
        }
        t.record(
            at,
            if within(outage) {
                Outcome::Down
            } else {
                Outcome::Up
            }
            .into(),
        );
    }
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
        "INC-2026-0042",
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
    inc.acknowledge("alice", ts("2026-03-10T09:25:00Z"))?;
    inc.restored_at = Some(outage.1);
    inc.resolve("alice", ts("2026-03-10T10:30:00Z"), "database failover")?;
    let r = monthly_report(&ReportInput {
        tenant: "stmarys",
        environment: "production",
        environment_kind: EnvironmentKind::Production,
        time_zone: "Europe/Berlin",
        month,
        slo: &slo,
        calendar: &calendar,
        timeline: &t,
        incidents: &[inc],
        latency: None,
        monthly_fee_cents: Some(500_000),
        now: ts("2026-04-01T08:00:00Z"),
    })?;
    std::fs::write(&out, render_html(std::slice::from_ref(&r))?)?;
    std::fs::write(format!("{out}.json"), render_json(&[r]))?;
    println!("wrote {out} and {out}.json");
    Ok(())
}

//! The monthly SLA report per tenant environment, as data, JSON and one self-contained HTML
//! page (inline CSS and SVG, no external asset) a customer can be sent.

use std::fmt::Write;

use jiff::civil::Time;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::account::{account_month, credit_owed, CreditOwed, MinuteClass, Timeline};
use crate::calendar::{zone, CalendarEntry, Month, MonthSpan};
use crate::incident::{ClockStatus, Incident};
use crate::model::{EnvironmentKind, Severity, Slo, UnknownPolicy};
use crate::store::{LatencyHistogram, SeriesKey, Store};
use crate::{Error, Percent};

/// Everything one environment's report is computed from.
pub struct ReportInput<'a> {
    pub tenant: &'a str,
    pub environment: &'a str,
    pub environment_kind: EnvironmentKind,
    /// The tenant's IANA zone.
    pub time_zone: &'a str,
    pub month: Month,
    pub slo: &'a Slo,
    pub calendar: &'a [CalendarEntry],
    /// The critical journey's minutes, covering the month and N−1 minutes either side
    /// ([`month_timeline`] reads exactly that from a [`Store`]).
    pub timeline: &'a Timeline,
    /// Incidents of any environment; those of this one overlapping the month are reported.
    pub incidents: &'a [Incident],
    pub latency: Option<&'a LatencyHistogram>,
    pub monthly_fee_cents: Option<u64>,
    /// For clocks of incidents still open.
    pub now: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ms: u32,
    pub p95_ms: u32,
    pub p99_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentSummary {
    pub id: String,
    pub severity: Severity,
    pub started_at: Timestamp,
    pub opened_at: Timestamp,
    pub acknowledged_at: Option<Timestamp>,
    pub restored_at: Option<Timestamp>,
    pub resolved_at: Option<Timestamp>,
    pub time_to_acknowledge: ClockStatus,
    pub time_to_restore: ClockStatus,
    pub notifications_sent: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineRun {
    pub start: Timestamp,
    pub minutes: u32,
    pub class: MinuteClass,
}

/// One environment's month.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonthlyReport {
    pub tenant: String,
    pub environment: String,
    pub environment_kind: EnvironmentKind,
    pub tier: String,
    pub month: Month,
    pub time_zone: String,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub minutes_in_month: u32,
    pub up_minutes: u32,
    pub down_minutes: u32,
    pub excluded_minutes: u32,
    pub unknown_minutes: u32,
    pub down_in_maintenance_minutes: u32,
    pub unknown_counts_as: UnknownPolicy,
    /// Rounded down to 0.0001 %; `None` when no minute was valid.
    pub availability: Option<Percent>,
    pub objective: Percent,
    pub objective_met: Option<bool>,
    /// Minutes, three decimals.
    pub error_budget_minutes: String,
    /// Percent of the budget used, two decimals (above 100 when overspent).
    pub error_budget_used_percent: String,
    pub latency: Option<LatencySummary>,
    pub incidents: Vec<IncidentSummary>,
    pub credit: Option<CreditOwed>,
    pub timeline: Vec<TimelineRun>,
}

/// Reads the critical journey's minutes for `month` in `zone` (plus N−1 either side).
pub fn month_timeline(
    store: &mut Store,
    key: &SeriesKey,
    span: &MonthSpan,
    slo: &Slo,
) -> Result<Timeline, Error> {
    let lead = slo.bad_minute.consecutive_failures.saturating_sub(1);
    let from = Timestamp::from_second(span.start.as_second() - 60 * i64::from(lead))
        .map_err(|e| Error::time("month", e))?;
    store.timeline(key, from, span.minutes + 2 * lead)
}

/// The latency histogram for a local month. Histograms are kept per UTC month, so this is the
/// UTC month holding the local month's middle: off by the zone's offset (at most ~14 hours) at
/// either end, which a latency distribution over a month does not notice; the minute states
/// are exact.
pub fn month_latency(
    store: &mut Store,
    key: &SeriesKey,
    span: &MonthSpan,
) -> Result<LatencyHistogram, Error> {
    let mid = Timestamp::from_second((span.start.as_second() + span.end.as_second()) / 2)
        .map_err(|e| Error::time("month", e))?;
    let m = Month::of_utc(mid);
    store.histogram(key, m, m)
}

/// Computes one environment's report.
pub fn monthly_report(input: &ReportInput<'_>) -> Result<MonthlyReport, Error> {
    let tz = zone(
        input.time_zone,
        &format!("tenant {:?}: timeZone", input.tenant),
    )?;
    let span = MonthSpan::new(input.month, &tz)?;
    let a = account_month(input.timeline, &span, input.calendar, input.slo)?;
    let bp = a.budget_used_bp();
    let mut incidents = Vec::new();
    for i in input.incidents.iter().filter(|i| {
        i.tenant == input.tenant
            && i.environment == input.environment
            && i.started_at < span.end
            && i.restored_at
                .or(i.resolved.as_ref().map(|r| r.at))
                .is_none_or(|t| t >= span.start)
    }) {
        incidents.push(IncidentSummary {
            id: i.id.clone(),
            severity: i.severity,
            started_at: i.started_at,
            opened_at: i.opened_at,
            acknowledged_at: i.acknowledged.as_ref().map(|a| a.at),
            restored_at: i.restored_at,
            resolved_at: i.resolved.as_ref().map(|r| r.at),
            time_to_acknowledge: i.time_to_acknowledge(input.slo, input.now)?,
            time_to_restore: i.time_to_restore(input.slo, input.now)?,
            notifications_sent: i.notifications.len(),
        });
    }
    incidents.sort_by_key(|i| i.started_at);
    Ok(MonthlyReport {
        tenant: input.tenant.into(),
        environment: input.environment.into(),
        environment_kind: input.environment_kind,
        tier: input.slo.tier.clone(),
        month: input.month,
        time_zone: input.time_zone.into(),
        period_start: span.start,
        period_end: span.end,
        minutes_in_month: span.minutes,
        up_minutes: a.up,
        down_minutes: a.down,
        excluded_minutes: a.excluded,
        unknown_minutes: a.unknown,
        down_in_maintenance_minutes: a.down_in_maintenance,
        unknown_counts_as: a.unknown_policy,
        availability: a.availability(),
        objective: a.objective,
        objective_met: a.met_objective(),
        error_budget_minutes: format!(
            "{}.{:03}",
            a.budget_milli_minutes() / 1000,
            a.budget_milli_minutes() % 1000
        ),
        error_budget_used_percent: if bp == u64::MAX {
            "overspent".into()
        } else {
            format!("{}.{:02}", bp / 100, bp % 100)
        },
        latency: input.latency.and_then(|h| {
            Some(LatencySummary {
                samples: h.count(),
                p50_ms: h.quantile_permille(500)?,
                p95_ms: h.quantile_permille(950)?,
                p99_ms: h.quantile_permille(990)?,
            })
        }),
        incidents,
        credit: credit_owed(
            a.good(),
            a.valid(),
            &input.slo.credits,
            input.monthly_fee_cents,
        ),
        timeline: a
            .runs()
            .into_iter()
            .map(|(s, n, class)| TimelineRun {
                start: span.minute_start(s),
                minutes: n,
                class,
            })
            .collect(),
    })
}

/// The reports as pretty JSON.
pub fn render_json(reports: &[MonthlyReport]) -> String {
    serde_json::to_string_pretty(reports).expect("reports serialize")
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn color(c: MinuteClass) -> &'static str {
    match c {
        MinuteClass::Up => "#2e7d32",
        MinuteClass::Down => "#c62828",
        MinuteClass::Excluded => "#1565c0",
        MinuteClass::Unknown => "#9e9e9e",
    }
}

fn hm(seconds: i64) -> String {
    format!("{}h{:02}", seconds / 3600, seconds % 3600 / 60)
}

fn clock(c: &ClockStatus) -> String {
    match c {
        ClockStatus::Met {
            seconds,
            target_seconds,
        } => format!("{} (target {}) met", hm(*seconds), hm(*target_seconds)),
        ClockStatus::Breached {
            seconds,
            target_seconds,
            running,
        } => {
            format!(
                "{}{} (target {}) BREACHED",
                hm(*seconds),
                if *running { "+" } else { "" },
                hm(*target_seconds)
            )
        }
        ClockStatus::Running {
            seconds,
            target_seconds,
        } => format!("{}+ (target {}) running", hm(*seconds), hm(*target_seconds)),
        ClockStatus::NoTarget { seconds, running } => format!(
            "{}{} (no target)",
            hm(*seconds),
            if *running { "+" } else { "" }
        ),
    }
}

/// The availability timeline: one row per local day (23, 24 or 25 hours long), minutes left
/// to right from local midnight.
fn svg(r: &MonthlyReport) -> Result<String, Error> {
    let tz = zone(&r.time_zone, &format!("tenant {:?}: timeZone", r.tenant))?;
    const X0: f64 = 56.0;
    const PX_PER_MIN: f64 = 0.5;
    const ROW: f64 = 14.0;
    let first = r.month.first_day();
    let days = first.days_in_month() as usize;
    let width = X0 + 25.0 * 60.0 * PX_PER_MIN + 4.0;
    let height = ROW * days as f64 + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="availability timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">"#
    );
    for h in (0..=24).step_by(6) {
        let x = X0 + f64::from(h) * 60.0 * PX_PER_MIN;
        let _ = write!(
            s,
            r##"<text x="{x}" y="{}" fill="#555">{h:02}:00</text>"##,
            height - 4.0
        );
    }
    let midnight = |d: jiff::civil::Date| -> Result<Timestamp, Error> {
        tz.to_ambiguous_timestamp(d.to_datetime(Time::midnight()))
            .compatible()
            .map_err(|e| Error::time("report", e))
    };
    for day in 0..days {
        let d = first
            .checked_add(jiff::Span::new().days(day as i64))
            .map_err(|e| Error::time("report", e))?;
        let (a, b) = (
            midnight(d)?,
            midnight(d.tomorrow().map_err(|e| Error::time("report", e))?)?,
        );
        let y = ROW * day as f64;
        let _ = write!(
            s,
            r#"<text x="0" y="{}"><title>{d}</title>{}</text>"#,
            y + 10.0,
            d.strftime("%a %d")
        );
        for run in &r.timeline {
            let rs = run.start.as_second();
            let re = rs + 60 * i64::from(run.minutes);
            let (s0, e0) = (rs.max(a.as_second()), re.min(b.as_second()));
            if e0 <= s0 {
                continue;
            }
            let x = X0 + (s0 - a.as_second()) as f64 / 60.0 * PX_PER_MIN;
            let w = ((e0 - s0) as f64 / 60.0 * PX_PER_MIN).max(1.0);
            let _ = write!(
                s,
                r#"<rect x="{x}" y="{}" width="{w}" height="{}" fill="{}"><title>{} {} min from {}</title></rect>"#,
                y + 2.0,
                ROW - 3.0,
                color(run.class),
                format!("{:?}", run.class).to_lowercase(),
                (e0 - s0) / 60,
                Timestamp::from_second(s0)
                    .expect("in range")
                    .to_zoned(tz.clone())
                    .strftime("%H:%M %Z"),
            );
        }
    }
    s.push_str("</svg>");
    Ok(s)
}

/// One self-contained page for the reports (no script, no external asset).
pub fn render_html(reports: &[MonthlyReport]) -> Result<String, Error> {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Service level report</title>\
<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f4f4f4}.bad{color:#c62828;font-weight:bold}\
.ok{color:#2e7d32;font-weight:bold}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}\
section{page-break-after:always;margin-bottom:3em}</style></head><body>\n",
    );
    for r in reports {
        let tz = zone(&r.time_zone, &format!("tenant {:?}: timeZone", r.tenant))?;
        let local = |t: Timestamp| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string()
        };
        let avail = r
            .availability
            .map_or("no measurement".to_string(), |p| format!("{p} %"));
        let met = match r.objective_met {
            Some(true) => "<span class=\"ok\">met</span>",
            Some(false) => "<span class=\"bad\">missed</span>",
            None => "no measurement",
        };
        let credit = match &r.credit {
            Some(c) => format!(
                "<span class=\"bad\">{} % of the monthly fee</span>{} (availability below {} %)",
                c.credit,
                c.amount_cents
                    .map_or(String::new(), |a| format!(" = {}.{:02}", a / 100, a % 100)),
                c.below
            ),
            None => "none".into(),
        };
        let _ = write!(
            h,
            "<section><h1>{} / {} — {}</h1><p>Service tier <b>{}</b>, {} environment, time zone {}: {} to {}.</p>\n<table>\
<tr><th>Availability</th><td>{}</td></tr><tr><th>Objective</th><td>{} % — {}</td></tr>\
<tr><th>Minutes in month</th><td>{}</td></tr><tr><th>Up</th><td>{}</td></tr><tr><th>Down</th><td>{}</td></tr>\
<tr><th>Excluded (approved maintenance)</th><td>{} (of which {} down)</td></tr><tr><th>Unknown (no data)</th><td>{} — counted as {}</td></tr>\
<tr><th>Error budget</th><td>{} minutes, {} % used</td></tr><tr><th>Service credit</th><td>{}</td></tr>",
            esc(&r.tenant),
            esc(&r.environment),
            r.month,
            esc(&r.tier),
            if r.environment_kind == EnvironmentKind::Production { "production" } else { "non-production" },
            esc(&r.time_zone),
            local(r.period_start),
            local(r.period_end),
            avail,
            r.objective,
            met,
            r.minutes_in_month,
            r.up_minutes,
            r.down_minutes,
            r.excluded_minutes,
            r.down_in_maintenance_minutes,
            r.unknown_minutes,
            match r.unknown_counts_as {
                UnknownPolicy::Down => "down",
                UnknownPolicy::Excluded => "excluded",
            },
            r.error_budget_minutes,
            esc(&r.error_budget_used_percent),
            credit,
        );
        if let Some(l) = &r.latency {
            let _ = write!(h, "<tr><th>Latency (journey)</th><td>p50 ≤ {} ms, p95 ≤ {} ms, p99 ≤ {} ms ({} samples)</td></tr>", l.p50_ms, l.p95_ms, l.p99_ms, l.samples);
        }
        h.push_str("</table>\n<div class=\"legend\">");
        for c in [
            MinuteClass::Up,
            MinuteClass::Down,
            MinuteClass::Excluded,
            MinuteClass::Unknown,
        ] {
            let label = match c {
                MinuteClass::Up => "up",
                MinuteClass::Down => "down",
                MinuteClass::Excluded => "maintenance",
                MinuteClass::Unknown => "no data",
            };
            let _ = write!(h, "<span style=\"background:{}\"></span>{label}", color(c));
        }
        h.push_str("</div>\n");
        h.push_str(&svg(r)?);
        h.push_str("\n<h2>Incidents</h2>");
        if r.incidents.is_empty() {
            h.push_str("<p>None.</p>");
        } else {
            h.push_str("<table><tr><th>Incident</th><th>Severity</th><th>Started</th><th>Time to acknowledge</th><th>Time to restore</th><th>Resolved</th></tr>");
            for i in &r.incidents {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&i.id),
                    i.severity,
                    local(i.started_at),
                    clock(&i.time_to_acknowledge),
                    clock(&i.time_to_restore),
                    i.resolved_at.map_or("open".into(), local),
                );
            }
            h.push_str("</table>");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

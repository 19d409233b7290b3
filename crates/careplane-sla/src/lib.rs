//! careplane's SLA engine (issue 17, docs/design/0009-slo-and-sla.md): the pure logic that
//! `careplane serve` and `careplane sla report` sit on.
//!
//! Time is always a parameter: no function here reads a clock, so months of probe results
//! can be replayed on a simulated clock. Percentages are exact ([`Percent`], parts per
//! million) and compared by integer arithmetic.
//!
//! - [`model`]: probe results and the SLO of a service tier.
//! - [`calendar`]: the tenant's calendar month, maintenance windows and freezes, support hours.
//! - [`account`]: minute timelines, the bad-minute rule, monthly accounting and credits.
//! - [`burn`]: multi-window multi-burn-rate alerts.
//! - [`incident`]: incidents, their clocks and escalation.
//! - [`store`]: compact per-minute storage of probe results.
//! - [`report`]: the monthly report and its JSON and HTML renderings.

pub mod account;
pub mod burn;
pub mod calendar;
mod error;
pub mod incident;
pub mod model;
mod percent;
pub mod report;
pub mod store;

pub use account::{
    account_month, credit_owed, CreditOwed, MinuteClass, MonthAccount, Observation, Timeline,
};
pub use burn::{evaluate_burn, Burn, BurnAlert, BurnRule};
pub use calendar::{CalendarEntry, EntryKind, Month, MonthSpan, Schedule, SupportHours, Weekday};
pub use error::Error;
pub use incident::{
    detect, due_notifications, observe_recovery, ClockStatus, Delivery, Detection, DueNotification,
    Incident,
};
pub use model::{
    BadMinuteRule, CreditTier, EnvironmentKind, EscalationPolicy, EscalationStep, Impact, Outcome,
    ProbeResult, Severity, SeverityMatrix, SeverityTarget, Slo, StepTiming, TargetClock,
    UnknownPolicy,
};
pub use percent::Percent;
pub use report::{
    month_latency, month_timeline, monthly_report, render_html, render_json, MonthlyReport,
    ReportInput,
};
pub use store::{LatencyHistogram, SeriesId, SeriesKey, Store};

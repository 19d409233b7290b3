//! Probe results and the SLO of a service tier (serde; the spec's `ServiceTier` maps onto
//! [`Slo`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::calendar::SupportHours;
use crate::{Error, Percent};

/// What one probe run concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Up,
    Down,
    /// The prober could not tell (its own timeout budget, a crash, a missing credential):
    /// not evidence that the service is up.
    Unknown,
}

/// One timed step of a user journey (log in, list purchase orders, render a report, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    pub name: String,
    pub ms: u32,
    pub ok: bool,
}

/// One probe run against one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The probe's id, e.g. `journey-login` (the tier's critical journey is one of them).
    pub probe: String,
    pub tenant: String,
    pub environment: String,
    /// When the probe started, UTC.
    pub at: Timestamp,
    pub outcome: Outcome,
    /// Total latency in milliseconds.
    pub latency_ms: u32,
    /// Per-step timings of a journey; empty for single-request probes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepTiming>,
}

/// What counts as a bad minute: the critical journey failing on N consecutive minutes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BadMinuteRule {
    /// The probe id of the critical journey.
    pub probe: String,
    /// N ≥ 1.
    pub consecutive_failures: u32,
}

/// How minutes without evidence count. There is deliberately no "up".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    /// Counted against availability and toward credits (the provider owns the monitoring).
    #[default]
    Down,
    /// Dropped from the denominator, like approved maintenance.
    Excluded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    P1,
    P2,
    P3,
    P4,
}

/// Production or not: the scope half of the severity matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnvironmentKind {
    Production,
    NonProduction,
}

/// Down (the critical journey fails) or degraded (another probe fails, or the journey is slow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    Down,
    Degraded,
}

/// Severity by environment kind × impact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeverityMatrix {
    pub production_down: Severity,
    pub production_degraded: Severity,
    pub other_down: Severity,
    pub other_degraded: Severity,
}

impl Default for SeverityMatrix {
    fn default() -> Self {
        SeverityMatrix {
            production_down: Severity::P1,
            production_degraded: Severity::P2,
            other_down: Severity::P3,
            other_degraded: Severity::P4,
        }
    }
}

impl SeverityMatrix {
    pub fn severity(&self, kind: EnvironmentKind, impact: Impact) -> Severity {
        match (kind, impact) {
            (EnvironmentKind::Production, Impact::Down) => self.production_down,
            (EnvironmentKind::Production, Impact::Degraded) => self.production_degraded,
            (EnvironmentKind::NonProduction, Impact::Down) => self.other_down,
            (EnvironmentKind::NonProduction, Impact::Degraded) => self.other_degraded,
        }
    }
}

/// Which clock a target runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetClock {
    /// Wall-clock time, 24×7.
    #[default]
    Always,
    /// Only time inside the tier's support hours counts.
    SupportHours,
}

/// Response (acknowledge) and restore targets for one severity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeverityTarget {
    pub severity: Severity,
    pub respond_minutes: u32,
    pub restore_minutes: u32,
    #[serde(default)]
    pub clock: TargetClock,
}

/// One row of the credit table: below `below` availability, `credit` of the monthly fee.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditTier {
    pub below: Percent,
    pub credit: Percent,
}

/// One escalation step: after `after_minutes` unacknowledged, notify these roles/channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EscalationStep {
    pub after_minutes: u32,
    /// Role or channel names (`on-call`, `webhook:ops`), never addresses or secrets.
    pub notify: Vec<String>,
}

/// Escalation for one severity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EscalationPolicy {
    pub severity: Severity,
    /// In increasing `after_minutes`; the first is normally at 0 (on opening).
    pub steps: Vec<EscalationStep>,
    /// While unacknowledged, re-notify the latest step's recipients this often.
    #[serde(default)]
    pub repeat_minutes: Option<u32>,
    /// An incident still unrestored this long after it started notifies `executive`.
    #[serde(default)]
    pub executive_after_minutes: Option<u32>,
    #[serde(default)]
    pub executive: Vec<String>,
}

/// The SLO of a service tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slo {
    /// The tier's name (`gold`).
    pub tier: String,
    /// Availability objective per calendar month, below 100.
    pub objective: Percent,
    pub bad_minute: BadMinuteRule,
    #[serde(default)]
    pub unknown: UnknownPolicy,
    #[serde(default)]
    pub support_hours: SupportHours,
    #[serde(default)]
    pub targets: Vec<SeverityTarget>,
    #[serde(default)]
    pub severity: SeverityMatrix,
    #[serde(default)]
    pub credits: Vec<CreditTier>,
    #[serde(default)]
    pub escalation: Vec<EscalationPolicy>,
}

impl Slo {
    /// Checks everything the arithmetic relies on; errors name the tier and the field.
    pub fn validate(&self) -> Result<(), Error> {
        let at = |field: &str| format!("service tier {:?}: {field}", self.tier);
        if self.objective.ppm() >= Percent::FULL {
            return Err(Error::invalid(
                at("objective"),
                "must be below 100 (an objective of 100 % leaves no error budget)",
            ));
        }
        if self.bad_minute.consecutive_failures == 0 {
            return Err(Error::invalid(
                at("badMinute.consecutiveFailures"),
                "must be at least 1",
            ));
        }
        if self.bad_minute.probe.trim().is_empty() {
            return Err(Error::invalid(at("badMinute.probe"), "names no probe"));
        }
        self.support_hours.validate(&at("supportHours"))?;
        for (i, c) in self.credits.iter().enumerate() {
            if c.below.ppm() == 0 {
                return Err(Error::invalid(
                    at(&format!("credits[{i}].below")),
                    "0 can never be undercut",
                ));
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|o| o.severity == t.severity) {
                return Err(Error::invalid(
                    at(&format!("targets[{i}].severity")),
                    format!("{:?} is listed twice", t.severity),
                ));
            }
        }
        for (i, e) in self.escalation.iter().enumerate() {
            if self.escalation[..i]
                .iter()
                .any(|o| o.severity == e.severity)
            {
                return Err(Error::invalid(
                    at(&format!("escalation[{i}].severity")),
                    format!("{:?} is listed twice", e.severity),
                ));
            }
            if e.steps
                .windows(2)
                .any(|w| w[1].after_minutes <= w[0].after_minutes)
            {
                return Err(Error::invalid(
                    at(&format!("escalation[{i}].steps")),
                    "afterMinutes must increase from step to step",
                ));
            }
            if e.repeat_minutes == Some(0) {
                return Err(Error::invalid(
                    at(&format!("escalation[{i}].repeatMinutes")),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    pub fn target(&self, severity: Severity) -> Option<&SeverityTarget> {
        self.targets.iter().find(|t| t.severity == severity)
    }

    pub fn escalation_for(&self, severity: Severity) -> Option<&EscalationPolicy> {
        self.escalation.iter().find(|e| e.severity == severity)
    }
}

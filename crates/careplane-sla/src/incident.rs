//! Incidents: opened from the critical journey's failures, acknowledged, annotated and
//! resolved by people, measured against the tier's targets, escalated by schedule.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::account::{Observation, Timeline};
use crate::model::{EnvironmentKind, Impact, Severity, Slo, TargetClock};
use crate::Error;

/// A failure run long enough to open an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// The first failed minute of the run.
    pub started_at: Timestamp,
    pub failing_minutes: u32,
}

fn minute_floor(ts: Timestamp) -> i64 {
    ts.as_second().div_euclid(60) * 60
}

fn ts(sec: i64) -> Timestamp {
    Timestamp::from_second(sec).expect("in range")
}

/// Whether the critical journey has failed persistently: its last N whole minutes before `now`
/// all failed (N from the tier's bad-minute rule).
pub fn detect(timeline: &Timeline, slo: &Slo, now: Timestamp) -> Option<Detection> {
    let n = slo.bad_minute.consecutive_failures.max(1);
    let end = minute_floor(now);
    let mut k = 0u32;
    loop {
        let m = ts(end - 60 * i64::from(k + 1));
        if m < timeline.start || timeline.slice(m, 1)[0] != Observation::Failed {
            break;
        }
        k += 1;
    }
    (k >= n).then(|| Detection {
        started_at: ts(end - 60 * i64::from(k)),
        failing_minutes: k,
    })
}

/// Sets `restored_at` once the journey answers again: the first up minute after the last
/// failed one, if every minute since is up. Returns whether it changed the incident.
pub fn observe_recovery(incident: &mut Incident, timeline: &Timeline, now: Timestamp) -> bool {
    if incident.restored_at.is_some() || incident.resolved.is_some() {
        return false;
    }
    let from = incident.started_at.max(timeline.start);
    let minutes = ((minute_floor(now) - from.as_second()) / 60).max(0) as u32;
    let obs = timeline.slice(from, minutes);
    let Some(last_fail) = obs.iter().rposition(|&o| o == Observation::Failed) else {
        return false;
    };
    let after = &obs[last_fail + 1..];
    if !after.is_empty() && after.iter().all(|&o| o == Observation::Up) {
        incident.restored_at = Some(ts(from.as_second() + 60 * (last_fail as i64 + 1)));
        return true;
    }
    false
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorTime {
    pub actor: String,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub actor: String,
    pub at: Timestamp,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub actor: String,
    pub at: Timestamp,
    pub summary: String,
}

/// A notification the server sent, recorded on the incident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentNotification {
    pub key: String,
    pub at: Timestamp,
    pub recipients: Vec<String>,
}

/// One channel's delivery of one notification: every attempt counted, the last failure
/// kept (what the channel answered, never a secret), `delivered_at` once it took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The notification's key (`step-0`, `repeat-…`, `executive`, `resolved`).
    pub key: String,
    pub channel: String,
    pub attempts: u32,
    pub last_attempt_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub id: String,
    pub tenant: String,
    pub environment: String,
    pub environment_kind: EnvironmentKind,
    pub probe: String,
    pub impact: Impact,
    pub severity: Severity,
    /// When the failure began (first failed minute): the restore clock starts here.
    pub started_at: Timestamp,
    /// When the incident was opened: the acknowledge clock starts here.
    pub opened_at: Timestamp,
    pub restored_at: Option<Timestamp>,
    pub acknowledged: Option<ActorTime>,
    pub resolved: Option<Resolution>,
    pub notes: Vec<Note>,
    pub notifications: Vec<SentNotification>,
    /// Each channel's attempts at each notification (incidents written before this
    /// field have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<Delivery>,
}

/// Where a clock stands against its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ClockStatus {
    /// Stopped within the target.
    Met { seconds: i64, target_seconds: i64 },
    /// Stopped late, or still running past the target.
    Breached {
        seconds: i64,
        target_seconds: i64,
        running: bool,
    },
    /// Still running, within the target so far.
    Running { seconds: i64, target_seconds: i64 },
    /// The tier sets no target for this severity.
    NoTarget { seconds: i64, running: bool },
}

impl ClockStatus {
    /// `Some(true)` met, `Some(false)` breached, `None` undecided or no target.
    pub fn compliant(&self) -> Option<bool> {
        match self {
            ClockStatus::Met { .. } => Some(true),
            ClockStatus::Breached { .. } => Some(false),
            _ => None,
        }
    }
}

fn check_actor(id: &str, actor: &str) -> Result<(), Error> {
    if actor.trim().is_empty() {
        return Err(Error::Incident {
            incident: id.into(),
            message: "an action needs an actor".into(),
        });
    }
    Ok(())
}

impl Incident {
    /// Opens an incident for a detection, with the severity from the tier's matrix.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        id: &str,
        tenant: &str,
        environment: &str,
        environment_kind: EnvironmentKind,
        probe: &str,
        impact: Impact,
        detection: Detection,
        slo: &Slo,
        now: Timestamp,
    ) -> Incident {
        Incident {
            id: id.into(),
            tenant: tenant.into(),
            environment: environment.into(),
            environment_kind,
            probe: probe.into(),
            impact,
            severity: slo.severity.severity(environment_kind, impact),
            started_at: detection.started_at,
            opened_at: now,
            restored_at: None,
            acknowledged: None,
            resolved: None,
            notes: Vec::new(),
            notifications: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.resolved.is_none()
    }

    fn refuse(&self, message: String) -> Error {
        Error::Incident {
            incident: self.id.clone(),
            message,
        }
    }

    fn check_time(&self, what: &str, at: Timestamp) -> Result<(), Error> {
        if at < self.opened_at {
            return Err(self.refuse(format!(
                "{what} at {at} is before the incident opened ({})",
                self.opened_at
            )));
        }
        Ok(())
    }

    pub fn acknowledge(&mut self, actor: &str, at: Timestamp) -> Result<(), Error> {
        check_actor(&self.id, actor)?;
        if let Some(r) = &self.resolved {
            return Err(self.refuse(format!("already resolved by {} at {}", r.actor, r.at)));
        }
        if let Some(a) = &self.acknowledged {
            return Err(self.refuse(format!("already acknowledged by {} at {}", a.actor, a.at)));
        }
        self.check_time("acknowledgement", at)?;
        self.acknowledged = Some(ActorTime {
            actor: actor.into(),
            at,
        });
        Ok(())
    }

    /// Notes may be added after resolution too (post-incident review).
    pub fn note(&mut self, actor: &str, at: Timestamp, text: &str) -> Result<(), Error> {
        check_actor(&self.id, actor)?;
        self.check_time("note", at)?;
        if text.trim().is_empty() {
            return Err(self.refuse("a note needs text".into()));
        }
        self.notes.push(Note {
            actor: actor.into(),
            at,
            text: text.into(),
        });
        Ok(())
    }

    /// Resolves; an unacknowledged incident is acknowledged by the same act, and one not yet
    /// seen restored is taken as restored now.
    pub fn resolve(&mut self, actor: &str, at: Timestamp, summary: &str) -> Result<(), Error> {
        check_actor(&self.id, actor)?;
        if let Some(r) = &self.resolved {
            return Err(self.refuse(format!("already resolved by {} at {}", r.actor, r.at)));
        }
        self.check_time("resolution", at)?;
        if let Some(a) = &self.acknowledged {
            if at < a.at {
                return Err(self.refuse(format!(
                    "resolution at {at} is before its acknowledgement at {}",
                    a.at
                )));
            }
        } else {
            self.acknowledged = Some(ActorTime {
                actor: actor.into(),
                at,
            });
        }
        if self.restored_at.is_none() {
            self.restored_at = Some(at);
        }
        self.resolved = Some(Resolution {
            actor: actor.into(),
            at,
            summary: summary.into(),
        });
        Ok(())
    }

    /// Records that the server sent `n` at `at`.
    pub fn record_notification(&mut self, n: &DueNotification, at: Timestamp) {
        if !self.notifications.iter().any(|s| s.key == n.key) {
            self.notifications.push(SentNotification {
                key: n.key.clone(),
                at,
                recipients: n.recipients.clone(),
            });
        }
    }

    /// Records one attempt of `channel` at the notification `key`: `Ok` once it took it,
    /// else what failed. A delivery already done is not counted again.
    pub fn record_delivery(
        &mut self,
        key: &str,
        channel: &str,
        at: Timestamp,
        result: Result<(), String>,
    ) {
        let i = match self
            .deliveries
            .iter()
            .position(|d| d.key == key && d.channel == channel)
        {
            Some(i) => i,
            None => {
                self.deliveries.push(Delivery {
                    key: key.into(),
                    channel: channel.into(),
                    attempts: 0,
                    last_attempt_at: at,
                    delivered_at: None,
                    last_error: None,
                });
                self.deliveries.len() - 1
            }
        };
        let d = &mut self.deliveries[i];
        if d.delivered_at.is_some() {
            return;
        }
        d.attempts = d.attempts.saturating_add(1);
        d.last_attempt_at = at;
        match result {
            Ok(()) => d.delivered_at = Some(at),
            Err(e) => d.last_error = Some(e),
        }
    }

    fn clock(
        &self,
        slo: &Slo,
        from: Timestamp,
        stop: Option<Timestamp>,
        now: Timestamp,
        respond: bool,
    ) -> Result<ClockStatus, Error> {
        let until = stop.unwrap_or(now).max(from);
        let target = slo.target(self.severity);
        let seconds = match target.map(|t| t.clock) {
            Some(TargetClock::SupportHours) => slo.support_hours.seconds_between(from, until)?,
            _ => until.as_second() - from.as_second(),
        };
        let running = stop.is_none();
        let Some(t) = target else {
            return Ok(ClockStatus::NoTarget { seconds, running });
        };
        let target_seconds = 60
            * i64::from(if respond {
                t.respond_minutes
            } else {
                t.restore_minutes
            });
        Ok(if seconds > target_seconds {
            ClockStatus::Breached {
                seconds,
                target_seconds,
                running,
            }
        } else if running {
            ClockStatus::Running {
                seconds,
                target_seconds,
            }
        } else {
            ClockStatus::Met {
                seconds,
                target_seconds,
            }
        })
    }

    /// Time to acknowledge, from `opened_at`, against the severity's response target.
    pub fn time_to_acknowledge(&self, slo: &Slo, now: Timestamp) -> Result<ClockStatus, Error> {
        self.clock(
            slo,
            self.opened_at,
            self.acknowledged.as_ref().map(|a| a.at),
            now,
            true,
        )
    }

    /// Time to restore, from `started_at`, against the severity's restore target.
    pub fn time_to_restore(&self, slo: &Slo, now: Timestamp) -> Result<ClockStatus, Error> {
        self.clock(slo, self.started_at, self.restored_at, now, false)
    }
}

/// Why a notification is due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Reason {
    Step {
        step: usize,
    },
    Repeat {
        step: usize,
        repeat: u32,
    },
    Executive,
    /// The incident was resolved: the channels that heard of it hear that it is over.
    Resolved,
}

/// A notification whose time has come and that is not recorded as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DueNotification {
    /// Stable per incident: `step-1`, `step-1-repeat-2`, `executive`.
    pub key: String,
    pub due_at: Timestamp,
    pub recipients: Vec<String>,
    pub reason: Reason,
}

/// What should have been sent by `now` and is not recorded on the incident: escalation steps
/// and repeats while unacknowledged, and the executive notice for a long outage. Nothing once
/// resolved.
pub fn due_notifications(incident: &Incident, slo: &Slo, now: Timestamp) -> Vec<DueNotification> {
    let Some(policy) = slo.escalation_for(incident.severity) else {
        return Vec::new();
    };
    if incident.resolved.is_some() {
        return Vec::new();
    }
    let ack = incident
        .acknowledged
        .as_ref()
        .map(|a| a.at.as_second())
        .unwrap_or(i64::MAX);
    let (now_s, open) = (now.as_second(), incident.opened_at.as_second());
    let mut out = Vec::new();
    let mut push = |key: String, at: i64, recipients: &[String], reason: Reason| {
        out.push(DueNotification {
            key,
            due_at: ts(at),
            recipients: recipients.to_vec(),
            reason,
        });
    };
    for (i, step) in policy.steps.iter().enumerate() {
        let due = open + 60 * i64::from(step.after_minutes);
        // The first step announces the incident whatever happens; later ones escalate only
        // while nobody has acknowledged it.
        if due > now_s || (i > 0 && due >= ack) {
            continue;
        }
        push(
            format!("step-{i}"),
            due,
            &step.notify,
            Reason::Step { step: i },
        );
        if let Some(r) = policy.repeat_minutes {
            let next = policy
                .steps
                .get(i + 1)
                .map(|s| open + 60 * i64::from(s.after_minutes))
                .unwrap_or(i64::MAX);
            let mut k = 1u32;
            loop {
                let at = due + 60 * i64::from(r) * i64::from(k);
                if at > now_s || at >= ack || at >= next {
                    break;
                }
                push(
                    format!("step-{i}-repeat-{k}"),
                    at,
                    &step.notify,
                    Reason::Repeat { step: i, repeat: k },
                );
                k += 1;
            }
        }
    }
    if let Some(after) = policy.executive_after_minutes {
        let due = incident.started_at.as_second() + 60 * i64::from(after);
        let restored = incident
            .restored_at
            .map(|t| t.as_second())
            .unwrap_or(i64::MAX);
        if due <= now_s && restored > due && !policy.executive.is_empty() {
            push(
                "executive".into(),
                due,
                &policy.executive,
                Reason::Executive,
            );
        }
    }
    out.retain(|n| !incident.notifications.iter().any(|s| s.key == n.key));
    out.sort_by_key(|n| n.due_at);
    out
}

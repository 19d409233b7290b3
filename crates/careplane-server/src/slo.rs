//! The SLO of each tenant, from its service tier in the specs, and which probe is the
//! critical journey.

use careplane_sla::{
    BadMinuteRule, CreditTier, EnvironmentKind, EscalationPolicy, EscalationStep, Percent,
    Severity, SeverityTarget, Slo, TargetClock,
};
use careplane_spec::SpecSet;

use crate::Error;

/// The critical journey: the Odoo login journey where careplane runs Odoo, else the
/// tenant's own PostgreSQL connection.
pub fn critical_probe(specs: &SpecSet) -> &'static str {
    if specs.platform.spec.odoo.is_some() {
        "odoo-login"
    } else {
        "postgres"
    }
}

/// Minutes of consecutive failure that make a bad minute (and open an incident).
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 2;

fn pct(s: &str) -> Percent {
    Percent::parse(s).expect("constant percentages parse")
}

/// The tenant's SLO: the tier's objective, and its `slo:` (bad-minute rule, response and
/// restore targets, credit table) over the defaults of docs/design/0012.
pub fn slo_for(specs: &SpecSet, tenant: &str) -> Result<Slo, Error> {
    let t = specs
        .tenants
        .iter()
        .find(|t| t.metadata.name == tenant)
        .ok_or_else(|| Error::NotFound(format!("tenant {tenant:?} in the specs")))?;
    let tier = specs.tier_of(&t.spec).ok_or_else(|| {
        Error::Invalid(format!(
            "tenant {tenant}: no service tier (and no platform default)"
        ))
    })?;
    let objective = Percent::parse(&format!("{}", tier.spec.availability)).map_err(|e| {
        Error::Invalid(format!(
            "service tier {}: availability {}: {e}",
            tier.metadata.name, tier.spec.availability
        ))
    })?;
    let target = |severity, respond_minutes, restore_minutes| SeverityTarget {
        severity,
        respond_minutes,
        restore_minutes,
        clock: TargetClock::Always,
    };
    let at = |field: &str| format!("service tier {}: spec.slo.{field}", tier.metadata.name);
    let spec = tier.spec.slo.clone().unwrap_or_default();
    let mut targets = vec![
        target(Severity::P1, 15, 240),
        target(Severity::P2, 60, 480),
        target(Severity::P3, 240, 1440),
        target(Severity::P4, 1440, 4320),
    ];
    let severity = |s: &str, field: String| match s {
        "P1" => Ok(Severity::P1),
        "P2" => Ok(Severity::P2),
        "P3" => Ok(Severity::P3),
        "P4" => Ok(Severity::P4),
        other => Err(Error::Invalid(format!(
            "{}: unknown severity {other:?}",
            at(&field)
        ))),
    };
    for (i, t) in spec.targets.iter().enumerate() {
        let sev = severity(&t.severity, format!("targets[{i}].severity"))?;
        targets.retain(|d| d.severity != sev);
        targets.push(target(sev, t.respond_minutes, t.restore_minutes));
    }
    targets.sort_by_key(|t| t.severity);
    let credits = if spec.credits.is_empty() {
        vec![
            CreditTier {
                below: objective,
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
        ]
    } else {
        let mut v = Vec::new();
        for (i, c) in spec.credits.iter().enumerate() {
            let p = |field: &str, x: f64| {
                Percent::parse(&format!("{x}")).map_err(|e| {
                    Error::Invalid(format!("{}: {e}", at(&format!("credits[{i}].{field}"))))
                })
            };
            v.push(CreditTier {
                below: p("below", c.below)?,
                credit: p("credit", c.credit)?,
            });
        }
        v
    };
    let slo = Slo {
        tier: tier.metadata.name.clone(),
        objective,
        bad_minute: BadMinuteRule {
            probe: critical_probe(specs).into(),
            consecutive_failures: spec
                .bad_minute_after
                .unwrap_or(DEFAULT_CONSECUTIVE_FAILURES),
        },
        unknown: Default::default(),
        support_hours: Default::default(),
        targets,
        severity: Default::default(),
        credits,
        escalation: escalation(specs, &spec, severity)?,
    };
    slo.validate()?;
    Ok(slo)
}

/// The tier's escalation; without one, every channel of the platform hears of every
/// incident when it opens (docs/design/0014).
fn escalation(
    specs: &SpecSet,
    spec: &careplane_spec::SloSpec,
    severity: impl Fn(&str, String) -> Result<Severity, Error>,
) -> Result<Vec<EscalationPolicy>, Error> {
    if spec.escalation.is_empty() {
        let all: Vec<String> = specs
            .platform
            .spec
            .notifications
            .iter()
            .flat_map(|n| n.channels.iter().map(|c| c.name.clone()))
            .collect();
        if all.is_empty() {
            return Ok(Vec::new());
        }
        return Ok([Severity::P1, Severity::P2, Severity::P3, Severity::P4]
            .into_iter()
            .map(|severity| EscalationPolicy {
                severity,
                steps: vec![EscalationStep {
                    after_minutes: 0,
                    notify: all.clone(),
                }],
                repeat_minutes: None,
                executive_after_minutes: None,
                executive: Vec::new(),
            })
            .collect());
    }
    spec.escalation
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(EscalationPolicy {
                severity: severity(&e.severity, format!("escalation[{i}].severity"))?,
                steps: e
                    .steps
                    .iter()
                    .map(|s| EscalationStep {
                        after_minutes: s.after_minutes,
                        notify: s.notify.clone(),
                    })
                    .collect(),
                repeat_minutes: e.repeat_minutes,
                executive_after_minutes: e.executive_after_minutes,
                executive: e.executive.clone(),
            })
        })
        .collect()
}

/// Production (and DR) count as production for severities.
pub fn environment_kind(specs: &SpecSet, tenant: &str, env: &str) -> EnvironmentKind {
    let kind = specs
        .tenants
        .iter()
        .find(|t| t.metadata.name == tenant)
        .and_then(|t| t.spec.environments.iter().find(|e| e.name == env))
        .map(|e| e.kind.as_str());
    match kind {
        Some("production") | Some("dr") => EnvironmentKind::Production,
        _ => EnvironmentKind::NonProduction,
    }
}

/// Every (tenant, environment) of the specs, optionally of one tenant.
pub fn environments(specs: &SpecSet, tenant: Option<&str>) -> Vec<(String, String)> {
    specs
        .tenants
        .iter()
        .filter(|t| tenant.is_none_or(|n| t.metadata.name == n))
        .flat_map(|t| {
            t.spec
                .environments
                .iter()
                .map(move |e| (t.metadata.name.clone(), e.name.clone()))
        })
        .collect()
}

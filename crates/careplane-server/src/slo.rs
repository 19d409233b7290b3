//! The SLO of each tenant, from its service tier in the specs, and which probe is the
//! critical journey.

use careplane_sla::{
    BadMinuteRule, CreditTier, EnvironmentKind, Percent, Severity, SeverityTarget, Slo, TargetClock,
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

/// The tenant's SLO: the tier's objective, the default bad-minute rule, response and
/// restore targets and credit table (see docs/design/0012).
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
    let slo = Slo {
        tier: tier.metadata.name.clone(),
        objective,
        bad_minute: BadMinuteRule {
            probe: critical_probe(specs).into(),
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
        },
        unknown: Default::default(),
        support_hours: Default::default(),
        targets: vec![
            target(Severity::P1, 15, 240),
            target(Severity::P2, 60, 480),
            target(Severity::P3, 240, 1440),
            target(Severity::P4, 1440, 4320),
        ],
        severity: Default::default(),
        credits: vec![
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
        ],
        escalation: Vec::new(),
    };
    slo.validate()?;
    Ok(slo)
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

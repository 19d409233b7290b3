//! `/metrics` in Prometheus text exposition format (0.0.4).

use std::fmt::Write;

use careplane_sla::{account_month, MonthSpan, SeriesKey};

use crate::probes::State;
use crate::slo::{critical_probe, slo_for};
use crate::{incidents, Error};

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub(crate) fn render(state: &State) -> Result<String, Error> {
    let mut out = String::new();
    let live = state.live();
    let labels = |t: &str, e: &str, p: &str| {
        format!(
            "tenant=\"{}\",environment=\"{}\",probe=\"{}\"",
            esc(t),
            esc(e),
            esc(p)
        )
    };
    head(
        &mut out,
        "careplane_probe_up",
        "gauge",
        "1 when the probe's latest stored run succeeded, 0 when it failed (absent while unknown).",
    );
    for l in live.latest.values().filter(|l| l.outcome != "unknown") {
        let _ = writeln!(
            out,
            "careplane_probe_up{{{}}} {}",
            labels(&l.tenant, &l.environment, &l.probe),
            u8::from(l.outcome == "up")
        );
    }
    head(
        &mut out,
        "careplane_probe_latency_seconds",
        "gauge",
        "Duration of the probe's latest stored run.",
    );
    for l in live.latest.values() {
        let _ = writeln!(
            out,
            "careplane_probe_latency_seconds{{{}}} {:.3}",
            labels(&l.tenant, &l.environment, &l.probe),
            f64::from(l.latency_ms) / 1000.0
        );
    }
    head(
        &mut out,
        "careplane_probe_tls_cert_days_left",
        "gauge",
        "Whole days until the certificate an HTTPS probe saw expires.",
    );
    for l in live.latest.values() {
        if let Some(d) = l.cert_days_left {
            let _ = writeln!(
                out,
                "careplane_probe_tls_cert_days_left{{{}}} {d}",
                labels(&l.tenant, &l.environment, &l.probe)
            );
        }
    }
    head(
        &mut out,
        "careplane_postgres_connection_saturation_ratio",
        "gauge",
        "The tenant role's connections over its connection limit.",
    );
    for l in live.latest.values() {
        if let Some(s) = l.saturation_permille {
            let _ = writeln!(
                out,
                "careplane_postgres_connection_saturation_ratio{{{}}} {:.3}",
                labels(&l.tenant, &l.environment, &l.probe),
                f64::from(s) / 1000.0
            );
        }
    }
    head(
        &mut out,
        "careplane_redis_memory_used_ratio",
        "gauge",
        "The Redis server's used_memory over its maxmemory.",
    );
    for l in live.latest.values() {
        if let Some(s) = l.memory_used_permille {
            let _ = writeln!(
                out,
                "careplane_redis_memory_used_ratio{{{}}} {:.3}",
                labels(&l.tenant, &l.environment, &l.probe),
                f64::from(s) / 1000.0
            );
        }
    }
    head(
        &mut out,
        "careplane_probe_results_total",
        "counter",
        "Probe results received, by outcome.",
    );
    for (i, o) in ["up", "down", "unknown"].iter().enumerate() {
        let _ = writeln!(
            out,
            "careplane_probe_results_total{{outcome=\"{o}\"}} {}",
            live.received[i]
        );
    }
    head(
        &mut out,
        "careplane_probe_results_acknowledged_total",
        "counter",
        "Probe results made durable in the SLA store.",
    );
    let _ = writeln!(
        out,
        "careplane_probe_results_acknowledged_total {}",
        live.acknowledged
    );
    head(
        &mut out,
        "careplane_store_errors_total",
        "counter",
        "Batches of results the SLA store failed to record.",
    );
    let _ = writeln!(out, "careplane_store_errors_total {}", live.store_errors);
    let envs: Vec<(String, String)> = live.environments.keys().cloned().collect();
    drop(live);

    let all = incidents::load(&state.data_dir)?;
    head(
        &mut out,
        "careplane_incidents_open",
        "gauge",
        "Open incidents, by severity.",
    );
    for sev in ["P1", "P2", "P3", "P4"] {
        let n = all
            .iter()
            .filter(|i| i.is_open() && format!("{:?}", i.severity) == sev)
            .count();
        let _ = writeln!(out, "careplane_incidents_open{{severity=\"{sev}\"}} {n}");
    }

    // This month's accounting of each environment's critical journey, as the report does it.
    let now = (state.clock)();
    head(
        &mut out,
        "careplane_sla_availability_ratio",
        "gauge",
        "This month's availability so far (valid minutes only).",
    );
    let mut budget = String::new();
    head(
        &mut budget,
        "careplane_sla_error_budget_used_ratio",
        "gauge",
        "This month's error budget used so far (above 1 when overspent).",
    );
    let mut store = state.store();
    for (t, e) in envs {
        let Ok(slo) = slo_for(&state.specs, &t) else {
            continue;
        };
        let cal = crate::calendar::calendar_of(&state.specs, &t, &e)?;
        let span = MonthSpan::new(cal.month_of(now)?, &cal.zone)?;
        let key = SeriesKey::new(&t, &e, critical_probe(&state.specs));
        let tl = careplane_sla::month_timeline(&mut store, &key, &span, &slo)?;
        let a = account_month(&tl, &span, &cal.entries, &slo)?;
        let l = format!("tenant=\"{}\",environment=\"{}\"", esc(&t), esc(&e));
        if let Some(av) = a.availability() {
            let _ = writeln!(
                out,
                "careplane_sla_availability_ratio{{{l}}} {:.6}",
                f64::from(av.ppm()) / 1e6
            );
        }
        let bp = a.budget_used_bp();
        if bp != u64::MAX {
            let _ = writeln!(
                budget,
                "careplane_sla_error_budget_used_ratio{{{l}}} {:.4}",
                bp as f64 / 10_000.0
            );
        }
    }
    out.push_str(&budget);
    Ok(out)
}

//! A ServiceTier's `slo:` reaches the SLO the server measures with; bad values are refused
//! at `validate` with their location.

use careplane_sla::{Percent, Severity};

const SPECS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata:
  name: p
spec:
  dataDir: ./data
  defaults:
    serviceTier: gold
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: gold
spec:
  availability: 99.9
  rto: 1h
  rpo: 15m
  supportHours: 24x7
  SLO
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: stmarys
spec:
  environments:
    - name: prod
      kind: production
"#;

fn load(slo: &str) -> Result<careplane_spec::SpecSet, String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("specs.yaml");
    std::fs::write(&f, SPECS.replace("SLO", slo)).unwrap();
    careplane_spec::load(&[f]).map_err(|d| d.to_string())
}

#[test]
fn the_tier_slo_overrides_the_defaults() {
    let specs = load(
        "slo:\n    badMinuteAfter: 3\n    targets:\n      - {severity: P1, respondMinutes: 5, restoreMinutes: 60}\n    credits:\n      - {below: 99.9, credit: 5}\n      - {below: 98.5, credit: 30}",
    )
    .unwrap();
    let slo = careplane_server::slo::slo_for(&specs, "stmarys").unwrap();
    assert_eq!(slo.objective, Percent::parse("99.9").unwrap());
    assert_eq!(slo.bad_minute.consecutive_failures, 3);
    let p1 = slo.target(Severity::P1).unwrap();
    assert_eq!((p1.respond_minutes, p1.restore_minutes), (5, 60));
    assert_eq!(
        slo.target(Severity::P2).unwrap().respond_minutes,
        60,
        "default kept"
    );
    assert_eq!(slo.credits.len(), 2);
    assert_eq!(slo.credits[1].below, Percent::parse("98.5").unwrap());
    assert_eq!(slo.credits[1].credit, Percent::parse("30").unwrap());

    let defaults = careplane_server::slo::slo_for(&load("").unwrap(), "stmarys").unwrap();
    assert_eq!(defaults.bad_minute.consecutive_failures, 2);
    assert_eq!(defaults.credits[0].below, Percent::parse("99.9").unwrap());
}

#[test]
fn bad_slo_values_are_refused_with_their_location() {
    let e = load("slo:\n    badMinuteAfter: 0\n    targets:\n      - {severity: P9, respondMinutes: 5, restoreMinutes: 60}\n    credits:\n      - {below: 101, credit: 5}").unwrap_err();
    assert!(e.contains("badMinuteAfter must be at least 1"), "{e}");
    assert!(e.contains("unknown severity \"P9\""), "{e}");
    assert!(e.contains("below 101"), "{e}");
    let e = load("slo:\n    bogus: 1").unwrap_err();
    assert!(e.contains("bogus"), "{e}");
}

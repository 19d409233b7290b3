//! A tenant's time zone and MaintenanceWindows reach its SLA report and the freeze check
//! (docs/design/0014): real store files, the month counted in the tenant's zone.

use careplane_sla::{Month, Outcome, SeriesKey, Store};
use jiff::Timestamp;

const SPECS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata: {name: p}
spec:
  dataDir: ./data
  defaults: {serviceTier: gold}
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata: {name: gold}
spec: {availability: 99.9, rto: 1h, rpo: 15m, supportHours: 24x7}
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata: {name: stmarys}
spec:
  timeZone: Europe/Berlin
  environments:
    - {name: prod, kind: production}
    - {name: dev, kind: dev}
---
apiVersion: careplane.dev/v1alpha1
kind: MaintenanceWindow
metadata: {name: patch-night}
spec:
  tenant: stmarys
  type: maintenance
  weekly: {days: [tuesday], start: "10:00", end: "11:00"}
  approvedBy: CAB-118
---
apiVersion: careplane.dev/v1alpha1
kind: MaintenanceWindow
metadata: {name: not-approved}
spec:
  tenant: stmarys
  type: maintenance
  once: {start: "2026-11-03T11:00", end: "2026-11-03T11:30"}
---
apiVersion: careplane.dev/v1alpha1
kind: MaintenanceWindow
metadata: {name: year-end}
spec:
  tenant: stmarys
  type: freeze
  once: {start: "2026-12-28T00:00", end: "2027-01-04T00:00"}
  reason: year-end close
"#;

fn specs(dir: &std::path::Path) -> careplane_spec::SpecSet {
    let f = dir.join("specs.yaml");
    std::fs::write(&f, SPECS).unwrap();
    careplane_spec::load(&[f]).unwrap()
}

/// Down 10:00-12:00 Berlin time (09:00-11:00 UTC) on Tuesday 3 November: the first hour
/// is inside the approved window and excluded, the unapproved half hour counts as down.
#[test]
fn approved_maintenance_in_the_tenants_zone_is_excluded_and_shown_apart() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs(dir.path());
    let mut store = Store::open(dir.path().join("sla")).unwrap();
    let key = SeriesKey::new(
        "stmarys",
        "prod",
        careplane_server::slo::critical_probe(&specs),
    );
    let id = store.series(&key).unwrap();
    // Every minute of November in Berlin: 2026-10-31T23:00Z to 2026-11-30T23:00Z.
    let start: Timestamp = "2026-10-31T23:00:00Z".parse().unwrap();
    let down_from: Timestamp = "2026-11-03T09:00:00Z".parse().unwrap();
    for m in 0..(30 * 1440) {
        let at = Timestamp::from_second(start.as_second() + 60 * m).unwrap();
        let d = at.as_second() - down_from.as_second();
        let o = if (0..7200).contains(&d) {
            Outcome::Down
        } else {
            Outcome::Up
        };
        store.record(id, at, o, 40).unwrap();
    }
    store.flush().unwrap();
    let now: Timestamp = "2026-12-02T00:00:00Z".parse().unwrap();
    let month = Month::parse("2026-11").unwrap();
    let reports =
        careplane_server::report::reports(&mut store, &specs, &[], month, Some("stmarys"), now)
            .unwrap();
    let prod = reports.iter().find(|r| r.environment == "prod").unwrap();
    assert_eq!(prod.time_zone, "Europe/Berlin");
    assert_eq!(prod.period_start, start);
    assert_eq!(prod.unknown_minutes, 0, "{prod:?}");
    // Four Tuesdays in November 2026 (3, 10, 17, 24): 4 hours excluded.
    assert_eq!(prod.excluded_minutes, 240, "{prod:?}");
    assert_eq!(prod.down_in_maintenance_minutes, 60, "{prod:?}");
    assert_eq!(prod.down_minutes, 60, "{prod:?}");
}

#[test]
fn a_freeze_is_in_force_over_production_only_and_names_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs(dir.path());
    let envs = [
        ("stmarys".to_string(), "prod".to_string()),
        ("stmarys".to_string(), "dev".to_string()),
    ];
    let during: Timestamp = "2026-12-30T12:00:00Z".parse().unwrap();
    let f = careplane_server::calendar::freezes_at(&specs, &envs, during).unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].environment.as_str(), f[0].window.as_str()),
        ("prod", "year-end")
    );
    // Midnight in Berlin is 23:00 UTC the day before.
    assert_eq!(f[0].until, "2027-01-03T23:00:00Z");
    assert_eq!(
        f[0].to_string(),
        "stmarys/prod is frozen by MaintenanceWindow \"year-end\" until 2027-01-03T23:00:00Z (year-end close)"
    );
    // The last minute before the freeze (Berlin) and the first after it.
    for t in ["2026-12-27T22:59:00Z", "2027-01-03T23:00:00Z"] {
        let f = careplane_server::calendar::freezes_at(&specs, &envs, t.parse().unwrap()).unwrap();
        assert!(f.is_empty(), "{t}: {f:?}");
    }
    let f = careplane_server::calendar::freezes_at(
        &specs,
        &envs,
        "2026-12-27T23:00:00Z".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(f.len(), 1, "the first minute of the freeze: {f:?}");
}

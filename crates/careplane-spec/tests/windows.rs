//! `kind: MaintenanceWindow` and tenant time zones (docs/design/0014): what loads, which
//! environments a window covers by default, and each refusal with its place.

use careplane_spec::{load_sources, Diagnostic, SpecSet, WindowType};

const BASE: &str = "\
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata: {name: hq}
spec:
  dataDir: .careplane
  defaults: {serviceTier: standard}
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata: {name: standard}
spec: {availability: 99.5, rto: 8h, rpo: 24h, supportHours: business-hours}
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata: {name: stmarys}
spec:
  timeZone: Europe/Berlin
  environments:
    - {name: production, kind: production}
    - {name: dr, kind: dr}
    - {name: dev, kind: dev}
";

fn window(spec: &str) -> String {
    format!("apiVersion: careplane.dev/v1alpha1\nkind: MaintenanceWindow\nmetadata: {{name: w}}\nspec:\n{spec}")
}

fn load(w: &str) -> Result<SpecSet, Vec<Diagnostic>> {
    load_sources([("base.yaml", BASE), ("w.yaml", w)]).map_err(|d| d.0)
}

/// The one problem, as `line:column path: message`.
fn refusal(w: &str) -> String {
    let d = load(w).expect_err("expected a refusal");
    assert_eq!(d.len(), 1, "expected one problem: {d:?}");
    format!(
        "{}:{} {}: {}",
        d[0].line, d[0].column, d[0].path, d[0].message
    )
}

#[test]
fn windows_load_and_cover_their_default_environments() {
    let text = format!(
        "{}---\n{}",
        window("  tenant: stmarys\n  type: maintenance\n  weekly: {days: [sunday], start: \"22:00\", end: \"02:00\"}\n  approvedBy: CAB-118\n"),
        window("  tenant: stmarys\n  type: freeze\n  once: {start: \"2026-12-28T00:00\", end: \"2027-01-04T00:00\"}\n  reason: year-end close\n")
            .replace("name: w", "name: f"),
    );
    let set = load(&text).unwrap();
    assert_eq!(set.tenant("stmarys").unwrap().spec.zone(), "Europe/Berlin");
    assert_eq!(set.maintenance_windows.len(), 2);
    let names = |env: &str| -> Vec<(String, WindowType)> {
        set.windows_of("stmarys", env)
            .map(|w| (w.metadata.name.clone(), w.spec.window_type))
            .collect()
    };
    // Maintenance covers every environment; a freeze only the production-like ones.
    assert_eq!(
        names("production"),
        [
            ("w".to_string(), WindowType::Maintenance),
            ("f".to_string(), WindowType::Freeze)
        ]
    );
    assert_eq!(names("dr").len(), 2);
    assert_eq!(names("dev"), [("w".to_string(), WindowType::Maintenance)]);
    assert!(set.windows_of("other", "production").next().is_none());
}

#[test]
fn a_window_listing_environments_covers_only_those() {
    let set = load(&window(
        "  tenant: stmarys\n  type: freeze\n  environments: [dev]\n  once: {start: \"2026-12-28T00:00\", end: \"2026-12-29T00:00\"}\n",
    ))
    .unwrap();
    assert_eq!(set.windows_of("stmarys", "dev").count(), 1);
    assert_eq!(set.windows_of("stmarys", "production").count(), 0);
}

#[test]
fn each_mistake_is_refused_where_it_is() {
    let cases = [
        (
            "  tenant: stmarx\n  type: freeze\n  once: {start: \"2026-12-28T00:00\", end: \"2026-12-29T00:00\"}\n",
            "5:11 spec.tenant: unknown Tenant \"stmarx\"",
        ),
        (
            "  tenant: stmarys\n  type: freeze\n  environments: [prodution]\n  once: {start: \"2026-12-28T00:00\", end: \"2026-12-29T00:00\"}\n",
            "7:18 spec.environments[0]: tenant \"stmarys\" has no environment \"prodution\"",
        ),
        (
            "  tenant: stmarys\n  type: maintenance\n",
            "5:3 spec: a window needs `weekly` or `once`",
        ),
        (
            "  tenant: stmarys\n  type: maintenance\n  weekly: {days: [sunday], start: \"22:00\", end: \"02:00\"}\n  once: {start: \"2026-12-28T00:00\", end: \"2026-12-29T00:00\"}\n",
            "8:9 spec.once: a window is either `weekly` or `once`, not both",
        ),
        (
            "  tenant: stmarys\n  type: maintenance\n  weekly: {days: [sundy], start: \"22:00\", end: \"02:00\"}\n",
            "7:19 spec.weekly.days[0]: \"sundy\" is not a weekday",
        ),
        (
            "  tenant: stmarys\n  type: maintenance\n  weekly: {days: [sunday], start: \"24:30\", end: \"02:00\"}\n",
            "7:35 spec.weekly.start: \"24:30\" is not a time of day HH:MM (00:00-23:59)",
        ),
        (
            "  tenant: stmarys\n  type: freeze\n  once: {start: \"2026-12-29T00:00\", end: \"2026-12-28T00:00\"}\n",
            "7:42 spec.once.end: \"2026-12-28T00:00\" is not after the start \"2026-12-29T00:00\"",
        ),
        (
            "  tenant: stmarys\n  type: freeze\n  once: {start: \"2026-12-28T00:00\", end: \"2026-12-29T00:00\"}\n  approvedBy: CAB-1\n",
            "8:15 spec.approvedBy: a freeze needs no approval: it restricts changes whoever approved it",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(refusal(&window(spec)), want, "for:\n{spec}");
    }
}

#[test]
fn an_unknown_time_zone_is_refused_at_the_tenant() {
    let base = BASE.replace("Europe/Berlin", "Europe/Berlinn");
    let d = load_sources([("base.yaml", base.as_str())])
        .expect_err("refused")
        .0;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].line, d[0].path.as_str(), d[0].message.as_str()),
        (
            17,
            "spec.timeZone",
            "\"Europe/Berlinn\" is not an IANA time zone"
        )
    );
}

//! Notification channels on the Platform and escalation in a ServiceTier's `slo`: a step
//! naming a channel the Platform lacks, and malformed channels, are refused at `validate`
//! with their place.

use careplane_spec::load_sources;

const PLATFORM: &str = "\
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata: {name: hq}
spec:
  dataDir: .careplane
  notifications:
    channels:
      - {name: on-call, webhook: \"http://127.0.0.1:9000/hook\"}
      - {name: alerts, alertmanager: \"http://127.0.0.1:9093\"}
  defaults: {serviceTier: standard}
";

fn tier(escalation: &str) -> String {
    format!(
        "apiVersion: careplane.dev/v1alpha1\nkind: ServiceTier\nmetadata: {{name: standard}}\nspec:\n  availability: 99.5\n  rto: 8h\n  rpo: 24h\n  supportHours: 24x7\n  slo:\n    escalation:\n{escalation}"
    )
}

fn problems(platform: &str, tier: &str) -> Vec<String> {
    match load_sources([("p.yaml", platform), ("t.yaml", tier)]) {
        Ok(_) => Vec::new(),
        Err(d) => d
            .iter()
            .map(|d| format!("{}:{} {}: {}", d.file.display(), d.line, d.path, d.message))
            .collect(),
    }
}

#[test]
fn escalation_names_only_channels_the_platform_has() {
    let good = tier("      - severity: P1\n        steps:\n          - {afterMinutes: 0, notify: [on-call, alerts]}\n          - {afterMinutes: 15, notify: [on-call]}\n        repeatMinutes: 5\n        executiveAfterMinutes: 30\n        executive: [alerts]\n");
    assert!(
        problems(PLATFORM, &good).is_empty(),
        "{:?}",
        problems(PLATFORM, &good)
    );

    let bad = tier("      - severity: P1\n        steps:\n          - {afterMinutes: 0, notify: [on-cal]}\n        executive: [pager]\n");
    assert_eq!(
        problems(PLATFORM, &bad),
        [
            "t.yaml:13 spec.slo.escalation[0].steps[0].notify[0]: unknown notification channel \"on-cal\"",
            "t.yaml:14 spec.slo.escalation[0].executive[0]: unknown notification channel \"pager\"",
        ]
    );
}

#[test]
fn malformed_escalations_and_channels_are_refused() {
    let bad = tier("      - severity: P5\n        steps: [{afterMinutes: 0, notify: [on-call]}]\n      - severity: P2\n        steps:\n          - {afterMinutes: 10, notify: [on-call]}\n          - {afterMinutes: 5, notify: [alerts]}\n");
    assert_eq!(
        problems(PLATFORM, &bad),
        [
            "t.yaml:11 spec.slo.escalation[0].severity: unknown severity \"P5\"",
            "t.yaml:15 spec.slo.escalation[1].steps: steps must be in increasing afterMinutes",
        ]
    );
    let platform = PLATFORM
        .replace(
            "{name: alerts, alertmanager: \"http://127.0.0.1:9093\"}",
            "{name: alerts, alertmanager: \"127.0.0.1:9093\"}",
        )
        .replace(
            "{name: on-call, webhook: \"http://127.0.0.1:9000/hook\"}",
            "{name: on-call, webhook: \"http://a\", alertmanager: \"http://b\"}",
        );
    let good =
        tier("      - severity: P1\n        steps: [{afterMinutes: 0, notify: [on-call]}]\n");
    assert_eq!(
        problems(&platform, &good),
        [
            "p.yaml:8 spec.notifications.channels[0]: a channel has exactly one of `webhook` and `alertmanager`",
            "p.yaml:9 spec.notifications.channels[1].alertmanager: not an http:// or https:// URL",
        ]
    );
}

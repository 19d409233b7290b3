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
            "p.yaml:8 spec.notifications.channels[0]: a channel has exactly one of `webhook`, `alertmanager` and `smtp`",
            "p.yaml:9 spec.notifications.channels[1].alertmanager: not an http:// or https:// URL",
        ]
    );
}

#[test]
fn smtp_channels_are_checked_where_they_are_written() {
    let good = PLATFORM.replace(
        "      - {name: alerts, alertmanager: \"http://127.0.0.1:9093\"}\n",
        "      - {name: alerts, alertmanager: \"http://127.0.0.1:9093\"}\n      - name: mail\n        smtp: {server: \"smtp.example.org:587\", from: careplane@example.org, to: [oncall@example.org], username: careplane, passwordEnv: CAREPLANE_SMTP_PASSWORD, caFile: /etc/careplane/relay-ca.pem}\n      - name: relay\n        smtp: {server: \"127.0.0.1:2525\", tls: none, from: careplane@example.org, to: [a@example.org, b@example.org]}\n",
    );
    let mail_tier =
        tier("      - severity: P1\n        steps: [{afterMinutes: 0, notify: [mail, relay]}]\n");
    assert!(
        problems(&good, &mail_tier).is_empty(),
        "{:?}",
        problems(&good, &mail_tier)
    );

    let bad = PLATFORM.replace(
        "      - {name: alerts, alertmanager: \"http://127.0.0.1:9093\"}\n",
        "      - {name: alerts, alertmanager: \"http://127.0.0.1:9093\"}\n      - name: mail\n        smtp: {server: \"smtp.example.org:587\", tls: none, from: \"Careplane <careplane@example.org>\", to: [\"a@example.org, b@example.org\"], username: careplane, passwordEnv: \"hunter2 secret\", caFile: /etc/ca.pem}\n      - name: relay\n        smtp: {server: \"smtp.example.org:99999\", tls: implicit, from: careplane@example.org, to: [], passwordEnv: PW, caFile: ca.pem}\n      - name: both\n        webhook: \"http://127.0.0.1/x\"\n        smtp: {server: \"127.0.0.1\", from: a@b.c, to: [a@b.c]}\n",
    );
    let tier_ok =
        tier("      - severity: P1\n        steps: [{afterMinutes: 0, notify: [on-call]}]\n");
    let got = problems(&bad, &tier_ok);
    assert_eq!(
        got,
        [
            "p.yaml:11 spec.notifications.channels[2].smtp.tls: `tls: none` sends mail (and any password) in clear: only allowed for a relay on loopback, not \"smtp.example.org:587\"",
            "p.yaml:11 spec.notifications.channels[2].smtp.from: \"Careplane <careplane@example.org>\" is not an e-mail address",
            "p.yaml:11 spec.notifications.channels[2].smtp.to[0]: \"a@example.org, b@example.org\" is not an e-mail address",
            "p.yaml:11 spec.notifications.channels[2].smtp.passwordEnv: not an environment variable name (letters, digits, `_`)",
            "p.yaml:11 spec.notifications.channels[2].smtp.caFile: `caFile` says which CA to trust over TLS, and this relay has `tls: none`",
            "p.yaml:13 spec.notifications.channels[3].smtp.server: \"smtp.example.org:99999\" is not `host` or `host:port`",
            "p.yaml:13 spec.notifications.channels[3].smtp.to: at least one recipient is needed",
            "p.yaml:13 spec.notifications.channels[3].smtp.passwordEnv: `passwordEnv` needs a `username`",
            "p.yaml:13 spec.notifications.channels[3].smtp.caFile: \"ca.pem\" is not an absolute path",
            "p.yaml:14 spec.notifications.channels[4]: a channel has exactly one of `webhook`, `alertmanager` and `smtp`",
        ],
        "{got:#?}"
    );
    assert!(
        !got.iter().any(|p| p.contains("hunter2")),
        "a password-like value echoed: {got:?}"
    );
}

//! Change freezes (docs/design/0014) through the real binary: `plan` shows the freeze over
//! the production environment it would change, `apply` refuses before any change, an
//! override with a reason goes through and lands in the audit log, and environments the
//! freeze does not cover still change.

mod common;

use common::*;

const TENANT: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: alpha
spec:
  timeZone: Pacific/Auckland
  environments:
    - name: production
      kind: production
    - name: dev
      kind: dev
      DEV_SIZING
---
apiVersion: careplane.dev/v1alpha1
kind: MaintenanceWindow
metadata:
  name: month-end
spec:
  tenant: alpha
  type: freeze
  once: {start: "START", end: "END"}
  reason: month-end close
"#;

/// The tenants file with a freeze from yesterday to tomorrow (Auckland time).
fn tenants(dev_sizing: &str) -> String {
    let tz = jiff::tz::TimeZone::get("Pacific/Auckland").unwrap();
    let today = jiff::Timestamp::now().to_zoned(tz).date();
    let fmt = |d: jiff::civil::Date| format!("{d}T00:00");
    TENANT
        .replace("START", &fmt(today.yesterday().unwrap()))
        .replace("END", &fmt(today.tomorrow().unwrap().tomorrow().unwrap()))
        .replace("DEV_SIZING", dev_sizing)
}

#[test]
fn a_freeze_over_production_refuses_apply_until_overridden() {
    let p = Platform::new(&tenants(""));

    // plan names the freeze, in text and JSON.
    let plan = p.plan();
    let freezes = plan["freezes"].as_array().expect("freezes in the plan");
    assert_eq!(freezes.len(), 1, "{plan}");
    assert_eq!(freezes[0]["tenant"], "alpha");
    assert_eq!(freezes[0]["environment"], "production");
    assert_eq!(freezes[0]["window"], "month-end");
    let text = p.ok(&["plan"]);
    assert!(
        text.contains("frozen: alpha/production is frozen by MaintenanceWindow \"month-end\"")
            && text.contains("(month-end close)"),
        "{text}"
    );
    let creates = action_ids(&plan).len();

    // apply refuses before any change.
    let out = p.run(&["apply"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "apply went through a freeze:\n{err}");
    assert!(
        err.contains("alpha/production is frozen by MaintenanceWindow \"month-end\"")
            && err.contains("--override-freeze"),
        "{err}"
    );
    assert!(!err.contains("alpha/dev is frozen"), "{err}");
    assert_eq!(
        action_ids(&p.plan()).len(),
        creates,
        "the refused apply changed something"
    );
    assert!(
        processes_in(&p.data_dir()).is_empty(),
        "a server was started"
    );

    // An override with a reason goes through and is recorded.
    p.ok(&["apply", "--override-freeze", "CAB emergency change 42"]);
    assert!(action_ids(&p.plan()).is_empty());
    // With nothing to change, the freeze stops nothing.
    p.ok(&["apply"]);

    // dev is not covered by the freeze (a freeze covers production and DR by default).
    p.write_tenants(&tenants("sizing: {dbConnections: 7}"));
    let plan = p.plan();
    assert!(
        action_ids(&plan).iter().all(|id| id.ends_with("alpha/dev")),
        "{plan}"
    );
    assert!(plan.get("freezes").is_none(), "{plan}");
    p.ok(&["apply"]);

    let log = p.json(&["audit", "log"]);
    let applies: Vec<(&str, Option<&str>)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "apply")
        .map(|e| {
            (
                e["result"]["status"].as_str().unwrap(),
                e["parameters"]["overrideFreeze"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        applies,
        [
            ("refused", None),
            ("succeeded", Some("CAB emergency change 42")),
            ("succeeded", None),
            ("succeeded", None),
        ],
        "{log}"
    );
}

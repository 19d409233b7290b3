//! Module names Odoo does not know are errors (issue 14, item 11): Odoo's
//! `-i` of an unknown name only logs `invalid module names, ignored` and
//! exits 0, so careplane checks the database afterwards.

mod common;

use common::*;

const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: gamma
spec:
  tenancy: shared
  modules: MODULES
  environments:
    - name: dev
      kind: dev
"#;

fn tenants(modules: &str) -> String {
    TENANTS.replace("MODULES", modules)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn misspelled_modules_fail_and_name_the_module() {
    let p = Platform::with_odoo(&tenants("[sale]"));
    p.ok(&["apply"]);

    // `careplane modules install` with a typo: an error, and the
    // environment is back up afterwards.
    let out = p.run(&["modules", "install", "gamma", "dev", "purchse"]);
    let t = text(&out);
    assert!(!out.status.success(), "a typo reported success: {t}");
    assert!(t.contains("purchse"), "{t}");
    assert!(t.contains("invalid module names"), "{t}");
    let st = p.json(&["status"]);
    assert_eq!(st["environments"][0]["odooHealth"]["ok"], true, "{st}");
    // The correctly spelled module still installs. It is not in the spec:
    // plan says so (apply never uninstalls), and changes nothing for it.
    p.ok(&["modules", "install", "gamma", "dev", "purchase"]);
    let plan = p.plan();
    assert_eq!(plan["actions"].as_array().map(Vec::len), Some(0), "{plan}");
    let notes = plan["notes"].to_string();
    assert!(notes.contains("odoo-env/gamma/dev"), "{plan}");
    assert!(notes.contains("purchase"), "{plan}");
    assert!(p.ok(&["plan"]).contains("Note: odoo-env/gamma/dev"));

    // In a spec: adding a misspelled module to a running environment.
    p.write_tenants(&tenants("[sale, stokc]"));
    let out = p.run(&["apply"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("stokc"), "{t}");
    // Fixed, the next apply converges.
    p.write_tenants(&tenants("[sale, stock, purchase]"));
    p.ok(&["apply"]);
    let plan = p.plan();
    assert_eq!(plan["actions"].as_array().map(Vec::len), Some(0));
    // Now in the spec: nothing more to say.
    assert!(plan.get("notes").is_none(), "{plan}");
}

#[test]
fn a_template_with_a_misspelled_module_is_never_sealed() {
    let p = Platform::with_odoo(&tenants("[sael]"));
    let out = p.run(&["apply"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("sael"), "{t}");
    // Nothing was recorded as ready for the template or the environment.
    let plan = p.plan();
    let ids: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.iter().any(|i| i.starts_with("odoo-template/")),
        "{ids:?}"
    );
    assert!(ids.contains(&"odoo-env/gamma/dev"), "{ids:?}");
    p.write_tenants(&tenants("[sale]"));
    p.ok(&["apply"]);
    assert_eq!(p.plan()["actions"].as_array().map(Vec::len), Some(0));
}

//! Every class of problem, with the exact place and help it is reported with.

use std::path::{Path, PathBuf};

use careplane_spec::{
    load, load_sources, load_str, parse_documents, Diagnostic, Diagnostics, Kind, Tenancy,
};

const PLATFORM: &str = "\
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata:
  name: hq
spec:
  dataDir: .careplane
  defaults:
    serviceTier: standard
";

const TIERS: &str = "\
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: nightly
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: standard
spec:
  availability: 99.5
  rto: 8h
  rpo: 24h
  supportHours: business-hours
  backupPolicy: nightly
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: critical
spec:
  availability: 99.95
  rto: 1h
  rpo: 4h
  supportHours: 24x7
";

/// Loads `text` as `t.yaml` next to a valid platform and tiers, and returns
/// the problems in `t.yaml`.
fn problems(text: &str) -> Vec<Diagnostic> {
    let err = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", text),
    ])
    .expect_err("expected problems");
    for d in err.iter() {
        assert_eq!(
            d.file,
            Path::new("t.yaml"),
            "unexpected problem elsewhere: {d}"
        );
    }
    err.0
}

/// The one problem of `text`.
fn problem(text: &str) -> Diagnostic {
    let mut all = problems(text);
    assert_eq!(
        all.len(),
        1,
        "expected one problem, got: {}",
        Diagnostics(all.clone())
    );
    all.remove(0)
}

/// Asserts place, path, message and help of a diagnostic.
#[track_caller]
fn check(
    d: &Diagnostic,
    line: usize,
    column: usize,
    path: &str,
    message: &str,
    help: Option<&str>,
) {
    assert_eq!(
        (
            d.line,
            d.column,
            d.path.as_str(),
            d.message.as_str(),
            d.help.as_deref()
        ),
        (line, column, path, message, help),
        "\nwhole diagnostic: {d}"
    );
}

fn tenant(spec: &str) -> String {
    format!(
        "apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: acme\nspec:\n{spec}"
    )
}

#[test]
fn valid_set_loads() {
    let set = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        (
            "t.yaml",
            &tenant("  environments:\n    - {name: production, kind: production}\n"),
        ),
    ])
    .unwrap();
    assert_eq!(set.platform.metadata.name, "hq");
    assert_eq!(set.service_tiers.len(), 2);
    assert_eq!(set.backup_policies.len(), 1);
    let acme = set.tenant("acme").unwrap();
    assert_eq!(acme.source.file, Path::new("t.yaml"));
    assert_eq!(acme.source.line, 1);
    assert_eq!(acme.spec.tenancy, Tenancy::Shared);
    assert_eq!(set.tier_of(&acme.spec).unwrap().metadata.name, "standard");
    assert_eq!(set.service_tiers[1].source.line, 20);
}

#[test]
fn unknown_variant_renders_with_did_you_mean() {
    let d = problem(&tenant(
        "  environments:\n    - name: production\n      kind: production\n    - name: live\n      kind: prod\n",
    ));
    check(
        &d,
        10,
        13,
        "spec.environments[1].kind",
        "unknown variant \"prod\", expected one of dev, test, uat, training, staging, production, dr",
        Some("did you mean \"production\"?"),
    );
    assert_eq!(
        d.to_string(),
        "t.yaml:10:13: spec.environments[1].kind: unknown variant \"prod\", expected one of dev, test, uat, \
         training, staging, production, dr\n  help: did you mean \"production\"?"
    );
}

#[test]
fn every_unknown_field_is_reported_with_a_suggestion() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: acme
  lables: {team: a}
spec:
  servicetier: standard
  enviroments: []
  environments:
    - name: production
      kind: production
      replicas: 3
  colour: blue
";
    let all = problems(text);
    assert_eq!(all.len(), 5, "{}", Diagnostics(all.clone()));
    check(
        &all[0],
        5,
        3,
        "metadata.lables",
        "unknown field \"lables\"",
        Some("did you mean \"labels\"?"),
    );
    check(
        &all[1],
        7,
        3,
        "spec.servicetier",
        "unknown field \"servicetier\"",
        Some("did you mean \"serviceTier\"?"),
    );
    check(
        &all[2],
        8,
        3,
        "spec.enviroments",
        "unknown field \"enviroments\"",
        Some("did you mean \"environments\"?"),
    );
    check(
        &all[3],
        12,
        7,
        "spec.environments[0].replicas",
        "unknown field \"replicas\"",
        Some("known fields: addonsPaths, kind, modules, name, sizing"),
    );
    check(
        &all[4],
        13,
        3,
        "spec.colour",
        "unknown field \"colour\"",
        Some("known fields: addonsPaths, displayName, environments, modules, serviceTier, sizing, tenancy, timeZone"),
    );
}

#[test]
fn unknown_top_level_fields() {
    let text = "apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetdata: {name: a}\nmetadata: {name: a}\nspec:\n  environments: [{name: p, kind: dev}]\nstatus: {}\n";
    let all = problems(text);
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    check(
        &all[0],
        3,
        1,
        "metdata",
        "unknown field \"metdata\"",
        Some("did you mean \"metadata\"?"),
    );
    check(
        &all[1],
        7,
        1,
        "status",
        "unknown field \"status\"",
        Some("known fields: apiVersion, kind, metadata, spec"),
    );
}

#[test]
fn anchors_work_and_merge_keys_are_explained() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: acme
spec:
  sizing: &small {workers: 1}
  environments:
    - {name: production, kind: production, sizing: *small}
    - name: dev
      kind: dev
      <<: {modules: [base]}
";
    let d = problem(text);
    check(
        &d,
        11,
        7,
        "spec.environments[1][\"<<\"]",
        "unknown field \"<<\"",
        Some(
            "YAML merge keys (`<<`) are not supported; repeat the fields, or use an alias (`*name`) for a whole value",
        ),
    );
    let ok = text.replace("      <<: {modules: [base]}\n", "");
    let set = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", &ok),
    ])
    .unwrap();
    let env = &set.tenants[0].spec.environments[0];
    assert_eq!(env.sizing.as_ref().and_then(|s| s.workers), Some(1));
}

#[test]
fn several_type_errors_in_one_document_are_all_reported() {
    let text = tenant(
        "  tenancy: dedicated
  sizing:
    workers: \"2\"
  environments:
    - name: production
      kind: production
      sizing: {dbConnections: -1}
    - name: test
",
    );
    let all = problems(&text);
    assert_eq!(all.len(), 4, "{}", Diagnostics(all.clone()));
    check(
        &all[0],
        6,
        12,
        "spec.tenancy",
        "unknown variant \"dedicated\", expected one of shared, dedicated-db, dedicated-env",
        Some("did you mean \"dedicated-db\"?"),
    );
    check(
        &all[1],
        8,
        14,
        "spec.sizing.workers",
        "expected a whole number from 0 to 4294967295, found string \"2\"",
        Some("remove the quotes"),
    );
    check(
        &all[2],
        12,
        31,
        "spec.environments[0].sizing.dbConnections",
        "expected a whole number from 0 to 4294967295, found integer -1",
        None,
    );
    check(
        &all[3],
        13,
        7,
        "spec.environments[1].kind",
        "missing required field \"kind\"",
        Some("one of dev, test, uat, training, staging, production, dr"),
    );
}

#[test]
fn type_errors_get_conversion_hints() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: gold
spec:
  availability: high
  rto: 4
  rpo: 1h
  supportHours: 24x7
";
    let all = problems(text);
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    check(
        &all[0],
        6,
        17,
        "spec.availability",
        "expected a number, found string \"high\"",
        None,
    );
    check(
        &all[1],
        7,
        8,
        "spec.rto",
        "expected a string, found integer 4",
        Some("quote it to make it a string: \"4\""),
    );
}

#[test]
fn wrong_shapes() {
    let d = problem("apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\nspec:\n  environments: production\n");
    check(
        &d,
        5,
        17,
        "spec.environments",
        "expected a list, found string \"production\"",
        Some("write a list: [production]"),
    );
    let d = problem("- a\n- b\n");
    check(
        &d,
        1,
        1,
        "",
        "a spec document must be a mapping with apiVersion, kind, metadata and spec; found a list",
        None,
    );
}

#[test]
fn yaml_syntax_errors_point_at_the_place_and_later_documents_are_checked() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata: {name: a}
spec:
  environments: [{name: p, kind: dev}
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata: {name: b}
spec:
  environments: [{name: p, kind: production}]
  tenancy: shard
";
    let all = problems(text);
    assert_eq!(all.len(), 2, "{}", Diagnostics(all.clone()));
    assert_eq!(
        (all[0].line, all[0].column, all[0].path.as_str()),
        (6, 1, "")
    );
    assert!(
        all[0].message.starts_with("YAML syntax error: "),
        "{}",
        all[0].message
    );
    check(
        &all[1],
        12,
        12,
        "spec.tenancy",
        "unknown variant \"shard\", expected one of shared, dedicated-db, dedicated-env",
        Some("did you mean \"shared\"?"),
    );

    let d = problem("apiVersion: careplane.dev/v1alpha1\nkind: 'Tenant\n");
    assert_eq!((d.line, d.column, d.path.as_str()), (2, 7, ""));
    assert!(d.message.contains("quoted scalar"), "{}", d.message);
}

#[test]
fn duplicate_keys_are_errors() {
    let text = tenant(
        "  environments: [{name: p, kind: dev}]\n  tenancy: shared\n  tenancy: dedicated-db\n",
    );
    let d = problem(&text);
    check(
        &d,
        8,
        3,
        "spec.tenancy",
        "duplicate key \"tenancy\"",
        Some("first defined at line 7; remove one of them"),
    );
}

#[test]
fn non_string_keys_are_errors() {
    let text = "apiVersion: careplane.dev/v1alpha1\nkind: Platform\nmetadata:\n  name: p2\n  labels:\n    1: one\n    [a]: b\nspec: {dataDir: x}\n";
    let err = load_str(Path::new("p.yaml"), text).unwrap_err();
    assert_eq!(err.len(), 2, "{err}");
    check(
        &err[0],
        6,
        5,
        "metadata.labels",
        "mapping keys must be strings, found integer 1",
        Some("quote it to make it a string: \"1\""),
    );
    check(
        &err[1],
        7,
        5,
        "metadata.labels",
        "mapping keys must be strings, found a list",
        None,
    );
}

#[test]
fn api_version_problems() {
    let d = problem(
        "kind: Tenant\nmetadata: {name: a}\nspec: {environments: [{name: p, kind: dev}]}\n",
    );
    check(
        &d,
        1,
        1,
        "apiVersion",
        "missing required field \"apiVersion\"",
        Some("add `apiVersion: careplane.dev/v1alpha1`"),
    );
    let d = problem("apiVersion: careplane.dev/v1\nkind: Tenant\nmetadata: {name: a}\nspec: {environments: [{name: p, kind: dev}]}\n");
    check(
        &d,
        1,
        13,
        "apiVersion",
        "unsupported apiVersion \"careplane.dev/v1\", expected \"careplane.dev/v1alpha1\"",
        Some("did you mean \"careplane.dev/v1alpha1\"?"),
    );
    let d = problem("apiVersion: apps/v1\nkind: Tenant\nmetadata: {name: a}\nspec: {environments: [{name: p, kind: dev}]}\n");
    check(
        &d,
        1,
        13,
        "apiVersion",
        "unsupported apiVersion \"apps/v1\", expected \"careplane.dev/v1alpha1\"",
        Some("this version of careplane understands \"careplane.dev/v1alpha1\""),
    );
}

#[test]
fn kind_problems() {
    let d = problem(
        "apiVersion: careplane.dev/v1alpha1\nkind: tenant\nmetadata: {name: a}\nspec: {}\n",
    );
    check(
        &d,
        2,
        7,
        "kind",
        "unknown kind \"tenant\", expected one of Platform, ServiceTier, BackupPolicy, Tenant, MaintenanceWindow",
        Some("did you mean \"Tenant\"?"),
    );
    let d = problem(
        "apiVersion: careplane.dev/v1alpha1\nkind: Deployment\nmetadata: {name: a}\nspec: {}\n",
    );
    check(
        &d,
        2,
        7,
        "kind",
        "unknown kind \"Deployment\", expected one of Platform, ServiceTier, BackupPolicy, Tenant, MaintenanceWindow",
        None,
    );
    let d = problem("apiVersion: careplane.dev/v1alpha1\nmetadata: {name: a}\nspec: {}\n");
    check(
        &d,
        1,
        1,
        "kind",
        "missing required field \"kind\"",
        Some("add `kind:` with one of Platform, ServiceTier, BackupPolicy, Tenant, MaintenanceWindow"),
    );
}

#[test]
fn missing_metadata_name_and_spec() {
    let d = problem("apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata:\n  labels: {a: b}\nspec: {environments: [{name: p, kind: dev}]}\n");
    check(
        &d,
        4,
        3,
        "metadata.name",
        "missing required field \"name\"",
        None,
    );
    let d = problem("apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\n");
    check(&d, 1, 1, "spec", "missing required field \"spec\"", None);
    let d = problem("apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nspec: {environments: [{name: p, kind: dev}]}\n");
    check(
        &d,
        1,
        1,
        "metadata",
        "missing required field \"metadata\"",
        Some("add `metadata:` with at least `name:`"),
    );
}

#[test]
fn names_must_be_dns_labels_of_bounded_length() {
    let long_tenant = "a".repeat(41);
    let text = format!(
        "apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: {long_tenant}
spec:
  modules: [sale, Stock-Mgmt]
  environments:
    - name: Prod_1
      kind: production
    - name: {}
      kind: dev
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: shared
spec:
  environments: [{{name: p, kind: dev}}]
",
        "e".repeat(21)
    );
    let all = problems(&text);
    assert_eq!(all.len(), 5, "{}", Diagnostics(all.clone()));
    check(
        &all[0],
        4,
        9,
        "metadata.name",
        &format!("name \"{long_tenant}\" is 41 characters long, more than the 40 allowed"),
        Some(
            "tenant and environment names are joined into PostgreSQL identifiers \"<tenant>-<environment>\", \
             which are limited to 63 bytes",
        ),
    );
    check(
        &all[1],
        6,
        19,
        "spec.modules[1]",
        "invalid module name \"Stock-Mgmt\": Odoo technical names use lowercase letters, digits and '_'",
        Some("try \"stock_mgmt\""),
    );
    check(
        &all[2],
        8,
        13,
        "spec.environments[0].name",
        "invalid name \"Prod_1\": use lowercase letters, digits and '-', starting and ending with a letter or digit",
        Some("try \"prod-1\""),
    );
    assert_eq!(
        (all[3].line, all[3].column, all[3].path.as_str()),
        (10, 13, "spec.environments[1].name")
    );
    assert!(
        all[3]
            .message
            .ends_with("is 21 characters long, more than the 20 allowed"),
        "{}",
        all[3]
    );
    check(
        &all[4],
        16,
        9,
        "metadata.name",
        "the tenant name \"shared\" is reserved",
        Some(
            "it names the platform's shared PostgreSQL cluster and Redis server; pick another name",
        ),
    );
}

#[test]
fn other_kinds_allow_63_character_names() {
    let ok = "b".repeat(63);
    let too_long = "b".repeat(64);
    let policy = |name: &str| {
        format!("apiVersion: careplane.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {{name: {name}}}\nspec: {{schedule: 0 1 * * *, retention: {{daily: 1}}}}\n")
    };
    load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", &policy(&ok)),
    ])
    .unwrap();
    let d = problem(&policy(&too_long));
    check(
        &d,
        3,
        18,
        "metadata.name",
        &format!("name \"{too_long}\" is 64 characters long, more than the 63 allowed"),
        Some("names must be DNS labels, which are limited to 63 characters"),
    );
}

#[test]
fn tenant_rules() {
    let text = tenant(
        "  sizing: {workers: 0}
  environments:
    - name: production
      kind: production
      sizing: {dbConnections: 0, workerMemory: 2GB}
    - name: production
      kind: dr
",
    );
    let all = problems(&text);
    assert_eq!(all.len(), 4, "{}", Diagnostics(all.clone()));
    check(
        &all[0],
        6,
        21,
        "spec.sizing.workers",
        "workers must be at least 1",
        None,
    );
    check(
        &all[1],
        10,
        31,
        "spec.environments[0].sizing.dbConnections",
        "dbConnections must be at least 1",
        None,
    );
    check(
        &all[2],
        10,
        48,
        "spec.environments[0].sizing.workerMemory",
        "invalid memory size \"2GB\"",
        Some("write e.g. 512Mi or 2Gi"),
    );
    check(
        &all[3],
        11,
        13,
        "spec.environments[1].name",
        "duplicate environment name \"production\"",
        Some("environments[0] at line 8 has the same name; names are unique within a tenant"),
    );

    let d = problem(&tenant("  environments: []\n"));
    check(
        &d,
        6,
        17,
        "spec.environments",
        "a tenant needs at least one environment",
        Some("e.g. `environments: [{name: production, kind: production}]`"),
    );
}

#[test]
fn service_tier_rules() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: gold
spec:
  availability: 100
  rto: 0s
  rpo: 15
  supportHours: 24x7
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: silver
spec:
  availability: 0
  rto: 1w
  rpo: 2h
  supportHours: ''
";
    let all = problems(text);
    assert_eq!(all.len(), 6, "{}", Diagnostics(all.clone()));
    check(
        &all[0],
        6,
        17,
        "spec.availability",
        "availability 100 is out of range: it is a percentage above 0 and below 100",
        Some("e.g. 99.9 for \"three nines\""),
    );
    check(
        &all[1],
        7,
        8,
        "spec.rto",
        "rto must be more than 0: no recovery is instantaneous",
        None,
    );
    check(
        &all[2],
        8,
        8,
        "spec.rpo",
        "expected a string, found integer 15",
        Some("quote it to make it a string: \"15\""),
    );
    assert_eq!(
        (all[3].line, all[3].path.as_str()),
        (16, "spec.availability")
    );
    check(
        &all[4],
        17,
        8,
        "spec.rto",
        "duration \"1w\" has unknown unit \"w\"; use s, m, h or d",
        None,
    );
    check(
        &all[5],
        19,
        17,
        "spec.supportHours",
        "supportHours must not be empty",
        Some("e.g. \"24x7\" or \"business-hours\""),
    );
}

/// The repository, keys and schedules of a policy, each named at its
/// location; `archive_*` settings are careplane's WAL archiving.
#[test]
fn backup_policy_repository_keys_and_verify_rules() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: offsite
spec:
  schedule: 0 2 * * *
  keepLast: 0
  repository: ftp://backups.example.net/x
  endpoint: s3.example.net
  compressionLevel: 25
  pitrWindow: 2w
  verify: 0 2 * *
  recipients: [age1qqqqqqqqqqqqqqqqqqqqqq, ssh-ed25519 AAAA]
---
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: local
spec:
  schedule: 0 2 * * *
  retention: {daily: 1}
  repository: file://relative/path
---
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: local2
spec:
  schedule: 0 2 * * *
  retention: {daily: 1}
  repository: file:///srv/backups
  region: eu-west-1
";
    let all = problems(text);
    let got: Vec<(usize, &str, &str)> = all
        .iter()
        .map(|d| (d.line, d.path.as_str(), d.message.as_str()))
        .collect();
    let has = |line: usize, path: &str, needle: &str| {
        assert!(
            got.iter()
                .any(|(l, p, m)| *l == line && *p == path && m.contains(needle)),
            "no problem at line {line} {path} containing {needle:?} in {got:#?}"
        );
    };
    has(7, "spec.keepLast", "nothing would be kept");
    has(8, "spec.repository", "only file:// and s3://");
    has(9, "spec.endpoint", "not an http(s) URL");
    has(10, "spec.compressionLevel", "1 to 19");
    has(11, "spec.pitrWindow", "unknown unit");
    has(12, "spec.verify", "has 4 fields");
    has(13, "spec.recipients[1]", "not an age public key");
    has(22, "spec.repository", "absolute path");
    has(32, "spec.region", "only for s3:// repositories");
    assert_eq!(got.len(), 9, "{got:#?}");

    // A minimal valid policy with the new fields.
    let ok = "\
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: s3
spec:
  schedule: 0 2 * * *
  keepLast: 3
  repository: s3://hospital-backups/careplane
  endpoint: http://127.0.0.1:9000
  region: eu-west-1
  pitrWindow: 7d
  compressionLevel: 9
  verify: 30 5 * * *
";
    load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", ok),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
}

/// `careplaneKey: false` takes careplane's own key out of the recipients:
/// with no customer recipient left, nobody could read the backups, which is
/// refused at the field, naming the policy. With one it loads, and a policy
/// that says nothing keeps careplane's key (the default).
#[test]
fn backup_policy_customer_only_keys_need_a_recipient() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: customer-only
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
  careplaneKey: false
";
    let all = problems(text);
    let got: Vec<(usize, &str, &str)> = all
        .iter()
        .map(|d| (d.line, d.path.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(
            8,
            "spec.careplaneKey",
            "BackupPolicy \"customer-only\": careplaneKey is false and recipients is empty: \
             its backups would be encrypted to nobody"
        )],
        "{got:#?}"
    );
    assert!(all[0].help.as_deref().unwrap_or("").contains("recipients"));

    let ok = "\
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: customer-only
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
  careplaneKey: false
  recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
---
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: plain
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
";
    let set = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", ok),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        set.backup_policy("customer-only")
            .unwrap()
            .spec
            .careplane_key,
        Some(false)
    );
    assert_eq!(set.backup_policy("plain").unwrap().spec.careplane_key, None);

    // A shared tenant's database is in the shared cluster's repository,
    // which careplane's key must read: refused at the tenant; a dedicated
    // tenant on the same tier loads.
    let tier = "\
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: held
spec:
  availability: 99.5
  rto: 4h
  rpo: 1h
  supportHours: business-hours
  backupPolicy: customer-only
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: clinic
spec:
  serviceTier: held
  tenancy: TENANCY
  environments:
    - name: production
      kind: production
";
    let shared = format!("{ok}{}", tier.replace("TENANCY", "shared"));
    let got: Vec<(usize, String, String)> = problems(&shared)
        .iter()
        .map(|d| (d.line, d.path.clone(), d.message.clone()))
        .collect();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (got[0].0, got[0].1.as_str()),
        (36, "spec.tenancy"),
        "{got:#?}"
    );
    assert!(
        got[0].2.contains(
            "tenant \"clinic\" is shared, but its service tier \"held\" backs up with \
             BackupPolicy \"customer-only\", which has careplaneKey: false"
        ),
        "{got:#?}"
    );
    let dedicated = format!("{ok}{}", tier.replace("TENANCY", "dedicated-db"));
    load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", dedicated.as_str()),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Immutability (S3 Object Lock) is for s3:// repositories only, named
/// with its policy; days are 1 to 36500; the mode is one of two words.
#[test]
fn backup_policy_immutability_rules() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: locked-local
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
  repository: file:///srv/backups
  immutability: {mode: compliance, days: 30}
---
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: default-repo
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
  immutability:
    mode: governance
    days: 0
---
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: too-long
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
  repository: s3://hospital-backups/careplane
  immutability: {mode: compliance, days: 36501}
---
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: bad-mode
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
  repository: s3://hospital-backups/careplane
  immutability: {mode: legal-hold, days: 30}
";
    let all = problems(text);
    let got: Vec<(usize, &str, &str, Option<&str>)> = all
        .iter()
        .map(|d| {
            (
                d.line,
                d.path.as_str(),
                d.message.as_str(),
                d.help.as_deref(),
            )
        })
        .collect();
    let has = |line: usize, path: &str, needle: &str| {
        assert!(
            got.iter()
                .any(|(l, p, m, _)| *l == line && *p == path && m.contains(needle)),
            "no problem at line {line} {path} containing {needle:?} in {got:#?}"
        );
    };
    has(
        9,
        "spec.immutability",
        "BackupPolicy \"locked-local\": immutability needs an s3:// repository (S3 Object Lock), \
         but the repository is \"file:///srv/backups\"",
    );
    has(
        19,
        "spec.immutability",
        "BackupPolicy \"default-repo\": immutability needs an s3:// repository",
    );
    has(
        20,
        "spec.immutability.days",
        "days 0 is out of range: 1 to 36500",
    );
    has(
        30,
        "spec.immutability.days",
        "BackupPolicy \"too-long\": immutability.days 36501 is out of range",
    );
    has(
        40,
        "spec.immutability.mode",
        "unknown variant \"legal-hold\"",
    );
    assert_eq!(got.len(), 5, "{got:#?}");
    let help = got
        .iter()
        .find(|(l, ..)| *l == 9)
        .and_then(|(.., h)| *h)
        .unwrap();
    assert!(help.contains("Object Lock enabled"), "{help}");

    // On s3:// it loads.
    let ok = "\
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: locked
spec:
  schedule: 0 2 * * *
  retention: {daily: 7}
  repository: s3://hospital-backups/careplane
  immutability: {mode: governance, days: 14}
";
    let set = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", ok),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let policy = set.backup_policy("locked").unwrap();
    assert_eq!(
        policy.spec.immutability,
        Some(careplane_spec::Immutability {
            mode: careplane_spec::LockMode::Governance,
            days: 14
        })
    );
}

#[test]
fn backup_policy_rules() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: weekly
spec:
  schedule: 0 2 * *
---
apiVersion: careplane.dev/v1alpha1
kind: BackupPolicy
metadata:
  name: odd
spec:
  schedule: 0 25 * * *
  retention: {weekly: 2}
";
    let all = problems(text);
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    check(
        &all[0],
        6,
        3,
        "spec.retention",
        "retention keeps no backups",
        Some(
            "set at least one of daily, weekly, monthly, yearly, e.g. `retention: {daily: 7}`, \
             or `keepLast`",
        ),
    );
    check(
        &all[1],
        6,
        13,
        "spec.schedule",
        "schedule \"0 2 * *\" has 4 fields, expected 5 (minute hour day-of-month month day-of-week)",
        Some("e.g. \"0 2 * * *\" for 02:00 UTC every day"),
    );
    check(
        &all[2],
        13,
        13,
        "spec.schedule",
        "invalid hour field \"25\" in schedule \"0 25 * * *\"",
        Some("hour takes *, a value 0-23, a range a-b, a list a,b, or a step */n"),
    );
}

#[test]
fn platform_rules() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata:
  name: hq
spec:
  dataDir: .careplane
  odoo:
    command: /opt/odoo/odoo-bin
    version: 15
  postgres:
    settings:
      ssl: 'off'
      work_mem: 4MB
  redis:
    maxMemory: lots
  defaults:
    serviceTier: standard
";
    let err = load_sources([("p.yaml", text), ("tiers.yaml", TIERS)]).unwrap_err();
    assert_eq!(err.len(), 3, "{err}");
    check(
        &err[0],
        9,
        14,
        "spec.odoo.version",
        "Odoo version 15 is not supported, expected 16 to 19",
        None,
    );
    check(
        &err[1],
        12,
        7,
        "spec.postgres.settings.ssl",
        "\"ssl\" cannot be set here",
        Some("careplane sets it to harden every cluster"),
    );
    check(
        &err[2],
        15,
        16,
        "spec.redis.maxMemory",
        "invalid Redis memory size \"lots\"",
        Some("write e.g. 256mb or 1gb"),
    );
}

#[test]
fn odoo_uid_range_must_avoid_system_accounts() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata:
  name: hq
spec:
  dataDir: .careplane
  odoo:
    command: /opt/odoo/odoo-bin
    version: 18
    uids:
      first: 100
      count: 10
  defaults:
    serviceTier: standard
";
    let err = load_sources([("p.yaml", text), ("tiers.yaml", TIERS)]).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    check(
        &err[0],
        11,
        14,
        "spec.odoo.uids.first",
        "uid 100 is a system account's; Odoo needs uids of its own",
        Some("use a range no account uses, e.g. first: 1900000000"),
    );
    let wide = text.replace(
        "first: 100\n      count: 10",
        "first: 4294967000\n      count: 1000",
    );
    let err = load_sources([("p.yaml", wide.as_str()), ("tiers.yaml", TIERS)]).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert!(
        err[0].message.contains("runs past the largest uid"),
        "{err}"
    );
    let ok = text.replace("first: 100\n", "first: 70000\n");
    load_sources([("p.yaml", ok.as_str()), ("tiers.yaml", TIERS)]).expect("a valid range loads");
}

#[test]
fn a_file_with_three_problems_reports_three() {
    let text = tenant(
        "  tenancy: dedicated-env
  servceTier: critical
  environments:
    - name: production
      kind: prodution
    - name: Training
      kind: training
",
    );
    let all = problems(&text);
    assert_eq!(all.len(), 3, "{}", Diagnostics(all.clone()));
    assert_eq!(
        all.iter()
            .map(|d| (d.line, d.path.as_str()))
            .collect::<Vec<_>>(),
        [
            (7, "spec.servceTier"),
            (10, "spec.environments[0].kind"),
            (11, "spec.environments[1].name")
        ]
    );
}

#[test]
fn set_needs_exactly_one_platform() {
    let err = load_sources([("tiers.yaml", TIERS)]).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    check(
        &err[0],
        0,
        0,
        "",
        "no Platform document in tiers.yaml",
        Some("a spec set needs exactly one document with `kind: Platform`"),
    );
    assert_eq!(err[0].file, PathBuf::new());
    assert_eq!(
        err.to_string(),
        "error: no Platform document in tiers.yaml\n  help: a spec set needs exactly one document with \
         `kind: Platform`\nerror: 1 problem"
    );

    let second = PLATFORM.replace("name: hq", "name: branch");
    let err = load_sources([
        ("a.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("b.yaml", &second),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(err[0].file, Path::new("b.yaml"));
    check(
        &err[0],
        2,
        7,
        "kind",
        "a second Platform (\"branch\"); a spec set has exactly one",
        Some("the first is \"hq\" at a.yaml:2"),
    );
}

#[test]
fn names_are_unique_per_kind() {
    let text = tenant("  environments: [{name: p, kind: dev}]\n");
    // A tenant may share a name with a tier; two tenants may not.
    let same_as_tier = text.replace("name: acme", "name: standard");
    let err = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("a.yaml", text.as_str()),
        ("b.yaml", &format!("{same_as_tier}---\n{text}")),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(err[0].file, Path::new("b.yaml"));
    check(
        &err[0],
        11,
        9,
        "metadata.name",
        "duplicate Tenant name \"acme\"",
        Some("first defined at a.yaml:4"),
    );
}

#[test]
fn references_resolve_with_suggestions() {
    let platform = PLATFORM.replace("serviceTier: standard", "serviceTier: standrad");
    let tiers = TIERS.replace("backupPolicy: nightly", "backupPolicy: daily");
    let text = tenant("  serviceTier: critcal\n  environments: [{name: p, kind: dev}]\n");
    let err = load_sources([
        ("platform.yaml", platform.as_str()),
        ("tiers.yaml", &tiers),
        ("t.yaml", &text),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 3, "{err}");
    assert_eq!(err[0].file, Path::new("platform.yaml"));
    check(
        &err[0],
        8,
        18,
        "spec.defaults.serviceTier",
        "unknown ServiceTier \"standrad\"",
        Some("did you mean \"standard\"? defined: standard, critical"),
    );
    assert_eq!(err[1].file, Path::new("tiers.yaml"));
    check(
        &err[1],
        18,
        17,
        "spec.backupPolicy",
        "unknown BackupPolicy \"daily\"",
        Some("defined: nightly"),
    );
    assert_eq!(err[2].file, Path::new("t.yaml"));
    check(
        &err[2],
        6,
        16,
        "spec.serviceTier",
        "unknown ServiceTier \"critcal\"",
        Some("did you mean \"critical\"? defined: standard, critical"),
    );
}

#[test]
fn reference_to_nothing_says_so() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata: {name: standard}
spec: {availability: 99, rto: 1h, rpo: 1h, supportHours: x, backupPolicy: nightly}
";
    let err = load_sources([("platform.yaml", PLATFORM), ("t.yaml", text)]).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(
        err[0].help.as_deref(),
        Some("no BackupPolicy is defined in these files")
    );
}

#[test]
fn tenant_without_any_service_tier() {
    let platform = PLATFORM.replace("  defaults:\n    serviceTier: standard\n", "");
    let text = tenant("  environments: [{name: p, kind: dev}]\n");
    let err = load_sources([
        ("platform.yaml", platform.as_str()),
        ("tiers.yaml", TIERS),
        ("t.yaml", &text),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    check(
        &err[0],
        6,
        3,
        "spec.serviceTier",
        "tenant has no service tier, and the platform sets no default",
        Some("set spec.serviceTier here, or spec.defaults.serviceTier in the Platform at platform.yaml:1"),
    );
}

#[test]
fn a_broken_document_does_not_cascade() {
    // The tier has a type error; references to it must not be reported as
    // unresolved, and the platform is still found.
    let tiers = TIERS.replace("availability: 99.95", "availability: lots");
    let text = tenant("  serviceTier: critical\n  environments: [{name: p, kind: dev}]\n");
    let err = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", tiers.as_str()),
        ("t.yaml", &text),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(
        (err[0].file.as_path(), err[0].path.as_str()),
        (Path::new("tiers.yaml"), "spec.availability")
    );
}

#[test]
fn problems_in_several_files_are_all_reported_and_counted() {
    let bad_tier = TIERS.replace("rto: 8h", "rto: 8 hours");
    let text = tenant("  environments: [{name: p, kind: dve}]\n  modules: [Sales]\n");
    let err = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", bad_tier.as_str()),
        ("t.yaml", &text),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 3, "{err}");
    assert_eq!(err.file_count(), 2);
    let rendered = err.to_string();
    assert!(
        rendered.ends_with("\nerror: 3 problems in 2 files"),
        "{rendered}"
    );
    assert!(
        rendered.starts_with("tiers.yaml:15:8: spec.rto: duration \"8 hours\" has unknown unit \" \"; use s, m, h or d\n"),
        "{rendered}"
    );

    let json = serde_json::to_value(&err).unwrap();
    assert_eq!(json["errors"], 3);
    assert_eq!(json["files"], 2);
    assert_eq!(
        json["diagnostics"][1],
        serde_json::json!({
            "file": "t.yaml",
            "line": 6,
            "column": 34,
            "path": "spec.environments[0].kind",
            "message": "unknown variant \"dve\", expected one of dev, test, uat, training, staging, production, dr",
            "help": "did you mean \"dev\"?"
        })
    );
}

#[test]
fn parse_documents_keeps_valid_documents_and_problems_apart() {
    let text = format!("{TIERS}---\n{}", tenant("  environments: []\n"));
    let parsed = parse_documents(Path::new("x.yaml"), &text);
    let kinds: Vec<Kind> = parsed.documents.iter().map(|d| d.document.kind()).collect();
    assert_eq!(
        kinds,
        [Kind::BackupPolicy, Kind::ServiceTier, Kind::ServiceTier]
    );
    assert_eq!(parsed.diagnostics.len(), 1);
    assert_eq!(parsed.diagnostics[0].path, "spec.environments");
}

#[test]
fn empty_documents_and_comments_are_skipped() {
    let text = format!("# just a comment\n---\n---\n{PLATFORM}---\n# trailing\n");
    let set = load_sources([("p.yaml", text.as_str()), ("tiers.yaml", TIERS)]).unwrap();
    assert_eq!(set.platform.source.line, 4);
    let err = load_sources::<[(&str, &str); 0], _, _>([]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "error: no spec files given\nerror: 1 problem"
    );
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("careplane-spec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn directories_are_read_in_name_order() {
    let dir = TempDir::new("dirs");
    let d = &dir.0;
    std::fs::write(
        d.join("b-tenants.yml"),
        tenant("  environments: [{name: p, kind: dev}]\n"),
    )
    .unwrap();
    std::fs::write(d.join("a-platform.yaml"), PLATFORM).unwrap();
    std::fs::write(d.join("c-tiers.yaml"), TIERS).unwrap();
    std::fs::write(d.join("notes.txt"), "not: [yaml").unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("sub/ignored.yaml"), "not: [yaml").unwrap();

    let set = load(std::slice::from_ref(d)).unwrap();
    assert_eq!(set.platform.source.file, d.join("a-platform.yaml"));
    assert_eq!(set.tenants[0].source.file, d.join("b-tenants.yml"));
    assert_eq!(set.data_dir(), d.join(".careplane"));

    // A file named both directly and through its directory is read once.
    load(&[d.join("a-platform.yaml"), d.clone()]).unwrap();

    std::fs::write(d.join("d-bad.yaml"), "kind: Tenant\nkind: Tenant\n\u{0}").unwrap();
    std::fs::write(d.join("e-latin1.yaml"), b"a: 1\nb: caf\xe9\n").unwrap();
    let missing = d.join("missing.yaml");
    let empty = d.join("sub/empty");
    std::fs::create_dir(&empty).unwrap();
    let err = load(&[d.clone(), missing.clone(), empty.clone()]).unwrap_err();
    let places: Vec<(PathBuf, usize, usize)> = err
        .iter()
        .map(|e| (e.file.clone(), e.line, e.column))
        .collect();
    assert_eq!(err.len(), 5, "{err}");
    assert_eq!(places[0], (d.join("d-bad.yaml"), 2, 1));
    assert_eq!(err[0].message, "duplicate key \"kind\"");
    assert_eq!(places[1], (d.join("d-bad.yaml"), 3, 1));
    assert_eq!(
        err[1].message,
        "YAML syntax error: found unprintable character"
    );
    assert_eq!(places[2], (d.join("e-latin1.yaml"), 2, 7));
    assert_eq!(err[2].message, "file is not valid UTF-8");
    assert_eq!((places[3].0.clone(), places[3].1), (missing, 0));
    assert!(err[3].message.starts_with("cannot read: "), "{}", err[3]);
    assert_eq!(places[4].0, empty);
    assert_eq!(err[4].message, "no .yaml or .yml files in this directory");
    assert!(err.to_string().ends_with("error: 5 problems in 4 files"));
}

/// A tenant document named `name` with `envs` as its environments list.
fn tenant_named(name: &str, rest: &str) -> String {
    format!("apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\nspec:\n{rest}")
}

#[test]
fn derived_database_names_must_not_collide() {
    // Tenant a-b environment c and tenant a environment b-c are both `a-b-c`.
    let x = tenant_named(
        "a-b",
        "  environments:\n    - name: c\n      kind: production\n",
    );
    let y = format!(
        "{}---\n{}",
        tenant_named(
            "a",
            "  environments:\n    - {name: prod, kind: production}\n    - {name: b-c, kind: dev}\n"
        ),
        tenant_named("a-b-c", "  environments: [{name: d, kind: dev}]\n"),
    );
    let err = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("x.yaml", x.as_str()),
        ("y.yaml", y.as_str()),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(err[0].file, Path::new("y.yaml"));
    check(
        &err[0],
        8,
        14,
        "spec.environments[1].name",
        "tenant \"a-b\" environment \"c\" at x.yaml:7:13 and tenant \"a\" environment \"b-c\" at \
         y.yaml:8:14 both become database, role and Redis user \"a-b-c\"",
        Some(
            "\"<tenant>-<environment>\" names must be unique on a platform; rename one of the \
             environments or tenants",
        ),
    );

    // Across tenancies too: the Redis user is on the shared server either way.
    let dedicated = x.replace("spec:\n", "spec:\n  tenancy: dedicated-db\n");
    let err = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("x.yaml", dedicated.as_str()),
        ("y.yaml", y.as_str()),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert!(
        err[0].message.contains("at x.yaml:8:13 and tenant \"a\""),
        "{err}"
    );
}

#[test]
fn tenant_names_careplane_and_postgresql_use_are_reserved() {
    let envs = "  environments: [{name: admin, kind: dev}]\n";
    let names = [
        "tpl",
        "tpl-odoo18",
        "careplane",
        "careplane-ops",
        "postgres",
        "template1",
        "templates",
    ];
    let text = names
        .iter()
        .map(|n| tenant_named(n, envs))
        .collect::<Vec<_>>()
        .join("---\n");
    let all = problems(&text);
    assert_eq!(all.len(), names.len(), "{}", Diagnostics(all.clone()));
    for (d, name) in all.iter().zip(names) {
        assert_eq!(d.path, "metadata.name", "{d}");
        assert_eq!(
            d.message,
            format!("the tenant name \"{name}\" is reserved"),
            "{d}"
        );
    }
    // The template namespace: tenant tpl's environment odoo18-<hash> would
    // take over the shared template tpl-odoo18-<hash>.
    let d = problem(&tenant_named(
        "tpl",
        "  environments: [{name: odoo18-d266fec6, kind: dev}]\n",
    ));
    check(
        &d,
        4,
        9,
        "metadata.name",
        "the tenant name \"tpl\" is reserved",
        Some(
            "databases and roles starting with \"tpl-\" are careplane's Odoo templates \
             (\"tpl-odoo<version>-<hash>\"), which a tenant's \"<tenant>-<environment>\" names \
             must not collide with; pick another name",
        ),
    );
    // careplane + admin would be the Redis admin user careplane-admin.
    let d = problem(&tenant_named("careplane", envs));
    assert_eq!(
        d.help.as_deref(),
        Some(
            "names starting with \"careplane\" are careplane's own (Redis user \"careplane-admin\", \
             PostgreSQL role \"careplane_admin\"); pick another name"
        )
    );
    // Near misses are fine.
    for name in ["tplx", "careplanes", "postgresql", "temp"] {
        load_sources([
            ("platform.yaml", PLATFORM),
            ("tiers.yaml", TIERS),
            ("t.yaml", &tenant_named(name, envs)),
        ])
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// `PLATFORM` with `spec` lines added before `defaults:`.
fn platform_with(spec: &str) -> String {
    PLATFORM.replace("  defaults:\n", &format!("{spec}  defaults:\n"))
}

/// The problems of a platform document alone (with the tiers).
fn platform_problems(text: &str) -> Diagnostics {
    load_sources([("p.yaml", text), ("tiers.yaml", TIERS)]).unwrap_err()
}

/// careplane archives every cluster's WAL (docs/design/0010): an
/// operator's archive settings would send WAL where no restore looks.
#[test]
fn wal_archiving_settings_are_careplanes() {
    let text = platform_with(
        "  postgres:\n    settings:\n      archive_mode: 'off'\n      archive_command: /bin/true\n      \
         restore_command: cp x y\n",
    );
    let err = platform_problems(&text);
    let got: Vec<&str> = err.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        got,
        [
            "spec.postgres.settings.archive_mode",
            "spec.postgres.settings.archive_command",
            "spec.postgres.settings.restore_command"
        ],
        "{err}"
    );
    assert!(
        err.to_string().contains("archives every cluster's WAL"),
        "{err}"
    );
}

#[test]
fn postgres_settings_careplane_enforces_are_refused() {
    let text = platform_with(
        "  postgres:\n    settings:\n      fsync: 'off'\n      Full_Page_Writes: 'off'\n      port: '5433'\n      \
         include_dir: /tmp\n      ssl_ciphers: ALL\n      bad key: x\n      work_mem: \"4MB\\nssl = off\"\n      \
         max_connections: lots\n      shared_buffers: 64MB\n",
    );
    let err = platform_problems(&text);
    let got: Vec<(usize, &str, &str)> = err
        .iter()
        .map(|d| (d.line, d.path.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                9,
                "spec.postgres.settings.fsync",
                "\"fsync\" cannot be set here"
            ),
            (
                10,
                "spec.postgres.settings.Full_Page_Writes",
                "\"Full_Page_Writes\" cannot be set here"
            ),
            (
                11,
                "spec.postgres.settings.port",
                "\"port\" cannot be set here"
            ),
            (
                12,
                "spec.postgres.settings.include_dir",
                "\"include_dir\" cannot be set here"
            ),
            (
                13,
                "spec.postgres.settings.ssl_ciphers",
                "\"ssl_ciphers\" cannot be set here"
            ),
            (
                14,
                "spec.postgres.settings[\"bad key\"]",
                "invalid PostgreSQL setting name \"bad key\""
            ),
            (
                15,
                "spec.postgres.settings.work_mem",
                "the value of \"work_mem\" contains a line break or NUL"
            ),
            (
                16,
                "spec.postgres.settings.max_connections",
                "max_connections \"lots\" is not a whole number"
            ),
        ],
        "{err}"
    );
    assert_eq!(
        err[0].help.as_deref(),
        Some("careplane enforces it so that data survives crashes and corruption is detected")
    );
    assert_eq!(
        err[2].help.as_deref(),
        Some("careplane sets it to harden every cluster")
    );
    for key in careplane_spec::PROTECTED_PG_SETTINGS {
        assert!(careplane_spec::is_protected_pg_setting(key), "{key}");
    }
    assert!(careplane_spec::is_protected_pg_setting(" FSYNC "));
    assert!(!careplane_spec::is_protected_pg_setting("work_mem"));
}

#[test]
fn data_dir_must_be_a_directory_of_its_own() {
    let dir = TempDir::new("datadir");
    let file = dir.0.join("state");
    std::fs::write(&file, "").unwrap();
    let refused = [
        ("/", "dataDir \"/\" is a shared system directory"),
        ("/etc", "dataDir \"/etc\" is in the system directory /etc"),
        (
            "/dev/null",
            "dataDir \"/dev/null\" is in the system directory /dev",
        ),
        (
            "/usr/lib/careplane",
            "dataDir \"/usr/lib/careplane\" is in the system directory /usr",
        ),
        ("/var", "dataDir \"/var\" is a shared system directory"),
        (
            "/var/lib/../../etc/x",
            "dataDir \"/etc/x\" is in the system directory /etc",
        ),
        ("/tmp/.", "dataDir \"/tmp\" is a shared system directory"),
    ];
    for (data_dir, message) in refused {
        let err = platform_problems(&PLATFORM.replace(".careplane", data_dir));
        assert_eq!(err.len(), 1, "{err}");
        check(
            &err[0],
            6,
            12,
            "spec.dataDir",
            message,
            Some(
                "careplane keeps its state, keys, clusters and logs there and sets its mode; use a \
                 directory of its own, e.g. /var/lib/careplane",
            ),
        );
    }
    let err = platform_problems(&PLATFORM.replace(".careplane", &file.display().to_string()));
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(
        err[0].message,
        format!(
            "dataDir \"{}\" exists and is not a directory",
            file.display()
        )
    );
    let err = platform_problems(&PLATFORM.replace(".careplane", "\"/srv/care\\nplane\""));
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(
        err[0].message,
        "path \"/srv/care\\nplane\" contains a control character"
    );
    for ok in [
        "/var/lib/careplane",
        "/tmp/careplane-x",
        ".careplane",
        "../data",
    ] {
        load_sources([
            ("p.yaml", PLATFORM.replace(".careplane", ok).as_str()),
            ("tiers.yaml", TIERS),
        ])
        .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn data_dir_must_leave_room_for_the_postgresql_socket() {
    let long = format!("/srv/{}", "d".repeat(76));
    let text = PLATFORM.replace(".careplane", &long);
    let err = load_sources([
        ("p.yaml", text.as_str()),
        ("tiers.yaml", TIERS),
        (
            "t.yaml",
            &tenant("  tenancy: dedicated-db\n  environments: [{name: p, kind: dev}]\n"),
        ),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    check(
        &err[0],
        6,
        12,
        "spec.dataDir",
        &format!(
            "dataDir \"{long}\" is too long: the socket of PostgreSQL cluster \"acme\" would be \
             {long}/pg/acme/run/.s.PGSQL.65535 (108 bytes), over the 107-byte limit of unix socket paths"
        ),
        Some("use a dataDir of at most 80 bytes"),
    );
}

#[test]
fn odoo_paths_cannot_break_configuration_files() {
    let text = platform_with(
        "  odoo:\n    command: \"/opt/odoo/odoo-bin\\n--dev=all\"\n    python: '/opt/venv/bin/python '\n    \
         version: 18\n    addonsPaths: [/opt/addons, '/opt/a,b', \"/opt/x\\ny\", '']\n",
    );
    let err = platform_problems(&text);
    let got: Vec<(&str, &str)> = err
        .iter()
        .map(|d| (d.path.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "spec.odoo.command",
                "path \"/opt/odoo/odoo-bin\\n--dev=all\" contains a control character"
            ),
            (
                "spec.odoo.python",
                "path \"/opt/venv/bin/python \" starts or ends with whitespace"
            ),
            (
                "spec.odoo.addonsPaths[1]",
                "path \"/opt/a,b\" contains a comma"
            ),
            (
                "spec.odoo.addonsPaths[2]",
                "path \"/opt/x\\ny\" contains a control character"
            ),
            ("spec.odoo.addonsPaths[3]", "path must not be empty"),
        ],
        "{err}"
    );
    assert_eq!(
        err[2].help.as_deref(),
        Some(
            "Odoo's addons_path is a comma-separated list: the comma would split this path in two"
        )
    );
    let all = problems(&tenant(
        "  addonsPaths: [\"/srv/addons\\n\"]\n  environments:\n    - name: p\n      kind: dev\n      \
         addonsPaths: ['/srv/a,b']\n",
    ));
    let got: Vec<(&str, &str)> = all
        .iter()
        .map(|d| (d.path.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "spec.addonsPaths[0]",
                "path \"/srv/addons\\n\" contains a control character"
            ),
            (
                "spec.environments[0].addonsPaths[0]",
                "path \"/srv/a,b\" contains a comma"
            ),
        ]
    );
}

#[test]
fn a_cluster_cannot_promise_more_connections_than_it_serves() {
    // 8 production environments without dbConnections: 16 each, 128 in all,
    // on a shared cluster that serves 100 - 3 - 10 = 87.
    let envs: String = (0..8)
        .map(|i| format!("    - {{name: p{i}, kind: production}}\n"))
        .collect();
    let tenants = format!("  environments:\n{envs}");
    let err = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", &tenant(&tenants)),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(err[0].file, Path::new("platform.yaml"));
    check(
        &err[0],
        6,
        3,
        "spec.postgres.settings.max_connections",
        "PostgreSQL cluster \"shared\" is over-committed: the connection limits of its 8 roles add \
         up to 128, more than the 87 it can serve",
        Some(
            "max_connections 100 minus 3 superuser_reserved_connections and 10 for careplane leaves \
             87; largest limits: acme-p0 16 (t.yaml:7:14), acme-p1 16 (t.yaml:8:14), acme-p2 16 \
             (t.yaml:9:14), acme-p3 16 (t.yaml:10:14), acme-p4 16 (t.yaml:11:14), and 3 more; raise \
             max_connections here, or lower sizing.dbConnections or workers (a role without \
             dbConnections gets 2 per worker + 3 per cron thread + 6)",
        ),
    );

    // Raising max_connections fixes it; the error then points at the setting.
    let raised = |n: u32| {
        platform_with(&format!(
            "  postgres:\n    settings: {{max_connections: \"{n}\"}}\n"
        ))
    };
    load_sources([
        ("platform.yaml", raised(141).as_str()),
        ("tiers.yaml", TIERS),
        ("t.yaml", &tenant(&tenants)),
    ])
    .unwrap();
    let err = load_sources([
        ("platform.yaml", raised(140).as_str()),
        ("tiers.yaml", TIERS),
        ("t.yaml", &tenant(&tenants)),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert_eq!(
        (err[0].line, err[0].column, err[0].path.as_str()),
        (8, 33, "spec.postgres.settings.max_connections")
    );
    assert!(
        err[0].message.contains("add up to 128, more than the 127"),
        "{err}"
    );

    // Each dedicated cluster has a budget of its own, and dbConnections counts.
    let big = tenant_named(
        "big",
        "  tenancy: dedicated-db\n  sizing: {dbConnections: 50}\n  environments:\n    - {name: a, kind: dev}\n    - {name: b, kind: dev}\n",
    );
    let err = load_sources([
        ("platform.yaml", PLATFORM),
        ("tiers.yaml", TIERS),
        ("t.yaml", big.as_str()),
    ])
    .unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert!(
        err[0]
            .message
            .starts_with("PostgreSQL cluster \"big\" is over-committed: the connection limits of its 2 roles add up to 100"),
        "{err}"
    );
}

/// The Platform's `ingress:` section: optional fields, a domain that must
/// be a lower-case DNS name, distinct non-zero ports, no unknown fields.
#[test]
fn ingress_section_is_checked_field_by_field() {
    let with = |ingress: &str| {
        PLATFORM.replace("  defaults:", &format!("  ingress:{ingress}\n  defaults:"))
    };
    let ok = with(" {}");
    load_sources([("platform.yaml", ok.as_str()), ("tiers.yaml", TIERS)])
        .expect("empty ingress loads");
    let full = with("\n    domain: odoo.example.org\n    httpsPort: 8443\n    httpPort: 8080\n    listen: 127.0.0.1\n    adminPaths: [/odoo/settings]\n    adminAllow: [10.0.0.0/8, '::1']");
    load_sources([("platform.yaml", full.as_str()), ("tiers.yaml", TIERS)])
        .expect("full ingress loads");

    for (ingress, path, needle) in [
        (
            "\n    domain: Odoo.Example",
            "spec.ingress.domain",
            "not a lower-case DNS name",
        ),
        (
            "\n    domain: a..b",
            "spec.ingress.domain",
            "not a lower-case DNS name",
        ),
        (
            "\n    httpsPort: 8443\n    httpPort: 8443",
            "spec.ingress.httpPort",
            "must differ",
        ),
        ("\n    httpsPort: 0", "spec.ingress.httpsPort", "port 0"),
        (
            "\n    httpsPorts: 8443",
            "spec.ingress.httpsPorts",
            "unknown field",
        ),
        ("\n    listen: everywhere", "spec.ingress.listen", ""),
        (
            "\n    adminPaths: [settings]\n    adminAllow: [10.0.0.0/8]",
            "spec.ingress.adminPaths[0]",
            "not a path prefix",
        ),
        (
            "\n    adminPaths: [/odoo/settings]\n    adminAllow: [10.0.0.0/33]",
            "spec.ingress.adminAllow[0]",
            "not an address or CIDR",
        ),
        (
            "\n    adminPaths: [/odoo/settings]",
            "spec.ingress.adminPaths",
            "give both or neither",
        ),
        (
            "\n    certificates:\n      - host: a.b.c\n        certFile: cert.pem\n        keyFile: /k.pem",
            "spec.ingress.certificates[0].certFile",
            "not an absolute path",
        ),
    ] {
        let text = with(ingress);
        let err = load_sources([("platform.yaml", text.as_str()), ("tiers.yaml", TIERS)])
            .expect_err(ingress);
        let d = err
            .iter()
            .find(|d| d.path == path)
            .unwrap_or_else(|| panic!("{ingress}: no problem at {path}: {err}"));
        assert_eq!(d.file, Path::new("platform.yaml"));
        assert!(d.message.contains(needle), "{ingress}: {d}");
    }
}

#[test]
fn kubernetes_section_errors_name_the_field() {
    let text = "\
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata:
  name: hq
spec:
  dataDir: .careplane
  kubernetes:
    certificateIssuer: {name: Lets_Encrypt}
    adminAllow: [10.0.0.0/8, 10.0.0.0/40]
    backups: {destinationPath: /var/backups}
    smtp: {cidrs: [], port: 0}
    imageSignatures: {publicKey: not-a-key}
    secrets: {sops: {ageRecipients: [age1notakey]}}
    storageClasss: {}
";
    let err = load_str(Path::new("k.yaml"), text).unwrap_err().to_string();
    let expected = "k.yaml:14:5: spec.kubernetes.storageClasss: unknown field \"storageClasss\"";
    assert!(err.contains(expected), "{expected}\nin:\n{err}");
    let text = text.replace("    storageClasss: {}\n", "");
    let err = load_str(Path::new("k.yaml"), &text)
        .unwrap_err()
        .to_string();
    for expected in [
        "spec.kubernetes.certificateIssuer.name: \"Lets_Encrypt\" is not a Kubernetes object name",
        "spec.kubernetes.adminAllow[1]: \"10.0.0.0/40\" is neither an address nor a CIDR",
        "spec.kubernetes.adminAllow: adminAllow needs adminPaths too",
        "spec.kubernetes.backups.destinationPath: \"/var/backups\" is not an object store URL",
        "spec.kubernetes.smtp.cidrs: name at least one address of the mail relay",
        "spec.kubernetes.smtp.port: port 0 is not a port",
        "spec.kubernetes.imageSignatures.publicKey: must be a PEM public key",
        "spec.kubernetes.secrets.sops.ageRecipients[0]: \"age1notakey\" is not an age public key",
    ] {
        assert!(err.contains(expected), "{expected}\nin:\n{err}");
    }
}

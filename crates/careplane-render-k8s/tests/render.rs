//! Properties of the rendered tree: deterministic, no secret material,
//! policies that select real workloads, errors that name what is wrong, and
//! drift reports that name file and field.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use careplane_render_k8s::{
    check_tree, render, render_with, write_tree, DriftKind, RenderError, SecretInput, SecretValues,
    Tree,
};
use proptest::prelude::*;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest;

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn all_objects(tree: &Tree) -> Vec<(String, Value)> {
    tree.files
        .iter()
        .flat_map(|(f, t)| docs(t).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

#[test]
fn rendering_is_deterministic_and_independent_of_spec_order() {
    let specs = common::example();
    let a = render(&specs, &common::opts()).unwrap();
    let b = render(&specs, &common::opts()).unwrap();
    assert_eq!(a, b);
    let mut shuffled = specs.clone();
    shuffled.tenants.reverse();
    for t in &mut shuffled.tenants {
        t.spec.environments.reverse();
    }
    assert_eq!(a, render(&shuffled, &common::opts()).unwrap());
    // Writing the same tree again changes nothing on disk.
    let dir = tempfile::tempdir().unwrap();
    let first = write_tree(&a, dir.path()).unwrap();
    assert_eq!(first.written.len(), a.files.len());
    let second = write_tree(&b, dir.path()).unwrap();
    assert!(
        second.written.is_empty() && second.removed.is_empty(),
        "{second:?}"
    );
    assert_eq!(second.unchanged, a.files.len());
}

#[test]
fn no_secret_material_is_rendered() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let mut external_secrets = 0;
    for (file, obj) in all_objects(&tree) {
        let kind = obj["kind"].as_str().unwrap_or_default();
        assert_ne!(kind, "Secret", "{file} renders a Secret");
        assert!(obj.get("stringData").is_none(), "{file} has stringData");
        if kind == "ConfigMap" {
            for (key, text) in obj["data"].as_object().unwrap() {
                let text = text.as_str().unwrap();
                assert!(
                    !text
                        .lines()
                        .any(|l| l.trim_start().starts_with("admin_passwd")),
                    "{file} {key} sets admin_passwd"
                );
                assert!(!text.to_lowercase().contains("requirepass"), "{file} {key}");
                if key.ends_with(".conf") && text.contains("db_user") {
                    assert!(text.contains("db_password = False"), "{file} {key}");
                }
            }
        }
        if kind == "ExternalSecret" {
            external_secrets += 1;
            // Every template reference is to a value fetched from the
            // store: nothing else could fill it.
            let fetched: BTreeSet<&str> = obj["spec"]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["secretKey"].as_str().unwrap())
                .collect();
            for (key, tpl) in obj["spec"]["target"]["template"]["data"]
                .as_object()
                .unwrap()
            {
                let tpl = tpl.as_str().unwrap();
                for part in tpl.split("{{").skip(1) {
                    let expr = part.split("}}").next().unwrap().trim();
                    let name = expr
                        .strip_prefix("index . \"")
                        .and_then(|r| r.split('"').next())
                        .or_else(|| {
                            expr.strip_prefix('.')
                                .map(|r| r.split_whitespace().next().unwrap())
                        })
                        .unwrap_or_else(|| panic!("{file} {key}: unexpected template {expr:?}"));
                    assert!(
                        fetched.contains(name),
                        "{file} {key}: {name} is not fetched"
                    );
                }
            }
        }
        // Passwords reach containers only by reference.
        for c in containers(&obj) {
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap();
                if name.contains("PASSW") || name.contains("REDIS_URL") {
                    assert!(
                        e.get("value").is_none(),
                        "{file}: {name} has a literal value"
                    );
                    assert!(e["valueFrom"]["secretKeyRef"].is_object(), "{file}: {name}");
                }
            }
        }
    }
    assert!(external_secrets > 0);
}

fn containers(obj: &Value) -> Vec<&Value> {
    let spec = &obj["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn odoo_pods_are_hardened() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let mut uids = BTreeMap::new();
    let mut pods = 0;
    for (file, obj) in all_objects(&tree) {
        if !matches!(obj["kind"].as_str(), Some("Deployment" | "Job")) {
            continue;
        }
        pods += 1;
        let spec = &obj["spec"]["template"]["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false, "{file}");
        let sc = &spec["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{file}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{file}");
        let uid = sc["runAsUser"].as_u64().unwrap();
        assert!(uid >= 1000, "{file}");
        // One uid per environment folder, shared by its web, cron and init pods.
        let env_dir = file.rsplit_once('/').unwrap().0.to_string();
        assert_eq!(*uids.entry(env_dir).or_insert(uid), uid, "{file}");
        for c in containers(&obj) {
            let csc = &c["securityContext"];
            assert_eq!(csc["readOnlyRootFilesystem"], true, "{file}");
            assert_eq!(csc["allowPrivilegeEscalation"], false, "{file}");
            assert_eq!(
                csc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{file}"
            );
            let image = c["image"].as_str().unwrap();
            assert!(image.contains("@sha256:"), "{file}: {image}");
        }
        let tmp = c_mounts(&obj).contains("/tmp");
        assert!(
            tmp,
            "{file}: /tmp must be a writable emptyDir under a read-only root"
        );
    }
    assert!(pods >= 30, "{pods}");
    let distinct: BTreeSet<_> = uids.values().collect();
    assert_eq!(
        distinct.len(),
        uids.len(),
        "uids shared between environments: {uids:?}"
    );
    for (file, obj) in all_objects(&tree) {
        if obj["kind"] == "Namespace" {
            assert_eq!(
                obj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
                "{file}"
            );
        }
    }
}

fn c_mounts(obj: &Value) -> BTreeSet<String> {
    containers(obj)
        .iter()
        .flat_map(|c| c["volumeMounts"].as_array().unwrap().iter())
        .map(|m| m["mountPath"].as_str().unwrap().to_string())
        .collect()
}

/// What kustomize would make of the tree: objects with their namespace.
fn resolve(
    tree: &Tree,
    dir: &str,
    namespace: Option<&str>,
    out: &mut Vec<(Option<String>, Value)>,
) {
    let k = &docs(&tree.files[&format!("{dir}/kustomization.yaml")])[0];
    let ns = k["namespace"].as_str().or(namespace);
    for r in k["resources"].as_array().unwrap() {
        let r = r.as_str().unwrap();
        let path = normalize(&format!("{dir}/{r}"));
        if tree
            .files
            .contains_key(&format!("{path}/kustomization.yaml"))
        {
            resolve(tree, &path, ns, out);
        } else {
            for d in docs(&tree.files[&path]) {
                out.push((ns.map(String::from), d));
            }
        }
    }
}

fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn entry_points(tree: &Tree) -> Vec<String> {
    tree.files
        .keys()
        .filter_map(|f| f.strip_suffix("/kustomization.yaml"))
        .filter(|d| {
            d.starts_with("tenants/") || d.starts_with("postgres/") || d.starts_with("redis/")
        })
        .map(String::from)
        .collect()
}

fn matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

fn label_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// Every problem with the tree's NetworkPolicies: a policy's podSelector, or
/// a peer's namespace and pod selectors, that select no workload rendered in
/// the tree. Peers in namespaces careplane does not render (kube-system,
/// the ingress controller's, the operator's) are not checked.
fn policy_problems(tree: &Tree) -> Vec<String> {
    let mut objects = Vec::new();
    for dir in entry_points(tree) {
        resolve(tree, &dir, None, &mut objects);
    }
    let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut workloads: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for (ns, o) in &objects {
        match o["kind"].as_str().unwrap() {
            "Namespace" => {
                let name = o["metadata"]["name"].as_str().unwrap().to_string();
                let mut l = label_map(&o["metadata"]["labels"]);
                l.insert("kubernetes.io/metadata.name".into(), name.clone());
                namespaces.insert(name, l);
            }
            "Deployment" | "StatefulSet" | "Job" => workloads
                .entry(ns.clone().unwrap())
                .or_default()
                .push(label_map(&o["spec"]["template"]["metadata"]["labels"])),
            // CloudNativePG labels its instance pods with the cluster's name
            // (and their role), per its documentation.
            "Cluster" => workloads.entry(ns.clone().unwrap()).or_default().push(
                [
                    (
                        "cnpg.io/cluster".to_string(),
                        o["metadata"]["name"].as_str().unwrap().to_string(),
                    ),
                    ("cnpg.io/podRole".to_string(), "instance".to_string()),
                ]
                .into(),
            ),
            // A Pooler's pods carry its name, per CloudNativePG's documentation.
            "Pooler" => workloads.entry(ns.clone().unwrap()).or_default().push(
                [
                    (
                        "cnpg.io/poolerName".to_string(),
                        o["metadata"]["name"].as_str().unwrap().to_string(),
                    ),
                    ("cnpg.io/podRole".to_string(), "pooler".to_string()),
                ]
                .into(),
            ),
            _ => {}
        }
    }
    let external = ["kube-system", "traefik", "cnpg-system"];
    let mut problems = Vec::new();
    for (ns, o) in &objects {
        if o["kind"] != "NetworkPolicy" {
            continue;
        }
        let ns = ns.clone().unwrap();
        let name = format!("{ns}/{}", o["metadata"]["name"].as_str().unwrap());
        let here = workloads.get(&ns).cloned().unwrap_or_default();
        if !here.iter().any(|w| matches(&o["spec"]["podSelector"], w)) {
            problems.push(format!("{name}: podSelector selects no workload in {ns}"));
        }
        let rules =
            ["ingress", "egress"].map(|d| o["spec"][d].as_array().cloned().unwrap_or_default());
        for rule in rules.iter().flatten() {
            for peer in rule["from"].as_array().or(rule["to"].as_array()).unwrap() {
                let target_ns: Vec<String> = match peer.get("namespaceSelector") {
                    None => vec![ns.clone()],
                    Some(sel) => {
                        let names = label_map(&sel["matchLabels"]);
                        if names
                            .get("kubernetes.io/metadata.name")
                            .is_some_and(|n| external.contains(&n.as_str()))
                        {
                            continue;
                        }
                        let found: Vec<String> = namespaces
                            .iter()
                            .filter(|(_, l)| matches(sel, l))
                            .map(|(n, _)| n.clone())
                            .collect();
                        if found.is_empty() {
                            problems.push(format!(
                                "{name}: namespaceSelector {sel} selects no namespace"
                            ));
                        }
                        found
                    }
                };
                if let Some(sel) = peer.get("podSelector") {
                    for t in &target_ns {
                        let ws = workloads.get(t).cloned().unwrap_or_default();
                        if !ws.iter().any(|w| matches(sel, w)) {
                            problems.push(format!(
                                "{name}: peer podSelector {sel} selects no workload in {t}"
                            ));
                        }
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn every_network_policy_selects_rendered_workloads() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let problems = policy_problems(&tree);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check can fail: relabel one environment's web pods.
    let mut broken = tree.clone();
    let f = "tenants/citylab/uat/deployment-odoo-web.yaml";
    let text = broken.files[f].replace(
        "app.kubernetes.io/component: web",
        "app.kubernetes.io/component: webx",
    );
    broken.files.insert(f.into(), text);
    let problems = policy_problems(&broken);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("citylab-uat/odoo-web-from-ingress: podSelector")),
        "{problems:?}"
    );
}

#[test]
fn check_names_file_and_field_of_hand_edits() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_tree(&tree, dir.path()).unwrap();
    assert_eq!(check_tree(&tree, dir.path()).unwrap(), vec![]);

    let edit = |rel: &str, from: &str, to: &str| {
        let p = dir.path().join(rel);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{rel} has no {from:?}");
        fs::write(&p, text.replacen(from, to, 1)).unwrap();
    };
    edit(
        "tenants/stmarys/production/hpa-odoo-web.yaml",
        "minReplicas: 2",
        "minReplicas: 5",
    );
    edit(
        "tenants/stmarys/production/configmap-odoo-config.yaml",
        "    workers = 2\n",
        "    workers = 8\n",
    );
    edit(
        "postgres/shared/cluster.yaml",
        "  instances: 3\n",
        "  instances: 3\n  monitoring: {}\n",
    );
    fs::remove_file(dir.path().join("tenants/citylab/uat/pdb-odoo-web.yaml")).unwrap();
    fs::write(
        dir.path().join("tenants/citylab/uat/secret.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData: {password: hunter2}\n",
    )
    .unwrap();
    edit(
        "flux/kustomizations.yaml",
        "path: ./tenants/northclinic/dev",
        "path: ./tenants/northclinic/devx",
    );

    let drifts = check_tree(&tree, dir.path()).unwrap();
    let text: Vec<String> = drifts.iter().map(|d| d.to_string()).collect();
    let has = |s: &str| text.iter().any(|t| t == s);
    assert!(
        has("tenants/stmarys/production/hpa-odoo-web.yaml: HorizontalPodAutoscaler/odoo-web: spec.minReplicas: expected 2, found 5"),
        "{text:#?}"
    );
    assert!(
        has("tenants/stmarys/production/configmap-odoo-config.yaml: ConfigMap/odoo-config: data[\"odoo-web.conf\"] line 17: expected \"workers = 2\", found \"workers = 8\""),
        "{text:#?}"
    );
    assert!(
        has("postgres/shared/cluster.yaml: Cluster/postgres: spec.monitoring: added (careplane does not render it)"),
        "{text:#?}"
    );
    assert!(
        has("tenants/citylab/uat/pdb-odoo-web.yaml: missing (careplane renders it)"),
        "{text:#?}"
    );
    assert!(
        has("tenants/citylab/uat/secret.yaml: not rendered by careplane (added by hand?)"),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.starts_with("flux/kustomizations.yaml: Kustomization/env-northclinic-dev: [")
            && t.ends_with("].spec.path: expected \"./tenants/northclinic/dev\", found \"./tenants/northclinic/devx\"")),
        "{text:#?}"
    );
    assert_eq!(drifts.len(), 6, "{text:#?}");
    // A hand-added Secret's values never reach a report.
    assert!(!text.iter().any(|t| t.contains("hunter2")));
}

#[test]
fn check_hides_values_of_a_secret_put_in_place_of_a_rendered_file() {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_tree(&tree, dir.path()).unwrap();
    let rel = "tenants/citylab/uat/configmap-odoo-config.yaml";
    let text = fs::read_to_string(dir.path().join(rel)).unwrap();
    let text = text
        .replace("kind: ConfigMap", "kind: Secret")
        .replace("db_password = False", "db_password = hunter2");
    fs::write(dir.path().join(rel), text).unwrap();
    let drifts = check_tree(&tree, dir.path()).unwrap();
    assert!(drifts
        .iter()
        .any(|d| d.file == rel && matches!(d.kind, DriftKind::Changed { .. })));
    let all = format!("{drifts:?}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn write_removes_what_is_no_longer_rendered_and_nothing_else() {
    let specs = common::example();
    let tree = render(&specs, &common::opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("README.md"), "kept\n").unwrap();
    write_tree(&tree, dir.path()).unwrap();

    let mut fewer = specs.clone();
    fewer.tenants.retain(|t| t.metadata.name != "regional");
    let smaller = render(&fewer, &common::opts()).unwrap();
    let report = write_tree(&smaller, dir.path()).unwrap();
    assert!(report
        .removed
        .iter()
        .any(|r| r == "tenants/regional/production/deployment-odoo-web.yaml"));
    assert!(report
        .removed
        .iter()
        .any(|r| r == "postgres/regional/cluster.yaml"));
    assert!(
        !dir.path().join("tenants/regional").exists(),
        "empty folders are removed"
    );
    assert!(
        !dir.path().join("overlays/dr").exists(),
        "no dr environment is left"
    );
    assert!(dir.path().join("README.md").exists());
    // The flux file changed, and the result is exactly the smaller tree.
    assert!(report
        .written
        .contains(&"flux/kustomizations.yaml".to_string()));
    assert_eq!(check_tree(&smaller, dir.path()).unwrap(), vec![]);
    // No temporary file is left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains("careplane-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn production_needs_images_pinned_by_digest() {
    let specs = common::example();
    let mut opts = common::opts();
    opts.odoo_image = "docker.io/library/odoo:18.0".into();
    let err = render(&specs, &opts).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RenderError::ImageNotPinned { .. }), "{msg}");
    assert!(
        msg.contains("environment citylab/production (production)"),
        "{msg}"
    );
    assert!(
        msg.contains("Odoo image \"docker.io/library/odoo:18.0\""),
        "{msg}"
    );

    let mut opts = common::opts();
    opts.postgres_image = "ghcr.io/cloudnative-pg/postgresql:15@sha256:short".into();
    let msg = render(&specs, &opts).unwrap_err().to_string();
    assert!(msg.contains("PostgreSQL image"), "{msg}");

    // Environments that are not production may run a tag.
    let text = "apiVersion: careplane.dev/v1alpha1\nkind: Platform\nmetadata: {name: p}\n\
        spec: {dataDir: /tmp/careplane-k8s-unused, odoo: {command: odoo, version: 18}}\n---\n\
        apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata: {name: lab}\n\
        spec: {serviceTier: basic, environments: [{name: dev, kind: dev}]}\n---\n\
        apiVersion: careplane.dev/v1alpha1\nkind: ServiceTier\nmetadata: {name: basic}\n\
        spec: {availability: 99.0, rto: 1d, rpo: 1d, supportHours: business-hours}\n";
    let dev_only = careplane_spec::load_str(Path::new("dev.yaml"), text).unwrap();
    let mut opts = common::opts();
    opts.odoo_image = "odoo:18.0".into();
    opts.redis_image = "redis:7".into();
    opts.postgres_image = "postgres:15".into();
    let tree = render(&dev_only, &opts).unwrap();
    assert!(tree.files["tenants/lab/dev/deployment-odoo-web.yaml"].contains("image: odoo:18.0"));
}

#[test]
fn a_short_role_key_is_refused() {
    let mut opts = common::opts();
    opts.role_key = "short".into();
    let msg = render(&common::example(), &opts).unwrap_err().to_string();
    assert!(
        msg.starts_with("render option role_key: must be at least 16 characters"),
        "{msg}"
    );
    assert!(!msg.contains("short"), "the key is never echoed: {msg}");
}

/// A random environment: name suffix, kind and workers.
#[derive(Debug, Clone)]
struct GenEnv {
    suffix: &'static str,
    kind: &'static str,
    workers: u64,
}

#[derive(Debug, Clone)]
struct GenTenant {
    n: u64,
    tenancy: &'static str,
    tier: u64,
    module: &'static str,
    envs: Vec<GenEnv>,
}

#[derive(Debug, Clone)]
struct GenPlatform {
    log_ms: u64,
    redis_role: &'static str,
    max_memory_mb: u64,
    odoo_version: u64,
    default_tier: u64,
    smtp: bool,
    node_pools: bool,
    admin_paths: bool,
    tenants: Vec<GenTenant>,
}

fn gen_platform() -> impl Strategy<Value = GenPlatform> {
    let kinds = prop::sample::select(vec![
        "dev",
        "test",
        "uat",
        "training",
        "staging",
        "production",
        "dr",
    ]);
    let env = (prop::sample::select(vec!["", "a", "blue"]), kinds, 1..5u64).prop_map(
        |(suffix, kind, workers)| GenEnv {
            suffix,
            kind,
            workers,
        },
    );
    let tenant = (
        0..100u64,
        prop::sample::select(vec!["shared", "dedicated-db", "dedicated-env"]),
        0..2u64,
        prop::sample::select(vec![
            "contacts", "stock", "purchase", "account", "survey", "hr",
        ]),
        prop::collection::vec(env, 1..5),
    )
        .prop_map(|(n, tenancy, tier, module, envs)| GenTenant {
            n,
            tenancy,
            tier,
            module,
            envs,
        });
    (
        (
            0..1000u64,
            prop::sample::select(vec!["cache", "session"]),
            16..528u64,
            16..20u64,
            0..2u64,
        ),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        prop::collection::vec(tenant, 1..7),
    )
        .prop_map(
            |(
                (log_ms, redis_role, max_memory_mb, odoo_version, default_tier),
                (smtp, node_pools, admin_paths),
                tenants,
            )| GenPlatform {
                log_ms,
                redis_role,
                max_memory_mb,
                odoo_version,
                default_tier,
                smtp,
                node_pools,
                admin_paths,
                tenants,
            },
        )
}

/// The generated platform as spec text, loaded (and so validated) like a
/// user's.
fn platform_specs(g: &GenPlatform) -> careplane_spec::SpecSet {
    let mut k8s = String::from("{backups: {destinationPath: s3://b/p}");
    if g.admin_paths {
        k8s.push_str(", adminAllow: [10.0.0.0/8], adminPaths: [/odoo/settings]");
    }
    if g.smtp {
        k8s.push_str(", smtp: {cidrs: [192.0.2.25/32]}");
    }
    if g.node_pools {
        k8s.push_str(", dedicatedNodePools: true");
    }
    k8s.push('}');
    let mut text = format!(
        "apiVersion: careplane.dev/v1alpha1\nkind: Platform\nmetadata: {{name: p}}\n\
         spec:\n  dataDir: /tmp/careplane-k8s-unused\n  postgres: {{settings: {{max_connections: \"5000\", \
         log_min_duration_statement: \"{}\"}}}}\n  redis: {{role: {}, maxMemory: {}mb}}\n  \
         odoo: {{command: odoo, version: {}}}\n  defaults: {{serviceTier: t{}}}\n  \
         ingress: {{domain: odoo.example.org}}\n  kubernetes: {k8s}\n",
        g.log_ms, g.redis_role, g.max_memory_mb, g.odoo_version, g.default_tier,
    );
    for (i, availability) in ["99.0", "99.95"].iter().enumerate() {
        text.push_str(&format!(
            "---\napiVersion: careplane.dev/v1alpha1\nkind: ServiceTier\nmetadata: {{name: t{i}}}\n\
             spec: {{availability: {availability}, rto: 4h, rpo: 1h, supportHours: 24x7}}\n"
        ));
    }
    for (t, tenant) in g.tenants.iter().enumerate() {
        text.push_str(&format!(
            "---\napiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: h{t}x{}}}\n\
             spec:\n  tenancy: {}\n  serviceTier: t{}\n  modules: [base, {}]\n  environments:\n",
            tenant.n, tenant.tenancy, tenant.tier, tenant.module,
        ));
        for (e, env) in tenant.envs.iter().enumerate() {
            text.push_str(&format!(
                "  - name: e{e}{}\n    kind: {}\n    sizing: {{workers: {}}}\n",
                env.suffix, env.kind, env.workers,
            ));
        }
    }
    careplane_spec::load_str(Path::new("random.yaml"), &text)
        .unwrap_or_else(|d| panic!("the generator made an invalid spec:\n{d}\n{text}"))
}

proptest! {
    // Each case renders a platform and parses every file it renders: few
    // cases, no failure files written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// For random valid platforms: rendering never fails and is
    /// deterministic, every tenant environment gets its folder, no secret
    /// material is emitted (no Secret, no stringData, never the role key),
    /// every NetworkPolicy selector matches a rendered workload, and every
    /// kustomization lists only what exists.
    #[test]
    fn random_platforms_render_safely(g in gen_platform(), role_key in "[A-Za-z0-9]{16,40}") {
        let specs = platform_specs(&g);
        let mut opts = common::opts();
        opts.role_key = role_key.clone();
        let tree = render(&specs, &opts).unwrap_or_else(|e| panic!("render failed: {e}"));
        prop_assert_eq!(&tree, &render(&specs, &opts).unwrap(), "not deterministic");
        let problems = policy_problems(&tree);
        prop_assert!(problems.is_empty(), "{}", problems.join("\n"));
        let envs: usize = specs.tenants.iter().map(|t| t.spec.environments.len()).sum();
        let folders = entry_points(&tree)
            .iter()
            .filter(|d| d.starts_with("tenants/"))
            .count();
        prop_assert_eq!(folders, envs);
        for (file, text) in &tree.files {
            prop_assert!(!text.contains(&role_key), "{} contains the role key", file);
        }
        for (file, obj) in all_objects(&tree) {
            prop_assert_ne!(&obj["kind"], "Secret", "{}", file);
            prop_assert!(obj.get("stringData").is_none(), "{}", file);
        }
        for (file, text) in &tree.files {
            if let Some(dir) = file.strip_suffix("/kustomization.yaml") {
                for r in docs(text)[0]["resources"].as_array().unwrap() {
                    let p = normalize(&format!("{dir}/{}", r.as_str().unwrap()));
                    prop_assert!(
                        tree.files.contains_key(&p)
                            || tree.files.contains_key(&format!("{p}/kustomization.yaml")),
                        "{} lists {}, which is not rendered", file, p
                    );
                }
            }
        }

        // The same platform choosing SOPS, with a value for every store key
        // the ExternalSecrets read (and each cluster's CA key): no value, nor
        // its SHA-256 (the Redis ACL's form), appears anywhere, and every
        // SOPS file decrypts to values that were given.
        let mut values = SecretValues::default();
        let mut plain = BTreeSet::new();
        let mut add = |key: &str, property: &str| {
            let v = format!("value-{:016x}", {
                let h = sha2::Sha256::digest(format!("{role_key}\0{key}\0{property}"));
                u64::from_be_bytes(h[..8].try_into().unwrap())
            });
            values.insert(key, property, SecretString::from(v.clone()));
            plain.insert(v);
        };
        for (_, obj) in all_objects(&tree) {
            match obj["kind"].as_str() {
                Some("ExternalSecret") => {
                    for d in obj["spec"]["data"].as_array().unwrap() {
                        let r = &d["remoteRef"];
                        add(r["key"].as_str().unwrap(), r["property"].as_str().unwrap());
                    }
                }
                Some("PushSecret") => {
                    for d in obj["spec"]["data"].as_array().unwrap() {
                        add(d["match"]["remoteRef"]["remoteKey"].as_str().unwrap(), "ca.key");
                    }
                }
                _ => {}
            }
        }
        let identity = age::x25519::Identity::generate();
        let mut sops_specs = specs.clone();
        sops_specs.platform.spec.kubernetes.as_mut().unwrap().secrets =
            Some(careplane_spec::kubernetes::SecretsSettings {
                sops: Some(careplane_spec::kubernetes::SopsSettings {
                    age_recipients: vec![identity.to_public().to_string()],
                }),
            });
        let input = SecretInput { values: &values, previous: None, now: "2026-12-02T07:00:00Z".into() };
        let sops_tree = render_with(&sops_specs, &opts, Some(&input))
            .unwrap_or_else(|e| panic!("SOPS render failed: {e}"));
        let hashes: BTreeSet<String> = plain
            .iter()
            .map(|v| sha2::Sha256::digest(v.as_bytes()).iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        for (file, text) in &sops_tree.files {
            prop_assert!(!text.contains("value-"), "{} holds a secret value in clear", file);
            for h in &hashes {
                prop_assert!(!text.contains(h.as_str()), "{} holds a value's hash", file);
            }
            prop_assert!(!text.contains("kind: ExternalSecret"), "{}", file);
            if file.contains("/secret-") {
                let got = careplane_render_k8s::sops::decrypt(text, &identity)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                use secrecy::ExposeSecret;
                let carries_a_value = got.iter().any(|(path, v)| {
                    let v = v.expose_secret();
                    path[0] == "stringData"
                        && (plain.iter().any(|p| v.contains(p.as_str()))
                            || hashes.iter().any(|h| v.contains(h.as_str())))
                });
                prop_assert!(carries_a_value, "{} decrypts to none of the values", file);
            }
        }
    }
}

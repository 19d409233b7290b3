//! The rendered tree read by the tools a cluster's users run: kustomize (as
//! `kubectl kustomize`) builds every folder, and a YAML 1.1 reader (PyYAML,
//! the YAML version Kubernetes' go-yaml follows) reads every file as the
//! same data as careplane's YAML 1.2 reader. Both tools are installed by
//! `scripts/install-deps`; without them these tests fail under CI=true and
//! are skipped, saying why, elsewhere.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use careplane_render_k8s::{render, write_tree, Tree};
use serde::Deserialize;
use serde_json::Value;

/// Whether `probe` runs; if not, fails under CI and skips (with the reason)
/// elsewhere.
fn available(what: &str, probe: &mut Command) -> bool {
    let ok = probe.output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        let msg =
            format!("{what} is not available ({probe:?} failed); scripts/install-deps installs it");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
    }
    ok
}

fn written_example() -> (Tree, tempfile::TempDir) {
    let tree = render(&common::example(), &common::opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_tree(&tree, dir.path()).unwrap();
    (tree, dir)
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn kubectl_kustomize_builds_every_folder() {
    if !available(
        "kubectl",
        Command::new("kubectl").args(["version", "--client"]),
    ) {
        return;
    }
    let (tree, dir) = written_example();
    let folders: Vec<&str> = tree
        .files
        .keys()
        .filter_map(|f| f.strip_suffix("/kustomization.yaml"))
        .collect();
    assert!(folders.len() > 10, "{folders:?}");
    for folder in folders {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir.path().join(folder))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {folder} failed (kustomize v4 or later is needed: kubectl 1.21+, \
             not Debian 12's kubernetes-client 1.20):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built = docs(&String::from_utf8(out.stdout).unwrap());
        assert!(!built.is_empty(), "{folder} builds to nothing");
        let k = &docs(&tree.files[&format!("{folder}/kustomization.yaml")])[0];
        // Every namespaced object, from the base and overlay too, lands in
        // the folder's namespace.
        if let Some(ns) = k["namespace"].as_str() {
            for o in &built {
                if o["kind"] != "Namespace" {
                    assert_eq!(
                        o["metadata"]["namespace"], ns,
                        "{folder}: {}",
                        o["metadata"]["name"]
                    );
                }
            }
        }
    }
}

#[test]
fn yaml_1_1_readers_see_the_same_data() {
    if !available(
        "python3 with PyYAML",
        Command::new("python3").args(["-c", "import yaml"]),
    ) {
        return;
    }
    let (tree, dir) = written_example();
    // json.dumps fails on anything but strings, numbers, booleans, null,
    // lists and mappings (a date read from `2026-12-01`, say): then the
    // test fails, as it should.
    let script = "import json, sys, yaml\n\
        out = {}\n\
        for f in sys.argv[1:]:\n\
        \x20   with open(f) as fh:\n\
        \x20       out[f] = [d for d in yaml.safe_load_all(fh) if d is not None]\n\
        print(json.dumps(out))\n";
    let files: Vec<&String> = tree.files.keys().collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(files.iter().map(|f| dir.path().join(f)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyYAML could not read the tree:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&out.stdout).unwrap();
    for f in files {
        let key = dir.path().join(f).display().to_string();
        let ours = docs(&tree.files[f]);
        assert_eq!(read[&key], ours, "{f} reads differently as YAML 1.1");
    }
}

/// Every core object (and every object of an API group Kubernetes itself
/// serves) validated against Kubernetes' own OpenAPI schemas by
/// `kubernetes-validate` (PyPI; schemas bundled, no cluster needed), in
/// strict mode: an unknown or misspelt field fails. Custom resources (CNPG,
/// Traefik, cert-manager, External Secrets, Argo CD, Flux) have no schema
/// there; the test counts them apart so a core object can never be skipped
/// silently.
#[test]
fn kubernetes_validate_accepts_every_core_object() {
    if !available(
        "kubernetes-validate",
        Command::new("kubernetes-validate").arg("--version"),
    ) {
        return;
    }
    let (tree, dir) = written_example();
    let files: Vec<&String> = tree
        .files
        .keys()
        .filter(|f| !f.ends_with("/kustomization.yaml"))
        .collect();
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.32.0", "--strict"])
        .args(files.iter().map(|f| dir.path().join(f)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate refused the tree:\n{stdout}\n{stderr}"
    );
    let passed = stdout
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    let core = files
        .iter()
        .flat_map(|f| docs(&tree.files[*f]))
        .filter(|o| {
            let api = o["apiVersion"].as_str().unwrap();
            // Groups of Kubernetes itself: no dot, or *.k8s.io.
            !api.contains('/')
                || !api.split('/').next().unwrap().contains('.')
                || api.split('/').next().unwrap().ends_with(".k8s.io")
        })
        .count();
    assert!(core > 100, "{core}");
    assert_eq!(
        passed, core,
        "every core object must be validated, not skipped:\n{stdout}\n{stderr}"
    );
}

//! Rendering a large platform: N tenant environments (default 10,000: N/2
//! tenants with a production and a staging environment each, every tenth
//! tenant on a dedicated PostgreSQL cluster), generated in memory from the
//! example platform. Prints render, write and check times and the cost per
//! environment, and, side by side, what `kubectl kustomize` (what a user
//! would run to build the same manifests from a kustomize tree) takes per
//! environment folder on a sample of the rendered tree.
//!
//! `cargo bench -p careplane-render-k8s --bench render [-- N [SAMPLE]]`

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use careplane_render_k8s::{check_tree, render, write_tree, RenderOptions};
use careplane_spec::{Environment, EnvironmentKind, SpecSet, Tenancy};

fn specs(envs: usize) -> SpecSet {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hospital-group");
    let mut specs = careplane_spec::load(&[dir]).expect("the example validates");
    let template = specs
        .tenant("stmarys")
        .expect("the example has stmarys")
        .clone();
    specs.tenants.clear();
    for i in 0..envs.div_ceil(2) {
        let mut t = template.clone();
        t.metadata.name = format!("tenant{i:05}");
        t.spec.tenancy = if i % 10 == 0 {
            Tenancy::DedicatedDb
        } else {
            Tenancy::Shared
        };
        t.spec.environments = [
            ("production", EnvironmentKind::Production),
            ("staging", EnvironmentKind::Staging),
        ]
        .into_iter()
        .map(|(name, kind)| Environment {
            name: name.into(),
            kind,
            modules: vec![],
            sizing: None,
            addons_paths: vec![],
        })
        .collect();
        specs.tenants.push(t);
    }
    specs
}

/// CPU seconds this process used so far (all threads), from /proc: on a
/// shared 2-core machine wall time alone says more about the neighbours.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        f.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10_000);
    let sample = args.get(1).copied().unwrap_or(40);
    let render_only = std::env::var_os("RENDER_ONLY").is_some();
    let specs = specs(n);
    let envs: usize = specs
        .tenants
        .iter()
        .map(|t| t.spec.environments.len())
        .sum();
    let opts = RenderOptions::new(
        "docker.io/library/odoo:18.0@sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "docker.io/library/redis:7.2@sha256:2222222222222222222222222222222222222222222222222222222222222222",
        "ghcr.io/cloudnative-pg/postgresql:15.8@sha256:3333333333333333333333333333333333333333333333333333333333333333",
        "bench-role-key-not-a-secret",
    );

    // One warm-up run, then the best of three (a shared VM is noisy).
    let _ = render(&specs, &opts).expect("renders");
    let mut best = f64::MAX;
    let mut best_cpu = f64::MAX;
    let mut tree = None;
    for _ in 0..3 {
        let t = Instant::now();
        let c = cpu_seconds();
        let r = render(&specs, &opts).expect("renders");
        best = best.min(t.elapsed().as_secs_f64());
        best_cpu = best_cpu.min(cpu_seconds() - c);
        tree = Some(r);
    }
    let tree = tree.unwrap();
    let bytes: usize = tree.files.values().map(String::len).sum();
    println!(
        "render: {envs} environments, {} files, {:.1} MB in {best:.3} s wall, {best_cpu:.2} s CPU \
         on {} threads ({:.1} µs wall per environment)",
        tree.files.len(),
        bytes as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        best * 1e6 / envs as f64
    );

    if render_only {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let t = Instant::now();
    write_tree(&tree, dir.path()).expect("writes");
    let write = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let again = write_tree(&tree, dir.path()).expect("writes");
    let rewrite = t.elapsed().as_secs_f64();
    assert!(again.written.is_empty());
    let t = Instant::now();
    let drifts = check_tree(&tree, dir.path()).expect("checks");
    let check = t.elapsed().as_secs_f64();
    assert!(drifts.is_empty());
    println!(
        "write (fresh): {write:.2} s; write (unchanged): {rewrite:.2} s; check: {check:.2} s \
         ({:.0} / {:.0} / {:.0} µs per environment)",
        write * 1e6 / envs as f64,
        rewrite * 1e6 / envs as f64,
        check * 1e6 / envs as f64
    );

    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !kubectl || sample == 0 {
        println!("kubectl kustomize: not run (kubectl missing or sample 0)");
        return;
    }
    let folders: Vec<&str> = tree
        .files
        .keys()
        .filter_map(|f| f.strip_suffix("/kustomization.yaml"))
        .filter(|f| f.starts_with("tenants/"))
        .take(sample)
        .collect();
    let t = Instant::now();
    for f in &folders {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir.path().join(f))
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let per = t.elapsed().as_secs_f64() / folders.len() as f64;
    let ours = best / envs as f64;
    println!(
        "kubectl kustomize: {:.1} ms per environment folder ({} sampled), {:.0} s extrapolated to {envs}; \
         careplane render is {:.0}x faster per environment",
        per * 1e3,
        folders.len(),
        per * envs as f64,
        per / ours
    );
}

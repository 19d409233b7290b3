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

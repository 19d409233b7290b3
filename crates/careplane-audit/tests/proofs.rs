//! Proofs from a real log, checked by the crate's verifiers and by the
//! Python example of docs/audit.md; redaction over random JSON.

mod common;

use std::path::Path;
use std::process::Command;

use careplane_audit::{
    leaf_hash, verify_consistency, verify_inclusion, AuditLog, KnownSecrets, Options, Snapshot,
};
use common::*;
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{json, Value};

#[test]
fn inclusion_and_consistency_proofs_from_a_log_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let l = open(tmp.path(), None);
    for i in 0..7 {
        l.append(event(i)).unwrap();
    }
    let old = l.checkpoint().unwrap();
    for i in 7..23 {
        l.append(event(i)).unwrap();
    }
    let new = l.checkpoint().unwrap();
    let s = Snapshot::load(tmp.path()).unwrap();
    let (old_root, new_root) = (
        old.verify(&key().verifying_key()).unwrap(),
        new.root_hash().unwrap(),
    );
    for seq in 0..23 {
        let proof = s.prove_inclusion(seq, &new).unwrap();
        let leaf = leaf_hash(s.entry_bytes(seq).unwrap());
        verify_inclusion(&leaf, &proof, &new_root).unwrap();
        // A changed entry or path does not verify.
        assert!(verify_inclusion(&leaf_hash(b"{}"), &proof, &new_root).is_err());
        if !proof.inclusion_path.is_empty() {
            let mut p = proof.clone();
            p.inclusion_path[0][31] ^= 1;
            assert!(verify_inclusion(&leaf, &p, &new_root).is_err());
        }
    }
    let c = s.prove_consistency(old.size, new.size).unwrap();
    verify_consistency(&c, &old_root, &new_root).unwrap();
    let mut bad = c.clone();
    bad.consistency_path[1][0] ^= 0x40;
    assert!(verify_consistency(&bad, &old_root, &new_root).is_err());
    assert!(verify_consistency(&c, &new_root, &old_root).is_err());
    // Proofs serialize in the documented JSON shape.
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["first"], 7);
    assert_eq!(v["second"], 23);
    assert!(v["consistency_path"][0].as_str().unwrap().len() == 64);
}

fn python_block() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit.md"))
            .unwrap();
    let start = doc
        .find("<!-- audit-verify-begin -->\n```python\n")
        .expect("begin marker in docs/audit.md");
    let rest = &doc[start..];
    let body_start = rest.find("```python\n").unwrap() + "```python\n".len();
    let end = rest
        .find("```\n<!-- audit-verify-end -->")
        .expect("end marker in docs/audit.md");
    rest[body_start..end].to_string()
}

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg = "python3 with the cryptography package is needed (scripts/install-deps installs python3-cryptography)";
        assert!(std::env::var("CI").is_err(), "{msg}");
        eprintln!("skipping: {msg}");
    }
    ok
}

#[test]
fn python_example_verifies_what_the_crate_produced() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let l = open(&log, None);
    for i in 0..5 {
        l.append(event(i)).unwrap();
    }
    let old = l.checkpoint().unwrap();
    for i in 5..30 {
        let mut e = event(i);
        // Non-ASCII, escapes and nesting must hash the same in Python.
        e.parameters = json!({"note": "Zürich \"ward\" \\ tab\t nl\n ctl\u{1} 🏥", "n": -(i as i64), "nested": {"b": [true, null], "a": {}}});
        l.append(e).unwrap();
    }
    let new = l.checkpoint().unwrap();
    let s = Snapshot::load(&log).unwrap();
    let export = s
        .export_tenant("northside", &new, &key().verifying_key())
        .unwrap();
    assert_eq!(export.entries.len(), 10);
    let consistency = s.prove_consistency(old.size, new.size).unwrap();

    let script = tmp.path().join("audit_verify.py");
    std::fs::write(&script, python_block()).unwrap();
    let write = |name: &str, v: &dyn erased::Json| {
        let p = tmp.path().join(name);
        std::fs::write(&p, v.json()).unwrap();
        p
    };
    let export_p = write("export.json", &export);
    let cons_p = write("consistency.json", &consistency);
    let old_p = write("old.json", &old);
    let run = |args: &[&Path]| {
        let out = Command::new("python3")
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&[&export_p, &cons_p, &old_p]);
    assert!(ok, "{out}");
    assert!(
        out.contains("OK: 10 entries of tenant northside are in the log of 30 entries"),
        "{out}"
    );

    // A tampered entry, proof, signature or consistency proof fails.
    let mut t = export.clone();
    t.entries[3].entry = t.entries[3].entry.replace("\"oidc\"", "\"api-token\"");
    let (ok, out) = run(&[&write("t1.json", &t)]);
    assert!(
        !ok && out.contains("FAIL: entry 10 is not in the checkpoint's tree"),
        "{out}"
    );
    let mut t = export.clone();
    t.entries[0].proof.inclusion_path[2][0] ^= 1;
    let (ok, out) = run(&[&write("t2.json", &t)]);
    assert!(!ok && out.contains("FAIL: entry 1 is not"), "{out}");
    let mut t = export.clone();
    t.checkpoint.signature = old.signature.clone();
    let (ok, out) = run(&[&write("t3.json", &t)]);
    assert!(!ok && out.contains("signature"), "{out}");
    let mut c = consistency.clone();
    c.consistency_path.swap(0, 1);
    let (ok, out) = run(&[&export_p, &write("t4.json", &c), &old_p]);
    assert!(!ok && out.contains("is not a prefix"), "{out}");

    // Every entry line is in the canonical form the design note gives.
    let check = "import json,sys\nfor l in open(sys.argv[1],'rb').read().split(b'\\n')[:-1]:\n    assert json.dumps(json.loads(l),sort_keys=True,separators=(',',':'),ensure_ascii=False).encode()==l, l\nprint('canonical')";
    let out = Command::new("python3")
        .args(["-c", check])
        .arg(log.join("entries.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap()
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
        "[a-c0-9]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-cA-Z_-]{0,8}|password|apiToken", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Puts `secrets` into random places of `v` (whole values, inside strings, keys).
fn plant(v: &mut Value, secrets: &[String], salt: &mut usize) {
    *salt += 1;
    let s = &secrets[*salt % secrets.len()];
    match v {
        Value::String(x) => {
            let at = x
                .char_indices()
                .map(|(i, _)| i)
                .nth(*salt % (x.chars().count() + 1))
                .unwrap_or(x.len());
            x.insert_str(at, s);
        }
        Value::Array(items) => {
            items.iter_mut().for_each(|i| plant(i, secrets, salt));
            items.push(Value::String(s.clone()));
        }
        Value::Object(m) => {
            m.values_mut().for_each(|i| plant(i, secrets, salt));
            m.insert(format!("k{s}"), json!(1));
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the JSON and wherever secrets are planted, none reaches the
    /// log's bytes.
    #[test]
    fn no_known_secret_reaches_the_log(
        mut params in arb_json(),
        secrets in prop::collection::vec("[a-c0-9\\[\\]]{1,10}|[0-9]{3,8}|[a-zA-Z0-9]{8,16}|.{1,12}", 1..4),
    ) {
        let mut salt = 0;
        plant(&mut params, &secrets, &mut salt);
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options {
            known_secrets: KnownSecrets::new(secrets.iter().map(|s| SecretString::from(s.clone()))),
            ..manual(None)
        };
        let l = AuditLog::open_with(tmp.path(), key(), opts).unwrap();
        let mut e = event(1);
        e.parameters = params;
        e.result.message = Some(format!("failed with {}", secrets[0]));
        e.target = format!("odoo-env/{}", secrets[secrets.len() - 1]);
        l.append(e).unwrap();
        drop(l);
        let bytes = std::fs::read_to_string(tmp.path().join("entries.jsonl")).unwrap();
        // Everything the caller supplied, decoded (secrets can hide behind
        // JSON escapes). The log's own keys, seq, time and prev hash are not
        // the caller's and may contain a short secret by chance.
        let v: Value = serde_json::from_str(bytes.trim_end()).unwrap();
        let mut decoded = Vec::new();
        for field in ["parameters", "target", "action", "operation", "tenant"] {
            collect_strings(&v[field], &mut decoded);
        }
        collect_strings(&v["result"]["message"], &mut decoded);
        collect_strings(&v["actor"]["id"], &mut decoded);
        collect_strings(&v["actor"]["auth"], &mut decoded);
        for s in &secrets {
            for d in &decoded {
                prop_assert!(!d.contains(s.as_str()), "secret {:?} in {:?}", s, d);
            }
            if s.len() >= 8 && s.chars().all(|c| c.is_ascii_alphanumeric()) {
                prop_assert!(!bytes.contains(s.as_str()), "secret {:?} in {}", s, bytes);
            }
        }
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push(k.clone());
            collect_strings(x, out)
        }),
        _ => {}
    }
}

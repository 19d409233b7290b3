//! Odoo's master password hash is exactly what passlib produces and accepts.

use std::io::Write;
use std::process::{Command, Stdio};

use careplane_odoo::{
    hash_admin_password, hash_admin_password_with, verify_admin_password, SecretString,
    ADMIN_PASSWORD_ROUNDS,
};

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

/// Generated with passlib 1.7.4:
/// `passlib.hash.pbkdf2_sha512.using(rounds=R, salt=S).hash(P)`.
const VECTORS: &[(&str, &[u8], u32, &str)] = &[
    (
        "admin",
        b"careplane-salt!!",
        1000,
        "$pbkdf2-sha512$1000$Y2FyZXBsYW5lLXNhbHQhIQ$2cLokwUB1p5qrUPyS9XiZAdVaK4f7/NTue.wr.SQksYBnzz65.qD1Hp9FfD7q.nZKCehXYxjRvZh93SZ4q3kCA",
    ),
    (
        // Non-ASCII password (UTF-8), and a salt whose base64 has '+' → '.'.
        "Grüße, Zürich! ☃",
        &[0xfb, 0xff, 0xbe, 0xfb, 0xff, 0xbe, 0xfb, 0xff, 0xbe, 0xfb, 0xff, 0xbe, 0xfb, 0xff, 0xbe, 0x3e],
        25000,
        "$pbkdf2-sha512$25000$./.../.../.../.../..Pg$1Z/GoAnbAWS7kYRBRnGXN9YwTkGC8bUpixCioHAWIE6R4O.UxQ58U8iU7aO/lVRl0iRKcBcuPO9CQ5MnKUyVRg",
    ),
    (
        "correct horse battery staple",
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        600_000,
        "$pbkdf2-sha512$600000$AAECAwQFBgcICQoLDA0ODw$HPMKUYh49Erst1wODQ1poCrF.RgaU7UpIJLhCjwMu0FQip6EKIUUkNiJ4BvDKV0UdO8BuHufX3D.ExFyclsWAw",
    ),
];

#[test]
fn matches_passlib_known_vectors() {
    for (password, salt, rounds, expected) in VECTORS {
        assert_eq!(
            hash_admin_password_with(&secret(password), salt, *rounds),
            *expected,
            "password {password:?}"
        );
        assert!(verify_admin_password(&secret(password), expected));
        assert!(!verify_admin_password(&secret("wrong"), expected));
    }
}

fn is_ab64(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
}

#[test]
fn format_and_fresh_salt() {
    let pw = secret("s3cret master password");
    let a = hash_admin_password(&pw);
    let b = hash_admin_password(&pw);
    for h in [&a, &b] {
        let parts: Vec<&str> = h.split('$').collect();
        assert_eq!(parts.len(), 5, "{h}");
        assert_eq!(parts[0], "");
        assert_eq!(parts[1], "pbkdf2-sha512");
        assert_eq!(parts[2], ADMIN_PASSWORD_ROUNDS.to_string());
        assert_eq!(parts[2], "600000");
        // 16 salt bytes → 22 chars, 64 checksum bytes → 86 chars, no padding.
        assert_eq!(parts[3].len(), 22, "{h}");
        assert_eq!(parts[4].len(), 86, "{h}");
        assert!(is_ab64(parts[3]) && is_ab64(parts[4]), "{h}");
        assert!(!h.contains("s3cret"));
        assert!(verify_admin_password(&pw, h));
    }
    assert_ne!(
        a, b,
        "two hashes of the same password must differ (random salt)"
    );
    assert_ne!(a.split('$').nth(3), b.split('$').nth(3));
}

#[test]
fn malformed_hashes_never_verify() {
    let pw = secret("admin");
    let good = VECTORS[0].3;
    for bad in [
        "",
        "admin",
        "$pbkdf2-sha256$1000$Y2FyZXBsYW5lLXNhbHQhIQ$x",
        &good.replace("$1000$", "$01000$"),
        &good.replace("$1000$", "$0$"),
        &good.replace("$1000$", "$-1$"),
        &format!("{good}$extra"),
        &good[..good.len() - 2],
        &good.replace("$Y2F", "$*2F"),
    ] {
        assert!(!verify_admin_password(&pw, bad), "{bad:?} must not verify");
    }
}

/// A python3 with passlib: `CAREPLANE_PASSLIB_PYTHON`, else `python3`.
fn passlib_python() -> Option<String> {
    let candidates = std::env::var("CAREPLANE_PASSLIB_PYTHON")
        .into_iter()
        .chain(["python3".to_string()]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import passlib.hash, passlib.context"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    None
}

/// The live check: passlib verifies our hash, Odoo's own CryptContext (the
/// one in `odoo/tools/config.py`, with Odoo 18's 600 000 rounds) accepts it
/// without wanting to re-hash, and we verify a hash passlib just made.
/// Password and hash go through stdin, not argv.
#[test]
fn passlib_verifies_our_hash() {
    let Some(py) = passlib_python() else {
        eprintln!(
            "note: no python3 with passlib (set CAREPLANE_PASSLIB_PYTHON), live passlib check skipped"
        );
        return;
    };
    let password = "Odoo master ☃ pass";
    let ours = hash_admin_password(&secret(password));
    let script = r#"
import sys, json
from passlib.hash import pbkdf2_sha512
from passlib.context import CryptContext
data = json.loads(sys.stdin.read())
pw, ours = data["pw"], data["hash"]
ctx = CryptContext(schemes=['pbkdf2_sha512', 'plaintext'], deprecated=['plaintext'],
                   pbkdf2_sha512__rounds=600_000)
ok, new_hash = ctx.verify_and_update(pw, ours)
print(json.dumps({
    "verify": pbkdf2_sha512.verify(pw, ours),
    "wrong": pbkdf2_sha512.verify(pw + "x", ours),
    "odoo_ok": ok,
    "odoo_rehash": new_hash is not None,
    "theirs": pbkdf2_sha512.using(rounds=1000).hash(pw),
}))
"#;
    let mut child = Command::new(&py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!(
        "{{\"pw\": {}, \"hash\": {}}}",
        json_str(password),
        json_str(&ours)
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verify"], true, "passlib rejected {ours}");
    assert_eq!(v["wrong"], false);
    assert_eq!(v["odoo_ok"], true);
    assert_eq!(v["odoo_rehash"], false, "Odoo 18+ would re-hash it");
    let theirs = v["theirs"].as_str().unwrap();
    assert!(verify_admin_password(&secret(password), theirs), "{theirs}");
    eprintln!("passlib ({py}) verified {ours}");
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

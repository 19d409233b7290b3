//! Odoo's master password (`admin_passwd`) as the passlib hash Odoo verifies.
//!
//! Odoo guards its database manager and a few server-wide operations with the
//! master password from `odoo.conf`. It checks it with passlib:
//! `CryptContext(schemes=['pbkdf2_sha512', 'plaintext'],
//! deprecated=['plaintext'])`, plus `pbkdf2_sha512__rounds=600_000` since
//! Odoo 18 (16 and 17 use passlib's default of 25 000 rounds). A plaintext
//! value would also be accepted — and then sit readable in the file — so
//! careplane only ever writes the hash.
//!
//! The format is passlib's modular-crypt string
//! `$pbkdf2-sha512$<rounds>$<salt>$<checksum>` where salt (16 random bytes,
//! passlib's default size) and checksum (the 64-byte PBKDF2-HMAC-SHA512
//! output over the UTF-8 password) are in passlib's "adapted base64":
//! standard base64 without padding, with `.` instead of `+`.
//!
//! careplane uses 600 000 rounds, Odoo 18's value: verification reads the
//! rounds from the hash, so Odoo 16–19 all accept it, and Odoo 18+ sees no
//! reason to re-hash. Compatibility is checked against passlib itself in the
//! tests (known vectors generated with passlib 1.7.4, and a live
//! `passlib.hash.pbkdf2_sha512.verify` when passlib is importable).

use std::num::NonZeroU32;

use ring::{pbkdf2, rand::SecureRandom};
use secrecy::{ExposeSecret, SecretString};

/// PBKDF2 rounds of the hashes careplane writes (Odoo 18's setting).
pub const ADMIN_PASSWORD_ROUNDS: u32 = 600_000;

/// Salt length in bytes (passlib's default for `pbkdf2_sha512`).
pub const ADMIN_PASSWORD_SALT_LEN: usize = 16;

const PREFIX: &str = "$pbkdf2-sha512$";
const CHECKSUM_LEN: usize = 64;

/// Hashes Odoo's master password into the `admin_passwd` value: passlib's
/// `pbkdf2_sha512` with [`ADMIN_PASSWORD_ROUNDS`] and a fresh random salt,
/// so two calls never return the same string.
///
/// # Panics
///
/// Only if the operating system's random number generator fails, in which
/// case no safe salt can be produced.
pub fn hash_admin_password(password: &SecretString) -> String {
    let mut salt = [0u8; ADMIN_PASSWORD_SALT_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .expect("the OS random number generator failed");
    hash_admin_password_with(password, &salt, ADMIN_PASSWORD_ROUNDS)
}

/// [`hash_admin_password`] with a given salt and round count: deterministic,
/// for known-answer tests against passlib. Use [`hash_admin_password`] for
/// real hashes.
///
/// # Panics
///
/// If `rounds` is 0.
pub fn hash_admin_password_with(password: &SecretString, salt: &[u8], rounds: u32) -> String {
    let rounds = NonZeroU32::new(rounds).expect("PBKDF2 needs at least one round");
    let mut out = [0u8; CHECKSUM_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA512,
        rounds,
        salt,
        password.expose_secret().as_bytes(),
        &mut out,
    );
    format!(
        "{PREFIX}{rounds}${}${}",
        ab64_encode(salt),
        ab64_encode(&out)
    )
}

/// Whether `hash` (a passlib `pbkdf2_sha512` string, any round count) is the
/// hash of `password`, compared in constant time.
///
/// Lets careplane keep an existing `admin_passwd` when the secret did not
/// change: re-hashing would produce a new salt, a different file and a
/// needless restart on every apply.
pub fn verify_admin_password(password: &SecretString, hash: &str) -> bool {
    let Some(rest) = hash.strip_prefix(PREFIX) else {
        return false;
    };
    let mut parts = rest.split('$');
    let (Some(rounds), Some(salt), Some(checksum), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    // passlib rejects leading zeros and anything but plain decimal digits.
    if rounds.is_empty() || rounds.starts_with('0') || !rounds.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (Some(rounds), Some(salt), Some(checksum)) = (
        rounds.parse::<u32>().ok().and_then(NonZeroU32::new),
        ab64_decode(salt),
        ab64_decode(checksum),
    ) else {
        return false;
    };
    if checksum.len() != CHECKSUM_LEN {
        return false;
    }
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA512,
        rounds,
        &salt,
        password.expose_secret().as_bytes(),
        &checksum,
    )
    .is_ok()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// passlib's `ab64_encode`: standard base64, no `=` padding, `+` → `.`.
fn ab64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let c = B64[((n >> (18 - 6 * i)) & 0x3f) as usize];
            out.push(if c == b'+' { '.' } else { c as char });
        }
    }
    out
}

/// passlib's `ab64_decode` (also accepting `+`); `None` on invalid input.
fn ab64_decode(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    if text.len() % 4 == 1 {
        return None;
    }
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'.' | b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ab64_round_trips_every_length() {
        for len in 0..70usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 251) as u8).collect();
            let enc = ab64_encode(&data);
            assert!(!enc.contains('+') && !enc.contains('='), "{enc}");
            assert_eq!(ab64_decode(&enc).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn ab64_replaces_plus_with_dot() {
        // 0xfb 0xef 0xbe is "++++" in standard base64.
        assert_eq!(ab64_encode(&[0xfb, 0xef, 0xbe]), "....");
        assert_eq!(ab64_encode(&[0xff, 0xff, 0xff]), "////");
    }
}

//! Small helpers: randomness, hashes and encodings (ring), time formatting
//! (libc), directories with a mode, HTML escaping.

use std::num::NonZeroU32;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

/// `n` random bytes from the system RNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random number generator failed");
    buf
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID in its canonical text form.
pub fn uuid4() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// SHA-1 as hex (Odoo's attachment checksum; also its filestore file name).
pub fn sha1_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes passlib's adapted base64 (`None` when it is not).
pub fn ab64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'.' => 62,
            c => B64.iter().position(|&b| b == c)? as u32,
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Whether `password` matches a passlib `$pbkdf2-sha512$rounds$salt$hash`.
pub fn pbkdf2_verify(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [_, "pbkdf2-sha512", rounds, salt, _] = parts.as_slice() else {
        return false;
    };
    let (Ok(rounds), Some(salt)) = (rounds.parse::<u32>(), ab64_decode(salt)) else {
        return false;
    };
    rounds > 0 && pbkdf2_sha512_with(password, &salt, rounds) == stored
}

/// passlib's "adapted base64": no padding, `.` instead of `+`.
fn ab64(data: &[u8]) -> String {
    base64(data).trim_end_matches('=').replace('+', ".")
}

/// passlib's `pbkdf2_sha512` hash of `password` with the given salt and
/// rounds — the format Odoo stores in `res_users.password`.
pub fn pbkdf2_sha512_with(password: &str, salt: &[u8], rounds: u32) -> String {
    let mut out = [0u8; 64];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        NonZeroU32::new(rounds).expect("rounds > 0"),
        salt,
        password.as_bytes(),
        &mut out,
    );
    format!("$pbkdf2-sha512${rounds}${}${}", ab64(salt), ab64(&out))
}

/// passlib `pbkdf2_sha512` with a random 16-byte salt and passlib's default
/// 25000 rounds (Odoo ≥ 17 uses 600000 for new hashes; both verify).
pub fn pbkdf2_sha512(password: &str) -> String {
    pbkdf2_sha512_with(password, &random_bytes(16), 25_000)
}

fn now() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_millis())
}

fn broken_down(secs: i64, utc: bool) -> libc::tm {
    let t = secs as libc::time_t;
    // SAFETY: tm is plain old data; the *_r functions only write into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe {
        if utc {
            libc::gmtime_r(&t, &mut tm);
        } else {
            libc::localtime_r(&t, &mut tm);
        }
    }
    tm
}

fn ymd_hms(tm: &libc::tm) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Python logging's `asctime`: local time, `2026-11-23 12:00:00,123`.
pub fn log_timestamp() -> String {
    let (secs, ms) = now();
    format!("{},{ms:03}", ymd_hms(&broken_down(secs, false)))
}

/// Odoo's `fields.Datetime.now()` as stored: UTC, `YYYY-MM-DD HH:MM:SS`.
pub fn utc_datetime() -> String {
    ymd_hms(&broken_down(now().0, true))
}

/// werkzeug's access-log date: `23/Nov/2026 12:00:00`, local time.
pub fn access_log_date() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let tm = broken_down(now().0, false);
    format!(
        "{:02}/{}/{:04} {:02}:{:02}:{:02}",
        tm.tm_mday,
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `mkdir -p` creating missing directories with `mode` (umask applies, as
/// with Python's `os.makedirs`).
pub fn make_dirs(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// Escapes text for HTML content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_verify_checks_the_password_against_the_stored_hash() {
        let h = pbkdf2_sha512_with("s3cret", &random_bytes(16), 1000);
        assert!(pbkdf2_verify("s3cret", &h));
        assert!(!pbkdf2_verify("s3cret!", &h));
        assert!(!pbkdf2_verify("s3cret", "$pbkdf2-sha512$0$AAAA$AAAA"));
        assert!(!pbkdf2_verify("s3cret", "plain"));
        let salt: Vec<u8> = (0u8..16).collect();
        assert_eq!(ab64_decode(&ab64(&salt)).unwrap(), salt);
    }

    #[test]
    fn passlib_pbkdf2_sha512_vector() {
        // Computed with Python's hashlib.pbkdf2_hmac + passlib's ab64 encoding.
        let salt: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            pbkdf2_sha512_with("admin", &salt, 25_000),
            "$pbkdf2-sha512$25000$AAECAwQFBgcICQoLDA0ODw$hzjCVDG9FELw2b5EEyih3Omxf8FRIQmndWjgpGGArUfNcobEKrNA0TCDqviQOUQRez/u2tkBEug55SdLU1CGvQ"
        );
    }

    #[test]
    fn base64_and_sha1() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn uuid4_shape() {
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid4());
    }

    #[test]
    fn timestamps() {
        let t = log_timestamp();
        assert_eq!(t.len(), "2026-11-23 12:00:00,123".len());
        assert_eq!(&t[19..20], ",");
        assert_eq!(utc_datetime().len(), "2026-11-23 12:00:00".len());
    }
}

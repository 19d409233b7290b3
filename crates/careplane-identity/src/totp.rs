//! TOTP (RFC 6238 over RFC 4226's HOTP), HMAC-SHA-1, for the break-glass
//! account's second factor. A few lines on `hmac`/`sha1` rather than a crate
//! that would also bring QR codes and base32 we do not need; the RFC's own
//! test vectors check it.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The code for `secret` at Unix time `unix_secs`, with `step` seconds per
/// code and `digits` digits (RFC 6238 §4: T = floor(time / step)).
pub fn code(secret: &[u8], unix_secs: u64, step: u64, digits: u32) -> String {
    hotp(secret, unix_secs / step, digits)
}

/// RFC 4226 §5.3: HMAC-SHA-1 of the counter, dynamic truncation.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[offset]) & 0x7f) << 24
        | u32::from(h[offset + 1]) << 16
        | u32::from(h[offset + 2]) << 8
        | u32::from(h[offset + 3]);
    let value = u64::from(bin) % 10u64.pow(digits);
    format!("{value:0width$}", width = digits as usize)
}

/// The time step (counter) among `now`'s and its neighbours (±`window`
/// steps of clock drift) whose code equals `given`, compared in constant
/// time. The caller refuses a step it has already accepted (replay).
pub fn matching_step(
    secret: &[u8],
    given: &str,
    unix_secs: u64,
    step: u64,
    window: u64,
) -> Option<u64> {
    let now = unix_secs / step;
    let digits = u32::try_from(given.len())
        .ok()
        .filter(|d| (6..=8).contains(d))?;
    let mut found = None;
    for t in now.saturating_sub(window)..=now + window {
        let want = hotp(secret, t, digits);
        let diff = want
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(t);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows: seed "12345678901234567890",
    /// 30-second steps, 8 digits.
    #[test]
    fn rfc_6238_test_vectors() {
        let seed = b"12345678901234567890";
        for (t, want) in [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(code(seed, t, 30, 8), want, "T = {t}");
        }
    }

    /// RFC 4226 Appendix D, the first and last HOTP values (6 digits).
    #[test]
    fn rfc_4226_test_vectors() {
        let seed = b"12345678901234567890";
        assert_eq!(hotp(seed, 0, 6), "755224");
        assert_eq!(hotp(seed, 9, 6), "520489");
    }

    #[test]
    fn neighbouring_steps_match_and_others_do_not() {
        let seed = b"12345678901234567890";
        let c = code(seed, 1111111109, 30, 8);
        assert_eq!(
            matching_step(seed, &c, 1111111109 + 30, 30, 1),
            Some(1111111109 / 30)
        );
        assert_eq!(matching_step(seed, &c, 1111111109 + 90, 30, 1), None);
        assert_eq!(matching_step(seed, "12345", 1111111109, 30, 1), None);
    }
}

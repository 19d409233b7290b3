//! A small per-platform certificate authority.
//!
//! Tenant connections to PostgreSQL are TLS-only and clients verify the
//! server against this CA (verify-full), so a process squatting a port on the
//! machine cannot impersonate a database. Keys are ECDSA P-256 (fast to
//! generate, supported by PostgreSQL/OpenSSL and rustls); rcgen runs on
//! `ring` so the build needs no C toolchain beyond what ring itself uses.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use secrecy::{ExposeSecret, SecretString};

use crate::error::{LocalError, Result};

/// How long the CA is valid. Long, because rotating it means re-issuing and
/// redistributing every server certificate.
pub const CA_VALIDITY_DAYS: i64 = 20 * 365;
/// How long a server certificate is valid; careplane re-issues on init, so a
/// few years keeps long-lived demo platforms working without manual steps.
pub const SERVER_VALIDITY_DAYS: i64 = 5 * 365;

/// Per-platform certificate authority (rcgen; use ring, not aws-lc, to keep builds lean).
pub struct Ca {
    /// The CA certificate, given to clients as their only trust anchor.
    pub cert_pem: String,
    /// The CA's private key (PKCS#8 PEM).
    pub key_pem: SecretString,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[REDACTED]")
            .finish()
    }
}

/// Generates a fresh CA (self-signed, path length 0: it can only sign server
/// certificates, never another CA).
pub fn generate_ca(common_name: &str) -> Result<Ca> {
    let key = KeyPair::generate().map_err(tls("generating the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(tls("self-signing the CA certificate"))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: SecretString::from(key.serialize_pem()),
    })
}

/// Server cert for 127.0.0.1 and localhost (+extra DNS names), signed by the CA.
///
/// Also covers `::1`. Extra names may be DNS names or IP addresses.
pub fn issue_server_cert(
    ca: &Ca,
    common_name: &str,
    dns_names: &[String],
) -> Result<(String, SecretString)> {
    let ca_key =
        KeyPair::from_pem(ca.key_pem.expose_secret()).map_err(tls("parsing the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(tls("parsing the CA certificate"))?;

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for n in dns_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut params =
        CertificateParams::new(names).map_err(tls("building the server certificate's names"))?;
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, SERVER_VALIDITY_DAYS);

    let key = KeyPair::generate().map_err(tls("generating the server key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls("signing the server certificate"))?;
    debug_assert!(params
        .subject_alt_names
        .iter()
        .any(|s| matches!(s, SanType::IpAddress(_))));
    Ok((cert.pem(), SecretString::from(key.serialize_pem())))
}

/// Server certificates are renewed when less than this is left of them.
pub const RENEW_BEFORE_DAYS: i64 = 30;

/// When a PEM certificate stops being valid (Unix seconds), or `None` when
/// `pem` holds no certificate careplane can read.
pub fn not_after(pem: &str) -> Option<i64> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Whether a server certificate is due for renewal at `now` (Unix seconds):
/// unreadable, or fewer than [`RENEW_BEFORE_DAYS`] days left.
pub fn due_for_renewal(pem: &str, now: i64) -> bool {
    not_after(pem).is_none_or(|end| end - now < RENEW_BEFORE_DAYS * 86_400)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "careplane");
    dn
}

fn tls(context: &'static str) -> impl Fn(rcgen::Error) -> LocalError {
    move |e| LocalError::Tls(format!("{context}: {e}"))
}

fn random_serial() -> Result<SerialNumber> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| LocalError::Tls("the OS CSPRNG failed".into()))?;
    // Positive and without a leading zero byte, as RFC 5280 wants.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Validity from yesterday to yesterday + `days`: starting a day early tolerates clock skew
/// between this machine and whatever verifies the certificate.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let now_days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(now_days - 1);
    let (y2, m2, d2) = civil_from_days(now_days - 1 + days);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y2, m2, d2);
}

/// Days since 1970-01-01 to a (year, month, day) civil date.
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let (y, m, d) = careplane_sys::civil_from_days(z);
    (y as i32, m as u8, d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn a_server_certificate_is_renewed_in_its_last_thirty_days_only() {
        let ca = generate_ca("careplane test CA").unwrap();
        let (cert, _) = issue_server_cert(&ca, "a.example", &[]).unwrap();
        let end = not_after(&cert).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // Yesterday + five years, to the day.
        let days = (end - now) / 86_400;
        assert!(
            (SERVER_VALIDITY_DAYS - 2..=SERVER_VALIDITY_DAYS).contains(&days),
            "{days}"
        );
        assert!(!due_for_renewal(&cert, now));
        assert!(!due_for_renewal(&cert, end - 31 * 86_400));
        assert!(due_for_renewal(&cert, end - 29 * 86_400));
        assert!(due_for_renewal(&cert, end + 1));
        assert!(due_for_renewal("not a certificate", now));
    }

    #[test]
    fn ca_and_server_cert_verify_with_rustls() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};

        let ca = generate_ca("careplane test CA").unwrap();
        assert!(ca.key_pem.expose_secret().contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
        let (cert, key) = issue_server_cert(&ca, "pg-shared", &["db.internal".into()]).unwrap();
        assert!(key.expose_secret().contains("PRIVATE KEY"));

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        for name in ["127.0.0.1", "localhost", "db.internal", "::1"] {
            verifier
                .verify_server_cert(
                    &leaf,
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from("evil.example").unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err());

        // A certificate from another CA must not verify.
        let other = generate_ca("other").unwrap();
        let (foreign, _) = issue_server_cert(&other, "x", &[]).unwrap();
        let foreign = CertificateDer::from_pem_slice(foreign.as_bytes()).unwrap();
        assert!(verifier
            .verify_server_cert(
                &foreign,
                &[],
                &ServerName::try_from("127.0.0.1").unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err());
    }
}

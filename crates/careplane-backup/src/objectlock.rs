//! S3 Object Lock (docs/design/0015): the three S3 calls `object_store`
//! cannot make. Its `PutOptions` carry no arbitrary headers, and headers
//! added after its signer ran (default headers, a wrapping HTTP service)
//! would be unsigned `x-amz-*` headers, which S3 refuses. So these requests
//! are built here and signed with `object_store`'s own SigV4 signer, its
//! credential provider and an HTTP client made from the same client
//! options: same endpoint, credentials and TLS as every other call.

use std::time::Duration;

use base64::Engine;
use jiff::Timestamp;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody};
use sha2::Digest;

use crate::error::{invalid, BackupError, Result};

/// Store options careplane reads itself (not `object_store` keys), so that
/// the settings reach `archive_command` the way the store's do.
pub(crate) const MODE_OPTION: &str = "object_lock_mode";
pub(crate) const DAYS_OPTION: &str = "object_lock_days";

/// Store options as `(key, value)` pairs.
pub(crate) type Options = Vec<(String, String)>;

/// Object Lock retention mode (S3's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` can still delete.
    Governance,
    /// Nobody, not even the account's root user, can delete before the date.
    Compliance,
}

impl LockMode {
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    fn parse(s: &str) -> Option<LockMode> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Some(LockMode::Governance),
            "compliance" => Some(LockMode::Compliance),
            _ => None,
        }
    }
}

/// What a backup policy's `immutability` asks: every backup stays
/// undeletable and unchangeable for at least `days` days after it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Immutability {
    pub mode: LockMode,
    pub days: u32,
}

impl Immutability {
    /// The store options that carry this to [`crate::Repository::open_with`]
    /// and [`crate::WalArchive::open`] (and so to `archive_command`).
    pub fn store_options(&self) -> Vec<(String, String)> {
        vec![
            (
                MODE_OPTION.to_string(),
                self.mode.as_s3().to_ascii_lowercase(),
            ),
            (DAYS_OPTION.to_string(), self.days.to_string()),
        ]
    }

    /// Takes careplane's lock options out of `options`; the rest are the store's.
    pub(crate) fn take_from(
        options: &[(String, String)],
    ) -> Result<(Option<Immutability>, Options)> {
        let mut mode = None;
        let mut days = None;
        let mut rest = Vec::new();
        for (k, v) in options {
            match k.as_str() {
                MODE_OPTION => {
                    mode = Some(LockMode::parse(v).ok_or_else(|| {
                        invalid(
                            format!("repository option {MODE_OPTION}"),
                            format!("{v:?} is not governance or compliance"),
                        )
                    })?)
                }
                DAYS_OPTION => {
                    days = Some(
                        v.parse::<u32>()
                            .ok()
                            .filter(|d| (1..=36500).contains(d))
                            .ok_or_else(|| {
                                invalid(
                                    format!("repository option {DAYS_OPTION}"),
                                    format!("{v:?} is not a number of days in 1..=36500"),
                                )
                            })?,
                    )
                }
                _ => rest.push((k.clone(), v.clone())),
            }
        }
        let lock = match (mode, days) {
            (Some(mode), Some(days)) => Some(Immutability { mode, days }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "repository options",
                    format!("{MODE_OPTION} and {DAYS_OPTION} go together"),
                ))
            }
        };
        Ok((lock, rest))
    }
}

/// How long objects that later backups reuse (chunks, the config) are
/// locked: twice the policy's days, so that one written up to `days` ago
/// still has `days` left for the backup that reuses it (docs/design/0015).
pub(crate) fn long_days(days: u32) -> u32 {
    days.saturating_mul(2)
}

/// Whether a chunk written at `modified` (locked for [`long_days`]) still
/// protects a backup taken at `now` for `days`; if not, the backup uploads
/// it again (a new, freshly locked version). An hour's margin covers clock
/// differences between careplane and the store.
pub(crate) fn reusable(modified: Timestamp, days: u32, now: Timestamp) -> bool {
    let locked_until = modified
        .checked_add(jiff::SignedDuration::from_hours(
            24 * long_days(days) as i64,
        ))
        .unwrap_or(Timestamp::MAX);
    let needed = now
        .checked_add(jiff::SignedDuration::from_hours(24 * days as i64 + 1))
        .unwrap_or(Timestamp::MAX);
    locked_until >= needed
}

/// An S3 bucket (and prefix) reached with signed requests of our own.
pub(crate) struct Direct {
    http: HttpClient,
    credentials: AwsCredentialProvider,
    region: String,
    pub(crate) bucket: String,
    /// `https://host/bucket` (path style) or `https://bucket.host`.
    bucket_url: String,
    /// Repository prefix inside the bucket, without slashes around it.
    prefix: String,
    pub(crate) lock: Immutability,
}

/// What `GetObjectLockConfiguration` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketLock {
    pub(crate) enabled: bool,
    /// The default retention, when the bucket has one.
    pub(crate) default: Option<(String, u32)>,
}

fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of the first `<tag>…</tag>` in an S3 XML answer.
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

/// The retain-until date as S3 takes it (whole seconds, UTC).
pub(crate) fn s3_date(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Direct {
    pub(crate) fn new(
        builder: &object_store::aws::AmazonS3Builder,
        s3: &object_store::aws::AmazonS3,
        client: object_store::ClientOptions,
        bucket: &str,
        prefix: &str,
        lock: Immutability,
    ) -> object_store::Result<Direct> {
        use object_store::aws::AmazonS3ConfigKey as K;
        use object_store::client::HttpConnector;
        let get = |k: K| builder.get_config_value(&k);
        // The builder learns the bucket from the URL only when it builds.
        let bucket = bucket.to_string();
        let region = get(K::Region).unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted = get(K::VirtualHostedStyleRequest).as_deref() == Some("true");
        // As object_store builds it, so both reach the same place.
        let bucket_url = match (get(K::Endpoint), virtual_hosted) {
            (Some(e), true) => e.trim_end_matches('/').to_string(),
            (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let allow_http =
            get(K::Client(object_store::ClientConfigKey::AllowHttp)).is_some_and(|v| v == "true");
        let http = object_store::client::ReqwestConnector::default()
            .connect(&client.with_allow_http(allow_http))?;
        Ok(Direct {
            http,
            credentials: s3.credentials().clone(),
            region,
            bucket,
            bucket_url,
            prefix: prefix.to_string(),
            lock,
        })
    }

    fn object_url(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{}/{}", self.bucket_url, encode_key(name))
        } else {
            format!(
                "{}/{}/{}",
                self.bucket_url,
                encode_key(&self.prefix),
                encode_key(name)
            )
        }
    }

    /// Sends one signed request; a few tries on transport errors and 5xx
    /// (as `object_store` does for its own). Returns status, headers, body.
    async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> std::result::Result<(http::StatusCode, http::HeaderMap, Vec<u8>), String> {
        let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
        let mut last = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let credential = self
                .credentials
                .get_credential()
                .await
                .map_err(|e| format!("getting credentials: {e}"))?;
            let mut req: HttpRequest = http::Request::builder()
                .method(method.clone())
                .uri(url)
                .body(HttpRequestBody::from(body.clone()))
                .map_err(|e| format!("building the request: {e}"))?;
            for (k, v) in headers {
                let value =
                    http::HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
                req.headers_mut().insert(*k, value);
            }
            req.headers_mut()
                .insert(http::header::CONTENT_LENGTH, body.len().into());
            AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut req, Some(&digest));
            match self.http.execute(req).await {
                Ok(res) => {
                    let (parts, body) = res.into_parts();
                    let bytes = body.bytes().await.map(|b| b.to_vec());
                    match bytes {
                        Ok(b) if !parts.status.is_server_error() => {
                            return Ok((parts.status, parts.headers, b))
                        }
                        Ok(b) => {
                            last = format!(
                                "{}: {}",
                                parts.status,
                                String::from_utf8_lossy(&b)
                                    .chars()
                                    .take(300)
                                    .collect::<String>()
                            )
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    fn failed(&self, status: http::StatusCode, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        match (xml_tag(&text, "Code"), xml_tag(&text, "Message")) {
            (Some(code), Some(msg)) => format!("{status} {code}: {msg}"),
            (Some(code), None) => format!("{status} {code}"),
            _ => status.to_string(),
        }
    }

    /// The bucket's Object Lock configuration (`GetObjectLockConfiguration`);
    /// `enabled: false` when the bucket has none.
    pub(crate) async fn bucket_lock(&self) -> std::result::Result<BucketLock, String> {
        let url = format!("{}?object-lock", self.bucket_url);
        let (status, _, body) = self.send(http::Method::GET, &url, &[], Vec::new()).await?;
        let text = String::from_utf8_lossy(&body);
        if status == http::StatusCode::NOT_FOUND
            && xml_tag(&text, "Code") == Some("ObjectLockConfigurationNotFoundError")
        {
            return Ok(BucketLock {
                enabled: false,
                default: None,
            });
        }
        if !status.is_success() {
            return Err(self.failed(status, &body));
        }
        let enabled = xml_tag(&text, "ObjectLockEnabled") == Some("Enabled");
        let days = xml_tag(&text, "Days")
            .and_then(|d| d.parse::<u32>().ok())
            .unwrap_or(0)
            + xml_tag(&text, "Years")
                .and_then(|y| y.parse::<u32>().ok())
                .unwrap_or(0)
                * 365;
        let default = xml_tag(&text, "Mode")
            .filter(|m| !m.is_empty())
            .map(|m| (m.to_string(), days));
        Ok(BucketLock { enabled, default })
    }

    /// `PutObject` with this repository's retention until `until`. S3 wants
    /// a checksum on any put with Object Lock headers (Content-MD5 or
    /// `x-amz-sdk-checksum-algorithm` with its value).
    pub(crate) async fn put(
        &self,
        name: &str,
        data: Vec<u8>,
        until: Timestamp,
    ) -> std::result::Result<(), String> {
        let sha = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&data));
        let headers = [
            ("x-amz-object-lock-mode", self.lock.mode.as_s3().to_string()),
            ("x-amz-object-lock-retain-until-date", s3_date(until)),
            ("x-amz-sdk-checksum-algorithm", "SHA256".to_string()),
            ("x-amz-checksum-sha256", sha),
        ];
        let url = self.object_url(name);
        let (status, _, body) = self.send(http::Method::PUT, &url, &headers, data).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.failed(status, &body))
        }
    }

    /// The object's retain-until date (`HeadObject`); `None` when it has no
    /// retention or does not exist.
    pub(crate) async fn retain_until(
        &self,
        name: &str,
    ) -> std::result::Result<Option<Timestamp>, String> {
        let url = self.object_url(name);
        let (status, headers, _) = self.send(http::Method::HEAD, &url, &[], Vec::new()).await?;
        if status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status.to_string());
        }
        let Some(v) = headers.get("x-amz-object-lock-retain-until-date") else {
            return Ok(None);
        };
        let v = v.to_str().map_err(|e| e.to_string())?;
        v.parse::<Timestamp>()
            .map(Some)
            .map_err(|e| format!("retain-until date {v:?}: {e}"))
    }
}

/// A failed Object Lock request, naming the repository and what was done.
pub(crate) fn lock_error(repository: &str, action: String, problem: String) -> BackupError {
    BackupError::Repository {
        repository: repository.to_string(),
        problem: format!("{action}: {problem}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_chunk_is_reused_only_while_its_lock_outlasts_the_new_backups() {
        // Locked 2 × 10 days from its write; a backup needs 10 days + 1 h.
        let written = t("2026-01-01T00:00:00Z");
        assert!(reusable(written, 10, t("2026-01-01T00:00:00Z")));
        assert!(reusable(written, 10, t("2026-01-10T23:00:00Z")));
        assert!(!reusable(written, 10, t("2026-01-10T23:00:01Z")));
        assert!(!reusable(written, 10, t("2026-03-01T00:00:00Z")));
        // A chunk dated after now (clock step) is reusable.
        assert!(reusable(written, 10, t("2025-12-01T00:00:00Z")));
    }

    #[test]
    fn lock_options_are_taken_out_of_the_store_options_and_checked() {
        let opts = vec![
            ("aws_region".to_string(), "eu-west-1".to_string()),
            (MODE_OPTION.to_string(), "compliance".to_string()),
            (DAYS_OPTION.to_string(), "30".to_string()),
        ];
        let (lock, rest) = Immutability::take_from(&opts).unwrap();
        assert_eq!(
            lock,
            Some(Immutability {
                mode: LockMode::Compliance,
                days: 30
            })
        );
        assert_eq!(rest, vec![opts[0].clone()]);
        let round = lock.unwrap().store_options();
        assert_eq!(
            Immutability::take_from(&round).unwrap().0,
            Some(Immutability {
                mode: LockMode::Compliance,
                days: 30
            })
        );
        for bad in [
            vec![(MODE_OPTION.to_string(), "legal".to_string())],
            vec![(DAYS_OPTION.to_string(), "0".to_string())],
            vec![
                (MODE_OPTION.to_string(), "governance".to_string()),
                (DAYS_OPTION.to_string(), "36501".to_string()),
            ],
        ] {
            assert!(Immutability::take_from(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn s3_answers_are_read() {
        let xml = "<?xml version=\"1.0\"?><ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Years>1</Years></DefaultRetention></Rule></ObjectLockConfiguration>";
        assert_eq!(xml_tag(xml, "ObjectLockEnabled"), Some("Enabled"));
        assert_eq!(xml_tag(xml, "Mode"), Some("GOVERNANCE"));
        assert_eq!(xml_tag(xml, "Days"), None);
        assert_eq!(encode_key("wal/0001.partial"), "wal/0001.partial");
        assert_eq!(encode_key("a b+c"), "a%20b%2Bc");
        assert_eq!(
            s3_date(t("2026-01-02T03:04:05.678Z")),
            "2026-01-02T03:04:05Z"
        );
    }
}

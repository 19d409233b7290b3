//! OpenID Connect: discovery, JWKS, token verification, the authorization
//! code flow with PKCE over a loopback redirect, and the device
//! authorization grant (RFC 8628) for a terminal without a browser
//! (docs/design/0013, "Tokens"). Signatures are checked with `ring`; the
//! checks of the header and the claims are here, each with its own error.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ring::signature;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Error;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 60;
/// An unknown `kid` refetches the JWKS at most this often.
pub const JWKS_REFETCH_SECS: i64 = 60;
const MAX_BODY: u64 = 1 << 20;

/// Why a token was refused. Messages never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token algorithm {0:?} is not accepted (only RS256, ES256, EdDSA)")]
    UnsupportedAlg(String),
    #[error("token key id {0:?} is not in the provider's JWKS")]
    UnknownKid(String),
    #[error("token key {kid:?} does not fit algorithm {alg}")]
    KeyMismatch { kid: String, alg: String },
    #[error("token signature does not verify with the provider's key {0:?}")]
    BadSignature(String),
    #[error("token issuer {got:?} is not {want:?}")]
    WrongIssuer { got: String, want: String },
    #[error("token audience {got} does not include {want:?}")]
    WrongAudience { got: String, want: String },
    #[error("token expired at {exp} (now {now}, {LEEWAY_SECS} s leeway)")]
    Expired { exp: String, now: String },
    #[error("token is not valid before {0}")]
    NotYetValid(String),
    #[error("token nonce does not match this sign-in's")]
    NonceMismatch,
    #[error("token nonce was already used: a replayed token")]
    NonceReplayed,
    #[error("token lacks the {0} claim")]
    MissingClaim(&'static str),
}

/// What discovery says (the fields careplane uses).
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    /// RFC 8628's endpoint, when the provider offers the device flow.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

struct KeyCache {
    keys: Vec<Jwk>,
    fetched_at: i64,
    fetches: u64,
}

/// A discovered provider and its cached keys, bound to one client id.
pub struct Verifier {
    pub metadata: Metadata,
    pub client_id: String,
    agent: ureq::Agent,
    keys: Mutex<KeyCache>,
    /// Nonces of ID tokens accepted, with their token's expiry (µs).
    nonces: Mutex<HashMap<String, i64>>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn get_json<T: serde::de::DeserializeOwned>(agent: &ureq::Agent, url: &str) -> Result<T, Error> {
    let http = |detail: String| Error::Http {
        url: url.to_string(),
        detail,
    };
    let mut resp = agent.get(url).call().map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| http(e.to_string()))?;
    if !status.is_success() {
        return Err(http(format!("HTTP {status}")));
    }
    serde_json::from_str(&body).map_err(|e| http(format!("not the expected JSON: {e}")))
}

fn now_s(micros: i64) -> i64 {
    micros.div_euclid(1_000_000)
}

impl Verifier {
    /// Discovery at `<issuer>/.well-known/openid-configuration`; the
    /// document's issuer must be `issuer` exactly. Fetches the JWKS.
    pub fn discover(issuer: &str, client_id: &str, now: i64) -> Result<Verifier, Error> {
        if !issuer_transport_ok(issuer) {
            return Err(Error::Invalid {
                field: "issuer".into(),
                detail: format!(
                    "{issuer:?}: an identity provider is reached over https (plain http only on loopback)"
                ),
            });
        }
        let agent = agent();
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let metadata: Metadata = get_json(&agent, &url)?;
        if metadata.issuer != issuer {
            return Err(Error::Http {
                url,
                detail: format!(
                    "discovery names issuer {:?}, configured is {issuer:?}",
                    metadata.issuer
                ),
            });
        }
        let v = Verifier {
            metadata,
            client_id: client_id.to_string(),
            agent,
            keys: Mutex::new(KeyCache {
                keys: Vec::new(),
                fetched_at: i64::MIN,
                fetches: 0,
            }),
            nonces: Mutex::new(HashMap::new()),
        };
        v.refresh_keys(now)?;
        Ok(v)
    }

    fn refresh_keys(&self, now: i64) -> Result<(), Error> {
        let set: JwkSet = get_json(&self.agent, &self.metadata.jwks_uri)?;
        let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        cache.keys = set.keys;
        cache.fetched_at = now;
        cache.fetches += 1;
        Ok(())
    }

    /// How often the JWKS was fetched (for tests of the cache).
    pub fn jwks_fetches(&self) -> u64 {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).fetches
    }

    fn key_for(&self, kid: Option<&str>, alg: &str, now: i64) -> Result<Jwk, Error> {
        let find = |keys: &[Jwk]| -> Option<Jwk> {
            let fits = |k: &&Jwk| k.use_.as_deref().is_none_or(|u| u == "sig");
            match kid {
                Some(kid) => keys
                    .iter()
                    .filter(fits)
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .cloned(),
                None => {
                    let c: Vec<&Jwk> = keys
                        .iter()
                        .filter(fits)
                        .filter(|k| key_fits(k, alg))
                        .collect();
                    (c.len() == 1).then(|| c[0].clone())
                }
            }
        };
        let (found, fetched_at) = {
            let cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            (find(&cache.keys), cache.fetched_at)
        };
        if let Some(k) = found {
            return Ok(k);
        }
        // The provider may have rotated its keys: one refetch, not more
        // often than JWKS_REFETCH_SECS, so that made-up kids cannot make
        // careplane hammer the IdP.
        if now_s(now) - now_s(fetched_at.max(i64::MIN / 2)) >= JWKS_REFETCH_SECS {
            self.refresh_keys(now)?;
            let cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = find(&cache.keys) {
                return Ok(k);
            }
        }
        Err(TokenError::UnknownKid(kid.unwrap_or("(none)").to_string()).into())
    }

    /// Checks the compact JWS's header, key and signature; returns the
    /// claims.
    fn verified_claims(&self, token: &str, now: i64) -> Result<Value, Error> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three dot-separated parts".into()).into());
        };
        let header: Value = decode_json(h, "header")?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::Malformed("header has no alg".into()))?;
        // Before any key is looked at: `none`, HS256 with the public key as
        // secret, and anything else we do not verify are refused here.
        if !matches!(alg, "RS256" | "ES256" | "EdDSA") {
            return Err(TokenError::UnsupportedAlg(alg.to_string()).into());
        }
        if header.get("crit").is_some() {
            return Err(TokenError::Malformed("header has crit extensions".into()).into());
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let key = self.key_for(kid, alg, now)?;
        let kid = key.kid.clone().unwrap_or_default();
        if !key_fits(&key, alg) || key.alg.as_deref().is_some_and(|a| a != alg) {
            return Err(TokenError::KeyMismatch {
                kid,
                alg: alg.to_string(),
            }
            .into());
        }
        let sig = B64
            .decode(s)
            .map_err(|_| TokenError::Malformed("signature is not base64url".into()))?;
        let msg = &token.as_bytes()[..h.len() + 1 + p.len()];
        let bad = || TokenError::BadSignature(kid.clone());
        let b = |v: &Option<String>| -> Result<Vec<u8>, TokenError> {
            B64.decode(v.as_deref().unwrap_or(""))
                .map_err(|_| TokenError::KeyMismatch {
                    kid: kid.clone(),
                    alg: alg.to_string(),
                })
        };
        match alg {
            "RS256" => signature::RsaPublicKeyComponents {
                n: b(&key.n)?,
                e: b(&key.e)?,
            }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, &sig)
            .map_err(|_| bad())?,
            "ES256" => {
                let mut point = vec![4u8];
                point.extend(b(&key.x)?);
                point.extend(b(&key.y)?);
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, &sig)
                    .map_err(|_| bad())?
            }
            _ => signature::UnparsedPublicKey::new(&signature::ED25519, b(&key.x)?)
                .verify(msg, &sig)
                .map_err(|_| bad())?,
        }
        Ok(decode_json(p, "payload")?)
    }

    fn check_common(&self, claims: &Value, audience: &str, now: i64) -> Result<(), TokenError> {
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::MissingClaim("iss"))?;
        if iss != self.metadata.issuer {
            return Err(TokenError::WrongIssuer {
                got: iss.to_string(),
                want: self.metadata.issuer.clone(),
            });
        }
        let aud: Vec<&str> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(TokenError::MissingClaim("aud")),
        };
        if !aud.contains(&audience) {
            return Err(TokenError::WrongAudience {
                got: format!("{aud:?}"),
                want: audience.to_string(),
            });
        }
        let now_secs = now_s(now);
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(TokenError::MissingClaim("exp"))?;
        if exp + LEEWAY_SECS <= now_secs {
            return Err(TokenError::Expired {
                exp: crate::time(exp.saturating_mul(1_000_000)),
                now: crate::time(now),
            });
        }
        for claim in ["nbf", "iat"] {
            if let Some(t) = claims.get(claim).and_then(Value::as_i64) {
                if t - LEEWAY_SECS > now_secs {
                    return Err(TokenError::NotYetValid(crate::time(
                        t.saturating_mul(1_000_000),
                    )));
                }
            }
        }
        Ok(())
    }

    /// Verifies an ID token for this client. With `expected_nonce` (a
    /// sign-in that just happened) the nonce must match and must not have
    /// been seen before; without it (a stored session presented again) the
    /// nonce is not checked.
    pub fn verify_id_token(
        &self,
        token: &str,
        expected_nonce: Option<&str>,
        now: i64,
    ) -> Result<Value, Error> {
        let claims = self.verified_claims(token, now)?;
        self.check_common(&claims, &self.client_id, now)?;
        if let Some(Value::Array(aud)) = claims.get("aud") {
            if aud.len() > 1
                && claims.get("azp").and_then(Value::as_str) != Some(self.client_id.as_str())
            {
                return Err(TokenError::WrongAudience {
                    got: format!("{aud:?} with azp {:?}", claims.get("azp")),
                    want: self.client_id.clone(),
                }
                .into());
            }
        }
        claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(TokenError::MissingClaim("sub"))?;
        if let Some(want) = expected_nonce {
            self.check_nonce(&claims, want, now)?;
        }
        Ok(claims)
    }

    /// The nonce must be this sign-in's, and seen for the first time.
    fn check_nonce(&self, claims: &Value, want: &str, now: i64) -> Result<(), TokenError> {
        let got = claims
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or(TokenError::MissingClaim("nonce"))?;
        if !constant_eq(got.as_bytes(), want.as_bytes()) {
            return Err(TokenError::NonceMismatch);
        }
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let mut seen = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, e| (*e + LEEWAY_SECS) * 1_000_000 > now);
        if seen.contains_key(got) {
            return Err(TokenError::NonceReplayed);
        }
        seen.insert(got.to_string(), exp);
        Ok(())
    }

    /// Verifies a JWT access token (RFC 9068) for `audience` (the API).
    pub fn verify_access_token(
        &self,
        token: &str,
        audience: &str,
        now: i64,
    ) -> Result<Value, Error> {
        let claims = self.verified_claims(token, now)?;
        self.check_common(&claims, audience, now)?;
        Ok(claims)
    }
}

/// https, or http to a loopback address (a provider, or a `careplane
/// serve`, on the same host): where a bearer token may be sent.
pub fn https_or_loopback(url: &str) -> bool {
    issuer_transport_ok(url)
}

/// https, or http to a loopback address (a provider on the same host).
fn issuer_transport_ok(issuer: &str) -> bool {
    if issuer.starts_with("https://") {
        return true;
    }
    let Some(rest) = issuer.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

fn key_fits(k: &Jwk, alg: &str) -> bool {
    match alg {
        "RS256" => k.kty == "RSA",
        "ES256" => k.kty == "EC" && k.crv.as_deref() == Some("P-256"),
        "EdDSA" => k.kty == "OKP" && k.crv.as_deref() == Some("Ed25519"),
        _ => false,
    }
}

fn decode_json(part: &str, what: &str) -> Result<Value, TokenError> {
    let bytes = B64
        .decode(part)
        .map_err(|_| TokenError::Malformed(format!("{what} is not base64url")))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("{what} is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(TokenError::Malformed(format!(
            "{what} is not a JSON object"
        )));
    }
    Ok(v)
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_b64(n: usize) -> Result<String, Error> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).map_err(|e| Error::Invalid {
        field: "randomness".into(),
        detail: e.to_string(),
    })?;
    Ok(B64.encode(b))
}

/// RFC 3986 unreserved characters stay; everything else is escaped.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
/// The `sub` a JWT claims, before any verification (`sub:<sub>`, or
/// `sub:?`): only a rate-limit key and an audit label, never an identity.
/// Cut to 128 characters so that a forged token cannot bloat either.
pub fn claimed_subject(token: &str) -> String {
    token
        .split('.')
        .nth(1)
        .and_then(|p| B64.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| {
            v["sub"]
                .as_str()
                .map(|s| format!("sub:{}", s.chars().take(128).collect::<String>()))
        })
        .unwrap_or_else(|| "sub:?".into())
}

pub fn pkce_challenge(verifier: &str) -> String {
    B64.encode(Sha256::digest(verifier.as_bytes()))
}

/// What the token endpoint returned. Tokens are bearer credentials: their
/// `Debug` is redacted.
#[derive(Debug)]
pub struct Tokens {
    pub id_token: SecretString,
    pub access_token: SecretString,
    pub claims: Value,
}

/// A sign-in in progress: the URL to open in a browser, and the loopback
/// listener the IdP redirects back to (RFC 8252).
pub struct Login {
    pub url: String,
    pub redirect_uri: String,
    state: String,
    nonce: String,
    verifier: SecretString,
    listener: TcpListener,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("url", &self.url)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Starts the authorization code flow with PKCE (S256): binds a free
    /// loopback port and builds the authorization URL. `extra` adds
    /// parameters such as `login_hint`.
    pub fn start_login(&self, scope: &str, extra: &[(&str, &str)]) -> Result<Login, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Io {
            path: "127.0.0.1:0 (the sign-in's loopback redirect)".into(),
            source: e,
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Io {
                path: "127.0.0.1 (loopback redirect)".into(),
                source: e,
            })?
            .port();
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let state = random_b64(24)?;
        let nonce = random_b64(24)?;
        let verifier = random_b64(32)?;
        let mut url = format!(
            "{}?response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            self.metadata.authorization_endpoint,
            enc(&self.client_id),
            enc(&redirect_uri),
            enc(scope),
            enc(&state),
            enc(&nonce),
            pkce_challenge(&verifier),
        );
        for (k, v) in extra {
            url.push_str(&format!("&{}={}", enc(k), enc(v)));
        }
        Ok(Login {
            url,
            redirect_uri,
            state,
            nonce,
            verifier: SecretString::from(verifier),
            listener,
        })
    }

    /// Waits (at most `wait`) for the browser's redirect to the loopback
    /// listener, checks `state`, exchanges the code with the PKCE verifier
    /// and verifies the ID token with this sign-in's nonce at `now()`.
    pub fn finish_login(
        &self,
        login: Login,
        wait: Duration,
        now: impl Fn() -> i64,
    ) -> Result<Tokens, Error> {
        let code = receive_code(&login, wait)?;
        let (ok, status, v) = self.post_form(
            &self.metadata.token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", code.expose_secret()),
                ("redirect_uri", login.redirect_uri.as_str()),
                ("client_id", self.client_id.as_str()),
                ("code_verifier", login.verifier.expose_secret()),
            ],
        )?;
        let http = |detail: String| Error::Http {
            url: self.metadata.token_endpoint.clone(),
            detail,
        };
        if !ok {
            return Err(http(format!("HTTP {status}: {}", oauth_error(&v))));
        }
        let (id_token, access_token) = token_pair(&v).map_err(http)?;
        let claims = self.verify_id_token(id_token.expose_secret(), Some(&login.nonce), now())?;
        Ok(Tokens {
            id_token,
            access_token,
            claims,
        })
    }
}

impl Verifier {
    /// POSTs a form; (2xx?, status, the JSON answer). The form (codes,
    /// verifiers) never goes into an error.
    fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<(bool, u16, Value), Error> {
        let http = |detail: String| Error::Http {
            url: url.to_string(),
            detail,
        };
        let mut resp = self
            .agent
            .post(url)
            .send_form(form.iter().copied())
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| http(e.to_string()))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| http(format!("HTTP {status}, not JSON: {e}")))?;
        Ok((status.is_success(), status.as_u16(), v))
    }
}

/// An OAuth error answer as `error error_description`.
fn oauth_error(v: &Value) -> String {
    format!(
        "{} {}",
        v.get("error").and_then(Value::as_str).unwrap_or("?"),
        v.get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("")
    )
    .trim_end()
    .to_string()
}

/// The ID and access tokens of a token response.
fn token_pair(v: &Value) -> Result<(SecretString, SecretString), String> {
    let get = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(|s| SecretString::from(s.to_string()))
            .ok_or_else(|| format!("the token response has no {k}"))
    };
    Ok((get("id_token")?, get("access_token")?))
}

/// RFC 8628 §3.4's grant type.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The poll interval when the provider names none (RFC 8628 §3.2).
pub const DEVICE_DEFAULT_INTERVAL_SECS: u64 = 5;
/// What `slow_down` adds to the interval, for good (RFC 8628 §3.5).
pub const DEVICE_SLOW_DOWN_SECS: u64 = 5;

/// A device sign-in in progress (RFC 8628): what the user is shown, and
/// the device code this process polls with (a bearer secret until used:
/// not in `Debug`, never in an error).
pub struct DeviceLogin {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds the codes are valid for, from when they were issued.
    pub expires_in: u64,
    /// Seconds between two polls of the token endpoint.
    pub interval: u64,
    device_code: SecretString,
    nonce: String,
}

impl std::fmt::Debug for DeviceLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLogin")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// One answer of the token endpoint to a device-code poll.
#[derive(Debug, PartialEq, Eq)]
enum Poll {
    Tokens,
    Pending,
    SlowDown,
    Denied(String),
    Expired,
    Failed(String),
}

fn classify_poll(ok: bool, v: &Value) -> Poll {
    if ok {
        return Poll::Tokens;
    }
    match v.get("error").and_then(Value::as_str) {
        Some("authorization_pending") => Poll::Pending,
        Some("slow_down") => Poll::SlowDown,
        Some("access_denied") => Poll::Denied(oauth_error(v)),
        Some("expired_token") => Poll::Expired,
        _ => Poll::Failed(oauth_error(v)),
    }
}

/// The interval after an answer: `slow_down` adds 5 s, for the rest of the
/// sign-in.
fn next_interval(interval: u64, answer: &Poll) -> u64 {
    match answer {
        Poll::SlowDown => interval.saturating_add(DEVICE_SLOW_DOWN_SECS),
        _ => interval,
    }
}

impl Verifier {
    /// Starts the device authorization grant (RFC 8628 §3.1): asks the
    /// provider's `device_authorization_endpoint` for a user code. A
    /// provider whose discovery names no such endpoint is a clear error.
    /// `extra` adds parameters such as `login_hint`. A nonce is sent too:
    /// an ID token that carries one must carry this one.
    pub fn start_device_login(
        &self,
        scope: &str,
        extra: &[(&str, &str)],
    ) -> Result<DeviceLogin, Error> {
        let Some(endpoint) = self.metadata.device_authorization_endpoint.clone() else {
            return Err(Error::Invalid {
                field: "device_authorization_endpoint".into(),
                detail: format!(
                    "the identity provider {} does not offer sign-in with a device code (its discovery document names no device_authorization_endpoint, RFC 8628): sign in through the browser instead",
                    self.metadata.issuer
                ),
            });
        };
        if !issuer_transport_ok(&endpoint) {
            return Err(Error::Invalid {
                field: "device_authorization_endpoint".into(),
                detail: format!(
                    "{endpoint:?}: reached over https only (plain http only on loopback)"
                ),
            });
        }
        let nonce = random_b64(24)?;
        let mut form = vec![
            ("client_id", self.client_id.as_str()),
            ("scope", scope),
            ("nonce", nonce.as_str()),
        ];
        form.extend(extra.iter().copied());
        let (ok, status, v) = self.post_form(&endpoint, &form)?;
        let http = |detail: String| Error::Http {
            url: endpoint.clone(),
            detail,
        };
        if !ok {
            return Err(http(format!("HTTP {status}: {}", oauth_error(&v))));
        }
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| http(format!("the device authorization response has no {k}")))
        };
        let device_code = SecretString::from(text("device_code")?);
        let user_code = text("user_code")?;
        let verification_uri = text("verification_uri")?;
        let verification_uri_complete = text("verification_uri_complete").ok();
        let expires_in = v
            .get("expires_in")
            .and_then(Value::as_u64)
            .ok_or_else(|| http("the device authorization response has no expires_in".into()))?;
        let interval = v
            .get("interval")
            .and_then(Value::as_u64)
            .unwrap_or(DEVICE_DEFAULT_INTERVAL_SECS)
            .max(1);
        Ok(DeviceLogin {
            user_code,
            verification_uri,
            verification_uri_complete,
            expires_in,
            interval,
            device_code,
            nonce,
        })
    }

    /// Polls the token endpoint (RFC 8628 §3.4–3.5) every `interval`
    /// seconds — `authorization_pending` waits on, `slow_down` adds 5 s —
    /// until the user approved at the provider, refused (`access_denied`),
    /// the code expired (`expired_token`, or its `expires_in` passed here),
    /// or `max_wait` passed. The ID token is verified as a browser
    /// sign-in's is (signature with the provider's keys, issuer, audience,
    /// expiry; and this sign-in's nonce when it carries one).
    pub fn finish_device_login(
        &self,
        login: DeviceLogin,
        max_wait: Duration,
        now: impl Fn() -> i64,
    ) -> Result<Tokens, Error> {
        let started = Instant::now();
        let lifetime = Duration::from_secs(login.expires_in);
        let deadline = started + lifetime.min(max_wait);
        let token_endpoint = self.metadata.token_endpoint.clone();
        let http = |detail: String| Error::Http {
            url: token_endpoint.clone(),
            detail,
        };
        let mut interval = login.interval;
        let v = loop {
            if Instant::now() + Duration::from_secs(interval) > deadline {
                return Err(Error::AuthFailed(if lifetime <= max_wait {
                    format!(
                        "the device code expired after {} s before the sign-in at {} was completed: sign in again",
                        login.expires_in, login.verification_uri
                    )
                } else {
                    format!(
                        "no sign-in at {} was completed within {} s",
                        login.verification_uri,
                        max_wait.as_secs()
                    )
                }));
            }
            std::thread::sleep(Duration::from_secs(interval));
            let (ok, status, v) = self.post_form(
                &token_endpoint,
                &[
                    ("grant_type", DEVICE_CODE_GRANT),
                    ("device_code", login.device_code.expose_secret()),
                    ("client_id", self.client_id.as_str()),
                ],
            )?;
            let answer = classify_poll(ok, &v);
            interval = next_interval(interval, &answer);
            match answer {
                Poll::Tokens => break v,
                Poll::Pending | Poll::SlowDown => {}
                Poll::Denied(why) => {
                    return Err(Error::AuthFailed(format!(
                        "the sign-in was refused at the identity provider ({why})"
                    )))
                }
                Poll::Expired => {
                    return Err(Error::AuthFailed(format!(
                        "the device code expired before the sign-in at {} was completed (expired_token): sign in again",
                        login.verification_uri
                    )))
                }
                Poll::Failed(why) => return Err(http(format!("HTTP {status}: {why}"))),
            }
        };
        let (id_token, access_token) = token_pair(&v).map_err(http)?;
        let claims = self.verify_id_token(id_token.expose_secret(), None, now())?;
        // RFC 8628 has no nonce, so a provider need not echo one; one that
        // does must echo this sign-in's, once.
        if claims.get("nonce").is_some() {
            self.check_nonce(&claims, &login.nonce, now())?;
        }
        Ok(Tokens {
            id_token,
            access_token,
            claims,
        })
    }
}

/// Accepts connections on the loopback listener until one brings
/// `/callback?code=…&state=<ours>` (or an error), or `wait` passes.
fn receive_code(login: &Login, wait: Duration) -> Result<SecretString, Error> {
    let deadline = Instant::now() + wait;
    let io = |e: std::io::Error| Error::Io {
        path: login.redirect_uri.clone().into(),
        source: e,
    };
    login.listener.set_nonblocking(true).map_err(io)?;
    loop {
        let (mut stream, _) = match login.listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(Error::AuthFailed(format!(
                        "no redirect from the identity provider reached {} within {} s",
                        login.redirect_uri,
                        wait.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(io(e)),
        };
        stream.set_nonblocking(false).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let mut line = String::new();
        let mut reader = BufReader::new((&stream).take_bounded(8192));
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("");
        let Some(query) = path.strip_prefix("/callback?") else {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            continue;
        };
        let params: HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let d = |s: &str| {
                    percent_decode_str(&s.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned()
                };
                (d(k), d(v))
            })
            .collect();
        let reply = |stream: &mut std::net::TcpStream, msg: &str| {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                msg.len()
            );
        };
        if params.get("state").map(String::as_str) != Some(login.state.as_str()) {
            // Not our sign-in (or a forged redirect): ignore, keep waiting.
            reply(
                &mut stream,
                "careplane: unexpected sign-in response (state mismatch); ignored.\n",
            );
            continue;
        }
        if let Some(err) = params.get("error") {
            reply(
                &mut stream,
                "careplane: sign-in failed; see the terminal.\n",
            );
            return Err(Error::AuthFailed(format!(
                "the identity provider refused the sign-in: {err} {}",
                params
                    .get("error_description")
                    .map(String::as_str)
                    .unwrap_or("")
            )));
        }
        let Some(code) = params.get("code") else {
            reply(&mut stream, "careplane: no code in the redirect.\n");
            return Err(Error::AuthFailed("the redirect carried no code".into()));
        };
        reply(
            &mut stream,
            "careplane: signed in. You can close this window.\n",
        );
        return Ok(SecretString::from(code.clone()));
    }
}

trait TakeBounded: std::io::Read + Sized {
    fn take_bounded(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeBounded for R {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7636 Appendix B.
    #[test]
    fn pkce_s256_matches_rfc_7636() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn issuers_need_https_except_on_loopback() {
        assert!(issuer_transport_ok("https://login.example.org/realms/x"));
        assert!(issuer_transport_ok("http://127.0.0.1:4000"));
        assert!(issuer_transport_ok("http://[::1]:4000/x"));
        assert!(!issuer_transport_ok("http://login.example.org"));
        assert!(!issuer_transport_ok("http://127.0.0.1.evil.org"));
        assert!(!issuer_transport_ok("ftp://127.0.0.1"));
    }

    #[test]
    fn device_polls_wait_slow_down_and_end_on_refusal_or_expiry() {
        let e = |code: &str| json!({"error": code, "error_description": "why"});
        assert_eq!(classify_poll(true, &json!({})), Poll::Tokens);
        assert_eq!(
            classify_poll(false, &e("authorization_pending")),
            Poll::Pending
        );
        assert_eq!(classify_poll(false, &e("slow_down")), Poll::SlowDown);
        assert_eq!(classify_poll(false, &e("expired_token")), Poll::Expired);
        assert_eq!(
            classify_poll(false, &e("access_denied")),
            Poll::Denied("access_denied why".into())
        );
        assert_eq!(
            classify_poll(false, &e("invalid_grant")),
            Poll::Failed("invalid_grant why".into())
        );
        // slow_down adds 5 s, and the interval stays longer afterwards.
        let mut i = 5;
        for a in [Poll::Pending, Poll::SlowDown, Poll::Pending, Poll::SlowDown] {
            i = next_interval(i, &a);
        }
        assert_eq!(i, 15);
    }

    #[test]
    fn device_login_debug_hides_the_device_code() {
        let d = DeviceLogin {
            user_code: "WDJB-MJHT".into(),
            verification_uri: "https://idp.example/device".into(),
            verification_uri_complete: None,
            expires_in: 600,
            interval: 5,
            device_code: SecretString::from("secret-device-code".to_string()),
            nonce: "n".into(),
        };
        let text = format!("{d:?}");
        assert!(
            text.contains("WDJB-MJHT") && !text.contains("secret-device"),
            "{text}"
        );
    }

    #[test]
    fn tokens_debug_hides_the_tokens() {
        let t = Tokens {
            id_token: SecretString::from("eyJ.secret-id.token".to_string()),
            access_token: SecretString::from("opaque-access-secret".to_string()),
            claims: Value::Null,
        };
        let d = format!("{t:?}");
        assert!(
            !d.contains("secret-id") && !d.contains("opaque-access"),
            "{d}"
        );
    }
}

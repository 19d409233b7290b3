//! Against a real OpenID provider on loopback (npm `oidc-provider`): sign-in
//! with the authorization code flow and PKCE for each signature algorithm,
//! MFA read from the real `amr`, and refusal of expired, wrong-audience,
//! wrong-issuer, unsigned, re-signed, HS256-with-the-public-key, unknown-kid
//! and replayed tokens.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use careplane_identity::oidc::{TokenError, Tokens, Verifier};
use careplane_identity::{authorize, Action, Error, Role, Target};
use common::*;
use secrecy::ExposeSecret;
use serde_json::json;

/// A full sign-in as `hint` through `client`: the CLI's half in this
/// thread, the browser's in another.
fn sign_in(v: &Verifier, hint: &str) -> Tokens {
    let login = v
        .start_login("openid email groups", &[("login_hint", hint)])
        .unwrap();
    let (url, redirect) = (login.url.clone(), login.redirect_uri.clone());
    let browser = std::thread::spawn(move || browse(&url, &redirect));
    let tokens = v
        .finish_login(login, Duration::from_secs(30), now)
        .unwrap_or_else(|e| panic!("sign-in as {hint}: {e}"));
    browser.join().unwrap();
    tokens
}

fn token_err(r: Result<serde_json::Value, Error>) -> TokenError {
    match r {
        Err(Error::Token(t)) => t,
        other => panic!("expected a token error, got {other:?}"),
    }
}

fn header_alg(token: &str) -> String {
    let h: serde_json::Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    h["alg"].as_str().unwrap().to_string()
}

#[test]
fn sign_in_with_pkce_for_each_algorithm_and_roles_from_groups() {
    let Some(idp) = idp() else { return };
    for (client, alg) in [
        ("careplane-cli", "RS256"),
        ("careplane-es", "ES256"),
        ("careplane-ed", "EdDSA"),
    ] {
        let v = Verifier::discover(&idp.issuer, client, now()).unwrap();
        let t = sign_in(&v, "dave");
        assert_eq!(header_alg(t.id_token.expose_secret()), alg);
        assert_eq!(t.claims["sub"], "dave");
        assert_eq!(t.claims["aud"], client);
        let p = config(&idp.issuer, client).principal(&t.claims).unwrap();
        assert_eq!(p.id, "dave");
        assert_eq!(p.auth, "oidc");
        assert!(!p.mfa, "plain password sign-in: {:?}", t.claims["amr"]);
        assert_eq!(p.bindings.len(), 1);
        assert_eq!(p.bindings[0].role, Role::TenantOperator);
        // Scoped to stmarys: allowed there, refused elsewhere.
        assert!(authorize(&p, Action::Start, &Target::tenant("stmarys", false)).allowed);
        assert!(!authorize(&p, Action::Start, &Target::tenant("other", false)).allowed);
        // The stored session verifies again later without its nonce.
        v.verify_id_token(t.id_token.expose_secret(), None, now())
            .unwrap();
    }
}

#[test]
fn mfa_is_read_from_the_providers_amr() {
    let Some(idp) = idp() else { return };
    let v = Verifier::discover(&idp.issuer, "careplane-cli", now()).unwrap();
    let cfg = config(&idp.issuer, "careplane-cli");
    let prod = Target::tenant("stmarys", true);

    let t = sign_in(&v, "carol;mfa");
    let with = cfg.principal(&t.claims).unwrap();
    assert!(with.mfa, "claims {}", t.claims);
    assert!(authorize(&with, Action::Destroy, &prod).allowed);

    let without = sign_in(&v, "carol");
    assert_eq!(without.claims["amr"], json!(["pwd"]));
    let p = cfg.principal(&without.claims).unwrap();
    let d = authorize(&p, Action::Destroy, &prod);
    assert!(!d.allowed);
    assert!(d.reason.contains("multi-factor"), "{}", d.reason);
    // Non-production work needs no MFA.
    assert!(authorize(&p, Action::Destroy, &Target::tenant("stmarys", false)).allowed);
}

#[test]
fn replayed_and_expired_real_tokens_are_refused() {
    let Some(idp) = idp() else { return };
    let v = Verifier::discover(&idp.issuer, "careplane-cli", now()).unwrap();
    let t = sign_in(&v, "alice");
    let token = t.id_token.expose_secret();
    let nonce = t.claims["nonce"].as_str().unwrap();
    // finish_login accepted it with its nonce; the same token again is a replay.
    assert_eq!(
        token_err(v.verify_id_token(token, Some(nonce), now())),
        TokenError::NonceReplayed
    );
    assert_eq!(
        token_err(v.verify_id_token(token, Some("another-sign-in"), now())),
        TokenError::NonceMismatch
    );
    // The same real token after its expiry (plus the leeway).
    let exp = t.claims["exp"].as_i64().unwrap();
    let later = (exp + 61) * 1_000_000;
    assert!(matches!(
        token_err(v.verify_id_token(token, None, later)),
        TokenError::Expired { .. }
    ));
    // Within the leeway it still passes.
    v.verify_id_token(token, None, (exp + 30) * 1_000_000)
        .unwrap();
}

#[test]
fn wrong_audience_and_wrong_issuer_are_refused() {
    let Some(idp) = idp() else { return };
    // A real token issued to another application.
    let other = Verifier::discover(&idp.issuer, "other-app", now()).unwrap();
    let t = sign_in(&other, "carol;mfa");
    let ours = Verifier::discover(&idp.issuer, "careplane-cli", now()).unwrap();
    assert!(matches!(
        token_err(ours.verify_id_token(t.id_token.expose_secret(), None, now())),
        TokenError::WrongAudience { .. }
    ));
    // Signed by the provider's own key, claiming another issuer.
    let n = now() / 1_000_000;
    let forged = idp.sign(
        json!({"iss": "http://127.0.0.1:1/evil", "aud": "careplane-cli", "sub": "carol",
               "exp": n + 300, "iat": n}),
        "RS256",
        None,
        false,
    );
    assert!(matches!(
        token_err(ours.verify_id_token(&forged, None, now())),
        TokenError::WrongIssuer { .. }
    ));
    // The same with the right issuer passes: the refusal above was the issuer's.
    let good = idp.sign(
        json!({"iss": idp.issuer, "aud": "careplane-cli", "sub": "carol", "exp": n + 300, "iat": n}),
        "ES256",
        None,
        false,
    );
    ours.verify_id_token(&good, None, now()).unwrap();
    // Not yet valid (nbf two minutes ahead) and long expired, both signed by the provider.
    let early = idp.sign(
        json!({"iss": idp.issuer, "aud": "careplane-cli", "sub": "carol", "exp": n + 600, "nbf": n + 120}),
        "EdDSA",
        None,
        false,
    );
    assert!(matches!(
        token_err(ours.verify_id_token(&early, None, now())),
        TokenError::NotYetValid(_)
    ));
    let old = idp.sign(
        json!({"iss": idp.issuer, "aud": "careplane-cli", "sub": "carol", "exp": n - 3600}),
        "RS256",
        None,
        false,
    );
    assert!(matches!(
        token_err(ours.verify_id_token(&old, None, now())),
        TokenError::Expired { .. }
    ));
}

#[test]
fn unsigned_resigned_hs256_and_unknown_kid_tokens_are_refused() {
    let Some(idp) = idp() else { return };
    let v = Verifier::discover(&idp.issuer, "careplane-cli", now()).unwrap();
    let t = sign_in(&v, "carol;mfa");
    let token = t.id_token.expose_secret().to_string();
    let parts: Vec<&str> = token.split('.').collect();

    // alg: none, no signature, the real payload.
    let none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_eq!(
        token_err(v.verify_id_token(&none, None, now())),
        TokenError::UnsupportedAlg("none".into())
    );
    // HS256 "signed" with the provider's public RSA key as the HMAC secret.
    let jwks: serde_json::Value = serde_json::from_str(
        &ureq::get(&v.metadata.jwks_uri)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let rsa = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap();
    let head = B64.encode(json!({"alg": "HS256", "kid": rsa["kid"]}).to_string());
    let input = format!("{head}.{}", parts[1]);
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, rsa.to_string().as_bytes()),
        input.as_bytes(),
    );
    let hs = format!("{input}.{}", B64.encode(mac.as_ref()));
    assert_eq!(
        token_err(v.verify_id_token(&hs, None, now())),
        TokenError::UnsupportedAlg("HS256".into())
    );
    // The real token with its payload edited (groups added): the signature breaks.
    let mut claims = t.claims.clone();
    claims["groups"] = json!(["careplane-admins"]);
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(claims.to_string()),
        parts[2]
    );
    assert!(matches!(
        token_err(v.verify_id_token(&edited, None, now())),
        TokenError::BadSignature(_)
    ));
    // Re-signed with another key under the provider's kid, for every algorithm.
    let n = now() / 1_000_000;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let resigned = idp.sign(
            json!({"iss": idp.issuer, "aud": "careplane-cli", "sub": "carol", "exp": n + 300}),
            alg,
            None,
            true,
        );
        assert!(
            matches!(
                token_err(v.verify_id_token(&resigned, None, now())),
                TokenError::BadSignature(_)
            ),
            "{alg}"
        );
    }
    // A kid the provider does not have: one refetch of the JWKS, then refused;
    // a second unknown kid right after does not refetch again.
    let fetches = v.jwks_fetches();
    let later = now() + 61 * 1_000_000;
    let unknown = idp.sign(
        json!({"iss": idp.issuer, "aud": "careplane-cli", "sub": "carol", "exp": n + 300}),
        "RS256",
        Some("rotated-away"),
        false,
    );
    assert_eq!(
        token_err(v.verify_id_token(&unknown, None, later)),
        TokenError::UnknownKid("rotated-away".into())
    );
    assert_eq!(v.jwks_fetches(), fetches + 1);
    assert!(matches!(
        token_err(v.verify_id_token(&unknown, None, later + 1)),
        TokenError::UnknownKid(_)
    ));
    assert_eq!(v.jwks_fetches(), fetches + 1);
}

#[test]
fn access_tokens_are_checked_for_the_api_audience() {
    let Some(idp) = idp() else { return };
    let v = Verifier::discover(&idp.issuer, "careplane-cli", now()).unwrap();
    let n = now() / 1_000_000;
    let at = |aud: &str| {
        idp.sign(
            json!({"iss": idp.issuer, "aud": aud, "sub": "svc", "exp": n + 300, "client_id": "x"}),
            "ES256",
            None,
            false,
        )
    };
    let claims = v
        .verify_access_token(&at("careplane-api"), "careplane-api", now())
        .unwrap();
    assert_eq!(claims["sub"], "svc");
    assert!(matches!(
        token_err(v.verify_access_token(&at("billing-api"), "careplane-api", now())),
        TokenError::WrongAudience { .. }
    ));
}

#[test]
fn discovery_refuses_an_issuer_that_does_not_match() {
    let Some(idp) = idp() else { return };
    // The same provider reached under another spelling of its address.
    let other = idp.issuer.replace("127.0.0.1", "localhost");
    let err = Verifier::discover(&other, "careplane-cli", now())
        .err()
        .expect("a mismatching issuer is refused");
    assert!(err.to_string().contains("discovery names issuer"), "{err}");
}

/// A device-code sign-in (RFC 8628) as `hint`: the CLI's half here, the
/// user's (the provider's pages, `approve` or abort) in another thread.
fn device_sign_in(v: &Verifier, hint: &str, approve: bool) -> Result<Tokens, Error> {
    let login = v
        .start_device_login("openid email groups", &[("login_hint", hint)])
        .unwrap();
    assert!(!login.user_code.is_empty());
    assert!(login.verification_uri.starts_with(&v.metadata.issuer));
    let url = login.verification_uri_complete.clone().unwrap();
    let user = std::thread::spawn(move || device_browse(&url, approve));
    let r = v.finish_device_login(login, Duration::from_secs(60), now);
    user.join().unwrap();
    r
}

#[test]
fn device_code_sign_in_yields_a_verified_id_token() {
    let Some(idp) = idp() else { return };
    let v = Verifier::discover(&idp.issuer, "careplane-cli", now()).unwrap();
    assert!(v.metadata.device_authorization_endpoint.is_some());
    let t = device_sign_in(&v, "carol;mfa", true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.claims["sub"], "carol");
    assert_eq!(t.claims["aud"], "careplane-cli");
    assert_eq!(t.claims["iss"], idp.issuer.as_str());
    let p = config(&idp.issuer, "careplane-cli")
        .principal(&t.claims)
        .unwrap();
    assert_eq!(p.id, "carol");
    assert!(p.mfa, "{}", t.claims);
    assert_eq!(p.bindings[0].role, Role::PlatformAdmin);
    // The token is what a stored session presents later.
    v.verify_id_token(t.id_token.expose_secret(), None, now())
        .unwrap();
    // Verified like a browser sign-in's: after its expiry it is refused.
    let later = (t.claims["exp"].as_i64().unwrap() + 61) * 1_000_000;
    assert!(matches!(
        token_err(v.verify_id_token(t.id_token.expose_secret(), None, later)),
        TokenError::Expired { .. }
    ));
    // Tokens never show in Debug (they end up in error chains and logs).
    assert!(!format!("{t:?}").contains(t.id_token.expose_secret()));
}

#[test]
fn refused_and_expired_device_codes_are_clear_errors() {
    let Some(idp) = idp() else { return };
    let v = Verifier::discover(&idp.issuer, "careplane-cli", now()).unwrap();
    match device_sign_in(&v, "alice", false) {
        Err(Error::AuthFailed(m)) => {
            assert!(m.contains("refused") && m.contains("access_denied"), "{m}")
        }
        other => panic!("an aborted device sign-in: {other:?}"),
    }
    // careplane-short's device codes expire after 2 s (provider.mjs); nobody
    // enters this one.
    let v = Verifier::discover(&idp.issuer, "careplane-short", now()).unwrap();
    let login = v
        .start_device_login("openid email groups", &[("login_hint", "alice")])
        .unwrap();
    assert_eq!(login.expires_in, 2);
    let d = format!("{login:?}");
    match v.finish_device_login(login, Duration::from_secs(60), now) {
        Err(Error::AuthFailed(m)) => assert!(m.contains("expired"), "{m}"),
        other => panic!("an expired device code: {other:?}"),
    }
    assert!(!d.contains("device_code"), "{d}");
}

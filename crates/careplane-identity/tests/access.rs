//! Just-in-time elevation, break-glass and access reviews on a real
//! access.db, with time passed in.

use careplane_audit::ActorKind;
use careplane_identity::{
    authorize, totp, Action, Binding, Error, Principal, ReviewDecision, Role, Scope, Source, Store,
    Target,
};
use secrecy::{ExposeSecret, SecretSlice, SecretString};

const T0: i64 = 1_780_000_000 * 1_000_000;
const MIN: i64 = 60 * 1_000_000;

fn user(id: &str, role: Role, mfa: bool) -> Principal {
    Principal {
        id: id.into(),
        kind: ActorKind::User,
        auth: "oidc".into(),
        mfa,
        bindings: vec![Binding {
            role,
            scope: Scope::All,
            source: Source::Group {
                group: format!("g-{role}"),
            },
        }],
    }
}

fn refused(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn elevation_needs_another_approver_and_expires_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let alice = user("alice@example.org", Role::Viewer, true);
    let bob = user("bob@example.org", Role::SecurityOfficer, true);
    let prod = Target::tenant("stmarys", true);
    assert!(!authorize(&alice, Action::Apply, &prod).allowed);

    let r = s
        .request(
            &alice,
            Role::PlatformOperator,
            Scope::All,
            3600,
            "INC-42 failover",
            T0,
        )
        .unwrap();
    assert_eq!(r.status, "pending");
    // Pending grants nothing.
    let a = s.with_grants(alice.clone(), T0).unwrap();
    assert!(!authorize(&a, Action::Apply, &prod).allowed);

    // The requester never approves, even holding an approving role (and
    // under another capitalisation of the same id).
    let mut alice_officer = user("Alice@Example.org", Role::SecurityOfficer, true);
    alice_officer.bindings.push(alice.bindings[0].clone());
    let m = refused(s.approve(&r.id, &alice_officer, T0 + MIN));
    assert!(m.contains("cannot approve it"), "{m}");
    // A viewer cannot approve; an officer without MFA cannot either.
    let carol = user("carol@example.org", Role::Viewer, true);
    assert!(refused(s.approve(&r.id, &carol, T0 + MIN)).contains("needs one of the roles"));
    let bob_no_mfa = user("bob@example.org", Role::SecurityOfficer, false);
    assert!(refused(s.approve(&r.id, &bob_no_mfa, T0 + MIN)).contains("multi-factor"));

    let ok = s.approve(&r.id, &bob, T0 + MIN).unwrap();
    assert_eq!(ok.status, "approved");
    assert_eq!(ok.approver.as_deref(), Some("bob@example.org"));
    // Approving twice is refused.
    assert!(refused(s.approve(&r.id, &bob, T0 + 2 * MIN)).contains("not pending"));

    // In force: alice may apply on production (she signed in with MFA),
    // and the audit actor carries the elevation.
    let a = s.with_grants(alice.clone(), T0 + 30 * MIN).unwrap();
    let d = authorize(&a, Action::Apply, &prod);
    assert!(d.allowed, "{}", d.reason);
    let actor = a.actor();
    let e = actor.elevation.expect("elevation in the actor");
    assert_eq!(e.role, "platform-operator");
    assert_eq!(e.approved_by.as_deref(), Some("bob@example.org"));
    assert!(!e.break_glass);

    // One hour after approval it is gone, with nobody sweeping.
    let a = s.with_grants(alice.clone(), T0 + MIN + 60 * MIN).unwrap();
    assert!(!authorize(&a, Action::Apply, &prod).allowed);
    assert_eq!(s.get(&r.id, T0 + 61 * MIN).unwrap().status, "expired");
}

#[test]
fn requests_are_checked_and_admin_elevation_needs_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let alice = user("alice", Role::Viewer, true);
    let e = s.request(&alice, Role::PlatformOperator, Scope::All, 3600, "  ", T0);
    assert!(
        matches!(e, Err(Error::Invalid { ref field, .. }) if field == "reason"),
        "{e:?}"
    );
    let e = s.request(
        &alice,
        Role::PlatformOperator,
        Scope::All,
        13 * 3600,
        "x",
        T0,
    );
    assert!(
        matches!(e, Err(Error::Invalid { ref field, .. }) if field == "duration"),
        "{e:?}"
    );
    let e = s.request(&alice, Role::TenantOperator, Scope::All, 3600, "x", T0);
    assert!(
        matches!(e, Err(Error::Invalid { ref field, .. }) if field == "tenants"),
        "{e:?}"
    );
    let nobody = Principal {
        bindings: vec![],
        ..user("mallory", Role::Viewer, true)
    };
    refused(s.request(&nobody, Role::Viewer, Scope::All, 60, "x", T0));

    let r = s
        .request(
            &alice,
            Role::PlatformAdmin,
            Scope::All,
            600,
            "key rotation",
            T0,
        )
        .unwrap();
    let m = refused(s.approve(&r.id, &user("bob", Role::SecurityOfficer, true), T0));
    assert!(m.contains("only a platform-admin"), "{m}");
    s.approve(&r.id, &user("root-admin", Role::PlatformAdmin, true), T0)
        .unwrap();

    // A tenant-scoped grant covers its tenants only.
    let r = s
        .request(
            &alice,
            Role::TenantOperator,
            Scope::Tenants(vec!["stmarys".into()]),
            600,
            "CHG-7",
            T0,
        )
        .unwrap();
    s.approve(&r.id, &user("bob", Role::SecurityOfficer, true), T0)
        .unwrap();
    let a = s.with_grants(alice.clone(), T0 + MIN).unwrap();
    assert!(authorize(&a, Action::Modules, &Target::tenant("stmarys", false)).allowed);
    // A request nobody approved goes stale after a day.
    let r = s
        .request(&alice, Role::PlatformOperator, Scope::All, 600, "later", T0)
        .unwrap();
    assert_eq!(s.get(&r.id, T0 + 25 * 60 * MIN).unwrap().status, "stale");
    assert!(refused(s.approve(
        &r.id,
        &user("bob", Role::SecurityOfficer, true),
        T0 + 25 * 60 * MIN
    ))
    .contains("stale"));
}

const SEED: &[u8] = b"12345678901234567890";
const PASSWORD: &str = "correct horse battery staple";

fn glass(
    s: &Store,
    password: &str,
    code: &str,
    now: i64,
) -> Result<(Principal, careplane_identity::AccessRequest), Error> {
    s.break_glass(
        "oncall",
        &SecretString::from(password.to_string()),
        &SecretString::from(code.to_string()),
        &SecretSlice::from(SEED.to_vec()),
        Role::PlatformAdmin,
        3600,
        "IdP down during INC-99",
        "tty:/dev/pts/1",
        now,
    )
}

#[test]
fn break_glass_is_immediate_flagged_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.set_break_glass_account("oncall", &SecretString::from(PASSWORD.to_string()))
        .unwrap();
    let unix = (T0 / 1_000_000) as u64;
    let code = totp::code(SEED, unix, 30, 6);

    let (p, r) = glass(&s, PASSWORD, &code, T0).unwrap();
    assert_eq!(
        (p.id.as_str(), p.auth.as_str(), p.mfa),
        ("break-glass:oncall", "break-glass", true)
    );
    assert!(r.break_glass && r.needs_review && r.approver.is_none());
    assert!(authorize(&p, Action::Destroy, &Target::tenant("stmarys", true)).allowed);
    let e = p.actor().elevation.unwrap();
    assert!(e.break_glass);
    assert_eq!(e.reason.as_deref(), Some("IdP down during INC-99"));

    // The same code again (same time step) is a replay.
    let m = glass(&s, PASSWORD, &code, T0 + 1_000_000)
        .unwrap_err()
        .to_string();
    assert!(m.contains("failed"), "{m}");
    // The next step's code works.
    let next = totp::code(SEED, unix + 30, 30, 6);
    glass(&s, PASSWORD, &next, T0 + 30 * 1_000_000).unwrap();

    // Wrong passwords: the error does not say which factor, and after
    // five failures (one above) the account is locked out for a while,
    // even with the right password.
    for i in 0..4 {
        let e = glass(&s, "wrong password guess!!", &next, T0 + 40 * 1_000_000 + i).unwrap_err();
        assert!(matches!(e, Error::AuthFailed(_)), "{e:?}");
    }
    let later = totp::code(SEED, unix + 60, 30, 6);
    let e = glass(&s, PASSWORD, &later, T0 + 41 * 1_000_000).unwrap_err();
    assert!(matches!(e, Error::RateLimited { .. }), "{e:?}");
    assert!(e.to_string().contains("try again in"), "{e}");

    // Neither the password nor the seed is in access.db.
    let db = std::fs::read(dir.path().join("access.db")).unwrap();
    let wal = std::fs::read(dir.path().join("access.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(PASSWORD) && !text.contains("12345678901234567890"));
    }
}

/// A break-glass session (for later commands while the IdP is down) is the
/// break-glass principal while its elevation is in force, and nothing
/// after the elevation expires; an altered secret or a normal grant's id
/// is refused; only the secret's hash is stored.
#[test]
fn break_glass_sessions_last_as_long_as_the_elevation() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.set_break_glass_account("oncall", &SecretString::from(PASSWORD.to_string()))
        .unwrap();
    let code = totp::code(SEED, (T0 / 1_000_000) as u64, 30, 6);
    let (_, r) = glass(&s, PASSWORD, &code, T0).unwrap();
    let token = s.open_break_glass_session(&r.id).unwrap();
    assert!(token
        .expose_secret()
        .starts_with(&format!("cpbg_{}_", r.id)));

    let p = s.break_glass_session(&token, T0 + 60 * 1_000_000).unwrap();
    assert_eq!(
        (p.id.as_str(), p.auth.as_str(), p.mfa),
        ("break-glass:oncall", "break-glass", true)
    );
    assert!(authorize(&p, Action::Destroy, &Target::tenant("stmarys", true)).allowed);
    assert!(p.actor().elevation.unwrap().break_glass);

    let mut altered = token.expose_secret().to_string();
    let last = altered.pop().unwrap();
    altered.push(if last == '0' { '1' } else { '0' });
    let e = s
        .break_glass_session(&SecretString::from(altered), T0)
        .unwrap_err();
    assert!(e.to_string().contains("not valid"), "{e}");
    let e = s
        .break_glass_session(&SecretString::from("cpbg_nonsense".to_string()), T0)
        .unwrap_err();
    assert!(
        e.to_string().contains("malformed") || e.to_string().contains("not valid"),
        "{e}"
    );

    // The elevation lasts an hour; so does the session.
    let e = s
        .break_glass_session(&token, T0 + 3601 * 1_000_000)
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");

    // Sessions are for break-glass elevations only.
    let alice = user("alice", Role::Viewer, true);
    let req = s
        .request(
            &alice,
            Role::PlatformOperator,
            Scope::All,
            3600,
            "INC-1",
            T0,
        )
        .unwrap();
    assert!(s.open_break_glass_session(&req.id).is_err());

    let db = std::fs::read(dir.path().join("access.db")).unwrap();
    let wal = std::fs::read(dir.path().join("access.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!String::from_utf8_lossy(&bytes).contains(token.expose_secret()));
    }
}

#[test]
fn access_review_lists_holdings_and_records_decisions_as_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.set_break_glass_account("oncall", &SecretString::from(PASSWORD.to_string()))
        .unwrap();
    let alice = user("alice", Role::Viewer, true);
    let bob = user("bob", Role::SecurityOfficer, true);
    let r = s
        .request(
            &alice,
            Role::PlatformOperator,
            Scope::All,
            7200,
            "INC-1",
            T0,
        )
        .unwrap();
    s.approve(&r.id, &bob, T0).unwrap();
    let code = totp::code(SEED, (T0 / 1_000_000) as u64, 30, 6);
    let (bg, bgr) = glass(&s, PASSWORD, &code, T0).unwrap();

    // Uses: alice applies with her grant, carol reads through her group.
    let a = s.with_grants(alice.clone(), T0 + MIN).unwrap();
    let d = authorize(&a, Action::Apply, &Target::platform(false));
    s.note_use(&a.id, d.binding.as_ref().unwrap(), T0 + 5 * MIN)
        .unwrap();
    let carol = user("carol", Role::Viewer, false);
    let d = authorize(&carol, Action::Read, &Target::platform(false));
    s.note_use("carol", d.binding.as_ref().unwrap(), T0 + 7 * MIN)
        .unwrap();

    let items = s.review(T0 + 10 * MIN).unwrap();
    let grant = items
        .iter()
        .find(|i| i.source == format!("grant:{}", r.id))
        .unwrap();
    assert_eq!(grant.principal, "alice");
    assert_eq!(
        grant.last_used.as_deref(),
        Some(careplane_identity::time(T0 + 5 * MIN).as_str())
    );
    let glass_item = items
        .iter()
        .find(|i| i.source == format!("break-glass:{}", bgr.id))
        .unwrap();
    assert!(glass_item.needs_review);
    assert_eq!(glass_item.principal, bg.id);
    let group = items.iter().find(|i| i.principal == "carol").unwrap();
    assert_eq!(group.source, "group:g-viewer");

    // Only a reviewer role; never one's own access.
    refused(s.record_review(
        &carol,
        "alice",
        Role::PlatformOperator,
        &grant.source,
        ReviewDecision::Keep,
        "",
        T0,
    ));
    let m = refused(s.record_review(
        &user("alice", Role::SecurityOfficer, true),
        "alice",
        Role::PlatformOperator,
        &grant.source,
        ReviewDecision::Keep,
        "",
        T0,
    ));
    assert!(m.contains("own access"), "{m}");
    // Revoking the grant ends it now; keeping the break-glass clears its flag.
    let rec = s
        .record_review(
            &bob,
            "alice",
            Role::PlatformOperator,
            &grant.source,
            ReviewDecision::Revoke,
            "incident closed",
            T0 + 11 * MIN,
        )
        .unwrap();
    assert!(rec.effect.contains("revoked"), "{}", rec.effect);
    let a = s.with_grants(alice.clone(), T0 + 12 * MIN).unwrap();
    assert!(!authorize(&a, Action::Apply, &Target::platform(false)).allowed);
    s.record_review(
        &bob,
        &bg.id,
        Role::PlatformAdmin,
        &glass_item.source,
        ReviewDecision::Keep,
        "justified: INC-99",
        T0 + 12 * MIN,
    )
    .unwrap();
    let rec = s
        .record_review(
            &bob,
            "carol",
            Role::Viewer,
            "group:g-viewer",
            ReviewDecision::Revoke,
            "left the team",
            T0 + 13 * MIN,
        )
        .unwrap();
    assert!(rec.effect.contains("IdP group g-viewer"), "{}", rec.effect);
    let after = s.review(T0 + 14 * MIN).unwrap();
    assert!(!after.iter().any(|i| i.needs_review));
    assert!(after
        .iter()
        .find(|i| i.principal == "carol")
        .unwrap()
        .last_review
        .as_deref()
        .unwrap()
        .starts_with("revoke by bob"));
    // An unknown holding cannot be reviewed.
    assert!(matches!(
        s.record_review(
            &bob,
            "zed",
            Role::Viewer,
            "group:x",
            ReviewDecision::Keep,
            "",
            T0
        ),
        Err(Error::NotFound(_))
    ));
    // The evidence, oldest first.
    let ev = s.reviews().unwrap();
    assert_eq!(ev.len(), 3);
    assert_eq!(
        (ev[0].reviewer.as_str(), ev[0].decision),
        ("bob", ReviewDecision::Revoke)
    );
    assert_eq!(ev[1].note, "justified: INC-99");
}

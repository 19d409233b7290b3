//! `careplane access …` and `careplane login` (issue 20, M12;
//! docs/design/0013): just-in-time elevation requests and approvals, the
//! access review, and OIDC sign-in with PKCE. Each command appends exactly
//! one audit entry with the actor who ran it, also when it is refused.
//!
//! Who runs a command: the signed-in user of the session file (written by
//! `careplane login`, checked against the IdP on every use), with their
//! grants in force; without a session, root on the host is the local root
//! operator; anyone else must sign in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use careplane_engine::careplane_audit::{Actor, ActorKind, Outcome, Status as AuditStatus};
use careplane_engine::Engine;
use careplane_identity::oidc::Verifier;
use careplane_identity::{
    IdentityConfig, Principal, ReviewDecision, Role, Scope, Store as AccessStore,
};
use clap::{Args, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::{load, print_json, write_out, Files, Output};

#[derive(Subcommand)]
pub enum AccessCommand {
    /// Ask for a role for a while; a different person with an approving
    /// role must approve it (`careplane access approve <id>`).
    Request {
        #[command(flatten)]
        files: Files,
        /// viewer, tenant-operator, platform-operator, security-officer or platform-admin.
        #[arg(long)]
        role: String,
        /// Limit the elevation to this tenant (repeatable; required for tenant-operator).
        #[arg(long = "tenant", value_name = "TENANT")]
        tenants: Vec<String>,
        /// How long the grant lasts once approved: 30m, 1h, 2h30m (at most 12h).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why (a ticket or incident); recorded in the audit log.
        #[arg(long)]
        reason: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Approve someone else's pending request (security-officer or
    /// platform-admin, signed in with MFA).
    Approve {
        #[command(flatten)]
        files: Files,
        id: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Every request and grant, newest first, with its state now.
    List {
        #[command(flatten)]
        files: Files,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Who holds what, since and until when, last used; with --decide,
    /// record a keep/revoke decision on one holding as evidence.
    Review {
        #[command(flatten)]
        files: Files,
        #[arg(long, value_enum, requires_all = ["principal", "role", "source"])]
        decide: Option<Decide>,
        /// The holder under review (with --decide).
        #[arg(long)]
        principal: Option<String>,
        /// The role under review (with --decide).
        #[arg(long)]
        role: Option<String>,
        /// The holding's source as the list shows it: grant:<id>,
        /// break-glass:<id>, group:<name> (with --decide).
        #[arg(long)]
        source: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Create or replace a local break-glass account (for when the identity
    /// provider is down): reads the password (16+ characters) from the
    /// first line of stdin, generates a TOTP seed kept in the vault and
    /// prints its otpauth:// URI once, for an authenticator app.
    BreakGlassSetup {
        #[command(flatten)]
        files: Files,
        #[arg(long)]
        account: String,
    },
    /// Break-glass: immediate platform-admin for at most 1h with the local
    /// account's password and TOTP code (two lines on stdin). Needs a reason,
    /// is audited and flagged for review; failures are rate-limited.
    BreakGlass {
        #[command(flatten)]
        files: Files,
        #[arg(long)]
        account: String,
        #[arg(long)]
        reason: String,
        #[arg(long = "for", value_name = "DURATION", default_value = "1h")]
        duration: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum Decide {
    Keep,
    Revoke,
}

#[derive(Args)]
pub struct LoginArgs {
    #[command(flatten)]
    files: Files,
    /// Sign in with a device code (RFC 8628) instead of a browser on this
    /// machine: open the address shown on stderr on any device, enter the
    /// code, and this command picks the session up (for SSH sessions and
    /// hosts without a browser).
    #[arg(long)]
    device: bool,
    /// How long to wait for the browser's redirect (or, with --device, for
    /// the code to be entered; at most as long as the provider's code lives).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    timeout: String,
}

/// The session file: `$CAREPLANE_SESSION`, or
/// `$XDG_CONFIG_HOME/careplane/session.json` (`~/.config/…`).
pub(crate) fn session_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAREPLANE_SESSION") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(base.join("careplane").join("session.json"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn config_path(engine: &Engine) -> PathBuf {
    engine.data_dir().join("identity.json")
}

fn config(engine: &Engine) -> Result<IdentityConfig> {
    let path = config_path(engine);
    IdentityConfig::load(&path).with_context(|| {
        format!(
            "the platform's identity provider is configured in {}",
            path.display()
        )
    })
}

/// Who runs this command (see the module's comment).
fn principal(engine: &Engine, store: &AccessStore) -> Result<Principal> {
    let path = session_path()?;
    let p = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let session: Value = serde_json::from_str(&text)
                .with_context(|| format!("session file {} is not JSON", path.display()))?;
            if session["kind"] == "break-glass" {
                return break_glass_principal(store, &session, &path);
            }
            let cfg = config(engine)?;
            if session["issuer"] != cfg.issuer.as_str() {
                bail!(
                    "session {} is for issuer {}, the platform's is {}: run careplane login",
                    path.display(),
                    session["issuer"],
                    cfg.issuer
                );
            }
            let token = session["id_token"]
                .as_str()
                .with_context(|| format!("session file {} has no id_token", path.display()))?;
            // Failed authentications are rate-limited per source (the local
            // uid) and per claimed identity (the token's unverified subject).
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let source = format!("local-uid:{}", unsafe { libc::geteuid() });
            let claimed = careplane_identity::oidc::claimed_subject(token);
            store.check_rate(&source, &claimed, now())?;
            let v = Verifier::discover(&cfg.issuer, &cfg.client_id, now())?;
            let claims = match v.verify_id_token(token, None, now()) {
                Ok(c) => c,
                Err(e) => {
                    store.fail_rate(&source, &claimed, now())?;
                    return Err(careplane_identity::Error::AuthFailed(format!(
                        "the session in {} is no longer valid ({e}): run careplane login",
                        path.display()
                    ))
                    .into());
                }
            };
            cfg.principal(&claims)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            if uid != 0 {
                bail!(
                    "not signed in (no {}): run careplane login; only root on the host acts without signing in",
                    path.display()
                );
            }
            Principal::local_root(uid)
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(store.with_grants(p, now())?)
}

/// The principal an engine operation runs as: without a session file, the
/// host's principal (root is the local root operator, audited as such;
/// anyone else holds no role); with one, the verified OIDC user plus the
/// grants in force. A session that does not verify (or an access.db that
/// cannot be read) is said on stderr and yields a principal holding no
/// role, so that the engine refuses the operation and audits the refusal.
pub fn caller(engine: &Engine) -> Principal {
    let session = match session_path() {
        Ok(p) => p,
        Err(e) => return unauthenticated(e),
    };
    if !session.exists() {
        return careplane_engine::host_principal();
    }
    match AccessStore::open(engine.data_dir())
        .map_err(anyhow::Error::from)
        .and_then(|store| principal(engine, &store))
    {
        Ok(p) => p,
        Err(e) => unauthenticated(e),
    }
}

/// The principal of a break-glass session file (written by `careplane
/// access break-glass`): the account with its elevation, while that is in
/// force. Failures are rate-limited like an OIDC session's.
fn break_glass_principal(store: &AccessStore, session: &Value, path: &Path) -> Result<Principal> {
    let token = session["token"]
        .as_str()
        .with_context(|| format!("break-glass session file {} has no token", path.display()))?;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let source = format!("local-uid:{}", unsafe { libc::geteuid() });
    let claimed = format!("break-glass:{}", session["account"].as_str().unwrap_or("?"));
    store.check_rate(&source, &claimed, now())?;
    match store.break_glass_session(&SecretString::from(token.to_string()), now()) {
        Ok(p) => Ok(p),
        Err(e) => {
            store.fail_rate(&source, &claimed, now())?;
            Err(careplane_identity::Error::AuthFailed(format!(
                "{e} (session file {}): sign in again with careplane login, or run careplane access break-glass",
                path.display()
            ))
            .into())
        }
    }
}

fn unauthenticated(why: anyhow::Error) -> Principal {
    eprintln!("careplane: not signed in: {}", crate::error_line(&why));
    Principal {
        id: "unauthenticated".into(),
        kind: ActorKind::User,
        auth: "none".into(),
        mfa: false,
        bindings: Vec::new(),
    }
}

fn outcome(r: &Result<Value>) -> Outcome {
    match r {
        Ok(_) => Outcome {
            status: AuditStatus::Succeeded,
            message: None,
        },
        Err(e) => Outcome {
            status: match e.downcast_ref::<careplane_identity::Error>() {
                Some(careplane_identity::Error::Refused(_))
                | Some(careplane_identity::Error::AuthFailed(_))
                | Some(careplane_identity::Error::RateLimited { .. }) => AuditStatus::Refused,
                _ => AuditStatus::Failed,
            },
            message: Some(crate::error_line(e)),
        },
    }
}

/// Runs `f` as the command's principal and appends its one audit entry,
/// whatever happens (an unauthenticated caller is recorded as such).
fn audited(
    engine: &Engine,
    action: &str,
    target: &str,
    tenant: Option<&str>,
    parameters: Value,
    f: impl FnOnce(&AccessStore, &Principal) -> Result<Value>,
) -> Result<Value> {
    let store = AccessStore::open(engine.data_dir())?;
    let (actor, r): (Actor, Result<Value>) = match principal(engine, &store) {
        Ok(p) => (p.actor(), f(&store, &p)),
        Err(e) => (
            Actor {
                kind: ActorKind::User,
                id: "unauthenticated".into(),
                auth: "none".into(),
                mfa: false,
                elevation: None,
            },
            Err(e),
        ),
    };
    engine.audit_record_as(actor, action, target, tenant, parameters, outcome(&r))?;
    r
}

fn role(s: &str) -> Result<Role> {
    s.parse::<Role>()
        .map_err(|e| anyhow::anyhow!("--role: {e}"))
}

pub fn run(cmd: AccessCommand) -> Result<ExitCode> {
    match cmd {
        AccessCommand::Request {
            files,
            role: r,
            tenants,
            duration,
            reason,
            output,
        } => {
            let engine = load(&files)?;
            let role = role(&r)?;
            let secs = careplane_identity::parse_duration(&duration)
                .map_err(|e| anyhow::anyhow!("--for: {e}"))?;
            let scope = if tenants.is_empty() {
                Scope::All
            } else {
                Scope::Tenants(tenants.clone())
            };
            let params =
                json!({"role": role, "tenants": tenants, "seconds": secs, "reason": reason});
            let v = audited(
                &engine,
                "access.request",
                "access",
                tenants.first().map(String::as_str),
                params,
                |store, p| {
                    let req = store.request(p, role, scope, secs, &reason, now())?;
                    Ok(serde_json::to_value(req)?)
                },
            )?;
            match output {
                Output::Json => print_json(&v)?,
                Output::Text => outln!(
                    "request {} for {} ({}s) is pending: another person approves it with `careplane access approve {}`",
                    v["id"].as_str().unwrap_or("?"),
                    v["role"].as_str().unwrap_or("?"),
                    secs,
                    v["id"].as_str().unwrap_or("?")
                ),
            }
        }
        AccessCommand::Approve { files, id, output } => {
            let engine = load(&files)?;
            let v = audited(
                &engine,
                "access.approve",
                &format!("access/{id}"),
                None,
                json!({"request": id}),
                |store, p| Ok(serde_json::to_value(store.approve(&id, p, now())?)?),
            )?;
            match output {
                Output::Json => print_json(&v)?,
                Output::Text => outln!(
                    "approved {}: {} is {} until {}",
                    id,
                    v["requester"].as_str().unwrap_or("?"),
                    v["role"].as_str().unwrap_or("?"),
                    v["expires"].as_str().unwrap_or("?")
                ),
            }
        }
        AccessCommand::List { files, output } => {
            let engine = load(&files)?;
            let v = audited(
                &engine,
                "access.list",
                "access",
                None,
                json!({}),
                |store, p| {
                    let d = careplane_identity::authorize(
                        p,
                        careplane_identity::Action::Read,
                        &careplane_identity::Target::platform(false),
                    );
                    if !d.allowed {
                        return Err(careplane_identity::Error::Refused(d.reason).into());
                    }
                    Ok(serde_json::to_value(store.list(now())?)?)
                },
            )?;
            match output {
                Output::Json => print_json(&v)?,
                Output::Text => {
                    for r in v.as_array().into_iter().flatten() {
                        outln!(
                            "{:<16} {:<10} {:<28} {:<18} until {:<22} {}",
                            r["id"].as_str().unwrap_or(""),
                            r["status"].as_str().unwrap_or(""),
                            r["requester"].as_str().unwrap_or(""),
                            r["role"].as_str().unwrap_or(""),
                            r["expires"].as_str().unwrap_or("-"),
                            r["reason"].as_str().unwrap_or("")
                        );
                    }
                }
            }
        }
        AccessCommand::Review {
            files,
            decide,
            principal: subject,
            role: r,
            source,
            note,
            output,
        } => {
            let engine = load(&files)?;
            let v = match decide {
                None => audited(
                    &engine,
                    "access.review",
                    "access",
                    None,
                    json!({}),
                    |store, p| {
                        let d = careplane_identity::authorize(
                            p,
                            careplane_identity::Action::AccessReview,
                            &careplane_identity::Target::platform(false),
                        );
                        if !d.allowed {
                            return Err(careplane_identity::Error::Refused(d.reason).into());
                        }
                        Ok(serde_json::to_value(store.review(now())?)?)
                    },
                )?,
                Some(decision) => {
                    let (subject, source) =
                        (subject.unwrap_or_default(), source.unwrap_or_default());
                    let role = role(&r.unwrap_or_default())?;
                    let decision = match decision {
                        Decide::Keep => ReviewDecision::Keep,
                        Decide::Revoke => ReviewDecision::Revoke,
                    };
                    audited(
                        &engine,
                        "access.review.decide",
                        &format!("access/{subject}"),
                        None,
                        json!({"principal": subject, "role": role, "source": source, "decision": decision, "note": note}),
                        |store, p| {
                            Ok(serde_json::to_value(store.record_review(
                                p,
                                &subject,
                                role,
                                &source,
                                decision,
                                &note,
                                now(),
                            )?)?)
                        },
                    )?
                }
            };
            match output {
                Output::Json => print_json(&v)?,
                Output::Text if decide.is_some() => outln!(
                    "recorded: {} {} of {} ({}): {}",
                    v["decision"].as_str().unwrap_or("?"),
                    v["role"].as_str().unwrap_or("?"),
                    v["principal"].as_str().unwrap_or("?"),
                    v["source"].as_str().unwrap_or("?"),
                    v["effect"].as_str().unwrap_or("")
                ),
                Output::Text => {
                    for i in v.as_array().into_iter().flatten() {
                        outln!(
                            "{:<28} {:<18} {:<28} since {:<22} until {:<22} last used {:<22}{}",
                            i["principal"].as_str().unwrap_or(""),
                            i["role"].as_str().unwrap_or(""),
                            i["source"].as_str().unwrap_or(""),
                            i["since"].as_str().unwrap_or("-"),
                            i["until"].as_str().unwrap_or("-"),
                            i["last_used"].as_str().unwrap_or("never"),
                            if i["needs_review"] == true {
                                "  NEEDS REVIEW"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
        }
        AccessCommand::BreakGlassSetup { files, account } => {
            let engine = load(&files)?;
            let mut seed_uri = None;
            audited(
                &engine,
                "access.break-glass.setup",
                &format!("access/break-glass:{account}"),
                None,
                json!({"account": account}),
                |store, p| {
                    let d = careplane_identity::authorize(
                        p,
                        careplane_identity::Action::AccessChange,
                        &careplane_identity::Target::platform(true),
                    );
                    if !d.allowed {
                        return Err(careplane_identity::Error::Refused(d.reason).into());
                    }
                    let lines = stdin_lines(1)?;
                    let password = SecretString::from(lines[0].clone());
                    store.set_break_glass_account(&account, &password)?;
                    let mut seed = [0u8; 20];
                    getrandom(&mut seed)?;
                    let b32 = base32(&seed);
                    engine.put_access_secret(
                        &format!("break-glass-{account}-totp"),
                        &SecretString::from(b32.clone()),
                    )?;
                    seed_uri = Some(format!(
                        "otpauth://totp/careplane:{account}?secret={b32}&issuer=careplane&digits=6&period=30"
                    ));
                    Ok(Value::Null)
                },
            )?;
            outln!(
                "break-glass account {account} set. Add this to an authenticator app now; it is not shown again:"
            );
            outln!("{}", seed_uri.unwrap_or_default());
        }
        AccessCommand::BreakGlass {
            files,
            account,
            reason,
            duration,
            output,
        } => {
            let engine = load(&files)?;
            let secs = careplane_identity::parse_duration(&duration)
                .map_err(|e| anyhow::anyhow!("--for: {e}"))?;
            let store = AccessStore::open(engine.data_dir())?;
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let source = format!("local-uid:{}", unsafe { libc::geteuid() });
            let result = (|| -> Result<(Principal, Value)> {
                let lines = stdin_lines(2)?;
                let seed = engine
                    .access_secret(&format!("break-glass-{account}-totp"))?
                    .and_then(|s| base32_decode(s.expose_secret()))
                    .unwrap_or_default();
                let (p, req) = store.break_glass(
                    &account,
                    &SecretString::from(lines[0].clone()),
                    &SecretString::from(lines[1].trim().to_string()),
                    &secrecy::SecretSlice::from(seed),
                    Role::PlatformAdmin,
                    secs,
                    &reason,
                    &source,
                    now(),
                )?;
                Ok((p, serde_json::to_value(req)?))
            })();
            let (actor, r) = match result {
                Ok((p, v)) => (p.actor(), Ok(v)),
                Err(e) => (
                    Actor {
                        kind: ActorKind::User,
                        id: format!("break-glass:{account}"),
                        auth: "break-glass".into(),
                        mfa: false,
                        elevation: None,
                    },
                    Err(e),
                ),
            };
            engine.audit_record_as(
                actor,
                "access.break-glass",
                &format!("access/break-glass:{account}"),
                None,
                json!({"account": account, "reason": reason, "seconds": secs, "flagged_for_review": true}),
                outcome(&r),
            )?;
            let v = r?;
            errln!("BREAK-GLASS in force: flagged for review by a security officer (careplane access review).");
            // Later commands run as the break-glass account through a
            // session of their own: the IdP is down, so `careplane login`
            // cannot give one.
            let id = v["id"].as_str().unwrap_or_default();
            let token = store.open_break_glass_session(id)?;
            let path = session_path()?;
            let body = json!({
                "kind": "break-glass",
                "account": account,
                "request": id,
                "expires": v["expires"],
                "token": token.expose_secret(),
            });
            write_session(&path, &body)?;
            errln!(
                "break-glass session in {}: later commands run as break-glass:{account} until it expires or is revoked",
                path.display()
            );
            match output {
                Output::Json => print_json(&v)?,
                Output::Text => outln!(
                    "break-glass {}: {} is platform-admin until {}",
                    v["id"].as_str().unwrap_or("?"),
                    v["requester"].as_str().unwrap_or("?"),
                    v["expires"].as_str().unwrap_or("?")
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first `n` lines of stdin (passwords and codes never come as
/// arguments, which other users can read in /proc).
fn stdin_lines(n: usize) -> Result<Vec<String>> {
    use std::io::BufRead as _;
    let mut lines = Vec::with_capacity(n);
    for line in std::io::stdin().lock().lines().take(n) {
        lines.push(line.context("reading stdin")?);
    }
    if lines.len() < n {
        bail!(
            "expected {n} line(s) on stdin (password{})",
            if n > 1 { ", then the TOTP code" } else { "" }
        );
    }
    Ok(lines)
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding: how authenticator apps take a seed.
fn base32(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(B32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = B32.iter().position(|x| *x == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// `careplane login`: the authorization code flow with PKCE through a
/// loopback redirect; the ID token is kept in the session file (0600).
pub fn login(args: LoginArgs) -> Result<ExitCode> {
    let engine = load(&args.files)?;
    let cfg = config(&engine)?;
    let wait = careplane_identity::parse_duration(&args.timeout)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let path = session_path()?;
    let store = AccessStore::open(engine.data_dir())?;
    let device = args.device;
    let result = (|| -> Result<(Principal, Value)> {
        let v = Verifier::discover(&cfg.issuer, &cfg.client_id, now())?;
        let tokens = sign_in(&v, device, wait)?;
        let p = store.with_grants(cfg.principal(&tokens.claims)?, now())?;
        write_session(
            &path,
            &json!({"issuer": cfg.issuer, "id_token": tokens.id_token.expose_secret()}),
        )?;
        Ok((p, tokens.claims))
    })();
    let (actor, r) = match result {
        Ok((p, claims)) => (p.actor(), Ok(claims)),
        Err(e) => (
            Actor {
                kind: ActorKind::User,
                id: "unauthenticated".into(),
                auth: "oidc".into(),
                mfa: false,
                elevation: None,
            },
            Err(e),
        ),
    };
    engine.audit_record_as(
        actor.clone(),
        "login",
        "session",
        None,
        json!({"issuer": cfg.issuer, "client": cfg.client_id,
               "method": if device { "device-code" } else { "browser" }}),
        outcome(&r),
    )?;
    r?;
    outln!(
        "signed in as {} ({}MFA); session in {}",
        actor.id,
        if actor.mfa { "" } else { "no " },
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A sign-in at `v`'s provider, in a browser (PKCE, loopback redirect) or
/// with a device code; the URL or the code go to stderr.
/// `CAREPLANE_LOGIN_HINT` passes a `login_hint` (which account to sign in).
fn sign_in(v: &Verifier, device: bool, wait: u64) -> Result<careplane_identity::oidc::Tokens> {
    const SCOPE: &str = "openid email groups";
    let mut extra = Vec::new();
    let hint = std::env::var("CAREPLANE_LOGIN_HINT").unwrap_or_default();
    if !hint.is_empty() {
        extra.push(("login_hint", hint.as_str()));
    }
    if device {
        let d = v.start_device_login(SCOPE, &extra)?;
        errln!(
            "To sign in, open {} on any device and enter the code {} (waiting {} s).",
            d.verification_uri,
            d.user_code,
            wait.min(d.expires_in)
        );
        if let Some(complete) = &d.verification_uri_complete {
            errln!("Or open {complete}");
        }
        return Ok(v.finish_device_login(d, Duration::from_secs(wait), now)?);
    }
    let login = v.start_login(SCOPE, &extra)?;
    errln!("Open this address in a browser to sign in (waiting {wait} s):");
    errln!("{}", login.url);
    Ok(v.finish_login(login, Duration::from_secs(wait), now)?)
}

/// `careplane login --server URL`: signs in at the provider the server
/// names (`GET /v1/identity`) and keeps the ID token in the same session
/// file. There is no data directory here, so nothing is audited locally;
/// the server audits what the session then does.
pub fn login_remote(remote: &crate::remote::Remote, args: LoginArgs) -> Result<ExitCode> {
    let wait = careplane_identity::parse_duration(&args.timeout)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let (issuer, client_id) = remote.identity()?;
    let path = session_path()?;
    let v = Verifier::discover(&issuer, &client_id, now())?;
    let tokens = sign_in(&v, args.device, wait)?;
    write_session(
        &path,
        &json!({"issuer": issuer, "id_token": tokens.id_token.expose_secret()}),
    )?;
    outln!(
        "signed in as {} at {issuer} for {}; session in {}",
        tokens.claims["sub"].as_str().unwrap_or("?"),
        remote.base,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The session file holds a bearer token: created 0600, replaced atomically.
fn write_session(path: &Path, body: &Value) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("session path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(body.to_string().as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

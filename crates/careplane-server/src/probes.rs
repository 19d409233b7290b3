//! The server's state and loops: the environment list (refreshed from the engine), one
//! probe task per (environment, probe), the writer that records results in the store and
//! acknowledges them after the flush, and incident detection over the stored minutes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use careplane_engine::{Credentials, Engine, RedisMonitor};
use careplane_probe::schedule::{self, Clock, Scheduled};
use careplane_probe::{Check, HttpCheck, OdooLogin, OdooWrite, PgCheck, RedisCheck, RedisMemory};
use careplane_sla::{
    detect, due_notifications, observe_recovery, DueNotification, Impact, Incident, Outcome,
    SeriesKey, Store,
};
use careplane_spec::SpecSet;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::slo::{critical_probe, environment_kind, slo_for};
use crate::tokens::TokenRecord;
use crate::{incidents, report, Error, Options};

pub(crate) fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-updated under these locks by a panic that matters: the store's
    // durability is its journal's.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A timed step of a journey.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub name: String,
    pub ms: u32,
    pub ok: bool,
}

/// The latest acknowledged (stored and flushed) result of one probe.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Latest {
    pub tenant: String,
    pub environment: String,
    pub probe: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// `up`, `down` or `unknown`.
    pub outcome: String,
    pub latency_ms: u32,
    pub detail: String,
    pub steps: Vec<StepView>,
    pub cert_days_left: Option<i64>,
    pub saturation_permille: Option<u32>,
    /// Redis: the server's memory in use, when the probe reads it.
    pub memory_used_bytes: Option<u64>,
    pub memory_max_bytes: Option<u64>,
    pub memory_used_permille: Option<u32>,
}

#[derive(Default)]
pub(crate) struct Live {
    pub latest: BTreeMap<(String, String, String), Latest>,
    /// Results received, by outcome: up, down, unknown.
    pub received: [u64; 3],
    /// Results flushed to the store's journal.
    pub acknowledged: u64,
    pub store_errors: u64,
    /// Environments being probed, with their kind.
    pub environments: BTreeMap<(String, String), String>,
}

struct TokenCache {
    stamp: Option<(std::time::SystemTime, u64)>,
    records: Vec<TokenRecord>,
}

pub(crate) struct State {
    pub engine: Arc<Engine>,
    pub specs: SpecSet,
    pub data_dir: PathBuf,
    pub clock: Clock,
    pub store: Mutex<Store>,
    pub live: Mutex<Live>,
    tokens: Mutex<TokenCache>,
    deliveries: Mutex<crate::notify::Deliveries>,
    /// The platform's identity provider (discovery and keys), once a
    /// request first presented an OIDC token; a failed discovery is not kept.
    pub oidc: Mutex<Option<Arc<crate::authz::Oidc>>>,
    /// Failed authentications per client address and per claimed identity
    /// (`authz.rs`); in memory: a restart forgives, as a lockout should not
    /// outlive the process that can lift it.
    pub failed_auth: Mutex<careplane_identity::ratelimit::RateLimiter>,
}

impl State {
    pub fn open(engine: Arc<Engine>, opts: &Options) -> Result<Arc<State>, Error> {
        let data_dir = engine.data_dir().to_path_buf();
        let burning = crate::notify::load_burning(&data_dir);
        // Replays what a killed server flushed but did not compact.
        let store = Store::open(report::store_dir(&data_dir))?;
        Ok(Arc::new(State {
            specs: engine.specs().clone(),
            engine,
            data_dir,
            clock: opts.clock.clone(),
            store: Mutex::new(store),
            live: Mutex::new(Live::default()),
            tokens: Mutex::new(TokenCache {
                stamp: None,
                records: Vec::new(),
            }),
            deliveries: Mutex::new(crate::notify::Deliveries {
                burning,
                ..Default::default()
            }),
            oidc: Mutex::new(None),
            failed_auth: Mutex::new(careplane_identity::ratelimit::RateLimiter::new(
                crate::authz::FAILED_AUTH_LIMITS,
            )),
        }))
    }

    pub(crate) fn deliveries(&self) -> MutexGuard<'_, crate::notify::Deliveries> {
        guard(&self.deliveries)
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        guard(&self.store)
    }

    pub fn live(&self) -> MutexGuard<'_, Live> {
        guard(&self.live)
    }

    /// The token records, reread when the file changed (a revocation takes effect at the
    /// next request).
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        let p = crate::tokens::path(&self.data_dir);
        let stamp = std::fs::metadata(&p)
            .ok()
            .map(|m| (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len()));
        let mut c = guard(&self.tokens);
        if c.stamp != stamp || stamp.is_none() {
            c.records = crate::tokens::load(&self.data_dir)?;
            c.stamp = stamp;
        }
        Ok(c.records.clone())
    }

    /// Final flush and compaction at shutdown.
    pub fn close(&self) -> Result<(), Error> {
        let mut s = self.store();
        s.flush()?;
        s.compact()?;
        Ok(())
    }
}

/// The running probe tasks by (tenant, environment, probe), with a print of their check.
type Running = Arc<Mutex<HashMap<(String, String, String), (String, JoinHandle<()>)>>>;

/// The running loops.
pub(crate) struct Tasks {
    handles: Vec<JoinHandle<()>>,
    probes: Running,
    writer: JoinHandle<()>,
}

impl Tasks {
    /// Stops probing, then lets the writer store what was already received.
    pub async fn stop(self) {
        for h in &self.handles {
            h.abort();
        }
        for (_, (_, h)) in guard(&self.probes).drain() {
            h.abort();
        }
        // The probe tasks held the senders: the writer drains and ends.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.writer).await;
    }
}

pub(crate) fn start(state: Arc<State>, opts: &Options) -> Tasks {
    let (tx, rx) = mpsc::channel::<schedule::Outcome>(4096);
    let limit = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let probes: Running = Arc::default();
    let writer = tokio::spawn(writer(state.clone(), rx));
    let refresher = {
        let (state, probes, opts) = (state.clone(), probes.clone(), opts.clone());
        tokio::spawn(async move {
            let mut creds = CredentialCache::default();
            loop {
                let st = state.clone();
                let (interval, timeout) = (opts.probe_interval, opts.probe_timeout);
                let r = tokio::task::spawn_blocking(move || {
                    let r = targets(&st, &mut creds, interval, timeout);
                    (r, creds)
                })
                .await;
                match r {
                    Ok((Ok((list, envs, fresh)), c)) => {
                        creds = c;
                        state.live().environments = envs;
                        for o in fresh {
                            if tx.send(o).await.is_err() {
                                return;
                            }
                        }
                        let mut running = guard(&probes);
                        let mut keep = std::collections::HashSet::new();
                        for p in list {
                            let key = (p.tenant.clone(), p.environment.clone(), p.probe.clone());
                            // Debug redacts the secrets; it changes when a port or URL does.
                            let print = format!("{:?}", p.check);
                            keep.insert(key.clone());
                            if running.get(&key).is_some_and(|(f, _)| *f == print) {
                                continue;
                            }
                            if let Some((_, old)) = running.remove(&key) {
                                old.abort();
                            }
                            let h =
                                schedule::spawn(p, limit.clone(), state.clock.clone(), tx.clone());
                            running.insert(key, (print, h));
                        }
                        running.retain(|k, (_, h)| {
                            let stay = keep.contains(k);
                            if !stay {
                                h.abort();
                            }
                            stay
                        });
                    }
                    Ok((Err(e), c)) => {
                        creds = c;
                        eprintln!("careplane serve: reading the environments: {e}");
                    }
                    Err(e) => {
                        eprintln!("careplane serve: reading the environments: {e}");
                        return;
                    }
                }
                tokio::time::sleep(opts.refresh).await;
            }
        })
    };
    // The refresher owns the sender: once it and the probe tasks are aborted, the writer
    // drains what was received and ends.
    Tasks {
        handles: vec![refresher],
        probes,
        writer,
    }
}

type EnvList = BTreeMap<(String, String), String>;

/// What the write journey orders: the vendor and product apply makes where writes are
/// allowed (careplane_odoo::rpc::PROBE_VENDOR and PROBE_PRODUCT_CODE).
const PROBE_VENDOR: &str = "careplane probe vendor";
const PROBE_PRODUCT_CODE: &str = "CAREPLANE-PROBE";

/// Credentials the probes use, asked of the engine once and kept in memory (the engine
/// audits each ask).
#[derive(Default)]
struct CredentialCache {
    envs: HashMap<(String, String), Arc<Credentials>>,
    /// Each Redis server's monitor user, by port.
    monitors: HashMap<u16, RedisMonitor>,
    /// Redis ports the monitors were last asked for: asked again only when a server
    /// appears (one that has no monitor user yet gets none until apply changes it).
    monitors_asked: std::collections::BTreeSet<u16>,
}

impl CredentialCache {
    /// The memory check of the Redis server on `port`, as careplane's monitor user.
    fn redis_memory(&mut self, state: &State, ports: &[u16], port: u16) -> Option<RedisMemory> {
        if !self.monitors_asked.contains(&port) {
            self.monitors_asked = ports.iter().copied().collect();
            match state
                .engine
                .redis_monitors(&careplane_engine::host_principal())
            {
                Ok(list) => self.monitors = list.into_iter().map(|m| (m.port, m)).collect(),
                // Without it the probe still checks the tenant's PING; memory is unknown.
                Err(e) => eprintln!("careplane serve: Redis memory headroom is off: {e}"),
            }
        }
        self.monitors.get(&port).map(|m| RedisMemory {
            user: m.user.clone(),
            password: m.password.clone(),
            min_headroom_percent: careplane_probe::DEFAULT_MIN_HEADROOM_PERCENT,
        })
    }
}

/// The probes of every ready environment, from the engine's status and each environment's
/// credentials (asked once per environment and kept in memory, as the engine audits each).
fn targets(
    state: &State,
    cache: &mut CredentialCache,
    interval: Duration,
    timeout: Duration,
) -> Result<(Vec<Scheduled>, EnvList, Vec<schedule::Outcome>), Error> {
    let status = state.engine.status()?;
    let mut list = Vec::new();
    let mut envs = BTreeMap::new();
    let now = (state.clock)();
    let fresh = status
        .environments
        .iter()
        .filter(|e| e.state == "ready")
        .flat_map(|e| {
            [
                backup_freshness(&state.specs, e, Timestamp::now(), now),
                wal_archiving(&status, e, now),
            ]
        })
        .flatten()
        .collect();
    let mut redis_ports: Vec<u16> = Vec::new();
    let mut ready = Vec::new();
    for env in status.environments.iter().filter(|e| e.state == "ready") {
        let key = (env.tenant.clone(), env.environment.clone());
        let creds = match cache.envs.get(&key) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(state.engine.credentials(
                    &careplane_engine::host_principal(),
                    &env.tenant,
                    &env.environment,
                )?);
                cache.envs.insert(key.clone(), c.clone());
                c
            }
        };
        redis_ports.extend(creds.redis.as_ref().and_then(|r| r.port));
        ready.push((env, key, creds));
    }
    for (env, key, creds) in ready {
        envs.insert(key, env.kind.clone());
        let ca_path = std::path::Path::new(&creds.postgres.sslrootcert);
        let ca = std::fs::read_to_string(ca_path).map_err(|e| Error::io(ca_path, e))?;
        let mut add = |probe: &str, check: Check| {
            list.push(Scheduled {
                tenant: env.tenant.clone(),
                environment: env.environment.clone(),
                probe: probe.into(),
                check,
                interval,
                timeout,
            })
        };
        if let Some(port) = creds.postgres.port {
            let pg = PgCheck {
                host: creds.postgres.host.clone(),
                port,
                database: creds.postgres.database.clone(),
                role: creds.postgres.role.clone(),
                password: creds.postgres.password.clone(),
                ca_pem: ca.clone(),
            };
            if creds.odoo.is_some() {
                add("odoo-cron", Check::OdooCron(pg.clone()));
            }
            add("postgres", Check::Postgres(pg));
        }
        if let Some(r) = creds.redis.as_ref() {
            if let Some(port) = r.port {
                add(
                    "redis",
                    Check::Redis(RedisCheck {
                        host: r.host.clone(),
                        port,
                        user: r.user.clone(),
                        password: r.password.clone(),
                        // As careplane's monitor user: tenants may not run INFO.
                        memory: cache.redis_memory(state, &redis_ports, port),
                    }),
                );
            }
        }
        if let Some(o) = creds.odoo.as_ref() {
            // `…/web/login` → the base URL.
            let base = o
                .url
                .split_once("/web")
                .map(|(b, _)| b.to_string())
                .unwrap_or_else(|| o.url.trim_end_matches('/').to_string());
            add(
                "http",
                Check::Http(HttpCheck {
                    url: format!("{base}/web/health"),
                    expect_status: 200,
                    body_contains: Some("pass".into()),
                    ca_pem: Some(ca.clone()),
                    host_header: None,
                }),
            );
            // The journeys log in as the low-privilege probe user; an environment made
            // before careplane kept one has only its admin until the next apply.
            let (login, password) = match &o.probe {
                Some(p) => (p.login.clone(), p.password.clone()),
                None => (o.login.clone(), o.password.clone()),
            };
            let journey = OdooLogin {
                base_url: base,
                database: env.database.clone(),
                login,
                password,
                ca_pem: Some(ca.clone()),
                render_pdf: o.workers != 1,
            };
            let writes = matches!(
                environment_kind(&state.specs, &env.tenant, &env.environment),
                careplane_sla::EnvironmentKind::NonProduction
            );
            if writes && o.probe.is_some() {
                add(
                    "odoo-write",
                    Check::OdooWrite(OdooWrite {
                        login: journey.clone(),
                        vendor: PROBE_VENDOR.into(),
                        product_code: PROBE_PRODUCT_CODE.into(),
                    }),
                );
            }
            add("odoo-login", Check::OdooLogin(journey));
        }
    }
    Ok((list, envs, fresh))
}

/// The `backup` probe, read from the status the refresh just took: an environment whose
/// tier names a BackupPolicy is up while it has a backup and its recovery point (the last
/// archived WAL) is within the tier's RPO of `wall` (the real time, whatever clock `at`
/// runs on).
fn backup_freshness(
    specs: &SpecSet,
    env: &careplane_engine::EnvStatus,
    wall: Timestamp,
    at: Timestamp,
) -> Option<schedule::Outcome> {
    let tenant = specs.tenant(&env.tenant)?;
    let tier = specs.tier_of(&tenant.spec)?;
    tier.spec.backup_policy.as_ref()?;
    let rpo = careplane_spec::parse_duration(&tier.spec.rpo).ok()?;
    let rpo_s = rpo.as_secs() as i64;
    let problem = match (&env.last_backup, &env.recovery_point) {
        (None, _) => Some("no backup yet".to_string()),
        (Some(b), _) if b.error.is_some() => Some(format!(
            "the repository could not be read: {}",
            b.error.as_deref().unwrap_or_default()
        )),
        (Some(b), _) if b.finished.is_none() => Some("no finished backup yet".to_string()),
        (_, None) => Some("no WAL archived yet".to_string()),
        (_, Some(rp)) => match rp.parse::<Timestamp>() {
            Err(e) => Some(format!("recovery point {rp:?}: {e}")),
            Ok(t) => {
                let age = wall.as_second() - t.as_second();
                (age > rpo_s).then(|| {
                    format!(
                        "recovery point {rp} is {} min old, over the RPO of {} ({} min)",
                        age / 60,
                        tier.spec.rpo,
                        rpo_s / 60
                    )
                })
            }
        },
    };
    let (outcome, detail) = match problem {
        Some(d) => (Outcome::Down, d),
        None => (
            Outcome::Up,
            format!(
                "recovery point {} within the RPO of {}",
                env.recovery_point.as_deref().unwrap_or_default(),
                tier.spec.rpo
            ),
        ),
    };
    Some(computed(env, "backup", outcome, detail, at))
}

/// The `wal-archiving` result of an environment: its cluster's WAL archiving as the
/// engine's status read it (`pg_stat_archiver`, as careplane): down while
/// `archive_command` fails or archiving is off, since every minute of that is a minute
/// that no restore can reach. `None` when the status has no reading of the cluster.
fn wal_archiving(
    status: &careplane_engine::Status,
    env: &careplane_engine::EnvStatus,
    at: Timestamp,
) -> Option<schedule::Outcome> {
    let server = status.servers.iter().find(|s| s.id == env.cluster)?;
    let a = server.archiving.as_ref()?;
    let (outcome, detail) = if a.ok {
        (
            Outcome::Up,
            format!(
                "{} WAL files archived, the last {}",
                a.archived_count,
                a.last_archived_time.as_deref().unwrap_or("not yet")
            ),
        )
    } else {
        let why = a.detail.clone().unwrap_or_else(|| "not archiving".into());
        let failed = a
            .last_failed_time
            .as_deref()
            .map(|t| format!(" ({} failures, the last at {t})", a.failed_count))
            .unwrap_or_default();
        (Outcome::Down, format!("{why}{failed}"))
    };
    Some(computed(env, "wal-archiving", outcome, detail, at))
}

/// A result careplane computes from the engine's status rather than by a probe run.
fn computed(
    env: &careplane_engine::EnvStatus,
    probe: &str,
    outcome: Outcome,
    detail: String,
    at: Timestamp,
) -> schedule::Outcome {
    let report = careplane_probe::Report {
        outcome,
        latency_ms: 0,
        steps: Vec::new(),
        detail,
        cert_days_left: None,
        saturation_permille: None,
        memory: None,
    };
    schedule::Outcome {
        result: careplane_sla::ProbeResult {
            probe: probe.into(),
            tenant: env.tenant.clone(),
            environment: env.environment.clone(),
            at,
            outcome,
            latency_ms: 0,
            steps: Vec::new(),
        },
        report,
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Up => "up",
        Outcome::Down => "down",
        Outcome::Unknown => "unknown",
    }
}

/// Records results in batches: ingest, one flush (the acknowledgement), then publish.
async fn writer(state: Arc<State>, mut rx: mpsc::Receiver<schedule::Outcome>) {
    let mut last_eval = Instant::now();
    let mut last_compact = Instant::now();
    loop {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let st = state.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut store = st.store();
            let r = batch
                .iter()
                .try_for_each(|o| store.ingest(&o.result))
                .and_then(|_| store.flush());
            (r, batch)
        })
        .await;
        let Ok((r, batch)) = stored else { break };
        {
            let mut live = state.live();
            for o in &batch {
                let i = match o.result.outcome {
                    Outcome::Up => 0,
                    Outcome::Down => 1,
                    Outcome::Unknown => 2,
                };
                live.received[i] += 1;
            }
            match r {
                Ok(()) => {
                    live.acknowledged += batch.len() as u64;
                    for o in batch {
                        let r = &o.result;
                        live.latest.insert(
                            (r.tenant.clone(), r.environment.clone(), r.probe.clone()),
                            Latest {
                                tenant: r.tenant.clone(),
                                environment: r.environment.clone(),
                                probe: r.probe.clone(),
                                at: r.at.to_string(),
                                outcome: outcome_name(r.outcome).into(),
                                latency_ms: r.latency_ms,
                                detail: o.report.detail.clone(),
                                steps: r
                                    .steps
                                    .iter()
                                    .map(|s| StepView {
                                        name: s.name.clone(),
                                        ms: s.ms,
                                        ok: s.ok,
                                    })
                                    .collect(),
                                cert_days_left: o.report.cert_days_left,
                                saturation_permille: o.report.saturation_permille,
                                memory_used_bytes: o.report.memory.map(|m| m.used_bytes),
                                memory_max_bytes: o.report.memory.map(|m| m.max_bytes),
                                memory_used_permille: o.report.memory.and_then(|m| m.used_permille),
                            },
                        );
                    }
                }
                Err(e) => {
                    live.store_errors += 1;
                    eprintln!("careplane serve: storing {} results: {e}", batch.len());
                }
            }
        }
        if last_eval.elapsed() >= Duration::from_secs(1) {
            last_eval = Instant::now();
            let st = state.clone();
            match tokio::task::spawn_blocking(move || evaluate(&st)).await {
                Ok(Err(e)) => eprintln!("careplane serve: incident detection: {e}"),
                Err(e) => eprintln!("careplane serve: incident detection: {e}"),
                Ok(Ok(ev)) => crate::notify::dispatch(&state, ev, (state.clock)()),
            }
        }
        if last_compact.elapsed() >= Duration::from_secs(3600) {
            last_compact = Instant::now();
            let st = state.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = st.store().compact() {
                    eprintln!("careplane serve: compacting the store: {e}");
                }
            })
            .await;
        }
    }
}

fn minutes_ago(now: Timestamp, m: u32) -> Timestamp {
    Timestamp::from_second(now.as_second() - 60 * i64::from(m)).unwrap_or(now)
}

/// Opens incidents for critical journeys failing for N minutes, marks recoveries, and
/// returns the notifications due (escalation steps, repeats, the executive notice, and the
/// resolution of an incident that was announced), for `notify::dispatch` to deliver.
pub(crate) fn evaluate(state: &State) -> Result<Evaluation, Error> {
    let now = (state.clock)();
    let probe = critical_probe(&state.specs);
    let envs: Vec<(String, String)> = state.live().environments.keys().cloned().collect();
    let open: Vec<Incident> = incidents::load(&state.data_dir)?
        .into_iter()
        .filter(|i| i.is_open())
        .collect();
    let mut work = Vec::new();
    {
        let mut store = state.store();
        for (t, e) in envs {
            let Ok(slo) = slo_for(&state.specs, &t) else {
                continue;
            };
            let key = SeriesKey::new(&t, &e, probe);
            let from = open
                .iter()
                .find(|i| i.tenant == t && i.environment == e)
                .map(|i| i.started_at)
                .unwrap_or_else(|| minutes_ago(now, slo.bad_minute.consecutive_failures + 10))
                .max(minutes_ago(now, 31 * 1440));
            let minutes = ((now.as_second() - from.as_second()) / 60 + 1) as u32;
            let tl = store.timeline(&key, from, minutes)?;
            work.push((t, e, slo, tl));
        }
    }
    let mut due = Vec::new();
    incidents::update(&state.data_dir, |all| {
        let mut changed = false;
        for (t, e, slo, tl) in &work {
            let pos = all
                .iter()
                .position(|i| i.is_open() && &i.tenant == t && &i.environment == e);
            match pos {
                Some(p) => {
                    if observe_recovery(&mut all[p], tl, now) {
                        eprintln!("careplane serve: incident {} restored", all[p].id);
                        changed = true;
                    }
                }
                None => {
                    if let Some(d) = detect(tl, slo, now) {
                        // The run a resolved incident already covered is not a new incident.
                        let known = all.iter().any(|i| {
                            &i.tenant == t && &i.environment == e && i.started_at == d.started_at
                        });
                        if !known {
                            let id = format!("{t}-{e}-{}", d.started_at.as_second());
                            let kind = environment_kind(&state.specs, t, e);
                            let i =
                                Incident::open(&id, t, e, kind, probe, Impact::Down, d, slo, now);
                            eprintln!(
                                "careplane serve: incident {id} opened ({:?}, {probe} failing since {})",
                                i.severity, d.started_at
                            );
                            all.push(i);
                            changed = true;
                        }
                    }
                }
            }
            for i in all.iter().filter(|i| &i.tenant == t && &i.environment == e) {
                for n in due_notifications(i, slo, now) {
                    due.push((i.clone(), n));
                }
                if let Some(n) = resolution_notice(i, now) {
                    due.push((i.clone(), n));
                }
            }
        }
        Ok(((), changed))
    })?;
    let open_incidents = incidents::load(&state.data_dir)?
        .into_iter()
        .filter(|i| i.is_open())
        .collect();
    Ok(Evaluation {
        due,
        open_incidents,
        burns: burn_rates(state, now)?,
    })
}

/// Burn-rate evaluations per (tenant, environment).
pub(crate) type BurnsByEnv = Vec<((String, String), Vec<careplane_sla::BurnAlert>)>;

/// What one round of evaluation asks `notify` to do.
pub(crate) struct Evaluation {
    pub due: Vec<(Incident, DueNotification)>,
    /// Open incidents, whose Alertmanager alerts are kept alive.
    pub open_incidents: Vec<Incident>,
    /// Burn-rate rules of each environment, evaluated once per (clock) minute; `None` in
    /// the rounds between.
    pub burns: Option<BurnsByEnv>,
}

/// The SRE workbook's burn-rate rules over each environment's critical journey, in its
/// calendar (approved maintenance drops out), once per clock minute.
fn burn_rates(state: &State, now: Timestamp) -> Result<Option<BurnsByEnv>, Error> {
    let minute = now.as_second().div_euclid(60);
    {
        let mut d = state.deliveries();
        if d.burn_minute == Some(minute) {
            return Ok(None);
        }
        d.burn_minute = Some(minute);
    }
    let rules = careplane_sla::BurnRule::defaults();
    let longest = rules.iter().map(|r| r.long_minutes).max().unwrap_or(0);
    let probe = critical_probe(&state.specs);
    let envs: Vec<(String, String)> = state.live().environments.keys().cloned().collect();
    let mut out = Vec::new();
    for (t, e) in envs {
        let Ok(slo) = slo_for(&state.specs, &t) else {
            continue;
        };
        let cal = crate::calendar::calendar_of(&state.specs, &t, &e)?;
        let lead = slo.bad_minute.consecutive_failures.saturating_sub(1);
        let from = minutes_ago(now, longest + lead + 1);
        let tl =
            state
                .store()
                .timeline(&SeriesKey::new(&t, &e, probe), from, longest + lead + 2)?;
        let alerts = careplane_sla::evaluate_burn(&tl, &cal.entries, &cal.zone, &slo, &rules, now)?;
        out.push(((t, e), alerts));
    }
    Ok(Some(out))
}

/// A resolved incident whose opening was announced tells the same channels it is over once.
fn resolution_notice(i: &Incident, now: Timestamp) -> Option<DueNotification> {
    let r = i.resolved.as_ref()?;
    if i.notifications.iter().any(|s| s.key == "resolved") {
        return None;
    }
    let mut recipients: Vec<String> = Vec::new();
    for s in &i.notifications {
        for c in &s.recipients {
            if !recipients.contains(c) {
                recipients.push(c.clone());
            }
        }
    }
    // Old incidents resolved long ago are not announced again after an upgrade.
    let recent = now.as_second() - r.at.as_second() < 86_400;
    (!recipients.is_empty() && recent).then(|| DueNotification {
        key: "resolved".into(),
        due_at: r.at,
        recipients,
        reason: careplane_sla::incident::Reason::Resolved,
    })
}

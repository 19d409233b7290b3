//! Delivery of incident notifications to the platform's channels (docs/design/0012):
//! a JSON POST to a webhook, an alert on an Alertmanager's `/api/v2/alerts` (resolved
//! when the incident is), or a plain-text e-mail over SMTP (`mail.rs`). Every attempt of a
//! channel is recorded on the incident (`deliveries`: attempts, the last failure, when it
//! was delivered); a notification is recorded as sent only once every one of its channels
//! took it. A failed channel is retried with a growing pause (5 s doubling up to 5 min), the
//! others are not sent twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use careplane_sla::{DueNotification, Incident};
use careplane_spec::NotificationChannel;
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::probes::State;

/// How long one channel may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Channel deliveries already done or under way, by `incident/key/channel`; burn-rate
/// rules firing, by `tenant/env/rule`; the clock minute burn rates were last evaluated; when
/// open incidents' alerts were last sent to Alertmanager again.
#[derive(Default)]
pub(crate) struct Deliveries {
    pub done: BTreeSet<String>,
    pub inflight: BTreeSet<String>,
    pub burning: BTreeSet<String>,
    pub burn_minute: Option<i64>,
    pub refreshed: Option<std::time::Instant>,
    /// Failed deliveries by `incident/key/channel`: failures so far and when to try again.
    pub retry: BTreeMap<String, (u32, std::time::Instant)>,
}

/// The pause after the `n`th consecutive failure of a delivery: 5 s, doubling, at most
/// 5 minutes (a relay down for hours is not hammered, nor the incident file rewritten, every
/// second).
fn backoff(n: u32) -> Duration {
    Duration::from_secs(
        5u64.saturating_mul(1 << n.saturating_sub(1).min(6))
            .min(300),
    )
}

/// Where the burn-rate rules firing are kept across restarts (`tenant/env/rule` per
/// line in a JSON array), so that a restarted server neither announces a rule that
/// was already firing again nor forgets to announce that it stopped.
pub(crate) fn burning_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    crate::report::store_dir(data_dir).join("burning.json")
}

/// The firing rules a previous server left; an unreadable file is said on stderr and
/// counts as none (the next evaluation announces what fires).
pub(crate) fn load_burning(data_dir: &std::path::Path) -> BTreeSet<String> {
    let path = burning_path(data_dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            eprintln!(
                "careplane serve: {}: {e}; burn-rate rules will be announced afresh",
                path.display()
            );
            BTreeSet::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => {
            eprintln!(
                "careplane serve: {}: {e}; burn-rate rules will be announced afresh",
                path.display()
            );
            BTreeSet::new()
        }
    }
}

fn save_burning(data_dir: &std::path::Path, burning: &BTreeSet<String>) {
    let path = burning_path(data_dir);
    let body = serde_json::to_vec(burning).expect("a set of strings serializes");
    if let Err(e) = std::fs::create_dir_all(crate::report::store_dir(data_dir))
        .and_then(|()| careplane_sys::atomic_write(&path, &body, 0o640, None))
    {
        eprintln!("careplane serve: {}: {e}", path.display());
    }
}

/// Alertmanager resolves an alert nobody re-sent within its `resolve_timeout`, so careplane
/// re-sends the active ones (as Prometheus does) with an `endsAt` this far ahead.
const ALERT_LEASE_SECONDS: i64 = 300;
/// How often active alerts are re-sent.
const REFRESH: Duration = Duration::from_secs(60);

fn channels(state: &State) -> Vec<NotificationChannel> {
    state
        .specs
        .platform
        .spec
        .notifications
        .as_ref()
        .map(|n| n.channels.clone())
        .unwrap_or_default()
}

fn summary(i: &Incident) -> String {
    format!(
        "{:?} {}/{}: {} failing since {}",
        i.severity, i.tenant, i.environment, i.probe, i.started_at
    )
}

/// The webhook's body.
pub fn webhook_body(i: &Incident, n: &DueNotification) -> Value {
    json!({
        "type": "careplane.incident",
        "summary": summary(i),
        "incident": {
            "id": i.id, "tenant": i.tenant, "environment": i.environment,
            "severity": format!("{:?}", i.severity), "probe": i.probe,
            "startedAt": i.started_at, "openedAt": i.opened_at,
            "restoredAt": i.restored_at,
            "acknowledged": i.acknowledged.is_some(), "resolved": i.resolved.is_some(),
        },
        "notification": { "key": n.key, "dueAt": n.due_at, "reason": n.reason },
    })
}

/// Alertmanager's leases run on the wall clock, whatever clock careplane's minutes are
/// counted on (a test's scaled clock runs behind it).
fn lease() -> Timestamp {
    let wall = Timestamp::now();
    Timestamp::from_second(wall.as_second() + ALERT_LEASE_SECONDS).unwrap_or(wall)
}

/// The end of an alert that is over, on the wall clock.
fn ended() -> Timestamp {
    Timestamp::now()
}

/// The Alertmanager alert: one per incident (same labels on every notification, so
/// Alertmanager groups them), `endsAt` a lease ahead while open and `now` once resolved.
pub fn alert_body(i: &Incident, n: &DueNotification) -> Value {
    let mut alert = json!({
        "labels": {
            "alertname": "CareplaneIncident", "severity": format!("{:?}", i.severity),
            "tenant": i.tenant, "environment": i.environment, "incident": i.id,
            "probe": i.probe,
        },
        "annotations": { "summary": summary(i), "notification": n.key },
        "startsAt": i.started_at,
        "endsAt": lease(),
    });
    if i.resolved.is_some() {
        alert["endsAt"] = json!(ended());
    }
    json!([alert])
}

/// A burn-rate rule of one environment starting or ceasing to fire.
fn burn_bodies(
    (tenant, env): &(String, String),
    a: &careplane_sla::BurnAlert,
    firing: bool,
) -> (Value, Value) {
    let summary = format!(
        "{tenant}/{env}: error budget burning at {}.{:03}x over {} min and {}.{:03}x over {} min (rule {}){}",
        a.long.rate_milli / 1000,
        a.long.rate_milli % 1000,
        a.rule.long_minutes,
        a.short.rate_milli / 1000,
        a.short.rate_milli % 1000,
        a.rule.short_minutes,
        a.rule.name,
        if firing { "" } else { ": stopped" },
    );
    let hook = json!({
        "type": "careplane.burn",
        "summary": summary,
        "tenant": tenant, "environment": env,
        "rule": a.rule, "long": a.long, "short": a.short, "firing": firing,
    });
    let alert = json!([{
        "labels": {
            "alertname": "CareplaneErrorBudgetBurn", "tenant": tenant, "environment": env,
            "rule": a.rule.name, "severity": if a.rule.page { "page" } else { "ticket" },
        },
        "annotations": { "summary": summary },
        "endsAt": if firing { lease() } else { ended() },
    }]);
    (hook, alert)
}

async fn post(c: &NotificationChannel, hook: &Value, alerts: &Value) -> Result<(), String> {
    if c.smtp.is_some() {
        return Err(format!("channel {:?}: e-mail takes incidents only", c.name));
    }
    let (url, body) = match (&c.webhook, &c.alertmanager) {
        (Some(u), _) => (u.clone(), hook),
        (None, Some(base)) => (
            format!("{}/api/v2/alerts", base.trim_end_matches('/')),
            alerts,
        ),
        (None, None) => return Err(format!("channel {:?} has no address", c.name)),
    };
    match careplane_probe::post_json(&url, body, None, TIMEOUT).await? {
        s if (200..300).contains(&s) => Ok(()),
        s => Err(format!("channel {:?}: POST {url} answered {s}", c.name)),
    }
}

/// Fire-and-forget sends (burn-rate changes, alert refreshes): logged when they fail.
fn spawn_post(c: NotificationChannel, hook: Value, alerts: Value, what: String) {
    tokio::spawn(async move {
        if let Err(e) = post(&c, &hook, &alerts).await {
            eprintln!(
                "careplane serve: {what}: notifying {:?} failed: {e}",
                c.name
            );
        }
    });
}

async fn send(c: &NotificationChannel, i: &Incident, n: &DueNotification) -> Result<(), String> {
    if let Some(smtp) = &c.smtp {
        return crate::mail::send(
            smtp,
            &crate::mail::subject(i, n),
            crate::mail::body(i, n),
            TIMEOUT,
        )
        .await;
    }
    post(c, &webhook_body(i, n), &alert_body(i, n)).await
}

/// A webhook's URL is often its credential (chat services put the token in the path), and
/// failures are recorded on the incident, which read tokens see: only the URL's origin is
/// kept in an error.
pub fn redact(c: &NotificationChannel, e: String) -> String {
    let mut e = e;
    for url in [&c.webhook, &c.alertmanager].into_iter().flatten() {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let host_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let origin_len = url.len() - rest.len() + host_len;
        let am = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
        for full in [am.as_str(), url.as_str()] {
            if full.len() > origin_len {
                e = e.replace(full, &format!("{}/…", &url[..origin_len]));
            }
        }
    }
    e
}

/// Sends each due notification to each of its channels not yet served, in the background;
/// records it on the incident once all took it.
pub(crate) fn dispatch(state: &Arc<State>, ev: crate::probes::Evaluation, now: Timestamp) {
    let all = channels(state);
    burns(state, &all, ev.burns);
    refresh(state, &all, &ev.open_incidents);
    for (incident, n) in ev.due {
        for name in &n.recipients {
            let id = format!("{}/{}/{name}", incident.id, n.key);
            {
                let mut d = state.deliveries();
                if d.done.contains(&id)
                    || d.retry
                        .get(&id)
                        .is_some_and(|(_, at)| std::time::Instant::now() < *at)
                    || !d.inflight.insert(id.clone())
                {
                    continue;
                }
            }
            let Some(channel) = all.iter().find(|c| &c.name == name).cloned() else {
                eprintln!(
                    "careplane serve: incident {}: no channel {name:?}",
                    incident.id
                );
                state.deliveries().inflight.remove(&id);
                continue;
            };
            let (state, incident, n) = (state.clone(), incident.clone(), n.clone());
            tokio::spawn(async move {
                let r = send(&channel, &incident, &n)
                    .await
                    .map_err(|e| redact(&channel, e));
                let complete = {
                    let mut d = state.deliveries();
                    d.inflight.remove(&id);
                    if r.is_ok() {
                        d.retry.remove(&id);
                        d.done.insert(id);
                    } else {
                        let failures = d.retry.get(&id).map_or(0, |(f, _)| *f) + 1;
                        let at = std::time::Instant::now() + backoff(failures);
                        d.retry.insert(id, (failures, at));
                    }
                    n.recipients
                        .iter()
                        .all(|c| d.done.contains(&format!("{}/{}/{c}", incident.id, n.key)))
                };
                match &r {
                    Err(e) => eprintln!(
                        "careplane serve: incident {}: notifying {:?} failed (retried): {e}",
                        incident.id, channel.name
                    ),
                    Ok(()) => eprintln!(
                        "careplane serve: incident {}: notified {:?} ({})",
                        incident.id, channel.name, n.key
                    ),
                }
                let data_dir = state.data_dir.clone();
                let recorded = tokio::task::spawn_blocking(move || {
                    crate::incidents::update(&data_dir, |all| {
                        match all.iter_mut().find(|i| i.id == incident.id) {
                            Some(i) => {
                                i.record_delivery(&n.key, &channel.name, now, r);
                                if complete {
                                    i.record_notification(&n, now);
                                }
                                Ok(((), true))
                            }
                            None => Ok(((), false)),
                        }
                    })
                })
                .await;
                if let Ok(Err(e)) = recorded {
                    eprintln!("careplane serve: recording a notification: {e}");
                }
            });
        }
    }
}

/// Announces burn-rate rules that started or stopped firing to every channel, and keeps the
/// firing ones alive on Alertmanager.
fn burns(state: &State, all: &[NotificationChannel], burns: Option<crate::probes::BurnsByEnv>) {
    for (env, alerts) in burns.into_iter().flatten() {
        for a in alerts {
            let key = format!("{}/{}/{}", env.0, env.1, a.rule.name);
            let was = state.deliveries().burning.contains(&key);
            let changed = was != a.firing;
            if changed {
                let mut d = state.deliveries();
                if a.firing {
                    d.burning.insert(key.clone());
                } else {
                    d.burning.remove(&key);
                }
                save_burning(&state.data_dir, &d.burning);
                eprintln!(
                    "careplane serve: {key}: burn-rate rule {}",
                    if a.firing { "firing" } else { "stopped" }
                );
            }
            if !changed && !a.firing {
                continue;
            }
            let (hook, alert) = burn_bodies(&env, &a, a.firing);
            // E-mail hears of incidents only: burn-rate rules start and stop with every
            // few bad minutes, which mail cannot group as Alertmanager does.
            for c in all.iter().filter(|c| c.smtp.is_none()) {
                // Webhooks hear of changes; Alertmanager also gets the lease renewed.
                if changed || c.alertmanager.is_some() {
                    spawn_post(c.clone(), hook.clone(), alert.clone(), key.clone());
                }
            }
        }
    }
}

/// Re-sends the alerts of open, announced incidents to their Alertmanager channels every
/// [`REFRESH`], so Alertmanager does not resolve them by itself.
fn refresh(state: &State, all: &[NotificationChannel], open: &[Incident]) {
    {
        let mut d = state.deliveries();
        if d.refreshed.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        d.refreshed = Some(std::time::Instant::now());
    }
    for i in open {
        let Some(last) = i.notifications.last() else {
            continue;
        };
        let n = DueNotification {
            key: last.key.clone(),
            due_at: last.at,
            recipients: last.recipients.clone(),
            reason: careplane_sla::incident::Reason::Step { step: 0 },
        };
        for c in all.iter().filter(|c| {
            c.alertmanager.is_some()
                && i.notifications
                    .iter()
                    .any(|s| s.recipients.contains(&c.name))
        }) {
            spawn_post(
                c.clone(),
                Value::Null,
                alert_body(i, &n),
                format!("incident {}", i.id),
            );
        }
    }
}

#[cfg(test)]
mod burning_tests {
    use super::*;

    #[test]
    fn firing_rules_survive_a_restart_and_a_damaged_file_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_burning(dir.path()).is_empty());
        let set: BTreeSet<String> = ["stmarys/production/page-fast".to_string()].into();
        save_burning(dir.path(), &set);
        assert_eq!(load_burning(dir.path()), set);
        std::fs::write(burning_path(dir.path()), b"{not json").unwrap();
        assert!(load_burning(dir.path()).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_paths_stay_out_of_recorded_errors() {
        let c = NotificationChannel {
            name: "chat".into(),
            webhook: Some("https://hooks.example.org/services/T0/B0/s3cr3t".into()),
            alertmanager: None,
            smtp: None,
        };
        let e = redact(
            &c,
            "POST https://hooks.example.org/services/T0/B0/s3cr3t: connection refused".into(),
        );
        assert_eq!(e, "POST https://hooks.example.org/…: connection refused");
        let c = NotificationChannel {
            name: "am".into(),
            webhook: None,
            alertmanager: Some("http://127.0.0.1:9093".into()),
            smtp: None,
        };
        let e = redact(
            &c,
            "channel \"am\": POST http://127.0.0.1:9093/api/v2/alerts answered 500".into(),
        );
        assert_eq!(
            e,
            "channel \"am\": POST http://127.0.0.1:9093/… answered 500"
        );
    }
}

//! Delivery of incident notifications to the platform's channels (docs/design/0014):
//! a JSON POST to a webhook, or an alert on an Alertmanager's `/api/v2/alerts` (resolved
//! when the incident is). A notification is recorded on the incident only once every one of
//! its channels took it; a failed channel is retried on the next round, the others are not
//! sent twice.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use careplane_sla::{DueNotification, Incident};
use careplane_spec::NotificationChannel;
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::probes::State;

/// How long one channel may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Channel deliveries already done or under way, by `incident/key/channel`.
#[derive(Default)]
pub(crate) struct Deliveries {
    pub done: BTreeSet<String>,
    pub inflight: BTreeSet<String>,
}

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

/// The Alertmanager alert: one per incident (same labels on every notification, so
/// Alertmanager groups them), `endsAt` once resolved.
pub fn alert_body(i: &Incident, n: &DueNotification, now: Timestamp) -> Value {
    let mut alert = json!({
        "labels": {
            "alertname": "CareplaneIncident", "severity": format!("{:?}", i.severity),
            "tenant": i.tenant, "environment": i.environment, "incident": i.id,
            "probe": i.probe,
        },
        "annotations": { "summary": summary(i), "notification": n.key },
        "startsAt": i.started_at,
    });
    if i.resolved.is_some() {
        alert["endsAt"] = json!(now);
    }
    json!([alert])
}

async fn send(
    c: &NotificationChannel,
    i: &Incident,
    n: &DueNotification,
    now: Timestamp,
) -> Result<(), String> {
    let (url, body) = match (&c.webhook, &c.alertmanager) {
        (Some(u), _) => (u.clone(), webhook_body(i, n)),
        (None, Some(base)) => (
            format!("{}/api/v2/alerts", base.trim_end_matches('/')),
            alert_body(i, n, now),
        ),
        (None, None) => return Err(format!("channel {:?} has no address", c.name)),
    };
    match careplane_probe::post_json(&url, &body, None, TIMEOUT).await? {
        s if (200..300).contains(&s) => Ok(()),
        s => Err(format!("channel {:?}: POST {url} answered {s}", c.name)),
    }
}

/// Sends each due notification to each of its channels not yet served, in the background;
/// records it on the incident once all took it.
pub(crate) fn dispatch(state: &Arc<State>, due: Vec<(Incident, DueNotification)>, now: Timestamp) {
    let all = channels(state);
    for (incident, n) in due {
        for name in &n.recipients {
            let id = format!("{}/{}/{name}", incident.id, n.key);
            {
                let mut d = state.deliveries();
                if d.done.contains(&id) || !d.inflight.insert(id.clone()) {
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
                let r = send(&channel, &incident, &n, now).await;
                let complete = {
                    let mut d = state.deliveries();
                    d.inflight.remove(&id);
                    if r.is_ok() {
                        d.done.insert(id);
                    }
                    n.recipients
                        .iter()
                        .all(|c| d.done.contains(&format!("{}/{}/{c}", incident.id, n.key)))
                };
                match r {
                    Err(e) => eprintln!(
                        "careplane serve: incident {}: notifying {:?} failed (retried): {e}",
                        incident.id, channel.name
                    ),
                    Ok(()) => eprintln!(
                        "careplane serve: incident {}: notified {:?} ({})",
                        incident.id, channel.name, n.key
                    ),
                }
                if complete {
                    let data_dir = state.data_dir.clone();
                    let recorded = tokio::task::spawn_blocking(move || {
                        crate::incidents::update(&data_dir, |all| {
                            match all.iter_mut().find(|i| i.id == incident.id) {
                                Some(i) => {
                                    i.record_notification(&n, now);
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
                }
            });
        }
    }
}

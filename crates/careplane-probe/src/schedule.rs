//! The scheduler: every probe on its own interval, started at a random offset and moved by
//! up to ±10 % each round (so a thousand environments do not probe in the same second),
//! at most `concurrency` runs at once, each bounded by its timeout.

use std::sync::Arc;
use std::time::Duration;

use careplane_sla::ProbeResult;
use jiff::Timestamp;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::{run, Check, Report};

/// The time results are stamped with. Injected so that tests and replays need no real
/// months: the server passes the wall clock, or a scaled one.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// A clock running `scale` times faster than the wall clock (`scale` 60 makes every real
/// second a minute), starting `behind` the wall clock: for tests and demos of minute-based
/// accounting. Starting behind keeps it before the wall clock for a while, so that what people
/// do meanwhile (`careplane incident ack`, on the wall clock) comes after what it stamped.
pub fn scaled_clock(scale: u32, behind: std::time::Duration) -> Clock {
    let start = Timestamp::now()
        .checked_sub(jiff::SignedDuration::try_from(behind).unwrap_or_default())
        .unwrap_or_else(|_| Timestamp::now());
    let real = std::time::Instant::now();
    Arc::new(move || {
        let e = real.elapsed().as_millis() as i64 * i64::from(scale);
        Timestamp::from_millisecond(start.as_millisecond() + e).unwrap_or(start)
    })
}

/// One scheduled probe of one environment.
#[derive(Clone, Debug)]
pub struct Scheduled {
    pub tenant: String,
    pub environment: String,
    /// The probe id (`odoo-login`, `http`, `postgres`, `redis`).
    pub probe: String,
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A result with what the run found beyond the SLA's minute state.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub result: ProbeResult,
    pub report: Report,
}

/// A uniformly random duration in `[0, max)`.
fn random_below(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    // No entropy is no reason to stop probing: fall back to no jitter.
    let _ = getrandom::getrandom(&mut b);
    let ms = max.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(u64::from_le_bytes(b) % ms)
}

/// Starts the loop of one probe: results go to `tx` until the returned task is aborted or the
/// receiver is dropped. The permit of `limit` bounds concurrent runs across all probes.
pub fn spawn(
    p: Scheduled,
    limit: Arc<Semaphore>,
    clock: Clock,
    tx: mpsc::Sender<Outcome>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(random_below(p.interval)).await;
        loop {
            let started = tokio::time::Instant::now();
            let outcome = {
                let Ok(_permit) = limit.acquire().await else {
                    return;
                };
                let at = clock();
                let report = run(&p.check, p.timeout, at).await;
                Outcome {
                    result: ProbeResult {
                        probe: p.probe.clone(),
                        tenant: p.tenant.clone(),
                        environment: p.environment.clone(),
                        at,
                        outcome: report.outcome,
                        latency_ms: report.latency_ms,
                        steps: report.steps.clone(),
                    },
                    report,
                }
            };
            if tx.send(outcome).await.is_err() {
                return;
            }
            // The next run: one interval after this one started, ±10 %.
            let tenth = p.interval / 10;
            let next =
                started + p.interval - tenth + random_below(tenth * 2 + Duration::from_millis(1));
            tokio::time::sleep_until(next).await;
        }
    })
}

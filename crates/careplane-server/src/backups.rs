//! The backup schedule inside `careplane serve`: every `Options::backups_every` it does
//! what `careplane backup run-due` does from cron (backups whose policy's schedule came
//! since the environment's last one, each proven by a restore verification; scheduled
//! verifications; pruning), through the same engine call, audited as the host's root
//! operator. One run at a time: a run that outlasts the interval delays the next one
//! rather than overlapping it. Failures are logged each time and stay visible where an
//! operator looks: the `backup` probe (recovery point against the tier's RPO) goes down
//! when backups stop, and `status` shows the last verified backup.

use std::sync::Arc;
use std::time::Duration;

use careplane_engine::{Engine, RunDueOutcome};
use tokio::task::JoinHandle;

/// Spawns the loop; `None` when `every` is zero (turned off).
pub(crate) fn start(engine: Arc<Engine>, every: Duration) -> Option<JoinHandle<()>> {
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            // The first run waits one interval: serve's own start (probes, API) first.
            tokio::time::sleep(every).await;
            let e = engine.clone();
            let r = tokio::task::spawn_blocking(move || {
                e.backup_run_due(&careplane_engine::host_principal(), &|_| {})
            })
            .await;
            match r {
                Ok(Ok(o)) => log(&o),
                Ok(Err(e)) => eprintln!("careplane serve: backups: {e}"),
                Err(e) => eprintln!("careplane serve: backups: the run ended abnormally: {e}"),
            }
        }
    }))
}

fn log(o: &RunDueOutcome) {
    let pruned: u64 = o
        .pruned
        .repositories
        .iter()
        .map(|r| r.deleted.len() as u64)
        .sum();
    // Counts only: filestore names are SHA-1s of documents.
    let shipped: u64 = o.shipped.iter().map(|s| s.files).sum();
    if !o.created.is_empty()
        || !o.verified.is_empty()
        || !o.restore_checks.is_empty()
        || pruned > 0
        || shipped > 0
    {
        // Skipped ones (a customer-held key) are no verification: said apart.
        let skipped = o
            .restore_checks
            .iter()
            .filter(|c| c.outcome == "skipped")
            .count();
        eprintln!(
            "careplane serve: backups: {} made, {} verified, {} restore verifications{}, {} pruned, \
             {shipped} filestore files shipped",
            o.created.len(),
            o.verified.len(),
            o.restore_checks.len() - skipped,
            if skipped > 0 {
                format!(" ({skipped} skipped: customer-held key)")
            } else {
                String::new()
            },
            pruned
        );
    }
    for f in &o.failures {
        eprintln!("careplane serve: backups: failed: {f}");
    }
}

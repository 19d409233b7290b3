//! The executor: plans run under the apply lock, journaled step by step,
//! with write-ahead intent, crash points and the driver's readiness windows.
//! It orders and records; every effect on a target is the driver's.

use std::path::{Path, PathBuf};

use careplane_spec::SpecSet;
use careplane_state::{ResourceRecord, ResourceStatus, StepRecord, Store};
use serde_json::{json, Value};

use crate::desired;
use crate::driver::{Driver, Ensured, Started};
use crate::error::EngineError;
use crate::plan::{self, Action, Op, Plan};
use crate::report::{ApplyOptions, ApplyReport, Credentials, Event, Status};

/// What the lock of [`Engine`] guards.
pub(crate) struct Core {
    pub(crate) specs: SpecSet,
    pub(crate) data_dir: PathBuf,
    pub(crate) store: Option<Store>,
    pub(crate) driver: Box<dyn Driver>,
}

/// Names a point inside an action where a test may kill the process.
///
/// `CAREPLANE_CRASH_AT=<action id>@<point>` makes careplane SIGKILL itself
/// there: the fault-injection tests use it to prove that every interruption
/// converges. Points: `started` (journaled, nothing done), `prepared` (intent
/// and secrets recorded), `executed` (runtime work done, not yet recorded),
/// `finished` (recorded, journal closed).
pub fn crash_point(id: &str, point: &str) {
    if let Ok(spec) = std::env::var("CAREPLANE_CRASH_AT") {
        if spec.split(',').any(|s| s == format!("{id}@{point}")) {
            // SAFETY: kill(2) on our own pid; no memory is touched.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// An action whose step stays open while its resource gets ready.
struct Deferred<'a> {
    index: usize,
    action: &'a Action,
    step: i64,
    label: String,
    token: Box<dyn std::any::Any + Send>,
    wait: Option<Box<dyn FnOnce() -> Result<(), EngineError> + Send>>,
}

impl Core {
    /// Runs the current plan under the apply lock.
    pub(crate) fn apply(
        &mut self,
        opts: &ApplyOptions,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<ApplyReport, EngineError> {
        self.run_plan("apply", opts, progress, |e| e.plan())
    }

    /// Removes what careplane holds for `tenants` (everything when empty).
    pub(crate) fn destroy(
        &mut self,
        tenants: &[String],
        opts: &ApplyOptions,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<ApplyReport, EngineError> {
        let tenants = tenants.to_vec();
        self.run_plan("destroy", opts, progress, move |e| e.destroy_plan(&tenants))
    }

    fn run_plan(
        &mut self,
        command: &str,
        opts: &ApplyOptions,
        progress: &mut dyn FnMut(Event<'_>),
        make_plan: impl FnOnce(&mut Core) -> Result<Plan, EngineError>,
    ) -> Result<ApplyReport, EngineError> {
        self.store()?;
        let _lock = careplane_state::lock(&self.data_dir, command)?;
        let interrupted = self.store()?.interrupted_steps()?;
        if !interrupted.is_empty() {
            progress(Event::Interrupted {
                actions: interrupted.iter().map(|s| s.action.clone()).collect(),
            });
        }
        let plan = make_plan(self)?;
        self.preflight(&plan, opts)?;

        let op = self.store()?.begin_operation(command)?;
        self.store()?.mark_interrupted_resumed(op)?;
        let total = plan.actions.len();
        let mut applied = Vec::new();
        // Resources the driver started and that are still getting ready
        // (an Odoo loading its registry, seconds each): the next ones of
        // the same kind start meanwhile, up to the driver's window. All are
        // waited for before an action of another kind, and the oldest
        // whenever the window is full.
        let mut starting: Vec<Deferred<'_>> = Vec::new();
        let mut failure = None;
        for (index, action) in plan.actions.iter().enumerate() {
            let window = match action.op {
                Op::Delete => 0,
                Op::Create | Op::Update => self.driver.window(action.kind),
            };
            let same_kind = starting
                .first()
                .is_none_or(|d| d.action.kind == action.kind);
            let waited = if window == 0 || !same_kind {
                self.settle(total, &mut starting, true, &mut applied, progress)
            } else if starting.len() >= window {
                let mut oldest = vec![starting.remove(0)];
                // Quietly: the next step line follows.
                self.settle(total, &mut oldest, false, &mut applied, progress)
            } else {
                Ok(())
            };
            if let Err(e) = waited {
                failure = Some(e);
                break;
            }
            progress(Event::Started {
                index,
                total,
                action,
            });
            let label = format!("{} {}", op_name(action.op), action.id);
            let step = self
                .store()?
                .step_started(op, &label, &json!({ "props": action.props }))?;
            crash_point(&action.id, "started");
            let result = match action.op {
                Op::Delete => self.driver.delete(action).map(|()| Ensured::Ready),
                Op::Create | Op::Update => self.driver.ensure(action),
            };
            let outcome = match result {
                Ok(Ensured::Started(Started { wait, token })) if window > 0 => {
                    starting.push(Deferred {
                        index,
                        action,
                        step,
                        label,
                        token,
                        wait: Some(wait),
                    });
                    continue;
                }
                Ok(Ensured::Started(Started { wait, token })) => {
                    // A driver that starts what it gave no window for: wait now.
                    wait().and_then(|()| self.driver.finish_started(action, token))
                }
                Ok(Ensured::Ready) => Ok(()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    self.step_succeeded(step, index, total, action, progress)?;
                    applied.push(label);
                }
                Err(e) => {
                    self.step_failed(step, index, total, action, &e, progress)?;
                    failure = Some(EngineError::ActionFailed {
                        action: label,
                        source: Box::new(e),
                    });
                    break;
                }
            }
        }
        // What was started is seen through whatever happened, so that it is
        // recorded ready or failed, not left for the next apply.
        let settled = self.settle(total, &mut starting, true, &mut applied, progress);
        let failure = match (failure, settled) {
            (None, Ok(())) => None,
            (Some(e), Ok(())) | (None, Err(e)) => Some(e),
            (Some(e), Err(other)) => Some(EngineError::inconsistent(format!("{e}\n{other}"))),
        };
        if let Some(e) = failure {
            self.store()?
                .finish_operation(op, "failed", Some(&e.to_string()))?;
            return Err(e);
        }
        self.store()?.finish_operation(op, "succeeded", None)?;
        let created = plan
            .actions
            .iter()
            .filter(|a| a.op == Op::Create)
            .filter(|a| applied.contains(&format!("{} {}", op_name(a.op), a.id)))
            .map(|a| a.id.clone())
            .collect();
        Ok(ApplyReport {
            operation: op,
            applied,
            created,
        })
    }

    fn step_succeeded(
        &mut self,
        step: i64,
        index: usize,
        total: usize,
        action: &Action,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), EngineError> {
        self.store()?.step_finished(step, None)?;
        crash_point(&action.id, "finished");
        progress(Event::Finished {
            index,
            total,
            action,
        });
        Ok(())
    }

    fn step_failed(
        &mut self,
        step: i64,
        index: usize,
        total: usize,
        action: &Action,
        e: &EngineError,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), EngineError> {
        self.store()?.step_finished(step, Some(&e.to_string()))?;
        progress(Event::Failed {
            index,
            total,
            action,
            error: e.to_string(),
        });
        Ok(())
    }

    /// Waits for every started resource at once and records each as
    /// finished or failed. Every failure is reported, the first as the
    /// error's action.
    fn settle<'a>(
        &mut self,
        total: usize,
        starting: &mut Vec<Deferred<'a>>,
        announce: bool,
        applied: &mut Vec<String>,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), EngineError> {
        if starting.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(starting);
        if announce {
            progress(Event::Waiting {
                environments: batch.len(),
            });
        }
        let outcomes = run_all(batch.iter_mut().map(|d| {
            d.wait
                .take()
                .expect("each deferred action is waited for once")
        }));
        let mut failed: Vec<(String, EngineError)> = Vec::new();
        for (d, outcome) in batch.into_iter().zip(outcomes) {
            let (index, action, step, label) = (d.index, d.action, d.step, d.label.clone());
            let outcome = outcome.and_then(|()| self.driver.finish_started(action, d.token));
            match outcome {
                Ok(()) => {
                    self.step_succeeded(step, index, total, action, progress)?;
                    applied.push(label);
                }
                Err(e) => {
                    self.step_failed(step, index, total, action, &e, progress)?;
                    failed.push((label, e));
                }
            }
        }
        match failed.len() {
            0 => Ok(()),
            1 => {
                let (action, e) = failed.remove(0);
                Err(EngineError::ActionFailed {
                    action,
                    source: Box::new(e),
                })
            }
            n => Err(EngineError::inconsistent(format!(
                "{n} resources did not get ready:\n{}",
                failed
                    .iter()
                    .map(|(l, e)| format!("{l}: {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))),
        }
    }

    /// Everything that can refuse the plan is checked before the first action,
    /// so a refused plan changes nothing: the operator's confirmations here,
    /// the target's own checks in its driver.
    fn preflight(&mut self, plan: &Plan, opts: &ApplyOptions) -> Result<(), EngineError> {
        let mut problems = Vec::new();
        let mut unconfirmed = std::collections::BTreeSet::new();
        for a in plan.actions.iter().filter(|a| a.op == Op::Delete) {
            if a.is_production() {
                if let Some(t) = a.tenant() {
                    if !opts.confirm.iter().any(|c| c == t) {
                        unconfirmed.insert(t.to_string());
                    }
                }
            }
        }
        for t in &unconfirmed {
            problems.push(format!(
                "tenant {t} has a production or DR environment that would be deleted: pass --confirm {t}"
            ));
        }
        if opts.override_freeze.is_none() {
            let mut seen = std::collections::BTreeSet::new();
            for a in &plan.actions {
                let (Some(t), Some(e)) = (a.tenant(), a.environment()) else {
                    continue;
                };
                for (ft, fe, why) in &opts.frozen {
                    if ft == t && fe == e && seen.insert((t, e, why)) {
                        problems.push(format!(
                            "{why}: the plan changes it ({}); wait for the freeze to end, or pass --override-freeze <reason>",
                            a.summary()
                        ));
                    }
                }
            }
        }
        problems.extend(self.driver.preflight(plan, opts)?);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Refused { problems })
        }
    }

    /// Starts every recorded server (after `stop` or a reboot).
    pub(crate) fn start_all(
        &mut self,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<i64, EngineError> {
        self.driver.lifecycle(true, progress)
    }

    /// Stops every recorded server, PostgreSQL with a fast shutdown.
    pub(crate) fn stop_all(
        &mut self,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<i64, EngineError> {
        self.driver.lifecycle(false, progress)
    }

    /// How to reach a tenant environment's database and Redis, with the
    /// generated passwords: only for the operator who asks explicitly.
    pub(crate) fn credentials(
        &mut self,
        tenant: &str,
        env: &str,
    ) -> Result<Credentials, EngineError> {
        self.driver.credentials(tenant, env)
    }

    /// `careplane modules install|upgrade`: stop web, run Odoo's `-i`/`-u`,
    /// start again, check health; journaled like an apply.
    pub(crate) fn modules(
        &mut self,
        tenant: &str,
        env: &str,
        install: bool,
        modules: &[String],
    ) -> Result<(), EngineError> {
        self.driver.modules(tenant, env, install, modules)
    }

    pub(crate) fn status(&mut self) -> Result<Status, EngineError> {
        self.driver.status()
    }

    pub(crate) fn export(
        &mut self,
        tenant: &str,
        env: &str,
        out: &Path,
    ) -> Result<crate::report::ExportReport, EngineError> {
        self.driver.export(tenant, env, out)
    }

    pub(crate) fn import(
        &mut self,
        tenant: &str,
        env: &str,
        file: &Path,
    ) -> Result<crate::report::ImportReport, EngineError> {
        self.driver.import(tenant, env, file)
    }
}

/// Write-ahead intent, for drivers: the existing record of `a`, or a new
/// one with `allocate`'s allocations, saved as `pending` before anything
/// uses them.
pub fn prepare(
    store: &Store,
    data_dir: &Path,
    a: &Action,
    allocate: impl FnOnce(&Path) -> Result<Value, EngineError>,
) -> Result<ResourceRecord, EngineError> {
    let mut rec = match store.resource(&a.id)? {
        Some(r) => r,
        None => ResourceRecord {
            id: a.id.clone(),
            kind: a.kind.as_str().to_string(),
            status: ResourceStatus::Pending,
            props: a.props.clone(),
            observed: allocate(data_dir)?,
            created_at: String::new(),
            updated_at: String::new(),
        },
    };
    if a.op == Op::Create {
        rec.status = ResourceStatus::Pending;
    }
    // Updates keep their status until they succeed; the new props are
    // recorded only when they have been applied (see `finish`).
    if a.op == Op::Create {
        rec.props = a.props.clone();
        store.put_resource(&rec)?;
    }
    Ok(rec)
}

/// Records `a` applied: ready, with its new props.
pub fn finish(store: &Store, a: &Action, mut rec: ResourceRecord) -> Result<(), EngineError> {
    crash_point(&a.id, "executed");
    rec.status = ResourceStatus::Ready;
    rec.props = a.props.clone();
    store.put_resource(&rec)?;
    Ok(())
}

/// Marks `a`'s record `deleting` before anything is removed, so an
/// interrupted delete is finished by the next apply; `None` when nothing
/// was recorded.
pub fn mark_deleting(store: &Store, a: &Action) -> Result<Option<ResourceRecord>, EngineError> {
    let Some(mut rec) = store.resource(&a.id)? else {
        return Ok(None);
    };
    rec.status = ResourceStatus::Deleting;
    store.put_resource(&rec)?;
    crash_point(&a.id, "prepared");
    Ok(Some(rec))
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "create",
        Op::Update => "update",
        Op::Delete => "delete",
    }
}

/// Runs every job on a thread of its own and returns their results in order.
/// For waits that are mostly sleeping on another process (Odoo loading its
/// registry, shutting its workers down), so one thread each is cheap.
pub fn run_all<F>(jobs: impl Iterator<Item = F>) -> Vec<Result<(), EngineError>>
where
    F: FnOnce() -> Result<(), EngineError> + Send,
{
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.map(|job| scope.spawn(job)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(EngineError::inconsistent("a parallel job panicked")))
            })
            .collect()
    })
}

impl Core {
    fn state_exists(&self) -> bool {
        self.data_dir.join("state.db").exists()
    }

    /// Opens (creating on first use) the state store.
    pub(crate) fn store(&mut self) -> Result<&Store, EngineError> {
        if self.store.is_none() {
            self.store = Some(Store::open(&self.data_dir)?);
        }
        Ok(self.store.as_ref().expect("just opened"))
    }

    /// See [`crate::audit::record`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn audit(
        &mut self,
        actor: careplane_audit::Actor,
        action: &str,
        target: &str,
        tenant: Option<&str>,
        parameters: Value,
        result: careplane_audit::Outcome,
        operation: Option<i64>,
    ) -> Result<(), EngineError> {
        let data_dir = self.data_dir.clone();
        if self.store.is_none() && !data_dir.join("state.db").exists() {
            // Never applied: no vault for the log's key, and an audit entry
            // must not be what creates the platform's state.
            return Ok(());
        }
        crate::audit::record_as(
            self.store()?,
            &data_dir,
            actor,
            action,
            target,
            tenant,
            parameters,
            result,
            operation,
        )
    }

    pub(crate) fn journal(&mut self, limit: usize) -> Result<Vec<StepRecord>, EngineError> {
        Ok(self.store()?.journal(limit)?)
    }

    pub(crate) fn recorded(&mut self) -> Result<Vec<ResourceRecord>, EngineError> {
        if self.store.is_none() && !self.state_exists() {
            return Ok(Vec::new());
        }
        Ok(self.store()?.resources()?)
    }

    pub(crate) fn plan(&mut self) -> Result<Plan, EngineError> {
        let desired = desired::desired(&self.specs);
        let recorded = self.recorded()?;
        // What runs is observed, not only what was recorded: a server that
        // died shows up as a change.
        let drift = self.driver.observe(&recorded);
        let mut plan = plan::plan(&desired, &recorded, &drift)?;
        plan.notes = self.driver.notes(&recorded);
        Ok(plan)
    }

    pub(crate) fn destroy_plan(&mut self, tenants: &[String]) -> Result<Plan, EngineError> {
        let recorded = self.recorded()?;
        if tenants.is_empty() {
            return plan::plan(&[], &recorded, &Default::default());
        }
        for t in tenants {
            let known = recorded.iter().any(|r| belongs_to(r, t));
            if !known {
                return Err(EngineError::Refused {
                    problems: vec![format!(
                        "careplane holds nothing for tenant {t:?} (see `careplane status`)"
                    )],
                });
            }
        }
        let mine: Vec<ResourceRecord> = recorded
            .into_iter()
            .filter(|r| tenants.iter().any(|t| belongs_to(r, t)))
            .collect();
        plan::plan(&[], &mine, &Default::default())
    }
}

/// Whether a recorded resource exists only for `tenant`: its environments'
/// databases and users, and the servers of its own (dedicated) scope.
fn belongs_to(r: &ResourceRecord, tenant: &str) -> bool {
    r.props.get("tenant").and_then(|v| v.as_str()) == Some(tenant)
        || r.props.get("scope").and_then(|v| v.as_str()) == Some(tenant)
}

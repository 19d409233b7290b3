//! careplane's reconcile engine.
//!
//! `specs → desired resources → plan (diff against the state store) → apply`.
//! Apply is crash-safe by construction:
//!
//! 1. Everything careplane allocates (ports, paths, passwords, certificates) is
//!    written to the state store as a `pending` record *before* it is used, so
//!    a re-run reuses the same values instead of allocating new ones.
//! 2. Every runtime call is an "ensure" that converges whatever it finds.
//! 3. Each action is journaled (started / finished); the next apply reports
//!    steps that never finished and, because their records are still
//!    `pending` or `deleting`, plans them again.
//!
//! So an apply killed at any instant — including `kill -9` — is finished by
//! the next apply, with nothing duplicated or orphaned.

pub(crate) mod apply;
pub mod desired;
mod odoo;
pub mod plan;
mod runtime;
mod status;

use std::path::{Path, PathBuf};

use careplane_spec::SpecSet;
use careplane_state::{ResourceRecord, Store};

pub use apply::{
    ApplyOptions, ApplyReport, Credentials, DbCredentials, Event, OdooCredentials, RedisCredentials,
};
pub use careplane_state::{ExposeSecret, StepRecord};
pub use plan::{Action, Op, Plan};
pub use status::{EnvStatus, ServerStatus, Status};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] careplane_state::StateError),
    #[error(transparent)]
    Local(#[from] careplane_local::LocalError),
    #[error(transparent)]
    Odoo(#[from] careplane_odoo::OdooError),
    /// A resource (planned or recorded) that does not have its kind's shape.
    #[error(transparent)]
    Model(#[from] careplane_model::ModelError),
    #[error("{what}")]
    Unsupported { what: String },
    #[error("{what}")]
    Inconsistent { what: String },
    /// An action failed; earlier actions stay applied and the next apply
    /// resumes from here.
    #[error("{action} failed: {source}")]
    ActionFailed {
        action: String,
        #[source]
        source: Box<EngineError>,
    },
    /// Guards that refused the plan before anything ran; one line each.
    #[error("nothing was changed:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Refused { problems: Vec<String> },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    fn inconsistent(what: impl Into<String>) -> EngineError {
        EngineError::Inconsistent { what: what.into() }
    }
}

/// A spec set bound to its data directory.
pub struct Engine {
    specs: SpecSet,
    data_dir: PathBuf,
    store: Option<Store>,
}

impl Engine {
    /// Binds specs to their platform's data directory without touching disk.
    pub fn new(specs: SpecSet) -> Engine {
        // Servers run with their own working directory: every path handed
        // to them must be absolute.
        let data_dir = specs.data_dir();
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        Engine {
            specs,
            data_dir,
            store: None,
        }
    }

    pub fn specs(&self) -> &SpecSet {
        &self.specs
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn state_exists(&self) -> bool {
        self.data_dir.join("state.db").exists()
    }

    /// Opens (creating on first use) the state store.
    fn store(&mut self) -> Result<&Store, EngineError> {
        if self.store.is_none() {
            self.store = Some(Store::open(&self.data_dir)?);
        }
        Ok(self.store.as_ref().expect("just opened"))
    }

    /// What careplane holds now. Empty — and nothing created — when the
    /// platform was never applied, so `plan` changes nothing on disk.
    /// What careplane observes of its ready resources that differs from
    /// what it recorded: a PostgreSQL or Redis server, or an Odoo
    /// environment's supervisor, that is not running. Cheap (a pid file and
    /// a `kill(0)` each), so every plan can afford it. Nothing while the
    /// platform is stopped on purpose (`careplane stop`, until `start`).
    pub fn observe_drift(
        &self,
        recorded: &[ResourceRecord],
    ) -> std::collections::BTreeMap<String, String> {
        let mut drift = std::collections::BTreeMap::new();
        if self.data_dir.join(STOPPED_MARKER).exists() {
            return drift;
        }
        for r in recorded {
            if r.status != careplane_state::ResourceStatus::Ready {
                continue;
            }
            let Some(root) = r.observed.get("root").and_then(serde_json::Value::as_str) else {
                continue;
            };
            let root = Path::new(root);
            let down = match r.kind.as_str() {
                "pg-cluster" => careplane_local::pg::running_pid_at(root)
                    .is_none()
                    .then_some("PostgreSQL is not running"),
                "redis-server" => careplane_local::redis::running_pid_at(root)
                    .is_none()
                    .then_some("Redis is not running"),
                "odoo-env" => careplane_odoo::supervisor_pid(root)
                    .is_none()
                    .then_some("its supervisor is not running (Odoo is not kept up)"),
                _ => None,
            };
            if let Some(d) = down {
                drift.insert(r.id.clone(), d.to_string());
            }
        }
        drift
    }

    /// The newest `limit` steps of the operation journal, newest first.
    pub fn journal(&mut self, limit: usize) -> Result<Vec<StepRecord>, EngineError> {
        Ok(self.store()?.journal(limit)?)
    }

    pub fn recorded(&mut self) -> Result<Vec<ResourceRecord>, EngineError> {
        if self.store.is_none() && !self.state_exists() {
            return Ok(Vec::new());
        }
        Ok(self.store()?.resources()?)
    }

    /// The plan that `apply` would run now.
    pub fn plan(&mut self) -> Result<Plan, EngineError> {
        let desired = desired::desired(&self.specs);
        let recorded = self.recorded()?;
        let drift = self.observe_drift(&recorded);
        plan::plan(&desired, &recorded, &drift)
    }

    /// The plan that removes everything careplane holds for `tenants` (all of
    /// it, including shared servers and the CA, when `tenants` is empty).
    pub fn destroy_plan(&mut self, tenants: &[String]) -> Result<Plan, EngineError> {
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

/// `<dataDir>/stopped`: `careplane stop` stopped the platform on purpose,
/// so a stopped server is not drift (`careplane start` removes it).
pub(crate) const STOPPED_MARKER: &str = "stopped";

/// The body of `careplane supervise <spec>`: keeps an Odoo environment's
/// processes running (see `careplane_odoo::supervise`).
pub fn supervise(spec: &Path) -> Result<(), EngineError> {
    Ok(careplane_odoo::supervise_file(spec)?)
}

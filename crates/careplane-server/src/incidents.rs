//! Incidents on disk: `<dataDir>/serve/incidents.json`, read and rewritten whole (atomically)
//! under the `incidents` lock by the server and by `careplane incident ...` alike.

use std::path::{Path, PathBuf};

use careplane_sla::Incident;
use jiff::Timestamp;

use crate::Error;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("serve").join("incidents.json")
}

pub fn load(data_dir: &Path) -> Result<Vec<Incident>, Error> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::File {
            path: p,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Runs `f` on the incidents under the lock and saves them when it returns `Ok` and says
/// something changed.
pub fn update<R>(
    data_dir: &Path,
    f: impl FnOnce(&mut Vec<Incident>) -> Result<(R, bool), Error>,
) -> Result<R, Error> {
    let _lock = crate::lock(data_dir, "incidents")?;
    let mut all = load(data_dir)?;
    let (r, changed) = f(&mut all)?;
    if changed {
        let p = path(data_dir);
        let json = serde_json::to_vec_pretty(&all).expect("incidents serialize");
        careplane_sys::atomic_write(&p, &json, 0o640, None).map_err(|e| Error::io(&p, e))?;
    }
    Ok(r)
}

/// What a person does to an incident.
#[derive(Clone, Debug)]
pub enum Action {
    Acknowledge,
    Note(String),
    Resolve(String),
}

/// Applies `action` by `actor` at `now` to incident `id`; the sla crate refuses what makes no
/// sense (a second acknowledgement, anything after resolution), naming the incident.
pub fn act(
    data_dir: &Path,
    id: &str,
    actor: &str,
    action: &Action,
    now: Timestamp,
) -> Result<Incident, Error> {
    update(data_dir, |all| {
        let i = all.iter_mut().find(|i| i.id == id).ok_or_else(|| {
            Error::NotFound(format!("incident {id:?} (see `careplane incident list`)"))
        })?;
        match action {
            Action::Acknowledge => i.acknowledge(actor, now)?,
            Action::Note(text) => i.note(actor, now, text)?,
            Action::Resolve(summary) => i.resolve(actor, now, summary)?,
        }
        Ok((i.clone(), true))
    })
}

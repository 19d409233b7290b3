//! Each tenant's calendar from the specs (docs/design/0014): its time zone and its
//! `MaintenanceWindow`s as careplane-sla `CalendarEntry`s, for reports, `/metrics`, and the
//! freeze check of `plan`/`apply`.

use careplane_sla::calendar::zone;
use careplane_sla::{CalendarEntry, EntryKind, Month, Schedule, Weekday};
use careplane_spec::{SpecSet, WindowType};
use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::Error;

/// A tenant environment's calendar: the zone its months are counted in and the windows
/// covering it.
#[derive(Debug, Clone)]
pub struct Calendar {
    pub zone_name: String,
    pub zone: TimeZone,
    pub entries: Vec<CalendarEntry>,
}

impl Calendar {
    /// The month `now` falls in, in this zone (a tenant in Berlin is in January at
    /// 23:30 UTC on 31 December).
    pub fn month_of(&self, now: Timestamp) -> Result<Month, Error> {
        let d = now.to_zoned(self.zone.clone()).date();
        Ok(Month::new(d.year(), d.month())?)
    }
}

fn weekday(name: &str, at: &str) -> Result<Weekday, Error> {
    Ok(match name {
        "monday" => Weekday::Monday,
        "tuesday" => Weekday::Tuesday,
        "wednesday" => Weekday::Wednesday,
        "thursday" => Weekday::Thursday,
        "friday" => Weekday::Friday,
        "saturday" => Weekday::Saturday,
        "sunday" => Weekday::Sunday,
        other => return Err(Error::Invalid(format!("{at}: {other:?} is not a weekday"))),
    })
}

fn time(text: &str, at: &str) -> Result<Time, Error> {
    Time::strptime("%H:%M", text)
        .map_err(|e| Error::Invalid(format!("{at}: {text:?} is not HH:MM: {e}")))
}

fn datetime(text: &str, at: &str) -> Result<DateTime, Error> {
    DateTime::strptime("%Y-%m-%dT%H:%M", text)
        .map_err(|e| Error::Invalid(format!("{at}: {text:?} is not YYYY-MM-DDTHH:MM: {e}")))
}

/// The calendar of `tenant`'s environment `env`. Validation already checked every field;
/// the errors here only guard against specs built by hand.
pub fn calendar_of(specs: &SpecSet, tenant: &str, env: &str) -> Result<Calendar, Error> {
    let t = specs
        .tenant(tenant)
        .ok_or_else(|| Error::NotFound(format!("tenant {tenant:?} in the specs")))?;
    let zone_name = t.spec.zone().to_string();
    let tz = zone(&zone_name, &format!("tenant {tenant:?}: spec.timeZone"))?;
    let mut entries = Vec::new();
    for w in specs.windows_of(tenant, env) {
        let at = format!("MaintenanceWindow {:?}", w.metadata.name);
        let schedule = match (&w.spec.weekly, &w.spec.once) {
            (Some(wk), _) => Schedule::Weekly {
                days: wk
                    .days
                    .iter()
                    .map(|d| weekday(d, &at))
                    .collect::<Result<_, _>>()?,
                start: time(&wk.start, &at)?,
                end: time(&wk.end, &at)?,
            },
            (None, Some(o)) => Schedule::Once {
                start: datetime(&o.start, &at)?,
                end: datetime(&o.end, &at)?,
            },
            (None, None) => return Err(Error::Invalid(format!("{at}: no schedule"))),
        };
        let entry = CalendarEntry {
            id: w.metadata.name.clone(),
            kind: match w.spec.window_type {
                WindowType::Maintenance => EntryKind::Maintenance,
                WindowType::Freeze => EntryKind::Freeze,
            },
            approved: match w.spec.window_type {
                WindowType::Maintenance => w.spec.approved_by.is_some(),
                WindowType::Freeze => true,
            },
            schedule,
            reason: w.spec.reason.clone(),
        };
        entry.validate()?;
        entries.push(entry);
    }
    Ok(Calendar {
        zone_name,
        zone: tz,
        entries,
    })
}

/// A freeze in force over one environment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Freeze {
    pub tenant: String,
    pub environment: String,
    /// The `MaintenanceWindow`'s name.
    pub window: String,
    /// When this occurrence of the freeze ends (RFC 3339, UTC).
    pub until: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl std::fmt::Display for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} is frozen by MaintenanceWindow {:?} until {}",
            self.tenant, self.environment, self.window, self.until
        )?;
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}

/// The freezes in force at `now` over each of `envs` (`(tenant, environment)` pairs), in
/// the order given; environments the specs do not know are skipped.
pub fn freezes_at(
    specs: &SpecSet,
    envs: &[(String, String)],
    now: Timestamp,
) -> Result<Vec<Freeze>, Error> {
    let mut out = Vec::new();
    let next = now
        .checked_add(jiff::SignedDuration::from_nanos(1))
        .map_err(|e| Error::Invalid(format!("instant {now}: {e}")))?;
    for (t, e) in envs {
        let known = specs
            .tenant(t)
            .is_some_and(|x| x.spec.environments.iter().any(|y| &y.name == e));
        if !known {
            continue;
        }
        let cal = calendar_of(specs, t, e)?;
        for entry in cal.entries.iter().filter(|x| x.kind == EntryKind::Freeze) {
            let end = entry
                .intervals(&cal.zone, now, next)?
                .into_iter()
                .filter(|&(s, end)| s <= now && now < end)
                .map(|(_, end)| end)
                .max();
            if let Some(end) = end {
                out.push(Freeze {
                    tenant: t.clone(),
                    environment: e.clone(),
                    window: entry.id.clone(),
                    until: end.to_string(),
                    reason: entry.reason.clone(),
                });
            }
        }
    }
    Ok(out)
}

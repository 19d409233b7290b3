//! Multi-window multi-burn-rate alerts (the SRE workbook, "Alerting on SLOs"), as a pure
//! function of a minute timeline, the maintenance calendar, the SLO and `now`.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::account::{bad_minutes, Observation, Timeline};
use crate::calendar::{excluded_between, CalendarEntry};
use crate::model::{Slo, UnknownPolicy};
use crate::{Error, Percent};

/// Fire when both windows burn at least `factor_tenths / 10` times the sustainable rate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurnRule {
    pub name: String,
    pub long_minutes: u32,
    pub short_minutes: u32,
    pub factor_tenths: u32,
    /// Page on-call (true) or open a ticket (false).
    pub page: bool,
}

impl BurnRule {
    /// The workbook's three: 1 h/5 min at 14.4× and 6 h/30 min at 6× page (2 % and 5 % of a
    /// 30-day budget gone), 3 d/6 h at 1× opens a ticket (10 %).
    pub fn defaults() -> Vec<BurnRule> {
        let r = |name: &str, long_minutes, short_minutes, factor_tenths, page| BurnRule {
            name: name.into(),
            long_minutes,
            short_minutes,
            factor_tenths,
            page,
        };
        vec![
            r("1h-5m-14.4x", 60, 5, 144, true),
            r("6h-30m-6x", 360, 30, 60, true),
            r("3d-6h-1x", 4320, 360, 10, false),
        ]
    }
}

/// Bad and valid minutes of one window and its burn rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Burn {
    pub bad: u64,
    pub valid: u64,
    /// Burn rate × 1000, rounded down (1000 = exactly the sustainable rate).
    pub rate_milli: u64,
}

/// One rule's evaluation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurnAlert {
    pub rule: BurnRule,
    pub long: Burn,
    pub short: Burn,
    pub firing: bool,
}

/// Evaluates `rules` over the whole minutes before `now`. Minutes are classified as in the
/// monthly report: approved maintenance drops out, unknown follows the SLO's policy, and a
/// failure run shorter than N at the end is not (yet) bad. `timeline` should reach back the
/// longest window plus N−1 minutes (older minutes count as no data).
pub fn evaluate_burn(
    timeline: &Timeline,
    calendar: &[CalendarEntry],
    zone: &TimeZone,
    slo: &Slo,
    rules: &[BurnRule],
    now: Timestamp,
) -> Result<Vec<BurnAlert>, Error> {
    slo.validate()?;
    let longest = rules
        .iter()
        .map(|r| r.long_minutes.max(r.short_minutes))
        .max()
        .unwrap_or(0);
    let lead = slo.bad_minute.consecutive_failures - 1;
    let end = now.as_second().div_euclid(60) * 60;
    let from = Timestamp::from_second(end - 60 * i64::from(longest + lead))
        .map_err(|e| Error::time("now", e))?;
    let obs = timeline.slice(from, longest + lead);
    let bad = bad_minutes(&obs, slo.bad_minute.consecutive_failures);
    let window_start =
        Timestamp::from_second(end - 60 * i64::from(longest)).map_err(|e| Error::time("now", e))?;
    let excluded = excluded_between(calendar, zone, window_start, longest)?;
    let unknown_bad = slo.unknown == UnknownPolicy::Down;
    // Minutes before the first result in the whole span are the time before careplane
    // watched this environment at all (just created, or serve just started after a
    // longer absence): they count for nothing rather than as bad, or every environment
    // would page on a fresh start. A gap *after* results is a blind spot and follows
    // the unknown policy like in the monthly report.
    let first_seen = obs
        .iter()
        .position(|o| *o != Observation::NoData)
        .unwrap_or(obs.len());
    // Per minute of the longest window: 0 = not counted, 1 = good, 2 = bad.
    let class: Vec<u8> = (0..longest as usize)
        .map(|i| {
            let k = i + lead as usize;
            if excluded[i] || k < first_seen {
                0
            } else if bad[k] {
                2
            } else {
                match obs[k] {
                    Observation::Up | Observation::Failed => 1,
                    _ if unknown_bad => 2,
                    _ => 0,
                }
            }
        })
        .collect();
    let budget = u64::from(Percent::FULL - slo.objective.ppm());
    let window = |minutes: u32| {
        let tail = &class[(longest - minutes) as usize..];
        let bad = tail.iter().filter(|&&c| c == 2).count() as u64;
        let valid = tail.iter().filter(|&&c| c != 0).count() as u64;
        let rate_milli = if valid == 0 {
            0
        } else {
            (u128::from(bad) * u128::from(Percent::FULL) * 1000
                / (u128::from(valid) * u128::from(budget))) as u64
        };
        Burn {
            bad,
            valid,
            rate_milli,
        }
    };
    let at_least = |b: &Burn, tenths: u32| {
        b.valid > 0
            && u128::from(b.bad) * u128::from(Percent::FULL) * 10
                >= u128::from(tenths) * u128::from(budget) * u128::from(b.valid)
    };
    Ok(rules
        .iter()
        .map(|r| {
            let (long, short) = (window(r.long_minutes), window(r.short_minutes));
            let firing = at_least(&long, r.factor_tenths) && at_least(&short, r.factor_tenths);
            BurnAlert {
                rule: r.clone(),
                long,
                short,
                firing,
            }
        })
        .collect())
}

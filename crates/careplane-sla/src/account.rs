//! Minute timelines, the bad-minute rule, monthly accounting and service credits.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::calendar::{excluded_minutes, CalendarEntry, MonthSpan};
use crate::model::{CreditTier, Outcome, ProbeResult, Slo, UnknownPolicy};
use crate::{Error, Percent};

/// What the critical journey showed in one minute. The order is the merge order: a minute
/// with any failure failed, else with any success was up, else unknown, else had no data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Observation {
    NoData = 0,
    Unknown = 1,
    Up = 2,
    Failed = 3,
}

impl Observation {
    pub fn merge(self, other: Observation) -> Observation {
        self.max(other)
    }

    pub fn from_code(c: u8) -> Observation {
        match c & 3 {
            0 => Observation::NoData,
            1 => Observation::Unknown,
            2 => Observation::Up,
            _ => Observation::Failed,
        }
    }
}

impl From<Outcome> for Observation {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Up => Observation::Up,
            Outcome::Down => Observation::Failed,
            Outcome::Unknown => Observation::Unknown,
        }
    }
}

/// Per-minute observations from `start` (a whole UTC minute) on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    pub start: Timestamp,
    pub obs: Vec<Observation>,
}

fn floor_minute(ts: Timestamp) -> Timestamp {
    Timestamp::from_second(ts.as_second().div_euclid(60) * 60).expect("in range")
}

impl Timeline {
    /// `minutes` minutes of no data from the minute containing `start`.
    pub fn empty(start: Timestamp, minutes: u32) -> Timeline {
        Timeline {
            start: floor_minute(start),
            obs: vec![Observation::NoData; minutes as usize],
        }
    }

    /// Folds the results of `probe` into minutes; results outside the range are ignored.
    pub fn from_results<'a>(
        results: impl IntoIterator<Item = &'a ProbeResult>,
        probe: &str,
        start: Timestamp,
        minutes: u32,
    ) -> Timeline {
        let mut t = Timeline::empty(start, minutes);
        for r in results.into_iter().filter(|r| r.probe == probe) {
            t.record(r.at, r.outcome.into());
        }
        t
    }

    pub fn end(&self) -> Timestamp {
        self.minute_start(self.obs.len() as i64)
    }

    fn minute_start(&self, i: i64) -> Timestamp {
        Timestamp::from_second(self.start.as_second() + 60 * i).expect("in range")
    }

    fn index(&self, ts: Timestamp) -> Option<usize> {
        let i = (ts.as_second() - self.start.as_second()).div_euclid(60);
        (0..self.obs.len() as i64)
            .contains(&i)
            .then_some(i as usize)
    }

    /// Merges one observation into the minute containing `at` (ignored outside the range).
    pub fn record(&mut self, at: Timestamp, o: Observation) {
        if let Some(i) = self.index(at) {
            self.obs[i] = self.obs[i].merge(o);
        }
    }

    /// `minutes` observations from the minute containing `from`; no data outside the range.
    pub fn slice(&self, from: Timestamp, minutes: u32) -> Vec<Observation> {
        let first = (from.as_second() - self.start.as_second()).div_euclid(60);
        (0..i64::from(minutes))
            .map(|k| {
                let i = first + k;
                if (0..self.obs.len() as i64).contains(&i) {
                    self.obs[i as usize]
                } else {
                    Observation::NoData
                }
            })
            .collect()
    }
}

/// Which minutes are bad under the rule: `Failed` and in a run of at least `n` consecutive
/// `Failed` minutes (any other observation, a gap included, ends a run).
pub fn bad_minutes(obs: &[Observation], n: u32) -> Vec<bool> {
    let n = n.max(1) as usize;
    let mut bad = vec![false; obs.len()];
    let mut i = 0;
    while i < obs.len() {
        if obs[i] != Observation::Failed {
            i += 1;
            continue;
        }
        let j = obs[i..]
            .iter()
            .position(|&o| o != Observation::Failed)
            .map_or(obs.len(), |k| i + k);
        if j - i >= n {
            bad[i..j].iter_mut().for_each(|b| *b = true);
        }
        i = j;
    }
    bad
}

/// What one minute of the month counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MinuteClass {
    Up,
    Down,
    Excluded,
    Unknown,
}

/// One month of one environment, minute by minute (docs/design/0009).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonthAccount {
    pub span: MonthSpan,
    pub classes: Vec<MinuteClass>,
    pub up: u32,
    pub down: u32,
    pub excluded: u32,
    pub unknown: u32,
    /// Minutes inside approved maintenance that would otherwise have been down (shown apart).
    pub down_in_maintenance: u32,
    pub unknown_policy: UnknownPolicy,
    pub objective: Percent,
}

/// Classifies the minutes of `span`. `timeline` should cover the month plus N−1 minutes on
/// either side so that failure runs crossing the month's edges are judged whole (minutes it
/// does not cover are no data).
pub fn account_month(
    timeline: &Timeline,
    span: &MonthSpan,
    calendar: &[CalendarEntry],
    slo: &Slo,
) -> Result<MonthAccount, Error> {
    slo.validate()?;
    let lead = slo.bad_minute.consecutive_failures - 1;
    let from = Timestamp::from_second(span.start.as_second() - 60 * i64::from(lead))
        .map_err(|e| Error::time("month", e))?;
    let obs = timeline.slice(from, span.minutes + 2 * lead);
    let bad = bad_minutes(&obs, slo.bad_minute.consecutive_failures);
    let excluded = excluded_minutes(calendar, span)?;
    let mut a = MonthAccount {
        span: span.clone(),
        classes: Vec::with_capacity(span.minutes as usize),
        up: 0,
        down: 0,
        excluded: 0,
        unknown: 0,
        down_in_maintenance: 0,
        unknown_policy: slo.unknown,
        objective: slo.objective,
    };
    for (i, &ex) in excluded.iter().enumerate() {
        let k = i + lead as usize;
        let class = if ex {
            a.excluded += 1;
            a.down_in_maintenance += u32::from(bad[k]);
            MinuteClass::Excluded
        } else if bad[k] {
            a.down += 1;
            MinuteClass::Down
        } else {
            match obs[k] {
                Observation::Up | Observation::Failed => {
                    a.up += 1;
                    MinuteClass::Up
                }
                Observation::Unknown | Observation::NoData => {
                    a.unknown += 1;
                    MinuteClass::Unknown
                }
            }
        };
        a.classes.push(class);
    }
    Ok(a)
}

impl MonthAccount {
    /// Minutes that count as good.
    pub fn good(&self) -> u64 {
        u64::from(self.up)
    }

    /// Minutes that count against the objective.
    pub fn bad(&self) -> u64 {
        u64::from(self.down)
            + if self.unknown_policy == UnknownPolicy::Down {
                u64::from(self.unknown)
            } else {
                0
            }
    }

    /// The denominator: good + bad.
    pub fn valid(&self) -> u64 {
        self.good() + self.bad()
    }

    /// Availability rounded down to parts per million; `None` without a valid minute.
    pub fn availability(&self) -> Option<Percent> {
        let v = self.valid();
        (v > 0).then(|| {
            Percent::from_ppm((self.good() * u64::from(Percent::FULL) / v) as u32).expect("≤ 100 %")
        })
    }

    /// Whether the objective was met (exact); `None` without a valid minute.
    pub fn met_objective(&self) -> Option<bool> {
        let v = self.valid();
        (v > 0).then(|| !below(self.good(), v, self.objective))
    }

    /// The error budget in thousandths of a minute: valid × (1 − objective).
    pub fn budget_milli_minutes(&self) -> u64 {
        self.valid() * u64::from(Percent::FULL - self.objective.ppm()) / 1000
    }

    /// Budget used in basis points (10000 = all of it; above when overspent), rounded down.
    pub fn budget_used_bp(&self) -> u64 {
        let budget_ppm_minutes = self.valid() * u64::from(Percent::FULL - self.objective.ppm());
        if budget_ppm_minutes == 0 {
            return if self.bad() == 0 { 0 } else { u64::MAX };
        }
        let used = u128::from(self.bad()) * u128::from(Percent::FULL) * 10_000
            / u128::from(budget_ppm_minutes);
        u64::try_from(used).unwrap_or(u64::MAX)
    }

    /// Runs of equal class, as (first minute, length, class), for timelines.
    pub fn runs(&self) -> Vec<(u32, u32, MinuteClass)> {
        let mut out: Vec<(u32, u32, MinuteClass)> = Vec::new();
        for (i, &c) in self.classes.iter().enumerate() {
            match out.last_mut() {
                Some(last) if last.2 == c => last.1 += 1,
                _ => out.push((i as u32, 1, c)),
            }
        }
        out
    }
}

/// `good / valid < p`, exactly.
fn below(good: u64, valid: u64, p: Percent) -> bool {
    u128::from(good) * u128::from(Percent::FULL) < u128::from(p.ppm()) * u128::from(valid)
}

/// The credit a month earns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditOwed {
    /// Index of the credit-table row applied.
    pub tier: usize,
    pub below: Percent,
    pub credit: Percent,
    /// `fee × credit` rounded half up to a cent, when the fee is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<u64>,
}

/// The largest credit among the rows whose `below` the availability `good / valid` is strictly
/// under; `None` when none applies or nothing was valid.
pub fn credit_owed(
    good: u64,
    valid: u64,
    table: &[CreditTier],
    monthly_fee_cents: Option<u64>,
) -> Option<CreditOwed> {
    if valid == 0 {
        return None;
    }
    let (tier, row) = table
        .iter()
        .enumerate()
        .filter(|(_, t)| below(good, valid, t.below))
        .max_by_key(|(i, t)| (t.credit, std::cmp::Reverse(*i)))?;
    let amount_cents = monthly_fee_cents.map(|fee| {
        let x = u128::from(fee) * u128::from(row.credit.ppm());
        ((x + u128::from(Percent::FULL / 2)) / u128::from(Percent::FULL)) as u64
    });
    Some(CreditOwed {
        tier,
        below: row.below,
        credit: row.credit,
        amount_cents,
    })
}

//! The tenant's calendar: months in its zone, maintenance windows and freezes, support hours.

use std::fmt;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Looks an IANA zone up in the bundled database (docs/design/0009: never the host's).
pub fn zone(name: &str, at: &str) -> Result<TimeZone, Error> {
    jiff::tz::db().get(name).map_err(|_| Error::UnknownZone {
        at: at.to_string(),
        zone: name.to_string(),
    })
}

/// A calendar month, written `YYYY-MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i16,
    /// 1..=12
    pub month: i8,
}

impl Month {
    pub fn new(year: i16, month: i8) -> Result<Self, Error> {
        if !(1..=12).contains(&month) || !(1900..=9998).contains(&year) {
            return Err(Error::invalid(
                "month",
                format!("{year:04}-{month:02} is not a month"),
            ));
        }
        Ok(Month { year, month })
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::invalid("month", format!("{s:?} is not a month like \"2026-03\""));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        Month::new(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?)
    }

    pub fn first_day(self) -> Date {
        Date::new(self.year, self.month, 1).expect("validated month")
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The UTC month an instant falls in.
    pub fn of_utc(ts: Timestamp) -> Month {
        let d = ts.to_zoned(TimeZone::UTC).date();
        Month {
            year: d.year(),
            month: d.month(),
        }
    }

    /// The UTC month's bounds.
    pub fn utc_span(self) -> (Timestamp, Timestamp) {
        let at = |m: Month| {
            m.first_day()
                .to_datetime(Time::midnight())
                .to_zoned(TimeZone::UTC)
                .expect("in range")
                .timestamp()
        };
        (at(self), at(self.next()))
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Serialize for Month {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Month {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Month::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A month in a zone: its UTC bounds and its minutes (minute `i` starts at `start + 60 i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonthSpan {
    pub month: Month,
    pub zone: TimeZone,
    pub start: Timestamp,
    pub end: Timestamp,
    pub minutes: u32,
}

impl MonthSpan {
    pub fn new(month: Month, zone: &TimeZone) -> Result<Self, Error> {
        let at = format!("month {month}");
        let midnight = |m: Month| {
            zone.to_ambiguous_timestamp(m.first_day().to_datetime(Time::midnight()))
                .compatible()
                .map_err(|e| Error::time(&at, e))
        };
        let (start, end) = (midnight(month)?, midnight(month.next())?);
        let secs = end.as_second() - start.as_second();
        if start.as_second() % 60 != 0 || start.subsec_nanosecond() != 0 || secs % 60 != 0 {
            return Err(Error::invalid(
                at,
                "the zone's offset is not a whole number of minutes",
            ));
        }
        Ok(MonthSpan {
            month,
            zone: zone.clone(),
            start,
            end,
            minutes: (secs / 60) as u32,
        })
    }

    pub fn minute_start(&self, i: u32) -> Timestamp {
        Timestamp::from_second(self.start.as_second() + 60 * i64::from(i)).expect("in range")
    }

    /// Index of the minute an instant falls in, if it is in the month.
    pub fn minute_of(&self, ts: Timestamp) -> Option<u32> {
        let d = ts.as_second() - self.start.as_second();
        (d >= 0 && ts < self.end).then_some((d / 60) as u32)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl Weekday {
    fn matches(self, d: jiff::civil::Weekday) -> bool {
        use jiff::civil::Weekday as J;
        matches!(
            (self, d),
            (Weekday::Monday, J::Monday)
                | (Weekday::Tuesday, J::Tuesday)
                | (Weekday::Wednesday, J::Wednesday)
                | (Weekday::Thursday, J::Thursday)
                | (Weekday::Friday, J::Friday)
                | (Weekday::Saturday, J::Saturday)
                | (Weekday::Sunday, J::Sunday)
        )
    }
}

/// When an entry applies, in local time of the zone it is read in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// Every listed weekday from `start` to `end`; an `end` at or before `start` ends on the
    /// next day (`22:00`–`02:00` crosses midnight; `00:00`–`00:00` is the whole day).
    Weekly {
        days: Vec<Weekday>,
        start: Time,
        end: Time,
    },
    /// Once, from `start` to `end` (local date-times).
    Once { start: DateTime, end: DateTime },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Downtime inside it is excluded from availability when `approved`.
    Maintenance,
    /// No changes to production (month-end close, audits, clinical peaks); excludes nothing.
    Freeze,
}

/// One entry of a tenant's maintenance calendar (the `MaintenanceWindow` kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalendarEntry {
    pub id: String,
    pub kind: EntryKind,
    /// Approved in advance; an unapproved maintenance window excludes nothing.
    pub approved: bool,
    pub schedule: Schedule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A start in local time: a time inside a spring-forward gap moves forward by the gap, an
/// ambiguous one means its first occurrence.
fn local_start(zone: &TimeZone, dt: DateTime, at: &str) -> Result<Timestamp, Error> {
    zone.to_ambiguous_timestamp(dt)
        .compatible()
        .map_err(|e| Error::time(at, e))
}

/// An end in local time: like a start, except that an ambiguous time means its second
/// occurrence, so a window covers the whole repeated hour it names.
fn local_end(zone: &TimeZone, dt: DateTime, at: &str) -> Result<Timestamp, Error> {
    let amb = zone.to_ambiguous_timestamp(dt);
    match amb.offset() {
        AmbiguousOffset::Fold { .. } => amb.later(),
        _ => amb.compatible(),
    }
    .map_err(|e| Error::time(at, e))
}

/// The instants of weekly `days` from `start` to `end` overlapping `[from, to)`.
fn weekly_intervals(
    zone: &TimeZone,
    days: &[Weekday],
    start: Time,
    end: Time,
    from: Timestamp,
    to: Timestamp,
    at: &str,
) -> Result<Vec<(Timestamp, Timestamp)>, Error> {
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    let first = from
        .to_zoned(zone.clone())
        .date()
        .checked_sub(2.days())
        .map_err(|e| Error::time(at, e))?;
    let last = to.to_zoned(zone.clone()).date();
    let mut d = first;
    while d <= last {
        if days.iter().any(|w| w.matches(d.weekday())) {
            let end_date = if end <= start {
                d.tomorrow().map_err(|e| Error::time(at, e))?
            } else {
                d
            };
            let s = local_start(zone, d.to_datetime(start), at)?;
            let e = local_end(zone, end_date.to_datetime(end), at)?;
            if s < e && s < to && e > from {
                out.push((s, e));
            }
        }
        d = d.tomorrow().map_err(|e| Error::time(at, e))?;
    }
    Ok(out)
}

impl CalendarEntry {
    pub fn validate(&self) -> Result<(), Error> {
        let at = format!("calendar entry {:?}", self.id);
        if self.id.trim().is_empty() {
            return Err(Error::invalid("calendar entry", "has an empty id"));
        }
        match &self.schedule {
            Schedule::Weekly { days, .. } if days.is_empty() => Err(Error::invalid(
                format!("{at}: schedule.days"),
                "lists no day",
            )),
            Schedule::Once { start, end } if end <= start => Err(Error::invalid(
                format!("{at}: schedule.end"),
                format!("{end} is not after the start {start}"),
            )),
            _ => Ok(()),
        }
    }

    /// The instants this entry covers that overlap `[from, to)`, read in `zone`.
    pub fn intervals(
        &self,
        zone: &TimeZone,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(Timestamp, Timestamp)>, Error> {
        let at = format!("calendar entry {:?}", self.id);
        match &self.schedule {
            Schedule::Weekly { days, start, end } => {
                weekly_intervals(zone, days, *start, *end, from, to, &at)
            }
            Schedule::Once { start, end } => {
                let (s, e) = (local_start(zone, *start, &at)?, local_end(zone, *end, &at)?);
                Ok(if s < e && s < to && e > from {
                    vec![(s, e)]
                } else {
                    vec![]
                })
            }
        }
    }

    fn covers(&self, zone: &TimeZone, ts: Timestamp) -> Result<bool, Error> {
        let next = ts
            .checked_add(1.nanosecond())
            .map_err(|e| Error::time("instant", e))?;
        Ok(self
            .intervals(zone, ts, next)?
            .iter()
            .any(|&(s, e)| s <= ts && ts < e))
    }
}

/// Which minutes of `span` start inside an approved maintenance window (a union: overlapping
/// windows are not counted twice).
pub fn excluded_minutes(entries: &[CalendarEntry], span: &MonthSpan) -> Result<Vec<bool>, Error> {
    excluded_between(entries, &span.zone, span.start, span.minutes)
}

/// Like [`excluded_minutes`] for any `minutes` minutes from `start` (a whole minute).
pub fn excluded_between(
    entries: &[CalendarEntry],
    zone: &TimeZone,
    start: Timestamp,
    minutes: u32,
) -> Result<Vec<bool>, Error> {
    let mut out = vec![false; minutes as usize];
    let end = Timestamp::from_second(start.as_second() + 60 * i64::from(minutes))
        .map_err(|e| Error::time("range", e))?;
    let ceil = |ts: Timestamp| {
        let d = ts.as_second() - start.as_second() + i64::from(ts.subsec_nanosecond() > 0);
        (d + 59).div_euclid(60).clamp(0, i64::from(minutes)) as usize
    };
    for e in entries
        .iter()
        .filter(|e| e.approved && e.kind == EntryKind::Maintenance)
    {
        e.validate()?;
        for (s, en) in e.intervals(zone, start, end)? {
            out[ceil(s)..ceil(en)].iter_mut().for_each(|m| *m = true);
        }
    }
    Ok(out)
}

/// The approved maintenance window covering `ts`, if any.
pub fn maintenance_at<'a>(
    entries: &'a [CalendarEntry],
    zone: &TimeZone,
    ts: Timestamp,
) -> Result<Option<&'a CalendarEntry>, Error> {
    for e in entries
        .iter()
        .filter(|e| e.approved && e.kind == EntryKind::Maintenance)
    {
        if e.covers(zone, ts)? {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The freeze covering `ts`, if any (for `plan`: a change to production inside it is shown).
/// Freezes apply whether approved or not: a freeze is a restriction, not a permission.
pub fn freeze_at<'a>(
    entries: &'a [CalendarEntry],
    zone: &TimeZone,
    ts: Timestamp,
) -> Result<Option<&'a CalendarEntry>, Error> {
    for e in entries.iter().filter(|e| e.kind == EntryKind::Freeze) {
        if e.covers(zone, ts)? {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// When the provider's support desk works, for targets on the support-hours clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SupportHours {
    /// 24×7.
    #[default]
    Always,
    /// Listed weekdays from `start` to `end` in `timeZone`.
    Weekly {
        #[serde(rename = "timeZone")]
        time_zone: String,
        days: Vec<Weekday>,
        start: Time,
        end: Time,
    },
}

impl SupportHours {
    pub(crate) fn validate(&self, at: &str) -> Result<(), Error> {
        if let SupportHours::Weekly {
            time_zone, days, ..
        } = self
        {
            zone(time_zone, &format!("{at}.timeZone"))?;
            if days.is_empty() {
                return Err(Error::invalid(format!("{at}.days"), "lists no day"));
            }
        }
        Ok(())
    }

    /// Seconds of support time in `[a, b)` (0 when `b <= a`).
    pub fn seconds_between(&self, a: Timestamp, b: Timestamp) -> Result<i64, Error> {
        if b <= a {
            return Ok(0);
        }
        match self {
            SupportHours::Always => Ok(b.as_second() - a.as_second()),
            SupportHours::Weekly {
                time_zone,
                days,
                start,
                end,
            } => {
                let tz = zone(time_zone, "supportHours.timeZone")?;
                let mut iv = weekly_intervals(&tz, days, *start, *end, a, b, "supportHours")?;
                iv.sort();
                let (mut total, mut reached) = (0i64, a);
                for (s, e) in iv {
                    let s = s.max(reached);
                    let e = e.min(b);
                    if e > s {
                        total += e.as_second() - s.as_second();
                        reached = e;
                    }
                }
                Ok(total)
            }
        }
    }
}

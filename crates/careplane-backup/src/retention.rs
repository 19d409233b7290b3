//! Which backups a retention policy keeps: a pure function over backup
//! times, the policy and now.
//!
//! GFS buckets are UTC calendar days, ISO weeks, months and years. For each
//! period with count N, the newest backup of each of the N newest buckets
//! that hold a backup is kept (restic's rule: a missed day does not shorten
//! what is kept). On top: the K newest backups, every backup inside the PITR
//! window plus the newest one before it (the base that recovery into the
//! window's start replays from), and, for safety, any backup from the future.

use jiff::{tz::TimeZone, SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// A retention policy. All zero and no window keeps nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keep at least the last K backups.
    pub keep_last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep what point-in-time recovery to any instant in `now - window ..= now` needs.
    pub pitr_window: Option<SignedDuration>,
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Last,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    /// Inside the PITR window, or the base for its start.
    Pitr,
    /// Newer than `now` (a clock step): never pruned.
    Future,
}

/// For each backup time (same order as `times`), the reasons it is kept;
/// empty means it may be deleted.
pub fn select(times: &[Timestamp], policy: &RetentionPolicy, now: Timestamp) -> Vec<Vec<Reason>> {
    let mut reasons = vec![Vec::new(); times.len()];
    // Newest first; equal times in input order, so the result is deterministic.
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(a.cmp(&b)));

    for &i in order.iter().take(policy.keep_last as usize) {
        reasons[i].push(Reason::Last);
    }
    let periods: [(u32, Reason, Bucket); 4] = [
        (policy.daily, Reason::Daily, day_bucket),
        (policy.weekly, Reason::Weekly, week_bucket),
        (policy.monthly, Reason::Monthly, month_bucket),
        (policy.yearly, Reason::Yearly, year_bucket),
    ];
    for (count, reason, bucket) in periods {
        let mut seen = 0u32;
        let mut last = None;
        for &i in &order {
            if seen >= count {
                break;
            }
            let b = bucket(times[i]);
            if last != Some(b) {
                last = Some(b);
                seen += 1;
                reasons[i].push(reason);
            }
        }
    }
    if let Some(window) = policy.pitr_window {
        let cutoff = now.checked_sub(window.abs()).unwrap_or(Timestamp::MIN);
        let mut base_found = false;
        for &i in &order {
            if times[i] > cutoff {
                reasons[i].push(Reason::Pitr);
            } else if !base_found {
                base_found = true;
                reasons[i].push(Reason::Pitr);
            }
        }
    }
    for (i, t) in times.iter().enumerate() {
        if *t > now {
            reasons[i].push(Reason::Future);
        }
    }
    for r in &mut reasons {
        r.sort();
        r.dedup();
    }
    reasons
}

/// A calendar bucket of a time (UTC).
type Bucket = fn(Timestamp) -> (i32, i32, i32);

fn day_bucket(t: Timestamp) -> (i32, i32, i32) {
    let d = t.to_zoned(TimeZone::UTC).date();
    (d.year() as i32, d.month() as i32, d.day() as i32)
}

fn week_bucket(t: Timestamp) -> (i32, i32, i32) {
    let w = t.to_zoned(TimeZone::UTC).date().iso_week_date();
    (w.year() as i32, w.week() as i32, 0)
}

fn month_bucket(t: Timestamp) -> (i32, i32, i32) {
    let d = t.to_zoned(TimeZone::UTC).date();
    (d.year() as i32, d.month() as i32, 0)
}

fn year_bucket(t: Timestamp) -> (i32, i32, i32) {
    (t.to_zoned(TimeZone::UTC).date().year() as i32, 0, 0)
}

/// Which records shipped between backups (an environment's filestore
/// shipments, docs/design/0010) are still needed, given the times (finished)
/// of the backups retention keeps: a restore to T starts from the newest
/// backup at or before T and takes from records written after that backup
/// what it lacks. So every record at or after the backup a restore to the
/// window's start starts from is kept (the newest kept backup at or before
/// `now - window`, or the oldest kept one when the window reaches back
/// further); older ones are needed by no restore inside the window. Without
/// a window, records after the oldest kept backup are kept. With no kept
/// backup, all are (nothing to restore from says nothing about them).
pub fn records_needed(
    kept_backups: &[Timestamp],
    records: &[Timestamp],
    window: Option<SignedDuration>,
    now: Timestamp,
) -> Vec<bool> {
    let Some(oldest) = kept_backups.iter().min().copied() else {
        return vec![true; records.len()];
    };
    let base = window
        .and_then(|w| {
            let cutoff = now.checked_sub(w.abs()).unwrap_or(Timestamp::MIN);
            kept_backups.iter().filter(|t| **t <= cutoff).max().copied()
        })
        .unwrap_or(oldest);
    records.iter().map(|r| *r >= base).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + h * 3600).unwrap()
    }

    #[test]
    fn records_after_the_base_of_the_window_start_are_kept() {
        let now = t(100);
        let window = Some(SignedDuration::from_hours(24));
        // Backups kept at 10, 60 and 90; the window starts at 76, whose
        // restore starts from the backup of 60.
        let backups = [t(10), t(60), t(90)];
        let records = [t(5), t(20), t(59), t(60), t(61), t(80), t(95), t(101)];
        assert_eq!(
            records_needed(&backups, &records, window, now),
            [false, false, false, true, true, true, true, true]
        );
        // A window older than every kept backup: from the oldest one.
        let long = Some(SignedDuration::from_hours(1000));
        assert_eq!(
            records_needed(&backups, &records, long, now),
            [false, true, true, true, true, true, true, true]
        );
        assert_eq!(
            records_needed(&backups, &records, None, now),
            records_needed(&backups, &records, long, now)
        );
        // Nothing kept: nothing is decided.
        assert_eq!(
            records_needed(&[], &records[..2], window, now),
            [true, true]
        );
    }
}

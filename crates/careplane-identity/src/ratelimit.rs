//! Token buckets for failed authentications, per source and per identity
//! (docs/design/0013). Time is passed in; only failures take tokens.

use serde::{Deserialize, Serialize};

/// A bucket of `capacity` tokens that gains one back every `refill_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Tokens left, in thousandths (integer so that it persists exactly).
    pub millitokens: u64,
    /// Unix time in microseconds of the last update.
    pub updated: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub capacity: u64,
    pub refill_secs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            capacity: 5,
            refill_secs: 60,
        }
    }
}

impl Bucket {
    pub fn full(limits: Limits, now: i64) -> Bucket {
        Bucket {
            millitokens: limits.capacity * 1000,
            updated: now,
        }
    }

    fn refill(&mut self, limits: Limits, now: i64) {
        let elapsed = (now - self.updated).max(0) as u64;
        let gained = elapsed.saturating_mul(1000) / (limits.refill_secs.max(1) * 1_000_000);
        self.millitokens = (self.millitokens + gained).min(limits.capacity * 1000);
        // Keep the remainder: moving `updated` only by what was converted.
        if self.millitokens == limits.capacity * 1000 {
            self.updated = now;
        } else {
            self.updated += (gained * limits.refill_secs * 1_000_000 / 1000) as i64;
        }
    }

    /// Whether an attempt may be made now; when not, the seconds until it may.
    pub fn check(&mut self, limits: Limits, now: i64) -> Result<(), u64> {
        self.refill(limits, now);
        if self.millitokens >= 1000 {
            Ok(())
        } else {
            let missing = 1000 - self.millitokens;
            Err((missing * limits.refill_secs).div_ceil(1000).max(1))
        }
    }

    /// Takes one token for a failed attempt.
    pub fn fail(&mut self, limits: Limits, now: i64) {
        self.refill(limits, now);
        self.millitokens = self.millitokens.saturating_sub(1000);
    }
}

/// Past this many buckets, `failure` drops the full ones first.
const MAX_BUCKETS: usize = 100_000;

/// In-memory limiter for a long-running server; the CLI keeps the same
/// buckets in access.db ([`crate::Store::check_rate`]).
#[derive(Default)]
pub struct RateLimiter {
    pub limits: Limits,
    buckets: std::collections::HashMap<String, Bucket>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            buckets: Default::default(),
        }
    }

    fn keys(source: &str, identity: &str) -> [String; 2] {
        [format!("source:{source}"), format!("identity:{identity}")]
    }

    /// Refuses (with the seconds to wait and which key) while either the
    /// source's or the identity's bucket is empty.
    pub fn check(&mut self, source: &str, identity: &str, now: i64) -> Result<(), (String, u64)> {
        for key in Self::keys(source, identity) {
            self.check_key(&key, now).map_err(|secs| (key, secs))?;
        }
        Ok(())
    }

    /// The source's bucket alone: the seconds to wait while it is empty.
    pub fn check_source(&mut self, source: &str, now: i64) -> Result<(), u64> {
        self.check_key(&format!("source:{source}"), now)
    }

    /// The identity's bucket alone: the seconds to wait while it is empty.
    pub fn check_identity(&mut self, identity: &str, now: i64) -> Result<(), u64> {
        self.check_key(&format!("identity:{identity}"), now)
    }

    fn check_key(&mut self, key: &str, now: i64) -> Result<(), u64> {
        let limits = self.limits;
        match self.buckets.get_mut(key) {
            Some(b) => b.check(limits, now),
            // An unknown key is a full bucket; keep the map to failures.
            None => Ok(()),
        }
    }

    pub fn failure(&mut self, source: &str, identity: &str, now: i64) {
        // Many addresses or claimed identities must not grow the map without
        // bound: a full bucket holds nothing worth keeping.
        if self.buckets.len() >= MAX_BUCKETS {
            let limits = self.limits;
            self.buckets.retain(|_, b| {
                b.refill(limits, now);
                b.millitokens < limits.capacity * 1000
            });
        }
        for key in Self::keys(source, identity) {
            let limits = self.limits;
            self.buckets
                .entry(key)
                .or_insert_with(|| Bucket::full(limits, now))
                .fail(limits, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn five_failures_then_refused_per_source_and_per_identity() {
        let mut rl = RateLimiter::new(Limits::default());
        for _ in 0..5 {
            rl.check("10.0.0.1", "alice", 0).unwrap();
            rl.failure("10.0.0.1", "alice", 0);
        }
        let (key, wait) = rl.check("10.0.0.1", "bob", 0).unwrap_err();
        assert_eq!((key.as_str(), wait), ("source:10.0.0.1", 60));
        // Another source guessing the same identity is refused too.
        let (key, _) = rl.check("10.0.0.2", "alice", 0).unwrap_err();
        assert_eq!(key, "identity:alice");
        // An untouched pair is not.
        rl.check("10.0.0.2", "bob", 0).unwrap();
        // One token comes back after a minute, not before.
        assert!(rl.check("10.0.0.1", "alice", 59 * S).is_err());
        rl.check("10.0.0.1", "alice", 60 * S).unwrap();
        rl.failure("10.0.0.1", "alice", 60 * S);
        assert!(rl.check("10.0.0.1", "alice", 61 * S).is_err());
    }

    #[test]
    fn buckets_never_exceed_capacity() {
        let l = Limits::default();
        let mut b = Bucket::full(l, 0);
        b.fail(l, 0);
        b.check(l, 3600 * S).unwrap();
        assert_eq!(b.millitokens, 5000);
    }

    #[test]
    fn full_buckets_are_dropped_when_the_map_is_large() {
        let mut rl = RateLimiter::new(Limits::default());
        for i in 0..MAX_BUCKETS {
            rl.failure(&format!("10.0.{}.{}", i / 256, i % 256), "x", 0);
        }
        // An hour later all of them are full again; one more failure prunes.
        rl.failure("192.0.2.1", "y", 3600 * S);
        assert_eq!(rl.buckets.len(), 2, "only the new pair's buckets remain");
        // An empty bucket survives pruning.
        for _ in 0..5 {
            rl.failure("192.0.2.1", "y", 3600 * S);
        }
        assert!(rl.check("192.0.2.1", "z", 3600 * S).is_err());
    }
}

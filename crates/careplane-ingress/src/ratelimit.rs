//! Per-client token buckets. Small enough to own: `governor` would bring its
//! keyed store, clock and synchronisation crates for the same arithmetic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Rate;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Class {
    General,
    Login,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

type Key = (u32, IpAddr, Class);

/// Buckets keyed by (route, client, class). Survives reloads, so a reload
/// does not refill an attacker's bucket.
#[derive(Default)]
pub struct Limiter {
    shards: [Mutex<HashMap<Key, Bucket>>; 16],
}

impl Limiter {
    /// Takes one token, or says how long until one is there.
    pub fn check(
        &self,
        route: u32,
        client: IpAddr,
        class: Class,
        rate: Rate,
        now: Instant,
    ) -> Result<(), Duration> {
        let key = (route, client, class);
        let shard = &self.shards[shard_of(&key)];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let burst = f64::from(rate.burst);
        let b = map.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_second).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_second))
        }
    }

    /// Forgets buckets idle for longer than `idle` (they would be full again
    /// for any sane rate), so memory follows the active clients.
    pub fn prune(&self, now: Instant, idle: Duration) {
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, b| now.saturating_duration_since(b.at) < idle);
        }
    }

    /// Buckets held (for tests and metrics).
    pub fn buckets(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

fn shard_of(key: &Key) -> usize {
    use std::hash::{Hash, Hasher};
    // A fixed hasher: a key must always land on the same shard.
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_then_refills() {
        let l = Limiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check(1, ip, Class::Login, rate, t0).unwrap();
        }
        let wait = l.check(1, ip, Class::Login, rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another client, class or route has its own bucket.
        l.check(1, "192.0.2.2".parse().unwrap(), Class::Login, rate, t0)
            .unwrap();
        l.check(1, ip, Class::General, rate, t0).unwrap();
        l.check(2, ip, Class::Login, rate, t0).unwrap();
        // Half a second later one token is back.
        let t1 = t0 + Duration::from_millis(500);
        l.check(1, ip, Class::Login, rate, t1).unwrap();
        assert!(l.check(1, ip, Class::Login, rate, t1).is_err());
        assert_eq!(l.buckets(), 4);
        l.prune(t1 + Duration::from_secs(3600), Duration::from_secs(600));
        assert_eq!(l.buckets(), 0);
    }
}

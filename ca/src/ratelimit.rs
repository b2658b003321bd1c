//! Per-requester token buckets, so one misbehaving node cannot starve the CA for the others.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

/// Bucket parameters: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for RateLimit {
    /// A node starting up with ~100 pods gets them all at once; steady state is far lower.
    fn default() -> Self {
        Self {
            burst: 200,
            per_second: 20.0,
        }
    }
}

/// Caps the number of distinct keys tracked; beyond it, full buckets are forgotten first.
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; false when the bucket is empty.
    pub fn allow(&self, key: &str) -> bool {
        let now = Instant::now();
        let burst = f64::from(self.limit.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let rate = self.limit.per_second;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.limit.per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_per_key() {
        let rl = RateLimiter::new(RateLimit {
            burst: 3,
            per_second: 1.0,
        });
        assert!(rl.allow("a") && rl.allow("a") && rl.allow("a"));
        assert!(!rl.allow("a"), "bucket of a is empty");
        assert!(rl.allow("b"), "b has its own bucket");
        tokio::time::advance(std::time::Duration::from_millis(1100)).await;
        assert!(rl.allow("a"));
        assert!(!rl.allow("a"));
    }
}

//! Per-identity limits (docs/security.md, "Limits"): what one caller may hold or ask at
//! once, so that a flood from one identity cannot starve the others.
//!
//! [`Limits`] is the `limits:` section of the topology; [`TokenBucket`] is the rate
//! rule for acquires. Both are pure: time is an argument, never read here.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The `limits:` section of the topology: per authenticated identity (the certificate's
/// role and name; in `insecure` mode the peer's address), and the slow-client rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most `Watch` streams one identity may have open at once on a controller.
    pub watch_streams: u32,
    /// Most `KeepAlive` streams one identity may have open at once on a controller.
    pub keepalive_streams: u32,
    /// Acquires one identity may make per second, sustained.
    pub acquires_per_second: u32,
    /// Acquires one identity may make at once after a quiet period (the bucket's size).
    pub acquire_burst: u32,
    /// How long a server stream may have an answer waiting that its client does not
    /// take before the controller closes the stream (a client that never reads).
    pub stall_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            watch_streams: 256,
            keepalive_streams: 256,
            acquires_per_second: 500,
            acquire_burst: 1000,
            stall_timeout_ms: 10_000,
        }
    }
}

impl Limits {
    /// The first field that cannot work, as (field, reason).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, value) in [
            ("watch_streams", self.watch_streams),
            ("keepalive_streams", self.keepalive_streams),
            ("acquires_per_second", self.acquires_per_second),
            ("acquire_burst", self.acquire_burst),
        ] {
            if value == 0 {
                return Err((
                    field,
                    "must be at least 1 (0 would refuse every call)".into(),
                ));
            }
        }
        if self.stall_timeout_ms < 100 {
            return Err((
                "stall_timeout_ms",
                format!(
                    "{} ms is too short: a healthy client on a slow link would be cut off (at least 100)",
                    self.stall_timeout_ms
                ),
            ));
        }
        Ok(())
    }

    /// [`Limits::stall_timeout_ms`] as a duration.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }

    /// A full bucket for one identity's acquires, as of `now`.
    pub fn acquire_bucket(&self, now: Instant) -> TokenBucket {
        TokenBucket::new(self.acquire_burst, self.acquires_per_second, now)
    }
}

/// Micro-tokens per token: refill is computed in whole micro-tokens, so a rate of a few
/// per second over millisecond steps loses nothing to rounding.
const MICRO: u64 = 1_000_000;

/// A token bucket: holds at most `burst` tokens, gains `per_second` a second, and each
/// call takes one. Time never goes backwards here: an earlier `now` counts as no time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    burst: u64,
    per_second: u64,
    /// Tokens held, in millionths.
    micro_tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket as of `now`.
    pub fn new(burst: u32, per_second: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            burst: u64::from(burst),
            per_second: u64::from(per_second),
            micro_tokens: u64::from(burst) * MICRO,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let gained = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(self.per_second);
        self.micro_tokens = self
            .micro_tokens
            .saturating_add(gained)
            .min(self.burst * MICRO);
    }

    /// Takes one token at `now` if there is one; `false` (and nothing taken) if not.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.micro_tokens >= MICRO {
            self.micro_tokens -= MICRO;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (an identity that has been quiet long enough
    /// to be forgotten without changing any answer).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.micro_tokens >= self.burst * MICRO
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.micro_tokens / MICRO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3, 2, t0);
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0), "burst of 3 spent");
        // 2 per second: one token every 500 ms, not before.
        assert!(!bucket.try_take(t0 + Duration::from_millis(499)));
        assert!(bucket.try_take(t0 + Duration::from_millis(500)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(500)));
        assert!(bucket.try_take(t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2, 100, t0);
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.available(later), 2);
        assert!(bucket.is_full(later));
        assert!(bucket.try_take(later));
        assert!(!bucket.is_full(later));
    }

    #[test]
    fn fractions_of_a_token_accumulate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1, 3, t0);
        assert!(bucket.try_take(t0));
        // 3 per second: a token every 333.33 ms; 3 steps of 111 ms are not enough,
        // a fourth of 1 ms more is.
        let mut t = t0;
        for _ in 0..3 {
            t += Duration::from_millis(111);
            assert!(!bucket.try_take(t));
        }
        t += Duration::from_millis(1);
        assert!(bucket.try_take(t));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1, 1, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - Duration::from_secs(5)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(999)));
        assert!(bucket.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn limits_validate() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let zero = Limits {
            watch_streams: 0,
            ..Limits::default()
        };
        assert_eq!(zero.validate().unwrap_err().0, "watch_streams");
        let short = Limits {
            stall_timeout_ms: 10,
            ..Limits::default()
        };
        assert_eq!(short.validate().unwrap_err().0, "stall_timeout_ms");
    }
}

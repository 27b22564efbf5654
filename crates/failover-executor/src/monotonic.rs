//! CLOCK_MONOTONIC as nanoseconds: the one clock an executor and its guards share.
//!
//! The executor decides with the injected [`Clock`]; a guard is another process and
//! enforces its deadline on the raw clock. Deadlines cross that boundary as nanoseconds,
//! converted through a [`Reading`] that pairs the two clocks.

use std::time::{Duration, Instant};

use failover_client::clock::Clock;

/// Nanoseconds of CLOCK_MONOTONIC now.
pub fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The raw monotonic clock and the executor's clock, read at (nearly) the same moment:
/// converts the executor's deadlines into the nanoseconds a guard enforces.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    raw_ns: u64,
    now: Instant,
}

impl Reading {
    /// Reads the raw clock, then `clock`. In that order: then the raw value is at most
    /// the true value behind `now`, so the time between the two reads can only move a
    /// converted deadline earlier, never later.
    pub fn take(clock: &dyn Clock) -> Reading {
        let raw_ns = now_ns();
        Reading {
            raw_ns,
            now: clock.now(),
        }
    }

    /// A reading made of given values (tests).
    pub fn new(raw_ns: u64, now: Instant) -> Reading {
        Reading { raw_ns, now }
    }

    /// The CLOCK_MONOTONIC nanoseconds of `instant`, rounded down by a millisecond so the
    /// conversion error can only make a deadline earlier.
    pub fn to_ns(self, instant: Instant) -> u64 {
        let margin = Duration::from_millis(1).as_nanos() as u64;
        match instant.checked_duration_since(self.now) {
            Some(ahead) => (self.raw_ns + ahead.as_nanos() as u64).saturating_sub(margin),
            None => self
                .raw_ns
                .saturating_sub(self.now.duration_since(instant).as_nanos() as u64 + margin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_client::SystemClock;

    /// The conversion is exact up to the millisecond kept off, in both directions.
    #[test]
    fn conversion_is_relative_to_the_reading() {
        let now = Instant::now() + Duration::from_secs(1);
        let reading = Reading::new(10_000_000_000, now);
        assert_eq!(
            reading.to_ns(now + Duration::from_millis(500)),
            10_500_000_000 - 1_000_000
        );
        assert_eq!(
            reading.to_ns(now - Duration::from_millis(5)),
            10_000_000_000 - 6_000_000
        );
    }

    /// With the system clock, whatever the scheduling between the two reads, the
    /// converted deadline is never later than the raw clock says when it is read back.
    #[test]
    fn conversion_never_moves_a_deadline_later() {
        for ahead_ms in [0u64, 1, 50, 1_000, 60_000] {
            let instant = Instant::now() + Duration::from_millis(ahead_ms);
            let converted = Reading::take(&SystemClock).to_ns(instant);
            let instant_left = instant.saturating_duration_since(Instant::now());
            let raw_left = converted.saturating_sub(now_ns());
            assert!(
                Duration::from_nanos(raw_left) <= instant_left,
                "{ahead_ms} ms ahead: raw {raw_left} ns left, instant {instant_left:?} left"
            );
        }
    }
}

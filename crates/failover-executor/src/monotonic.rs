//! CLOCK_MONOTONIC as nanoseconds: the one clock an executor and its guards share.
//!
//! `std::time::Instant` reads CLOCK_MONOTONIC on Linux but hides its value; deadlines
//! cross a process boundary (executor → guard) as these nanoseconds instead.

use std::time::{Duration, Instant};

/// Nanoseconds of CLOCK_MONOTONIC now.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CLOCK_MONOTONIC nanoseconds of `instant`, rounded down by a millisecond so the
/// conversion error can only make a deadline earlier.
///
/// The raw clock is read *before* `Instant::now()`: then `now_ns` is at most the true
/// value behind `now`, and `now_ns + (instant - now)` is at most the true value of
/// `instant`. Read the other way round, the time between the two reads would move every
/// deadline later.
pub fn instant_to_ns(instant: Instant) -> u64 {
    let now_ns = now_ns();
    let now = Instant::now();
    let margin = Duration::from_millis(1).as_nanos() as u64;
    match instant.checked_duration_since(now) {
        Some(ahead) => (now_ns + ahead.as_nanos() as u64).saturating_sub(margin),
        None => now_ns.saturating_sub(now.duration_since(instant).as_nanos() as u64 + margin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the scheduling between the two clock reads, the converted deadline is
    /// never later than the clock says when it is read back.
    #[test]
    fn conversion_never_moves_a_deadline_later() {
        for ahead_ms in [0u64, 1, 50, 1_000, 60_000] {
            let instant = Instant::now() + Duration::from_millis(ahead_ms);
            let converted = instant_to_ns(instant);
            // Measured the same way round as a guard would compare: the remaining time
            // seen on the raw clock is at most the remaining time of the Instant.
            let instant_left = instant.saturating_duration_since(Instant::now());
            let raw_left = converted.saturating_sub(now_ns());
            assert!(
                Duration::from_nanos(raw_left) <= instant_left,
                "{ahead_ms} ms ahead: raw {raw_left} ns left, instant {instant_left:?} left"
            );
        }
        let past = Instant::now() - Duration::from_millis(5);
        assert!(instant_to_ns(past) < now_ns());
    }
}

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
pub fn instant_to_ns(instant: Instant) -> u64 {
    let (now, now_ns) = (Instant::now(), now_ns());
    let margin = Duration::from_millis(1).as_nanos() as u64;
    match instant.checked_duration_since(now) {
        Some(ahead) => (now_ns + ahead.as_nanos() as u64).saturating_sub(margin),
        None => now_ns.saturating_sub(now.duration_since(instant).as_nanos() as u64 + margin),
    }
}

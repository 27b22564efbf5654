//! The clock clients and controllers read, supplied by the caller so tests can substitute it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time, recorded in history. Never used for safety decisions: those take
/// monotonic time, which openraft's runtime (tokio time) supplies and tests can pause.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn unix_ms(&self) -> u64;
    /// A monotonic instant, for measuring elapsed time.
    fn now(&self) -> Instant;

    /// The reading of this clock at `at`, an instant of the async runtime's clock (tokio
    /// time, which openraft stamps heartbeats with), so that times openraft reports are
    /// compared with [`Clock::now`] and never measured on a second clock. Where the two
    /// are one (the operating system's monotonic clock), this is the same instant.
    fn at_runtime_instant(&self, at: tokio::time::Instant) -> Instant {
        at.into_std()
    }
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

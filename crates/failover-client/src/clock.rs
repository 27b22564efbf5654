//! The clock clients and controllers read, supplied by the caller so tests can substitute it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time, recorded in history. Never used for safety decisions: those take
/// monotonic time, which openraft's runtime (tokio time) supplies and tests can pause.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn unix_ms(&self) -> u64;
    /// A monotonic instant, for measuring elapsed time.
    fn now(&self) -> Instant;
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

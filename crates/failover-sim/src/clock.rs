//! Simulated clocks: true time is tokio's paused clock; every controller and holder reads
//! its own clock, which runs at a fixed rate within the configured drift bound.

use std::time::{Duration, Instant as StdInstant};

use failover_client::clock::Clock;
use tokio::time::Instant;

/// A clock running at `rate` times true time, all starting at one origin.
#[derive(Debug, Clone, Copy)]
pub struct DriftClock {
    origin: Instant,
    origin_std: StdInstant,
    rate: f64,
}

/// Wall-clock milliseconds at the simulation's start (history timestamps only).
const UNIX_START_MS: u64 = 1_700_000_000_000;

impl DriftClock {
    /// A clock at `rate` (1.0 is exact) from `origin`.
    pub fn new(origin: Instant, rate: f64) -> Self {
        DriftClock {
            origin,
            origin_std: origin.into_std(),
            rate,
        }
    }

    /// This clock's reading at true time `at`.
    pub fn local_at(&self, at: Instant) -> StdInstant {
        self.origin_std + at.saturating_duration_since(self.origin).mul_f64(self.rate)
    }

    /// The true time at which this clock reads `local`.
    pub fn true_at(&self, local: StdInstant) -> Instant {
        self.origin
            + local
                .saturating_duration_since(self.origin_std)
                .div_f64(self.rate)
    }

    /// True time elapsed since the origin.
    pub fn since_origin(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }
}

impl Clock for DriftClock {
    fn unix_ms(&self) -> u64 {
        let local = self.local_at(Instant::now());
        UNIX_START_MS + local.saturating_duration_since(self.origin_std).as_millis() as u64
    }

    fn now(&self) -> StdInstant {
        self.local_at(Instant::now())
    }

    fn at_runtime_instant(&self, at: Instant) -> StdInstant {
        self.local_at(at)
    }
}

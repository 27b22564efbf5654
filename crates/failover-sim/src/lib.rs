//! A deterministic simulation of the real controller code under seeded fault schedules.
//!
//! Five real controllers (`failover_controller::Controller::start_with`: openraft, the
//! core's state machine and lease rules, the redb store, the renewal batcher and the
//! reconcile loop) run on one thread under tokio's paused clock, over a simulated network
//! ([`net`]), disk ([`disk`]) and drifting clocks ([`clock`]). Simulated holders
//! ([`holder`]) acquire, renew and release through the real lease service. A seed fixes
//! everything: the fault schedule ([`schedule`]), the network's losses and delays,
//! openraft's election timeouts (`failover_controller::runtime::seed_thread_rng`) and
//! tokio's `select!` order (`RngSeed`, which needs `--cfg tokio_unstable`). [`check`]
//! checks S1, S2, S3 after every step and L1 once the faults heal.
//!
//! What it covers and what not: `docs/testing.md`.
#![warn(missing_docs, unreachable_pub)]

pub mod check;
pub mod clock;
pub mod disk;
pub mod holder;
pub mod net;
pub mod schedule;
pub mod world;

pub use world::{run_seed, Options, Outcome};

/// The command that replays `seed` with its trace printed.
pub fn replay_command(seed: u64) -> String {
    format!("make sim-replay SEED={seed}")
}

/// Whether this build seeds tokio's own randomness (built with `--cfg tokio_unstable`);
/// without it a run is not reproducible bit for bit.
pub const DETERMINISTIC: bool = cfg!(tokio_unstable);

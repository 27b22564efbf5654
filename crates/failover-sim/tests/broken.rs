//! The simulation finds the deliberately broken controller (feature
//! `broken-skip-lease-wait`: a promotion completes without waiting out the old site's
//! leases) within the CI seed budget. Built only by `make sim-broken`.
#![cfg(feature = "broken-skip-lease-wait")]

use failover_sim::{replay_command, run_seed, Options};

/// The CI budget: the broken build must fail within this many seeds.
const BUDGET: u64 = 200;

#[test]
fn the_broken_controller_is_caught_within_the_seed_budget() {
    for seed in 0..BUDGET {
        let outcome = run_seed(seed, Options::default());
        if outcome.violations.iter().any(|v| v.starts_with("S1")) {
            eprintln!(
                "caught at seed {seed}: {} (replay: {})",
                outcome.violations[0],
                replay_command(seed)
            );
            return;
        }
    }
    panic!("no S1 violation in {BUDGET} seeds against a controller that skips the lease wait");
}

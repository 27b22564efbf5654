//! Same seed, same trace: the whole run (elections, faults, grants, beliefs, checks) is a
//! function of the seed. Needs `--cfg tokio_unstable` (tokio's `select!` order is seeded
//! only then), which .cargo/config.toml sets for the workspace.

use failover_sim::{run_seed, Options};

#[test]
#[cfg_attr(
    not(tokio_unstable),
    ignore = "needs --cfg tokio_unstable, which .cargo/config.toml sets"
)]
fn one_seed_twice_gives_the_same_trace_bit_for_bit() {
    for seed in [3, 11] {
        let first = run_seed(seed, Options::default());
        let second = run_seed(seed, Options::default());
        assert!(
            first.trace_lines > 20,
            "seed {seed}: a trace of {} lines shows the run did not get far",
            first.trace_lines
        );
        assert_eq!(
            (first.trace_hash, first.trace_lines),
            (second.trace_hash, second.trace_lines),
            "seed {seed} gave two different traces; the first ended:\n{}\nthe second:\n{}",
            first.tail.join("\n"),
            second.tail.join("\n")
        );
    }
}

#[test]
#[cfg_attr(
    not(tokio_unstable),
    ignore = "needs --cfg tokio_unstable, which .cargo/config.toml sets"
)]
fn different_seeds_give_different_traces() {
    let a = run_seed(1, Options::default());
    let b = run_seed(2, Options::default());
    assert_ne!(a.trace_hash, b.trace_hash);
}

//! `failover guard` (internal): started by `failover exec`, one per worker tree.

use std::time::Duration;

use clap::Args;
use failover_executor::guard::{self, GuardArgs as Guard};

/// Arguments of `failover guard`.
#[derive(Debug, Args)]
pub struct GuardArgs {
    /// The lease deadline, CLOCK_MONOTONIC nanoseconds.
    #[arg(long)]
    pub deadline_ns: u64,
    /// Milliseconds between TERM and the deadline.
    #[arg(long)]
    pub stop_grace_ms: u64,
    /// The worker command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the guard; it never returns.
pub(crate) fn run(args: GuardArgs) -> ! {
    let code = guard::run(Guard {
        deadline_ns: args.deadline_ns,
        stop_grace: Duration::from_millis(args.stop_grace_ms),
        command: args.command,
    });
    std::process::exit(code)
}

//! `failover guard` (internal): started by `failover exec`, one per worker tree.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use failover_executor::guard::{self, GuardArgs as Guard, GuardOutput};

/// Arguments of `failover guard`.
#[derive(Debug, Args)]
pub struct GuardArgs {
    /// The lease deadline, CLOCK_MONOTONIC nanoseconds.
    #[arg(long)]
    pub deadline_ns: u64,
    /// Milliseconds between TERM and the deadline.
    #[arg(long)]
    pub stop_grace_ms: u64,
    /// The control channel to the executor (a socket this process inherited).
    #[arg(long, default_value_t = 3)]
    pub control_fd: i32,
    /// The cgroup v2 directory made for this worker tree.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// The rotating log file of the worker's stdout and stderr.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Rotate the log file before it passes this many bytes.
    #[arg(long, default_value_t = failover_executor::output::DEFAULT_MAX_FILE_BYTES)]
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    #[arg(long, default_value_t = failover_executor::output::DEFAULT_KEEP_FILES)]
    pub log_keep: u32,
    /// Copy each output line to stderr with this prefix (`site-a/0 | ...`).
    #[arg(long)]
    pub echo_prefix: Option<String>,
    /// The worker command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the guard; it never returns.
pub(crate) fn run(args: GuardArgs) -> ! {
    let code = guard::run(Guard {
        deadline_ns: args.deadline_ns,
        stop_grace: Duration::from_millis(args.stop_grace_ms),
        control_fd: args.control_fd,
        cgroup: args.cgroup,
        output: GuardOutput {
            log_file: args.log_file,
            max_file_bytes: args.log_max_bytes,
            keep_files: args.log_keep,
            echo_prefix: args.echo_prefix,
        },
        command: args.command,
    });
    std::process::exit(code)
}

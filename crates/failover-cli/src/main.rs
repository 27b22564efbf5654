//! The `failover` binary: parses arguments and runs the chosen command.

use std::process::ExitCode;

use clap::Parser;
use failover_cli::cmd::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The guard is a tiny synchronous process: no logging, no async runtime.
    if let Command::Guard(args) = cli.command {
        failover_cli::cmd::run_guard(args);
    }
    if !cli.command.is_long_running() {
        end_quietly_when_the_reader_goes();
    }
    failover_cli::logging::init(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(failover_cli::exit_code(&error))
        }
    }
}

/// A command that prints and ends behaves like other Unix filters when its reader goes
/// away (`failover history | head -1`): SIGPIPE ends it, where Rust's default (SIGPIPE
/// ignored) makes `println!` panic. Long-running commands keep ignoring SIGPIPE, so a
/// closed log pipe never kills a controller or an executor.
fn end_quietly_when_the_reader_goes() {
    // SAFETY: resetting one signal's disposition before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

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
    // `failover dev` keeps the default: its controllers are child processes it must stop.
    if matches!(cli.command, Command::Controller(_) | Command::Exec(_)) {
        failover_cli::panics::abort_on_panic();
    } else if !cli.command.is_long_running() {
        failover_cli::panics::end_quietly_when_the_reader_goes();
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

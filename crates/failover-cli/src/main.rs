//! The `failover` binary: parses arguments and runs the chosen command.

use std::process::ExitCode;

use clap::Parser;
use failover_cli::cmd::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    failover_cli::logging::init(&cli);
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(failover_cli::exit_code(&error))
        }
    }
}

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
/// away (`failover history | head -1`): it ends by SIGPIPE, as `cat` does, not with a
/// panic. SIGPIPE itself stays ignored (Rust's default), because the network writes too:
/// a TLS or HTTP/2 write to a peer that closed the connection (the CLI pointed at an HTTP
/// port, say) must be an error the command reports, not a signal that kills it. So only a
/// failed write to stdout, which `println!` turns into a panic, is turned back into the
/// signal.
fn end_quietly_when_the_reader_goes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_went_away(info) {
            // SAFETY: restoring one signal's default disposition and raising it on this
            // process, which ends it as the reader's departure ends any filter.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default(info);
    }));
}

/// Whether a panic is `println!` failing because stdout's reader went away.
fn stdout_went_away(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let message = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or("");
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

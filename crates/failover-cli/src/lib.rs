//! The `failover` command line: one module per subcommand under [`cmd`].
//!
//! # Layout
//! - [`cmd`]: argument parsing and one file per subcommand.
//! - [`output`]: human tables and JSON for what the commands print.
//! - [`logging`]: `tracing` setup, human or JSON.
//! - [`systemd`]: readiness and stop notifications for `Type=notify` units.
#![warn(missing_docs, unreachable_pub)]

pub mod cmd;
pub mod logging;
pub mod output;
pub mod systemd;

use failover_client::ClientError;

/// Exit codes: 1 for a refused request or bad input, 3 when no controller answered.
/// (clap uses 2 for usage errors.)
pub fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Unreachable { .. }) => 3,
        _ => 1,
    }
}

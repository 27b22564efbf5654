//! The `failover` command line: one module per subcommand under [`cmd`].
//!
//! # Layout
//! - [`certs`]: a throwaway CA and certificates for `failover dev` and tests.
//! - [`cmd`]: argument parsing and one file per subcommand.
//! - [`output`]: what several commands print alike (group view, tables, JSON writing);
//!   each command renders the rest beside it in [`cmd`].
//! - [`logging`]: `tracing` setup, human or JSON.
//! - [`panics`]: a panic aborts a long-running command; a closed stdout ends a short one.
//! - [`systemd`]: readiness and stop notifications for `Type=notify` units.
#![warn(missing_docs, unreachable_pub)]

pub mod certs;
pub mod cmd;
pub mod logging;
pub mod output;
pub mod panics;
pub mod systemd;

use failover_client::ClientError;

/// Exit code: the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: a controller refused the request, or the input (arguments, topology file)
/// is invalid.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: the command line could not be parsed (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no controller answered at all.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: controllers answered, but none could confirm a leader with a quorum.
pub const EXIT_NO_QUORUM: u8 = 4;

/// The exit code for an error (the table is in docs/cli.md).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Unreachable { .. }) => EXIT_UNREACHABLE,
        Some(ClientError::NoQuorum(_)) => EXIT_NO_QUORUM,
        _ => EXIT_REFUSED,
    }
}

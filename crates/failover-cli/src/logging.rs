//! Log setup: human-readable by default, JSON with `--log-format json`; `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

use crate::cmd::{Cli, LogFormat};

/// Installs the global subscriber. Long-running commands log at `info`, others at `warn`.
pub fn init(cli: &Cli) {
    let default = if cli.command.is_long_running() {
        "info,openraft=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

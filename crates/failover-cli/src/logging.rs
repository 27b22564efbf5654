//! Log setup: human-readable by default, JSON with `--log-format json`; `RUST_LOG` filters.
//!
//! Rules (docs/operations.md, "Logs"):
//! - colours (ANSI codes) only when stderr is a terminal: a log file or journald gets
//!   plain text;
//! - openraft's own per-call warnings about a peer it cannot reach (it retries many times a
//!   second: replication, heartbeat, vote and pre-vote failures) are dropped whatever
//!   `RUST_LOG` says: the Raft transport
//!   (`failover_controller::network`) logs one line when a peer goes down, a summary every
//!   30 s while it stays down, and one line when it is back.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
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
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(QuietPeerErrors);
    match cli.log_format {
        LogFormat::Human => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
}

/// Drops openraft's repeated peer-unreachable warnings (see the module doc).
struct QuietPeerErrors;

impl<S: Subscriber> Layer<S> for QuietPeerErrors {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if !meta.target().starts_with("openraft") {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        !is_openraft_peer_error(*meta.level(), &message.0)
    }
}

/// The event's `message` field.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Whether an openraft event is one of its per-call reports of a failed RPC to a peer
/// (replication, heartbeat, vote, pre-vote), which the transport summarizes instead.
pub fn is_openraft_peer_error(level: Level, message: &str) -> bool {
    /// (how the message starts, what it contains further on)
    const PEER_ERRORS: [(&str, &str); 5] = [
        ("ReplicationCore recv RPCError", ""),
        ("update progress error: ", ""),
        ("while requesting", ""),
        ("timeout while requesting", ""),
        ("HeartbeatWorker(", "failed to send a heartbeat"),
    ];
    level == Level::WARN
        && PEER_ERRORS
            .iter()
            .any(|(start, within)| message.starts_with(start) && message.contains(within))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openraft's replication and vote failures are dropped; its other warnings and every
    /// error stay.
    #[test]
    fn only_openraft_peer_call_failures_are_dropped() {
        let replication = "ReplicationCore recv RPCError: Unreachable node: controller 1 at \
                           127.0.0.1:1: status: Unavailable, when:(Heartbeat); sending error to RaftCore";
        assert!(is_openraft_peer_error(Level::WARN, replication));
        assert!(is_openraft_peer_error(
            Level::WARN,
            "while requesting PreVote, error: Unreachable node, target: 2"
        ));
        assert!(is_openraft_peer_error(
            Level::WARN,
            "timeout while requesting Vote: timeout after 100ms"
        ));
        assert!(is_openraft_peer_error(
            Level::WARN,
            "HeartbeatWorker(id=4, target=1) failed to send a heartbeat: Ok(Err(Unreachable(..)))"
        ));
        assert!(is_openraft_peer_error(
            Level::WARN,
            "update progress error: Unreachable node: controller 4 at 127.0.0.1:1: Connection refused"
        ));
        assert!(!is_openraft_peer_error(
            Level::WARN,
            "HeartbeatWorker(id=4, target=1) unexpected extra heartbeat response: .."
        ));
        assert!(!is_openraft_peer_error(Level::ERROR, replication));
        assert!(!is_openraft_peer_error(
            Level::WARN,
            "A message will be ignored because this node is no longer leader"
        ));
    }
}

//! Readiness and stop notifications for systemd (`Type=notify` units in deploy/systemd/).
//!
//! systemd starts units that depend on a controller or an executor only once it says
//! `READY=1`, so it is sent when the process actually serves (not when it was forked), and
//! `STOPPING=1` when it begins to shut down. Without `NOTIFY_SOCKET` (not under systemd)
//! every call does nothing.

use sd_notify::NotifyState;

/// Tells systemd the process serves, with a one-line status shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the process is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState]) {
    // The variable stays set (unset_env = false): removing it from the environment of a
    // running multi-threaded process is unsound. Workers cannot misuse it: the units set
    // NotifyAccess=main, so systemd ignores messages from any other process.
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

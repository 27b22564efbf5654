//! The executor's side of its lease session: starting it, what the supervisor is told of
//! each lease state, what is logged and reported, and the cluster's timing sent with the
//! grant. The only file of the executor that reads the lease client's types.

use std::sync::Arc;
use std::time::Duration;

use failover_client::clock::Clock;
use failover_client::{Dialer, LeaseConfig, LeaseSession, LeaseState};
use failover_core::executor::LeaseView;
use failover_core::{Epoch, FencingToken, GroupName, SiteId};
use failover_proto::types::LeaseState as WireLease;

use crate::options::ExecutorOptions;

/// How often a standby executor asks for the lease. A standby acquire is answered from
/// the leader's applied state, without a Raft write: polling often costs little and
/// shortens a failover.
const STANDBY_POLL: Duration = Duration::from_millis(100);

/// Starts a lease session for the executor `opts` describe.
pub(crate) fn start(
    opts: &ExecutorOptions,
    dialer: Arc<dyn Dialer>,
    clock: Arc<dyn Clock>,
) -> LeaseSession {
    let config = LeaseConfig {
        endpoints: opts.endpoints.clone(),
        group: GroupName(opts.group.clone()),
        site: SiteId(opts.site.clone()),
        instance: opts.executor_id.clone(),
        max_clock_drift: opts.max_clock_drift,
        stop_grace: opts.stop_grace,
        standby_poll: STANDBY_POLL,
        release_on_drain: false,
        cluster_id: opts.cluster_id.clone(),
        token: None,
    };
    LeaseSession::start(config, dialer, clock)
}

/// What the supervisor decides on: held (with its deadline), draining, or nothing.
pub(crate) fn view(state: &LeaseState) -> LeaseView {
    match state {
        LeaseState::Acquired {
            token,
            epoch,
            valid_until,
            ..
        } => LeaseView::Held {
            epoch: *epoch,
            token: *token,
            valid_until: *valid_until,
        },
        LeaseState::Draining { valid_until, .. } => LeaseView::Draining {
            valid_until: *valid_until,
        },
        LeaseState::Standby { .. } | LeaseState::Lost { .. } | LeaseState::Connecting => {
            LeaseView::NotHeld
        }
    }
}

/// The lease state as the executor reports it: its state, the epoch and the token (0
/// where there is none).
pub(crate) fn report_fields(state: &LeaseState) -> (WireLease, Epoch, FencingToken) {
    match state {
        LeaseState::Acquired { epoch, token, .. } => (WireLease::Acquired, *epoch, *token),
        LeaseState::Draining { epoch, token, .. } => (WireLease::Draining, *epoch, *token),
        LeaseState::Standby { epoch, .. } => (WireLease::Standby, *epoch, FencingToken(0)),
        LeaseState::Lost { .. } => (WireLease::Lost, Epoch(0), FencingToken(0)),
        LeaseState::Connecting => (WireLease::Connecting, Epoch(0), FencingToken(0)),
    }
}

/// What the executor logs about its lease state: the state and what identifies it (the
/// active site and epoch on standby, the token while held), not what a renewal or a
/// standby poll changes, so a line is logged once per change rather than per keepalive.
pub fn lease_state_line(state: &LeaseState) -> String {
    match state {
        LeaseState::Connecting => "connecting (no leader reached yet)".to_owned(),
        LeaseState::Standby { active_site, epoch } => {
            let active = active_site.as_ref().map_or("no site", |s| s.as_str());
            format!("standby ({active} active at epoch {epoch})")
        }
        LeaseState::Acquired { token, epoch, .. } => {
            format!("acquired (epoch {}, token {})", epoch.0, token.0)
        }
        LeaseState::Draining { token, epoch, .. } => {
            format!("draining (epoch {}, token {})", epoch.0, token.0)
        }
        LeaseState::Lost { reason } => format!("lost ({reason})"),
    }
}

/// How often to report: the cadence the cluster sent with the lease, else the
/// configured one.
pub(crate) fn report_interval(session: Option<&LeaseSession>, configured: Duration) -> Duration {
    session
        .and_then(|s| s.granted_timing())
        .and_then(|t| t.keepalive_interval)
        .unwrap_or(configured)
}

/// Checks the stop grace against the timing the cluster sent with the lease (the
/// configured timing may be the defaults when only endpoints were given): an executor
/// keeps twice its stop grace off the lease, and what the cluster's timing leaves for
/// that must outlast a leader election, or elections stop the workers. Warns, since the
/// lease is already held; `failover exec` refuses the same at start when it knows the
/// topology.
pub(crate) fn check_cluster_timing(session: &LeaseSession, opts: &ExecutorOptions) {
    let Some(timing) = session.granted_timing() else {
        return;
    };
    if timing.max_clock_drift != opts.max_clock_drift || timing.ttl != opts.lease_ttl {
        tracing::info!(
            ttl = ?timing.ttl,
            max_clock_drift = ?timing.max_clock_drift,
            keepalive = ?timing.keepalive_interval,
            "using the cluster's lease timing"
        );
    }
    let kept = 2 * opts.stop_grace;
    if let Some(margin) = timing.ride_out_margin.filter(|m| kept >= *m) {
        tracing::warn!(
            stop_grace = ?opts.stop_grace,
            ride_out_margin = ?margin,
            "--stop-grace is too long for the cluster's timing: the executor keeps 2 x stop \
             grace off the lease, more than the cluster's timing leaves to ride out a \
             leader election, so an election can stop the workers; use a stop grace under \
             half the margin (docs/leases.md, \"Riding out controller churn\")"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_core::{Epoch, FencingToken, LeaseId};
    use std::time::Instant;

    fn acquired(token: u64, valid_for_ms: u64) -> LeaseState {
        LeaseState::Acquired {
            lease: LeaseId(7),
            token: FencingToken(token),
            epoch: Epoch(3),
            valid_until: Instant::now() + Duration::from_millis(valid_for_ms),
        }
    }

    /// A renewal (a later deadline) or a repeated standby poll gives the same line, so it
    /// is logged once; a new token, a new epoch or another state gives a new line.
    #[test]
    fn lease_state_lines_change_only_with_the_state() {
        assert_eq!(
            lease_state_line(&acquired(5, 100)),
            lease_state_line(&acquired(5, 3500))
        );
        assert_eq!(
            lease_state_line(&acquired(5, 100)),
            "acquired (epoch 3, token 5)"
        );
        assert_ne!(
            lease_state_line(&acquired(5, 100)),
            lease_state_line(&acquired(6, 100))
        );
        let standby = |site: &str, epoch| LeaseState::Standby {
            active_site: (!site.is_empty()).then(|| site.into()),
            epoch: Epoch(epoch),
        };
        assert_eq!(
            lease_state_line(&standby("site-a", 2)),
            "standby (site-a active at epoch 2)"
        );
        assert_ne!(
            lease_state_line(&standby("site-a", 2)),
            lease_state_line(&standby("site-b", 3))
        );
        assert_eq!(
            lease_state_line(&standby("", 4)),
            "standby (no site active at epoch 4)"
        );
    }

    /// Only an acquired lease lets workers run; a drain carries its deadline.
    #[test]
    fn views_of_lease_states() {
        assert!(matches!(view(&acquired(5, 100)), LeaseView::Held { .. }));
        assert_eq!(view(&LeaseState::Connecting), LeaseView::NotHeld);
        let lost = LeaseState::Lost {
            reason: "expired".into(),
        };
        assert_eq!(view(&lost), LeaseView::NotHeld);
    }
}

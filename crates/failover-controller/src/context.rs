//! What every part of one controller shares ([`NodeContext`]), and how a command is
//! proposed through Raft ([`propose`]).
//!
//! It sits below the services, the reconcile loop and the failure detector, and imports
//! none of them, so those import it and not each other.

use std::sync::Arc;

use failover_core::{Command, NodeId, Outcome, Rejection, Topology};
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::Notify;
use tonic::Status;

use crate::store::Raft;
use crate::store::StateView;
use failover_net::Clock;
use failover_net::Dialer;

/// What every service of one controller shares.
pub struct NodeContext {
    /// This controller's Raft id.
    pub node_id: NodeId,
    /// The topology the controller was started with.
    pub topology: Topology,
    /// The Raft handle.
    pub raft: Raft,
    /// The applied state.
    pub view: Arc<StateView>,
    /// How to reach other controllers (for forwarding to the leader).
    pub dialer: Arc<dyn Dialer>,
    /// Wall clock for history and monotonic time for measuring.
    pub clock: Arc<dyn Clock>,
    /// Wakes the leader's reconcile loop when there is new work (a promotion began).
    pub reconcile: Arc<Notify>,
    /// The leader's lease bookkeeping.
    pub leases: Arc<crate::leases::LeaseManager>,
    /// What the executors last reported (meaningful on the leader).
    pub executors: Arc<crate::executors::ExecutorRegistry>,
    /// Recent proofs that the leader this controller follows held a quorum (`/active`).
    pub confirmations: Arc<crate::confirm::Confirmations>,
    /// Groups whose active site is lost or unhealthy but which the leader does not fail
    /// over, and why.
    pub held: std::sync::Mutex<std::collections::BTreeMap<failover_core::GroupName, String>>,
    /// Per-identity limits and slow-client closes (the topology's `limits:`).
    pub limits: Arc<crate::limits::Limiter>,
}

/// Why a proposal produced no outcome.
#[derive(Debug)]
pub enum ProposeError {
    /// The state refused the command; nothing changed.
    Rejected(Rejection),
    /// Raft could not commit it (not leader, no quorum, shutting down).
    Status(Status),
}

/// Proposes a command through Raft and returns what applying it produced.
pub async fn propose(ctx: &NodeContext, command: Command) -> Result<Outcome, ProposeError> {
    match ctx.raft.client_write(command).await {
        Ok(response) => match response.data {
            crate::types::Applied(Some(Ok(outcome))) => Ok(outcome),
            crate::types::Applied(Some(Err(rejection))) => Err(ProposeError::Rejected(rejection)),
            crate::types::Applied(None) => Err(ProposeError::Status(Status::internal(
                "a command applied without a result",
            ))),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(ProposeError::Status(Status::unavailable(
                "this controller stopped being leader; retry",
            )))
        }
        Err(e) => Err(ProposeError::Status(Status::unavailable(format!(
            "cannot commit: {e}"
        )))),
    }
}

impl NodeContext {
    /// Records why lost groups are not failed over (shown by `failover status`).
    pub fn set_held(&self, held: std::collections::BTreeMap<failover_core::GroupName, String>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
    }

    /// Why `group` is not failed over although its active site is lost or unhealthy, if so.
    pub fn held(&self, group: &failover_core::GroupName) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    /// A copy of the Raft node's current metrics.
    pub fn metrics(&self) -> openraft::RaftMetrics<crate::types::TypeConfig> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// The current leader and its address, if one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let leader = self.metrics().current_leader?;
        let (_, controller) = self.topology.controller(leader)?;
        Some((leader, controller.addr.clone()))
    }
}

impl NodeContext {
    /// When controller `id` last acknowledged a heartbeat of this leader, on this
    /// controller's clock (`None` off the leader or before its first acknowledgement).
    pub fn acked_at(
        &self,
        metrics: &openraft::RaftMetrics<crate::types::TypeConfig>,
        id: NodeId,
    ) -> Option<std::time::Instant> {
        let acked = metrics.heartbeat.as_ref()?.get(&id).cloned().flatten()?;
        Some(
            self.clock
                .at_runtime_instant(runtime_instant(acked.into_inner())),
        )
    }

    /// Whether controller `id` is reachable as of `now` (see
    /// [`failover_core::leader::reach`]): this controller, or one that acknowledged a
    /// heartbeat within one election timeout.
    pub fn reachable(
        &self,
        metrics: &openraft::RaftMetrics<crate::types::TypeConfig>,
        id: NodeId,
        now: std::time::Instant,
    ) -> bool {
        let within = std::time::Duration::from_millis(self.topology.timing.election_timeout_max_ms);
        let age = self
            .acked_at(metrics, id)
            .map(|at| now.saturating_duration_since(at));
        failover_core::leader::reach::reachable(id == self.node_id, age, within)
    }
}

/// openraft's instant as tokio's: openraft wraps tokio's clock in an opaque type, so the
/// instant is re-expressed through its distance from the runtime's present (both reads
/// are of the one runtime clock, so the result is exact up to the time between them).
fn runtime_instant(
    at: openraft::alias::InstantOf<crate::types::TypeConfig>,
) -> tokio::time::Instant {
    use openraft::Instant as _;
    let rt_now = <openraft::alias::InstantOf<crate::types::TypeConfig>>::now();
    let tokio_now = tokio::time::Instant::now();
    tokio_now
        .checked_sub(rt_now.saturating_duration_since(at))
        .unwrap_or(tokio_now)
}

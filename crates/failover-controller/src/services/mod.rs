//! The gRPC servers of a controller, one file per service.

pub mod admin;
pub mod executor;
pub mod lease;
pub mod raft;

use std::sync::Arc;

use failover_core::{Command, NodeId, Outcome, Rejection, Topology};
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::Notify;
use tonic::Status;

use crate::store::StateView;
use crate::types::Raft;
use failover_client::clock::Clock;
use failover_client::Dialer;

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
    pub confirmations: crate::confirm::Confirmations,
    /// Groups whose active site is lost or unhealthy but which the leader does not fail
    /// over, and why.
    pub held: std::sync::Mutex<std::collections::BTreeMap<failover_core::GroupName, String>>,
}

/// Why a proposal produced no outcome.
#[derive(Debug)]
pub enum ProposeError {
    /// The state refused the command; nothing changed.
    Rejected(Rejection),
    /// Raft could not commit it (not leader, no quorum, shutting down).
    Status(Status),
}

impl ProposeError {
    /// The gRPC status to answer with.
    pub fn into_status(self) -> Status {
        match self {
            ProposeError::Rejected(r) => admin::rejection_status(&r),
            ProposeError::Status(s) => s,
        }
    }
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

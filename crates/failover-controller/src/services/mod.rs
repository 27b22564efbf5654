//! The gRPC servers of a controller, one file per service.

pub mod admin;
pub mod raft;

use std::sync::Arc;

use failover_core::{NodeId, Topology};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::store::StateView;
use crate::types::Raft;
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
}

impl NodeContext {
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

//! What a controller does when its data directory is empty: form the cluster (a first
//! start), or refuse, because the cluster already exists and this controller may have
//! lost the Raft state it promised to keep.
//!
//! Raft's safety rests on every voter remembering two things across restarts: the vote it
//! cast in its current term, and the log entries it acknowledged. A controller whose disk
//! was replaced remembers neither. With an empty log it grants its vote to any candidate,
//! also to one that lacks entries this controller helped commit, and with a forgotten vote
//! it may vote twice in one term. Either can elect a leader without a committed change (a
//! promotion, a lease grant) and break S1. So a controller on an empty data directory asks
//! its peers first; if one of them reports a cluster that has already held an election, it
//! refuses to start unless the operator says, with `--join-existing`, that it should join
//! that cluster as an empty follower (docs/runbook.md, "Replacing a controller whose disk
//! is gone"). Joining never proposes a membership: the node waits for the leader to send it
//! the log or a snapshot.

use std::sync::Arc;
use std::time::Duration;

use failover_client::{AdminClient, Dialer, Endpoints};
use failover_core::{NodeId, Topology};

/// How long one peer may take to answer the probe. A leader that cannot confirm its
/// quorum answers a status only after its 2 s read timeout, so this is longer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A peer that answered the probe and reports a cluster that already held an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCluster {
    /// The controller that answered.
    pub peer: NodeId,
    /// Its Raft term (above 0: an election has happened).
    pub term: u64,
    /// The leader it knows, 0 for none.
    pub leader: NodeId,
}

/// Asks every other controller of the topology, in parallel, for its status; the first
/// that reports a term above 0 (a cluster already formed), or `None` when none does or
/// none answers within [`PROBE_TIMEOUT`].
pub async fn probe_existing_cluster(
    topology: &Topology,
    me: NodeId,
    dialer: Arc<dyn Dialer>,
) -> Option<ExistingCluster> {
    let probes = topology
        .controllers()
        .filter(|(_, c)| c.id != me)
        .filter_map(|(_, c)| {
            let endpoints = Endpoints::parse(&c.addr).ok()?;
            let mut client = AdminClient::with_dialer(endpoints, dialer.clone());
            client.deadline = PROBE_TIMEOUT;
            client.attempt_timeout = PROBE_TIMEOUT;
            let peer = c.id;
            Some(async move {
                let status = client.status().await.ok()?;
                (status.term > 0).then_some(ExistingCluster {
                    peer,
                    term: status.term,
                    leader: status.leader,
                })
            })
        });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .next()
}

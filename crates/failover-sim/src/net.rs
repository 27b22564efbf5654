//! The simulated network: which endpoints can reach which, message loss and delay, and
//! the Raft transport over it (in process, no sockets, no serialization).
//!
//! Every message (a Raft RPC, its reply, a holder's request, its answer) takes one
//! [`Net::hop`]: dropped if the link is cut one way or lost at random, else delayed by a
//! random time, so messages on different streams overtake each other.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use failover_controller::services::NodeContext;
use failover_controller::store::Raft;
use failover_controller::types::{Snapshot, TypeConfig, Vote};
use failover_core::NodeId;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// A party on the network: controllers are their node ids, holders [`HOLDER_BASE`] + n.
pub type Endpoint = u64;

/// The endpoint of the first simulated holder.
pub const HOLDER_BASE: Endpoint = 100;

/// The longest base delay of a message between two sites, in microseconds.
const CROSS_SITE_MAX_US: u64 = 15_000;

/// A running controller incarnation, as the network reaches it.
#[derive(Clone)]
pub struct Slot {
    /// Which start of this controller it is; messages from an older one are dropped.
    pub generation: u64,
    /// Its Raft handle.
    pub raft: Raft,
    /// Its shared services context (lease and admin services are called in process).
    pub ctx: Arc<NodeContext>,
}

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// It arrives after this delay.
    Deliver(Duration),
    /// It never arrives.
    Drop,
}

struct NetState {
    rng: SmallRng,
    site_of: BTreeMap<Endpoint, usize>,
    blocked: BTreeMap<(Endpoint, Endpoint), u32>,
    loss: f64,
    extra_delay_ms: u64,
    nodes: BTreeMap<NodeId, Slot>,
}

/// The network shared by every party of one run.
pub struct Net {
    state: Mutex<NetState>,
}

impl Net {
    /// A healthy network; `site_of` places every endpoint.
    pub fn new(seed: u64, site_of: BTreeMap<Endpoint, usize>) -> Self {
        Net {
            state: Mutex::new(NetState {
                rng: SmallRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                site_of,
                blocked: BTreeMap::new(),
                loss: 0.0,
                extra_delay_ms: 0,
                nodes: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides the fate of one message from `from` to `to`.
    pub fn hop(&self, from: Endpoint, to: Endpoint) -> Hop {
        let mut s = self.lock();
        if s.blocked.contains_key(&(from, to)) {
            return Hop::Drop;
        }
        if s.loss > 0.0 && s.rng.random::<f64>() < s.loss {
            return Hop::Drop;
        }
        let same_site = s.site_of.get(&from) == s.site_of.get(&to);
        let base_us = if same_site {
            s.rng.random_range(200..1_500)
        } else {
            s.rng.random_range(3_000..CROSS_SITE_MAX_US)
        };
        let extra_us = match s.extra_delay_ms {
            0 => 0,
            ms => s.rng.random_range(0..ms * 1000),
        };
        Hop::Deliver(Duration::from_micros(base_us + extra_us))
    }

    /// Cuts the link from `from` to `to` (one way); cuts of one link by overlapping
    /// faults count, and the link is back when every one was mended.
    pub fn block(&self, from: Endpoint, to: Endpoint) {
        *self.lock().blocked.entry((from, to)).or_insert(0) += 1;
    }

    /// Mends one cut of the link from `from` to `to`.
    pub fn unblock(&self, from: Endpoint, to: Endpoint) {
        let mut s = self.lock();
        if let Some(count) = s.blocked.get_mut(&(from, to)) {
            *count -= 1;
            if *count == 0 {
                s.blocked.remove(&(from, to));
            }
        }
    }

    /// Whether the link from `from` to `to` is cut.
    pub fn is_blocked(&self, from: Endpoint, to: Endpoint) -> bool {
        self.lock().blocked.contains_key(&(from, to))
    }

    /// Sets the loss probability and the largest extra delay of every message.
    pub fn set_weather(&self, loss: f64, extra_delay_ms: u64) {
        let mut s = self.lock();
        s.loss = loss;
        s.extra_delay_ms = extra_delay_ms;
    }

    /// The largest one-way delay a message can take now: the cross-site base plus the
    /// weather's extra delay.
    pub fn max_delay(&self) -> Duration {
        Duration::from_micros(CROSS_SITE_MAX_US) + Duration::from_millis(self.lock().extra_delay_ms)
    }

    /// Heals every link and clears loss and extra delay.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.blocked.clear();
        s.loss = 0.0;
        s.extra_delay_ms = 0;
    }

    /// Whether any fault is in force.
    pub fn is_healthy(&self) -> bool {
        let s = self.lock();
        s.blocked.is_empty() && s.loss == 0.0 && s.extra_delay_ms == 0
    }

    /// Registers a started controller (replacing an earlier incarnation).
    pub fn up(&self, id: NodeId, slot: Slot) {
        self.lock().nodes.insert(id, slot);
    }

    /// Takes a controller off the network (it crashed).
    pub fn down(&self, id: NodeId) -> Option<Slot> {
        self.lock().nodes.remove(&id)
    }

    /// The running incarnation of controller `id`, if it is up.
    pub fn node(&self, id: NodeId) -> Option<Slot> {
        self.lock().nodes.get(&id).cloned()
    }

    /// The ids of the controllers that are up.
    pub fn up_nodes(&self) -> Vec<NodeId> {
        self.lock().nodes.keys().copied().collect()
    }

    /// Whether `generation` is the running incarnation of `id`.
    pub fn is_current(&self, id: NodeId, generation: u64) -> bool {
        self.lock()
            .nodes
            .get(&id)
            .is_some_and(|s| s.generation == generation)
    }

    /// Draws from the network's generator (fault schedules use their own).
    pub fn random_bool(&self, p: f64) -> bool {
        self.lock().rng.random::<f64>() < p
    }
}

/// Carries one request and its reply over the network, or gives up after `timeout` when
/// either is lost. `None`: the request or its reply was lost, or the target is down.
pub async fn round_trip<T, F, Fut>(
    net: &Net,
    from: Endpoint,
    to: NodeId,
    timeout: Duration,
    call: F,
) -> Option<T>
where
    F: FnOnce(Slot) -> Fut,
    Fut: Future<Output = T>,
{
    let lost = async {
        tokio::time::sleep(timeout).await;
        None
    };
    match net.hop(from, to) {
        Hop::Drop => return lost.await,
        Hop::Deliver(delay) => tokio::time::sleep(delay).await,
    }
    let Some(slot) = net.node(to) else {
        return lost.await;
    };
    let generation = slot.generation;
    let answer = tokio::time::timeout(timeout, call(slot)).await.ok()?;
    if !net.is_current(to, generation) {
        // The controller crashed while handling it: its answer never leaves.
        return lost.await;
    }
    match net.hop(to, from) {
        Hop::Drop => lost.await,
        Hop::Deliver(delay) => {
            tokio::time::sleep(delay).await;
            Some(answer)
        }
    }
}

/// openraft's network factory for one controller incarnation.
pub struct SimNetwork {
    /// The network.
    pub net: Arc<Net>,
    /// The controller sending.
    pub from: NodeId,
    /// Its incarnation.
    pub generation: u64,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimPeer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        SimPeer {
            net: self.net.clone(),
            from: self.from,
            generation: self.generation,
            to: target,
        }
    }
}

/// The Raft RPC client from one controller incarnation to one peer.
pub struct SimPeer {
    net: Arc<Net>,
    from: NodeId,
    generation: u64,
    to: NodeId,
}

fn unreachable(what: &str) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(what.to_owned()))
}

impl SimPeer {
    async fn send<T, E, F, Fut>(
        &self,
        option: &RPCOption,
        call: F,
    ) -> Result<T, RPCError<TypeConfig>>
    where
        F: FnOnce(Raft) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if !self.net.is_current(self.from, self.generation) {
            return Err(unreachable("sender crashed"));
        }
        let answer = round_trip(&self.net, self.from, self.to, option.hard_ttl(), |slot| {
            call(slot.raft)
        })
        .await;
        if !self.net.is_current(self.from, self.generation) {
            return Err(unreachable("sender crashed"));
        }
        match answer {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(_)) => Err(unreachable("peer is shutting down")),
            None => Err(unreachable("lost")),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for SimPeer {
    type SnapshotData = failover_controller::snapshot_data::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send(
            &option,
            |raft| async move { raft.append_entries(rpc).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send(&option, |raft| async move { raft.vote(rpc).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send(&option, |raft| async move { raft.pre_vote(rpc).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Ok(self
            .send(&option, |raft| async move {
                raft.install_full_snapshot(vote, snapshot).await
            })
            .await?)
    }
}

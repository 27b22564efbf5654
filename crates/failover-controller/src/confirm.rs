//! Quorum confirmations: what lets a controller vouch that its applied state is current.
//!
//! `GET /active/<group>/<site>` must never answer 200 for two sites at once, also across a
//! partition. A leader cut off from the majority goes on believing it leads for a while,
//! and a follower in its partition goes on hearing it: neither can tell from its own
//! state. So every controller keeps asking: the leader runs a read-index round itself
//! (`ensure_linearizable(ReadIndex)`), a follower asks its leader to run one for it (the
//! `ReadIndex` Raft RPC). A round that succeeds proves that, at some real instant after
//! the controller *started* asking, a quorum still acknowledged that leader's term, and it
//! names the read log id: the state at or after that log id includes every entry
//! committed before the round.
//!
//! Why this is enough. A confirmation started at `t0` (on this controller's monotonic
//! clock) is trusted for [`trust_window`]: a little less than one openraft *leader lease*
//! (`election_timeout_max_ms`). Every controller that acknowledged the confirming round
//! did so after `t0`, and openraft makes a controller refuse any vote for one leader lease
//! after it last heard its leader. A new leader needs votes from a quorum, which shares at
//! least one controller with the acknowledging quorum, so no new leader exists, and no
//! entry of a newer term is committed, before `t0 + election_timeout_max` in real time.
//! The window is shortened by the clock-rate bound (`max_clock_drift_ms` per TTL, scaled
//! to the window) so that holds on this controller's clock too. Within the window the
//! state can only have moved on under the same leader, and a controller answers only once
//! its applied state has reached the round's read log id, which covers every entry
//! committed before the round. So two controllers never answer 200 for two sites at one
//! instant because of a partition, whatever the promotion waits for. (A lease-length
//! window is not enough: a group whose old site holds no lease at the cut completes its
//! failover at once, and the partition test caught a cut-off follower answering 200 for
//! the old site while the majority answered 200 for the new one.)
//!
//! What remains is replication lag under one leader: a follower that has not yet applied
//! a promotion the leader just committed. A follower learns a commit within a heartbeat.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failover_core::{NodeId, Topology};
use failover_net::{Clock, Dialer};
use failover_proto::raft::raft_service_client::RaftServiceClient;
use failover_proto::raft::RaftPayload;
use failover_proto::wire::Chan;
use openraft::async_runtime::WatchReceiver;
use openraft::ReadPolicy;
use tokio::sync::watch;

use crate::store::Raft;
use crate::types::TypeConfig;

/// How many recent confirmations are kept: a follower applies a confirmed read log id one
/// heartbeat or so after the round, so the newest confirmation is often not usable yet
/// while an older one is.
const KEPT: usize = 16;

/// One successful confirmation round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    /// When this controller started asking (monotonic).
    pub started: Instant,
    /// The log index the state must have applied for the confirmation to cover it.
    pub read_index: u64,
}

/// Recent confirmations of one controller, newest last.
#[derive(Debug, Default)]
pub struct Confirmations {
    recent: Mutex<VecDeque<Confirmation>>,
}

impl Confirmations {
    /// Records a confirmation (ignored if not newer than the newest one kept).
    pub fn record(&self, c: Confirmation) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.back().is_some_and(|last| last.started >= c.started) {
            return;
        }
        recent.push_back(c);
        while recent.len() > KEPT {
            recent.pop_front();
        }
    }

    /// Whether the applied state (through `applied`) may be vouched for at `now`.
    pub fn vouch(&self, now: Instant, ttl: Duration, applied: Option<u64>) -> Result<(), String> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        vouch(recent.iter(), now, ttl, applied)
    }
}

/// The rule: some confirmation started less than `ttl` (the trust window) before `now`
/// whose read index the applied state has reached. Why not otherwise, in words.
pub fn vouch<'a>(
    recent: impl DoubleEndedIterator<Item = &'a Confirmation>,
    now: Instant,
    ttl: Duration,
    applied: Option<u64>,
) -> Result<(), String> {
    let mut newest_age = None;
    for c in recent.rev() {
        let age = now.saturating_duration_since(c.started);
        newest_age.get_or_insert(age);
        if age >= ttl {
            break;
        }
        if applied.is_some_and(|a| a >= c.read_index) {
            return Ok(());
        }
    }
    Err(match newest_age {
        None => "no quorum confirmation yet: this controller cannot vouch for its state".into(),
        Some(age) if age >= ttl => format!(
            "no quorum confirmation for {age:?} (more than {ttl:?}, one leader lease): \
             the leader this controller knows may have lost the majority"
        ),
        Some(_) => "the applied state is behind the last confirmed read index".into(),
    })
}

/// How long a confirmation is trusted after it started: one openraft leader lease
/// (`election_timeout_max_ms`), less the clock-rate bound scaled to it.
pub fn trust_window(timing: &failover_core::Timing) -> Duration {
    let lease = timing.election_timeout_max_ms;
    let drift = timing.max_clock_drift_ms * lease / timing.lease_ttl_ms.max(1);
    Duration::from_millis(lease.saturating_sub(drift + 1))
}

/// What the confirmation loop reads and where it records: the parts of a controller it
/// needs, passed in so that this module does not depend on the `NodeContext` that holds
/// its [`Confirmations`].
pub(crate) struct Confirmer {
    /// This controller's Raft id.
    pub(crate) node_id: NodeId,
    /// The topology (the timing, and where the leader is).
    pub(crate) topology: Topology,
    /// The Raft handle.
    pub(crate) raft: Raft,
    /// How to reach the leader.
    pub(crate) dialer: Arc<dyn Dialer>,
    /// The clock confirmations are timed on.
    pub(crate) clock: Arc<dyn Clock>,
    /// Where confirmations go.
    pub(crate) confirmations: Arc<Confirmations>,
}

/// Confirms four times per trust window until shutdown; see the module comment.
pub(crate) async fn run(me: Confirmer, mut shutdown: watch::Receiver<bool>) {
    let timing = me.topology.timing;
    let period = (trust_window(&timing) / 4).max(Duration::from_millis(10));
    // A round that takes longer than the window proves nothing usable.
    let ttl = trust_window(&timing);
    let mut peer: Option<(NodeId, RaftServiceClient<Chan>)> = None;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let started = me.clock.now();
        let leader = me.raft.metrics().borrow_watched().current_leader;
        let read = match leader {
            None => None,
            Some(id) if id == me.node_id => {
                let round = me.raft.ensure_linearizable(ReadPolicy::ReadIndex);
                match tokio::time::timeout(ttl, round).await {
                    Ok(Ok(read)) => Some(read.log_id().index),
                    _ => None,
                }
            }
            Some(id) => ask_leader(&me, id, &mut peer, ttl).await,
        };
        if let Some(read_index) = read {
            me.confirmations.record(Confirmation {
                started,
                read_index,
            });
        }
    }
}

/// Asks controller `leader` for a read-index round; its read index if it answered.
async fn ask_leader(
    me: &Confirmer,
    leader: NodeId,
    peer: &mut Option<(NodeId, RaftServiceClient<Chan>)>,
    ttl: Duration,
) -> Option<u64> {
    if peer.as_ref().is_none_or(|(id, _)| *id != leader) {
        let (_, controller) = me.topology.controller(leader)?;
        let channel = me.dialer.channel(&controller.addr).ok()?;
        *peer = Some((leader, failover_proto::wire::raft_client(channel)));
    }
    let (_, client) = peer.as_mut()?;
    let mut request = tonic::Request::new(RaftPayload {
        json: Vec::new(),
        data: Vec::new(),
    });
    request.set_timeout(ttl);
    let reply = tokio::time::timeout(ttl, client.read_index(request)).await;
    let payload = match reply {
        Ok(Ok(reply)) => reply.into_inner(),
        _ => return None,
    };
    let log_id: openraft::type_config::alias::LogIdOf<TypeConfig> =
        serde_json::from_slice(&payload.json).ok()?;
    Some(log_id.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64, read_index: u64) -> Confirmation {
        Confirmation {
            started: base + Duration::from_millis(ms),
            read_index,
        }
    }

    /// The trust window is one leader lease less the drift scaled to it.
    #[test]
    fn window_is_a_leader_lease_less_drift() {
        let t = failover_core::Timing::default();
        // 500 - 250 * 500 / 3500 (35) - 1.
        assert_eq!(trust_window(&t), Duration::from_millis(464));
    }

    /// A confirmation is trusted for less than one window from when the round started, and
    /// only once the applied state reached its read index; an older applied confirmation
    /// serves while the newest is not applied yet.
    #[test]
    fn vouch_needs_a_recent_applied_confirmation() {
        let base = Instant::now();
        let ttl = Duration::from_millis(1000);
        let list = Confirmations::default();
        let now = |ms| base + Duration::from_millis(ms);
        assert!(
            list.vouch(now(0), ttl, Some(5)).is_err(),
            "nothing confirmed"
        );
        list.record(at(base, 0, 5));
        assert_eq!(list.vouch(now(999), ttl, Some(5)), Ok(()));
        let old = list.vouch(now(1000), ttl, Some(5)).expect_err("a TTL old");
        assert!(old.contains("no quorum confirmation for"), "{old}");
        let behind = list.vouch(now(10), ttl, Some(4)).expect_err("not applied");
        assert!(behind.contains("behind"), "{behind}");
        assert!(list.vouch(now(10), ttl, None).is_err(), "nothing applied");
        list.record(at(base, 500, 9));
        assert_eq!(
            list.vouch(now(900), ttl, Some(5)),
            Ok(()),
            "the older confirmation covers the applied state"
        );
        assert!(list.vouch(now(1000), ttl, Some(5)).is_err());
        assert_eq!(list.vouch(now(1499), ttl, Some(9)), Ok(()));
        // Not newer than the newest: ignored.
        list.record(at(base, 400, 1));
        assert!(list.vouch(now(1500), ttl, Some(9)).is_err());
    }
}

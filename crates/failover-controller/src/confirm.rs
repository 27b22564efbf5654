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
//! clock) is trusted until `t0 + ttl`, and only together with an applied state at or past
//! its read log id. Any entry that makes another site active is a `CompletePromotion`,
//! which the leader proposes at the earliest `ttl + drift` after it saw the `Demoting`
//! entry committed (docs/leases.md). If that `Demoting` entry committed before the round,
//! the read log id covers it and this controller answers 503 (demoting). If it committed
//! after, then a quorum acknowledged the confirming term after `t0`, any later leader was
//! elected after that, and the new site becomes active no earlier than
//! `t0 + ttl + drift` in real time, by which time this controller's `t0 + ttl` (its clock
//! may run slow by at most `drift` over the TTL) has passed. So two controllers never
//! answer 200 for two different sites at one instant.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failover_core::NodeId;
use failover_proto::raft::raft_service_client::RaftServiceClient;
use failover_proto::raft::RaftPayload;
use openraft::async_runtime::WatchReceiver;
use openraft::ReadPolicy;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::services::NodeContext;
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

/// The rule: some confirmation started less than `ttl` before `now` whose read index the
/// applied state has reached. Why not otherwise, in words.
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
            "no quorum confirmation for {age:?} (more than the lease TTL {ttl:?}): the \
             leader this controller knows may have lost the majority"
        ),
        Some(_) => "the applied state is behind the last confirmed read index".into(),
    })
}

/// Confirms every `period` until shutdown; see the module comment.
pub(crate) async fn run(ctx: Arc<NodeContext>, mut shutdown: watch::Receiver<bool>) {
    let timing = ctx.topology.timing;
    let period = Duration::from_millis(timing.keepalive_interval_ms);
    let ttl = Duration::from_millis(timing.lease_ttl_ms);
    let mut peer: Option<(NodeId, RaftServiceClient<Channel>)> = None;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let started = ctx.clock.now();
        let leader = ctx.raft.metrics().borrow_watched().current_leader;
        let read = match leader {
            None => None,
            Some(id) if id == ctx.node_id => {
                let round = ctx.raft.ensure_linearizable(ReadPolicy::ReadIndex);
                match tokio::time::timeout(ttl, round).await {
                    Ok(Ok(read)) => Some(read.log_id().index),
                    _ => None,
                }
            }
            Some(id) => ask_leader(&ctx, id, &mut peer, ttl).await,
        };
        if let Some(read_index) = read {
            ctx.confirmations.record(Confirmation {
                started,
                read_index,
            });
        }
    }
}

/// Asks controller `leader` for a read-index round; its read index if it answered.
async fn ask_leader(
    ctx: &NodeContext,
    leader: NodeId,
    peer: &mut Option<(NodeId, RaftServiceClient<Channel>)>,
    ttl: Duration,
) -> Option<u64> {
    if peer.as_ref().is_none_or(|(id, _)| *id != leader) {
        let (_, controller) = ctx.topology.controller(leader)?;
        let channel = ctx.dialer.channel(&controller.addr).ok()?;
        *peer = Some((leader, RaftServiceClient::new(channel)));
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

    /// A confirmation is trusted for less than one TTL from when the round started, and
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

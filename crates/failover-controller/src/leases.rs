//! The leader's lease bookkeeping: soft state ([`LeaderLeases`]) kept only while this
//! controller leads, and the renewal batcher that confirms leadership once per batch.
//!
//! A renewal is never a Raft write. The batcher takes every renewal received so far
//! (each stamped with its receipt time), runs one `ensure_linearizable(ReadIndex)` round
//! for all of them (a deposed or partitioned leader fails it and renews nothing), then
//! checks each against the applied state, which now reflects at least that read index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use failover_core::leader::Leader;
use failover_core::lease::{LeaderLeases, LeaseTiming, RenewRefusal, Renewed};
use failover_core::{GroupName, LeaseId, SiteId};
use openraft::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use tokio::sync::{mpsc, oneshot, watch};

use crate::store::Raft;
use crate::store::StateView;
use failover_net::Clock;

/// Most renewals waiting for the next confirmation round; beyond it they are refused.
pub const MAX_PENDING_RENEWALS: usize = 200_000;
/// Most engine instances whose last acquire poll the leader remembers; the longest-silent
/// quarter is forgotten beyond it.
pub const MAX_ENGINE_INSTANCES: usize = 4096;
/// Most renewals answered after one confirmation round.
const MAX_BATCH: usize = 50_000;

/// One renewal waiting for confirmation.
#[derive(Debug)]
pub struct Renewal {
    /// The lease's group.
    pub group: GroupName,
    /// The lease.
    pub lease: LeaseId,
    /// When this controller received it (monotonic).
    pub received_at: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Renewed, RenewalError>>,
}

/// Why a renewal got no grant.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenewalError {
    /// The core refused it.
    #[error(transparent)]
    Refused(#[from] RenewRefusal),
    /// This controller could not confirm it leads.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// Too many renewals are queued.
    #[error("renewal queue full")]
    Overloaded,
}

/// What the leader heard from engines that speak the lease API (executors' sessions
/// included): the failure detector's input besides executor reports. Soft state, like
/// executor reports; the detector counts silence from no earlier than the leader's start.
#[derive(Debug, Default)]
pub struct EngineReports {
    inner: Mutex<EngineInner>,
}

#[derive(Debug, Default)]
struct EngineInner {
    /// Per group and site, what its engines' acquires said.
    polls: HashMap<(GroupName, SiteId), SitePolls>,
    /// Instances remembered over all pairs (the sum of `SitePolls::latest`'s sizes).
    instances: usize,
    /// Per group and site: when the last renewal accepted for a lease there arrived.
    renewals: HashMap<(GroupName, SiteId), Instant>,
}

/// The acquires of one site's engines for one group, kept so that [`EngineReports::seen`]
/// costs the same however many instances poll: the readiness answer is the last element
/// of an ordered set, not a walk over the instances.
#[derive(Debug)]
struct SitePolls {
    /// The last acquire from any instance.
    heard_at: Instant,
    /// Per instance: its last acquire and whether it said it is ready.
    latest: HashMap<String, (Instant, bool)>,
    /// The instances whose latest acquire said ready, by that acquire's time.
    ready: BTreeSet<(Instant, String)>,
}

impl SitePolls {
    fn new(at: Instant) -> Self {
        SitePolls {
            heard_at: at,
            latest: HashMap::new(),
            ready: BTreeSet::new(),
        }
    }

    /// Records `instance`'s acquire; returns whether the instance is new.
    fn record(&mut self, instance: &str, at: Instant, ready: bool) -> bool {
        self.heard_at = self.heard_at.max(at);
        let previous = self.latest.insert(instance.to_owned(), (at, ready));
        if let Some((then, true)) = previous {
            self.ready.remove(&(then, instance.to_owned()));
        }
        if ready {
            self.ready.insert((at, instance.to_owned()));
        }
        previous.is_none()
    }

    /// Forgets the instances last heard before `cutoff`; returns how many.
    fn forget_before(&mut self, cutoff: Instant) -> usize {
        let before = self.latest.len();
        self.latest.retain(|_, (at, _)| *at >= cutoff);
        self.ready.retain(|(at, _)| *at >= cutoff);
        before - self.latest.len()
    }

    /// The last acquire of an instance whose latest acquire said ready.
    fn ready_at(&self) -> Option<Instant> {
        self.ready.last().map(|(at, _)| *at)
    }
}

pub use failover_core::leader::observe::EngineSeen;

impl EngineReports {
    fn lock(&self) -> MutexGuard<'_, EngineInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an acquire (a grant request or a standby poll) received at `at`. Callers
    /// pass only a group and site the topology knows, so the map of pairs stays bounded;
    /// instances are bounded by [`MAX_ENGINE_INSTANCES`] over all pairs.
    pub fn on_acquire(
        &self,
        group: &GroupName,
        site: &SiteId,
        instance: &str,
        at: Instant,
        ready: bool,
    ) {
        let mut inner = self.lock();
        let pair = inner
            .polls
            .entry((group.clone(), site.clone()))
            .or_insert_with(|| SitePolls::new(at));
        if pair.record(instance, at, ready) {
            inner.instances += 1;
        }
        if inner.instances > MAX_ENGINE_INSTANCES {
            // Forget the longest-silent quarter at once, so that an acquire costs a
            // constant amortised time however many instances come and go. A pair keeps
            // its `heard_at`: the pairs are bounded by the topology.
            let mut times: Vec<Instant> = inner
                .polls
                .values()
                .flat_map(|p| p.latest.values().map(|(at, _)| *at))
                .collect();
            let keep = MAX_ENGINE_INSTANCES * 3 / 4;
            let cut = times.len().saturating_sub(keep);
            let (_, cutoff, _) = times.select_nth_unstable(cut);
            let cutoff = *cutoff;
            let forgotten: usize = inner
                .polls
                .values_mut()
                .map(|p| p.forget_before(cutoff))
                .sum();
            inner.instances -= forgotten;
        }
    }

    /// Records a renewal received at `at` and accepted for a lease at `site`.
    pub fn on_renewed(&self, group: &GroupName, site: &SiteId, at: Instant) {
        let mut inner = self.lock();
        let last = inner
            .renewals
            .entry((group.clone(), site.clone()))
            .or_insert(at);
        *last = (*last).max(at);
    }

    /// Per group and site, what was heard (each pair once). Costs the number of pairs,
    /// not of instances: the failure detector calls it after every applied batch.
    pub fn seen(&self) -> Vec<EngineSeen> {
        let inner = self.lock();
        let mut seen: BTreeMap<(&GroupName, &SiteId), (Instant, Option<Instant>)> = inner
            .polls
            .iter()
            .map(|((group, site), polls)| ((group, site), (polls.heard_at, polls.ready_at())))
            .collect();
        for ((group, site), at) in &inner.renewals {
            let entry = seen.entry((group, site)).or_insert((*at, None));
            entry.0 = entry.0.max(*at);
        }
        seen.into_iter()
            .map(|((group, site), (heard_at, ready_at))| EngineSeen {
                group: group.clone(),
                site: site.clone(),
                heard_at,
                ready_at,
            })
            .collect()
    }
}

/// The leader soft state of the term this controller leads.
struct Leading {
    term: u64,
    leader: Leader,
}

/// Lease bookkeeping of one controller.
///
/// Lock order: whoever needs both the state view and this manager takes the view first.
pub struct LeaseManager {
    timing: LeaseTiming,
    clock: Arc<dyn Clock>,
    leading: Mutex<Option<Leading>>,
    renewals: mpsc::Sender<Renewal>,
    keepalives: KeepaliveCounters,
    engines: EngineReports,
}

/// How many renewals the batcher answered, by answer, since this controller started.
#[derive(Debug, Default)]
struct KeepaliveCounters {
    accepted: AtomicU64,
    refused: AtomicU64,
    not_leader: AtomicU64,
}

/// A snapshot of the renewal counters (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepaliveCounts {
    /// Renewals granted.
    pub accepted: u64,
    /// Renewals the core refused after leadership was confirmed.
    pub refused: u64,
    /// Renewals refused because leadership could not be confirmed or changed meanwhile.
    pub not_leader: u64,
}

impl LeaseManager {
    /// A manager and the receiving end of its renewal queue (for [`run_batcher`]).
    pub fn new(timing: LeaseTiming, clock: Arc<dyn Clock>) -> (Arc<Self>, mpsc::Receiver<Renewal>) {
        let (renewals, queue) = mpsc::channel(MAX_PENDING_RENEWALS);
        let manager = LeaseManager {
            timing,
            clock,
            leading: Mutex::new(None),
            renewals,
            keepalives: KeepaliveCounters::default(),
            engines: EngineReports::default(),
        };
        (Arc::new(manager), queue)
    }

    /// The timing in force.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// What engines speaking the lease API told this controller (meaningful on the leader).
    pub fn engines(&self) -> &EngineReports {
        &self.engines
    }

    /// How many renewals the batcher has answered, by answer.
    pub fn keepalives(&self) -> KeepaliveCounts {
        let k = &self.keepalives;
        KeepaliveCounts {
            accepted: k.accepted.load(Ordering::Relaxed),
            refused: k.refused.load(Ordering::Relaxed),
            not_leader: k.not_leader.load(Ordering::Relaxed),
        }
    }

    /// Counts one answer of the batcher.
    fn count(&self, answer: &Result<Renewed, RenewalError>) {
        let counter = match answer {
            Ok(_) => &self.keepalives.accepted,
            Err(RenewalError::Refused(_)) => &self.keepalives.refused,
            // The batcher's only other answer is `NotLeader` (`Overloaded` is `submit`'s).
            Err(_) => &self.keepalives.not_leader,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a renewal; the answer arrives on `renewal.reply`.
    pub fn submit(&self, renewal: Renewal) {
        match self.renewals.try_send(renewal) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(r)) => {
                let _ = r.reply.send(Err(RenewalError::Overloaded));
            }
            // The batcher is gone: this controller is stopping.
            Err(mpsc::error::TrySendError::Closed(r)) => {
                let _ = r
                    .reply
                    .send(Err(RenewalError::NotLeader("controller stopping".into())));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Leading>> {
        self.leading.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When this controller became leader, if it leads.
    pub fn leader_since(&self) -> Option<Instant> {
        self.lock().as_ref().map(|l| l.leader.since())
    }

    /// Runs `f` on the lease soft state if this controller leads.
    pub fn with_leader<T>(&self, f: impl FnOnce(&mut LeaderLeases) -> T) -> Option<T> {
        self.lock().as_mut().map(|l| f(l.leader.leases_mut()))
    }

    /// Runs `f` on the sans-IO leader with the term it leads, if this controller leads.
    pub fn with_core_term<T>(&self, f: impl FnOnce(u64, &mut Leader) -> T) -> Option<T> {
        self.lock().as_mut().map(|l| f(l.term, &mut l.leader))
    }

    /// Runs `f` on the sans-IO leader if this controller still leads in `term`: the
    /// outcome of a proposal goes back to the leader that made it, never to a later one.
    pub fn with_core_in<T>(&self, term: u64, f: impl FnOnce(&mut Leader) -> T) -> Option<T> {
        self.lock()
            .as_mut()
            .filter(|l| l.term == term)
            .map(|l| f(&mut l.leader))
    }

    /// Follows Raft leadership: fresh soft state on every new term led, none otherwise.
    fn on_metrics(&self, is_leader: bool, term: u64) {
        let mut leading = self.lock();
        match (&*leading, is_leader) {
            (Some(l), true) if l.term == term => {}
            (_, true) => {
                tracing::info!(
                    term,
                    "leading: every existing lease gets a full TTL from now"
                );
                let since = self.clock.now();
                *leading = Some(Leading {
                    term,
                    leader: Leader::new(self.timing, since),
                });
            }
            (_, false) => *leading = None,
        }
    }
}

/// Keeps the manager's soft state in step with Raft leadership until shutdown.
pub async fn follow_leadership(
    raft: Raft,
    manager: Arc<LeaseManager>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    loop {
        let (is_leader, term) = {
            let m = metrics.borrow_watched();
            (m.state == ServerState::Leader, m.current_term)
        };
        manager.on_metrics(is_leader, term);
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Answers queued renewals, one leadership confirmation per batch, until the queue closes.
pub async fn run_batcher(
    raft: Raft,
    manager: Arc<LeaseManager>,
    view: Arc<StateView>,
    mut queue: mpsc::Receiver<Renewal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(1024);
    loop {
        // The manager (which holds the sender) lives as long as the controller, so the
        // queue never closes on its own: stop on the shutdown signal.
        let received = tokio::select! {
            n = queue.recv_many(&mut batch, MAX_BATCH) => n,
            _ = shutdown.wait_for(|stop| *stop) => 0,
        };
        if received == 0 {
            return;
        }
        let confirm = raft.ensure_linearizable(ReadPolicy::ReadIndex);
        let confirmed = match tokio::time::timeout(manager.timing.ttl, confirm).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RenewalError::NotLeader(e.to_string())),
            Err(_) => Err(RenewalError::NotLeader(format!(
                "no quorum confirmed leadership within {:?}",
                manager.timing.ttl
            ))),
        };
        if let Err(e) = confirmed {
            for renewal in batch.drain(..) {
                let answer = Err(e.clone());
                manager.count(&answer);
                let _ = renewal.reply.send(answer);
            }
            continue;
        }
        // A new leader's first renewals can be confirmed before `follow_leadership` saw
        // the metrics change: take the leadership up here too, or they would be refused
        // `not_leader` and their holders sent elsewhere.
        {
            let m = raft.metrics().borrow_watched().clone();
            manager.on_metrics(m.state == ServerState::Leader, m.current_term);
        }
        let state = view.read();
        let now = manager.clock.now();
        let mut leading = manager.lock();
        for renewal in batch.drain(..) {
            let answer = match leading.as_mut() {
                Some(l) => l
                    .leader
                    .leases_mut()
                    .renew(
                        &state,
                        &renewal.group,
                        renewal.lease,
                        renewal.received_at,
                        now,
                    )
                    .map_err(RenewalError::from),
                None => Err(RenewalError::NotLeader("leadership changed".into())),
            };
            manager.count(&answer);
            let _ = renewal.reply.send(answer);
        }
    }
}

/// How long until `instant`, zero if past.
pub fn until(now: Instant, instant: Instant) -> Duration {
    instant.saturating_duration_since(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (GroupName, SiteId) {
        (GroupName("g".into()), SiteId("a".into()))
    }

    /// Readiness follows each instance's latest acquire: an instance that stops saying
    /// ready no longer counts, another that still says it does.
    #[test]
    fn ready_at_is_the_last_ready_acquire_of_an_instance_still_ready() {
        let (g, a) = names();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let reports = EngineReports::default();
        reports.on_acquire(&g, &a, "one", at(0), true);
        reports.on_acquire(&g, &a, "two", at(10), true);
        reports.on_acquire(&g, &a, "two", at(20), false);
        let seen = reports.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].heard_at, at(20));
        assert_eq!(seen[0].ready_at, Some(at(0)));
        reports.on_acquire(&g, &a, "one", at(30), false);
        assert_eq!(reports.seen()[0].ready_at, None);
        reports.on_renewed(&g, &a, at(40));
        assert_eq!(reports.seen()[0].heard_at, at(40));
    }

    /// Beyond the cap the longest-silent instances are forgotten, and with them their
    /// readiness; the pair is still reported as heard.
    #[test]
    fn instances_beyond_the_cap_are_forgotten_oldest_first() {
        let (g, a) = names();
        let b = SiteId("b".into());
        let t0 = Instant::now();
        let reports = EngineReports::default();
        reports.on_acquire(&g, &b, "old", t0, true);
        for i in 0..MAX_ENGINE_INSTANCES {
            let at = t0 + Duration::from_millis(1 + i as u64);
            reports.on_acquire(&g, &a, &format!("i{i}"), at, false);
        }
        let inner = reports.lock();
        assert!(
            inner.instances <= MAX_ENGINE_INSTANCES,
            "{}",
            inner.instances
        );
        let counted: usize = inner.polls.values().map(|p| p.latest.len()).sum();
        assert_eq!(counted, inner.instances);
        drop(inner);
        let seen = reports.seen();
        let at_b = seen.iter().find(|s| s.site == b).expect("b still heard");
        assert_eq!(at_b.heard_at, t0);
        assert_eq!(
            at_b.ready_at, None,
            "the forgotten instance no longer counts as ready"
        );
    }
}

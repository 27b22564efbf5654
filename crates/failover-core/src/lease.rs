//! Lease timing: the rules that keep two sites from both believing they hold a group.
//!
//! Two halves, both pure (time is an argument, `Instant`s are values here, never read):
//!
//! - [`LeaderLeases`]: the leader's soft state. It counts a renewal from when it
//!   *received* it, gives every lease a full TTL from the leader's own start when it takes
//!   over (it knows no earlier receipt times), and decides when a demoting site's leases
//!   are certainly dead: released, or `ttl + max_clock_drift` past the moment the leader
//!   saw the demotion committed.
//! - [`HolderLease`]: the holder's view. It measures validity from when it *sent* the
//!   request: `valid_until = sent_at + ttl - max_clock_drift - stop_grace`, and reports no
//!   lease after that instant whatever the network does.
//!
//! Why this is safe is argued in `docs/leases.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::command::{Command, Rejection};
use crate::ids::{Epoch, GroupName, SiteId};
pub use crate::ids::{FencingToken, FencingValue, LeaseId};
pub use crate::model::Lease;
use crate::model::Phase;
use crate::state::{ClusterState, GroupState};

/// The lease bounds of the topology, as durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Lifetime of a grant or renewal.
    pub ttl: Duration,
    /// Largest disagreement of two monotonic clocks over one TTL.
    pub max_clock_drift: Duration,
}

impl LeaseTiming {
    /// The leader's conservative lifetime: after `ttl + max_clock_drift` on its clock, the
    /// holder's own deadline has passed on the holder's clock.
    pub fn leader_expiry(&self) -> Duration {
        self.ttl + self.max_clock_drift
    }
}

/// A renewal the leader accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The lease.
    pub lease: LeaseId,
    /// The TTL granted, counted by the holder from when it sent the renewal.
    pub ttl: Duration,
    /// The lease's epoch.
    pub epoch: Epoch,
    /// The lease's identity token.
    pub token: FencingToken,
    /// The holder's site (the group's active site): an accepted renewal is news that the
    /// site is alive, for the failure detector.
    pub site: SiteId,
}

impl Renewed {
    /// The value the holder passes downstream: the lease's epoch.
    pub fn fencing_value(&self) -> FencingValue {
        FencingValue::from(self.epoch)
    }
}

/// Why the leader refused a renewal. The holder must stop (it may acquire again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewRefusal {
    /// The group or lease does not exist (unknown, released, expired, or a promotion ended it).
    #[error(transparent)]
    Unknown(Rejection),
    /// The group is demoting its active site: renewals stop so the handover can complete.
    #[error("group `{group}` is moving to `{}`: drain and release", crate::model::site_name(.to.as_ref()))]
    Draining {
        /// The group.
        group: GroupName,
        /// The site being promoted (`None` for a demotion to maintenance).
        to: Option<SiteId>,
    },
    /// The leader saw no renewal within the TTL: the holder's deadline has passed.
    #[error("lease {0} expired before this renewal arrived")]
    Expired(LeaseId),
    /// The same holder id acquired a newer lease (a restart, or a second process with the
    /// same id). The old lease is renewed no more but still counts until it is released or
    /// expires, so a promotion waits for it.
    #[error("lease {lease} was superseded by a newer acquire of holder `{holder}`")]
    Superseded {
        /// The old lease.
        lease: LeaseId,
        /// Its holder id.
        holder: String,
    },
}

/// The leader's soft state about leases. Not replicated: a new leader starts a new one.
///
/// Driver contract: create it when this node becomes leader (`became_leader_at` no earlier
/// than the election), call [`LeaderLeases::observe`] after every applied change and before
/// [`LeaderLeases::completions`] / [`LeaderLeases::expirations`], and drop it when
/// leadership is lost. `now` never goes backwards.
///
/// Cost: every call is independent of the number of live leases except the first
/// `observe` of a new leader (which meets its predecessor's leases once). Leases are kept
/// ordered by last renewal, so the next expiry is the first entry; new leases are found
/// through the lease id counter (ids only grow); a lease that disappeared from the state
/// without [`LeaderLeases::on_released`] is forgotten once its expiry has passed.
#[derive(Debug, Clone)]
pub struct LeaderLeases {
    timing: LeaseTiming,
    became_leader_at: Instant,
    /// Per lease: its last renewal, never earlier than `became_leader_at`.
    renewed_at: HashMap<LeaseId, Instant>,
    /// The same pairs ordered by renewal time: the first entry expires first.
    by_renewal: BTreeSet<(Instant, LeaseId)>,
    /// Every lease with a smaller id has been observed (or was granted by this leader).
    observed_below: u64,
    demoting_seen_at: HashMap<GroupName, (Epoch, Instant)>,
}

impl LeaderLeases {
    /// Soft state for a leader that took over at `became_leader_at`.
    pub fn new(timing: LeaseTiming, became_leader_at: Instant) -> Self {
        LeaderLeases {
            timing,
            became_leader_at,
            renewed_at: HashMap::new(),
            by_renewal: BTreeSet::new(),
            observed_below: 0,
            demoting_seen_at: HashMap::new(),
        }
    }

    /// The timing in force.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// When the lease was last renewed as far as this leader knows: never earlier than the
    /// leader's own start, since it cannot know what its predecessor accepted. `None` for a
    /// lease this leader has not observed yet (see [`LeaderLeases::observe`]).
    pub fn last_renewal(&self, lease: LeaseId) -> Option<Instant> {
        self.renewed_at.get(&lease).copied()
    }

    /// When the leader may treat the lease as dead; `None` until it has observed it.
    pub fn expires_at(&self, lease: LeaseId) -> Option<Instant> {
        self.last_renewal(lease)
            .map(|at| at + self.timing.leader_expiry())
    }

    /// Sets the lease's last renewal to `at` (or the leader's start, if later).
    fn set_renewed(&mut self, lease: LeaseId, at: Instant) {
        let at = at.max(self.became_leader_at);
        if let Some(old) = self.renewed_at.insert(lease, at) {
            self.by_renewal.remove(&(old, lease));
        }
        self.by_renewal.insert((at, lease));
    }

    /// Forgets a lease.
    fn forget(&mut self, lease: LeaseId) {
        if let Some(old) = self.renewed_at.remove(&lease) {
            self.by_renewal.remove(&(old, lease));
        }
    }

    /// Records a grant received at `received_at` (earlier than any observation of it, so
    /// it replaces one).
    pub fn on_granted(&mut self, lease: LeaseId, received_at: Instant) {
        self.set_renewed(lease, received_at);
    }

    /// Checks a renewal received at `received_at` against `state`, which must reflect at
    /// least the read index confirmed *after* the renewal was received; `now` is when the
    /// check runs. On success the lease counts as renewed from `received_at`.
    ///
    /// A lease whose leader-side expiry has passed by `now` is refused even if `state`
    /// still has it: an `Expire` for it may already be proposed, and accepting the renewal
    /// would let the holder believe in a lease the state is about to drop.
    pub fn renew(
        &mut self,
        state: &ClusterState,
        group: &GroupName,
        lease: LeaseId,
        received_at: Instant,
        now: Instant,
    ) -> Result<Renewed, RenewRefusal> {
        let g = state.group(group).map_err(RenewRefusal::Unknown)?;
        let Some(held) = g.leases.get(&lease) else {
            return Err(RenewRefusal::Unknown(Rejection::UnknownLease {
                group: group.clone(),
                lease,
            }));
        };
        if let Phase::Demoting(pending) = &g.phase {
            return Err(RenewRefusal::Draining {
                group: group.clone(),
                to: pending.to.clone(),
            });
        }
        let last = self.last_renewal(lease);
        if let Some(last) = last {
            if received_at >= last + self.timing.ttl || now >= last + self.timing.leader_expiry() {
                return Err(RenewRefusal::Expired(lease));
            }
        }
        if g.is_superseded(held) {
            return Err(RenewRefusal::Superseded {
                lease,
                holder: held.holder.clone(),
            });
        }
        debug_assert_eq!(held.epoch, g.epoch);
        let at = last.map_or(received_at, |last| last.max(received_at));
        if last != Some(at) {
            self.set_renewed(lease, at);
        }
        Ok(Renewed {
            lease,
            ttl: self.timing.ttl,
            epoch: held.epoch,
            token: held.token,
            site: held.site.clone(),
        })
    }

    /// Forgets a released lease.
    pub fn on_released(&mut self, lease: LeaseId) {
        self.forget(lease);
    }

    /// Takes note of the applied state at `now`: the first time this leader sees a group
    /// demoting (at a given epoch) starts that group's drain clock; a lease it has not seen
    /// before counts as renewed at `now` (a grant is applied before its handler can record
    /// the receipt time, and a predecessor's leases are unknown); groups that are gone,
    /// and leases that are gone and past their expiry, are forgotten.
    pub fn observe(&mut self, state: &ClusterState, now: Instant) {
        self.demoting_seen_at.retain(|name, (epoch, _)| {
            state
                .groups
                .get(name)
                .is_some_and(|g| g.epoch == *epoch && matches!(g.phase, Phase::Demoting(_)))
        });
        for g in state.groups.values() {
            if matches!(g.phase, Phase::Demoting(_)) {
                self.demoting_seen_at
                    .entry(g.name.clone())
                    .or_insert((g.epoch, now));
            }
        }
        // Lease ids come from a counter, so the leases not seen yet are those from the
        // last observed counter value on.
        let from = LeaseId(self.observed_below);
        let new: Vec<LeaseId> = state
            .groups
            .values()
            .flat_map(|g| g.leases.range(from..).map(|(id, _)| *id))
            .filter(|id| !self.renewed_at.contains_key(id))
            .collect();
        for id in new {
            self.set_renewed(id, now);
        }
        self.observed_below = self.observed_below.max(state.next_lease_id);
        // A lease that left the state without `on_released` (expired, ended by a
        // promotion, or released while its handler was gone) is forgotten once its own
        // expiry has passed; until then it only makes `poll_timeout` wake early.
        let gone: Vec<LeaseId> = self
            .expired_by(now)
            .filter(|id| lease_group(state, *id).is_none())
            .collect();
        for id in gone {
            self.forget(id);
        }
    }

    /// The leases whose leader-side expiry is at or before `now`, oldest first.
    fn expired_by(&self, now: Instant) -> impl Iterator<Item = LeaseId> + '_ {
        let expiry = self.timing.leader_expiry();
        self.by_renewal
            .iter()
            .take_while(move |(at, _)| now >= *at + expiry)
            .map(|(_, id)| *id)
    }

    /// When the group's demotion may complete even if leases remain: `ttl +
    /// max_clock_drift` after this leader first saw it demoting. `None` if not demoting.
    pub fn drain_deadline(&self, group: &GroupName) -> Option<Instant> {
        self.demoting_seen_at
            .get(group)
            .map(|(_, seen)| *seen + self.timing.leader_expiry())
    }

    /// `CompletePromotion` for every demoting group whose old site can no longer hold it:
    /// all its leases are gone, or the drain deadline has passed.
    pub fn completions(&self, state: &ClusterState, now: Instant, at_unix_ms: u64) -> Vec<Command> {
        state
            .groups
            .values()
            .filter(|g| self.may_complete(g, now))
            .filter_map(|g| crate::promotion::completion(g, at_unix_ms))
            .collect()
    }

    fn may_complete(&self, group: &GroupState, now: Instant) -> bool {
        let Phase::Demoting(_) = group.phase else {
            return false;
        };
        let Some(deadline) = self.drain_deadline(&group.name) else {
            // Not observed yet: the driver must call `observe` first.
            return false;
        };
        group.leases.is_empty() || now >= deadline
    }

    /// `Expire` for every group with leases unrenewed for `ttl + max_clock_drift` (ids in
    /// increasing order, groups in name order).
    pub fn expirations(&self, state: &ClusterState, now: Instant) -> Vec<Command> {
        let mut dead: BTreeMap<&GroupName, Vec<LeaseId>> = BTreeMap::new();
        for id in self.expired_by(now) {
            if let Some(g) = lease_group(state, id) {
                dead.entry(&g.name).or_default().push(id);
            }
        }
        dead.into_iter()
            .map(|(group, mut leases)| {
                leases.sort_unstable();
                Command::Expire {
                    group: group.clone(),
                    leases,
                }
            })
            .collect()
    }

    /// The next instant at which [`LeaderLeases::completions`] or
    /// [`LeaderLeases::expirations`] may have something new to say (possibly earlier: a
    /// lease that left the state is only forgotten at its expiry).
    pub fn poll_timeout(&self, _state: &ClusterState) -> Option<Instant> {
        let drains = self
            .demoting_seen_at
            .keys()
            .filter_map(|g| self.drain_deadline(g));
        let next_expiry = self
            .by_renewal
            .first()
            .map(|(at, _)| *at + self.timing.leader_expiry());
        drains.chain(next_expiry).min()
    }
}

/// The group holding `lease`, if any (groups are few; each lookup is logarithmic).
fn lease_group(state: &ClusterState, lease: LeaseId) -> Option<&GroupState> {
    state
        .groups
        .values()
        .find(|g| g.leases.contains_key(&lease))
}

/// The holder-side bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolderTiming {
    /// Largest disagreement of two monotonic clocks over one TTL.
    pub max_clock_drift: Duration,
    /// Time the holder needs to stop its work once it decides to.
    pub stop_grace: Duration,
}

/// What a holder may believe about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// No lease: not acquired yet, refused, or stood down.
    None,
    /// A lease valid until `valid_until` on the holder's monotonic clock.
    Held {
        /// The lease.
        lease: LeaseId,
        /// Its fencing token.
        token: FencingToken,
        /// Its epoch.
        epoch: Epoch,
        /// The instant after which the holder must have stopped.
        valid_until: Instant,
    },
}

/// A lease the holder holds at the instant it asked ([`HolderLease::held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The lease.
    pub lease: LeaseId,
    /// Its identity token.
    pub token: FencingToken,
    /// Its epoch (what stores compare: [`Held::fencing_value`]).
    pub epoch: Epoch,
    /// The instant after which the holder must have stopped.
    pub valid_until: Instant,
}

impl Held {
    /// The value the holder passes downstream: the lease's epoch.
    pub fn fencing_value(&self) -> FencingValue {
        FencingValue::from(self.epoch)
    }
}

/// The holder's lease state machine. Driver contract: note the send time of every
/// acquire and keepalive *before* sending, hand replies back with that send time, and call
/// [`HolderLease::handle_timeout`] no later than [`HolderLease::poll_timeout`].
/// [`HolderLease::held`] answers for a given `now` and is the only question that matters
/// for safety: it never answers `Some` at or after `valid_until`.
#[derive(Debug, Clone)]
pub struct HolderLease {
    timing: HolderTiming,
    holding: Holding,
}

impl HolderLease {
    /// A holder that holds nothing yet.
    pub fn new(timing: HolderTiming) -> Self {
        HolderLease {
            timing,
            holding: Holding::None,
        }
    }

    fn valid_until(&self, sent_at: Instant, ttl: Duration) -> Instant {
        let usable = ttl
            .saturating_sub(self.timing.max_clock_drift)
            .saturating_sub(self.timing.stop_grace);
        sent_at + usable
    }

    /// A grant arrived for an acquire sent at `sent_at`.
    pub fn on_granted(
        &mut self,
        sent_at: Instant,
        lease: LeaseId,
        token: FencingToken,
        epoch: Epoch,
        ttl: Duration,
    ) {
        self.holding = Holding::Held {
            lease,
            token,
            epoch,
            valid_until: self.valid_until(sent_at, ttl),
        };
    }

    /// A renewal of `lease` sent at `sent_at` was accepted; the answer is handled at `now`.
    /// A lease whose deadline has passed by `now` stays lost: a holder that was frozen
    /// across its deadline has stopped believing in it, and an answer it finds waiting
    /// when it wakes cannot bring it back (the leader may have dropped it meanwhile).
    pub fn on_renewed(&mut self, now: Instant, sent_at: Instant, lease: LeaseId, ttl: Duration) {
        self.handle_timeout(now);
        let extended = self.valid_until(sent_at, ttl);
        if let Holding::Held {
            lease: held,
            valid_until,
            ..
        } = &mut self.holding
        {
            if *held == lease {
                *valid_until = (*valid_until).max(extended);
            }
        }
    }

    /// The bounds the cluster sent with a grant or renewal (its drift bound), which the
    /// holder uses from now on instead of its own. A deadline already computed is moved
    /// earlier by however much more the new bounds keep off the lease, never later: a
    /// holder must not believe a lease longer than the cluster's argument allows.
    pub fn set_timing(&mut self, timing: HolderTiming) {
        let old = self.timing.max_clock_drift + self.timing.stop_grace;
        let new = timing.max_clock_drift + timing.stop_grace;
        if let Holding::Held { valid_until, .. } = &mut self.holding {
            *valid_until = valid_until
                .checked_sub(new.saturating_sub(old))
                .unwrap_or(*valid_until);
        }
        self.timing = timing;
    }

    /// The bounds in force.
    pub fn timing(&self) -> HolderTiming {
        self.timing
    }

    /// The lease was refused, released, or must be given up: hold nothing from now on.
    pub fn on_lost(&mut self) {
        self.holding = Holding::None;
    }

    /// Stops holding once the deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Holding::Held { valid_until, .. } = self.holding {
            if now >= valid_until {
                self.holding = Holding::None;
            }
        }
    }

    /// When [`HolderLease::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.holding {
            Holding::Held { valid_until, .. } => Some(valid_until),
            Holding::None => None,
        }
    }

    /// The lease, its token, epoch and deadline if held and valid at `now`.
    pub fn held(&self, now: Instant) -> Option<Held> {
        match self.holding {
            Holding::Held {
                lease,
                token,
                epoch,
                valid_until,
            } if now < valid_until => Some(Held {
                lease,
                token,
                epoch,
                valid_until,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Outcome;
    use crate::ids::GroupName;

    const TTL: Duration = Duration::from_millis(2000);
    const DRIFT: Duration = Duration::from_millis(250);

    fn timing() -> LeaseTiming {
        LeaseTiming {
            ttl: TTL,
            max_clock_drift: DRIFT,
        }
    }

    fn state_with_lease() -> (ClusterState, LeaseId) {
        let mut state = ClusterState::default();
        state
            .apply(&Command::CreateGroup {
                group: "g".into(),
                sites: vec!["a".into(), "b".into()],
                at_unix_ms: 0,
            })
            .expect("create");
        let Ok(Outcome::Granted(lease)) = state.apply(&Command::Grant {
            group: "g".into(),
            site: "a".into(),
            holder: "h".into(),
            ttl_ms: 2000,
        }) else {
            panic!("grant");
        };
        (state, lease.id)
    }

    /// A lease applied long after the leader started, and observed before its grant handler
    /// recorded the receipt time, is not expired at once: it counts from the observation.
    #[test]
    fn newly_observed_lease_gets_a_full_ttl() {
        let t0 = Instant::now();
        let mut leader = LeaderLeases::new(timing(), t0);
        let (state, lease) = state_with_lease();
        let now = t0 + Duration::from_secs(60);
        leader.observe(&state, now);
        assert!(leader.expirations(&state, now).is_empty());
        let just_before = now + TTL + DRIFT - Duration::from_millis(1);
        assert!(leader.expirations(&state, just_before).is_empty());
        assert_eq!(leader.expirations(&state, now + TTL + DRIFT).len(), 1);
        let _ = lease;
    }

    /// A new leader gives an inherited lease a full TTL plus drift from its own start.
    #[test]
    fn new_leader_counts_inherited_leases_from_its_start() {
        let t0 = Instant::now();
        let (state, lease) = state_with_lease();
        let mut leader = LeaderLeases::new(timing(), t0);
        leader.observe(&state, t0);
        assert_eq!(leader.expires_at(lease), Some(t0 + TTL + DRIFT));
        // A renewal received before this leader started cannot shorten that.
        let mut leader = LeaderLeases::new(timing(), t0 + Duration::from_secs(1));
        leader.observe(&state, t0 + Duration::from_secs(1));
        leader
            .renew(
                &state,
                &GroupName::from("g"),
                lease,
                t0,
                t0 + Duration::from_secs(1),
            )
            .expect("renew");
        assert_eq!(
            leader.expires_at(lease),
            Some(t0 + Duration::from_secs(1) + TTL + DRIFT)
        );
    }

    /// Renewals during a demotion are refused; the demotion completes once the drain
    /// deadline passes even if the old holder never releases.
    #[test]
    fn demotion_refuses_renewals_and_completes_after_drain_deadline() {
        let t0 = Instant::now();
        let (mut state, lease) = state_with_lease();
        let mut leader = LeaderLeases::new(timing(), t0);
        leader.observe(&state, t0);
        state
            .apply(&Command::BeginPromotion {
                group: "g".into(),
                to: "b".into(),
                kind: crate::state::ChangeKind::Promote,
                actor: "t".into(),
                reason: String::new(),
                at_unix_ms: 0,
            })
            .expect("begin");
        let seen = t0 + Duration::from_millis(10);
        leader.observe(&state, seen);
        assert!(matches!(
            leader.renew(&state, &GroupName::from("g"), lease, seen, seen),
            Err(RenewRefusal::Draining { .. })
        ));
        assert!(leader.completions(&state, seen + TTL, 0).is_empty());
        assert_eq!(leader.completions(&state, seen + TTL + DRIFT, 0).len(), 1);
    }

    /// The holder counts from the send time and never holds at or past its deadline.
    #[test]
    fn holder_deadline_counts_from_send_time() {
        let t0 = Instant::now();
        let mut holder = HolderLease::new(HolderTiming {
            max_clock_drift: DRIFT,
            stop_grace: Duration::from_millis(100),
        });
        holder.on_granted(t0, LeaseId(1), FencingToken(7), Epoch(1), TTL);
        let deadline = t0 + TTL - DRIFT - Duration::from_millis(100);
        assert_eq!(holder.poll_timeout(), Some(deadline));
        assert!(holder.held(deadline - Duration::from_millis(1)).is_some());
        assert!(holder.held(deadline).is_none());
        // A late answer to an old renewal cannot pull the deadline back.
        holder.on_renewed(t0, t0 - Duration::from_secs(1), LeaseId(1), TTL);
        assert_eq!(holder.poll_timeout(), Some(deadline));
        // Nor can an answer handled after the deadline revive the lease.
        holder.on_renewed(
            deadline,
            deadline - Duration::from_millis(10),
            LeaseId(1),
            TTL,
        );
        assert_eq!(holder.held(deadline), None);
        assert_eq!(holder.poll_timeout(), None);
    }

    /// The cluster's drift bound replaces the holder's own: a larger one pulls the current
    /// deadline in by the difference at once, and every later renewal counts it; a smaller
    /// one never pushes a computed deadline out.
    #[test]
    fn holder_takes_the_clusters_drift_bound() {
        let t0 = Instant::now();
        let grace = Duration::from_millis(100);
        let mut holder = HolderLease::new(HolderTiming {
            max_clock_drift: DRIFT,
            stop_grace: grace,
        });
        holder.on_granted(t0, LeaseId(1), FencingToken(7), Epoch(1), TTL);
        let cluster_drift = Duration::from_millis(700);
        holder.set_timing(HolderTiming {
            max_clock_drift: cluster_drift,
            stop_grace: grace,
        });
        assert_eq!(
            holder.poll_timeout(),
            Some(t0 + TTL - cluster_drift - grace)
        );
        let sent = t0 + Duration::from_millis(300);
        holder.on_renewed(sent, sent, LeaseId(1), TTL);
        assert_eq!(
            holder.poll_timeout(),
            Some(sent + TTL - cluster_drift - grace)
        );
        holder.set_timing(HolderTiming {
            max_clock_drift: Duration::ZERO,
            stop_grace: grace,
        });
        assert_eq!(
            holder.poll_timeout(),
            Some(sent + TTL - cluster_drift - grace)
        );
    }

    /// A second acquire under a holder id with a live lease (a restarted process, or a
    /// second one with the same id) does not drop the first lease: the first is renewed no
    /// more, and a promotion waits for it although the second holder released at once.
    #[test]
    fn superseded_lease_is_counted_until_it_expires() {
        let t0 = Instant::now();
        let (mut state, first) = state_with_lease();
        let g = GroupName::from("g");
        let mut leader = LeaderLeases::new(timing(), t0);
        leader.observe(&state, t0);
        let renewed_at = t0 + Duration::from_millis(500);
        leader
            .renew(&state, &g, first, renewed_at, renewed_at)
            .expect("renew");
        let Ok(Outcome::Granted(second)) = state.apply(&Command::Grant {
            group: g.clone(),
            site: "a".into(),
            holder: "h".into(),
            ttl_ms: 2000,
        }) else {
            panic!("re-acquire");
        };
        let t1 = t0 + Duration::from_millis(600);
        leader.on_granted(second.id, t1);
        leader.observe(&state, t1);
        assert_eq!(state.groups[&g].leases.len(), 2);
        assert!(matches!(
            leader.renew(&state, &g, first, t1, t1),
            Err(RenewRefusal::Superseded { .. })
        ));
        state
            .apply(&Command::BeginPromotion {
                group: g.clone(),
                to: "b".into(),
                kind: crate::state::ChangeKind::Promote,
                actor: "t".into(),
                reason: String::new(),
                at_unix_ms: 0,
            })
            .expect("begin");
        leader.observe(&state, t1);
        state
            .apply(&Command::Release {
                group: g.clone(),
                lease: second.id,
            })
            .expect("release");
        leader.on_released(second.id);
        leader.observe(&state, t1);
        // The first holder's deadline is at most renewed_at + TTL on its clock: the leader
        // neither completes nor expires before renewed_at + TTL + DRIFT on its own.
        let before = renewed_at + TTL + DRIFT - Duration::from_millis(1);
        assert!(leader.completions(&state, before, 0).is_empty());
        assert!(leader.expirations(&state, before).is_empty());
        let expiry = leader.expirations(&state, renewed_at + TTL + DRIFT);
        assert_eq!(
            expiry,
            vec![Command::Expire {
                group: g.clone(),
                leases: vec![first]
            }]
        );
        state.apply(&expiry[0]).expect("expire");
        leader.observe(&state, renewed_at + TTL + DRIFT);
        assert_eq!(
            leader
                .completions(&state, renewed_at + TTL + DRIFT, 0)
                .len(),
            1
        );
    }

    /// A renewal checked after the leader-side expiry is refused even though the state
    /// still holds the lease (its `Expire` may be in flight).
    #[test]
    fn renewal_checked_after_expiry_is_refused() {
        let t0 = Instant::now();
        let (state, lease) = state_with_lease();
        let mut leader = LeaderLeases::new(timing(), t0);
        leader.observe(&state, t0);
        let received = t0 + TTL - Duration::from_millis(1);
        let checked = t0 + TTL + DRIFT;
        assert_eq!(
            leader.renew(&state, &GroupName::from("g"), lease, received, checked),
            Err(RenewRefusal::Expired(lease))
        );
    }
}

//! The replicated state machine: every group's active site, epoch, phase and history.
//!
//! [`ClusterState::apply`] is the only way the state changes. It is deterministic and it
//! asserts the group invariants after every change: a violation is a bug, and crashes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, Outcome, Rejection};
use crate::ids::{Epoch, GroupName, SiteId};
use crate::ids::{FencingToken, LeaseId};
pub use crate::model::{
    ChangeCounts, ChangeKind, GroupSummary, Lease, Pause, PendingChange, Phase,
};
use crate::promotion::Position;

/// The most leases one group may hold; a grant beyond it is refused. A lease costs a
/// controller well under 1 KiB (docs/benchmarks.md), so a full group stays under 1 GiB.
pub const MAX_LEASES_PER_GROUP: usize = 1_000_000;

/// How many of a group's newest changes of active site, and newest pause events, the
/// controllers keep in memory by default. Older ones leave the window through
/// [`ClusterState::trim_history`] and live on disk only (docs/architecture.md, "History"),
/// so a group's memory does not grow with its past.
pub const HISTORY_WINDOW: usize = 1024;

/// Up to how many leases a group has every lease checked after each applied command in
/// debug builds (explicit `assert_invariants` calls always check every lease there).
const DEBUG_EVERY_LEASE_MAX: usize = 4096;

/// A group's live leases by id. A persistent map: cloning the state is O(groups), not
/// O(leases), so a snapshot encodes a frozen copy while applies go on, and each later
/// write copies only the nodes it touches.
pub type LeaseMap = imbl::OrdMap<LeaseId, Lease>;

/// Each holder's current lease id (see [`GroupState::holders`]); persistent like
/// [`LeaseMap`].
pub type HolderIndex = imbl::OrdMap<String, LeaseId>;

/// Everything the controllers agree on through Raft.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Every group, by name.
    pub groups: BTreeMap<GroupName, GroupState>,
    /// The id the next granted lease gets; lease ids are never reused.
    pub next_lease_id: u64,
    /// The cluster's identity, fixed by its first leader ([`Command::SetClusterId`]);
    /// `None` until then.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

/// One failover group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group's name.
    pub name: GroupName,
    /// Eligible sites, highest priority first.
    pub sites: Vec<SiteId>,
    /// The site whose holders may run the group's work (during `Demoting`, the one being
    /// drained: it keeps its existing leases but may renew nothing). `None` in `NoActive`.
    pub active_site: Option<SiteId>,
    /// Bumped on every change of active site.
    pub epoch: Epoch,
    /// Whether a promotion is under way.
    pub phase: Phase,
    /// The newest changes of active site, oldest first: the whole history from its
    /// `history_archived`-th change on (the older ones left the window for the archive).
    /// Never empty: the newest change is the current epoch's.
    pub history: Vec<HistoryEntry>,
    /// How many of the oldest changes of active site left `history` for the archive: the
    /// sequence number (from 0, the creation) of `history[0]`.
    #[serde(default)]
    pub history_archived: u64,
    /// Live leases, all at `active_site` and `epoch`.
    pub leases: LeaseMap,
    /// The token the next grant carries. Strictly increases across grants and epochs, so
    /// a downstream store can refuse any write carrying a smaller one than it has seen.
    pub next_token: FencingToken,
    /// Each holder's current (newest) lease. A re-acquire by a holder id that still has a
    /// live lease points this at the new lease and leaves the old one in `leases`,
    /// *superseded*: renewed no more, but counted (by a promotion's wait, by expiry) until
    /// it is released or expires, because the process holding it may still believe in it.
    #[serde(default)]
    pub holders: HolderIndex,
    /// Set while automatic failover of the group is paused: the policy holds it back and
    /// `apply` refuses a `Failover` promotion; operators still promote and demote.
    #[serde(default)]
    pub pause: Option<Pause>,
    /// Every pause and resume, oldest first (kept apart from `history`, which is the chain
    /// of changes of active site).
    #[serde(default)]
    pub pause_history: Vec<PauseEvent>,
    /// How many of the oldest pause events left `pause_history` for the archive: the
    /// sequence number of `pause_history[0]`.
    #[serde(default)]
    pub pause_history_archived: u64,
    /// How many changes of active site of each kind the group has had, archived ones
    /// included (the metrics count from it). Written in snapshots; a snapshot from before
    /// it is counted from the history it carries when it is read.
    #[serde(default)]
    pub change_counts: ChangeCounts,
}

/// A history record that left a group's in-memory window: the shell stores it (by group,
/// kind and sequence) before the state that no longer holds it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// The group it belongs to.
    pub group: GroupName,
    /// Its position in the group's history of its kind, from 0.
    pub seq: u64,
    /// The record.
    pub record: HistoryRecord,
}

/// One record of a group's history: a change of active site or a pause event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryRecord {
    /// A change of active site (`GroupState::history`).
    Change(HistoryEntry),
    /// A pause or resume (`GroupState::pause_history`).
    Pause(PauseEvent),
}

/// One pause or resume, as recorded in the group's pause history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseEvent {
    /// `true` for a pause, `false` for a resume.
    pub paused: bool,
    /// Who asked.
    pub actor: String,
    /// Free-text reason.
    pub reason: String,
    /// When (wall clock of the proposing leader).
    pub at_unix_ms: u64,
    /// The group's epoch at the time.
    pub epoch: Epoch,
    /// The group's active site at the time.
    pub active_site: Option<SiteId>,
}

/// One completed change of active site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The epoch that began with this change.
    pub epoch: Epoch,
    /// The previously active site (`None` at creation).
    pub from: Option<SiteId>,
    /// The newly active site (`None` after a demotion).
    pub to: Option<SiteId>,
    /// Why.
    pub kind: ChangeKind,
    /// Who asked.
    pub actor: String,
    /// Free-text reason.
    pub reason: String,
    /// When the change was requested (wall clock).
    pub requested_at_unix_ms: u64,
    /// When the change completed (wall clock).
    pub completed_at_unix_ms: u64,
}

impl ClusterState {
    /// Applies one committed command. Deterministic; a rejection changes nothing.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let result = match command {
            Command::CreateGroup {
                group,
                sites,
                at_unix_ms,
            } => self.create_group(group, sites, *at_unix_ms),
            Command::BeginPromotion {
                group,
                to,
                kind,
                actor,
                reason,
                at_unix_ms,
            } => {
                let g = self.group_mut(group)?;
                g.begin_change(
                    Some(to),
                    PendingChange {
                        to: Some(to.clone()),
                        kind: *kind,
                        actor: actor.clone(),
                        reason: reason.clone(),
                        started_at_unix_ms: *at_unix_ms,
                    },
                )
            }
            Command::BeginDemotion {
                group,
                actor,
                reason,
                at_unix_ms,
            } => {
                let g = self.group_mut(group)?;
                g.begin_change(
                    None,
                    PendingChange {
                        to: None,
                        kind: ChangeKind::Demote,
                        actor: actor.clone(),
                        reason: reason.clone(),
                        started_at_unix_ms: *at_unix_ms,
                    },
                )
            }
            Command::CompletePromotion {
                group,
                from_epoch,
                at_unix_ms,
            } => self
                .group_mut(group)?
                .complete_promotion(*from_epoch, *at_unix_ms),
            Command::Grant {
                group,
                site,
                holder,
                ttl_ms,
            } => {
                let id = LeaseId(self.next_lease_id);
                let lease = self.group_mut(group)?.grant(id, site, holder, *ttl_ms)?;
                self.next_lease_id += 1;
                Ok(Outcome::Granted(lease))
            }
            Command::Release { group, lease } => {
                let g = self.group_mut(group)?;
                g.drop_lease(*lease)
                    .ok_or_else(|| Rejection::UnknownLease {
                        group: group.clone(),
                        lease: *lease,
                    })?;
                Ok(Outcome::Released)
            }
            Command::Expire { group, leases } => {
                let g = self.group_mut(group)?;
                let dropped = leases
                    .iter()
                    .filter(|id| g.drop_lease(**id).is_some())
                    .count();
                Ok(Outcome::Expired(dropped))
            }
            Command::Pause {
                group,
                actor,
                reason,
                at_unix_ms,
            } => self
                .group_mut(group)?
                .set_pause(true, actor, reason, *at_unix_ms),
            Command::Resume {
                group,
                actor,
                reason,
                at_unix_ms,
            } => self
                .group_mut(group)?
                .set_pause(false, actor, reason, *at_unix_ms),
            Command::SetClusterId { id } => match &self.cluster_id {
                Some(existing) => Err(Rejection::ClusterIdSet(existing.clone())),
                None => {
                    self.cluster_id = Some(id.clone());
                    Ok(Outcome::ClusterIdSet)
                }
            },
        };
        if result.is_ok() {
            if let Some(group) = command.group().and_then(|g| self.groups.get(g)) {
                // Debug builds check every lease after each command only while a group is
                // small (tests, property tests): above that the pass made each grant cost
                // O(leases), and a debug-build benchmark of 100,000 grants O(n²).
                let every_lease =
                    cfg!(debug_assertions) && group.leases.len() <= DEBUG_EVERY_LEASE_MAX;
                group.assert_invariants_with(every_lease);
                if every_lease {
                    for lease in group.leases.values() {
                        assert!(
                            lease.id.0 < self.next_lease_id,
                            "lease ids come from the counter"
                        );
                    }
                }
            }
        }
        result
    }

    /// Moves every group's history records beyond the newest `window` of each kind out of
    /// memory and returns them, oldest first per group and kind, for the shell to archive.
    /// Deterministic: every replica that applied the same commands with the same window
    /// archives the same records at the same sequence numbers.
    pub fn trim_history(&mut self, window: usize) -> Vec<Archived> {
        let mut archived = Vec::new();
        for group in self.groups.values_mut() {
            group.trim_history(window, &mut archived);
        }
        archived
    }

    /// The group with this name, or the rejection an API should return.
    pub fn group(&self, name: &GroupName) -> Result<&GroupState, Rejection> {
        self.groups
            .get(name)
            .ok_or_else(|| Rejection::UnknownGroup(name.clone()))
    }

    fn group_mut(&mut self, name: &GroupName) -> Result<&mut GroupState, Rejection> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| Rejection::UnknownGroup(name.clone()))
    }

    fn create_group(
        &mut self,
        name: &GroupName,
        sites: &[SiteId],
        at_unix_ms: u64,
    ) -> CommandResult {
        if self.groups.contains_key(name) {
            return Err(Rejection::GroupExists(name.clone()));
        }
        let first = sites
            .first()
            .ok_or_else(|| Rejection::NoSites(name.clone()))?;
        let epoch = Epoch(1);
        let group = GroupState {
            name: name.clone(),
            sites: sites.to_vec(),
            active_site: Some(first.clone()),
            epoch,
            phase: Phase::Active,
            leases: LeaseMap::new(),
            holders: HolderIndex::new(),
            pause: None,
            pause_history: Vec::new(),
            pause_history_archived: 0,
            history_archived: 0,
            change_counts: ChangeCounts::of([ChangeKind::Created]),
            next_token: FencingToken(1),
            history: vec![HistoryEntry {
                epoch,
                from: None,
                to: Some(first.clone()),
                kind: ChangeKind::Created,
                actor: "failover".to_owned(),
                reason: "group created from the topology".to_owned(),
                requested_at_unix_ms: at_unix_ms,
                completed_at_unix_ms: at_unix_ms,
            }],
        };
        let summary = group.summary();
        self.groups.insert(name.clone(), group);
        Ok(Outcome::Group(summary))
    }
}

impl<'a> From<&'a GroupState> for Position<'a> {
    fn from(group: &'a GroupState) -> Self {
        Position {
            name: &group.name,
            sites: &group.sites,
            active_site: group.active_site.as_ref(),
            epoch: group.epoch,
            phase: &group.phase,
        }
    }
}

impl GroupState {
    /// How many changes of active site the group has had, archived ones included.
    pub fn history_len(&self) -> u64 {
        self.history_archived + self.history.len() as u64
    }

    /// How many pause events the group has had, archived ones included.
    pub fn pause_history_len(&self) -> u64 {
        self.pause_history_archived + self.pause_history.len() as u64
    }

    /// Moves the records beyond the newest `window` of each kind into `out`.
    fn trim_history(&mut self, window: usize, out: &mut Vec<Archived>) {
        assert!(
            window >= 1,
            "the history window keeps at least the newest change"
        );
        if self.history.len() > window {
            let leaving = self.history.len() - window;
            for (i, entry) in self.history.drain(..leaving).enumerate() {
                out.push(Archived {
                    group: self.name.clone(),
                    seq: self.history_archived + i as u64,
                    record: HistoryRecord::Change(entry),
                });
            }
            self.history_archived += leaving as u64;
        }
        if self.pause_history.len() > window {
            let leaving = self.pause_history.len() - window;
            for (i, event) in self.pause_history.drain(..leaving).enumerate() {
                out.push(Archived {
                    group: self.name.clone(),
                    seq: self.pause_history_archived + i as u64,
                    record: HistoryRecord::Pause(event),
                });
            }
            self.pause_history_archived += leaving as u64;
        }
    }

    /// The invariants of the whole history with its archived part (`changes` and
    /// `pauses`, oldest first, as read back from wherever the shell keeps them): one record
    /// per archived sequence number, and the chain rules of [`GroupState::assert_history`]
    /// across the boundary between archive and window. Crashes on violation.
    pub fn assert_archive(&self, changes: &[HistoryEntry], pauses: &[PauseEvent]) {
        assert_eq!(
            changes.len() as u64,
            self.history_archived,
            "{}: archived changes missing",
            self.name
        );
        assert_eq!(
            pauses.len() as u64,
            self.pause_history_archived,
            "{}: archived pause events missing",
            self.name
        );
        let chain: Vec<&HistoryEntry> = changes.iter().chain(&self.history).collect();
        for pair in chain.windows(2) {
            check_change_pair(&self.name, pair[0], pair[1]);
        }
        let events: Vec<&PauseEvent> = pauses.iter().chain(&self.pause_history).collect();
        if let Some(first) = events.first() {
            assert!(
                first.paused,
                "{}: the first pause event is a pause",
                self.name
            );
        }
        for pair in events.windows(2) {
            check_pause_pair(&self.name, pair[0], pair[1]);
        }
    }

    /// Refuses a site that is not eligible for this group.
    pub fn check_site(&self, site: &SiteId) -> Result<(), Rejection> {
        Position::from(self).check_site(site)
    }

    /// The promotion under way, if any.
    pub fn pending(&self) -> Option<&PendingChange> {
        Position::from(self).pending()
    }

    /// Whether `site` is the active site and no change is under way.
    pub fn is_serving(&self, site: &SiteId) -> bool {
        Position::from(self).is_serving(site)
    }

    /// The fixed-size part of the group.
    pub fn summary(&self) -> GroupSummary {
        GroupSummary {
            name: self.name.clone(),
            sites: self.sites.clone(),
            active_site: self.active_site.clone(),
            epoch: self.epoch,
            phase: self.phase.clone(),
            promoting_to: self.pending().and_then(|p| p.to.clone()),
            lease_count: self.leases.len(),
        }
    }

    /// Whether `site` may be granted a lease now, or the standby answer it gets.
    pub fn check_grant(&self, site: &SiteId) -> Result<(), Rejection> {
        self.check_site(site)?;
        let demoting = self.pending().is_some();
        if !self.is_serving(site) {
            return Err(Rejection::Standby {
                group: self.name.clone(),
                site: site.clone(),
                active_site: self.active_site.clone(),
                epoch: self.epoch,
                demoting,
            });
        }
        if self.leases.len() >= MAX_LEASES_PER_GROUP {
            return Err(Rejection::TooManyLeases {
                group: self.name.clone(),
                limit: MAX_LEASES_PER_GROUP,
            });
        }
        Ok(())
    }

    fn grant(
        &mut self,
        id: LeaseId,
        site: &SiteId,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Lease, Rejection> {
        self.check_grant(site)?;
        // The holder's previous lease, if live, stays: its process (frozen, or a second
        // one with the same id) may believe in it until its deadline, so it must keep
        // counting until it is released or expires. Only the index moves on.
        let previous = self.holders.get(holder).copied();
        let lease = Lease {
            id,
            holder: holder.to_owned(),
            site: site.clone(),
            epoch: self.epoch,
            ttl_ms,
            token: self.next_token,
        };
        self.next_token = self.next_token.next();
        self.assert_lease(&lease);
        self.holders.insert(lease.holder.clone(), id);
        self.leases.insert(id, lease.clone());
        if let Some(previous) = previous {
            assert!(
                self.leases.contains_key(&previous) && previous < id,
                "{}: a re-acquire by `{holder}` dropped its live lease {previous}",
                self.name
            );
        }
        Ok(lease)
    }

    /// Whether a newer acquire by the same holder id superseded `lease`: it may be renewed
    /// no more, but it counts until it is released or expires.
    pub fn is_superseded(&self, lease: &Lease) -> bool {
        self.holders.get(&lease.holder) != Some(&lease.id)
    }

    /// Starts a change to `to` (`None`: to no site). From maintenance nothing holds a
    /// lease, so the change completes at once.
    fn begin_change(&mut self, to: Option<&SiteId>, pending: PendingChange) -> CommandResult {
        match to {
            Some(to) => crate::promotion::check_start(&*self, to)?,
            None => crate::promotion::check_demote(&*self)?,
        }
        if pending.kind == ChangeKind::Failover {
            self.check_not_paused()?;
        }
        let at_unix_ms = pending.started_at_unix_ms;
        let from_maintenance = matches!(self.phase, Phase::NoActive);
        self.phase = Phase::Demoting(pending);
        if from_maintenance {
            return self.complete_promotion(self.epoch, at_unix_ms);
        }
        Ok(Outcome::Group(self.summary()))
    }

    fn complete_promotion(&mut self, from_epoch: Epoch, at_unix_ms: u64) -> CommandResult {
        let stale = || Rejection::NoPendingPromotion {
            group: self.name.clone(),
            from_epoch,
        };
        if from_epoch != self.epoch {
            return Err(stale());
        }
        let Phase::Demoting(pending) = &self.phase else {
            return Err(stale());
        };
        let previous_epoch = self.epoch;
        let entry = HistoryEntry {
            epoch: self.epoch.next(),
            from: self.active_site.clone(),
            to: pending.to.clone(),
            kind: pending.kind,
            actor: pending.actor.clone(),
            reason: pending.reason.clone(),
            requested_at_unix_ms: pending.started_at_unix_ms,
            completed_at_unix_ms: at_unix_ms,
        };
        self.active_site = pending.to.clone();
        self.epoch = entry.epoch;
        self.phase = match self.active_site {
            Some(_) => Phase::Active,
            None => Phase::NoActive,
        };
        self.change_counts.record(entry.kind);
        self.history.push(entry);
        // Every lease belonged to the old epoch; the leader completes only once they are
        // released or past their holders' deadlines.
        self.leases.clear();
        self.holders.clear();
        assert!(self.epoch > previous_epoch, "epoch must strictly increase");
        Ok(Outcome::Group(self.summary()))
    }

    /// Refuses an automatic change of a paused group.
    pub fn check_not_paused(&self) -> Result<(), Rejection> {
        match &self.pause {
            None => Ok(()),
            Some(pause) => Err(Rejection::Paused {
                group: self.name.clone(),
                actor: pause.actor.clone(),
                reason: pause.reason.clone(),
            }),
        }
    }

    /// Pauses (`paused`) or resumes automatic failover, and records it.
    fn set_pause(
        &mut self,
        paused: bool,
        actor: &str,
        reason: &str,
        at_unix_ms: u64,
    ) -> CommandResult {
        match (&self.pause, paused) {
            (Some(current), true) => {
                return Err(Rejection::AlreadyPaused {
                    group: self.name.clone(),
                    actor: current.actor.clone(),
                })
            }
            (None, false) => return Err(Rejection::NotPaused(self.name.clone())),
            _ => {}
        }
        self.pause = paused.then(|| Pause {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            since_unix_ms: at_unix_ms,
        });
        self.pause_history.push(PauseEvent {
            paused,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at_unix_ms,
            epoch: self.epoch,
            active_site: self.active_site.clone(),
        });
        Ok(Outcome::PauseChanged(self.pause.clone()))
    }

    /// Removes a lease (and its holder's entry); `None` if it does not exist.
    fn drop_lease(&mut self, id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        if self.holders.get(&lease.holder) == Some(&id) {
            self.holders.remove(&lease.holder);
        }
        Some(lease)
    }

    /// The invariants of one live lease of this group.
    pub fn assert_lease(&self, lease: &Lease) {
        assert_eq!(
            lease.epoch, self.epoch,
            "{}: a lease outlived its epoch",
            self.name
        );
        assert_eq!(
            Some(&lease.site),
            self.active_site.as_ref(),
            "{}: a lease at a standby site",
            self.name
        );
        assert!(
            lease.token < self.next_token,
            "{}: token not below the counter",
            self.name
        );
    }

    /// The invariants every committed group state satisfies. Crashes on violation: a
    /// broken invariant here means the state machine itself is wrong.
    pub fn assert_invariants(&self) {
        self.assert_invariants_with(cfg!(debug_assertions));
    }

    /// [`GroupState::assert_invariants`], checking every lease only if `every_lease`.
    fn assert_invariants_with(&self, every_lease: bool) {
        assert!(self.epoch >= Epoch(1), "{}: epoch starts at 1", self.name);
        if let Some(active) = &self.active_site {
            assert!(
                self.sites.contains(active),
                "{}: active site {active} is not eligible",
                self.name
            );
        }
        assert_eq!(
            self.active_site.is_none(),
            matches!(self.phase, Phase::NoActive),
            "{}: no active site exactly in maintenance",
            self.name
        );
        if let Phase::Demoting(p) = &self.phase {
            assert!(
                p.to != self.active_site,
                "{}: demoting to itself",
                self.name
            );
            if let Some(to) = &p.to {
                assert!(
                    self.sites.contains(to),
                    "{}: pending site not eligible",
                    self.name
                );
            }
        }
        assert_eq!(
            self.change_counts.total(),
            self.history_len(),
            "{}: one count per change of active site",
            self.name
        );
        let last = self
            .history
            .last()
            .expect("a group always has its creation in history");
        assert_eq!(
            last.epoch, self.epoch,
            "{}: history ends at the current epoch",
            self.name
        );
        assert_eq!(
            last.to, self.active_site,
            "{}: history ends at the active site",
            self.name
        );
        // Every lease is checked in debug builds (tests, property tests); release builds
        // check the lease each grant creates (`grant`), since a full pass per applied
        // command is O(leases) and grants come by the thousand.
        if every_lease {
            for lease in self.leases.values() {
                self.assert_lease(lease);
                // A holder's index entry is its newest live lease; older ones of the same
                // holder stay, superseded, until released or expired.
                if let Some(current) = self.holders.get(&lease.holder) {
                    assert!(
                        *current >= lease.id,
                        "{}: holder index behind a live lease",
                        self.name
                    );
                }
            }
            for (holder, id) in &self.holders {
                assert_eq!(
                    self.leases.get(id).map(|l| l.holder.as_str()),
                    Some(holder.as_str()),
                    "{}: holder index points at a live lease of that holder",
                    self.name
                );
            }
        }
        // The pause is exactly what the last pause event says.
        let last_pause = self.pause_history.last();
        assert_eq!(
            self.pause.is_some(),
            last_pause.is_some_and(|e| e.paused),
            "{}: paused exactly after a pause event",
            self.name
        );
        if let (Some(pause), Some(event)) = (&self.pause, last_pause) {
            assert!(
                pause.actor == event.actor
                    && pause.reason == event.reason
                    && pause.since_unix_ms == event.at_unix_ms,
                "{}: the pause is the last pause event",
                self.name
            );
        }
        if let Some(first) = self
            .pause_history
            .first()
            .filter(|_| self.pause_history_archived == 0)
        {
            assert!(
                first.paused,
                "{}: the first pause event is a pause",
                self.name
            );
        }
        if let Some(last) = last_pause {
            assert!(
                last.epoch <= self.epoch,
                "{}: a pause event from a later epoch",
                self.name
            );
        }
        // Pause events, like the history, only grow at their end and every earlier pair
        // was checked when it was appended: the newest pair suffices here, so an apply
        // costs the same however long the group's past ([`GroupState::assert_history`]
        // checks all of it, for a state read from elsewhere).
        let newest = self.pause_history.len().saturating_sub(2);
        self.assert_pause_history_from(newest);
        // History only grows at its end, and every earlier pair was checked when it was
        // appended: the newest pair suffices here ([`GroupState::assert_history`] checks
        // all of it, for a state read from elsewhere).
        let newest = self.history.len().saturating_sub(2);
        self.assert_history_from(newest);
    }

    /// The invariants of the whole in-memory history (epochs increase and each change
    /// starts where the previous one ended) and of every pause event pair (pauses and
    /// resumes alternate, following the epochs); [`GroupState::assert_archive`] extends
    /// them across the archived part. Crashes on violation.
    pub fn assert_history(&self) {
        self.assert_history_from(0);
        self.assert_pause_history_from(0);
    }

    fn assert_pause_history_from(&self, start: usize) {
        for pair in self.pause_history[start..].windows(2) {
            check_pause_pair(&self.name, &pair[0], &pair[1]);
        }
    }

    fn assert_history_from(&self, start: usize) {
        for pair in self.history[start..].windows(2) {
            check_change_pair(&self.name, &pair[0], &pair[1]);
        }
    }
}

/// The chain rule of two consecutive changes of active site of `group`.
fn check_change_pair(group: &GroupName, older: &HistoryEntry, newer: &HistoryEntry) {
    assert!(
        older.epoch < newer.epoch,
        "{group}: history epochs increase"
    );
    assert_eq!(
        newer.from.as_ref(),
        older.to.as_ref(),
        "{group}: each change starts where the previous ended"
    );
}

/// The rule of two consecutive pause events of `group`.
fn check_pause_pair(group: &GroupName, older: &PauseEvent, newer: &PauseEvent) {
    assert!(
        older.paused != newer.paused,
        "{group}: pauses and resumes alternate"
    );
    assert!(
        older.epoch <= newer.epoch,
        "{group}: pause events follow the epochs"
    );
}

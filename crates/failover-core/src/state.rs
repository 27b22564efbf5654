//! The replicated state machine: every group's active site, epoch, phase and history.
//!
//! [`ClusterState::apply`] is the only way the state changes. It is deterministic and it
//! asserts the group invariants after every change: a violation is a bug, and crashes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, Outcome, Rejection};
use crate::ids::{Epoch, GroupName, SiteId};
use crate::lease::{FencingToken, Lease, LeaseId};

/// The most leases one group may hold; a grant beyond it is refused.
pub const MAX_LEASES_PER_GROUP: usize = 100_000;

/// Everything the controllers agree on through Raft.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Every group, by name.
    pub groups: BTreeMap<GroupName, GroupState>,
    /// The id the next granted lease gets; lease ids are never reused.
    pub next_lease_id: u64,
}

/// One failover group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group's name.
    pub name: GroupName,
    /// Eligible sites, highest priority first.
    pub sites: Vec<SiteId>,
    /// The site whose holders may run the group's work (during `Demoting`, the one being
    /// drained: it keeps its existing leases but may renew nothing).
    pub active_site: SiteId,
    /// Bumped on every change of active site.
    pub epoch: Epoch,
    /// Whether a promotion is under way.
    pub phase: Phase,
    /// Every change of active site, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Live leases, all at `active_site` and `epoch`.
    pub leases: BTreeMap<LeaseId, Lease>,
    /// The token the next grant carries. Strictly increases across grants and epochs, so
    /// a downstream store can refuse any write carrying a smaller one than it has seen.
    pub next_token: FencingToken,
}

/// The small, fixed-size part of a group: what status and promote answers carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group's name.
    pub name: GroupName,
    /// Eligible sites, highest priority first.
    pub sites: Vec<SiteId>,
    /// The active site.
    pub active_site: SiteId,
    /// The current epoch.
    pub epoch: Epoch,
    /// The site being promoted, while demoting.
    pub promoting_to: Option<SiteId>,
    /// How many leases are live.
    pub lease_count: usize,
}

/// Where a group is in the promotion protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// `active_site` holds the group; its holders may acquire and renew.
    Active,
    /// The active site is being drained so that `pending.to` can take over at the next epoch.
    Demoting(PendingChange),
}

/// A change of active site that has begun and not yet finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    /// The site that becomes active.
    pub to: SiteId,
    /// Why.
    pub kind: ChangeKind,
    /// Who asked.
    pub actor: String,
    /// Free-text reason.
    pub reason: String,
    /// When the demotion was committed (wall clock of the proposing leader).
    pub started_at_unix_ms: u64,
}

/// Why the active site changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// The group was created at its preferred site.
    Created,
    /// An operator promoted a site.
    Promote,
}

impl ChangeKind {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Promote => "promote",
        }
    }
}

/// One completed change of active site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The epoch that began with this change.
    pub epoch: Epoch,
    /// The previously active site (`None` at creation).
    pub from: Option<SiteId>,
    /// The newly active site.
    pub to: SiteId,
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

impl Phase {
    /// The lowercase name used in tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::Demoting(_) => "demoting",
        }
    }
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
                g.begin_promotion(
                    to,
                    PendingChange {
                        to: to.clone(),
                        kind: *kind,
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
                g.leases
                    .remove(lease)
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
                    .filter(|id| g.leases.remove(id).is_some())
                    .count();
                Ok(Outcome::Expired(dropped))
            }
        };
        if result.is_ok() {
            if let Some(group) = self.groups.get(command.group()) {
                group.assert_invariants();
                for lease in group.leases.values() {
                    assert!(
                        lease.id.0 < self.next_lease_id,
                        "lease ids come from the counter"
                    );
                }
            }
        }
        result
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
            active_site: first.clone(),
            epoch,
            phase: Phase::Active,
            leases: BTreeMap::new(),
            next_token: FencingToken(1),
            history: vec![HistoryEntry {
                epoch,
                from: None,
                to: first.clone(),
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

impl GroupState {
    /// Refuses a site that is not eligible for this group.
    pub fn check_site(&self, site: &SiteId) -> Result<(), Rejection> {
        if self.sites.contains(site) {
            return Ok(());
        }
        Err(Rejection::UnknownSite {
            group: self.name.clone(),
            site: site.clone(),
            eligible: self
                .sites
                .iter()
                .map(SiteId::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The promotion under way, if any.
    pub fn pending(&self) -> Option<&PendingChange> {
        match &self.phase {
            Phase::Active => None,
            Phase::Demoting(pending) => Some(pending),
        }
    }

    /// The fixed-size part of the group.
    pub fn summary(&self) -> GroupSummary {
        GroupSummary {
            name: self.name.clone(),
            sites: self.sites.clone(),
            active_site: self.active_site.clone(),
            epoch: self.epoch,
            promoting_to: self.pending().map(|p| p.to.clone()),
            lease_count: self.leases.len(),
        }
    }

    /// Whether `site` may be granted a lease now, or the standby answer it gets.
    pub fn check_grant(&self, site: &SiteId) -> Result<(), Rejection> {
        self.check_site(site)?;
        let demoting = self.pending().is_some();
        if demoting || &self.active_site != site {
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
        self.leases.retain(|_, lease| lease.holder != holder);
        let lease = Lease {
            id,
            holder: holder.to_owned(),
            site: site.clone(),
            epoch: self.epoch,
            ttl_ms,
            token: self.next_token,
        };
        self.next_token = self.next_token.next();
        self.leases.insert(id, lease.clone());
        Ok(lease)
    }

    fn begin_promotion(&mut self, to: &SiteId, pending: PendingChange) -> CommandResult {
        crate::promotion::check_start(self, to)?;
        self.phase = Phase::Demoting(pending);
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
            from: Some(self.active_site.clone()),
            to: pending.to.clone(),
            kind: pending.kind,
            actor: pending.actor.clone(),
            reason: pending.reason.clone(),
            requested_at_unix_ms: pending.started_at_unix_ms,
            completed_at_unix_ms: at_unix_ms,
        };
        self.active_site = pending.to.clone();
        self.epoch = entry.epoch;
        self.phase = Phase::Active;
        self.history.push(entry);
        // Every lease belonged to the old epoch; the leader completes only once they are
        // released or past their holders' deadlines.
        self.leases.clear();
        assert!(self.epoch > previous_epoch, "epoch must strictly increase");
        Ok(Outcome::Group(self.summary()))
    }

    /// The invariants every committed group state satisfies. Crashes on violation: a
    /// broken invariant here means the state machine itself is wrong.
    pub fn assert_invariants(&self) {
        assert!(self.epoch >= Epoch(1), "{}: epoch starts at 1", self.name);
        assert!(
            self.sites.contains(&self.active_site),
            "{}: active site {} is not eligible",
            self.name,
            self.active_site
        );
        if let Phase::Demoting(p) = &self.phase {
            assert!(
                p.to != self.active_site,
                "{}: demoting to itself",
                self.name
            );
            assert!(
                self.sites.contains(&p.to),
                "{}: pending site not eligible",
                self.name
            );
        }
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
        for lease in self.leases.values() {
            assert_eq!(
                lease.epoch, self.epoch,
                "{}: a lease outlived its epoch",
                self.name
            );
            assert_eq!(
                lease.site, self.active_site,
                "{}: a lease at a standby site",
                self.name
            );
            assert!(
                lease.token < self.next_token,
                "{}: token not below the counter",
                self.name
            );
        }
        for pair in self.history.windows(2) {
            assert!(
                pair[0].epoch < pair[1].epoch,
                "{}: history epochs increase",
                self.name
            );
            assert_eq!(
                pair[1].from.as_ref(),
                Some(&pair[0].to),
                "{}: each change starts where the previous ended",
                self.name
            );
        }
    }
}

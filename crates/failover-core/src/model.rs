//! The records the replicated state is made of and the commands carry: a lease, a
//! group's phase and pending change, why the active site changed and how often
//! (`ChangeCounts`), a pause, a group's summary. A leaf: it depends on [`crate::ids`] only, so that [`crate::command`],
//! [`crate::state`], [`crate::lease`] and [`crate::promotion`] all depend on it and never
//! on each other in a circle through these types.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, FencingToken, FencingValue, GroupName, LeaseId, SiteId};

/// A granted lease, as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// The engine instance holding it.
    pub holder: String,
    /// The holder's site (always the group's active site).
    pub site: SiteId,
    /// The epoch it was granted in.
    pub epoch: Epoch,
    /// Its time to live without renewal.
    pub ttl_ms: u64,
    /// The lease's identity token (not what a store compares: see [`Lease::fencing_value`]).
    pub token: FencingToken,
}

impl Lease {
    /// What the holder passes downstream with every write: its epoch.
    pub fn fencing_value(&self) -> FencingValue {
        FencingValue::from(self.epoch)
    }
}

/// Where a group is in the promotion protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// `active_site` holds the group; its holders may acquire and renew.
    Active,
    /// The active site is being drained so that `pending.to` (or no site) can take over at
    /// the next epoch.
    Demoting(PendingChange),
    /// No site is active (maintenance): nothing is granted until an operator promotes one.
    NoActive,
}

impl Phase {
    /// The lowercase name used in tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::Demoting(_) => "demoting",
            Phase::NoActive => "no_active",
        }
    }
}

/// A change of active site that has begun and not yet finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    /// The site that becomes active; `None` for a demotion to maintenance.
    pub to: Option<SiteId>,
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
    /// An operator promoted a site with `--force` (readiness of the new site not required).
    ForcedPromote,
    /// The leader promoted a standby because the active site was lost.
    Failover,
    /// An operator demoted the active site: no site active (maintenance).
    Demote,
}

/// How many changes of each kind a group has had since its creation (its creation
/// included), archived ones too: the metrics count from it, because the history in
/// memory is bounded and stops growing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCounts {
    /// [`ChangeKind::Created`] (1 for every group).
    pub created: u64,
    /// [`ChangeKind::Promote`].
    pub promote: u64,
    /// [`ChangeKind::ForcedPromote`].
    pub forced_promote: u64,
    /// [`ChangeKind::Failover`].
    pub failover: u64,
    /// [`ChangeKind::Demote`].
    pub demote: u64,
}

impl ChangeCounts {
    /// The counts of `kinds`.
    pub fn of(kinds: impl IntoIterator<Item = ChangeKind>) -> Self {
        let mut counts = ChangeCounts::default();
        for kind in kinds {
            counts.record(kind);
        }
        counts
    }

    /// Counts one more change of `kind`.
    pub fn record(&mut self, kind: ChangeKind) {
        *self.slot(kind) += 1;
    }

    /// How many changes of `kind`.
    pub fn get(&self, kind: ChangeKind) -> u64 {
        match kind {
            ChangeKind::Created => self.created,
            ChangeKind::Promote => self.promote,
            ChangeKind::ForcedPromote => self.forced_promote,
            ChangeKind::Failover => self.failover,
            ChangeKind::Demote => self.demote,
        }
    }

    /// Every change counted, of any kind.
    pub fn total(&self) -> u64 {
        self.created + self.promote + self.forced_promote + self.failover + self.demote
    }

    fn slot(&mut self, kind: ChangeKind) -> &mut u64 {
        match kind {
            ChangeKind::Created => &mut self.created,
            ChangeKind::Promote => &mut self.promote,
            ChangeKind::ForcedPromote => &mut self.forced_promote,
            ChangeKind::Failover => &mut self.failover,
            ChangeKind::Demote => &mut self.demote,
        }
    }
}

impl ChangeKind {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Promote => "promote",
            ChangeKind::ForcedPromote => "forced_promote",
            ChangeKind::Failover => "failover",
            ChangeKind::Demote => "demote",
        }
    }
}

/// Who paused a group's automatic failover, why and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who asked (`user@host`).
    pub actor: String,
    /// Free-text reason.
    pub reason: String,
    /// When the pause was committed (wall clock of the proposing leader).
    pub since_unix_ms: u64,
}

/// The small, fixed-size part of a group: what status and promote answers carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group's name.
    pub name: GroupName,
    /// Eligible sites, highest priority first.
    pub sites: Vec<SiteId>,
    /// The active site (`None` in maintenance).
    pub active_site: Option<SiteId>,
    /// The current epoch.
    pub epoch: Epoch,
    /// Where the group is in the promotion protocol.
    pub phase: Phase,
    /// While demoting: the site being promoted (`None` for a demotion to no site).
    pub promoting_to: Option<SiteId>,
    /// How many leases are live.
    pub lease_count: usize,
}

/// A site for messages: its name, or `(none)`.
pub fn site_name(site: Option<&SiteId>) -> String {
    site.map_or_else(|| "(none)".to_owned(), ToString::to_string)
}

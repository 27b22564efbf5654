//! What the Raft log carries, and what applying an entry answers.
//!
//! Commands carry every input they depend on (including the wall-clock time recorded in
//! history), so applying the same log on any controller gives the same state.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, GroupName, LeaseId, SiteId};
use crate::model::{ChangeKind, GroupSummary, Lease, Pause};

/// One replicated state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a group that the topology declares and the state does not have yet:
    /// active at its first (preferred) site, epoch 1.
    CreateGroup {
        /// The group to create.
        group: GroupName,
        /// Eligible sites, highest priority first.
        sites: Vec<SiteId>,
        /// When the leader proposed it (wall clock, for history only).
        at_unix_ms: u64,
    },
    /// Starts moving a group from its active site to `to`: the group enters `Demoting`,
    /// from which the active site may renew nothing.
    BeginPromotion {
        /// The group to move.
        group: GroupName,
        /// The site that becomes active.
        to: SiteId,
        /// Why the change happens (operator promote, automatic failover, ...).
        kind: ChangeKind,
        /// Who asked for it (`user@host`, or `controller-3` for automatic changes).
        actor: String,
        /// The operator's or the detector's reason, free text.
        reason: String,
        /// When the leader proposed it (wall clock, for history only).
        at_unix_ms: u64,
    },
    /// Starts demoting the active site to no active site (maintenance): like a promotion,
    /// through `Demoting`, so the site's leases are released or expired first.
    BeginDemotion {
        /// The group.
        group: GroupName,
        /// Who asked.
        actor: String,
        /// Why.
        reason: String,
        /// When the leader proposed it (wall clock, for history only).
        at_unix_ms: u64,
    },
    /// Finishes a promotion: the pending site becomes active at the next epoch.
    /// Proposed only once the old site's leases are released or expired.
    CompletePromotion {
        /// The group whose promotion finishes.
        group: GroupName,
        /// The epoch the promotion started from, so a stale retry cannot complete a later one.
        from_epoch: Epoch,
        /// When the leader proposed it (wall clock, for history only).
        at_unix_ms: u64,
    },
    /// Grants a lease on the group to a holder at its active site. Refused unless the site
    /// is active and no promotion is under way. Every grant carries a new token. A holder
    /// id that still has a live lease gets a new one and the old one is *superseded*:
    /// renewed no more, but counted until released or expired (see `GroupState::holders`).
    Grant {
        /// The group.
        group: GroupName,
        /// The holder's site.
        site: SiteId,
        /// The holder (an engine instance id).
        holder: String,
        /// How long the lease lasts without renewal.
        ttl_ms: u64,
    },
    /// Ends a lease at its holder's request.
    Release {
        /// The group.
        group: GroupName,
        /// The lease.
        lease: LeaseId,
    },
    /// Drops leases that the leader has seen go unrenewed past their TTL plus the drift
    /// bound (their holders stopped by their own deadline before that).
    Expire {
        /// The group.
        group: GroupName,
        /// The leases to drop; ones already gone are skipped.
        leases: Vec<LeaseId>,
    },
    /// Pauses automatic failover of a group (maintenance): the leader moves it no more on
    /// its own; operator promotes and demotes still work. Recorded in the group's pause
    /// history.
    Pause {
        /// The group.
        group: GroupName,
        /// Who asked (`user@host`).
        actor: String,
        /// Why, free text.
        reason: String,
        /// When the leader proposed it (wall clock, for status and history only).
        at_unix_ms: u64,
    },
    /// Ends a pause: automatic failover of the group applies again.
    Resume {
        /// The group.
        group: GroupName,
        /// Who asked (`user@host`).
        actor: String,
        /// Why, free text.
        reason: String,
        /// When the leader proposed it (wall clock, for history only).
        at_unix_ms: u64,
    },
    /// Fixes the cluster's identity: proposed once by the first leader of a new cluster,
    /// so every controller learns the same id through the log (docs/security.md). A
    /// cluster that already has an id keeps it: the command is then refused.
    SetClusterId {
        /// The id: random, 32 hex digits.
        id: String,
    },
}

impl Command {
    /// The group a command acts on; `None` for a command on the cluster as a whole.
    pub fn group(&self) -> Option<&GroupName> {
        Some(match self {
            Command::CreateGroup { group, .. }
            | Command::BeginPromotion { group, .. }
            | Command::BeginDemotion { group, .. }
            | Command::CompletePromotion { group, .. }
            | Command::Grant { group, .. }
            | Command::Release { group, .. }
            | Command::Expire { group, .. }
            | Command::Pause { group, .. }
            | Command::Resume { group, .. } => group,
            Command::SetClusterId { .. } => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateGroup { group, sites, .. } => {
                write!(
                    f,
                    "create group {group} at {}",
                    sites.first().map_or("-", SiteId::as_str)
                )
            }
            Command::BeginPromotion {
                group, to, kind, ..
            } => {
                write!(f, "begin {} of group {group} to {to}", kind.as_str())
            }
            Command::CompletePromotion {
                group, from_epoch, ..
            } => {
                write!(
                    f,
                    "complete promotion of group {group} from epoch {from_epoch}"
                )
            }
            Command::BeginDemotion { group, .. } => write!(f, "begin demotion of group {group}"),
            Command::Grant {
                group,
                site,
                holder,
                ..
            } => write!(f, "grant group {group} to {holder} at {site}"),
            Command::Release { group, lease } => {
                write!(f, "release lease {lease} of group {group}")
            }
            Command::Expire { group, leases } => {
                write!(f, "expire {} leases of group {group}", leases.len())
            }
            Command::Pause { group, actor, .. } => {
                write!(f, "pause automatic failover of group {group} ({actor})")
            }
            Command::Resume { group, actor, .. } => {
                write!(f, "resume automatic failover of group {group} ({actor})")
            }
            Command::SetClusterId { id } => write!(f, "set cluster id {id}"),
        }
    }
}

/// A command the state refused; applying it changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The group is not in the state.
    #[error("unknown group `{0}`")]
    UnknownGroup(GroupName),
    /// The site is not one of the group's eligible sites.
    #[error("site `{site}` is not eligible for group `{group}` (eligible: {eligible})")]
    UnknownSite {
        /// The group asked about.
        group: GroupName,
        /// The site that is not eligible.
        site: SiteId,
        /// The group's eligible sites, comma separated.
        eligible: String,
    },
    /// The site is already active; nothing to do.
    #[error("site `{site}` is already active for group `{group}` at epoch {epoch}")]
    AlreadyActive {
        /// The group asked about.
        group: GroupName,
        /// Its active site.
        site: SiteId,
        /// Its current epoch.
        epoch: Epoch,
    },
    /// Another promotion of the group is under way.
    #[error("group `{group}` is already moving from `{from}` to `{to}`")]
    PromotionInProgress {
        /// The group asked about.
        group: GroupName,
        /// The site being demoted.
        from: String,
        /// The site being promoted (`(none)` for a demotion).
        to: String,
    },
    /// The group has no active site already (maintenance).
    #[error("group `{0}` has no active site already")]
    NoActiveSite(GroupName),
    /// A completion arrived for a promotion that is not pending (already done, or stale).
    #[error("group `{group}` has no promotion from epoch {from_epoch} to complete")]
    NoPendingPromotion {
        /// The group asked about.
        group: GroupName,
        /// The epoch the completion named.
        from_epoch: Epoch,
    },
    /// The group exists already.
    #[error("group `{0}` already exists")]
    GroupExists(GroupName),
    /// A group was declared with no eligible site.
    #[error("group `{0}` has no eligible site")]
    NoSites(GroupName),
    /// A grant for a site that is not (or no longer) active: the holder stays standby.
    #[error("site `{site}` is standby for group `{group}`: `{}` is active at epoch {epoch}{}", crate::model::site_name(.active_site.as_ref()), if *.demoting { " and being demoted" } else { "" })]
    Standby {
        /// The group asked about.
        group: GroupName,
        /// The site that asked.
        site: SiteId,
        /// The active site (`None` in maintenance).
        active_site: Option<SiteId>,
        /// The current epoch.
        epoch: Epoch,
        /// Whether a promotion is under way (then even the active site is refused).
        demoting: bool,
    },
    /// The lease does not exist in the group (released, expired, or ended by a promotion).
    #[error("lease {lease} of group `{group}` does not exist (released, expired, or ended by a promotion)")]
    UnknownLease {
        /// The group asked about.
        group: GroupName,
        /// The lease.
        lease: LeaseId,
    },
    /// An automatic failover of a paused group: only operators move it.
    #[error("automatic failover of group `{group}` is paused by {actor}{}", if .reason.is_empty() { String::new() } else { format!(": {}", .reason) })]
    Paused {
        /// The group asked about.
        group: GroupName,
        /// Who paused it.
        actor: String,
        /// Why.
        reason: String,
    },
    /// A pause of a group that is paused already.
    #[error("automatic failover of group `{group}` is already paused by {actor}")]
    AlreadyPaused {
        /// The group asked about.
        group: GroupName,
        /// Who paused it.
        actor: String,
    },
    /// A resume of a group that is not paused.
    #[error("automatic failover of group `{0}` is not paused")]
    NotPaused(GroupName),
    /// The cluster already has an id; it never changes.
    #[error("the cluster id is already {0}")]
    ClusterIdSet(String),
    /// The group holds as many leases as it may.
    #[error("group `{group}` already holds {limit} leases")]
    TooManyLeases {
        /// The group asked about.
        group: GroupName,
        /// The bound.
        limit: usize,
    },
}

/// What an applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A group was created or its promotion moved on; its summary afterwards.
    Group(GroupSummary),
    /// A lease was granted.
    Granted(Lease),
    /// A lease was released.
    Released,
    /// This many leases were dropped as expired.
    Expired(usize),
    /// A group was paused or resumed; its pause afterwards (`None`: resumed).
    PauseChanged(Option<Pause>),
    /// The cluster's id was set.
    ClusterIdSet,
}

/// What applying a command answers: what it produced, or why nothing changed.
pub type CommandResult = Result<Outcome, Rejection>;

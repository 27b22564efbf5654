//! The openraft type configuration: what the log carries and what applying it answers.
//! The store builds on it; the Raft handle over the store is `store::Raft`.

use failover_core::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Raft types of the controller cluster: log entries carry core [`Command`]s.
    pub TypeConfig:
        D = Command,
        R = Applied,
        AsyncRuntime = crate::runtime::ControllerRuntime,
);

/// What applying one log entry answered: `None` for Raft's own entries (blank, membership).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied(pub Option<CommandResult>);

/// A log id of this cluster.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote of this cluster.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A log entry of this cluster.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// Membership as stored with its log id.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata of this cluster.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot: its metadata and a reader of its encoded state.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::snapshot_data::SnapshotData>;

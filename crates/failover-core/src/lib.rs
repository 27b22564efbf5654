//! The rules of `failover`: fully deterministic, no networking, no async, no clock.
//!
//! Everything that decides *what is true* lives here; the controller, executor and CLI
//! only move bytes and time in and out. Time is always an argument (`at_unix_ms` for
//! what is recorded in history), so every rule can be tested exhaustively.
//!
//! # Layout
//! - [`ids`]: newtypes for sites, groups, controllers, epochs, leases and fencing values.
//! - [`placement`]: which site may run an executor of which group (a witness may not).
//! - [`config`]: the topology file (sites, controllers, groups, timing) and its validation.
//! - [`model`]: the records state and commands share (lease, phase, change kind, pause,
//!   group summary); a leaf, so the modules below depend on it one way.
//! - [`state`]: the replicated state machine: groups, phases, history, and [`state::ClusterState::apply`].
//! - [`command`]: the commands the Raft log carries and what applying them answers.
//! - [`lease`]: lease timing on the leader and at the holder.
//! - [`leader`]: the leader's decisions (observations, changes, what to propose, the
//!   effects owed after each commit), driven by the controller.
//! - [`supervision`]: restart backoff and crash-loop detection for site workers.
//! - [`executor`]: the executor's supervisor: worker starts, stops, restarts, rolling
//!   reloads, the unhealthy cooldown and lease release, as actions for its driver.
//! - [`policy`]: failure detection and the automatic failover decision.
//! - [`promotion`]: the promotion protocol (Active → Demoting → Active at the next epoch).
#![warn(missing_docs, unreachable_pub)]

pub mod command;
pub mod config;
pub mod executor;
pub mod ids;
pub mod leader;
pub mod lease;
pub mod limits;
pub mod model;
pub mod placement;
pub mod policy;
pub mod promotion;
pub mod state;
pub mod supervision;

pub use command::{Command, CommandResult, Outcome, Rejection};
pub use config::{ConfigError, Timing, Topology};
pub use ids::{Epoch, FencingToken, FencingValue, GroupName, LeaseId, NodeId, SiteId};
pub use lease::{Held, Lease};
pub use state::{
    Archived, ChangeCounts, ChangeKind, ClusterState, GroupState, GroupSummary, HistoryEntry,
    HistoryRecord, HolderIndex, LeaseMap, Pause, PauseEvent, Phase, HISTORY_WINDOW,
};

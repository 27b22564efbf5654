//! The replicated state machine in sled, and the in-memory view the services read.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use failover_core::ClusterState;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{decode, encode, io_err};
use crate::types::{Applied, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";

/// What the `sm` tree holds under `applied`: the state and the log position it reflects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

/// A stored snapshot: metadata plus the serialized [`AppliedState`].
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The latest applied cluster state, shared read-only with the services.
///
/// Readers take the lock only to copy what they need; `changes` ticks on every applied
/// batch so a waiter (a promote waiting for `Active`) needs no polling.
#[derive(Debug)]
pub struct StateView {
    state: RwLock<ClusterState>,
    changes: watch::Sender<u64>,
}

impl StateView {
    fn new(state: ClusterState) -> Self {
        StateView {
            state: RwLock::new(state),
            changes: watch::Sender::new(0),
        }
    }

    /// Read access to the applied state. Hold it briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver that changes whenever applied state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn replace(&self, state: ClusterState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        self.changes.send_modify(|n| *n += 1);
    }
}

/// The state machine: applies committed commands to a [`ClusterState`] kept in sled.
#[derive(Debug)]
pub struct SledStateMachine {
    db: sled::Db,
    tree: sled::Tree,
    applied: AppliedState,
    view: Arc<StateView>,
}

impl SledStateMachine {
    pub(super) fn open(db: sled::Db) -> Result<Self, io::Error> {
        let tree = db.open_tree("sm").map_err(io_err)?;
        let applied: AppliedState = match tree.get(APPLIED).map_err(io_err)? {
            Some(raw) => decode(&raw, "applied state machine")?,
            None => AppliedState::default(),
        };
        for group in applied.state.groups.values() {
            group.assert_invariants();
        }
        let view = Arc::new(StateView::new(applied.state.clone()));
        Ok(SledStateMachine {
            db,
            tree,
            applied,
            view,
        })
    }

    /// The view the services read from.
    pub fn view(&self) -> Arc<StateView> {
        self.view.clone()
    }

    fn persist_applied(&self) -> Result<(), io::Error> {
        self.tree
            .insert(APPLIED, encode(&self.applied)?)
            .map_err(io_err)?;
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for SledStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut responses = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            self.applied.last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => Applied(None),
                EntryPayload::Normal(command) => Applied(Some(self.applied.state.apply(&command))),
                EntryPayload::Membership(membership) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Applied(None)
                }
            };
            responses.push((responder, applied));
        }
        self.persist_applied()?;
        self.view.replace(self.applied.state.clone());
        for (responder, applied) in responses {
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            tree: self.tree.clone(),
            captured: self.applied.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut applied: AppliedState = decode(&data, "received snapshot")?;
        for group in applied.state.groups.values() {
            group.assert_invariants();
        }
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.tree
            .insert(SNAPSHOT, encode(&stored)?)
            .map_err(io_err)?;
        self.applied = applied;
        self.persist_applied()?;
        self.db.flush_async().await.map_err(io_err)?;
        self.view.replace(self.applied.state.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        match self.tree.get(SNAPSHOT).map_err(io_err)? {
            Some(raw) => {
                let stored: StoredSnapshot = decode(&raw, "stored snapshot")?;
                Ok(Some(Snapshot {
                    meta: stored.meta,
                    snapshot: stored.data,
                }))
            }
            None => Ok(None),
        }
    }
}

/// Builds a snapshot from the state captured when the builder was made, so applies that
/// happen meanwhile cannot tear it.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: sled::Db,
    tree: sled::Tree,
    captured: AppliedState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let data = encode(&self.captured)?;
        let meta = SnapshotMeta {
            last_log_id: self.captured.last_applied,
            last_membership: self.captured.membership.clone(),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.tree
            .insert(SNAPSHOT, encode(&stored)?)
            .map_err(io_err)?;
        self.db.flush_async().await.map_err(io_err)?;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

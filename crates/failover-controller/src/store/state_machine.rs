//! The replicated state machine, in memory, with its snapshots kept in the redb file.
//!
//! The state is applied in memory only; what makes it durable is the Raft log (fdatasynced
//! on append) plus the last snapshot (fdatasynced when built or installed). On start the state is
//! empty and openraft restores it: it installs the stored snapshot and re-applies the
//! committed log after it. Applying therefore costs no disk I/O, which matters at
//! thousands of lease grants per second.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{Database, Durability};

use failover_core::ClusterState;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{decode, encode, io_err, write_blocking, SNAPSHOT as SNAPSHOTS};
use crate::types::{Applied, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

const SNAPSHOT: &str = "snapshot";

/// What a snapshot's data holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    state: ClusterState,
}

/// A stored snapshot: metadata plus the serialized [`SnapshotData`].
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The applied cluster state, shared with the services.
///
/// Readers hold the read lock only while they look; `changes` ticks after every applied
/// batch so waiters (a promote waiting for `Active`, a watch stream) need no polling.
#[derive(Debug)]
pub struct StateView {
    state: RwLock<ClusterState>,
    changes: watch::Sender<u64>,
}

impl StateView {
    fn new() -> Self {
        StateView {
            state: RwLock::new(ClusterState::default()),
            changes: watch::Sender::new(0),
        }
    }

    /// Read access to the applied state. Hold it briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver that changes whenever the applied state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn write(&self) -> RwLockWriteGuard<'_, ClusterState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

/// The state machine: applies committed commands to the shared [`StateView`].
pub struct StateMachine {
    db: Arc<Database>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    view: Arc<StateView>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    pub(super) fn open(db: Arc<Database>) -> Result<Self, io::Error> {
        if let Some(stored) = read_snapshot(&db)? {
            // Read it once now so a damaged snapshot is reported at start, by name.
            let data: SnapshotData = decode(&stored.data, "stored snapshot data")?;
            check_state(&data.state);
        }
        Ok(StateMachine {
            db,
            last_applied: None,
            membership: StoredMembership::default(),
            view: Arc::new(StateView::new()),
        })
    }

    /// The view the services read from.
    pub fn view(&self) -> Arc<StateView> {
        self.view.clone()
    }
}

/// The stored snapshot, if one was ever built or installed.
fn read_snapshot(db: &Database) -> Result<Option<StoredSnapshot>, io::Error> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(SNAPSHOTS).map_err(io_err)?;
    let raw = table.get(SNAPSHOT).map_err(io_err)?;
    match raw {
        Some(raw) => decode(raw.value(), "stored snapshot").map(Some),
        None => Ok(None),
    }
}

/// Stores `stored` as the current snapshot; returns once the data file is fdatasynced.
async fn write_snapshot(db: &Arc<Database>, stored: &StoredSnapshot) -> Result<(), io::Error> {
    let raw = encode(stored)?;
    write_blocking(db, Durability::Immediate, move |txn| {
        txn.open_table(SNAPSHOTS)?
            .insert(SNAPSHOT, raw.as_slice())?;
        Ok(())
    })
    .await
}

fn check_state(state: &ClusterState) {
    for group in state.groups.values() {
        group.assert_invariants();
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut responses = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            self.last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => Applied(None),
                EntryPayload::Normal(command) => Applied(Some(self.view.write().apply(&command))),
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Applied(None)
                }
            };
            responses.push((responder, applied));
        }
        self.view.changed();
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
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
            },
            data: SnapshotData {
                state: self.view.read().clone(),
            },
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<(), io::Error> {
        let decoded: SnapshotData = decode(&data, "snapshot")?;
        check_state(&decoded.state);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_snapshot(&self.db, &stored).await?;
        *self.view.write() = decoded.state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.view.changed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(read_snapshot(&self.db)?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: stored.data,
        }))
    }
}

/// Builds a snapshot from the state captured when the builder was made, so applies that
/// happen meanwhile cannot tear it.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    meta: SnapshotMeta,
    data: SnapshotData,
}

impl std::fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let data = encode(&self.data)?;
        let stored = StoredSnapshot {
            meta: self.meta.clone(),
            data: data.clone(),
        };
        write_snapshot(&self.db, &stored).await?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: data,
        })
    }
}

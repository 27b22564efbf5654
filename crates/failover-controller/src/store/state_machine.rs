//! The replicated state machine, in memory, with its snapshots kept in the redb file.
//!
//! The state is applied in memory only; what makes it durable is the Raft log (fdatasynced
//! on append) plus the last snapshot (fdatasynced when built or installed). On start the
//! state machine loads the stored snapshot (it is then applied up to the snapshot) and
//! openraft re-applies the committed log after it. Applying therefore costs no disk I/O,
//! which matters at thousands of lease grants per second.
//!
//! Snapshots use the compact encoding of [`super::snapshot`] and are stored in 1 MiB
//! chunks. They are taken on a schedule that keeps their cost amortised: once the entries
//! applied since the last one reach the size of the state ([`SnapshotSchedule`]), so a
//! snapshot, whose cost grows with the state, is paid for by as many entries.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{Database, Durability};

use failover_core::ClusterState;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    decode, encode, io_err, snapshot, write_blocking, SNAPSHOT as SNAPSHOTS, SNAPSHOT_CHUNKS,
};
use crate::types::{Applied, LogId, Raft, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// The key of the earlier format: metadata and data as one JSON value.
const OLD_SNAPSHOT: &str = "snapshot";
/// The key of the current snapshot's [`SnapshotHeader`]; its data is in `SNAPSHOT_CHUNKS`.
const HEADER: &str = "header";
/// Size of one stored piece of snapshot data.
const CHUNK_BYTES: usize = 1 << 20;
/// Fewest entries between two snapshots, however small the state.
pub const SNAPSHOT_MIN_ENTRIES: u64 = 1000;

/// The stored snapshot's metadata and how its data is stored.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta,
    len: u64,
    chunks: u64,
}

/// A stored snapshot of the earlier format.
#[derive(Debug, Deserialize)]
struct OldSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// When the next snapshot is due: once the entries applied since the last one reach
/// [`SNAPSHOT_MIN_ENTRIES`] or the number of leases and groups, whichever is larger. A
/// snapshot costs time and bytes in proportion to the state, so this keeps its cost per
/// entry constant, and a restart re-applies at most about one state's worth of entries.
#[derive(Debug, Default)]
pub struct SnapshotSchedule {
    applied: AtomicU64,
    last_snapshot: AtomicU64,
    items: AtomicU64,
}

impl SnapshotSchedule {
    /// The entries to apply between two snapshots of a state of `items` leases and groups.
    pub fn interval(items: u64) -> u64 {
        items.max(SNAPSHOT_MIN_ENTRIES)
    }

    /// Whether a snapshot is due; if so, counts it as started so the next one waits a
    /// full interval.
    fn take_due(&self) -> bool {
        let applied = self.applied.load(Ordering::Relaxed);
        let last = self.last_snapshot.load(Ordering::Relaxed);
        let due =
            applied.saturating_sub(last) >= Self::interval(self.items.load(Ordering::Relaxed));
        due && self
            .last_snapshot
            .compare_exchange(last, applied, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn applied(&self, index: u64, items: u64) {
        self.applied.store(index, Ordering::Relaxed);
        self.items.store(items, Ordering::Relaxed);
    }

    fn snapshot_at(&self, index: u64) {
        self.last_snapshot.store(index, Ordering::Relaxed);
    }
}

fn items(state: &ClusterState) -> u64 {
    state
        .groups
        .values()
        .map(|g| g.leases.len() as u64 + 1)
        .sum()
}

/// The applied cluster state, shared with the services.
///
/// Readers hold the read lock only while they look; `changes` ticks after every applied
/// batch so waiters (a promote waiting for `Active`, a watch stream) need no polling.
#[derive(Debug)]
pub struct StateView {
    state: RwLock<ClusterState>,
    changes: watch::Sender<u64>,
    schedule: SnapshotSchedule,
}

impl StateView {
    fn new() -> Self {
        StateView {
            state: RwLock::new(ClusterState::default()),
            changes: watch::Sender::new(0),
            schedule: SnapshotSchedule::default(),
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
    /// Loads the stored snapshot, if any: the state machine starts applied up to it.
    pub(super) fn open(db: Arc<Database>) -> Result<Self, io::Error> {
        let view = Arc::new(StateView::new());
        let mut sm = StateMachine {
            db,
            last_applied: None,
            membership: StoredMembership::default(),
            view,
        };
        if let Some((meta, data)) = read_snapshot(&sm.db)? {
            let state = snapshot::decode(&data)?;
            check_state(&state);
            sm.restore(&meta, state);
        }
        Ok(sm)
    }

    /// The view the services read from.
    pub fn view(&self) -> Arc<StateView> {
        self.view.clone()
    }

    /// Replaces the state by a snapshot's.
    fn restore(&mut self, meta: &SnapshotMeta, state: ClusterState) {
        let index = meta.last_log_id.map_or(0, |id| id.index());
        self.view.schedule.applied(index, items(&state));
        self.view.schedule.snapshot_at(index);
        *self.view.write() = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.view.changed();
    }
}

/// Asks openraft for a snapshot whenever the [`SnapshotSchedule`] says one is due, until
/// shutdown. Every controller runs it for its own log.
pub async fn run_snapshot_schedule(
    raft: Raft,
    view: Arc<StateView>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = view.subscribe();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if view.schedule.take_due() {
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "cannot start a snapshot");
            }
        }
    }
}

/// The stored snapshot (metadata and data), if one was ever built or installed.
fn read_snapshot(db: &Database) -> Result<Option<(SnapshotMeta, Vec<u8>)>, io::Error> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(SNAPSHOTS).map_err(io_err)?;
    if let Some(raw) = table.get(HEADER).map_err(io_err)? {
        let header: SnapshotHeader = decode(raw.value(), "snapshot header")?;
        let chunks = txn.open_table(SNAPSHOT_CHUNKS).map_err(io_err)?;
        let len = usize::try_from(header.len).map_err(io::Error::other)?;
        let mut data = Vec::with_capacity(len);
        for i in 0..header.chunks {
            let chunk = chunks.get(i).map_err(io_err)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot chunk {i} of {} is missing", header.chunks),
                )
            })?;
            data.extend_from_slice(chunk.value());
        }
        if data.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot data is {} bytes, header says {len}", data.len()),
            ));
        }
        return Ok(Some((header.meta, data)));
    }
    match table.get(OLD_SNAPSHOT).map_err(io_err)? {
        Some(raw) => {
            let old: OldSnapshot = decode(raw.value(), "stored snapshot")?;
            Ok(Some((old.meta, old.data)))
        }
        None => Ok(None),
    }
}

/// Stores `data` as the current snapshot, in chunks, replacing the previous one; returns
/// once the data file is fdatasynced. Hands the data back.
async fn write_snapshot(
    db: &Arc<Database>,
    meta: &SnapshotMeta,
    data: Vec<u8>,
) -> Result<Vec<u8>, io::Error> {
    let chunks = data.len().div_ceil(CHUNK_BYTES) as u64;
    let header = encode(&SnapshotHeader {
        meta: meta.clone(),
        len: data.len() as u64,
        chunks,
    })?;
    let data = Arc::new(data);
    let shared = data.clone();
    write_blocking(db, Durability::Immediate, move |txn| {
        let mut table = txn.open_table(SNAPSHOT_CHUNKS)?;
        table.retain(|_, _| false)?;
        for (i, chunk) in shared.chunks(CHUNK_BYTES).enumerate() {
            table.insert(i as u64, chunk)?;
        }
        let mut snapshots = txn.open_table(SNAPSHOTS)?;
        snapshots.remove(OLD_SNAPSHOT)?;
        snapshots.insert(HEADER, header.as_slice())?;
        Ok(())
    })
    .await?;
    Ok(Arc::try_unwrap(data).unwrap_or_else(|shared| shared.as_ref().clone()))
}

fn check_state(state: &ClusterState) {
    for group in state.groups.values() {
        group.assert_invariants();
        group.assert_history();
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
        let index = self.last_applied.map_or(0, |id| id.index());
        let items = items(&self.view.read());
        self.view.schedule.applied(index, items);
        self.view.changed();
        for (responder, applied) in responses {
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    /// Encodes the state now, so applies that happen meanwhile cannot tear the snapshot.
    /// Applies wait anyway (this runs on the state machine's task); readers wait only for
    /// the skeleton (groups and history), not for the leases.
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let index = self.last_applied.map_or(0, |id| id.index());
        self.view.schedule.snapshot_at(index);
        let skeleton = snapshot::encode_skeleton(&mut self.view.write());
        let data = skeleton.map(|mut out| {
            snapshot::encode_leases(&self.view.read(), &mut out);
            out
        });
        SnapshotBuilder {
            db: self.db.clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
            },
            data,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state = snapshot::decode(&data)?;
        check_state(&state);
        write_snapshot(&self.db, meta, data).await?;
        self.restore(meta, state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(read_snapshot(&self.db)?.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Stores a snapshot encoded when the builder was made.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    meta: SnapshotMeta,
    data: Result<Vec<u8>, io::Error>,
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
        let data = std::mem::replace(
            &mut self.data,
            Err(io::Error::other("snapshot already built")),
        )?;
        let data = write_snapshot(&self.db, &self.meta, data).await?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: data,
        })
    }
}

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
//! applied since the last one reach a quarter of the state's size ([`SnapshotSchedule`]),
//! so a snapshot, whose cost grows with the state, is paid for by that many entries. They
//! are encoded at a lower CPU priority than the rest of the controller.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{Database, Durability, ReadableTable};

use failover_core::{ClusterState, GroupName, HistoryEntry, PauseEvent, HISTORY_WINDOW};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::pieces::StoredPieces;
use super::Raft;
use super::{
    decode, encode, history, io_err, snapshot, write, write_blocking, SNAPSHOT as SNAPSHOTS,
    SNAPSHOT_CHUNKS,
};
use crate::snapshot_data::SnapshotData;
use crate::types::{Applied, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// The key of the earlier format: metadata and data as one JSON value.
const OLD_SNAPSHOT: &str = "snapshot";
/// The key of the current snapshot's [`SnapshotHeader`]; its data is in `SNAPSHOT_CHUNKS`.
const HEADER: &str = "header";
/// Fewest entries between two snapshots, however small the state.
pub const SNAPSHOT_MIN_ENTRIES: u64 = 1000;

/// The stored snapshot's metadata and how its data is stored: `chunks` pieces under the
/// keys from `first` on.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta,
    len: u64,
    chunks: u64,
    /// The key of the first piece (absent, 0, in data files from before snapshots were
    /// written piece by piece).
    #[serde(default)]
    first: u64,
}

/// A stored snapshot of the earlier format.
#[derive(Debug, Deserialize)]
struct OldSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// When the next snapshot is due: once the entries applied since the last one reach
/// [`SNAPSHOT_MIN_ENTRIES`] or a quarter of the leases and groups the state held at the
/// last one, whichever is larger. A snapshot costs time and bytes in proportion to the
/// state, so its cost per entry stays constant; the log between two snapshots (what a
/// restart re-applies and what the data file holds besides the snapshot) stays under a
/// quarter of the state's size.
///
/// The interval follows the state's size *at the last snapshot*, not its current size:
/// measured against the current size, a state that grows by one lease per entry (a grant
/// phase) would never have applied as many entries since the last snapshot as it holds
/// leases, so no snapshot would come and the log would never be purged. While the state
/// grows, snapshots come at sizes growing by a factor of about 1.25, so their total cost
/// stays a constant multiple of the final state's size.
#[derive(Debug, Default)]
pub struct SnapshotSchedule {
    applied: AtomicU64,
    last_snapshot: AtomicU64,
    items: AtomicU64,
    items_at_snapshot: AtomicU64,
}

/// The log between two snapshots is at most the state's size (leases and groups at the
/// last snapshot) divided by this.
pub const SNAPSHOT_STATE_FRACTION: u64 = 4;

impl SnapshotSchedule {
    /// The entries to apply after a snapshot of a state of `items` leases and groups
    /// before the next one.
    pub fn interval(items: u64) -> u64 {
        (items / SNAPSHOT_STATE_FRACTION).max(SNAPSHOT_MIN_ENTRIES)
    }

    /// Whether a snapshot is due; if so, counts it as started so the next one waits a
    /// full interval.
    fn take_due(&self) -> bool {
        let applied = self.applied.load(Ordering::Relaxed);
        let last = self.last_snapshot.load(Ordering::Relaxed);
        let interval = Self::interval(self.items_at_snapshot.load(Ordering::Relaxed));
        let due = applied.saturating_sub(last) >= interval;
        due && self
            .last_snapshot
            .compare_exchange(last, applied, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn applied(&self, index: u64, items: u64) {
        self.applied.store(index, Ordering::Relaxed);
        self.items.store(items, Ordering::Relaxed);
    }

    /// A snapshot of the state as last applied was taken (or installed) at `index`.
    fn snapshot_at(&self, index: u64) {
        self.last_snapshot.store(index, Ordering::Relaxed);
        self.items_at_snapshot
            .store(self.items.load(Ordering::Relaxed), Ordering::Relaxed);
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
/// The history records that left the in-memory window are read from the data file
/// ([`StateView::archived_history`]).
#[derive(Debug)]
pub struct StateView {
    state: RwLock<ClusterState>,
    changes: watch::Sender<u64>,
    schedule: SnapshotSchedule,
    db: Arc<Database>,
}

impl StateView {
    fn new(db: Arc<Database>) -> Self {
        StateView {
            state: RwLock::new(ClusterState::default()),
            changes: watch::Sender::new(0),
            schedule: SnapshotSchedule::default(),
            db,
        }
    }

    /// The archived part of `group`'s history: its first `changes` changes of active site
    /// and its first `pauses` pause events, oldest first. Take the counts
    /// (`history_archived`, `pause_history_archived`) from [`StateView::read`] first and
    /// release the lock before calling this: every record below them is on disk by then.
    pub fn archived_history(
        &self,
        group: &GroupName,
        changes: u64,
        pauses: u64,
    ) -> io::Result<(Vec<HistoryEntry>, Vec<PauseEvent>)> {
        history::read(&self.db, group, changes, pauses)
    }

    /// A page of `group`'s archived changes of active site: the newest `limit` (0: all)
    /// of its first `count` that completed before `before_unix_ms` (0: no bound), oldest
    /// first, read backwards from the newest so the page costs its own size. Take `count`
    /// as for [`StateView::archived_history`].
    pub fn archived_changes_page(
        &self,
        group: &GroupName,
        count: u64,
        limit: usize,
        before_unix_ms: u64,
    ) -> io::Result<Vec<HistoryEntry>> {
        history::newest_changes(&self.db, group, count, limit, before_unix_ms)
    }

    /// [`StateView::archived_changes_page`] for the pause events.
    pub fn archived_pauses_page(
        &self,
        group: &GroupName,
        count: u64,
        limit: usize,
        before_unix_ms: u64,
    ) -> io::Result<Vec<PauseEvent>> {
        history::newest_pauses(&self.db, group, count, limit, before_unix_ms)
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
    snapshots: SnapshotStore,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    view: Arc<StateView>,
    history_window: usize,
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
        let view = Arc::new(StateView::new(db.clone()));
        let mut sm = StateMachine {
            snapshots: SnapshotStore {
                db: db.clone(),
                storing: Arc::default(),
            },
            db,
            last_applied: None,
            membership: StoredMembership::default(),
            view,
            history_window: HISTORY_WINDOW,
        };
        if let Some((meta, data)) = stored_snapshot(&sm.db)? {
            let decoded = snapshot::decode_from(io::BufReader::new(data))?;
            match decoded.archive {
                // A stored snapshot of the current format: its archive is in the table,
                // written before the snapshot was stored (a missing record is damage).
                None => {
                    for group in decoded.state.groups.values() {
                        let (changes, pauses) = history::read(
                            &sm.db,
                            &group.name,
                            group.history_archived,
                            group.pause_history_archived,
                        )?;
                        check_group(group, &changes, &pauses);
                    }
                }
                // An earlier format that carries its archive: written again only if the
                // table lacks it (a data file from before the archive table, or damage).
                Some(archive) => {
                    check_state(&decoded.state, &archive);
                    let mut missing = Vec::new();
                    for (name, (changes, pauses)) in archive {
                        let (c, p) = (changes.len() as u64, pauses.len() as u64);
                        if !history::holds(&sm.db, &name, c, p)? {
                            missing.extend(history::as_archived(&name, changes, pauses));
                        }
                    }
                    if !missing.is_empty() {
                        write(&sm.db, Durability::Immediate, |txn| {
                            history::store(txn, &missing)
                        })?;
                    }
                }
            }
            sm.restore(&meta, decoded.state)?;
        }
        Ok(sm)
    }

    /// Sets how many changes, and how many pause events, of each group stay in memory
    /// (default [`HISTORY_WINDOW`]; tests pass a small one to cross the boundary quickly)
    /// and moves what is beyond it to the archive now.
    ///
    /// # Panics
    /// If `window` is 0: the newest change is the current epoch's and stays in memory.
    pub fn set_history_window(&mut self, window: usize) -> io::Result<()> {
        assert!(window >= 1, "the history window keeps at least one record");
        self.history_window = window;
        self.trim_history()
    }

    /// Moves the history beyond the window to the archive. The records are written while
    /// the state's write lock is held, so a reader that saw a group's archived counts
    /// finds every record below them on disk. Not fsynced: the next durable commit of the
    /// data file (a log append, a snapshot) carries it, and until a snapshot covers them
    /// the records are re-created by re-applying the log.
    fn trim_history(&self) -> io::Result<()> {
        let mut state = self.view.write();
        let archived = state.trim_history(self.history_window);
        if !archived.is_empty() {
            write(&self.db, Durability::None, |txn| {
                history::store(txn, &archived)
            })?;
        }
        Ok(())
    }

    /// The view the services read from.
    pub fn view(&self) -> Arc<StateView> {
        self.view.clone()
    }

    /// Replaces the state by a snapshot's (whose archive is stored already), and moves
    /// the history beyond the window to the archive (a snapshot of an earlier format
    /// holds the whole history in its skeleton).
    fn restore(&mut self, meta: &SnapshotMeta, state: ClusterState) -> io::Result<()> {
        let index = meta.last_log_id.map_or(0, |id| id.index());
        self.view.schedule.applied(index, items(&state));
        self.view.schedule.snapshot_at(index);
        *self.view.write() = state;
        self.trim_history()?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.view.changed();
        Ok(())
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

/// A reader of a stored snapshot's data.
type StoredReader = Box<dyn io::Read + Send>;

/// The stored snapshot's metadata and a reader of its data, if one was ever built or
/// installed. The reader holds a read transaction: a snapshot stored meanwhile does not
/// change what it reads.
fn stored_snapshot(db: &Database) -> Result<Option<(SnapshotMeta, StoredReader)>, io::Error> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(SNAPSHOTS).map_err(io_err)?;
    if let Some(raw) = table.get(HEADER).map_err(io_err)? {
        let header: SnapshotHeader = decode(raw.value(), "snapshot header")?;
        drop(raw);
        drop(table);
        let pieces = StoredPieces::new(txn, header.first, header.chunks)?;
        let len = header.len;
        // Fewer bytes than the header says is damage, named as such by the decoder
        // ("truncated"); more cannot be read past `len`.
        return Ok(Some((header.meta, Box::new(pieces.take(len)))));
    }
    match table.get(OLD_SNAPSHOT).map_err(io_err)? {
        Some(raw) => {
            let old: OldSnapshot = decode(raw.value(), "stored snapshot")?;
            Ok(Some((old.meta, Box::new(io::Cursor::new(old.data)))))
        }
        None => Ok(None),
    }
}

/// Encodes `state` and stores it as the current snapshot, replacing the previous one;
/// returns its size in bytes once the data file is fdatasynced.
///
/// Written piece by piece: each [`snapshot::PIECE_BYTES`] piece is encoded and stored in
/// a short transaction of its own, under keys past every stored piece, so at most four
/// pieces are in memory and log appends (which wait for any open write transaction)
/// interleave with the pieces. A last, durable transaction switches the header to the new pieces
/// and removes the previous ones; until then the previous snapshot is the current one,
/// and the pieces of a build that a crash interrupted are removed by the next build.
/// The pieces are written from the blocking pool as [`encode_in_background`] makes them.
async fn store_snapshot(
    store: &SnapshotStore,
    meta: &SnapshotMeta,
    mut state: ClusterState,
) -> Result<u64, io::Error> {
    let out = snapshot::encode_skeleton(&mut state)?;
    let db = store.db.clone();
    let storing = store.storing.clone();
    let meta = meta.clone();
    super::blocking(move || {
        // One at a time: a follower may install the leader's snapshot while its own
        // build is still storing, and the pieces of both must not interleave.
        let _storing = storing.lock().unwrap_or_else(|p| p.into_inner());
        let first = {
            let txn = db.begin_read().map_err(io_err)?;
            let table = txn.open_table(SNAPSHOT_CHUNKS).map_err(io_err)?;
            let last = table.last().map_err(io_err)?;
            last.map_or(0, |(key, _)| key.value() + 1)
        };
        let mut next = first;
        let mut len = 0u64;
        let mut store_piece = |piece: &[u8]| -> io::Result<()> {
            write(&db, Durability::None, |txn| {
                let mut table = txn.open_table(SNAPSHOT_CHUNKS)?;
                table.insert(next, piece)?;
                Ok(())
            })?;
            next += 1;
            len += piece.len() as u64;
            Ok(())
        };
        let (pieces, encoder) = encode_in_background(state, out)?;
        let stored = pieces.iter().try_for_each(|piece| store_piece(&piece));
        // A failed write drops the receiver, which stops the encoder at its next piece.
        drop(pieces);
        // A panic there is a broken invariant of the state (asserted as it is encoded):
        // it goes on here as it would have on this thread.
        let encoded = encoder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        stored?;
        encoded?;
        let last_log_id = meta.last_log_id;
        let header = encode(&SnapshotHeader {
            meta,
            len,
            chunks: next - first,
            first,
        })?;
        let current = stored_snapshot(&db)?.map(|(meta, _)| meta);
        if current.is_some_and(|current| current.last_log_id >= last_log_id) {
            // A snapshot at least as new was stored meanwhile (a follower's own build
            // finishing after it installed the leader's): it stays, this one goes.
            write(&db, Durability::None, |txn| {
                super::remove_from(&mut txn.open_table(SNAPSHOT_CHUNKS)?, first)
            })?;
            tracing::info!(
                ?last_log_id,
                "a newer snapshot was stored meanwhile; this one is dropped"
            );
            return Ok(len);
        }
        write(&db, Durability::Immediate, |txn| {
            let mut table = txn.open_table(SNAPSHOT_CHUNKS)?;
            if let Some(before) = first.checked_sub(1) {
                super::remove_first_through(&mut table, before, u64::MAX)?;
            }
            let mut snapshots = txn.open_table(SNAPSHOTS)?;
            snapshots.remove(OLD_SNAPSHOT)?;
            snapshots.insert(HEADER, header.as_slice())?;
            Ok(())
        })?;
        Ok(len)
    })
    .await
}

/// A snapshot being encoded: its pieces as they come, and the encoder's thread.
type Encoding = (
    std::sync::mpsc::Receiver<Vec<u8>>,
    std::thread::JoinHandle<io::Result<()>>,
);

/// Encodes the leases of `state` after `head` (the skeleton) on a thread of its own at a
/// lower CPU priority ([`lower_thread_priority`]), handing out [`snapshot::PIECE_BYTES`]
/// pieces (the last one shorter) through a channel two pieces deep; the thread returns
/// how the encoding ended.
///
/// A snapshot is background work: its encoding costs CPU in proportion to the state
/// (about a second at a million leases), and on a busy controller it must not take that
/// time from the applies, log appends and answers that set a grant's latency. The writes
/// stay with the caller at normal priority: a low-priority thread must never hold the data
/// file's write lock that a log append waits for.
fn encode_in_background(state: ClusterState, mut head: Vec<u8>) -> io::Result<Encoding> {
    let (send, pieces) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    // Hands out the first piece of `out` (all of it if it is shorter than a piece).
    let hand_out = move |out: &mut Vec<u8>| {
        let rest = out.split_off(out.len().min(snapshot::PIECE_BYTES));
        send.send(std::mem::replace(out, rest))
            .map_err(|_| io::Error::other("the snapshot's pieces are no longer stored"))
    };
    let encoder = std::thread::Builder::new()
        .name("snapshot-encode".into())
        .spawn(move || {
            lower_thread_priority();
            let out = &mut head;
            snapshot::encode_leases_spilling(&state, out, &hand_out)?;
            // The copy's nodes that no one else shares any more are freed here too.
            drop(state);
            while !out.is_empty() {
                hand_out(out)?;
            }
            Ok(())
        })?;
    Ok((pieces, encoder))
}

/// Lowers the calling thread's CPU priority by 10 nice steps (to at most 19), so that
/// while there is other work to run it gets most of the CPU. Linux only: there a nice
/// value is the thread's, while elsewhere it would be the whole process's. A refusal is
/// harmless (the thread runs at the normal priority) and is logged.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let tid = Some(rustix::thread::gettid());
        let lowered =
            getpriority_process(tid).and_then(|nice| setpriority_process(tid, (nice + 10).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "cannot lower the snapshot encoder's priority");
        }
    }
}

/// Where snapshots are stored, and the lock that makes storing them one at a time.
#[derive(Clone)]
struct SnapshotStore {
    db: Arc<Database>,
    storing: Arc<std::sync::Mutex<()>>,
}

/// The invariants of a decoded snapshot's state, its archived history included.
fn check_state(
    state: &ClusterState,
    archive: &std::collections::BTreeMap<GroupName, snapshot::GroupArchive>,
) {
    let none = (Vec::new(), Vec::new());
    for group in state.groups.values() {
        let (changes, pauses) = archive.get(&group.name).unwrap_or(&none);
        check_group(group, changes, pauses);
    }
}

/// The invariants of one group of a decoded snapshot with its archived history.
fn check_group(group: &failover_core::GroupState, changes: &[HistoryEntry], pauses: &[PauseEvent]) {
    group.assert_invariants();
    group.assert_history();
    group.assert_archive(changes, pauses);
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
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
        self.trim_history()?;
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

    /// Takes a copy of the state to encode: the lease maps are persistent, so this costs
    /// the groups and their history windows, not the leases, and applies go on while the
    /// builder encodes the copy. The archived history is not copied: the skeleton records
    /// how much of it the snapshot covers, and it is read from the history table when the
    /// snapshot is sent.
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let index = self.last_applied.map_or(0, |id| id.index());
        self.view.schedule.snapshot_at(index);
        SnapshotBuilder {
            store: self.snapshots.clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
            },
            state: Some(self.view.read().clone()),
        }
    }

    /// Decodes the snapshot as it is read (from the file a received one is staged in),
    /// so only the state being built is in memory, never the whole encoded snapshot.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), io::Error> {
        let decoded = super::blocking(move || snapshot::decode_from(data.reader())).await?;
        let archive = decoded.archive.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the snapshot received lacks its archived history",
            )
        })?;
        check_state(&decoded.state, &archive);
        let archived: Vec<_> = archive
            .into_iter()
            .flat_map(|(name, (changes, pauses))| history::as_archived(&name, changes, pauses))
            .collect();
        // Made durable by the snapshot's own commit, which follows.
        write_blocking(&self.db, Durability::None, move |txn| {
            history::store(txn, &archived)
        })
        .await?;
        // Stored without the archive, which the table now holds (a snapshot of an earlier
        // format is stored in the current one).
        store_snapshot(&self.snapshots, meta, decoded.state.clone()).await?;
        self.restore(meta, decoded.state)?;
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// The stored snapshot in the form a follower installs: with the archived history
    /// below its watermark appended from the history table. Read piece by piece as it is
    /// sent: only the skeleton and the archive (the history, not the leases) are read
    /// ahead.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let Some((meta, mut pieces)) = stored_snapshot(&self.db)? else {
            return Ok(None);
        };
        let (head, marks) = snapshot::read_head(&mut pieces)?;
        let archive = match marks {
            None => Vec::new(),
            Some(groups) => {
                let archive = groups
                    .iter()
                    .map(|(name, changes, pauses)| history::read(&self.db, name, *changes, *pauses))
                    .collect::<io::Result<Vec<_>>>()?;
                snapshot::archive_section(&archive)?
            }
        };
        let data = io::Cursor::new(head)
            .chain(pieces)
            .chain(io::Cursor::new(archive));
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData::from_reader(data),
        }))
    }
}

/// Encodes and stores the copy of the state taken when the builder was made.
pub struct SnapshotBuilder {
    store: SnapshotStore,
    meta: SnapshotMeta,
    state: Option<ClusterState>,
}

impl std::fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    /// openraft keeps only the metadata of a built snapshot, so no bytes are handed back:
    /// a follower is sent the stored one ([`StateMachine::get_current_snapshot`]).
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = self
            .state
            .take()
            .ok_or_else(|| io::Error::other("snapshot already built"))?;
        let leases: usize = state.groups.values().map(|g| g.leases.len()).sum();
        let started = std::time::Instant::now();
        let bytes = store_snapshot(&self.store, &self.meta, state).await?;
        tracing::info!(
            last_log_id = ?self.meta.last_log_id,
            leases,
            bytes,
            build_ms = started.elapsed().as_secs_f64() * 1e3,
            "built and stored a snapshot (applies went on meanwhile)"
        );
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: SnapshotData::empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores `data` as the current snapshot as it is, in one piece.
    fn store_raw(db: &Database, meta: &SnapshotMeta, data: &[u8]) {
        let header = encode(&SnapshotHeader {
            meta: meta.clone(),
            len: data.len() as u64,
            chunks: 1,
            first: 0,
        })
        .expect("header");
        write(db, Durability::Immediate, |txn| {
            txn.open_table(SNAPSHOT_CHUNKS)?.insert(0, data)?;
            txn.open_table(SNAPSHOTS)?
                .insert(HEADER, header.as_slice())?;
            Ok(())
        })
        .expect("store");
    }

    /// The keys of the stored snapshot pieces.
    fn piece_keys(db: &Database) -> Vec<u64> {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(SNAPSHOT_CHUNKS).expect("table");
        let keys = table
            .iter()
            .expect("iter")
            .map(|r| r.expect("piece").0.value())
            .collect();
        keys
    }

    /// A snapshot larger than a piece is stored in pieces past every stored key; the
    /// pieces of a build a crash interrupted, and the previous snapshot's, are removed
    /// when the next one is stored, and it reads back whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_are_stored_piece_by_piece_and_replace_the_previous_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, sm) = super::super::open(dir.path(), 1).expect("open");
        let state = snapshot::tests::state(60_000);
        let meta = |index| SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, index)),
            last_membership: Default::default(),
        };
        let len = store_snapshot(&sm.snapshots, &meta(5), state.clone())
            .await
            .expect("store");
        assert!(
            len > snapshot::PIECE_BYTES as u64,
            "{len} bytes: one piece only"
        );
        let first = piece_keys(&sm.db);
        assert_eq!(
            first,
            (0..len.div_ceil(snapshot::PIECE_BYTES as u64)).collect::<Vec<_>>()
        );
        // Pieces left by a build that did not finish.
        let orphans = first.len() as u64..first.len() as u64 + 3;
        write(&sm.db, Durability::Immediate, |txn| {
            let mut table = txn.open_table(SNAPSHOT_CHUNKS)?;
            for key in orphans.clone() {
                table.insert(key, b"torn".as_slice())?;
            }
            Ok(())
        })
        .expect("orphans");
        store_snapshot(&sm.snapshots, &meta(9), state.clone())
            .await
            .expect("store again");
        let second = piece_keys(&sm.db);
        assert_eq!(second.len(), first.len());
        assert_eq!(second[0], orphans.end, "stored past every existing key");
        let (stored_meta, mut reader) = stored_snapshot(&sm.db).expect("read").expect("stored");
        assert_eq!(stored_meta, meta(9));
        let mut data = Vec::new();
        reader.read_to_end(&mut data).expect("read pieces");
        assert_eq!(data.len() as u64, len);
        assert!(snapshot::decode(&data).expect("decode").state == state);
    }

    /// The background encoder hands out the same bytes as encoding in one buffer, in
    /// pieces of exactly [`snapshot::PIECE_BYTES`] but the last; and a writer that stops
    /// taking pieces stops it.
    #[test]
    fn the_background_encoder_cuts_the_encoding_into_pieces_and_stops_with_its_writer() {
        let mut state = snapshot::tests::state(60_000);
        let head = snapshot::encode_skeleton(&mut state).expect("skeleton");
        let mut whole = head.clone();
        snapshot::encode_leases(&state, &mut whole);
        let (pieces, encoder) = encode_in_background(state.clone(), head.clone()).expect("spawn");
        let pieces: Vec<Vec<u8>> = pieces.iter().collect();
        encoder.join().expect("no panic").expect("encoded");
        assert!(pieces.len() > 1, "{} piece(s)", pieces.len());
        let (last, full) = pieces.split_last().expect("pieces");
        assert!(full.iter().all(|p| p.len() == snapshot::PIECE_BYTES));
        assert!(!last.is_empty() && last.len() <= snapshot::PIECE_BYTES);
        assert!(
            pieces.concat() == whole,
            "the pieces differ from the encoding"
        );

        let (pieces, encoder) = encode_in_background(state, head).expect("spawn");
        let first = pieces.recv().expect("a first piece");
        assert_eq!(first.len(), snapshot::PIECE_BYTES);
        drop(pieces);
        let stopped = encoder.join().expect("no panic");
        assert!(stopped.is_err(), "the encoder went on without a writer");
    }

    /// The encoder's thread runs at nice +10 (a per-thread value on Linux), and the
    /// thread that spawned it keeps its own priority.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_encoder_thread_runs_at_a_lower_priority() {
        use rustix::process::getpriority_process;
        use rustix::thread::gettid;
        let before = getpriority_process(Some(gettid())).expect("own priority");
        let lowered = std::thread::spawn(move || {
            lower_thread_priority();
            getpriority_process(Some(gettid())).expect("priority")
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, (before + 10).min(19));
        assert_eq!(
            getpriority_process(Some(gettid())).expect("own priority"),
            before
        );
    }

    /// Two snapshots stored at once (a follower's own build and the leader's it installs)
    /// do not mix their pieces, and an older one finishing last does not replace a newer
    /// one: the newest stays current, whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_newest_of_concurrent_snapshots_stays_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, sm) = super::super::open(dir.path(), 1).expect("open");
        let meta = |index| SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, index)),
            last_membership: Default::default(),
        };
        let older = snapshot::tests::state(60_000);
        let newer = snapshot::tests::state(90_000);
        let (at_5, at_9) = (meta(5), meta(9));
        let (a, b) = tokio::join!(
            store_snapshot(&sm.snapshots, &at_5, older.clone()),
            store_snapshot(&sm.snapshots, &at_9, newer.clone()),
        );
        a.expect("older");
        b.expect("newer");
        // And the older one once more, after the newer one.
        store_snapshot(&sm.snapshots, &meta(5), older)
            .await
            .expect("older again");
        let (stored_meta, mut reader) = stored_snapshot(&sm.db).expect("read").expect("stored");
        assert_eq!(stored_meta, meta(9));
        let mut data = Vec::new();
        reader.read_to_end(&mut data).expect("read pieces");
        assert!(snapshot::decode(&data).expect("decode").state == newer);
        let pieces = piece_keys(&sm.db);
        assert_eq!(
            pieces.len() as u64,
            (data.len() as u64).div_ceil(snapshot::PIECE_BYTES as u64),
            "only the current snapshot's pieces are left: {pieces:?}"
        );
    }

    /// A data dir whose stored snapshot is of the format before this one (`FOSNAP3`: the
    /// archive inside it, no change counts) opens with the whole history and its counts,
    /// and its snapshot is sent as it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_fosnap3_snapshot_opens_with_its_history_and_counts() {
        let (original, archive) = snapshot::tests::with_history(50, 4);
        let mut uncounted = original.clone();
        for g in uncounted.groups.values_mut() {
            g.change_counts = failover_core::ChangeCounts::default();
        }
        let current = crate::store::encode_snapshot(&mut uncounted, &archive).expect("encode");
        let mut v3 = b"FOSNAP3\n".to_vec();
        v3.extend_from_slice(&current[9..]);
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 300)),
            last_membership: Default::default(),
        };
        {
            let (_log, sm) = super::super::open(dir.path(), 1).expect("open");
            store_raw(&sm.db, &meta, &v3);
        }
        let (_log, mut sm) = super::super::open(dir.path(), 1).expect("reopen");
        sm.set_history_window(4).expect("window");
        let view = sm.view();
        let name = GroupName("g".into());
        assert!(*view.read() == original);
        let g = &original.groups[&name];
        assert_eq!(g.change_counts.promote, 50);
        let (changes, pauses) = view
            .archived_history(&name, g.history_archived, g.pause_history_archived)
            .expect("archive");
        assert_eq!((changes, pauses), archive[&name]);
        let sent = sm.get_current_snapshot().await.expect("read").expect("one");
        assert_eq!(sent.snapshot.into_bytes().expect("bytes"), v3);
    }

    /// Applies `entries` entries one by one to a state growing by `growth` items per entry
    /// and returns the indexes at which a snapshot was due.
    fn snapshots(entries: u64, items_at_start: u64, growth: u64) -> Vec<u64> {
        let schedule = SnapshotSchedule::default();
        let mut taken = Vec::new();
        for index in 1..=entries {
            schedule.applied(index, items_at_start + index * growth);
            if schedule.take_due() {
                schedule.snapshot_at(index);
                taken.push(index);
            }
        }
        taken
    }

    #[test]
    fn a_growing_state_is_snapshotted_and_its_log_stays_under_a_quarter_of_it() {
        // A grant phase: one lease more per entry. Measured against the current size,
        // no snapshot would ever be due after the first.
        let taken = snapshots(1_000_000, 1, 1);
        assert!(taken.len() > 20, "{} snapshots", taken.len());
        for pair in taken.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap <= SNAPSHOT_MIN_ENTRIES.max(pair[0] / SNAPSHOT_STATE_FRACTION + 1));
        }
        let last = *taken.last().unwrap_or(&0);
        assert!(1_000_000 - last <= 1_000_000 / SNAPSHOT_STATE_FRACTION);
    }

    #[test]
    fn a_flat_state_is_snapshotted_every_quarter_of_its_size() {
        let taken = snapshots(400_000, 100_000, 0);
        let gaps: Vec<u64> = taken.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps.iter().skip(1).all(|g| *g == 25_000), "{gaps:?}");
    }

    #[test]
    fn a_small_state_waits_for_the_minimum() {
        let taken = snapshots(5_000, 10, 0);
        assert_eq!(taken, vec![1000, 2000, 3000, 4000, 5000]);
    }
}

//! The replicated state machine, in memory, with its last snapshot on disk.
//!
//! The state is applied in memory only; what makes it durable is the Raft log (fdatasynced
//! on append) plus the last snapshot (fdatasynced when built or installed). On start the
//! state machine loads the stored snapshot (it is then applied up to the snapshot) and
//! openraft re-applies the committed log after it. Applying therefore costs no disk I/O,
//! which matters at thousands of lease grants per second.
//!
//! Snapshots use the compact encoding of [`super::snapshot`] and are stored as files
//! ([`super::snapshot_store`]). They are taken on a schedule that keeps their cost amortised: once the entries
//! applied since the last one reach a quarter of the state's size ([`SnapshotSchedule`]),
//! so a snapshot, whose cost grows with the state, is paid for by that many entries. They
//! are encoded at a lower CPU priority than the rest of the controller.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{Database, Durability};

use failover_core::{ClusterState, GroupName, HistoryEntry, PauseEvent, HISTORY_WINDOW};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::watch;

use super::snapshot_files::SnapshotFiles;
use super::snapshot_store::SnapshotStore;
use super::Raft;
use super::{history, snapshot, write, write_blocking};
use crate::snapshot_data::SnapshotData;
use crate::types::{Applied, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// Fewest entries between two snapshots, however small the state.
pub const SNAPSHOT_MIN_ENTRIES: u64 = 1000;

/// When the next snapshot is due: once the entries applied since the last one reach
/// [`SNAPSHOT_MIN_ENTRIES`] or a quarter of the leases and groups the state held at the
/// last one, whichever is larger. A snapshot costs time and bytes in proportion to the
/// state, so its cost per entry stays constant; the log between two snapshots (what a
/// restart re-applies and what the data file holds besides the snapshot) stays under a
/// quarter of the state's size (5/12 in a staggered first interval, below).
///
/// The interval follows the state's size *at the last snapshot*, not its current size:
/// measured against the current size, a state that grows by one lease per entry (a grant
/// phase) would never have applied as many entries since the last snapshot as it holds
/// leases, so no snapshot would come and the log would never be purged. While the state
/// grows, snapshots come at sizes growing by a factor of about 1.25, so their total cost
/// stays a constant multiple of the final state's size.
///
/// The controllers of a cluster apply the same entries, so on this rule alone they would
/// all build the same snapshot at the same moment (at a million leases, about a second of
/// CPU and 22 MB written on the leader and both followers at once). So the first interval
/// after the state machine opens, or installs a snapshot, is stretched by
/// [`SnapshotSchedule::stagger`], a different third of an interval on each controller.
/// The offset lasts: while the state grows, every next point is the last one times about
/// 1.25, whatever it was; while it is flat, every next point is the last plus a quarter of
/// the state. So at most one controller of three builds at a time, and the leader always
/// has a follower that is not building to complete its quorum (docs/benchmarks.md,
/// "Leases: a snapshot's writeback paced, and snapshots staggered").
#[derive(Debug, Default)]
pub struct SnapshotSchedule {
    applied: AtomicU64,
    last_snapshot: AtomicU64,
    items: AtomicU64,
    items_at_snapshot: AtomicU64,
    /// Thirds of an interval added to the first one after an open or an install.
    stagger_thirds: AtomicU64,
    /// Whether the interval now running is that first one.
    staggering: AtomicBool,
}

/// The log between two snapshots is at most the state's size (leases and groups at the
/// last snapshot) divided by this (and times 5/3 in a staggered first interval).
pub const SNAPSHOT_STATE_FRACTION: u64 = 4;

impl SnapshotSchedule {
    /// The entries to apply after a snapshot of a state of `items` leases and groups
    /// before the next one.
    pub fn interval(items: u64) -> u64 {
        (items / SNAPSHOT_STATE_FRACTION).max(SNAPSHOT_MIN_ENTRIES)
    }

    /// Offsets this controller's snapshots from those of the others: the first interval
    /// after an open or an install is `1 + k/3` intervals, `k` being `node_id - 1` modulo
    /// 3 (node ids are assigned 1, 2, 3, ...).
    pub fn stagger(&self, node_id: u64) {
        self.stagger_thirds
            .store(node_id.saturating_sub(1) % 3, Ordering::Relaxed);
        self.staggering.store(true, Ordering::Relaxed);
    }

    /// Whether a snapshot is due; if so, counts it as started so the next one waits a
    /// full interval.
    fn take_due(&self) -> bool {
        let applied = self.applied.load(Ordering::Relaxed);
        let last = self.last_snapshot.load(Ordering::Relaxed);
        let mut interval = Self::interval(self.items_at_snapshot.load(Ordering::Relaxed));
        if self.staggering.load(Ordering::Relaxed) {
            interval += interval * self.stagger_thirds.load(Ordering::Relaxed) / 3;
        }
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

    /// A snapshot of the state as last applied was taken at `index`.
    fn snapshot_at(&self, index: u64) {
        self.last_snapshot.store(index, Ordering::Relaxed);
        self.items_at_snapshot
            .store(self.items.load(Ordering::Relaxed), Ordering::Relaxed);
        self.staggering.store(false, Ordering::Relaxed);
    }

    /// The state machine holds a snapshot taken at `index` by this controller earlier or
    /// by the leader (it opened, or installed one): the next interval is staggered again.
    fn restored_at(&self, index: u64) {
        self.snapshot_at(index);
        self.staggering.store(true, Ordering::Relaxed);
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
    /// Snapshots are stored in `files` (in `db` without); controller `node_id` takes them
    /// at its own offset ([`SnapshotSchedule::stagger`]).
    pub(super) fn open(
        db: Arc<Database>,
        files: Option<SnapshotFiles>,
        node_id: u64,
    ) -> Result<Self, io::Error> {
        let view = Arc::new(StateView::new(db.clone()));
        view.schedule.stagger(node_id);
        let mut sm = StateMachine {
            snapshots: SnapshotStore::open(db.clone(), files)?,
            db,
            last_applied: None,
            membership: StoredMembership::default(),
            view,
            history_window: HISTORY_WINDOW,
        };
        if let Some(stored) = sm.snapshots.current()? {
            let meta = stored.meta;
            let decoded = snapshot::decode_from(io::BufReader::new(stored.data))
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", stored.source)))?;
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
        self.view.schedule.restored_at(index);
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
        self.snapshots.store(meta, decoded.state.clone()).await?;
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
        let Some(stored) = self.snapshots.current()? else {
            return Ok(None);
        };
        let (meta, mut pieces) = (stored.meta, stored.data);
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
        let bytes = self.store.store(&self.meta, state).await?;
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
            super::super::snapshot_store::tests::store_raw(&sm.db, &meta, &v3);
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
        snapshots_of(
            &SnapshotSchedule::default(),
            entries,
            items_at_start,
            growth,
        )
    }

    fn snapshots_of(
        schedule: &SnapshotSchedule,
        entries: u64,
        items_at_start: u64,
        growth: u64,
    ) -> Vec<u64> {
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

    /// Runs the schedules of controllers 1, 2 and 3 over the same entries, from a state of
    /// `items_at_start` items as they opened, and returns each controller's snapshot from
    /// index `from` on with its distance to the nearest snapshot of another controller.
    fn staggered(entries: u64, items_at_start: u64, growth: u64, from: u64) -> Vec<(u64, u64)> {
        let taken: Vec<Vec<u64>> = (1..=3)
            .map(|node| {
                let schedule = SnapshotSchedule::default();
                schedule.stagger(node);
                schedule.applied(0, items_at_start);
                schedule.restored_at(0);
                snapshots_of(&schedule, entries, items_at_start, growth)
            })
            .collect();
        let mut distances = Vec::new();
        for (a, mine) in taken.iter().enumerate() {
            assert!(mine.len() > 3, "controller {} took {mine:?}", a + 1);
            for &index in mine.iter().filter(|i| **i >= from) {
                let nearest = taken
                    .iter()
                    .enumerate()
                    .filter(|(b, _)| *b != a)
                    .flat_map(|(_, theirs)| theirs.iter())
                    .map(|other| index.abs_diff(*other))
                    .min()
                    .unwrap_or(u64::MAX);
                distances.push((index, nearest));
            }
        }
        distances
    }

    #[test]
    fn controllers_of_a_growing_state_snapshot_apart() {
        // A grant phase on three controllers started together: without the stagger all
        // three snapshot at the same indexes. At a million leases 5% is 50,000 entries,
        // several seconds of grants, against a build of about a second.
        for (index, nearest) in staggered(1_000_000, 0, 1, 10_000) {
            assert!(
                nearest * 20 > index,
                "{index}: another {nearest} entries away"
            );
        }
    }

    #[test]
    fn controllers_of_a_flat_state_snapshot_apart() {
        // 100,000 leases at the open: intervals of 25,000 entries, a third of one apart.
        let distances = staggered(400_000, 100_000, 0, 0);
        assert!(distances.len() > 30, "{distances:?}");
        for (index, nearest) in distances {
            assert!(nearest >= 8_333, "{index}: another {nearest} entries away");
        }
    }

    #[test]
    fn an_install_staggers_the_next_interval_again() {
        let schedule = SnapshotSchedule::default();
        schedule.stagger(3);
        schedule.applied(1_000, 1_000);
        schedule.restored_at(1_000);
        schedule.applied(2_000, 1_000);
        assert!(
            !schedule.take_due(),
            "a third controller waits 5/3 of an interval"
        );
        schedule.applied(2_667, 1_000);
        assert!(schedule.take_due());
        schedule.snapshot_at(2_667);
        schedule.applied(3_667, 1_000);
        assert!(schedule.take_due(), "and then whole intervals");
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

//! A state with many leases survives a snapshot build, an install on another controller
//! and a restart exactly, the snapshot stays compact, and a long log is purged in place.

use failover_controller::snapshot_data::SnapshotData;
use failover_controller::store::{self, StateMachine};
use failover_controller::types::{Entry, SnapshotMeta, StoredMembership, TypeConfig};
use failover_core::{
    ChangeKind, ClusterState, Command, Epoch, FencingToken, GroupName, GroupState, HistoryEntry,
    HolderIndex, Lease, LeaseId, LeaseMap, Phase, SiteId,
};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::RaftLogReader;

const LEASES: u64 = 200_000;

/// One group at `site-a`, epoch 3 (two changes in its history), with `LEASES` leases:
/// every tenth holder re-acquired (its older lease superseded but live), and every
/// twentieth of those re-acquires released again (a superseded lease whose holder has no
/// current one). Built directly: applying 200,000 grants in a debug build would check
/// every lease after every grant.
fn large_state() -> ClusterState {
    let a = SiteId("site-a".into());
    let b = SiteId("site-b".into());
    let change = |epoch, from: Option<&SiteId>, to: &SiteId| HistoryEntry {
        epoch: Epoch(epoch),
        from: from.cloned(),
        to: Some(to.clone()),
        kind: if epoch == 1 {
            ChangeKind::Created
        } else {
            ChangeKind::Promote
        },
        actor: "test".into(),
        reason: format!("change {epoch}"),
        requested_at_unix_ms: epoch * 1000,
        completed_at_unix_ms: epoch * 1000 + 5,
    };
    let mut leases = LeaseMap::new();
    let mut holders = HolderIndex::new();
    for i in 0..LEASES {
        let reacquire = i % 10 == 1;
        let holder = format!("engine-{:06}", if reacquire { i - 1 } else { i });
        let lease = Lease {
            id: LeaseId(1000 + i),
            holder: holder.clone(),
            site: a.clone(),
            epoch: Epoch(3),
            ttl_ms: 10_000 + i % 7,
            token: FencingToken(50 + i),
        };
        if !(reacquire && i % 20 == 1) {
            holders.insert(holder, lease.id);
        }
        leases.insert(lease.id, lease);
    }
    for i in (0..LEASES).filter(|i| i % 20 == 1) {
        leases.remove(&LeaseId(1000 + i));
    }
    let group = GroupState {
        name: GroupName("default".into()),
        sites: vec![a.clone(), b.clone()],
        active_site: Some(a.clone()),
        epoch: Epoch(3),
        phase: Phase::Active,
        history: vec![
            change(1, None, &a),
            change(2, Some(&a), &b),
            change(3, Some(&b), &a),
        ],
        leases,
        next_token: FencingToken(50 + LEASES),
        holders,
        pause: None,
        pause_history: Vec::new(),
        pause_history_archived: 0,
        history_archived: 0,
        change_counts: failover_core::ChangeCounts::of([
            ChangeKind::Created,
            ChangeKind::Promote,
            ChangeKind::Promote,
        ]),
    };
    group.assert_invariants();
    let mut state = ClusterState {
        next_lease_id: 1000 + LEASES,
        ..ClusterState::default()
    };
    state.groups.insert(group.name.clone(), group);
    state
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id::<TypeConfig>(2, 1, index)),
        last_membership: StoredMembership::default(),
    }
}

fn state_of(sm: &StateMachine) -> ClusterState {
    sm.view().read().clone()
}

/// Applies one grant at `index` and returns the granted lease's id.
async fn grant(sm: &mut StateMachine, index: u64, holder: &str) -> LeaseId {
    let entry = Entry::new_normal(
        log_id::<TypeConfig>(2, 1, index),
        Command::Grant {
            group: GroupName("default".into()),
            site: SiteId("site-a".into()),
            holder: holder.into(),
            ttl_ms: 10_000,
        },
    );
    let entries = futures::stream::iter([Ok((entry, None))]);
    sm.apply(entries).await.expect("apply");
    let view = sm.view();
    let state = view.read();
    state.groups[&GroupName("default".into())].holders[holder]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_many_leases_installs_and_restarts_exactly() {
    let original = large_state();
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let follower_dir = tempfile::tempdir().expect("temp dir");

    // The leader's state machine gets the state, applies one more grant, and builds a
    // snapshot.
    let (leader_log, mut leader) = store::open(leader_dir.path(), 1).expect("open leader");
    let mut encoded = original.clone();
    let data = store::encode_snapshot(&mut encoded, &Default::default()).expect("encode");
    leader
        .install_snapshot(&meta(10), SnapshotData::from_bytes(data))
        .await
        .expect("install snapshot");
    assert!(*leader.view().read() == original);
    let new_lease = grant(&mut leader, 11, "engine-new").await;
    assert_eq!(new_lease, LeaseId(1000 + LEASES));
    let expected = state_of(&leader);
    assert_eq!(
        expected.groups[&GroupName("default".into())].leases.len(),
        original.groups[&GroupName("default".into())].leases.len() + 1
    );

    // The builder takes a copy of the state at index 11; a grant applied before the
    // copy is encoded is not in the snapshot.
    let mut builder = leader.get_snapshot_builder().await;
    let during = grant(&mut leader, 12, "engine-during-build").await;
    assert_eq!(during, LeaseId(1001 + LEASES));
    let snapshot = builder.build_snapshot().await.expect("build snapshot");
    drop(builder);
    assert_eq!(
        snapshot.meta.last_log_id,
        Some(log_id::<TypeConfig>(2, 1, 11))
    );
    let current = leader
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot is stored");
    // What is sent is the state at index 11, with the (here empty) archive section.
    assert_eq!(current.meta, snapshot.meta);
    let at_11 = store::encode_snapshot(&mut expected.clone(), &Default::default()).expect("encode");
    let sent = current.snapshot.into_bytes().expect("read the pieces");
    assert!(sent == at_11, "the snapshot holds the state at its index");
    let bytes_per_lease = sent.len() as f64 / LEASES as f64;
    assert!(
        bytes_per_lease < 32.0,
        "snapshot takes {bytes_per_lease:.1} bytes per lease"
    );

    // A follower that lost its disk installs it and holds exactly the same state.
    let (follower_log, mut follower) = store::open(follower_dir.path(), 2).expect("open follower");
    follower
        .install_snapshot(&current.meta, SnapshotData::from_bytes(sent))
        .await
        .expect("install snapshot");
    assert!(*follower.view().read() == expected);
    drop((follower, follower_log));

    // Restarted, both come back applied up to the snapshot with exactly that state.
    drop((leader, leader_log));
    for (dir, node) in [(leader_dir.path(), 1), (follower_dir.path(), 2)] {
        let (_log, mut restarted) = store::open(dir, node).expect("reopen");
        let (applied, _) = restarted.applied_state().await.expect("applied state");
        assert_eq!(applied, snapshot.meta.last_log_id, "node {node}");
        assert!(*restarted.view().read() == expected, "node {node}");
        // And it keeps applying where the snapshot ended: the lease id counter went on.
        let next = grant(&mut restarted, 12, "engine-after-restart").await;
        assert_eq!(next, LeaseId(1001 + LEASES), "node {node}");
    }
}

/// A snapshot that was cut short or has bytes appended is refused by name, and the
/// state machine keeps its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = store::open(dir.path(), 1).expect("open");
    let lease = grant_in_fresh(&mut sm).await;
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let snapshot = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("stored");
    let before = state_of(&sm);
    let mut cut = snapshot.snapshot.into_bytes().expect("read");
    cut.truncate(cut.len() - 2);
    let err = sm
        .install_snapshot(&meta(99), SnapshotData::from_bytes(cut))
        .await
        .expect_err("truncated snapshot must be refused");
    assert!(err.to_string().contains("damaged snapshot"), "{err}");
    assert_eq!(state_of(&sm), before);
    assert!(before.groups[&GroupName("default".into())]
        .leases
        .contains_key(&lease));
}

/// Creates the group and grants one lease on a fresh state machine.
async fn grant_in_fresh(sm: &mut StateMachine) -> LeaseId {
    let create = Entry::new_normal(
        log_id::<TypeConfig>(1, 1, 1),
        Command::CreateGroup {
            group: GroupName("default".into()),
            sites: vec![SiteId("site-a".into()), SiteId("site-b".into())],
            at_unix_ms: 1,
        },
    );
    sm.apply(futures::stream::iter([Ok((create, None))]))
        .await
        .expect("apply");
    let state = state_of(sm);
    assert!(matches!(
        state.groups[&GroupName("default".into())].phase,
        Phase::Active
    ));
    grant(sm, 2, "engine-1").await
}

/// Purging a long log reuses the space it frees: the data file stays near the size of
/// what it holds. (redb's `retain_in`, used before, copied a page path per removed entry
/// and never freed the copies within the transaction: purging 20,000 entries grew the
/// file by hundreds of MiB, 400,000 by gigabytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_long_log_keeps_the_data_file_small() {
    const ENTRIES: u64 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut log, _sm) = store::open(dir.path(), 1).expect("open");
    let mut index = 0;
    append_grants(&mut log, &mut index, ENTRIES).await;
    let file = dir.path().join(store::DATA_FILE);
    let before = std::fs::metadata(&file).expect("data file").len();
    let kept_from = index - 200;
    log.purge(log_id::<TypeConfig>(2, 1, kept_from - 1))
        .await
        .expect("purge");
    let after = std::fs::metadata(&file).expect("data file").len();
    assert!(
        after <= before.max(8 << 20),
        "purge grew the data file from {before} to {after} bytes"
    );
    // What is left is exactly the tail.
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(
        state.last_purged_log_id.map(|id| id.index()),
        Some(kept_from - 1)
    );
    assert_eq!(state.last_log_id.map(|id| id.index()), Some(index));
    let entries = log
        .try_get_log_entries(0..index + 1)
        .await
        .expect("read log");
    let indexes: Vec<u64> = entries.iter().map(|e| e.index()).collect();
    assert_eq!(indexes, (kept_from..=index).collect::<Vec<_>>());
    // Truncating the tail (pop from the end) leaves the entries before it.
    log.truncate_after(Some(log_id::<TypeConfig>(2, 1, index - 100)))
        .await
        .expect("truncate");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id.map(|id| id.index()), Some(index - 100));
}

/// Appends `count` grant entries from index `*index + 1` on, 64 per append.
async fn append_grants(log: &mut store::LogStore, index: &mut u64, count: u64) {
    let end = *index + count;
    while *index < end {
        let batch: Vec<Entry> = (0..64.min(end - *index))
            .map(|_| {
                *index += 1;
                grant_entry(*index)
            })
            .collect();
        // Each append waits for its flush, so each is a transaction of its own (the
        // writer commits what is queued together) and removes one purge batch.
        let (flushed, done) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        log.append(batch, IOFlushed::signal(flushed))
            .await
            .expect("append");
        done.await.expect("flush reported").expect("flushed");
    }
}

/// The grant entry at `index` (term 2, leader 1).
fn grant_entry(index: u64) -> Entry {
    Entry::new_normal(
        log_id::<TypeConfig>(2, 1, index),
        Command::Grant {
            group: GroupName("default".into()),
            site: SiteId("site-a".into()),
            holder: format!("engine-{index:08}"),
            ttl_ms: 600_000,
        },
    )
}

/// The indexes of the entries physically in the data file's log table (purged ones
/// whose removal is still owed included). The stores must be closed.
/// A store in `dir` with `entries` appended and all but the last 200 purged; the log,
/// its state machine, the last index and the purged index.
async fn purged_log(
    dir: &std::path::Path,
    entries: u64,
) -> (store::LogStore, StateMachine, u64, u64) {
    let (mut log, sm) = store::open(dir, 1).expect("open");
    let mut index = 0;
    append_grants(&mut log, &mut index, entries).await;
    let purged = entries - 200;
    log.purge(log_id::<TypeConfig>(2, 1, purged))
        .await
        .expect("purge");
    (log, sm, index, purged)
}

/// Appends one entry per purge batch of the `left` entries still stored at or below
/// `purged` (the log's end is `index`), then checks that the log shows, and the data file
/// in `dir` holds, exactly the entries after `purged`.
async fn appends_finish_the_purge(
    dir: &std::path::Path,
    mut log: store::LogStore,
    sm: StateMachine,
    mut index: u64,
    purged: u64,
    left: u64,
) {
    for _ in 0..left.div_ceil(store::PURGE_BATCH) {
        append_grants(&mut log, &mut index, 1).await;
    }
    assert_eq!(
        visible(&mut log, index).await,
        (Some(purged), Some(index), (purged + 1..=index).collect())
    );
    drop((log, sm));
    assert_eq!(
        stored_indexes(dir),
        (purged + 1..=index).collect::<Vec<_>>()
    );
}

fn stored_indexes(dir: &std::path::Path) -> Vec<u64> {
    use redb::ReadableTable;
    const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
    let db = redb::Database::open(dir.join(store::DATA_FILE)).expect("open data file");
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(LOG).expect("log table");
    let mut indexes = Vec::new();
    for item in table.iter().expect("iterate") {
        indexes.push(item.expect("entry").0.value());
    }
    indexes
}

/// What openraft sees of the log: its state, and the entries a read from 0 returns.
async fn visible(log: &mut store::LogStore, upto: u64) -> (Option<u64>, Option<u64>, Vec<u64>) {
    let state = log.get_log_state().await.expect("log state");
    let entries = log
        .try_get_log_entries(0..upto + 1)
        .await
        .expect("read log");
    (
        state.last_purged_log_id.map(|id| id.index()),
        state.last_log_id.map(|id| id.index()),
        entries.iter().map(|e| e.index()).collect(),
    )
}

/// A purge of many entries costs the write that records it no more than a bounded batch
/// of removals (openraft waits for it on its core task, so every append and commit would
/// wait for the whole purge otherwise): the purged id counts at once, the rest is removed
/// by the appends that follow, a bounded batch each, and nothing unpurged is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_purge_is_removed_in_bounded_batches_by_the_writes_that_follow() {
    const ENTRIES: u64 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut log, sm, mut index, purged) = purged_log(dir.path(), ENTRIES).await;
    assert_eq!(
        visible(&mut log, index).await,
        (Some(purged), Some(index), (purged + 1..=index).collect())
    );
    // One more append: it removes one more batch, and its own entry is stored.
    append_grants(&mut log, &mut index, 1).await;
    drop((log, sm));
    let stored = stored_indexes(dir.path());
    assert_eq!(stored.first(), Some(&(2 * store::PURGE_BATCH + 1)));
    assert_eq!(stored.last(), Some(&index));
    assert_eq!(stored.len() as u64, index - 2 * store::PURGE_BATCH);

    // The appends that follow remove the rest, a batch each.
    let (log, sm) = store::open(dir.path(), 1).expect("reopen");
    appends_finish_the_purge(dir.path(), log, sm, index, purged, purged).await;
}

/// A controller stopped while purged entries are still being removed loses nothing: on
/// restart the log shows the same purged id and entries, the removal resumes, and a purge
/// past the last entry (a follower that installed a newer snapshot) reports the purged id
/// as the last one even while older entries are still in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_purge_keeps_the_log_consistent() {
    const ENTRIES: u64 = 10_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, sm, index, purged) = purged_log(dir.path(), ENTRIES).await;
    drop((log, sm));
    assert!(stored_indexes(dir.path()).len() as u64 > ENTRIES - purged + store::PURGE_BATCH);

    let (mut log, sm) = store::open(dir.path(), 1).expect("reopen");
    assert_eq!(
        visible(&mut log, index).await,
        (Some(purged), Some(index), (purged + 1..=index).collect())
    );
    // A snapshot installed beyond the log: everything is purged, the purged id is the
    // last, no entry is readable, and the next append continues after it.
    let beyond = index + 1_000;
    log.purge(log_id::<TypeConfig>(2, 1, beyond))
        .await
        .expect("purge beyond");
    assert_eq!(
        visible(&mut log, beyond).await,
        (Some(beyond), Some(beyond), vec![])
    );
    drop((log, sm));
    let (mut log, sm) = store::open(dir.path(), 1).expect("reopen");
    assert_eq!(
        visible(&mut log, beyond).await,
        (Some(beyond), Some(beyond), vec![])
    );
    appends_finish_the_purge(dir.path(), log, sm, beyond, beyond, ENTRIES).await;
}

/// An append returns before its entries are committed, yet they are readable at once (as
/// openraft requires); every append's flush is reported, and once the store is dropped
/// (its writer thread ended, the data file closed) the file holds every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_readable_at_once_and_every_flush_is_reported() {
    const APPENDS: u64 = 200;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut log, sm) = store::open(dir.path(), 1).expect("open");
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    for index in 1..=APPENDS {
        let entry = grant_entry(index);
        let (flushed, done) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        log.append(vec![entry], IOFlushed::signal(flushed))
            .await
            .expect("append");
        let reports = reports.clone();
        tokio::spawn(async move {
            let result = done.await.expect("flush reported");
            let _ = reports.send((index, result.is_ok()));
        });
        // Readable before (or whether or not) the writer has committed it.
        let read = log.try_get_log_entries(index..=index).await.expect("read");
        assert_eq!(read.iter().map(|e| e.index()).collect::<Vec<_>>(), [index]);
        assert_eq!(
            log.get_log_state().await.expect("state").last_log_id,
            Some(log_id::<TypeConfig>(2, 1, index))
        );
    }
    drop(reports);
    let mut flushed = Vec::new();
    while let Some((index, ok)) = reported.recv().await {
        assert!(ok, "append {index} failed");
        flushed.push(index);
    }
    flushed.sort_unstable();
    assert_eq!(flushed, (1..=APPENDS).collect::<Vec<_>>());
    assert_eq!(visible(&mut log, APPENDS).await.2.len() as u64, APPENDS);
    drop((log, sm));
    assert_eq!(
        stored_indexes(dir.path()),
        (1..=APPENDS).collect::<Vec<_>>()
    );
}

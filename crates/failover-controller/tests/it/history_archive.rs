//! The history beyond the in-memory window lives in the data file: a restarted state
//! machine that re-applies the log after its snapshot archives nothing twice, a snapshot
//! carries the archive to a follower with an empty disk, and both serve the whole
//! history afterwards, in order. Also measures what the window saves in memory.

use failover_controller::store::{self, StateMachine};
use failover_controller::types::{Entry, SnapshotMeta, TypeConfig};
use failover_core::{
    ChangeKind, ClusterState, Command, GroupName, HistoryEntry, PauseEvent, SiteId,
};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;

const WINDOW: usize = 5;

fn group() -> GroupName {
    GroupName("default".into())
}

/// The commands of log index `index` (from 1): the group's creation, then per index a
/// promotion begun and completed alternately, with a pause or resume every third index.
fn command(index: u64) -> Vec<Command> {
    if index == 1 {
        return vec![Command::CreateGroup {
            group: group(),
            sites: vec![SiteId("site-a".into()), SiteId("site-b".into())],
            at_unix_ms: 1,
        }];
    }
    let at_unix_ms = 1000 + index;
    let mut out = Vec::new();
    if index.is_multiple_of(2) {
        let to = if index.is_multiple_of(4) {
            "site-a"
        } else {
            "site-b"
        };
        out.push(Command::BeginPromotion {
            group: group(),
            to: SiteId(to.into()),
            kind: ChangeKind::Promote,
            actor: "test".into(),
            reason: format!("index {index}"),
            at_unix_ms,
        });
    } else {
        out.push(Command::CompletePromotion {
            group: group(),
            // The epoch before the change index - 1 began: one change per two indexes.
            from_epoch: failover_core::Epoch((index - 1) / 2),
            at_unix_ms,
        });
    }
    if index.is_multiple_of(3) {
        out.push(if index.is_multiple_of(6) {
            Command::Resume {
                group: group(),
                actor: "test".into(),
                reason: format!("index {index}"),
                at_unix_ms,
            }
        } else {
            Command::Pause {
                group: group(),
                actor: "test".into(),
                reason: format!("index {index}"),
                at_unix_ms,
            }
        });
    }
    out
}

/// Applies log indexes `from..=to`, one entry per command (sub-indexes spread out).
async fn apply(sm: &mut StateMachine, from: u64, to: u64) {
    for index in from..=to {
        for (i, command) in command(index).into_iter().enumerate() {
            let entry =
                Entry::new_normal(log_id::<TypeConfig>(1, 1, index * 2 + i as u64), command);
            sm.apply(futures::stream::iter([Ok((entry, None))]))
                .await
                .expect("apply");
        }
    }
}

/// The whole history as the state machine serves it: archive, then window.
fn full_history(sm: &StateMachine) -> (Vec<HistoryEntry>, Vec<PauseEvent>) {
    let view = sm.view();
    let (archived_changes, archived_pauses, mut window, mut pause_window) = {
        let state = view.read();
        let g = &state.groups[&group()];
        assert!(g.history.len() <= WINDOW && g.pause_history.len() <= WINDOW);
        (
            g.history_archived,
            g.pause_history_archived,
            g.history.clone(),
            g.pause_history.clone(),
        )
    };
    let (mut changes, mut pauses) = view
        .archived_history(&group(), archived_changes, archived_pauses)
        .expect("read archive");
    changes.append(&mut window);
    pauses.append(&mut pause_window);
    (changes, pauses)
}

/// The same commands applied to a state without a window.
fn reference(to: u64) -> ClusterState {
    let mut state = ClusterState::default();
    for index in 1..=to {
        for command in command(index) {
            assert!(state.apply(&command).is_ok(), "index {index}: {command:?}");
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reapply_and_snapshot_install_keep_the_whole_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let follower_dir = tempfile::tempdir().expect("temp dir");
    let (log, mut sm) = store::open(dir.path(), 1).expect("open");
    sm.set_history_window(WINDOW).expect("window");
    apply(&mut sm, 1, 40).await;
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot");
    apply(&mut sm, 41, 80).await;
    let expected = reference(80);
    let g = &expected.groups[&group()];
    assert_eq!(g.history.len(), 40, "1 creation + 39 completed changes");
    assert_eq!(
        full_history(&sm),
        (g.history.clone(), g.pause_history.clone())
    );
    drop((sm, log));

    // Restarted: the state is the snapshot's (index 40), and re-applying the log after
    // it moves the same records to the archive again, at the same places.
    let (log, mut sm) = store::open(dir.path(), 1).expect("reopen");
    sm.set_history_window(WINDOW).expect("window");
    let at_snapshot = reference(40);
    let s = &at_snapshot.groups[&group()];
    assert_eq!(
        full_history(&sm),
        (s.history.clone(), s.pause_history.clone())
    );
    // What a leader sends: the stored snapshot (index 40, which holds no copy of the
    // archive) with the archive below its watermark read from the history table, which
    // holds more by now.
    apply(&mut sm, 41, 80).await;
    let sent = sm
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot");
    assert_eq!(sent.meta, snapshot.meta);
    assert_eq!(
        full_history(&sm),
        (g.history.clone(), g.pause_history.clone())
    );
    drop((sm, log));

    // A follower with an empty disk installs the snapshot and then applies the rest.
    let (flog, mut follower) = store::open(follower_dir.path(), 2).expect("open follower");
    follower.set_history_window(WINDOW).expect("window");
    follower
        .install_snapshot(&sent.meta, sent.snapshot)
        .await
        .expect("install");
    assert_eq!(
        full_history(&follower),
        (s.history.clone(), s.pause_history.clone())
    );
    apply(&mut follower, 41, 80).await;
    assert_eq!(
        full_history(&follower),
        (g.history.clone(), g.pause_history.clone())
    );
    drop((follower, flog));
    // And keeps it across its own restart, from the installed snapshot.
    let (_flog, mut follower) = store::open(follower_dir.path(), 2).expect("reopen follower");
    follower.set_history_window(WINDOW).expect("window");
    assert_eq!(
        full_history(&follower),
        (s.history.clone(), s.pause_history.clone())
    );
}

/// A snapshot of the format before the window (whole history in the skeleton) installs,
/// and the history beyond the window moves to the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_the_whole_history_in_memory_is_trimmed_on_install() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = store::open(dir.path(), 1).expect("open");
    sm.set_history_window(WINDOW).expect("window");
    let mut full = reference(60);
    let data = store::encode_snapshot(&mut full, &Default::default()).expect("encode");
    let meta = SnapshotMeta {
        last_log_id: Some(log_id::<TypeConfig>(1, 1, 200)),
        last_membership: Default::default(),
    };
    sm.install_snapshot(
        &meta,
        failover_controller::snapshot_data::SnapshotData::from_bytes(data),
    )
    .await
    .expect("install");
    let g = &full.groups[&group()];
    assert_eq!(
        full_history(&sm),
        (g.history.clone(), g.pause_history.clone())
    );
    assert_eq!(sm.view().read().groups[&group()].history.len(), WINDOW);
}

/// Memory of one group with 100,000 changes of active site, whole and windowed: the
/// serialized size of the group (a lower bound of its heap size: every entry's strings
/// are separate allocations). Printed; run with `--nocapture` to see it
/// (docs/benchmarks.md).
#[test]
fn memory_of_a_long_history_is_bounded_by_the_window() {
    const CHANGES: u64 = 100_000;
    let mut state = ClusterState::default();
    for index in 1..=CHANGES * 2 {
        for command in command(index) {
            if !matches!(command, Command::Pause { .. } | Command::Resume { .. }) {
                assert!(state.apply(&command).is_ok());
            }
        }
    }
    let heap = |state: &ClusterState| {
        let g = &state.groups[&group()];
        let strings: usize = g
            .history
            .iter()
            .map(|h| {
                h.actor.capacity()
                    + h.reason.capacity()
                    + h.from.as_ref().map_or(0, |s| s.0.capacity())
                    + h.to.as_ref().map_or(0, |s| s.0.capacity())
            })
            .sum();
        g.history.capacity() * std::mem::size_of::<HistoryEntry>() + strings
    };
    let before = heap(&state);
    let archived = state.trim_history(failover_core::HISTORY_WINDOW);
    state
        .groups
        .get_mut(&group())
        .expect("group")
        .history
        .shrink_to_fit();
    let after = heap(&state);
    println!(
        "history of {} changes: {before} bytes in memory whole, {after} bytes with the window of {}",
        CHANGES,
        failover_core::HISTORY_WINDOW
    );
    assert_eq!(
        archived.len() as u64 + failover_core::HISTORY_WINDOW as u64,
        CHANGES
    );
    assert!(after * 50 < before, "{after} vs {before}");
}

//! The data file of a group with a long history: 100,000 changes of active site applied
//! through the state machine, with a snapshot every 1,000 entries (the schedule's
//! minimum), as a controller takes them, applied in batches of 64 entries. Prints the data file's size and the bytes of a
//! snapshot as sent; run with `--nocapture` to see them (docs/benchmarks.md).

use std::time::Instant;

use failover_controller::store;
use failover_controller::types::{Entry, TypeConfig};
use failover_core::{ChangeKind, Command, Epoch, GroupName, SiteId};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;

const CHANGES: u64 = 100_000;
const SNAPSHOT_EVERY: u64 = 1_000;

fn group() -> GroupName {
    GroupName("default".into())
}

/// Log index 1 creates the group; then each change is begun (even index) and completed
/// (the odd index after it).
fn command(index: u64) -> Command {
    let at_unix_ms = 1000 + index;
    if index == 1 {
        return Command::CreateGroup {
            group: group(),
            sites: vec![SiteId("site-a".into()), SiteId("site-b".into())],
            at_unix_ms,
        };
    }
    if index.is_multiple_of(2) {
        let to = if index.is_multiple_of(4) {
            "site-a"
        } else {
            "site-b"
        };
        Command::BeginPromotion {
            group: group(),
            to: SiteId(to.into()),
            kind: ChangeKind::Promote,
            actor: "operator".into(),
            reason: format!("planned maintenance window {index}"),
            at_unix_ms,
        }
    } else {
        Command::CompletePromotion {
            group: group(),
            from_epoch: Epoch(index / 2),
            at_unix_ms,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_file_of_a_long_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = store::open(dir.path(), 1).expect("open");
    let started = Instant::now();
    let last = 1 + 2 * CHANGES;
    let mut first = 1;
    while first <= last {
        // Batches of 64 entries, as a busy controller applies them; a snapshot after the
        // batch that reaches each multiple of SNAPSHOT_EVERY.
        let end = (first + 63).min(last);
        let entries: Vec<_> = (first..=end)
            .map(|index| {
                let entry = Entry::new_normal(log_id::<TypeConfig>(1, 1, index), command(index));
                Ok((entry, None))
            })
            .collect();
        sm.apply(futures::stream::iter(entries))
            .await
            .expect("apply");
        let due = end / SNAPSHOT_EVERY > (first - 1) / SNAPSHOT_EVERY;
        first = end + 1;
        if due || end == last {
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("build snapshot");
        }
    }
    let elapsed = started.elapsed();
    let sent = sm
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot")
        .snapshot
        .into_bytes()
        .expect("read the pieces");
    {
        let view = sm.view();
        let state = view.read();
        let g = &state.groups[&group()];
        assert_eq!(g.history_archived + g.history.len() as u64, CHANGES + 1);
    }
    let file = std::fs::metadata(dir.path().join(store::DATA_FILE)).expect("data file");
    println!(
        "{CHANGES} changes, a snapshot every {SNAPSHOT_EVERY} entries: data file {:.1} MiB, \
         snapshot as sent {:.1} MiB, {:.1} s",
        file.len() as f64 / (1 << 20) as f64,
        sent.len() as f64 / (1 << 20) as f64,
        elapsed.as_secs_f64()
    );
    // The archive's records are ~130 bytes each (JSON) and stored once.
    assert!(
        file.len() < 4 * sent.len() as u64,
        "data file {} bytes, snapshot {} bytes",
        file.len(),
        sent.len()
    );
}

//! A data directory whose file was truncated or garbled is refused at start with an
//! error naming the file; it is never silently reset, and the damaged file is left
//! exactly as found (an operator may still recover from it).

use std::path::{Path, PathBuf};

use failover_controller::store;
use failover_controller::types::{Entry, LogId, TypeConfig};
use failover_core::{Command, GroupName, SiteId};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;

/// A data dir with a controller's metadata in it (node id 1), closed cleanly.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(store::open(dir.path(), 1).expect("open as 1"));
    dir
}

/// Opens the damaged dir, expects a refusal naming the data file, and checks that the
/// file is byte for byte what it was before the attempt.
fn refused(dir: &Path, what: &str) {
    let file = dir.join(store::DATA_FILE);
    let before = std::fs::read(&file).expect("read damaged file");
    let err = refused_naming(dir, &file, what);
    let after = std::fs::read(&file).expect("read again");
    assert!(
        after == before,
        "{what}: the damaged file was rewritten: {err}"
    );
}

/// Opens the damaged dir and expects a refusal naming `damaged`; returns the error.
fn refused_naming(dir: &Path, damaged: &Path, what: &str) -> String {
    match store::open(dir, 1) {
        Ok(_) => panic!("{what}: a damaged data dir was opened"),
        Err(e) => {
            let err = e.to_string();
            assert!(
                err.contains(&damaged.display().to_string()),
                "{what}: {} is not named: {err}",
                damaged.display()
            );
            err
        }
    }
}

#[test]
fn an_empty_data_file_is_refused_not_reset() {
    let dir = populated();
    std::fs::write(dir.path().join(store::DATA_FILE), b"").expect("truncate");
    refused(dir.path(), "empty");
}

#[test]
fn a_truncated_data_file_is_refused() {
    let dir = populated();
    let file = dir.path().join(store::DATA_FILE);
    let len = std::fs::metadata(&file).expect("len").len();
    for keep in [100, 512, len / 2] {
        let bytes = std::fs::read(&file).expect("read");
        let dir2 = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir2.path().join(store::DATA_FILE), &bytes[..keep as usize])
            .expect("truncate");
        refused(dir2.path(), &format!("truncated to {keep} of {len}"));
    }
}

#[test]
fn a_garbled_header_is_refused() {
    let dir = populated();
    let file = dir.path().join(store::DATA_FILE);
    let mut bytes = std::fs::read(&file).expect("read");
    for b in bytes.iter_mut().take(64) {
        *b ^= 0x5a;
    }
    std::fs::write(&file, &bytes).expect("garble");
    refused(dir.path(), "garbled header");
}

/// A data dir whose snapshot was built and stored (as a file in `snapshots/`) after a
/// group was created, closed cleanly; returns the snapshot file and the log id the
/// snapshot is up to.
async fn with_snapshot() -> (tempfile::TempDir, PathBuf, Option<LogId>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let applied = {
        let (_log, mut sm) = store::open(dir.path(), 1).expect("open as 1");
        let create = Command::CreateGroup {
            group: GroupName("g".into()),
            sites: vec![SiteId("a".into()), SiteId("b".into())],
            at_unix_ms: 1,
        };
        let entry = Entry::new_normal(log_id::<TypeConfig>(1, 1, 1), create);
        sm.apply(futures::stream::iter([Ok((entry, None))]))
            .await
            .expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        sm.applied_state().await.expect("applied").0
    };
    let files: Vec<_> = std::fs::read_dir(dir.path().join(store::SNAPSHOTS_DIR))
        .expect("snapshot dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files.into_iter().next().expect("one file");
    (dir, file, applied)
}

/// The snapshot file the data file names, gone or cut short: refused at start with an
/// error naming it; put back, the data dir opens with everything the snapshot held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_cut_snapshot_file_is_refused() {
    let (dir, file, applied) = with_snapshot().await;
    assert_eq!(applied.map(|id| id.index()), Some(1));
    let good = std::fs::read(&file).expect("read");
    std::fs::write(&file, &good[..good.len() / 2]).expect("cut");
    let err = refused_naming(dir.path(), &file, "snapshot file cut short");
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read").len(), good.len() / 2);

    std::fs::remove_file(&file).expect("remove");
    let err = refused_naming(dir.path(), &file, "snapshot file missing");
    assert!(err.contains("missing"), "{err}");

    std::fs::write(&file, &good).expect("put back");
    let (_log, mut sm) = store::open(dir.path(), 1).expect("opens again");
    assert_eq!(sm.applied_state().await.expect("applied").0, applied);
    assert!(sm.view().read().groups.contains_key(&GroupName("g".into())));
}

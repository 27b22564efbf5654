//! openraft's storage test suite against the redb stores: proves the log, vote, state
//! machine and snapshot behave as openraft requires.

use failover_controller::store::{self, LogStore, StateMachine};
use failover_controller::types::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = store::open(dir.path(), 1).expect("open store");
        Ok((dir, log, sm))
    }
}

/// Every case of openraft's suite passes against a fresh data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_openraft_suite() {
    Suite::test_all(RedbBuilder).await.expect("storage suite");
}

/// Reopening a directory as another controller is refused with a clear error, and the
/// data stays untouched.
#[test]
fn data_dir_of_another_controller_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(store::open(dir.path(), 1).expect("open as 1"));
    let err = store::open(dir.path(), 2).expect_err("must refuse");
    let message = err.to_string();
    assert!(
        message.contains("belongs to controller 1, not 2"),
        "{message}"
    );
    store::open(dir.path(), 1).expect("still opens as 1");
}

/// A data directory left by the earlier sled storage is refused by name instead of being
/// silently started empty beside the old files.
#[test]
fn sled_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("db"), b"sled").expect("db");
    std::fs::write(dir.path().join("conf"), b"segment_size: 524288").expect("conf");
    let err = store::open(dir.path(), 1).expect_err("must refuse");
    let message = err.to_string();
    assert!(message.contains("holds sled data"), "{message}");
    assert!(!dir.path().join(store::DATA_FILE).exists());
}

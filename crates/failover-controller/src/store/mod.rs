//! Durable Raft storage in one redb file: the log and vote ([`LogStore`]) and the state
//! machine with its snapshot ([`StateMachine`]), whose data is a file of its own beside it
//! ([`SNAPSHOTS_DIR`]).
//!
//! Persistence ordering: an append, a vote, a truncation, a purge and a snapshot are each
//! one redb write transaction committed with `Durability::Immediate`, which ends in
//! `fdatasync` of the data file ([`DATA_FILE`]) before `commit` returns; only then is the
//! I/O reported to openraft. A snapshot's file is fsynced and renamed into place (its
//! directory fsynced) before the commit that names it. The directory entry of the data
//! file is fsynced when the
//! directory is opened, so the file itself survives a power loss too. The committed index
//! is written without a sync (openraft re-learns it from the leader), and the state
//! machine lives in memory: on start openraft installs the last snapshot and re-applies
//! the committed entries after it.
//!
//! sled 0.34.7 was replaced because its flush ends in `sync_file_range`, which flushes
//! neither file metadata nor the device cache, and it writes large values to blob files
//! and its own snapshots to new files without syncing them or their directory;
//! `docs/architecture.md` (Persistence) has the details.

// redb's error is 160 bytes and travels only on the failure path of a write that already
// costs an fdatasync: boxing it in every transaction closure would buy nothing.
#![allow(clippy::result_large_err)]

mod cluster_id;
mod history;
mod log;
mod log_writer;
mod pieces;
mod snapshot;
mod snapshot_files;
mod snapshot_store;
mod state_machine;

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

pub use cluster_id::ClusterIdRecord;
pub use log::{LogStore, PURGE_BATCH};
pub use snapshot_files::SNAPSHOTS_DIR;
pub use state_machine::{
    run_snapshot_schedule, SnapshotSchedule, StateMachine, StateView, SNAPSHOT_MIN_ENTRIES,
    SNAPSHOT_STATE_FRACTION,
};

use failover_core::NodeId;
use snapshot_files::SnapshotFiles;

/// The Raft handle of a controller: openraft over this store's state machine. It lives
/// here, above the type configuration (`crate::types`) the store is written against, so
/// the two modules do not depend on each other.
pub type Raft = openraft::Raft<crate::types::TypeConfig, StateMachine>;

/// The one file in a data directory that holds a controller's Raft state.
pub const DATA_FILE: &str = "raft.redb";

/// Small values by name: the owning controller, the vote, the committed and purged ids.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Raft entries by index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// The last snapshot's header (and, from earlier versions, a whole JSON snapshot).
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// The last snapshot's data, in pieces of at most 1 MiB, by position, where it is not in
/// a file of its own (a store without a directory; data files from before snapshot files).
const SNAPSHOT_CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot_chunks");
/// redb's page cache. The state lives in memory and the log is read back mostly while
/// still recent, so a small cache costs little; redb's default (1 GiB) would count
/// against every controller's memory.
const CACHE_BYTES: usize = 64 << 20;

const NODE_ID: &str = "node_id";

/// The data directory could not be opened or does not belong to this controller.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory or its data file could not be created, opened or synced
    /// (permissions, a lock held by another process, damage).
    #[error("cannot open data dir {dir}: {source}")]
    Io {
        /// The directory.
        dir: String,
        /// The reason.
        source: io::Error,
    },
    /// The directory holds the data of another controller.
    #[error("data dir {dir} belongs to controller {found}, not {expected}: point --data-dir at this controller's own directory")]
    WrongNode {
        /// The directory.
        dir: String,
        /// The node id recorded in it.
        found: NodeId,
        /// The node id this process runs as.
        expected: NodeId,
    },
    /// The directory was written by the earlier sled storage, which this version cannot read.
    #[error("data dir {dir} holds sled data from an earlier version (file `db`, no `{DATA_FILE}`): move it aside and start this controller with --join-existing to rejoin from its peers")]
    OldFormat {
        /// The directory.
        dir: String,
    },
    /// The data file is truncated or garbled: refused, never reset, and left as found.
    #[error("data file {file} is damaged: {reason}. It was left untouched; restore it from a backup, or move it aside and start this controller with --join-existing to rejoin from its peers")]
    DamagedFile {
        /// The data file.
        file: String,
        /// What redb (or the check before it) found.
        reason: String,
    },
    /// The state recorded in the directory cannot be decoded.
    #[error("data dir {dir} is damaged: {source}")]
    Damaged {
        /// The directory.
        dir: String,
        /// What could not be read.
        source: io::Error,
    },
}

/// Opens (or creates) a controller's data directory and returns its two stores.
///
/// A new directory and data file are made durable (file and directory entries fsynced)
/// before this returns, so nothing written later can be lost with the file itself.
pub fn open(dir: &Path, node_id: NodeId) -> Result<(LogStore, StateMachine), OpenError> {
    let shown = dir.display().to_string();
    let io_error = |source| OpenError::Io {
        dir: shown.clone(),
        source,
    };
    if dir.join("db").exists() && dir.join("conf").exists() && !dir.join(DATA_FILE).exists() {
        return Err(OpenError::OldFormat { dir: shown });
    }
    std::fs::create_dir_all(dir).map_err(io_error)?;
    let file = dir.join(DATA_FILE);
    let damaged = |reason: String| OpenError::DamagedFile {
        file: file.display().to_string(),
        reason,
    };
    // redb would initialise an empty file as a new database: a data file truncated to
    // nothing must not become a silent reset of everything this controller acknowledged.
    match std::fs::metadata(&file) {
        Ok(meta) if meta.len() == 0 => {
            return Err(damaged("it is empty (truncated?)".to_owned()));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e)),
    }
    // redb 2.6 asserts (panics) on a file shorter than its header says instead of
    // returning an error; a truncated file is damage to report, not a crash.
    let opened = std::panic::catch_unwind(|| {
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&file)
    })
    .map_err(|panic| {
        let what = panic_message(panic.as_ref());
        damaged(format!("shorter than its header says (truncated?): {what}"))
    })?;
    let db = opened.map_err(|e| match e {
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == io::ErrorKind::PermissionDenied =>
        {
            io_error(e)
        }
        redb::DatabaseError::DatabaseAlreadyOpen => io_error(io::Error::other(e)),
        other => damaged(other.to_string()),
    })?;
    sync_dir(dir).map_err(io_error)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(io_error)?;
    }
    let files = SnapshotFiles::open(dir.join(SNAPSHOTS_DIR)).map_err(io_error)?;
    open_database(db, node_id, shown, Some(files))
}

/// Opens the stores on a redb storage backend instead of a file: the deterministic
/// simulation passes a simulated disk that keeps only what was synced across a crash.
/// With no directory for snapshot files, snapshots are stored in the database itself,
/// piece by piece (the layout data files had before snapshot files).
pub fn open_with_backend(
    backend: impl redb::StorageBackend,
    node_id: NodeId,
) -> Result<(LogStore, StateMachine), OpenError> {
    let db = Database::builder()
        .create_with_backend(backend)
        .map_err(|e| OpenError::Io {
            dir: BACKEND_NAME.to_owned(),
            source: io::Error::other(e),
        })?;
    open_database(db, node_id, BACKEND_NAME.to_owned(), None)
}

/// How errors name a store opened with [`open_with_backend`].
const BACKEND_NAME: &str = "(storage backend)";

/// Checks the owner of a freshly opened database and builds the two stores on it, with
/// snapshots stored in `files` (in the database without); errors name the store `shown`.
fn open_database(
    db: Database,
    node_id: NodeId,
    shown: String,
    files: Option<SnapshotFiles>,
) -> Result<(LogStore, StateMachine), OpenError> {
    let io_error = |source| OpenError::Io {
        dir: shown.clone(),
        source,
    };
    let db = Arc::new(db);
    let found = write(&db, Durability::Immediate, |txn| {
        txn.open_table(LOG)?;
        txn.open_table(SNAPSHOT)?;
        txn.open_table(SNAPSHOT_CHUNKS)?;
        txn.open_table(history::HISTORY)?;
        let mut meta = txn.open_table(META)?;
        let found = meta.get(NODE_ID)?.map(|raw| decode_u64(raw.value()));
        if found.is_none() {
            meta.insert(NODE_ID, node_id.to_be_bytes().as_slice())?;
        }
        Ok(found)
    })
    .map_err(io_error)?;
    match found {
        Some(None) => {
            return Err(OpenError::Damaged {
                dir: shown,
                source: io::Error::new(io::ErrorKind::InvalidData, "node_id is not 8 bytes"),
            })
        }
        Some(Some(found)) if found != node_id => {
            return Err(OpenError::WrongNode {
                dir: shown,
                found,
                expected: node_id,
            })
        }
        _ => {}
    }
    let log = LogStore::new(db.clone()).map_err(|source| OpenError::Damaged {
        dir: shown.clone(),
        source,
    })?;
    let sm = StateMachine::open(db, files, node_id)
        .map_err(|source| OpenError::Damaged { dir: shown, source })?;
    Ok((log, sm))
}

/// A state in the snapshot encoding the controllers send (for tools and tests
/// that need a snapshot without a running cluster), with the archived history of each
/// group that has one in `archive` (changes, then pause events, oldest first; a group
/// missing from it has none). `state` is only borrowed mutably while its groups are
/// written without their leases; it is unchanged on return.
pub fn encode_snapshot(
    state: &mut failover_core::ClusterState,
    archive: &std::collections::BTreeMap<
        failover_core::GroupName,
        (
            Vec<failover_core::HistoryEntry>,
            Vec<failover_core::PauseEvent>,
        ),
    >,
) -> io::Result<Vec<u8>> {
    let mut out = snapshot::encode_skeleton(state)?;
    snapshot::encode_leases(state, &mut out);
    let none = (Vec::new(), Vec::new());
    let groups = state
        .groups
        .keys()
        .map(|name| archive.get(name).unwrap_or(&none));
    snapshot::with_archive(out, groups)
}

/// Locks `mutex`; a panic while it was held (a bug, already reported) leaves what it
/// guards usable.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a caught panic said, for an error that reports it.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unreadable".to_owned())
}

/// Makes a directory's entries (a file created or renamed in it) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn decode_u64(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

fn io_err(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(e.into())
}

/// Runs `body` in one write transaction and commits it with `durability`.
///
/// With `Durability::Immediate` the data file is fdatasynced before this returns.
fn write<T>(
    db: &Database,
    durability: Durability,
    body: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error>,
) -> io::Result<T> {
    let asked = std::time::Instant::now();
    let mut txn = db.begin_write().map_err(io_err)?;
    let locked = std::time::Instant::now();
    txn.set_durability(durability);
    let value = body(&txn).map_err(io_err)?;
    let built = std::time::Instant::now();
    txn.commit().map_err(io_err)?;
    let done = std::time::Instant::now();
    if done - asked >= SLOW_WRITE {
        tracing::debug!(
            lock_wait_ms = (locked - asked).as_secs_f64() * 1e3,
            body_ms = (built - locked).as_secs_f64() * 1e3,
            commit_ms = (done - built).as_secs_f64() * 1e3,
            durable = matches!(durability, Durability::Immediate),
            "slow write to the data file"
        );
    }
    Ok(value)
}

/// A write that takes this long (waiting for the lock, changing, committing) is logged
/// at debug level with where its time went.
const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(8);

/// Runs `body` on the blocking pool, so disk I/O and long encodings do not stall the
/// async runtime.
///
/// On a current-thread runtime (the deterministic simulation, single-threaded tests) it
/// runs inline instead: handing it to another thread would make the order of the
/// runtime's tasks depend on the operating system's scheduling.
async fn blocking<T: Send + 'static>(
    body: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    if on_current_thread_runtime() {
        return body();
    }
    tokio::task::spawn_blocking(body)
        .await
        .map_err(io::Error::other)?
}

/// Whether this runs on a current-thread runtime, where work handed to another thread
/// would run in an order the operating system's scheduling decides.
fn on_current_thread_runtime() -> bool {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread))
}

/// [`write`] on the blocking pool, so the fsync does not stall the async runtime (inline
/// on a current-thread runtime, see [`blocking`]).
async fn write_blocking<T: Send + 'static>(
    db: &Arc<Database>,
    durability: Durability,
    body: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
) -> io::Result<T> {
    let db = db.clone();
    blocking(move || write(&db, durability, body)).await
}

/// Removes the entries of `table` whose key is at least `first`, one `pop_last` at a time
/// (see [`remove_first_through`] for why not a range removal).
fn remove_from(table: &mut redb::Table<'_, u64, &[u8]>, first: u64) -> Result<(), redb::Error> {
    while table.last()?.is_some_and(|(key, _)| key.value() >= first) {
        table.pop_last()?;
    }
    Ok(())
}

/// Removes the entries of `table` whose key is at most `last`, one `pop_first` at a time,
/// at most `limit` of them; returns whether none is left.
///
/// Not `retain_in`: redb 2.6 removes a range without modifying the tree it iterates, so
/// every removal copies its leaf and the branch pages above it and none of these copies is
/// freed before the transaction ends. Purging 400,000 log entries that way allocated about
/// one page path per entry (gigabytes), and the data file grew to 3.9-5.2 GiB although
/// it held about 130 MiB of data. `pop_first` changes the tree in place: a page copied
/// earlier in the same transaction is reused, so a purge needs no more space than the
/// pages it frees.
fn remove_first_through(
    table: &mut redb::Table<'_, u64, &[u8]>,
    last: u64,
    limit: u64,
) -> Result<bool, redb::Error> {
    let mut removed = 0;
    while table.first()?.is_some_and(|(key, _)| key.value() <= last) {
        if removed == limit {
            return Ok(false);
        }
        table.pop_first()?;
        removed += 1;
    }
    Ok(true)
}

/// Reads one value of the `meta` table.
fn read_meta(db: &Database, key: &str) -> io::Result<Option<Vec<u8>>> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(META).map_err(io_err)?;
    let value = table.get(key).map_err(io_err)?;
    Ok(value.map(|raw| raw.value().to_vec()))
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8], what: &str) -> Result<T, io::Error> {
    serde_json::from_slice(raw).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot decode {what}: {e}"),
        )
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, io::Error> {
    serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

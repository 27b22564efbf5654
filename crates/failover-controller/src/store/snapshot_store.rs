//! Where the last snapshot is kept: storing a new one, replacing the previous one, and
//! reading it back.
//!
//! A header in the data file's `snapshot` table names the current snapshot: its metadata,
//! its length, and where its data is. The data is a file in the snapshot directory
//! ([`SnapshotFiles`]) when the store has one (every controller's data directory), or
//! pieces in the `snapshot_chunks` table when it has not (the simulation's disk) and in
//! data files written before snapshot files; both are still read. Switching the header is
//! one durable commit, so a crash leaves either snapshot current, whole.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use failover_core::ClusterState;

use super::pieces::StoredPieces;
use super::snapshot_files::{PartialFile, SnapshotFiles};
use super::{
    decode, encode, io_err, lock, snapshot, write, SNAPSHOT as SNAPSHOTS, SNAPSHOT_CHUNKS,
};
use crate::types::SnapshotMeta;

/// The key of the earlier format: metadata and data as one JSON value.
const OLD_SNAPSHOT: &str = "snapshot";
/// The key of the current snapshot's [`SnapshotHeader`].
const HEADER: &str = "header";

/// How errors name a snapshot stored in the data file.
const PIECES_SOURCE: &str = "the snapshot in the data file";

/// The stored snapshot's metadata and where its data is: the file `file`, or (without
/// one) `chunks` pieces of `SNAPSHOT_CHUNKS` under the keys from `first` on.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta,
    len: u64,
    chunks: u64,
    /// The key of the first piece (absent, 0, in data files from before snapshots were
    /// written piece by piece).
    #[serde(default)]
    first: u64,
    /// The snapshot file in the snapshot directory (absent in data files from before
    /// snapshot files, and in stores without a directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

/// A stored snapshot of the earlier format.
#[derive(Debug, Deserialize)]
struct OldSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The stored snapshot: its metadata, a reader of its data, and where the data is (for
/// errors: a file, or the data file's pieces).
pub(super) struct Stored {
    pub meta: SnapshotMeta,
    pub data: Box<dyn io::Read + Send>,
    pub source: String,
}

/// Where snapshots are stored, and the locks that keep the writers apart.
#[derive(Clone)]
pub(super) struct SnapshotStore {
    db: Arc<Database>,
    /// The snapshot directory; `None`: pieces in the data file.
    files: Option<SnapshotFiles>,
    /// Held by a store from start to end: a follower may install the leader's snapshot
    /// while its own build is still storing, and the two must not interleave.
    storing: Arc<Mutex<()>>,
    /// Held while the header is switched and the replaced file deleted, and while a
    /// reader reads the header and opens its file: a reader never finds the file it was
    /// pointed at deleted. Once open, a file reads whole even after it is deleted.
    switching: Arc<Mutex<()>>,
}

impl SnapshotStore {
    /// The snapshots of `db`, with their data in `files` (in `db` itself without). Deletes
    /// the snapshot files no header names: what a crash left (a partial file, one that was
    /// replaced but not yet deleted).
    pub(super) fn open(db: Arc<Database>, files: Option<SnapshotFiles>) -> io::Result<Self> {
        let store = SnapshotStore {
            db,
            files,
            storing: Arc::default(),
            switching: Arc::default(),
        };
        if let Some(files) = &store.files {
            let header = store.header()?;
            files.remove_all_but(header.as_ref().and_then(|h| h.file.as_deref()))?;
        }
        Ok(store)
    }

    /// The current snapshot's header, if one was stored in the current form.
    fn header(&self) -> io::Result<Option<SnapshotHeader>> {
        header_in(&self.db.begin_read().map_err(io_err)?)
    }

    /// The stored snapshot's metadata and a reader of its data, if one was ever built or
    /// installed. A snapshot stored meanwhile does not change what the reader reads.
    pub(super) fn current(&self) -> io::Result<Option<Stored>> {
        let _switching = lock(&self.switching);
        let txn = self.db.begin_read().map_err(io_err)?;
        if let Some(header) = header_in(&txn)? {
            // Fewer bytes than the header says is damage, named as such by the decoder
            // ("truncated"); more cannot be read past `len`.
            let (data, source): (Box<dyn io::Read + Send>, String) = match &header.file {
                Some(name) => {
                    let files = self.files.as_ref().ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the snapshot is in file {name}, and this store has no snapshot directory"),
                        )
                    })?;
                    let file = files.open_file(name)?;
                    let source = format!("snapshot file {}", files.path(name).display());
                    (Box::new(file.take(header.len)), source)
                }
                // The read transaction stays with the pieces: a snapshot stored meanwhile
                // cannot pull them away.
                None => {
                    let pieces = StoredPieces::new(txn, header.first, header.chunks)?;
                    (Box::new(pieces.take(header.len)), PIECES_SOURCE.to_owned())
                }
            };
            return Ok(Some(Stored {
                meta: header.meta,
                data,
                source,
            }));
        }
        let table = txn.open_table(SNAPSHOTS).map_err(io_err)?;
        match table.get(OLD_SNAPSHOT).map_err(io_err)? {
            Some(raw) => {
                let old: OldSnapshot = decode(raw.value(), "stored snapshot")?;
                Ok(Some(Stored {
                    meta: old.meta,
                    data: Box::new(io::Cursor::new(old.data)),
                    source: PIECES_SOURCE.to_owned(),
                }))
            }
            None => Ok(None),
        }
    }

    /// Encodes `state` and stores it as the current snapshot, replacing the previous one;
    /// returns its size in bytes once it is durable.
    ///
    /// The leases are encoded on a thread of lower priority ([`encode_in_background`])
    /// and written, a [`snapshot::PIECE_BYTES`] piece at a time as they come, to a new
    /// file (or to pieces under keys past every stored one), so at most four pieces are
    /// in memory. A last, durable commit points the header at it; until then the previous
    /// snapshot is the current one. A snapshot no newer than the current one (a follower's
    /// own build finishing after it installed the leader's, or the leader's at the index
    /// of its own) is dropped instead.
    pub(super) async fn store(
        &self,
        meta: &SnapshotMeta,
        mut state: ClusterState,
    ) -> io::Result<u64> {
        let head = snapshot::encode_skeleton(&mut state)?;
        let store = self.clone();
        let meta = meta.clone();
        super::blocking(move || {
            let _storing = lock(&store.storing);
            let index = meta.last_log_id.map_or(0, |id| id.index());
            let mut target = store.target(index)?;
            let mut len = 0u64;
            let (pieces, encoder) = encode_in_background(state, head)?;
            let written = pieces.iter().try_for_each(|piece| {
                len += piece.len() as u64;
                target.append(&piece)
            });
            // A failed write drops the receiver, which stops the encoder at its next piece.
            drop(pieces);
            // A panic there is a broken invariant of the state (asserted as it is encoded):
            // it goes on here as it would have on this thread.
            let encoded = encoder
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            written?;
            // The copy's nodes no one else shares any more are freed here, at the
            // caller's priority.
            drop(encoded?);
            // Decided before the new data is complete: at the same index, a new file
            // would take the name of the current one.
            let current = store.header()?;
            let last_log_id = meta.last_log_id;
            if current.is_some_and(|current| current.meta.last_log_id >= last_log_id) {
                target.discard()?;
                tracing::info!(
                    ?last_log_id,
                    "a snapshot at least as new is stored already; this one is dropped"
                );
                return Ok(len);
            }
            let header = target.finish(meta, len)?;
            store.switch_to(header)?;
            Ok(len)
        })
        .await
    }

    /// Where a new snapshot up to `index` is written.
    fn target(&self, index: u64) -> io::Result<Target> {
        if let Some(files) = &self.files {
            return Ok(Target::File(files.create(&SnapshotFiles::name(index))?));
        }
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(SNAPSHOT_CHUNKS).map_err(io_err)?;
        let last = table.last().map_err(io_err)?;
        let first = last.map_or(0, |(key, _)| key.value() + 1);
        Ok(Target::Pieces {
            db: self.db.clone(),
            first,
            next: first,
        })
    }

    /// Makes the snapshot `header` describes the current one, and deletes what it
    /// replaces. Only with `storing` held, for a snapshot newer than the current one.
    fn switch_to(&self, header: SnapshotHeader) -> io::Result<()> {
        let _switching = lock(&self.switching);
        let current = self.header()?;
        assert!(
            current
                .as_ref()
                .is_none_or(|current| current.meta.last_log_id < header.meta.last_log_id),
            "a snapshot replaces only an older one"
        );
        let encoded = encode(&header)?;
        // Every piece before the new ones: the previous snapshot's and those of a build a
        // crash interrupted (all of them when the new snapshot is a file).
        let pieces_before = match header.file {
            Some(_) => Some(u64::MAX),
            None => header.first.checked_sub(1),
        };
        write(&self.db, Durability::Immediate, |txn| {
            if let Some(before) = pieces_before {
                let mut table = txn.open_table(SNAPSHOT_CHUNKS)?;
                super::remove_first_through(&mut table, before, u64::MAX)?;
            }
            let mut snapshots = txn.open_table(SNAPSHOTS)?;
            snapshots.remove(OLD_SNAPSHOT)?;
            snapshots.insert(HEADER, encoded.as_slice())?;
            Ok(())
        })?;
        let replaced = current.and_then(|current| current.file);
        if let (Some(files), Some(replaced)) = (&self.files, replaced) {
            files.remove(&replaced)?;
        }
        Ok(())
    }
}

/// A snapshot's data being written.
enum Target {
    /// A new file.
    File(PartialFile),
    /// Pieces of the data file, under keys from `first`; the next one is `next`.
    Pieces {
        db: Arc<Database>,
        first: u64,
        next: u64,
    },
}

impl Target {
    /// Writes the next piece. Into the data file, each piece is a short transaction of
    /// its own, so log appends (which wait for any open write transaction) interleave.
    fn append(&mut self, piece: &[u8]) -> io::Result<()> {
        match self {
            Target::File(file) => file.append(piece),
            Target::Pieces { db, next, .. } => {
                let key = *next;
                write(db, Durability::None, |txn| {
                    txn.open_table(SNAPSHOT_CHUNKS)?.insert(key, piece)?;
                    Ok(())
                })?;
                *next += 1;
                Ok(())
            }
        }
    }

    /// Deletes what was written.
    fn discard(self) -> io::Result<()> {
        match self {
            // Dropped unfinished, it deletes itself.
            Target::File(file) => {
                drop(file);
                Ok(())
            }
            Target::Pieces { db, first, .. } => write(&db, Durability::None, |txn| {
                super::remove_from(&mut txn.open_table(SNAPSHOT_CHUNKS)?, first)
            }),
        }
    }

    /// Completes the data (a file is synced and renamed into place; pieces are made
    /// durable by the commit that switches the header) and returns the header naming it.
    fn finish(self, meta: SnapshotMeta, len: u64) -> io::Result<SnapshotHeader> {
        Ok(match self {
            Target::File(file) => SnapshotHeader {
                meta,
                len,
                chunks: 0,
                first: 0,
                file: Some(file.finish()?),
            },
            Target::Pieces { first, next, .. } => SnapshotHeader {
                meta,
                len,
                chunks: next - first,
                first,
                file: None,
            },
        })
    }
}

/// The snapshot header as `txn` sees it.
fn header_in(txn: &ReadTransaction) -> io::Result<Option<SnapshotHeader>> {
    let table = txn.open_table(SNAPSHOTS).map_err(io_err)?;
    let raw = table.get(HEADER).map_err(io_err)?;
    raw.map(|raw| decode(raw.value(), "snapshot header"))
        .transpose()
}

/// A snapshot being encoded: its pieces as they come, and the encoder's thread, which
/// hands the state back once encoded.
type Encoding = (
    std::sync::mpsc::Receiver<Vec<u8>>,
    std::thread::JoinHandle<io::Result<ClusterState>>,
);

/// Encodes the leases of `state` after `head` (the skeleton) on a thread of its own at a
/// lower CPU priority ([`lower_thread_priority`]), handing out [`snapshot::PIECE_BYTES`]
/// pieces (the last one shorter) through a channel two pieces deep; the thread returns
/// how the encoding ended, and the state.
///
/// The state is handed back rather than dropped on the encoder's thread: dropping the
/// copy frees the nodes the applies replaced meanwhile (copy on write), all allocated by
/// the applying thread, and a low-priority thread freeing them takes the allocator's
/// locks that thread needs and may be descheduled while it holds one.
///
/// A snapshot is background work: its encoding costs CPU in proportion to the state
/// (about a second at a million leases), and on a busy controller it must not take that
/// time from the applies, log appends and answers that set a grant's latency. The writes
/// stay with the caller at normal priority: a low-priority thread must never hold a lock
/// that a log append waits for.
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
            while !out.is_empty() {
                hand_out(out)?;
            }
            Ok(state)
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::snapshot_files::SNAPSHOTS_DIR;
    use crate::types::TypeConfig;

    /// Stores `data` as the current snapshot as it is, in one piece of the data file (as
    /// data files from before snapshot files hold it).
    pub(crate) fn store_raw(db: &Database, meta: &SnapshotMeta, data: &[u8]) {
        let header = encode(&SnapshotHeader {
            meta: meta.clone(),
            len: data.len() as u64,
            chunks: 1,
            first: 0,
            file: None,
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

    /// The files in the snapshot directory of `dir`, sorted.
    fn files_in(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOTS_DIR))
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A data file in `dir` with the snapshot tables, and its snapshot store (with a
    /// snapshot directory if `files`).
    fn open_in(dir: &std::path::Path, files: bool) -> SnapshotStore {
        let db = Database::create(dir.join(super::super::DATA_FILE)).expect("data file");
        write(&db, Durability::Immediate, |txn| {
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(SNAPSHOT_CHUNKS)?;
            Ok(())
        })
        .expect("tables");
        reopen(Arc::new(db), dir, files)
    }

    fn reopen(db: Arc<Database>, dir: &std::path::Path, files: bool) -> SnapshotStore {
        let files = files.then(|| SnapshotFiles::open(dir.join(SNAPSHOTS_DIR)).expect("files"));
        SnapshotStore::open(db, files).expect("open")
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, index)),
            last_membership: Default::default(),
        }
    }

    /// The current snapshot's metadata and data.
    fn read_current(store: &SnapshotStore) -> (SnapshotMeta, Vec<u8>) {
        let mut stored = store.current().expect("read").expect("stored");
        let mut data = Vec::new();
        stored.data.read_to_end(&mut data).expect("read data");
        (stored.meta, data)
    }

    /// Without a snapshot directory, a snapshot larger than a piece is stored in pieces
    /// past every stored key; the pieces of a build a crash interrupted, and the previous
    /// snapshot's, are removed when the next one is stored, and it reads back whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_directory_snapshots_are_pieces_that_replace_the_previous_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_in(dir.path(), false);
        let state = snapshot::tests::state(60_000);
        let len = store.store(&meta(5), state.clone()).await.expect("store");
        assert!(
            len > snapshot::PIECE_BYTES as u64,
            "{len} bytes: one piece only"
        );
        let first = piece_keys(&store.db);
        assert_eq!(
            first,
            (0..len.div_ceil(snapshot::PIECE_BYTES as u64)).collect::<Vec<_>>()
        );
        // Pieces left by a build that did not finish.
        let orphans = first.len() as u64..first.len() as u64 + 3;
        write(&store.db, Durability::Immediate, |txn| {
            let mut table = txn.open_table(SNAPSHOT_CHUNKS)?;
            for key in orphans.clone() {
                table.insert(key, b"torn".as_slice())?;
            }
            Ok(())
        })
        .expect("orphans");
        store
            .store(&meta(9), state.clone())
            .await
            .expect("store again");
        let second = piece_keys(&store.db);
        assert_eq!(second.len(), first.len());
        assert_eq!(second[0], orphans.end, "stored past every existing key");
        let (stored_meta, data) = read_current(&store);
        assert_eq!(stored_meta, meta(9));
        assert_eq!(data.len() as u64, len);
        assert!(snapshot::decode(&data).expect("decode").state == state);
    }

    /// With a snapshot directory, a snapshot is one file; it replaces the previous file,
    /// and the pieces of a data file from before snapshot files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_is_a_file_that_replaces_the_previous_file_and_pieces() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_in(dir.path(), true);
        let older = snapshot::tests::state(1_000);
        let mut encoded_older = snapshot::encode_skeleton(&mut older.clone()).expect("encode");
        snapshot::encode_leases(&older, &mut encoded_older);
        store_raw(&store.db, &meta(3), &encoded_older);
        assert_eq!(read_current(&store), (meta(3), encoded_older));
        let state = snapshot::tests::state(60_000);
        let len = store.store(&meta(5), state.clone()).await.expect("store");
        assert!(piece_keys(&store.db).is_empty(), "the pieces stay");
        assert_eq!(files_in(dir.path()), vec![SnapshotFiles::name(5)]);
        let newer = snapshot::tests::state(70_000);
        store
            .store(&meta(9), newer.clone())
            .await
            .expect("store again");
        assert_eq!(files_in(dir.path()), vec![SnapshotFiles::name(9)]);
        let (stored_meta, data) = read_current(&store);
        assert_eq!(stored_meta, meta(9));
        assert!(data.len() as u64 > len);
        assert!(snapshot::decode(&data).expect("decode").state == newer);
    }

    /// A snapshot at the index of the current one (a follower installing the leader's
    /// snapshot of what it had built itself) is dropped, and the current one stays whole:
    /// its file has the same name, and must be neither overwritten nor deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_at_the_current_index_leaves_the_current_one_whole() {
        for files in [true, false] {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = open_in(dir.path(), files);
            let state = snapshot::tests::state(60_000);
            store.store(&meta(5), state.clone()).await.expect("store");
            let before = read_current(&store);
            store
                .store(&meta(5), snapshot::tests::state(10))
                .await
                .expect("store at the same index");
            assert!(read_current(&store) == before, "files: {files}");
            if files {
                assert_eq!(files_in(dir.path()), vec![SnapshotFiles::name(5)]);
            } else {
                let pieces = piece_keys(&store.db).len() as u64;
                assert_eq!(
                    pieces,
                    (before.1.len() as u64).div_ceil(snapshot::PIECE_BYTES as u64)
                );
            }
        }
    }

    /// A reader of the current snapshot reads it whole even after a newer snapshot
    /// replaced (deleted) its file: a leader sending a snapshot while it builds the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_being_read_survives_its_replacement() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_in(dir.path(), true);
        let older = snapshot::tests::state(60_000);
        store.store(&meta(5), older.clone()).await.expect("store");
        let mut reader = store.current().expect("read").expect("stored").data;
        store
            .store(&meta(9), snapshot::tests::state(10))
            .await
            .expect("store again");
        assert_eq!(files_in(dir.path()), vec![SnapshotFiles::name(9)]);
        let mut data = Vec::new();
        reader.read_to_end(&mut data).expect("read");
        assert!(snapshot::decode(&data).expect("decode").state == older);
    }

    /// What a crash leaves in the snapshot directory (a partial file, a replaced file not
    /// yet deleted) is deleted when the store is opened; the current file stays. A current
    /// file that is gone is damage, named.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_crash_leaves_is_deleted_at_open_and_a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_in(dir.path(), true);
        let state = snapshot::tests::state(5_000);
        store.store(&meta(5), state.clone()).await.expect("store");
        let snapshots = dir.path().join(SNAPSHOTS_DIR);
        std::fs::write(snapshots.join(SnapshotFiles::name(3)), b"replaced").expect("write");
        let partial = format!("{}.tmp", SnapshotFiles::name(9));
        std::fs::write(snapshots.join(&partial), b"torn").expect("write");
        let db = store.db.clone();
        drop(store);
        let store = reopen(db.clone(), dir.path(), true);
        assert_eq!(files_in(dir.path()), vec![SnapshotFiles::name(5)]);
        let (_, data) = read_current(&store);
        assert!(snapshot::decode(&data).expect("decode").state == state);

        std::fs::remove_file(snapshots.join(SnapshotFiles::name(5))).expect("remove");
        let err = store.current().err().expect("a missing file is an error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains(&SnapshotFiles::name(5))
                && err.to_string().contains("missing"),
            "{err}"
        );
    }

    /// Two snapshots stored at once (a follower's own build and the leader's it installs)
    /// do not mix their data, and an older one finishing last does not replace a newer
    /// one: the newest stays current, whole, and only its data is left. In files and in
    /// pieces.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_newest_of_concurrent_snapshots_stays_whole() {
        for files in [true, false] {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = open_in(dir.path(), files);
            let older = snapshot::tests::state(60_000);
            let newer = snapshot::tests::state(90_000);
            let (at_5, at_9) = (meta(5), meta(9));
            let (a, b) = tokio::join!(
                store.store(&at_5, older.clone()),
                store.store(&at_9, newer.clone()),
            );
            a.expect("older");
            b.expect("newer");
            // And the older one once more, after the newer one.
            store.store(&meta(5), older).await.expect("older again");
            let (stored_meta, data) = read_current(&store);
            assert_eq!(stored_meta, meta(9));
            assert!(snapshot::decode(&data).expect("decode").state == newer);
            let pieces = piece_keys(&store.db);
            if files {
                assert!(pieces.is_empty(), "{pieces:?}");
                assert_eq!(files_in(dir.path()), vec![SnapshotFiles::name(9)]);
            } else {
                assert_eq!(
                    pieces.len() as u64,
                    (data.len() as u64).div_ceil(snapshot::PIECE_BYTES as u64),
                    "only the current snapshot's pieces are left: {pieces:?}"
                );
            }
        }
    }

    /// The background encoder hands out the same bytes as encoding in one buffer, in
    /// pieces of exactly [`snapshot::PIECE_BYTES`] but the last; and a writer that stops
    /// taking pieces stops it.
    #[test]
    fn the_background_encoder_cuts_the_encoding_into_pieces_and_stops_with_its_writer() {
        // Enough leases for more pieces than the channel holds besides the one taken, so
        // the encoder still has one to hand out when the writer stops.
        let mut state = snapshot::tests::state(200_000);
        let head = snapshot::encode_skeleton(&mut state).expect("skeleton");
        let mut whole = head.clone();
        snapshot::encode_leases(&state, &mut whole);
        let (pieces, encoder) = encode_in_background(state.clone(), head.clone()).expect("spawn");
        let pieces: Vec<Vec<u8>> = pieces.iter().collect();
        encoder.join().expect("no panic").expect("encoded");
        assert!(pieces.len() >= 4, "{} piece(s)", pieces.len());
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
}

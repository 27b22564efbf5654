//! The Raft log and vote in redb tables.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableTable};

use super::{decode, encode, io_err, read_meta, write_blocking, LOG, META};
use crate::types::{Entry, LogId, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Most purged entries one write transaction removes: what a purge removes at once, and
/// what each later append, vote or truncation removes of what is left. Removing an entry
/// costs a few microseconds (a B-tree `pop_first`), so this bounds the time a purge adds
/// to the write that carries it, whatever the log's length. Small, because every append
/// until the backlog is gone pays it: 256 set the grant p99 from 10,000 leases on (about
/// 27 ms against 18 ms with 32, docs/benchmarks.md), and at 32 per append the backlog of
/// a snapshot is still gone long before the next one is due (appends carry several
/// entries each).
pub const PURGE_BATCH: u64 = 32;

/// The Raft log (`log` table, keyed by index) and vote (`meta` table).
///
/// Every method that changes what Raft counts as persisted (append, vote, truncate,
/// purge) returns only after the data file was fdatasynced.
///
/// A purge records the purged id (durably) and removes at most [`PURGE_BATCH`] entries;
/// the rest are removed [`PURGE_BATCH`] at a time by the writes that follow, inside their
/// own transactions. openraft awaits a purge on its core task, so a purge of a quarter of
/// a million entries (a snapshot of a 1,000,000-lease state) done at once stalled every
/// append and commit for its duration. Entries at or below the purged id that are still
/// in the table are never read: the log's state and every read start above it, and a
/// restart resumes the removal from the recorded id.
#[derive(Clone)]
pub struct LogStore {
    pub(super) db: Arc<Database>,
    /// One past the index of the last purged entry that may still be in the table
    /// (0: nothing left to remove). Shared by the clones openraft reads through.
    purge_debt: Arc<AtomicU64>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// The log of `db`; what an earlier purge left in the table is removed by the writes
    /// that follow.
    pub(super) fn new(db: Arc<Database>) -> io::Result<Self> {
        let store = LogStore {
            db,
            purge_debt: Arc::new(AtomicU64::new(0)),
        };
        if let Some(purged) = store.last_purged()? {
            store.owe_purge(purged.index());
        }
        Ok(store)
    }

    fn last_purged(&self) -> io::Result<Option<LogId>> {
        self.get_json(LAST_PURGED)
    }

    /// Records that every entry up to `index` is to be removed.
    fn owe_purge(&self, index: u64) {
        self.purge_debt
            .fetch_max(index.saturating_add(1), Ordering::Relaxed);
    }

    /// The entries at most this index may still be in the table although purged.
    fn purge_owed(&self) -> Option<u64> {
        match self.purge_debt.load(Ordering::Relaxed) {
            0 => None,
            end => Some(end - 1),
        }
    }

    /// Whether the entries purged so far are all gone from the table (as some write
    /// found after removing a batch); only then, and only if no purge came meanwhile,
    /// is the debt cleared.
    fn purge_done(&self, owed: Option<u64>, done: bool) {
        if let (Some(owed), true) = (owed, done) {
            let _ = self.purge_debt.compare_exchange(
                owed.saturating_add(1),
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, io::Error> {
        match read_meta(&self.db, key)? {
            Some(raw) => decode(&raw, key).map(Some),
            None => Ok(None),
        }
    }

    async fn put_json<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), io::Error> {
        let raw = encode(value)?;
        let owed = self.purge_owed();
        let done = write_blocking(&self.db, durability, move |txn| {
            txn.open_table(META)?.insert(key, raw.as_slice())?;
            remove_purged(txn, owed)
        })
        .await?;
        self.purge_done(owed, done);
        Ok(())
    }
}

/// Removes at most [`PURGE_BATCH`] of the entries at or below `owed` (the first ones);
/// returns whether none of them is left.
fn remove_purged(txn: &redb::WriteTransaction, owed: Option<u64>) -> Result<bool, redb::Error> {
    let Some(last) = owed else {
        return Ok(true);
    };
    let mut table = txn.open_table(LOG)?;
    super::remove_first_through(&mut table, last, PURGE_BATCH)
}

fn to_range<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Bound<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    Some((start, range.end_bound().cloned()))
}

fn decode_entry(index: u64, raw: &[u8]) -> Result<Entry, io::Error> {
    decode(raw, &format!("log entry {index}"))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((start, end)) = to_range(&range) else {
            return Ok(Vec::new());
        };
        // Purged entries still in the table are not part of the log.
        let start = match self.purge_owed() {
            Some(owed) => start.max(owed.saturating_add(1)),
            None => start,
        };
        let empty = match end {
            Bound::Included(end) => start > end,
            Bound::Excluded(end) => start >= end,
            Bound::Unbounded => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let mut entries = Vec::new();
        for item in table.range((Bound::Included(start), end)).map_err(io_err)? {
            let (key, raw) = item.map_err(io_err)?;
            entries.push(decode_entry(key.value(), raw.value())?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_json(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged = self.last_purged()?;
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let purged_index = last_purged.map(|id| id.index());
        // An entry at or below the purged id may be one whose removal is still owed.
        let last = match table.last().map_err(io_err)? {
            Some((key, raw)) if Some(key.value()) > purged_index => {
                Some(decode_entry(key.value(), raw.value())?.log_id())
            }
            _ => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_json(VOTE, vote, Durability::Immediate).await
    }

    /// The committed id is a hint openraft can re-learn from the leader, so it is written
    /// without a sync; the next synced write makes it durable.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.put_json(COMMITTED, &committed, Durability::None).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_json::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        let mut batch = Vec::new();
        for entry in entries {
            batch.push((entry.index(), encode(&entry)?));
        }
        let owed = self.purge_owed();
        let written = write_blocking(&self.db, Durability::Immediate, move |txn| {
            {
                let mut table = txn.open_table(LOG)?;
                for (index, raw) in &batch {
                    table.insert(*index, raw.as_slice())?;
                }
            }
            remove_purged(txn, owed)
        })
        .await;
        if let Ok(done) = written {
            self.purge_done(owed, done);
        }
        let written = written.map(|_| ());
        let reported = written
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(reported);
        written
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |id| id.index() + 1);
        let owed = self.purge_owed();
        let done = write_blocking(&self.db, Durability::Immediate, move |txn| {
            {
                let mut log = txn.open_table(LOG)?;
                super::remove_from(&mut log, start)?;
            }
            remove_purged(txn, owed)
        })
        .await?;
        self.purge_done(owed, done);
        Ok(())
    }

    /// Records `log_id` as purged and removes the first [`PURGE_BATCH`] entries up to it;
    /// the writes that follow remove the rest (see [`LogStore`]).
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let raw = encode(&log_id)?;
        let started = std::time::Instant::now();
        self.owe_purge(log_id.index());
        let owed = self.purge_owed();
        let done = write_blocking(&self.db, Durability::Immediate, move |txn| {
            txn.open_table(META)?.insert(LAST_PURGED, raw.as_slice())?;
            remove_purged(txn, owed)
        })
        .await?;
        self.purge_done(owed, done);
        tracing::debug!(
            purged = log_id.index(),
            all_removed = done,
            purge_ms = started.elapsed().as_secs_f64() * 1e3,
            "purged the log"
        );
        Ok(())
    }
}

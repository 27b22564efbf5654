//! The Raft log and vote in redb tables.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{Database, ReadableTable};

use super::log_writer::{Change, Done, Job, Shared, Writer};
use super::{decode, encode, io_err, lock, read_meta, LOG};
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
/// Every write that changes what Raft counts as persisted (append, vote, truncate,
/// purge) is reported done only after the data file was fdatasynced. The writes are
/// committed by one writer thread, in order and many per transaction
/// ([`super::log_writer`]): an append returns once its entries are readable and reports
/// them flushed through openraft's callback.
///
/// A purge records the purged id (durably) and removes at most [`PURGE_BATCH`] entries;
/// the rest are removed [`PURGE_BATCH`] at a time by the writes that follow, inside their
/// own transactions. A purge of a quarter of a million entries (a snapshot of a
/// 1,000,000-lease state) done at once stalled every append and commit for its duration.
/// Entries at or below the purged id that are still in the table are never read: the
/// log's state and every read start above it, and a restart resumes the removal from the
/// recorded id.
#[derive(Clone)]
pub struct LogStore {
    pub(super) shared: Arc<Shared>,
    /// Started with the first write made on a multi-threaded runtime; shared by the
    /// clones openraft reads through, and stopped with the last of them.
    writer: Arc<Mutex<Option<Writer>>>,
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
            shared: Arc::new(Shared::new(db)),
            writer: Arc::new(Mutex::new(None)),
        };
        if let Some(purged) = store.last_purged()? {
            store.shared.owe_purge(purged.index());
        }
        Ok(store)
    }

    fn last_purged(&self) -> io::Result<Option<LogId>> {
        self.get_json(LAST_PURGED)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, io::Error> {
        match read_meta(&self.shared.db, key)? {
            Some(raw) => decode(&raw, key).map(Some),
            None => Ok(None),
        }
    }

    /// Hands `job` to the writer thread, or commits it here on a current-thread runtime.
    fn submit(&self, job: Job) {
        if super::on_current_thread_runtime() {
            self.shared.run(&mut vec![job]);
            return;
        }
        let mut writer = lock(&self.writer);
        if writer.is_none() {
            match Writer::start(self.shared.clone()) {
                Ok(started) => *writer = Some(started),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the log writer thread; writing inline");
                    drop(writer);
                    self.shared.run(&mut vec![job]);
                    return;
                }
            }
        }
        if let Some(Err(job)) = writer.as_ref().map(|w| w.send(job)) {
            // The writer ended (it only does when dropped): commit here.
            drop(writer);
            self.shared.run(&mut vec![job]);
        }
    }

    /// Submits `change` and waits until it is committed.
    async fn commit(&self, change: Change, durable: bool) -> io::Result<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job {
            change,
            durable,
            done: Done::Reply(reply),
        });
        answer
            .await
            .map_err(|_| io::Error::other("the log writer ended before committing a write"))?
    }
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
        let start = match self.shared.purge_owed() {
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
        // Unwritten entries first: they are above the table's, and the writer removes
        // them only after committing, so whatever is not among them is in the table for
        // a read begun afterwards.
        let unwritten = self.shared.unwritten_in((Bound::Included(start), end));
        let table_end = unwritten
            .first()
            .map_or(end, |entry| Bound::Excluded(entry.index()));
        let txn = self.shared.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let mut entries = Vec::new();
        for item in table
            .range((Bound::Included(start), table_end))
            .map_err(io_err)?
        {
            let (key, raw) = item.map_err(io_err)?;
            entries.push(decode_entry(key.value(), raw.value())?);
        }
        entries.extend(unwritten);
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
        let unwritten = self.shared.last_unwritten();
        let txn = self.shared.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let purged_index = last_purged.map(|id| id.index());
        // An entry at or below the purged id may be one whose removal is still owed.
        let written = match table.last().map_err(io_err)? {
            Some((key, raw)) if Some(key.value()) > purged_index => {
                Some(decode_entry(key.value(), raw.value())?.log_id())
            }
            _ => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: unwritten.or(written),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.commit(Change::Meta(VOTE, encode(vote)?), true).await
    }

    /// The committed id is a hint openraft can re-learn from the leader, so it is queued
    /// without waiting and written without a sync; the next synced write makes it durable.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.submit(Job {
            change: Change::Meta(COMMITTED, encode(&committed)?),
            durable: false,
            done: Done::Nothing,
        });
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_json::<Option<LogId>>(COMMITTED)?.flatten())
    }

    /// Returns once the entries are readable; `callback` hears when they are fdatasynced.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut batch = Vec::with_capacity(entries.len());
        for entry in &entries {
            batch.push((entry.index(), entry.log_id(), encode(entry)?));
        }
        self.shared.hold(&entries);
        self.submit(Job {
            change: Change::Append(batch),
            durable: true,
            done: Done::Flushed(callback),
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |id| id.index() + 1);
        self.commit(Change::TruncateFrom(start), true).await
    }

    /// Records `log_id` as purged and removes the first [`PURGE_BATCH`] entries up to it;
    /// the writes that follow remove the rest (see [`LogStore`]).
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let raw = encode(&log_id)?;
        let started = std::time::Instant::now();
        self.shared.owe_purge(log_id.index());
        self.commit(Change::Meta(LAST_PURGED, raw), true).await?;
        tracing::debug!(
            purged = log_id.index(),
            purge_ms = started.elapsed().as_secs_f64() * 1e3,
            "purged the log"
        );
        Ok(())
    }
}

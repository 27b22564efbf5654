//! The Raft log and vote in redb tables.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
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

/// The Raft log (`log` table, keyed by index) and vote (`meta` table).
///
/// Every method that changes what Raft counts as persisted (append, vote, truncate,
/// purge) returns only after the data file was fdatasynced.
#[derive(Clone)]
pub struct LogStore {
    pub(super) db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
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
        write_blocking(&self.db, durability, move |txn| {
            txn.open_table(META)?.insert(key, raw.as_slice())?;
            Ok(())
        })
        .await
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
        let last_purged: Option<LogId> = self.get_json(LAST_PURGED)?;
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let last = match table.last().map_err(io_err)? {
            Some((key, raw)) => Some(decode_entry(key.value(), raw.value())?.log_id()),
            None => last_purged,
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
        let written = write_blocking(&self.db, Durability::Immediate, move |txn| {
            let mut table = txn.open_table(LOG)?;
            for (index, raw) in &batch {
                table.insert(*index, raw.as_slice())?;
            }
            Ok(())
        })
        .await;
        let reported = written
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(reported);
        written
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |id| id.index() + 1);
        write_blocking(&self.db, Durability::Immediate, move |txn| {
            let mut log = txn.open_table(LOG)?;
            while log.last()?.is_some_and(|(index, _)| index.value() >= start) {
                log.pop_last()?;
            }
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let raw = encode(&log_id)?;
        let end = log_id.index();
        write_blocking(&self.db, Durability::Immediate, move |txn| {
            txn.open_table(META)?.insert(LAST_PURGED, raw.as_slice())?;
            super::remove_first_through(&mut txn.open_table(LOG)?, end)?;
            Ok(())
        })
        .await
    }
}

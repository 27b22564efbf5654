//! The Raft log and vote in sled trees.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};

use super::{decode, encode, io_err};
use crate::types::{Entry, LogId, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The Raft log (`log` tree, keyed by big-endian index) and vote (`raft` tree).
#[derive(Debug, Clone)]
pub struct SledLogStore {
    db: sled::Db,
    log: sled::Tree,
    raft: sled::Tree,
}

impl SledLogStore {
    pub(super) fn new(db: sled::Db) -> Result<Self, sled::Error> {
        Ok(SledLogStore {
            log: db.open_tree("log")?,
            raft: db.open_tree("raft")?,
            db,
        })
    }

    async fn flush(&self) -> Result<(), io::Error> {
        self.db.flush_async().await.map(|_| ()).map_err(io_err)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, io::Error> {
        match self.raft.get(key).map_err(io_err)? {
            Some(raw) => decode(&raw, key).map(Some),
            None => Ok(None),
        }
    }

    fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), io::Error> {
        self.raft.insert(key, encode(value)?).map_err(io_err)?;
        Ok(())
    }

    fn remove_from(&self, start: u64) -> Result<(), io::Error> {
        for key in self.log.range(start.to_be_bytes()..).keys() {
            self.log.remove(key.map_err(io_err)?).map_err(io_err)?;
        }
        Ok(())
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

fn decode_entry(key: &[u8], raw: &[u8]) -> Result<Entry, io::Error> {
    let index = key.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
    decode(raw, &format!("log entry {index}"))
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((start, end)) = to_range(&range) else {
            return Ok(Vec::new());
        };
        let end = end.map(|e| e.to_be_bytes());
        let iter = self.log.range((Bound::Included(start.to_be_bytes()), end));
        let mut entries = Vec::new();
        for item in iter {
            let (key, raw) = item.map_err(io_err)?;
            entries.push(decode_entry(&key, &raw)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_json(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_json(LAST_PURGED)?;
        let last = match self.log.last().map_err(io_err)? {
            Some((key, raw)) => Some(decode_entry(&key, &raw)?.log_id()),
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
        self.put_json(VOTE, vote)?;
        self.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.put_json(COMMITTED, &committed)
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&entry.index().to_be_bytes(), encode(&entry)?);
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        let flushed = self.flush().await;
        let reported = flushed
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(reported);
        flushed
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |id| id.index() + 1);
        self.remove_from(start)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.put_json(LAST_PURGED, &log_id)?;
        for key in self.log.range(..=log_id.index().to_be_bytes()).keys() {
            self.log.remove(key.map_err(io_err)?).map_err(io_err)?;
        }
        self.flush().await
    }
}

//! The log's writer: one thread that commits the log's writes (appends, votes,
//! truncations, purges, the committed id) in the order they were handed over, every
//! write queued meanwhile in the same transaction and the same fdatasync (group commit).
//!
//! openraft calls `append` on its core task and expects it back as soon as the entries
//! are readable; persistence is reported later, through the append's callback. Writing
//! and fdatasyncing inside `append` held the core task (client writes, replication
//! answers, commits) for every append's commit, several hundred times a second on a
//! leader under load. Now `append` leaves its entries in [`Shared::unwritten`], where
//! readers find them, and queues them; the writer commits them with whatever else was
//! queued, removes them from `unwritten` and only then reports them flushed.
//!
//! On a current-thread runtime (the deterministic simulation) a write is committed
//! inline, before the call returns, as everything there runs in an order the seed fixes.

use std::collections::BTreeMap;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use redb::{Database, Durability};

use super::log::PURGE_BATCH;
use super::{lock, LOG, META};
use crate::types::{Entry, LogId, TypeConfig};

/// Most writes one transaction commits: bounds the time the first of them waits for the
/// others to be written.
const MAX_JOBS: usize = 1024;

/// One write to the log or its metadata.
pub(super) enum Change {
    /// Entries to insert: index, log id (to find them in `unwritten` again), encoding.
    Append(Vec<(u64, LogId, Vec<u8>)>),
    /// A value of the `meta` table.
    Meta(&'static str, Vec<u8>),
    /// Removes the entries from this index on.
    TruncateFrom(u64),
}

/// Who learns that a write was committed.
pub(super) enum Done {
    /// openraft, through an append's callback.
    Flushed(IOFlushed<TypeConfig>),
    /// A caller awaiting the write.
    Reply(tokio::sync::oneshot::Sender<io::Result<()>>),
    /// Nobody (the committed id: a hint openraft can learn again).
    Nothing,
}

/// A write, whether it must be fdatasynced before it counts as done, and who to tell.
pub(super) struct Job {
    pub(super) change: Change,
    pub(super) durable: bool,
    pub(super) done: Done,
}

/// What the log's handles and its writer share.
pub(super) struct Shared {
    pub(super) db: Arc<Database>,
    /// Entries handed to `append` and not yet committed, by index. They are only ever
    /// above every entry in the table: an append follows the ones before it, and a
    /// truncation is committed before openraft appends again.
    unwritten: Mutex<BTreeMap<u64, Entry>>,
    /// One past the index of the last purged entry that may still be in the table
    /// (0: nothing left to remove).
    purge_debt: AtomicU64,
    /// Set by the first write that failed; every later one fails with it, so no write
    /// can land after a lost one and leave a hole.
    failed: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn new(db: Arc<Database>) -> Self {
        Shared {
            db,
            unwritten: Mutex::new(BTreeMap::new()),
            purge_debt: AtomicU64::new(0),
            failed: Mutex::new(None),
        }
    }

    /// Makes `entries` readable until the writer has committed them.
    pub(super) fn hold(&self, entries: &[Entry]) {
        let mut unwritten = lock(&self.unwritten);
        for entry in entries {
            unwritten.insert(entry.index(), entry.clone());
        }
    }

    /// The unwritten entries in `range` (copies), lowest index first.
    pub(super) fn unwritten_in(
        &self,
        range: (std::ops::Bound<u64>, std::ops::Bound<u64>),
    ) -> Vec<Entry> {
        lock(&self.unwritten)
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect()
    }

    /// The log id of the last unwritten entry.
    pub(super) fn last_unwritten(&self) -> Option<LogId> {
        lock(&self.unwritten)
            .last_key_value()
            .map(|(_, entry)| entry.log_id())
    }

    /// Records that every entry up to `index` is to be removed.
    pub(super) fn owe_purge(&self, index: u64) {
        self.purge_debt
            .fetch_max(index.saturating_add(1), Ordering::Relaxed);
    }

    /// The entries at most this index may still be in the table although purged.
    pub(super) fn purge_owed(&self) -> Option<u64> {
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

    /// Commits `jobs` in one transaction, which also removes a batch of purged entries,
    /// and tells each job's waiter; empties `jobs`.
    pub(super) fn run(&self, jobs: &mut Vec<Job>) {
        let earlier = lock(&self.failed).clone();
        let result = match earlier {
            Some(reason) => Err(reason),
            None => catch_unwind(AssertUnwindSafe(|| self.commit(jobs)))
                .unwrap_or_else(|panic| {
                    let what = super::panic_message(panic.as_ref());
                    Err(io::Error::other(format!("the log writer panicked: {what}")))
                })
                .map_err(|e| {
                    let reason = format!("a write to the Raft log failed: {e}");
                    tracing::error!(error = %e, "a write to the Raft log failed; the log takes no more writes");
                    *lock(&self.failed) = Some(reason.clone());
                    reason
                }),
        };
        if result.is_ok() {
            let mut unwritten = lock(&self.unwritten);
            for job in jobs.iter() {
                if let Change::Append(entries) = &job.change {
                    for (index, log_id, _) in entries {
                        if unwritten.get(index).map(|e| e.log_id()) == Some(*log_id) {
                            unwritten.remove(index);
                        }
                    }
                }
            }
        }
        for job in jobs.drain(..) {
            let answer = result
                .as_ref()
                .map(|_| ())
                .map_err(|reason| io::Error::other(reason.clone()));
            match job.done {
                Done::Flushed(callback) => callback.io_completed(answer),
                Done::Reply(reply) => {
                    let _ = reply.send(answer);
                }
                Done::Nothing => {}
            }
        }
    }

    fn commit(&self, jobs: &[Job]) -> io::Result<()> {
        let owed = self.purge_owed();
        let durability = if jobs.iter().any(|job| job.durable) {
            Durability::Immediate
        } else {
            Durability::None
        };
        let done = super::write(&self.db, durability, |txn| {
            {
                let mut log = txn.open_table(LOG)?;
                let mut meta = txn.open_table(META)?;
                for job in jobs {
                    match &job.change {
                        Change::Append(entries) => {
                            for (index, _, raw) in entries {
                                log.insert(*index, raw.as_slice())?;
                            }
                        }
                        Change::Meta(key, raw) => {
                            meta.insert(*key, raw.as_slice())?;
                        }
                        Change::TruncateFrom(first) => super::remove_from(&mut log, *first)?,
                    }
                }
            }
            let Some(last) = owed else {
                return Ok(true);
            };
            let mut log = txn.open_table(LOG)?;
            super::remove_first_through(&mut log, last, PURGE_BATCH)
        })?;
        self.purge_done(owed, done);
        Ok(())
    }
}

/// The writer thread and the queue to it. Dropping it (with the last handle of the log)
/// closes the queue and waits for the thread to commit what it holds and end, so the
/// data file is closed when the store is.
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread.
    pub(super) fn start(shared: Arc<Shared>) -> io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(move || {
                let mut batch = Vec::new();
                while let Ok(job) = jobs.recv() {
                    batch.push(job);
                    while batch.len() < MAX_JOBS {
                        match jobs.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    shared.run(&mut batch);
                }
            })?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `job`; gives it back if the writer has ended.
    pub(super) fn send(&self, job: Job) -> Result<(), Job> {
        match &self.queue {
            Some(queue) => queue.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

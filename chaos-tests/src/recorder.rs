//! The recorded history of a run, all stamped with the host's CLOCK_MONOTONIC (shared by
//! every namespace of one host, so stamps from workers, the observer and the harness
//! compare directly):
//! - each worker appends its own events (start, every write attempt) to
//!   `events/w-<pid>.jsonl`, one JSON object a line, written before it goes on;
//! - the observer watches that directory, opens a pidfd for every new worker and stamps
//!   the instant the process is gone (a SIGKILLed worker cannot log its own end);
//! - the harness records its faults and the operator's acknowledged commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What a worker records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// The worker process began (first thing it does).
    Start {
        /// Monotonic ns.
        t_ns: u64,
        /// Its pid.
        pid: i32,
        /// `FAILOVER_SITE`.
        site: String,
        /// `FAILOVER_INSTANCE`.
        instance: u32,
        /// `FAILOVER_EPOCH`, the fencing value it writes with.
        epoch: u64,
        /// The executor that started it.
        executor: String,
    },
    /// One fenced write to the ledger.
    Attempt {
        /// When the statement was sent (monotonic ns).
        t_ns: u64,
        /// When the answer came (monotonic ns).
        done_ns: u64,
        /// The fencing value written with.
        epoch: u64,
        /// What the ledger said.
        outcome: Outcome,
    },
}

/// The ledger's answer to one write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Written, with its ledger sequence number.
    Accepted {
        /// The row's `seq`.
        seq: i64,
    },
    /// Refused by the fencing check: the ledger has seen a higher value.
    Refused {
        /// The highest value the ledger had seen.
        highest: i64,
    },
    /// No answer (connection lost, timeout): the write may or may not have happened.
    Error {
        /// Why.
        message: String,
    },
}

/// Appends one event as a JSON line (one `write` call, so a killed writer leaves whole
/// lines behind).
pub fn append(file: &mut std::fs::File, event: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)
}

/// Everything one worker process recorded, with the instant it was seen to end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerLog {
    /// Its pid.
    pub pid: i32,
    /// Site, instance, epoch and start of the process.
    pub site: String,
    /// `FAILOVER_INSTANCE`.
    pub instance: u32,
    /// The fencing value it wrote with.
    pub epoch: u64,
    /// The executor that ran it.
    pub executor: String,
    /// Monotonic ns of its start.
    pub start_ns: u64,
    /// Monotonic ns at which the observer saw it gone (None: still running at the end of
    /// the run, or never observed).
    pub exit_ns: Option<u64>,
    /// Its last own record (a lower bound of its end).
    pub last_ns: u64,
    /// Whether it was still running when the run's history was collected.
    pub alive_at_end: bool,
    /// Every write attempt.
    pub attempts: Vec<Attempt>,
}

/// One write attempt of [`WorkerLog`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    /// Sent at (monotonic ns).
    pub t_ns: u64,
    /// Answered at (monotonic ns).
    pub done_ns: u64,
    /// The fencing value.
    pub epoch: u64,
    /// The answer.
    pub outcome: Outcome,
}

impl WorkerLog {
    /// The end of the process as best known: the observed exit, else its last record.
    pub fn end_ns(&self, run_end_ns: u64) -> u64 {
        match self.exit_ns {
            Some(t) => t,
            None if self.alive_at_end => run_end_ns,
            None => self.last_ns,
        }
    }
}

/// Reads every worker's events from a directory and joins the observed exits.
pub fn read_workers(dir: &Path, exits: &BTreeMap<i32, Option<u64>>) -> Vec<WorkerLog> {
    let mut logs = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return logs;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut log: Option<WorkerLog> = None;
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<WorkerEvent>(line) else {
                continue;
            };
            match (event, &mut log) {
                (
                    WorkerEvent::Start {
                        t_ns,
                        pid,
                        site,
                        instance,
                        epoch,
                        executor,
                    },
                    None,
                ) => {
                    log = Some(WorkerLog {
                        pid,
                        site,
                        instance,
                        epoch,
                        executor,
                        start_ns: t_ns,
                        exit_ns: exits.get(&pid).copied().flatten(),
                        last_ns: t_ns,
                        attempts: Vec::new(),
                        alive_at_end: false,
                    })
                }
                (
                    WorkerEvent::Attempt {
                        t_ns,
                        done_ns,
                        epoch,
                        outcome,
                    },
                    Some(l),
                ) => {
                    l.last_ns = l.last_ns.max(done_ns);
                    l.attempts.push(Attempt {
                        t_ns,
                        done_ns,
                        epoch,
                        outcome,
                    });
                }
                _ => {}
            }
        }
        if let Some(mut l) = log {
            l.alive_at_end = matches!(exits.get(&l.pid), Some(None));
            logs.push(l);
        }
    }
    logs.sort_by_key(|l| l.start_ns);
    logs
}

/// Watches the worker events directory and stamps each worker's exit with a pidfd.
pub struct Observer {
    stop: Arc<AtomicBool>,
    exits: Arc<Mutex<BTreeMap<i32, Option<u64>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    /// Starts watching `dir` (files named `w-<pid>.jsonl`).
    pub fn start(dir: PathBuf) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let exits = Arc::new(Mutex::new(BTreeMap::new()));
        let thread = {
            let stop = stop.clone();
            let exits = exits.clone();
            std::thread::spawn(move || watch(&dir, &stop, &exits))
        };
        Observer {
            stop,
            exits,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns each seen worker's exit (None: still running).
    pub fn finish(mut self) -> BTreeMap<i32, Option<u64>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.exits.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the directory is listed for new workers (pidfds wake at once on exit).
const SCAN_INTERVAL: Duration = Duration::from_millis(10);

fn watch(dir: &Path, stop: &AtomicBool, exits: &Mutex<BTreeMap<i32, Option<u64>>>) {
    let mut open: Vec<(i32, libc::c_int)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        for pid in new_pids(dir, exits) {
            // SAFETY: pidfd_open on a pid; a failure means it is already gone.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
            let gone = if fd < 0 { Some(now_ns()) } else { None };
            if let Ok(mut e) = exits.lock() {
                e.insert(pid, gone);
            }
            if fd >= 0 {
                open.push((pid, fd));
            }
        }
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll over pollfds we own; an empty set just sleeps.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                SCAN_INTERVAL.as_millis() as i32,
            )
        };
        if n <= 0 {
            continue;
        }
        let t = now_ns();
        let mut still = Vec::new();
        for ((pid, fd), p) in open.into_iter().zip(&fds) {
            if p.revents != 0 {
                if let Ok(mut e) = exits.lock() {
                    e.insert(pid, Some(t));
                }
                // SAFETY: closing a pidfd we opened.
                unsafe { libc::close(fd) };
            } else {
                still.push((pid, fd));
            }
        }
        open = still;
    }
    for (_, fd) in open {
        // SAFETY: closing a pidfd we opened.
        unsafe { libc::close(fd) };
    }
}

fn new_pids(dir: &Path, exits: &Mutex<BTreeMap<i32, Option<u64>>>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let known = exits.lock().map(|e| e.clone()).unwrap_or_default();
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("w-")?
                .strip_suffix(".jsonl")?
                .parse::<i32>()
                .ok()
        })
        .filter(|pid| !known.contains_key(pid))
        .collect()
}

/// What the harness records about a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HarnessEvent {
    /// A fault began.
    FaultStart {
        /// Monotonic ns.
        t_ns: u64,
        /// What it is.
        fault: String,
        /// The site it hits, if one.
        site: Option<String>,
        /// Whether it takes the active site away from the quorum (cut, freeze).
        isolates_site: bool,
        /// Whether the Raft leader was at that site.
        leader_at_site: bool,
    },
    /// A fault was healed.
    FaultEnd {
        /// Monotonic ns.
        t_ns: u64,
        /// What it was.
        fault: String,
    },
    /// The operator's promote (or demote, with `site` None) was acknowledged.
    Acknowledged {
        /// Monotonic ns of the answer.
        t_ns: u64,
        /// `promote` or `demote`.
        command: String,
        /// The site promoted.
        site: Option<String>,
        /// The epoch the answer named.
        epoch: u64,
    },
    /// Something the harness noted (a command refused, a restart).
    Note {
        /// Monotonic ns.
        t_ns: u64,
        /// Text.
        text: String,
    },
}

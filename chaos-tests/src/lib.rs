//! The chaos harness: a Jepsen-style harness for `failover`.
//!
//! It starts real multi-site clusters (each site in its own network namespace), runs a
//! real PostgreSQL ledger as the downstream store, injects real faults (links down,
//! iptables drops, SIGKILL, SIGSTOP, tc), and checks S1, S2, S3, L1, L2 and L3 on the
//! recorded history.
//!
//! # Layout
//! - [`baseline`]: the etcd-lock baseline (no fencing);
//! - [`sites`]: the sites file and the per-run topology with namespace addresses;
//! - [`netns`]: namespaces, veth links, the bridge, network faults, cleanup;
//! - [`procs`]: controllers, executors and PostgreSQL as processes;
//! - [`workload`]: PostgreSQL, the fenced ledger and the worker;
//! - [`recorder`]: the history (worker events, observed exits, harness events);
//! - [`cluster`]: the operator's CLI;
//! - [`faults`]: the scenarios;
//! - [`runner`]: one run from start to teardown;
//! - [`session`]: runs of scenarios by seed, and their results;
//! - [`checker`]: the rules, over a history;
//! - [`report`]: results and the table.

#![warn(missing_docs, unreachable_pub)]

pub mod baseline;
pub mod checker;
pub mod cluster;
pub mod faults;
pub mod netns;
pub mod procs;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod session;
pub mod sites;
pub mod workload;

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C (or SIGTERM) was received: every wait gives up and the run cleans up.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Marks the session interrupted (called from the signal handler).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

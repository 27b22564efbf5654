//! The site executor: runs an engine's workers only while its site holds the lease.
//!
//! # Layout
//! - [`deregister`]: the clean-stop notice to the leader.
//! - [`executor`]: the supervisor loop: lease session → workers, restarts, health,
//!   drains, rolling reloads, reports to the controllers.
//! - [`worker`]: one worker slot's guard process and the events it reports.
//! - [`guard`]: the guard itself (`failover guard`): holds the deadline, kills the tree,
//!   carries the worker's output.
//! - [`contain`]: a cgroup v2 per worker tree where the machine allows it, else process
//!   group, subreaper and an environment marker.
//! - [`output`]: rotating per-instance log files and the prefixed copy on stderr.
//! - [`report`]: the heartbeat report to the leader, sent off the supervisor loop.
//! - [`guards`]: every live guard, which gates giving the lease back.
//! - [`health`]: command and HTTP health checks.
//! - [`monotonic`]: CLOCK_MONOTONIC nanoseconds, shared by executor and guards.
//!
//! The safety rule is simple and lives in one place: a worker tree runs under a guard
//! whose deadline is the lease's `valid_until`, so no worker outlives the lease that
//! allowed it, whether or not the executor is alive or scheduled.
#![warn(missing_docs, unreachable_pub)]

pub mod contain;
pub mod deregister;
pub mod executor;
pub mod guard;
pub mod guards;
pub mod health;
pub mod monotonic;
pub mod output;
pub mod report;
pub mod worker;

pub use contain::Containment;
pub use executor::{run, Control, ExecutorError, ExecutorOptions};
pub use output::OutputOptions;

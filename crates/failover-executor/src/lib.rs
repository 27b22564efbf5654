//! The site executor: runs an engine's workers only while its site holds the lease.
//!
//! What to run and when is decided by the supervisor in failover-core
//! ([`failover_core::executor`]); this crate is its driver: processes, signals, cgroups,
//! logs, health checks, the lease session and reports.
//!
//! # Layout
//! - [`driver`]: the loop: events in, supervisor decisions out, actions carried out.
//! - [`options`]: what `failover exec` is told, and the checks that refuse bad options.
//! - [`session`]: the lease session as the supervisor and the log see it.
//! - `report`: the heartbeat report, delivered to the leader off the driver loop.
//! - [`deregister`]: the clean-stop notice to the leader.
//! - [`worker`]: one worker's guard process and the typed events it reports.
//! - [`guard`]: the guard itself (`failover guard`): holds the deadline, kills the tree,
//!   carries the worker's output.
//! - [`contain`]: a cgroup v2 per worker tree where the machine allows it, else process
//!   group, subreaper and an environment marker.
//! - [`output`]: rotating per-instance log files and the prefixed copy on stderr.
//! - [`health`]: command and HTTP health checks.
//! - [`monotonic`]: CLOCK_MONOTONIC nanoseconds, shared by executor and guards, and the
//!   conversion of the injected clock's deadlines into them.
//!
//! The safety rule is simple and lives in one place: a worker tree runs under a guard
//! whose deadline is the lease's `valid_until`, so no worker outlives the lease that
//! allowed it, whether or not the executor is alive or scheduled.
#![warn(missing_docs, unreachable_pub)]

pub mod contain;
pub mod deregister;
pub mod driver;
pub mod guard;
pub mod health;
pub mod monotonic;
pub mod options;
pub mod output;
mod report;
pub mod session;
pub mod worker;

pub use contain::Containment;
pub use driver::run;
pub use options::{check_command, Control, ExecutorError, ExecutorOptions};
pub use output::OutputOptions;

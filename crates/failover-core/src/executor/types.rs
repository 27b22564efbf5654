//! What goes into the supervisor (configuration, lease views, worker ends) and what comes
//! out of it (actions the driver owes).

use std::time::{Duration, Instant};

use crate::supervision::RestartPolicy;
use crate::{Epoch, FencingToken};

/// Identifies one worker (one guard and its tree) for its whole life: bumped by every
/// start, never reused, so a late event about a replaced worker is recognised and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u64);

/// The supervisor's fixed bounds. Every timer the supervisor keeps is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Number of worker slots (instances); at least 1.
    pub instances: u32,
    /// Time a worker gets between TERM and KILL; no worker starts later than this before
    /// the lease deadline, since its guard would stop it at once.
    pub stop_grace: Duration,
    /// Time workers get to stop on a planned switchover before the lease is released.
    pub drain_timeout: Duration,
    /// Restart backoff and crash-loop bounds.
    pub restart: RestartPolicy,
    /// Whether workers have a health check (else a reload's new worker counts as healthy
    /// once it ran for `settle_without_check_ms`).
    pub health_checked: bool,
    /// How often each running worker is checked.
    pub health_interval: Duration,
    /// How long a worker may keep failing its health check before the executor is
    /// unhealthy.
    pub unhealthy_after: Duration,
    /// How long an unhealthy executor stays out before it tries to take the lease again.
    pub unhealthy_cooldown: Duration,
    /// How long a rolling reload may take before it is rolled back.
    pub reload_timeout: Duration,
    /// Without a health check, a reload's new worker counts as healthy after running this
    /// long.
    pub settle_without_check: Duration,
}

impl SupervisorConfig {
    /// The bounds `failover exec` uses, for `instances` workers with `stop_grace` and
    /// `drain_timeout` as given on its command line.
    pub fn new(instances: u32, stop_grace: Duration, drain_timeout: Duration) -> Self {
        SupervisorConfig {
            instances,
            stop_grace,
            drain_timeout,
            restart: RestartPolicy::default(),
            health_checked: false,
            health_interval: Duration::from_secs(1),
            unhealthy_after: Duration::from_secs(10),
            unhealthy_cooldown: Duration::from_secs(30),
            reload_timeout: Duration::from_secs(30),
            settle_without_check: Duration::from_secs(1),
        }
    }
}

/// The lease as the executor's lease session last published it, reduced to what the
/// supervisor decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseView {
    /// Held: workers may run until `valid_until` (the session already took drift and the
    /// stop grace off it).
    Held {
        /// The epoch (the workers' fencing value).
        epoch: Epoch,
        /// The lease's token; a new token means a new lease.
        token: FencingToken,
        /// When every worker must be gone unless the lease is renewed.
        valid_until: Instant,
    },
    /// A promotion away from this site began: stop the workers, then release.
    Draining {
        /// When every worker must be gone at the latest.
        valid_until: Instant,
    },
    /// Standby, lost, or not yet in touch: nothing may run.
    NotHeld,
}

/// How a worker tree ended, as its guard (or the driver, when the guard died) reported
/// it. Whether that is a crash is decided from this type and from whether a stop was
/// asked for, never from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// The worker exited by itself with this status.
    Exited(i32),
    /// The worker was killed by this signal, not sent by its guard.
    Signalled(i32),
    /// The guard ended the tree: a stop was asked for, its deadline passed, or the guard
    /// itself was told to stop. Never a crash.
    StoppedByGuard,
    /// The guard could not start the worker.
    FailedToStart,
    /// The guard died without reporting; the driver killed the tree.
    GuardLost,
    /// The driver could not start the guard at all.
    SpawnFailed,
}

impl WorkerExit {
    /// Whether the tree ended without its guard ending it: a crash unless a stop was
    /// asked for.
    pub fn ended_on_its_own(self) -> bool {
        !matches!(self, WorkerExit::StoppedByGuard)
    }
}

impl std::fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerExit::Exited(code) => write!(f, "exited {code}"),
            WorkerExit::Signalled(signal) => write!(f, "killed by signal {signal}"),
            WorkerExit::StoppedByGuard => f.write_str("stopped by its guard"),
            WorkerExit::FailedToStart => f.write_str("could not be started by its guard"),
            WorkerExit::GuardLost => f.write_str("guard died; tree killed by the executor"),
            WorkerExit::SpawnFailed => f.write_str("guard could not be started"),
        }
    }
}

/// An obligation the supervisor hands its driver. The driver takes them with
/// [`Supervisor::poll_action`](super::Supervisor::poll_action) after every `handle_*`
/// call and carries them out in the order given; every action that starts something
/// (a worker, a health check) is answered later by a `handle_*` call about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a guard with its worker for slot `instance`. The guard must kill the tree
    /// by `deadline`. Answered by `handle_worker_started` and, always, by one
    /// `handle_worker_ended` (with [`WorkerExit::SpawnFailed`] if the guard cannot start).
    Start {
        /// The new worker.
        worker: WorkerId,
        /// Its slot (FAILOVER_INSTANCE, PORT offset).
        instance: u32,
        /// The lease's epoch (FAILOVER_EPOCH and the fencing value).
        epoch: Epoch,
        /// The lease's token (logged).
        token: FencingToken,
        /// The lease deadline the guard enforces.
        deadline: Instant,
    },
    /// Give a running guard a later deadline (the lease was renewed).
    Extend {
        /// The worker.
        worker: WorkerId,
        /// Its new deadline.
        deadline: Instant,
    },
    /// Stop a worker: TERM now, KILL after `grace` (or by its deadline).
    Stop {
        /// The worker.
        worker: WorkerId,
        /// Time between TERM and KILL.
        grace: Duration,
    },
    /// Run the health check of a worker; answered by one `handle_health`.
    CheckHealth {
        /// The worker.
        worker: WorkerId,
        /// Its slot (the check runs with that slot's environment and port).
        instance: u32,
    },
    /// Every worker tree is gone after a drain: release the lease now.
    ReleaseLease,
    /// The executor became unhealthy: stop following the lease session (start nothing
    /// from it) but keep it renewing until [`Action::ReleaseDetached`].
    DetachLease,
    /// Every worker tree of the detached session is gone: give that lease up.
    ReleaseDetached,
    /// The unhealthy cooldown is over: start a new lease session.
    Reacquire,
    /// Shutdown complete (every tree gone): close the sessions, deregister, exit.
    Exit,
}

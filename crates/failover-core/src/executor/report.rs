//! What the supervisor says about its slots and itself: the executor's heartbeat report
//! to the controllers is built from this.

use std::time::{Duration, Instant};

use super::{Supervisor, WorkerId};

/// Health of one worker as last checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Not checked yet (or no health check).
    Unknown,
    /// The last check passed.
    Healthy,
    /// Checks have failed since `since`.
    Unhealthy {
        /// The first failure of the current run of failures.
        since: Instant,
    },
}

impl HealthState {
    pub(super) fn record(self, ok: bool, now: Instant) -> HealthState {
        match (ok, self) {
            (true, _) => HealthState::Healthy,
            (false, HealthState::Unhealthy { since }) => HealthState::Unhealthy { since },
            (false, _) => HealthState::Unhealthy { since: now },
        }
    }
}

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// No worker and none due.
    Stopped,
    /// Waiting out the restart backoff after a crash.
    Backoff,
    /// Its guard was started; the worker's pid is not known yet.
    Starting,
    /// The worker runs.
    Running,
    /// A stop was asked for; the tree is not gone yet.
    Stopping,
}

/// One slot as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotReport {
    /// The slot (instance number).
    pub instance: u32,
    /// What it is doing.
    pub state: SlotState,
    /// Its current worker, if any.
    pub worker: Option<WorkerId>,
    /// The worker's pid, once known.
    pub pid: Option<u32>,
    /// How long the worker has run (zero unless running).
    pub uptime: Duration,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Health of its worker.
    pub health: HealthState,
}

impl Supervisor {
    /// Every slot as it is at `now`.
    pub fn slots(&self, now: Instant) -> Vec<SlotReport> {
        self.slots
            .iter()
            .enumerate()
            .map(|(instance, slot)| {
                let live = slot.worker.and_then(|w| self.live.get(&w));
                let state = match live {
                    Some(live) if live.stopping => SlotState::Stopping,
                    Some(live) if live.pid.is_some() => SlotState::Running,
                    Some(_) => SlotState::Starting,
                    None if slot.restart_at.is_some() => SlotState::Backoff,
                    None => SlotState::Stopped,
                };
                let uptime = match (state, live) {
                    (SlotState::Running, Some(live)) => {
                        now.saturating_duration_since(live.started_at)
                    }
                    _ => Duration::ZERO,
                };
                SlotReport {
                    instance: instance as u32,
                    state,
                    worker: slot.worker,
                    pid: live.and_then(|l| l.pid),
                    uptime,
                    restarts: slot.restarts.count,
                    health: live.map_or(HealthState::Unknown, |l| l.health),
                }
            })
            .collect()
    }

    /// Whether this executor could take the lease now: healthy and no slot crash-looping
    /// (its site reports not ready for a takeover otherwise).
    pub fn ready(&self, now: Instant) -> bool {
        self.unhealthy.is_none() && !self.slots.iter().any(|s| s.restarts.crash_looping(now))
    }

    /// Why the executor is unhealthy (sitting out its cooldown), if it is.
    pub fn unhealthy_reason(&self) -> Option<&str> {
        self.unhealthy.as_ref().map(|u| u.reason.as_str())
    }

    /// How many workers were started and have not been heard end (every slot, reload and
    /// retiring worker).
    pub fn live_workers(&self) -> usize {
        self.live.len()
    }

    /// Whether [`Action::Exit`](super::Action::Exit) was handed out.
    pub fn exited(&self) -> bool {
        self.exited
    }
}

//! The executor's supervisor: which workers run, when they start, stop and restart, how a
//! rolling reload proceeds, when an executor is unhealthy and when the lease goes back.
//!
//! Sans-IO like the rest of the core: no clock, no processes, no async. The driver
//! (`failover-executor`) feeds events with the time they happened and carries out the
//! [`Action`]s this returns.
//!
//! # Driver contract
//! - Input events are the `handle_*` methods; each takes `now`, which never goes
//!   backwards (asserted).
//! - After every `handle_*` call, the driver takes every action with
//!   [`Supervisor::poll_action`] and carries them out in order.
//! - [`Supervisor::handle_tick`] is called at least every [`TICK`]: restarts, health
//!   checks, the unhealthy cooldown and reload steps are due on ticks.
//! - Every [`Action::Start`] is answered by exactly one `handle_worker_ended` (the tree is
//!   gone), and every [`Action::CheckHealth`] by one `handle_health`.
//!
//! # Safety (asserted here, proven by the property tests)
//! - No worker starts unless the lease is held, not draining, and its deadline is more
//!   than a stop grace away; none after shutdown or while unhealthy.
//! - The lease is released (drained, detached, or at shutdown) only once every worker
//!   this supervisor started has ended, or is past the last deadline its guard was given
//!   (by which the guard kills the tree on its own).
//!
//! # Layout
//! - [`types`]: configuration, inputs and actions.
//! - `reload`: the rolling reload's plan.
//! - [`report`]: what the executor reports about its slots.

mod reload;
pub mod report;
pub mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::supervision::Restarts;
use crate::{Epoch, FencingToken};

pub use reload::ReloadOutcome;
pub use report::{HealthState, SlotReport, SlotState};
pub use types::{Action, LeaseView, SupervisorConfig, WorkerExit, WorkerId};

use reload::Reload;

/// How often the driver must call [`Supervisor::handle_tick`] at the least.
pub const TICK: Duration = Duration::from_millis(100);

/// Bound on actions waiting for the driver: more means the driver does not poll.
const MAX_PENDING_ACTIONS: usize = 4096;

/// The lease as the supervisor holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Running {
        epoch: Epoch,
        token: FencingToken,
        valid_until: Instant,
    },
    Draining {
        valid_until: Instant,
    },
}

/// What a live worker is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The current worker of its slot.
    Slot,
    /// A reload's new worker, not yet in its slot.
    Candidate,
    /// Out of its slot (replaced, rolled back, or stopped with its slot emptied) and
    /// stopping.
    Retiring,
}

/// A worker started and not yet heard end.
#[derive(Debug, Clone, Copy)]
struct Live {
    instance: u32,
    role: Role,
    started_at: Instant,
    pid: Option<u32>,
    stopping: bool,
    /// The latest deadline its guard was given.
    deadline: Instant,
    health: HealthState,
    last_check: Option<Instant>,
    check_in_flight: bool,
}

/// One worker slot.
#[derive(Debug, Clone)]
struct Slot {
    worker: Option<WorkerId>,
    restarts: Restarts,
    restart_at: Option<Instant>,
}

/// Why the executor is out, and until when.
#[derive(Debug, Clone)]
struct Unhealthy {
    until: Instant,
    reason: String,
    /// The detached lease is not yet given up (a tree may still run).
    release_pending: bool,
}

/// The supervisor of one executor's workers. See the module doc for the driver contract.
#[derive(Debug)]
pub struct Supervisor {
    config: SupervisorConfig,
    held: Option<Held>,
    slots: Vec<Slot>,
    live: BTreeMap<WorkerId, Live>,
    next_worker: u64,
    reload: Option<Reload>,
    reload_done: ReloadOutcome,
    reload_asked: u64,
    unhealthy: Option<Unhealthy>,
    shutting_down: bool,
    exited: bool,
    last_now: Option<Instant>,
    actions: VecDeque<Action>,
}

impl Supervisor {
    /// A supervisor with empty slots and no lease.
    pub fn new(config: SupervisorConfig) -> Self {
        assert!(
            config.instances >= 1,
            "an executor runs at least one worker"
        );
        let slots = (0..config.instances)
            .map(|_| Slot {
                worker: None,
                restarts: Restarts::new(config.restart),
                restart_at: None,
            })
            .collect();
        Supervisor {
            config,
            held: None,
            slots,
            live: BTreeMap::new(),
            next_worker: 1,
            reload: None,
            reload_done: ReloadOutcome::none(),
            reload_asked: 0,
            unhealthy: None,
            shutting_down: false,
            exited: false,
            last_now: None,
            actions: VecDeque::new(),
        }
    }

    /// The next action the driver owes, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The lease session published a new state.
    pub fn handle_lease(&mut self, now: Instant, lease: LeaseView) {
        self.advance_clock(now);
        if self.unhealthy.is_some() || self.shutting_down {
            // The session is detached or closing: nothing it says starts anything.
            return;
        }
        match lease {
            LeaseView::Held {
                epoch,
                token,
                valid_until,
            } => self.on_held(now, epoch, token, valid_until),
            LeaseView::Draining { valid_until } => self.on_draining(now, valid_until),
            LeaseView::NotHeld => {
                self.held = None;
                self.abort_reload("the lease was lost");
                self.stop_all(self.config.stop_grace);
            }
        }
    }

    fn on_held(&mut self, now: Instant, epoch: Epoch, token: FencingToken, until: Instant) {
        let held = Held::Running {
            epoch,
            token,
            valid_until: until,
        };
        match self.held {
            Some(Held::Running { token: same, .. }) if same == token => {
                self.held = Some(held);
                self.extend_all(until);
            }
            Some(_) => {
                // A new lease (or one taken again after a drain): the old workers run
                // under a deadline that is not this lease's; they go first.
                self.abort_reload("the lease changed");
                self.stop_all(self.config.stop_grace);
                self.held = Some(held);
            }
            None => {
                self.held = Some(held);
                for slot in &mut self.slots {
                    slot.restart_at = None;
                }
                // At once rather than at the next tick: this is the last step of a failover.
                self.start_due_workers(now);
            }
        }
    }

    fn on_draining(&mut self, now: Instant, valid_until: Instant) {
        let Some(Held::Running { .. }) = self.held else {
            return;
        };
        self.held = Some(Held::Draining { valid_until });
        let left = valid_until.saturating_duration_since(now);
        self.abort_reload("a drain began");
        self.stop_all(self.config.drain_timeout.min(left));
        // Nothing may be running at all: then the lease goes back now.
        self.release_if_gone(now);
    }

    /// The guard of `worker` reports the worker runs as `pid`.
    pub fn handle_worker_started(&mut self, now: Instant, worker: WorkerId, pid: u32) {
        self.advance_clock(now);
        if let Some(live) = self.live.get_mut(&worker) {
            live.pid = Some(pid);
        }
    }

    /// The tree of `worker` is gone, ended as `exit`.
    pub fn handle_worker_ended(&mut self, now: Instant, worker: WorkerId, exit: WorkerExit) {
        self.advance_clock(now);
        let Some(live) = self.live.remove(&worker) else {
            return;
        };
        match live.role {
            Role::Retiring => {}
            Role::Candidate => {
                if let Some(reload) = &mut self.reload {
                    reload.candidates.retain(|c| *c != worker);
                }
                let why = format!(
                    "new worker {} ended during the reload ({exit})",
                    live.instance
                );
                self.abort_reload(&why);
            }
            Role::Slot => self.on_slot_ended(now, worker, live, exit),
        }
        self.release_if_gone(now);
    }

    fn on_slot_ended(&mut self, now: Instant, worker: WorkerId, live: Live, exit: WorkerExit) {
        let holding = self.holds_running();
        let slot = &mut self.slots[live.instance as usize];
        assert_eq!(
            slot.worker,
            Some(worker),
            "a slot's worker is the one ending"
        );
        slot.worker = None;
        if !live.stopping && exit.ended_on_its_own() && holding {
            slot.restart_at = Some(slot.restarts.on_exit(live.started_at, now));
        } else {
            slot.restarts.on_stopped();
        }
    }

    /// A health check of `worker` answered `healthy`.
    pub fn handle_health(&mut self, now: Instant, worker: WorkerId, healthy: bool) {
        self.advance_clock(now);
        if let Some(live) = self.live.get_mut(&worker) {
            live.check_in_flight = false;
            live.health = live.health.record(healthy, now);
        }
    }

    /// The operator asked this executor for a reload (SIGHUP).
    pub fn handle_local_reload(&mut self, now: Instant) {
        let generation = self.reload_asked.max(self.reload_done.generation) + 1;
        self.begin_reload(now, generation);
    }

    /// The leader asks for reload `generation` (`failover reload`); ignored if it was
    /// already asked for or done.
    pub fn handle_cluster_reload(&mut self, now: Instant, generation: u64) {
        if generation > self.reload_done.generation && generation > self.reload_asked {
            self.begin_reload(now, generation);
        }
    }

    /// Stop every worker, release the lease once they are gone, then [`Action::Exit`].
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.advance_clock(now);
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.abort_reload("the executor is shutting down");
        self.stop_all(self.config.stop_grace);
        self.release_if_gone(now);
    }

    /// Periodic work, in this order: a release that became due, the unhealthy verdict
    /// and its cooldown, restarts due, health checks due, the next reload step.
    pub fn handle_tick(&mut self, now: Instant) {
        self.advance_clock(now);
        self.release_if_gone(now);
        // Before any start: a crash-looping slot is not started once more only to be
        // stopped in the same tick.
        self.check_unhealthy(now);
        self.start_due_workers(now);
        self.check_health(now);
        self.advance_reload(now);
    }

    fn advance_clock(&mut self, now: Instant) {
        if let Some(last) = self.last_now {
            assert!(now >= last, "time went backwards: {now:?} < {last:?}");
        }
        self.last_now = Some(now);
        assert!(
            self.actions.len() <= MAX_PENDING_ACTIONS,
            "the driver does not take the supervisor's actions"
        );
    }

    fn holds_running(&self) -> bool {
        matches!(self.held, Some(Held::Running { .. }))
    }

    /// The lease a worker may start under at `now`, if any: held, not draining, its
    /// deadline more than a stop grace away, the executor healthy and not stopping.
    fn may_start(&self, now: Instant) -> Option<(Epoch, FencingToken, Instant)> {
        if self.shutting_down || self.unhealthy.is_some() {
            return None;
        }
        match self.held {
            Some(Held::Running {
                epoch,
                token,
                valid_until,
            }) if now + self.config.stop_grace < valid_until => Some((epoch, token, valid_until)),
            _ => None,
        }
    }

    /// Starts a worker for `instance` with `role`; `None` when the lease does not allow
    /// a start now.
    fn start(&mut self, now: Instant, instance: u32, role: Role) -> Option<WorkerId> {
        let (epoch, token, deadline) = self.may_start(now)?;
        assert!(
            now + self.config.stop_grace < deadline && !self.shutting_down,
            "a worker starts only under a lease a stop grace away from its deadline"
        );
        let worker = WorkerId(self.next_worker);
        self.next_worker += 1;
        self.live.insert(
            worker,
            Live {
                instance,
                role,
                started_at: now,
                pid: None,
                stopping: false,
                deadline,
                health: HealthState::Unknown,
                last_check: None,
                check_in_flight: false,
            },
        );
        self.actions.push_back(Action::Start {
            worker,
            instance,
            epoch,
            token,
            deadline,
        });
        Some(worker)
    }

    fn start_due_workers(&mut self, now: Instant) {
        if self.may_start(now).is_none() {
            return;
        }
        for instance in 0..self.config.instances {
            let slot = &self.slots[instance as usize];
            let due = slot.worker.is_none() && slot.restart_at.is_none_or(|at| now >= at);
            if due {
                let worker = self.start(now, instance, Role::Slot);
                let slot = &mut self.slots[instance as usize];
                slot.restart_at = None;
                slot.worker = worker;
            }
        }
    }

    fn stop(&mut self, worker: WorkerId, grace: Duration) {
        if let Some(live) = self.live.get_mut(&worker) {
            if !live.stopping {
                live.stopping = true;
                self.actions.push_back(Action::Stop { worker, grace });
            }
        }
    }

    /// Stops every slot's worker; pending restarts are dropped.
    fn stop_all(&mut self, grace: Duration) {
        let workers: Vec<WorkerId> = self
            .slots
            .iter_mut()
            .filter_map(|slot| {
                slot.restart_at = None;
                slot.worker
            })
            .collect();
        for worker in workers {
            self.stop(worker, grace);
        }
    }

    fn extend_all(&mut self, deadline: Instant) {
        for (worker, live) in &mut self.live {
            // A stopping guard keeps the deadline it had: it is on its way out.
            if !live.stopping && deadline > live.deadline {
                live.deadline = deadline;
                self.actions.push_back(Action::Extend {
                    worker: *worker,
                    deadline,
                });
            }
        }
    }

    /// Whether, at `now`, no tree this supervisor started can still run.
    fn trees_gone(&self, now: Instant) -> bool {
        self.live.values().all(|live| now >= live.deadline)
    }

    /// Once every tree is gone: a drained lease goes back, a detached one is given up,
    /// and a shutdown completes.
    fn release_if_gone(&mut self, now: Instant) {
        if !self.trees_gone(now) {
            return;
        }
        if let Some(Held::Draining { .. }) = self.held {
            self.held = None;
            self.owe_release(now, Action::ReleaseLease);
        }
        if let Some(unhealthy) = &mut self.unhealthy {
            if unhealthy.release_pending {
                unhealthy.release_pending = false;
                self.owe_release(now, Action::ReleaseDetached);
            }
        }
        if self.shutting_down && !self.exited {
            self.exited = true;
            self.owe_release(now, Action::Exit);
        }
    }

    /// Hands out an action that gives the lease back: asserted never while a tree this
    /// supervisor started may still run.
    fn owe_release(&mut self, now: Instant, action: Action) {
        assert!(
            self.trees_gone(now),
            "{action:?} while a worker tree may still run"
        );
        self.actions.push_back(action);
    }

    fn check_health(&mut self, now: Instant) {
        if !self.config.health_checked || self.held.is_none() {
            return;
        }
        let interval = self.config.health_interval;
        for (worker, live) in &mut self.live {
            // A reload's new worker is checked as often as its checks answer: the reload
            // waits on it.
            let due = match live.role {
                Role::Retiring => false,
                Role::Candidate => true,
                Role::Slot => live
                    .last_check
                    .is_none_or(|at| now.saturating_duration_since(at) >= interval),
            };
            if due && !live.stopping && !live.check_in_flight {
                live.last_check = Some(now);
                live.check_in_flight = true;
                self.actions.push_back(Action::CheckHealth {
                    worker: *worker,
                    instance: live.instance,
                });
            }
        }
    }

    /// A crash loop or a long-failing health check makes the executor unhealthy: it stops
    /// its workers, gives the lease up once they are gone and stays out for a cooldown,
    /// so a site whose workers cannot run does not hold the group.
    fn check_unhealthy(&mut self, now: Instant) {
        if let Some(unhealthy) = &self.unhealthy {
            if now >= unhealthy.until && !unhealthy.release_pending && !self.shutting_down {
                self.unhealthy = None;
                for slot in &mut self.slots {
                    slot.restarts = Restarts::new(self.config.restart);
                }
                self.actions.push_back(Action::Reacquire);
            }
            return;
        }
        if self.shutting_down {
            return;
        }
        let Some(reason) = self.unhealthy_reason_at(now) else {
            return;
        };
        self.abort_reload("the executor became unhealthy");
        self.stop_all(self.config.stop_grace);
        self.held = None;
        self.unhealthy = Some(Unhealthy {
            until: now + self.config.unhealthy_cooldown,
            reason,
            release_pending: true,
        });
        self.actions.push_back(Action::DetachLease);
        self.release_if_gone(now);
    }

    fn unhealthy_reason_at(&self, now: Instant) -> Option<String> {
        self.slots.iter().enumerate().find_map(|(instance, slot)| {
            if slot.restarts.crash_looping(now) {
                return Some(format!("worker {instance} is crash-looping"));
            }
            let live = slot.worker.and_then(|w| self.live.get(&w))?;
            match live.health {
                HealthState::Unhealthy { since }
                    if now.saturating_duration_since(since) >= self.config.unhealthy_after =>
                {
                    Some(format!(
                        "worker {instance} failed its health check for {:?}",
                        self.config.unhealthy_after
                    ))
                }
                _ => None,
            }
        })
    }
}

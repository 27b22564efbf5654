//! The rolling reload: new workers are started one at a time beside the old ones, each
//! after the previous one passed its health check (or, without one, ran for a while);
//! once all are healthy the old generation is stopped. Any failure stops the new ones
//! and leaves the old generation running, so a reload never takes a running worker away
//! before its replacement is up.

use std::time::Instant;

use super::{HealthState, Held, Role, Supervisor, WorkerId};

/// A reload under way.
#[derive(Debug, Clone)]
pub(super) struct Reload {
    pub(super) generation: u64,
    /// The new workers, in slot order: candidate i replaces slot i.
    pub(super) candidates: Vec<WorkerId>,
    pub(super) began: Instant,
}

/// How the last reload ended, as reported to the leader (`failover reload` waits on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The reload's generation (0: none yet).
    pub generation: u64,
    /// Whether every worker was replaced.
    pub ok: bool,
    /// What happened, for the operator.
    pub message: String,
}

impl ReloadOutcome {
    pub(super) fn none() -> Self {
        ReloadOutcome {
            generation: 0,
            ok: true,
            message: String::new(),
        }
    }
}

impl Supervisor {
    pub(super) fn begin_reload(&mut self, now: Instant, generation: u64) {
        self.advance_clock(now);
        self.reload_asked = self.reload_asked.max(generation);
        if self.reload.is_some() {
            return;
        }
        if !self.holds_running() || self.unhealthy.is_some() || self.shutting_down {
            self.reload_done = ReloadOutcome {
                generation,
                ok: true,
                message: "no workers running (standby); nothing to reload".into(),
            };
            return;
        }
        self.reload = Some(Reload {
            generation,
            candidates: Vec::new(),
            began: now,
        });
    }

    /// Whether a reload's new worker may take its slot at `now`.
    fn settled(&self, now: Instant, worker: WorkerId) -> bool {
        let Some(live) = self.live.get(&worker) else {
            return false;
        };
        if self.config.health_checked {
            live.health == HealthState::Healthy
        } else {
            live.pid.is_some()
                && now.saturating_duration_since(live.started_at)
                    >= self.config.settle_without_check
        }
    }

    pub(super) fn advance_reload(&mut self, now: Instant) {
        if !matches!(self.held, Some(Held::Running { .. })) {
            return;
        }
        let Some(reload) = &self.reload else { return };
        if now.saturating_duration_since(reload.began) > self.config.reload_timeout {
            let why = format!(
                "new workers did not pass their health checks within {:?}",
                self.config.reload_timeout
            );
            self.abort_reload(&why);
            return;
        }
        if !reload.candidates.iter().all(|w| self.settled(now, *w)) {
            return;
        }
        let next = reload.candidates.len() as u32;
        if next < self.config.instances {
            if let Some(worker) = self.start(now, next, Role::Candidate) {
                if let Some(reload) = &mut self.reload {
                    reload.candidates.push(worker);
                }
            }
            return;
        }
        self.complete_reload();
    }

    /// Every new worker is up: each takes its slot and the old one is stopped.
    fn complete_reload(&mut self) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        assert_eq!(reload.candidates.len(), self.slots.len());
        for (instance, new) in reload.candidates.into_iter().enumerate() {
            let slot = &mut self.slots[instance];
            let old = slot.worker.replace(new);
            slot.restart_at = None;
            if let Some(live) = self.live.get_mut(&new) {
                live.role = Role::Slot;
                live.last_check = None;
            }
            if let Some(old) = old {
                if let Some(live) = self.live.get_mut(&old) {
                    live.role = Role::Retiring;
                }
                self.stop(old, self.config.stop_grace);
            }
        }
        self.reload_done = ReloadOutcome {
            generation: reload.generation,
            ok: true,
            message: "all workers replaced".into(),
        };
    }

    /// Stops the reload's new workers; the old generation keeps running.
    pub(super) fn abort_reload(&mut self, why: &str) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        for worker in reload.candidates {
            if let Some(live) = self.live.get_mut(&worker) {
                live.role = Role::Retiring;
            }
            self.stop(worker, self.config.stop_grace);
        }
        self.reload_done = ReloadOutcome {
            generation: reload.generation,
            ok: false,
            message: format!("rolled back: {why}"),
        };
    }

    /// How the last reload ended.
    pub fn reload_outcome(&self) -> &ReloadOutcome {
        &self.reload_done
    }

    /// Whether a reload is under way.
    pub fn reloading(&self) -> bool {
        self.reload.is_some()
    }
}

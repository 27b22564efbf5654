//! Worker supervision policy: when to restart a crashed worker, and when a run of crashes
//! makes the executor unhealthy (its site then reports not ready for a takeover).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The bounds of the restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart after a crash.
    pub initial_backoff: Duration,
    /// Longest delay between restarts.
    pub max_backoff: Duration,
    /// This many crashes within `crash_window` make a crash loop.
    pub crash_loop_crashes: usize,
    /// The window in which crashes are counted.
    pub crash_window: Duration,
    /// A worker that ran this long resets its backoff.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            crash_loop_crashes: 5,
            crash_window: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// One worker slot's crash record. Driver contract: call [`Restarts::on_exit`] when the
/// worker exits on its own, start it again no earlier than the instant it returns, and
/// call [`Restarts::on_stopped`] when it was stopped on purpose (that is not a crash).
#[derive(Debug, Clone)]
pub struct Restarts {
    policy: RestartPolicy,
    crashes: VecDeque<Instant>,
    backoff: Duration,
    /// How many times the slot was restarted after a crash.
    pub count: u32,
}

impl Restarts {
    /// A slot that has not crashed.
    pub fn new(policy: RestartPolicy) -> Self {
        Restarts {
            policy,
            crashes: VecDeque::new(),
            backoff: policy.initial_backoff,
            count: 0,
        }
    }

    /// The worker started at `started_at` exited on its own at `now`: when to restart it.
    pub fn on_exit(&mut self, started_at: Instant, now: Instant) -> Instant {
        if now.saturating_duration_since(started_at) >= self.policy.stable_after {
            self.backoff = self.policy.initial_backoff;
        }
        self.crashes.push_back(now);
        while self.crashes.len() > self.policy.crash_loop_crashes {
            self.crashes.pop_front();
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.max_backoff);
        self.count += 1;
        now + delay
    }

    /// The worker was stopped on purpose; forget nothing, restart at once next time.
    pub fn on_stopped(&mut self) {
        self.backoff = self.policy.initial_backoff;
    }

    /// Whether the slot crashed `crash_loop_crashes` times within the window before `now`.
    pub fn crash_looping(&self, now: Instant) -> bool {
        self.crashes.len() >= self.policy.crash_loop_crashes
            && self.crashes.front().is_some_and(|first| {
                now.saturating_duration_since(*first) <= self.policy.crash_window
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff doubles up to the bound; a crash loop is five crashes within a minute.
    #[test]
    fn backoff_doubles_and_crash_loop_is_detected() {
        let policy = RestartPolicy::default();
        let mut r = Restarts::new(policy);
        let t0 = Instant::now();
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let restart_at = r.on_exit(now, now + Duration::from_millis(10));
            delays.push(restart_at - (now + Duration::from_millis(10)));
            now = restart_at;
        }
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[7], Duration::from_secs(10));
        assert!(r.crash_looping(now));
        assert!(!r.crash_looping(now + Duration::from_secs(120)));
        assert_eq!(r.count, 8);
    }

    /// A worker that ran long enough restarts after the initial backoff again.
    #[test]
    fn stable_run_resets_backoff() {
        let mut r = Restarts::new(RestartPolicy::default());
        let t0 = Instant::now();
        r.on_exit(t0, t0);
        r.on_exit(t0, t0);
        let later = t0 + Duration::from_secs(31);
        assert_eq!(r.on_exit(t0, later), later + Duration::from_millis(100));
    }
}

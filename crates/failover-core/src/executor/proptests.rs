//! Property tests: random event sequences, fed the way a driver would (every start
//! answered by one end, every check by one result, no lease states while detached),
//! checked after every step against a model kept by the test itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::supervision::RestartPolicy;

const MS: Duration = Duration::from_millis(1);
const INSTANCES: u32 = 3;
const CRASHES: usize = 3;
const WINDOW: Duration = Duration::from_secs(5);

/// One input of a random run. Indices pick among the live workers or pending checks.
#[derive(Debug, Clone)]
enum Input {
    Tick(u16),
    Renew(u16),
    NewLease(u16),
    Drain(u16),
    Lose,
    Started(usize),
    Ended(usize, u8),
    Health(usize, bool),
    LocalReload,
    ClusterReload(u8),
    Shutdown,
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => (1u16..800).prop_map(Input::Tick),
        3 => (300u16..3000).prop_map(Input::Renew),
        1 => (300u16..3000).prop_map(Input::NewLease),
        1 => (0u16..3000).prop_map(Input::Drain),
        1 => Just(Input::Lose),
        3 => any::<usize>().prop_map(Input::Started),
        3 => (any::<usize>(), 0u8..6).prop_map(|(i, e)| Input::Ended(i, e)),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Input::Health(i, ok)),
        1 => Just(Input::LocalReload),
        1 => (1u8..6).prop_map(Input::ClusterReload),
        1 => Just(Input::Shutdown),
    ]
}

fn exit(kind: u8) -> WorkerExit {
    match kind {
        0 => WorkerExit::Exited(1),
        1 => WorkerExit::Signalled(9),
        2 => WorkerExit::FailedToStart,
        3 => WorkerExit::GuardLost,
        4 => WorkerExit::SpawnFailed,
        _ => WorkerExit::StoppedByGuard,
    }
}

/// The test's own record of what the supervisor was told and asked for.
#[derive(Debug)]
enum ModelLease {
    None,
    Held { token: u64, valid_until: Instant },
    Draining,
}

#[derive(Debug, Clone, Copy)]
struct ModelWorker {
    instance: u32,
    deadline: Instant,
    stopping: bool,
}

struct Model {
    now: Instant,
    stop_grace: Duration,
    lease: ModelLease,
    next_token: u64,
    detached: bool,
    shutdown: bool,
    exits: usize,
    workers: BTreeMap<WorkerId, ModelWorker>,
    checks: Vec<WorkerId>,
    /// Crashes of a slot's current worker while the lease was held, per instance.
    crashes: BTreeMap<u32, Vec<Instant>>,
}

impl Model {
    /// Workers serving in a slot (a reload's new workers do not count until they take
    /// their slot): started, not ended, not asked to stop.
    fn up(&self, s: &Supervisor) -> usize {
        s.slots(self.now)
            .iter()
            .filter_map(|slot| slot.worker)
            .filter(|w| self.workers.get(w).is_some_and(|w| !w.stopping))
            .count()
    }

    fn all_gone(&self) -> bool {
        self.workers.values().all(|w| self.now >= w.deadline)
    }

    fn holds(&self) -> bool {
        matches!(self.lease, ModelLease::Held { .. }) && !self.detached && !self.shutdown
    }

    /// Checks one action against the model and records it.
    fn take(&mut self, action: Action) -> Result<(), TestCaseError> {
        match action {
            Action::Start {
                worker,
                instance,
                deadline,
                ..
            } => {
                let ModelLease::Held { valid_until, .. } = self.lease else {
                    return Err(TestCaseError::fail("start without a held lease"));
                };
                prop_assert!(!self.detached && !self.shutdown, "start while out");
                prop_assert!(self.now + self.stop_grace < valid_until, "start too late");
                prop_assert_eq!(deadline, valid_until);
                let previous = self.workers.insert(
                    worker,
                    ModelWorker {
                        instance,
                        deadline,
                        stopping: false,
                    },
                );
                prop_assert!(previous.is_none(), "worker id reused");
            }
            Action::Extend { worker, deadline } => {
                let w = self.workers.get_mut(&worker);
                let w = w.ok_or_else(|| TestCaseError::fail("extend of an ended worker"))?;
                prop_assert!(!w.stopping && deadline > w.deadline);
                w.deadline = deadline;
            }
            Action::Stop { worker, .. } => {
                let w = self.workers.get_mut(&worker);
                let w = w.ok_or_else(|| TestCaseError::fail("stop of an ended worker"))?;
                prop_assert!(!w.stopping, "stopped twice");
                w.stopping = true;
            }
            Action::CheckHealth { worker, .. } => {
                prop_assert!(self.workers.contains_key(&worker));
                self.checks.push(worker);
            }
            Action::ReleaseLease => {
                prop_assert!(self.all_gone(), "release while a tree may run");
                prop_assert!(matches!(self.lease, ModelLease::Draining));
                self.lease = ModelLease::None;
            }
            Action::DetachLease => {
                prop_assert!(!self.detached);
                self.detached = true;
                self.lease = ModelLease::None;
            }
            Action::ReleaseDetached => {
                prop_assert!(self.all_gone(), "detached release while a tree may run");
            }
            Action::Reacquire => {
                prop_assert!(self.detached && !self.shutdown);
                self.detached = false;
                self.crashes.clear();
            }
            Action::Exit => {
                prop_assert!(
                    self.shutdown && self.all_gone(),
                    "exit while a tree may run"
                );
                self.exits += 1;
            }
        }
        Ok(())
    }
}

fn pick<T: Copy>(items: &[T], index: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[index % items.len()])
}

/// Feeds one input; false if it does not apply now (nothing was fed).
fn feed(s: &mut Supervisor, m: &mut Model, input: &Input) -> bool {
    let now = m.now;
    let lease_ok = !m.detached;
    if m.shutdown && lease_ok {
        // The session still publishes while the executor shuts down; the supervisor
        // ignores it, and so does the model.
        let view = match *input {
            Input::Renew(_) | Input::NewLease(_) => Some(LeaseView::Held {
                epoch: Epoch(1),
                token: FencingToken(m.next_token + 1),
                valid_until: now + Duration::from_secs(1),
            }),
            Input::Lose => Some(LeaseView::NotHeld),
            _ => None,
        };
        if let Some(view) = view {
            s.handle_lease(now, view);
            return true;
        }
    }
    match *input {
        Input::Tick(ms) => {
            m.now += u32::from(ms) * MS;
            s.handle_tick(m.now);
        }
        Input::Renew(ttl) | Input::NewLease(ttl) if lease_ok => {
            let new = matches!(input, Input::NewLease(_));
            let token = match m.lease {
                ModelLease::Held { token, .. } if !new => token,
                _ => {
                    m.next_token += 1;
                    m.next_token
                }
            };
            let valid_until = now + u32::from(ttl) * MS;
            m.lease = ModelLease::Held { token, valid_until };
            let view = LeaseView::Held {
                epoch: Epoch(1),
                token: FencingToken(token),
                valid_until,
            };
            s.handle_lease(now, view);
        }
        Input::Drain(left) if lease_ok => {
            if matches!(m.lease, ModelLease::Held { .. }) {
                m.lease = ModelLease::Draining;
            }
            let valid_until = now + u32::from(left) * MS;
            s.handle_lease(now, LeaseView::Draining { valid_until });
        }
        Input::Lose if lease_ok => {
            m.lease = ModelLease::None;
            s.handle_lease(now, LeaseView::NotHeld);
        }
        Input::Started(i) => {
            let ids: Vec<WorkerId> = m.workers.keys().copied().collect();
            let Some(worker) = pick(&ids, i) else {
                return false;
            };
            s.handle_worker_started(now, worker, 1000 + worker.0 as u32);
        }
        Input::Ended(i, kind) => return end(s, m, i, exit(kind)),
        Input::Health(i, ok) => {
            let Some(worker) = pick(&m.checks, i) else {
                return false;
            };
            m.checks.retain(|c| *c != worker);
            s.handle_health(now, worker, ok);
        }
        Input::LocalReload => s.handle_local_reload(now),
        Input::ClusterReload(generation) => s.handle_cluster_reload(now, u64::from(generation)),
        Input::Shutdown => {
            m.shutdown = true;
            s.handle_shutdown(now);
        }
        _ => return false,
    }
    true
}

/// Ends a live worker, recording it as a crash when it is one by the test's own rule.
fn end(s: &mut Supervisor, m: &mut Model, i: usize, how: WorkerExit) -> bool {
    let ids: Vec<WorkerId> = m.workers.keys().copied().collect();
    let Some(worker) = pick(&ids, i) else {
        return false;
    };
    let Some(w) = m.workers.remove(&worker) else {
        return false;
    };
    let in_slot = s.slots(m.now)[w.instance as usize].worker == Some(worker);
    if in_slot && !w.stopping && how.ended_on_its_own() && m.holds() {
        m.crashes.entry(w.instance).or_default().push(m.now);
    }
    m.checks.retain(|c| *c != worker);
    s.handle_worker_ended(m.now, worker, how);
    true
}

fn crash_looping(m: &Model) -> bool {
    m.crashes.values().any(|at| {
        at.len() >= CRASHES && m.now.saturating_duration_since(at[at.len() - CRASHES]) <= WINDOW
    })
}

fn config() -> SupervisorConfig {
    SupervisorConfig {
        restart: RestartPolicy {
            initial_backoff: 10 * MS,
            max_backoff: 200 * MS,
            crash_loop_crashes: CRASHES,
            crash_window: WINDOW,
            stable_after: Duration::from_secs(3),
        },
        health_checked: true,
        unhealthy_after: Duration::from_secs(2),
        unhealthy_cooldown: Duration::from_secs(3),
        reload_timeout: Duration::from_secs(4),
        ..SupervisorConfig::new(INSTANCES, 200 * MS, 1000 * MS)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No start after the lease is lost or past its safe deadline; release only once
    /// every tree is gone; a reload never takes the running workers below N-1; a crash
    /// loop makes the executor unhealthy at the next tick; and a shutdown always ends
    /// with exactly one Exit once the trees are gone.
    #[test]
    fn supervisor_keeps_its_invariants(inputs in proptest::collection::vec(input(), 1..200)) {
        let config = config();
        let mut s = Supervisor::new(config);
        let mut m = Model {
            now: Instant::now(),
            stop_grace: config.stop_grace,
            lease: ModelLease::None,
            next_token: 0,
            detached: false,
            shutdown: false,
            exits: 0,
            workers: BTreeMap::new(),
            checks: Vec::new(),
            crashes: BTreeMap::new(),
        };
        for input in &inputs {
            let up_before = m.up(&s);
            let lease_event = matches!(
                input,
                Input::Renew(_) | Input::NewLease(_) | Input::Drain(_) | Input::Lose
            );
            let ended = matches!(input, Input::Ended(..));
            if !feed(&mut s, &mut m, input) {
                continue;
            }
            let mut stops = 0;
            while let Some(action) = s.poll_action() {
                stops += usize::from(matches!(action, Action::Stop { .. }));
                m.take(action)?;
            }
            if stops > 0 && !lease_event && !ended && m.holds() {
                let floor = up_before.min(INSTANCES as usize - 1);
                prop_assert!(
                    m.up(&s) >= floor,
                    "{input:?} took the running workers from {up_before} to {}", m.up(&s)
                );
            }
            if matches!(input, Input::Tick(_)) && crash_looping(&m) && !m.shutdown {
                prop_assert!(s.unhealthy_reason().is_some(), "a crash loop went unnoticed");
            }
        }
        // Shut down and let every tree end: exactly one Exit.
        m.shutdown = true;
        s.handle_shutdown(m.now);
        while let Some(action) = s.poll_action() {
            m.take(action)?;
        }
        while end(&mut s, &mut m, 0, WorkerExit::StoppedByGuard) {
            while let Some(action) = s.poll_action() {
                m.take(action)?;
            }
        }
        m.now += MS;
        s.handle_tick(m.now);
        while let Some(action) = s.poll_action() {
            m.take(action)?;
        }
        prop_assert_eq!(m.exits, 1);
        prop_assert_eq!(s.live_workers(), 0);
    }
}

//! Exact unit tests of the supervisor: time is an argument, so every bound is hit to the
//! millisecond.

use std::time::{Duration, Instant};

use super::*;
use crate::supervision::RestartPolicy;

const MS: Duration = Duration::from_millis(1);

fn config(instances: u32) -> SupervisorConfig {
    SupervisorConfig::new(instances, 500 * MS, 5000 * MS)
}

fn actions(s: &mut Supervisor) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn held(token: u64, valid_until: Instant) -> LeaseView {
    LeaseView::Held {
        epoch: Epoch(2),
        token: FencingToken(token),
        valid_until,
    }
}

fn started(actions: &[Action]) -> Vec<(WorkerId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start {
                worker, instance, ..
            } => Some((*worker, *instance)),
            _ => None,
        })
        .collect()
}

fn stopped(actions: &[Action]) -> Vec<(WorkerId, Duration)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { worker, grace } => Some((*worker, *grace)),
            _ => None,
        })
        .collect()
}

/// An acquired lease starts every slot at once with the lease's deadline; a renewal of
/// the same lease moves every guard's deadline.
#[test]
fn acquire_starts_every_slot_and_renewal_extends() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(config(2));
    s.handle_lease(t0, held(9, t0 + 3000 * MS));
    let first = actions(&mut s);
    assert_eq!(
        first[0],
        Action::Start {
            worker: WorkerId(1),
            instance: 0,
            epoch: Epoch(2),
            token: FencingToken(9),
            deadline: t0 + 3000 * MS,
        }
    );
    assert_eq!(started(&first), vec![(WorkerId(1), 0), (WorkerId(2), 1)]);
    s.handle_lease(t0 + 1000 * MS, held(9, t0 + 4000 * MS));
    assert_eq!(
        actions(&mut s),
        vec![
            Action::Extend {
                worker: WorkerId(1),
                deadline: t0 + 4000 * MS
            },
            Action::Extend {
                worker: WorkerId(2),
                deadline: t0 + 4000 * MS
            },
        ]
    );
}

/// A worker is not started when the lease ends within a stop grace (its guard would stop
/// it at once); it starts on the first tick after a renewal gives it room.
#[test]
fn no_start_within_a_stop_grace_of_the_deadline() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(config(1));
    s.handle_lease(t0, held(1, t0 + 500 * MS));
    assert!(actions(&mut s).is_empty());
    s.handle_tick(t0 + 100 * MS);
    assert!(actions(&mut s).is_empty());
    s.handle_lease(t0 + 200 * MS, held(1, t0 + 701 * MS));
    s.handle_tick(t0 + 200 * MS);
    assert_eq!(started(&actions(&mut s)), vec![(WorkerId(1), 0)]);
}

/// A crash restarts after the backoff, to the millisecond; a stop asked for is no crash
/// and does not restart while the lease is gone.
#[test]
fn crash_restarts_after_backoff_and_stop_is_not_a_crash() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(config(1));
    s.handle_lease(t0, held(1, t0 + 10_000 * MS));
    actions(&mut s);
    s.handle_worker_started(t0, WorkerId(1), 100);
    s.handle_worker_ended(t0 + 50 * MS, WorkerId(1), WorkerExit::Exited(1));
    assert!(actions(&mut s).is_empty());
    assert_eq!(s.slots(t0 + 50 * MS)[0].state, SlotState::Backoff);
    s.handle_tick(t0 + 149 * MS);
    assert!(actions(&mut s).is_empty());
    s.handle_tick(t0 + 150 * MS);
    assert_eq!(started(&actions(&mut s)), vec![(WorkerId(2), 0)]);
    assert_eq!(s.slots(t0 + 150 * MS)[0].restarts, 1);

    s.handle_lease(t0 + 200 * MS, LeaseView::NotHeld);
    assert_eq!(stopped(&actions(&mut s)), vec![(WorkerId(2), 500 * MS)]);
    // Even an exit status after the stop was asked for is not a crash.
    s.handle_worker_ended(t0 + 300 * MS, WorkerId(2), WorkerExit::Exited(1));
    s.handle_tick(t0 + 400 * MS);
    assert!(actions(&mut s).is_empty());
    assert_eq!(s.slots(t0 + 400 * MS)[0].state, SlotState::Stopped);
}

/// The guard's own stop (deadline reached) is not a crash: no backoff, no restart count.
#[test]
fn stopped_by_guard_is_not_a_crash() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(config(1));
    s.handle_lease(t0, held(1, t0 + 10_000 * MS));
    actions(&mut s);
    s.handle_worker_ended(t0 + 50 * MS, WorkerId(1), WorkerExit::StoppedByGuard);
    s.handle_tick(t0 + 50 * MS);
    assert_eq!(started(&actions(&mut s)), vec![(WorkerId(2), 0)]);
    assert_eq!(s.slots(t0 + 50 * MS)[0].restarts, 0);
}

/// A drain stops the workers with the shorter of the drain timeout and the time left,
/// and the lease is released only once every tree is gone.
#[test]
fn drain_stops_then_releases_once_every_tree_is_gone() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(config(2));
    s.handle_lease(t0, held(1, t0 + 10_000 * MS));
    actions(&mut s);
    s.handle_lease(
        t0 + 1000 * MS,
        LeaseView::Draining {
            valid_until: t0 + 3000 * MS,
        },
    );
    assert_eq!(
        stopped(&actions(&mut s)),
        vec![(WorkerId(1), 2000 * MS), (WorkerId(2), 2000 * MS)]
    );
    s.handle_worker_ended(t0 + 1100 * MS, WorkerId(1), WorkerExit::StoppedByGuard);
    s.handle_tick(t0 + 1200 * MS);
    assert!(actions(&mut s).is_empty());
    s.handle_worker_ended(t0 + 1300 * MS, WorkerId(2), WorkerExit::Signalled(15));
    assert_eq!(actions(&mut s), vec![Action::ReleaseLease]);
    s.handle_tick(t0 + 1400 * MS);
    assert!(actions(&mut s).is_empty(), "released once");
}

/// A guard that never reports still lets the lease go once its deadline passed: by then
/// it killed its tree on its own.
#[test]
fn silent_guard_counts_as_gone_at_its_deadline() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(config(1));
    s.handle_lease(t0, held(1, t0 + 2000 * MS));
    actions(&mut s);
    s.handle_shutdown(t0 + 100 * MS);
    assert_eq!(stopped(&actions(&mut s)), vec![(WorkerId(1), 500 * MS)]);
    s.handle_tick(t0 + 1999 * MS);
    assert!(actions(&mut s).is_empty());
    s.handle_tick(t0 + 2000 * MS);
    assert_eq!(actions(&mut s), vec![Action::Exit]);
}

/// Crashes in a row make a crash loop: the executor gives the lease up, sits out the
/// cooldown and then takes part again, with its crash record cleared.
#[test]
fn crash_loop_makes_the_executor_unhealthy_for_the_cooldown() {
    let t0 = Instant::now();
    let restart = RestartPolicy {
        crash_loop_crashes: 3,
        ..RestartPolicy::default()
    };
    let mut s = Supervisor::new(SupervisorConfig {
        restart,
        ..config(1)
    });
    s.handle_lease(t0, held(1, t0 + 60_000 * MS));
    let mut now = t0;
    for id in 1..=3 {
        actions(&mut s);
        now += 1000 * MS;
        s.handle_worker_ended(now, WorkerId(id), WorkerExit::Exited(3));
        assert!(s.ready(now) || id == 3);
        now += 1000 * MS;
        s.handle_tick(now);
    }
    assert_eq!(s.unhealthy_reason(), Some("worker 0 is crash-looping"));
    assert_eq!(
        actions(&mut s),
        vec![Action::DetachLease, Action::ReleaseDetached]
    );
    // Lease states from the detached session start nothing.
    s.handle_lease(now, held(1, now + 60_000 * MS));
    s.handle_tick(now + 29_999 * MS);
    assert!(actions(&mut s).is_empty());
    s.handle_tick(now + 30_000 * MS);
    assert_eq!(actions(&mut s), vec![Action::Reacquire]);
    assert!(s.ready(now + 30_000 * MS));
    s.handle_lease(now + 30_100 * MS, held(2, now + 40_000 * MS));
    assert_eq!(started(&actions(&mut s)).len(), 1);
}

/// A worker failing its health check for `unhealthy_after` makes the executor unhealthy;
/// the lease is given up only after its tree is gone.
#[test]
fn failing_health_check_makes_the_executor_unhealthy() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(SupervisorConfig {
        health_checked: true,
        ..config(1)
    });
    s.handle_lease(t0, held(1, t0 + 60_000 * MS));
    actions(&mut s);
    s.handle_tick(t0);
    assert_eq!(
        actions(&mut s),
        vec![Action::CheckHealth {
            worker: WorkerId(1),
            instance: 0
        }]
    );
    s.handle_health(t0 + 10 * MS, WorkerId(1), false);
    s.handle_tick(t0 + 500 * MS);
    assert!(actions(&mut s).is_empty(), "checked once per interval");
    s.handle_tick(t0 + 10_009 * MS);
    assert!(!actions(&mut s).contains(&Action::DetachLease));
    s.handle_tick(t0 + 10_010 * MS);
    assert_eq!(
        actions(&mut s),
        vec![
            Action::Stop {
                worker: WorkerId(1),
                grace: 500 * MS
            },
            Action::DetachLease
        ]
    );
    s.handle_worker_ended(t0 + 10_100 * MS, WorkerId(1), WorkerExit::StoppedByGuard);
    assert_eq!(actions(&mut s), vec![Action::ReleaseDetached]);
}

/// A rolling reload of two workers: one new worker at a time, each after the previous one
/// is healthy; the old ones stop only when every new one is up.
#[test]
fn rolling_reload_replaces_one_at_a_time() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(SupervisorConfig {
        health_checked: true,
        ..config(2)
    });
    s.handle_lease(t0, held(1, t0 + 60_000 * MS));
    actions(&mut s);
    s.handle_local_reload(t0);
    s.handle_tick(t0 + 100 * MS);
    let step = actions(&mut s);
    assert_eq!(started(&step), vec![(WorkerId(3), 0)]);
    assert!(stopped(&step).is_empty());
    s.handle_health(t0 + 150 * MS, WorkerId(3), true);
    s.handle_tick(t0 + 200 * MS);
    let step = actions(&mut s);
    assert_eq!(started(&step), vec![(WorkerId(4), 1)]);
    s.handle_health(t0 + 250 * MS, WorkerId(4), true);
    s.handle_tick(t0 + 300 * MS);
    let step = actions(&mut s);
    assert_eq!(
        stopped(&step),
        vec![(WorkerId(1), 500 * MS), (WorkerId(2), 500 * MS)]
    );
    assert_eq!(s.reload_outcome().generation, 1);
    assert!(s.reload_outcome().ok);
    let slots = s.slots(t0 + 300 * MS);
    assert_eq!(slots[0].worker, Some(WorkerId(3)));
    assert_eq!(slots[1].worker, Some(WorkerId(4)));
    // The leader asking for the same generation again changes nothing.
    s.handle_cluster_reload(t0 + 400 * MS, 1);
    assert!(!s.reloading());
}

/// A new worker that dies during a reload rolls it back: the other new ones stop, the old
/// generation keeps running.
#[test]
fn reload_rolls_back_when_a_new_worker_dies() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(config(2));
    s.handle_lease(t0, held(1, t0 + 60_000 * MS));
    actions(&mut s);
    s.handle_cluster_reload(t0, 7);
    s.handle_tick(t0);
    assert_eq!(started(&actions(&mut s)), vec![(WorkerId(3), 0)]);
    s.handle_worker_ended(t0 + 10 * MS, WorkerId(3), WorkerExit::Exited(2));
    let outcome = s.reload_outcome();
    assert_eq!(outcome.generation, 7);
    assert!(!outcome.ok);
    assert_eq!(
        outcome.message,
        "rolled back: new worker 0 ended during the reload (exited 2)"
    );
    assert!(
        actions(&mut s).is_empty(),
        "the old workers are not touched"
    );
    assert_eq!(s.slots(t0)[0].worker, Some(WorkerId(1)));
}

/// Time going backwards is a driver bug and crashes loudly.
#[test]
#[should_panic(expected = "time went backwards")]
fn time_never_goes_backwards() {
    let t0 = Instant::now();
    let mut s = Supervisor::new(config(1));
    s.handle_tick(t0 + 10 * MS);
    s.handle_tick(t0);
}

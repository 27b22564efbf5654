//! L3 with real processes: controller churn that leaves the active site connected to a
//! quorum never restarts its workers.
//!
//! Five controller processes (the example topology), one `failover exec` at site-a running
//! two shell workers (each with a child). Then, one after the other: the leader killed with
//! SIGKILL and restarted, the leader frozen with SIGSTOP until another is elected and
//! resumed, a follower frozen past the election timeout and resumed, a follower killed and
//! restarted, and a rolling restart (SIGTERM, start) of every controller, in which a leader
//! hands leadership over before it exits. After each event
//! the test checks that the workers started at the beginning are the only ones ever
//! started and all still run, and that a rejoining follower did not depose the leader.
//!
//! `FAILOVER_CHURN_KILLS`, `FAILOVER_CHURN_FREEZES`, `FAILOVER_CHURN_REJOINS` and
//! `FAILOVER_CHURN_ROLLING` scale the series (scripts/bench-churn.py runs it with 50 kills
//! and 20 rejoins); the test prints a `churn-summary` JSON line either way. With
//! `FAILOVER_CHURN_DEFAULT_TIMING` set it runs the topology defaults instead of the
//! slowed-down test timing, and with `FAILOVER_CHURN_COUNT` set it counts interrupting
//! events instead of failing at the first (the benchmark).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{alive, eventually, workers, Cluster, Proc};

/// The test's timing: the defaults' shape, slowed down for a loaded 2-core machine running
/// debug builds (openraft times each heartbeat out after one heartbeat interval, and 100 ms
/// is too short there). It still rides out an election with the executor's 500 ms stop
/// grace: 4500 - 250 - 2 x 250 - (2 x 750 + 150) = 2100 > 2 x 500.
const TIMING: &str = "timing: { raft_heartbeat_ms: 150, election_timeout_min_ms: 450, \
                      election_timeout_max_ms: 750, lease_ttl_ms: 4500 }\n";

/// How long one step (an election, a rejoin) may take before the test fails.
const STEP: Duration = Duration::from_secs(30);
/// How long a frozen follower stays frozen: past `2 x election_timeout_max_ms`.
const FOLLOWER_FREEZE: Duration = Duration::from_millis(2500);

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The leader and its term, as the leader itself confirms them (a consistent status).
async fn leader(cluster: &Cluster) -> (u64, u64) {
    let client = cluster.client();
    eventually("a confirmed leader", STEP, || {
        let mut client = client.clone();
        async move {
            let status = client.status().await.ok()?;
            (status.consistent && status.leader != 0).then_some((status.leader, status.term))
        }
    })
    .await
}

/// Waits until a leader other than `old` is confirmed; returns it and how long it took.
async fn new_leader(cluster: &Cluster, old: u64, since: Instant) -> (u64, Duration) {
    let client = cluster.client();
    let id = eventually("a new leader", STEP, || {
        let mut client = client.clone();
        async move {
            let status = client.status().await.ok()?;
            (status.consistent && status.leader != 0 && status.leader != old)
                .then_some(status.leader)
        }
    })
    .await;
    (id, since.elapsed())
}

/// Waits until the leader reports controller `id` reachable and caught up with its log.
async fn rejoined(cluster: &Cluster, id: u64) {
    let client = cluster.client();
    eventually(&format!("controller {id} back"), STEP, || {
        let mut client = client.clone();
        async move {
            let status = client.status().await.ok()?;
            let newest = status.controllers.iter().map(|c| c.matched_index).max()?;
            status
                .controllers
                .iter()
                .find(|c| c.id == id)
                .is_some_and(|c| c.reachable && c.matched_index == newest && status.consistent)
                .then_some(())
        }
    })
    .await;
}

/// The `turn`-th follower of `leader`, round robin over the other controllers.
fn follower(leader: u64, turn: usize) -> u64 {
    let others: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    others[turn % others.len()]
}

/// Checks that every worker of the baseline `initial` still runs and none started since.
/// Fails the test otherwise, or, when only counting, counts the event in `tally` and takes
/// the workers running now as the new baseline.
async fn assert_untouched(
    dir: &Path,
    initial: &mut Vec<i32>,
    event: &str,
    cluster: &Cluster,
    tally: &mut Tally,
) {
    let mut now = workers::recorded(dir, "site-a");
    now.sort_unstable();
    // Only the baseline's running workers count: after a counted interruption the
    // recorded pids include the stopped generation.
    let dead: Vec<i32> = initial.iter().copied().filter(|p| !alive(*p)).collect();
    let started_since: Vec<i32> = now
        .iter()
        .copied()
        .filter(|p| !initial.contains(p) && alive(*p))
        .collect();
    if started_since.is_empty() && dead.is_empty() {
        return;
    }
    assert!(
        std::env::var_os("FAILOVER_CHURN_COUNT").is_some(),
        "site-a workers interrupted by {event}: started {started_since:?} (running before: {initial:?}), \
         dead {dead:?}\nexecutor log:\n{}",
        std::fs::read_to_string(cluster.data_dir().join("exec-site-a.log")).unwrap_or_default()
    );
    eprintln!("site-a workers interrupted by {event}");
    tally.interrupting_events += 1;
    eventually("site-a workers running again", STEP, || async {
        (workers::live(dir, "site-a").len() == 4).then_some(())
    })
    .await;
    let mut now = workers::live(dir, "site-a");
    now.sort_unstable();
    *initial = now;
}

#[derive(Default)]
struct Tally {
    kills: usize,
    leader_freezes: usize,
    rejoins: usize,
    rolling: usize,
    /// Leaders stopped by a rolling restart, and how many of them handed leadership over.
    rolling_leader_stops: usize,
    rolling_handovers: usize,
    deposed_by_rejoin: usize,
    interrupting_events: usize,
    failover_ms: Vec<u128>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_churn_never_restarts_active_workers() {
    let kills = count("FAILOVER_CHURN_KILLS", 3);
    let freezes = count("FAILOVER_CHURN_FREEZES", 2);
    let rejoins = count("FAILOVER_CHURN_REJOINS", 4);
    let rolling = count("FAILOVER_CHURN_ROLLING", 1);

    let mut cluster = if std::env::var_os("FAILOVER_CHURN_DEFAULT_TIMING").is_some() {
        Cluster::new()
    } else {
        Cluster::new_with(|yaml| yaml.replacen("sites:\n", &format!("{TIMING}sites:\n"), 1))
    };
    let (dir, _exec, mut initial) = start_with_site_a_workers(&mut cluster).await;
    let first_count = initial.len();
    let mut tally = Tally::default();

    for i in 0..kills {
        let (old, _) = leader(&cluster).await;
        let at = Instant::now();
        cluster.kill9(old);
        let (_, took) = new_leader(&cluster, old, at).await;
        tally.failover_ms.push(took.as_millis());
        cluster.start(old);
        rejoined(&cluster, old).await;
        tally.kills += 1;
        assert_untouched(
            &dir,
            &mut initial,
            &format!("leader kill {i} (c{old})"),
            &cluster,
            &mut tally,
        )
        .await;
    }

    for i in 0..freezes {
        let (old, _) = leader(&cluster).await;
        let pid = cluster.node_mut(old).pid().expect("leader runs");
        let at = Instant::now();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let (_, took) = new_leader(&cluster, old, at).await;
        tally.failover_ms.push(took.as_millis());
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        rejoined(&cluster, old).await;
        tally.leader_freezes += 1;
        assert_untouched(
            &dir,
            &mut initial,
            &format!("leader freeze {i} (c{old})"),
            &cluster,
            &mut tally,
        )
        .await;
    }

    for i in 0..rejoins {
        let (lead, term) = leader(&cluster).await;
        let id = follower(lead, i);
        if i % 2 == 0 {
            let pid = cluster.node_mut(id).pid().expect("follower runs");
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            tokio::time::sleep(FOLLOWER_FREEZE).await;
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        } else {
            cluster.kill9(id);
            tokio::time::sleep(FOLLOWER_FREEZE).await;
            cluster.start(id);
        }
        rejoined(&cluster, id).await;
        let (after, after_term) = leader(&cluster).await;
        if (after, after_term) != (lead, term) {
            tally.deposed_by_rejoin += 1;
        }
        tally.rejoins += 1;
        let how = if i % 2 == 0 { "freeze" } else { "restart" };
        assert_untouched(
            &dir,
            &mut initial,
            &format!("follower {how} {i} (c{id})"),
            &cluster,
            &mut tally,
        )
        .await;
    }

    for round in 0..rolling {
        for id in 1..=5 {
            let (lead, _) = leader(&cluster).await;
            let handed = log_count(&cluster, id, "handed leadership over");
            cluster.terminate(id, Duration::from_secs(10));
            if lead == id {
                tally.rolling_leader_stops += 1;
                if log_count(&cluster, id, "handed leadership over") > handed {
                    tally.rolling_handovers += 1;
                }
            }
            cluster.start(id);
            rejoined(&cluster, id).await;
            let event = format!("rolling restart {round} (c{id})");
            assert_untouched(&dir, &mut initial, &event, &cluster, &mut tally).await;
        }
        tally.rolling += 1;
    }

    let mut ms = tally.failover_ms.clone();
    ms.sort_unstable();
    let median = ms.get(ms.len() / 2).copied().unwrap_or(0);
    let max = ms.last().copied().unwrap_or(0);
    println!(
        "churn-summary {{\"leader_kills\": {}, \"leader_freezes\": {}, \"rejoins\": {}, \
         \"rolling_restarts\": {}, \"rolling_leader_stops\": {}, \"rolling_handovers\": {}, \"interrupting_events\": {}, \"worker_starts_after_first\": {}, \
         \"rejoins_that_deposed_the_leader\": {}, \"new_leader_median_ms\": {median}, \
         \"new_leader_max_ms\": {max}}}",
        tally.kills,
        tally.leader_freezes,
        tally.rejoins,
        tally.rolling,
        tally.rolling_leader_stops,
        tally.rolling_handovers,
        tally.interrupting_events,
        workers::recorded(&dir, "site-a")
            .len()
            .saturating_sub(first_count)
            / 2,
        tally.deposed_by_rejoin,
    );
    let counting = std::env::var_os("FAILOVER_CHURN_COUNT").is_some();
    assert!(
        counting || tally.deposed_by_rejoin == 0,
        "a rejoining follower deposed a healthy leader (pre-vote should refuse it)"
    );
    assert!(
        counting || tally.rolling_handovers == tally.rolling_leader_stops,
        "{} of {} leaders stopped by the rolling restart exited without handing leadership over",
        tally.rolling_leader_stops - tally.rolling_handovers,
        tally.rolling_leader_stops
    );
}

/// How many times `needle` occurs in controller `id`'s log (all its runs).
fn log_count(cluster: &Cluster, id: u64, needle: &str) -> usize {
    cluster.log_of(id).matches(needle).count()
}

/// A rolling restart (SIGTERM, wait for the exit, start, wait until caught up) of all five
/// controllers: a leader that is stopped hands leadership to a caught-up follower before it
/// exits, so no step waits out an election, and the executor at the active site keeps its
/// one lease and its workers (same pids) throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_hands_leadership_over_and_keeps_the_lease() {
    let mut cluster =
        Cluster::new_with(|yaml| yaml.replacen("sites:\n", &format!("{TIMING}sites:\n"), 1));
    let (dir, _exec, mut initial) = start_with_site_a_workers(&mut cluster).await;
    let exec_log_path = cluster.data_dir().join("exec-site-a.log");
    let mut tally = Tally::default();
    let mut handovers = 0;
    for id in 1..=5 {
        let (lead, term) = leader(&cluster).await;
        let handed_before = log_count(&cluster, id, "handed leadership over");
        let exit = cluster.terminate(id, STEP);
        assert_eq!(
            exit,
            Some(0),
            "controller {id} did not exit cleanly on SIGTERM\n{}",
            cluster.log_of(id)
        );
        if lead == id {
            // The successor took over before the old leader exited: the stopping leader
            // saw it, and the new leader's term is the next one (one election, no retry).
            assert_eq!(
                log_count(&cluster, id, "handed leadership over"),
                handed_before + 1,
                "leader c{id} stopped without handing leadership over\n{}",
                cluster.log_of(id)
            );
            let (after, after_term) = leader(&cluster).await;
            assert_ne!(after, id);
            assert_eq!(
                after_term,
                term + 1,
                "c{after} took over after more than one election"
            );
            handovers += 1;
        }
        cluster.start(id);
        rejoined(&cluster, id).await;
        assert_untouched(
            &dir,
            &mut initial,
            &format!("rolling restart (c{id})"),
            &cluster,
            &mut tally,
        )
        .await;
    }
    // A leader is only ever replaced by a hand-over here, so the first one was stopped
    // while it led.
    assert!(handovers >= 1, "no controller was stopped while leading");
    let log = std::fs::read_to_string(&exec_log_path).unwrap_or_default();
    assert_eq!(
        log.matches("lease state: acquired").count(),
        1,
        "the executor acquired its lease more than once\n{log}"
    );
    assert!(
        !log.contains("lease gone"),
        "the executor lost its lease\n{log}"
    );
}

/// Starts every controller and an executor at site-a with two instances; returns the
/// workers' directory, the executor, and the sorted pids of its running workers (each
/// worker and its child).
async fn start_with_site_a_workers(cluster: &mut Cluster) -> (PathBuf, Proc, Vec<i32>) {
    cluster.start_all();
    cluster.wait_ready(STEP).await;
    let dir = cluster.data_dir().join("work");
    std::fs::create_dir_all(&dir).expect("work dir");
    let script = workers::script(&dir);
    let exec = cluster.exec(
        "site-a",
        &["--instances", "2"],
        &[script.to_str().expect("utf8")],
    );
    let mut initial = eventually("two site-a workers running", STEP, || async {
        let live = workers::live(&dir, "site-a");
        (live.len() == 4).then_some(live)
    })
    .await;
    initial.sort_unstable();
    (dir, exec, initial)
}

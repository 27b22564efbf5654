//! The faults, and the scenarios that combine them. Every choice a scenario makes (which
//! site, which controller, how long, which direction, which second fault) is drawn from a
//! generator seeded by the run's seed, so `chaos run SCENARIO --seed N` replays it.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::Rng;

use crate::cluster::wait_for;
use crate::recorder::{now_ns, HarnessEvent};
use crate::runner::{pause, Cluster, EXECUTORS_PER_SITE};

/// What the checker may expect of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expect {
    /// The active site stays healthy and connected to a quorum: no worker of it may stop
    /// (L3), except those of executors the fault hit directly.
    pub active_stays_healthy: bool,
    /// The whole active site is frozen past its leases: no user-space supervisor can keep
    /// S1 there, and the report shows the fencing check refusing the stale writes.
    pub host_freeze: bool,
    /// The run uses the deliberately broken build: the checks must catch it.
    pub broken_build: bool,
}

/// One scenario of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// What the checker may expect.
    pub expect: Expect,
    run: fn(&mut Cluster, &mut StdRng) -> anyhow::Result<()>,
}

const SAFETY: Expect = Expect {
    active_stays_healthy: false,
    host_freeze: false,
    broken_build: false,
};
const HEALTHY: Expect = Expect {
    active_stays_healthy: true,
    host_freeze: false,
    broken_build: false,
};

/// Every scenario, in the order `chaos run all` runs them.
pub const CATALOG: &[Scenario] = &[
    Scenario { name: "site-cut", about: "the active site cut off (all its links down), healed after several lease TTLs", expect: SAFETY, run: site_cut },
    Scenario { name: "partial-partition", about: "a data site cannot reach the witness but reaches the other data site (seed picks which)", expect: HEALTHY, run: partial_partition },
    Scenario { name: "one-way-partition", about: "packets dropped in one direction only between the active site and the others (seed picks which)", expect: SAFETY, run: one_way },
    Scenario { name: "kill-executor", about: "one executor of the active site SIGKILLed, restarted after a while", expect: HEALTHY, run: kill_executor },
    Scenario { name: "kill-leader", about: "the Raft leader SIGKILLed, restarted on its data dir", expect: HEALTHY, run: kill_leader },
    Scenario { name: "kill-mid-promotion", about: "the leader SIGKILLed while an operator promote is in flight", expect: SAFETY, run: kill_mid_promotion },
    Scenario { name: "freeze-site", about: "every process of the active site SIGSTOPped past the lease TTL, then resumed", expect: Expect { active_stays_healthy: false, host_freeze: true, broken_build: false }, run: freeze_site },
    Scenario { name: "degraded-links", about: "delay, loss and reordering on the inter-site links (netem; loss and throttling where the kernel lacks it), with a planned switchover", expect: SAFETY, run: degraded_links },
    Scenario { name: "restart-controller", about: "one controller SIGKILLed and restarted on its data dir", expect: HEALTHY, run: restart_controller },
    Scenario { name: "rolling-restart", about: "every controller stopped (SIGTERM) and restarted, one at a time", expect: HEALTHY, run: rolling_restart },
    Scenario { name: "operator-during-fault", about: "promote, demote and promote back issued while the witness is cut off and links lose packets", expect: SAFETY, run: operator_during_fault },
    Scenario { name: "reload-during-promotion", about: "a rolling reload of the active site while it is being demoted", expect: SAFETY, run: reload_during_promotion },
    Scenario { name: "double-fault", about: "two faults drawn by the seed, the second a few seconds after the first", expect: SAFETY, run: double_fault },
    Scenario { name: "cut-from-leader", about: "the active site cut from the leader's site only, the leader outside it keeping its quorum through the others; renewals relayed by a follower", expect: HEALTHY, run: cut_from_leader },
    Scenario { name: "partition-keep-ledger", about: "the active site cut from every controller but still reaching the ledger, and the standby force-promoted at once", expect: SAFETY, run: partition_keep_ledger },
];

/// The broken-build check: the same fault as `partition-keep-ledger`, run against a
/// controller built to skip waiting out the old site's leases; the checker must report it.
pub const BROKEN: Scenario = Scenario {
    name: "broken-skip-lease-wait",
    about: "partition-keep-ledger against a controller built with --features chaos-broken-skip-lease-wait: the checks must fail",
    expect: Expect { active_stays_healthy: false, host_freeze: false, broken_build: true },
    run: partition_keep_ledger,
};

/// Scenarios that need no controller (the etcd baseline runs these).
pub const BASELINE: &[&str] = &[
    "site-cut",
    "partial-partition",
    "one-way-partition",
    "kill-executor",
    "freeze-site",
    "partition-keep-ledger",
];

/// The scenario named `name` (the catalog, or the broken-build check).
pub fn find(name: &str) -> Option<Scenario> {
    CATALOG
        .iter()
        .chain(std::iter::once(&BROKEN))
        .find(|s| s.name == name)
        .copied()
}

impl Scenario {
    /// Applies the scenario's faults to a warmed-up cluster (healing is the caller's).
    pub fn apply(&self, cluster: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
        (self.run)(cluster, rng)
    }
}

/// How long a site stays lost: long enough for a failover and a bit.
fn loss_duration(c: &Cluster, rng: &mut StdRng) -> Duration {
    let t = &c.plan.timing;
    let base = t.failure_timeout_ms + t.lease_ttl_ms * 2 + t.election_timeout_max_ms;
    Duration::from_millis(base + rng.gen_range(0..2000))
}

fn active(c: &Cluster) -> anyhow::Result<String> {
    wait_for(Duration::from_secs(20), || c.active_site())
        .context("no active site to aim the fault at")
}

fn standby(c: &Cluster, active: &str) -> anyhow::Result<String> {
    c.data_sites()
        .into_iter()
        .find(|s| s != active)
        .context("no standby site")
}

fn leader_at(c: &Cluster, site: &str) -> bool {
    if c.baseline() {
        return false;
    }
    c.op.leader()
        .and_then(|l| c.plan.site_of(l).map(|s| s.name == site))
        .unwrap_or(false)
}

fn fault_start(c: &mut Cluster, fault: &str, site: Option<&str>, isolates_site: bool) {
    let leader_at_site = site.is_some_and(|s| leader_at(c, s));
    c.events.push(HarnessEvent::FaultStart {
        t_ns: now_ns(),
        fault: fault.to_string(),
        site: site.map(str::to_string),
        isolates_site,
        leader_at_site,
    });
}

fn fault_end(c: &mut Cluster, fault: &str) {
    c.events.push(HarnessEvent::FaultEnd {
        t_ns: now_ns(),
        fault: fault.to_string(),
    });
}

fn other_ips(c: &Cluster, site: &str) -> Vec<Ipv4Addr> {
    c.plan
        .sites
        .iter()
        .filter(|s| s.name != site)
        .map(|s| s.ip)
        .collect()
}

/// Promote with the operator's CLI; an acknowledged answer is recorded for S3.
pub fn promote(c: &mut Cluster, site: &str, force: bool) -> anyhow::Result<bool> {
    let answer = c.op.promote(site, force)?;
    record_answer(c, "promote", Some(site), &answer);
    Ok(answer.ok)
}

fn record_answer(
    c: &mut Cluster,
    command: &str,
    site: Option<&str>,
    answer: &crate::cluster::Answer,
) {
    let t_ns = now_ns();
    let epoch = answer
        .json
        .as_ref()
        .and_then(|j| j.get("group")?.get("epoch")?.as_u64());
    match (answer.ok, epoch) {
        (true, Some(epoch)) => c.events.push(HarnessEvent::Acknowledged {
            t_ns,
            command: command.to_string(),
            site: site.map(str::to_string),
            epoch,
        }),
        _ => c.events.push(HarnessEvent::Note {
            t_ns,
            text: format!(
                "{command} {} not acknowledged: {}",
                site.unwrap_or(""),
                answer.stderr
            ),
        }),
    }
}

fn site_cut(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    fault_start(c, "site-cut", Some(&a), true);
    c.net.cut(&a)?;
    pause(loss_duration(c, rng))?;
    c.net.reconnect(&a)?;
    fault_end(c, "site-cut");
    Ok(())
}

fn partial_partition(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let sites = c.data_sites();
    let x = sites[rng.gen_range(0..sites.len())].clone();
    let witnesses: Vec<Ipv4Addr> = c.plan.witnesses().iter().map(|w| w.ip).collect();
    let witness_names: Vec<String> = c.plan.witnesses().iter().map(|w| w.name.clone()).collect();
    fault_start(c, &format!("{x} cut from the witness"), Some(&x), false);
    let x_ip = c.net.site(&x)?.ip;
    for (w, name) in witnesses.iter().zip(&witness_names) {
        c.net.drop_one_way(&x, *w)?;
        c.net.drop_one_way(name, x_ip)?;
    }
    pause(loss_duration(c, rng))?;
    c.net.heal()?;
    fault_end(c, "partial-partition");
    Ok(())
}

fn one_way(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let outbound = rng.gen_bool(0.5);
    let a_ip = c.net.site(&a)?.ip;
    if outbound {
        fault_start(c, &format!("{a} → others dropped"), Some(&a), false);
        for ip in other_ips(c, &a) {
            c.net.drop_one_way(&a, ip)?;
        }
    } else {
        fault_start(c, &format!("others → {a} dropped"), Some(&a), false);
        let others: Vec<String> = c
            .plan
            .sites
            .iter()
            .map(|s| s.name.clone())
            .filter(|s| *s != a)
            .collect();
        for s in others {
            c.net.drop_one_way(&s, a_ip)?;
        }
    }
    pause(loss_duration(c, rng))?;
    c.net.heal()?;
    fault_end(c, "one-way-partition");
    Ok(())
}

fn kill_executor(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let k = rng.gen_range(1..=EXECUTORS_PER_SITE);
    let name = Cluster::executor_name(&a, k);
    fault_start(c, &format!("{name} SIGKILLed"), Some(&a), false);
    c.kill_executor(&name);
    pause(Duration::from_millis(2000 + rng.gen_range(0..2000)))?;
    c.restart_executor(&name)?;
    fault_end(c, "kill-executor");
    pause(Duration::from_secs(3))
}

fn kill_leader(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let leader = wait_for(Duration::from_secs(20), || c.op.leader()).context("no leader")?;
    let down = Duration::from_millis(3000 + rng.gen_range(0..2000));
    kill_and_restart(c, leader, &format!("leader c{leader}"), "kill-leader", down)
}

/// SIGKILLs controller `id`, keeps it down for `down`, restarts it on its data dir, and
/// leaves the cluster 3 s to settle.
fn kill_and_restart(
    c: &mut Cluster,
    id: u64,
    who: &str,
    scenario: &str,
    down: Duration,
) -> anyhow::Result<()> {
    let site = c.plan.site_of(id).map(|s| s.name.clone());
    fault_start(c, &format!("{who} SIGKILLed"), site.as_deref(), false);
    c.kill_controller(id);
    pause(down)?;
    c.restart_controller(id)?;
    fault_end(c, scenario);
    pause(Duration::from_secs(3))
}

fn kill_mid_promotion(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let b = standby(c, &a)?;
    let leader = wait_for(Duration::from_secs(20), || c.op.leader()).context("no leader")?;
    let op = c.op.clone();
    let target = b.clone();
    let promoting = std::thread::spawn(move || op.promote(&target, false));
    pause(Duration::from_millis(rng.gen_range(50..600)))?;
    let site = c.plan.site_of(leader).map(|s| s.name.clone());
    fault_start(
        c,
        &format!("leader c{leader} SIGKILLed during promote {b}"),
        site.as_deref(),
        false,
    );
    c.kill_controller(leader);
    let answer = promoting
        .join()
        .map_err(|_| anyhow::anyhow!("promote thread panicked"))??;
    record_answer(c, "promote", Some(&b), &answer);
    pause(Duration::from_millis(1000 + rng.gen_range(0..2000)))?;
    c.restart_controller(leader)?;
    fault_end(c, "kill-mid-promotion");
    Ok(())
}

fn freeze_site(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    fault_start(c, &format!("{a} frozen (SIGSTOP)"), Some(&a), true);
    let pids = c.site_pids(&a)?;
    crate::procs::signal_all(&pids, libc::SIGSTOP);
    let held = pause(loss_duration(c, rng));
    crate::procs::signal_all(&pids, libc::SIGCONT);
    held?;
    fault_end(c, "freeze-site");
    Ok(())
}

fn degrade(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let delay_ms = rng.gen_range(20..120);
    let loss = rng.gen_range(0.05..0.2);
    for s in c.plan.sites.clone() {
        if !c.net.delay(&s.name, delay_ms, delay_ms / 2)? {
            c.netem_missing = true;
            c.net.throttle(&s.name, 2000)?;
        }
        let others = other_ips(c, &s.name);
        c.net.lossy(&s.name, &others, loss)?;
    }
    Ok(())
}

fn degraded_links(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let b = standby(c, &a)?;
    fault_start(
        c,
        "delay, loss and reordering on inter-site links",
        None,
        false,
    );
    degrade(c, rng)?;
    pause(Duration::from_millis(3000 + rng.gen_range(0..2000)))?;
    promote(c, &b, false)?;
    pause(Duration::from_secs(3))?;
    c.net.heal()?;
    fault_end(c, "degraded-links");
    Ok(())
}

fn restart_controller(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let ids = c.plan.controllers();
    let id = ids[rng.gen_range(0..ids.len())];
    let down = Duration::from_millis(1000 + rng.gen_range(0..3000));
    kill_and_restart(
        c,
        id,
        &format!("controller c{id}"),
        "restart-controller",
        down,
    )
}

fn rolling_restart(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    fault_start(c, "rolling restart of every controller", None, false);
    for id in c.plan.controllers() {
        let name = Cluster::controller_name(id);
        let clean = c.procs.terminate(&name, Duration::from_secs(10));
        c.note(format!(
            "controller {id} stopped (SIGTERM, clean exit: {clean})"
        ));
        pause(Duration::from_millis(200 + rng.gen_range(0..800)))?;
        c.restart_controller(id)?;
        // The next one goes only once the cluster has a leader with a quorum again.
        wait_for(Duration::from_secs(20), || c.op.leader()).context("no leader after a restart")?;
        pause(Duration::from_secs(1))?;
    }
    fault_end(c, "rolling-restart");
    pause(Duration::from_secs(2))
}

fn operator_during_fault(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let b = standby(c, &a)?;
    let witness = c.plan.witnesses().first().map(|w| w.name.clone());
    fault_start(
        c,
        "witness cut off, lossy links, operator commands",
        witness.as_deref(),
        false,
    );
    if let Some(w) = &witness {
        c.net.cut(w)?;
    }
    let loss = rng.gen_range(0.02..0.1);
    for s in c.data_sites() {
        let others = other_ips(c, &s);
        c.net.lossy(&s, &others, loss)?;
    }
    promote(c, &b, false)?;
    pause(Duration::from_millis(500 + rng.gen_range(0..1500)))?;
    let answer = c.op.demote()?;
    record_answer(c, "demote", None, &answer);
    pause(Duration::from_millis(500 + rng.gen_range(0..1500)))?;
    promote(c, &a, false)?;
    c.net.heal()?;
    fault_end(c, "operator-during-fault");
    Ok(())
}

fn reload_during_promotion(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let b = standby(c, &a)?;
    fault_start(
        c,
        &format!("reload of {a} during promote {b}"),
        Some(&a),
        false,
    );
    let op = c.op.clone();
    let site = a.clone();
    let reloading = std::thread::spawn(move || op.reload(&site));
    pause(Duration::from_millis(rng.gen_range(100..1500)))?;
    promote(c, &b, false)?;
    let answer = reloading
        .join()
        .map_err(|_| anyhow::anyhow!("reload thread panicked"))??;
    c.note(format!("reload of {a}: ok {} {}", answer.ok, answer.stderr));
    fault_end(c, "reload-during-promotion");
    Ok(())
}

fn double_fault(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let b = standby(c, &a)?;
    let first = rng.gen_range(0..3);
    match first {
        0 => {
            fault_start(c, &format!("{a} cut off"), Some(&a), true);
            c.net.cut(&a)?;
        }
        1 => {
            let leader =
                wait_for(Duration::from_secs(20), || c.op.leader()).context("no leader")?;
            let site = c.plan.site_of(leader).map(|s| s.name.clone());
            fault_start(
                c,
                &format!("leader c{leader} SIGKILLed"),
                site.as_deref(),
                false,
            );
            c.kill_controller(leader);
        }
        _ => {
            fault_start(c, "lossy links", None, false);
            degrade(c, rng)?;
        }
    }
    pause(Duration::from_millis(1000 + rng.gen_range(0..3000)))?;
    match rng.gen_range(0..3) {
        0 => {
            let leader = c.op.leader();
            if let Some(l) = leader {
                let site = c.plan.site_of(l).map(|s| s.name.clone());
                fault_start(
                    c,
                    &format!("second fault: leader c{l} SIGKILLed"),
                    site.as_deref(),
                    false,
                );
                c.kill_controller(l);
            } else {
                c.note("second fault skipped: no leader to kill");
            }
        }
        1 => {
            fault_start(c, &format!("second fault: {b} frozen"), Some(&b), false);
            let pids = c.site_pids(&b)?;
            crate::procs::signal_all(&pids, libc::SIGSTOP);
            let held = pause(Duration::from_millis(1500 + rng.gen_range(0..1500)));
            crate::procs::signal_all(&pids, libc::SIGCONT);
            held?;
        }
        _ => {
            let name = Cluster::executor_name(&b, 1);
            fault_start(
                c,
                &format!("second fault: {name} SIGKILLed"),
                Some(&b),
                false,
            );
            c.kill_executor(&name);
        }
    }
    pause(loss_duration(c, rng))?;
    c.net.heal()?;
    for id in c.plan.controllers() {
        if c.procs.pid(&Cluster::controller_name(id)).is_none() {
            c.restart_controller(id)?;
        }
    }
    for s in c.data_sites() {
        for k in 1..=EXECUTORS_PER_SITE {
            let name = Cluster::executor_name(&s, k);
            if c.procs.pid(&name).is_none() {
                c.restart_executor(&name)?;
            }
        }
    }
    fault_end(c, "double-fault");
    Ok(())
}

/// The active site cut (both ways) from the leader's site only. The leader sits outside
/// the active site (if it leads from there, it is SIGKILLed and restarted until another
/// controller leads), keeps its quorum through the third site, and the active site still
/// reaches a majority of controllers: its holders renew through a follower that relays
/// (docs/leases.md, "Relayed renewals"), so no worker of it may stop (L3).
fn cut_from_leader(c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let mut leader = wait_for(Duration::from_secs(20), || c.op.leader()).context("no leader")?;
    for _ in 0..10 {
        if !leader_at(c, &a) {
            break;
        }
        c.note(format!("leader c{leader} is at the active site: moving it"));
        c.kill_controller(leader);
        let old = leader;
        wait_for(Duration::from_secs(20), || {
            c.op.leader().filter(|l| *l != old)
        })
        .context("no new leader")?;
        c.restart_controller(old)?;
        pause(Duration::from_secs(2))?;
        leader = wait_for(Duration::from_secs(20), || c.op.leader()).context("no leader")?;
    }
    if leader_at(c, &a) {
        anyhow::bail!("the leader stayed at the active site {a} through 10 elections");
    }
    let leader_site = c
        .plan
        .site_of(leader)
        .map(|s| s.name.clone())
        .context("the leader's site")?;
    fault_start(
        c,
        &format!("{a} cut from the leader c{leader} at {leader_site}"),
        Some(&a),
        false,
    );
    let a_ip = c.net.site(&a)?.ip;
    let leader_ip = c.net.site(&leader_site)?.ip;
    c.net.drop_one_way(&a, leader_ip)?;
    c.net.drop_one_way(&leader_site, a_ip)?;
    pause(loss_duration(c, rng))?;
    if c.op.leader() != Some(leader) {
        c.note(format!(
            "the leader moved from c{leader} during the cut: {:?}",
            c.op.leader()
        ));
    }
    c.net.heal()?;
    fault_end(c, "cut-from-leader");
    Ok(())
}

fn partition_keep_ledger(c: &mut Cluster, _rng: &mut StdRng) -> anyhow::Result<()> {
    let a = active(c)?;
    let b = standby(c, &a)?;
    fault_start(
        c,
        &format!("{a} cut from every controller, ledger reachable"),
        Some(&a),
        true,
    );
    let a_ip = c.net.site(&a)?.ip;
    let others: Vec<String> = c
        .plan
        .sites
        .iter()
        .map(|s| s.name.clone())
        .filter(|s| *s != a)
        .collect();
    for s in &others {
        let ip = c.net.site(s)?.ip;
        c.net.drop_one_way(&a, ip)?;
        c.net.drop_one_way(s, a_ip)?;
    }
    if c.baseline() {
        // No operator: the lock moves when the old holder's session expires.
        pause(Duration::from_secs(6))?;
        c.net.heal()?;
        fault_end(c, "partition-keep-ledger");
        return Ok(());
    }
    // The operator forces the standby in at once; the controller must still wait out the
    // old site's leases before the standby may start.
    let reachable = c
        .plan
        .topology
        .controllers()
        .filter(|(site, _)| site.as_str() != a)
        .map(|(_, ctl)| ctl.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let acked = wait_for(Duration::from_secs(20), || {
        let answer = c.op.promote_via(&b, true, &reachable).ok()?;
        record_answer(c, "promote", Some(&b), &answer);
        answer.ok.then_some(())
    });
    if acked.is_none() {
        c.note(format!("promote {b} --force was never acknowledged"));
    }
    pause(Duration::from_secs(3))?;
    c.net.heal()?;
    fault_end(c, "partition-keep-ledger");
    Ok(())
}

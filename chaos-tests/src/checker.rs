//! The checker: pure functions over one run's recorded history (no I/O, no clock), so
//! each rule is tested on hand-made histories.
//!
//! - S1: worker intervals (own start record → exit seen by the observer's pidfd) of two
//!   sites never overlap. In a whole-site freeze this cannot hold (the design says so);
//!   there the overlap is reported, not counted, and S2 is what must hold.
//! - S2: the ledger's fencing values never decrease in commit order (a stale write
//!   accepted is a violation); refused stale writes are counted, and every write a stale
//!   worker attempted after a newer value was accepted must have been refused.
//! - S3: every acknowledged promote or demote is in the final history with its epoch.
//! - L1: after an isolating fault on the active site, a standby worker starts within the
//!   configured bound.
//! - L2: workers of a site cut off from the quorum are gone by `fault + lease_ttl`, and
//!   none starts there later during the fault (no grant or renewal from a minority).
//! - L3 (needless interruptions): when the fault leaves the active site healthy and
//!   connected, none of its workers stops.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::faults::Expect;
use crate::recorder::{HarnessEvent, Outcome, WorkerLog};
use crate::runner::Collected;

/// The bounds the checker measures against (from the topology's timing).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Bounds {
    /// L1 when the leader survives.
    pub l1_ms: u64,
    /// L1 when the leader was lost with the site (one election more).
    pub l1_leader_lost_ms: u64,
    /// The lease TTL (L2: nothing at a cut-off site outlives the cut by more).
    pub lease_ttl_ms: u64,
}

/// The class of a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rule {
    /// Two sites' workers overlapped.
    S1,
    /// A stale fencing value was accepted, or the current one refused.
    S2,
    /// An acknowledged change is missing from the history.
    S3,
    /// Recovery took longer than the bound (or did not happen).
    L1,
    /// A cut-off site kept or got a lease.
    L2,
    /// A healthy active site's workers were stopped.
    L3,
    /// The cluster did not come back to a writing active site after healing.
    Settle,
}

impl Rule {
    /// Safety rules: CI fails on these.
    pub fn is_safety(self) -> bool {
        matches!(self, Rule::S1 | Rule::S2 | Rule::S3 | Rule::L2)
    }
}

/// One broken rule, with what shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Violation {
    /// Which rule.
    pub rule: Rule,
    /// What happened, with pids, sites and times.
    pub detail: String,
}

/// The checker's findings for one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// Every broken rule.
    pub violations: Vec<Violation>,
    /// Overlaps found where the scenario freezes a whole site (reported, not counted).
    pub freeze_overlaps: Vec<String>,
    /// Writes refused by the fencing check.
    pub refused_stale: u64,
    /// Writes accepted with a value lower than one accepted before (must be 0).
    pub accepted_stale: u64,
    /// Writes a stale worker attempted after a newer value was accepted.
    pub stale_after_newer: u64,
    /// Of those, refused by the fencing check.
    pub stale_after_newer_refused: u64,
    /// Of those, accepted (each is also an S2 violation on the ledger).
    pub stale_after_newer_accepted: u64,
    /// Of those, unanswered (connection lost: the ledger shows whether they landed).
    pub stale_after_newer_unanswered: u64,
    /// Accepted writes in total.
    pub accepted: u64,
    /// Time from the isolating fault to the first standby worker start.
    pub recovery_ms: Option<f64>,
    /// Active-site workers stopped although the fault left the site healthy.
    pub needless_interruptions: u64,
}

/// Checks one run.
pub fn check(run: &Collected, expect: Expect, bounds: Bounds) -> Verdict {
    let mut v = Verdict::default();
    s1(run, expect, &mut v);
    s2(run, &mut v);
    s3(run, &mut v);
    l1(run, bounds, &mut v);
    l2(run, bounds, &mut v);
    l3(run, expect, &mut v);
    if !run.settled {
        v.violations.push(Violation {
            rule: Rule::Settle,
            detail: "after healing, no site was active and writing within the wait".into(),
        });
    }
    v
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn s1(run: &Collected, expect: Expect, v: &mut Verdict) {
    let w = &run.workers;
    for (i, a) in w.iter().enumerate() {
        for b in &w[i + 1..] {
            if a.site == b.site {
                continue;
            }
            let (a_end, b_end) = (a.end_ns(run.end_ns), b.end_ns(run.end_ns));
            let from = a.start_ns.max(b.start_ns);
            let to = a_end.min(b_end);
            if from >= to {
                continue;
            }
            let detail = format!(
                "worker {} ({}, fencing {}) ran {:.0}..{:.0} ms and worker {} ({}, fencing {}) ran {:.0}..{:.0} ms: {:.0} ms together",
                a.pid, a.site, a.epoch, ms(a.start_ns - run.faults_from_ns.min(a.start_ns)), ms(a_end.saturating_sub(run.faults_from_ns)),
                b.pid, b.site, b.epoch, ms(b.start_ns.saturating_sub(run.faults_from_ns)), ms(b_end.saturating_sub(run.faults_from_ns)),
                ms(to - from)
            );
            if expect.host_freeze {
                v.freeze_overlaps.push(detail);
            } else {
                v.violations.push(Violation {
                    rule: Rule::S1,
                    detail,
                });
            }
        }
    }
}

fn s2(run: &Collected, v: &mut Verdict) {
    let mut highest = 0i64;
    for row in &run.ledger {
        if row.epoch < highest {
            v.accepted_stale += 1;
            v.violations.push(Violation {
                rule: Rule::S2,
                detail: format!(
                    "ledger row {} written by {} (pid {}) with fencing {} after {} was accepted",
                    row.seq, row.site, row.pid, row.epoch, highest
                ),
            });
        }
        highest = highest.max(row.epoch);
    }
    v.accepted = run.ledger.len() as u64;
    // When each fencing value was first accepted (by the writer's send time).
    let mut first_accepted: BTreeMap<i64, i64> = BTreeMap::new();
    for row in &run.ledger {
        first_accepted
            .entry(row.epoch)
            .and_modify(|t| *t = (*t).min(row.mono_ns))
            .or_insert(row.mono_ns);
    }
    for w in &run.workers {
        let newer_from = first_accepted
            .range(w.epoch as i64 + 1..)
            .map(|(_, t)| *t)
            .min();
        for a in &w.attempts {
            if let Outcome::Refused { highest } = a.outcome {
                v.refused_stale += 1;
                if highest <= a.epoch as i64 {
                    v.violations.push(Violation {
                        rule: Rule::S2,
                        detail: format!(
                            "worker {} ({}) refused at fencing {} although the highest seen was {}",
                            w.pid, w.site, a.epoch, highest
                        ),
                    });
                }
            }
            let Some(newer) = newer_from else { continue };
            if (a.t_ns as i64) <= newer {
                continue;
            }
            v.stale_after_newer += 1;
            match a.outcome {
                Outcome::Refused { .. } => v.stale_after_newer_refused += 1,
                Outcome::Accepted { .. } => v.stale_after_newer_accepted += 1,
                Outcome::Error { .. } => v.stale_after_newer_unanswered += 1,
            }
        }
    }
}

fn s3(run: &Collected, v: &mut Verdict) {
    for e in &run.events {
        let HarnessEvent::Acknowledged {
            command,
            site,
            epoch,
            ..
        } = e
        else {
            continue;
        };
        let want_to = site.clone().unwrap_or_default();
        let found = run.history.iter().any(|h| {
            h.get("epoch").and_then(|x| x.as_u64()) == Some(*epoch)
                && h.get("to").and_then(|x| x.as_str()).unwrap_or("") == want_to
        });
        if !found {
            v.violations.push(Violation {
                rule: Rule::S3,
                detail: format!(
                    "acknowledged {command} {want_to} at epoch {epoch} is not in the final history"
                ),
            });
        }
    }
}

/// The first isolating fault on the then-active site: (time, site, leader lost with it).
fn isolating_fault(run: &Collected) -> Option<(u64, String, bool)> {
    run.events.iter().find_map(|e| match e {
        HarnessEvent::FaultStart {
            t_ns,
            site: Some(site),
            isolates_site: true,
            leader_at_site,
            ..
        } if *site == run.initial_active => Some((*t_ns, site.clone(), *leader_at_site)),
        _ => None,
    })
}

fn fault_end_after(run: &Collected, t: u64) -> u64 {
    run.events
        .iter()
        .filter_map(|e| match e {
            HarnessEvent::FaultEnd { t_ns, .. } if *t_ns >= t => Some(*t_ns),
            _ => None,
        })
        .min()
        .unwrap_or(run.end_ns)
}

fn l1(run: &Collected, bounds: Bounds, v: &mut Verdict) {
    let Some((t, site, leader_lost)) = isolating_fault(run) else {
        return;
    };
    let first = run
        .workers
        .iter()
        .filter(|w| w.site != site && w.start_ns > t)
        .map(|w| w.start_ns)
        .min();
    let bound = if leader_lost {
        bounds.l1_leader_lost_ms
    } else {
        bounds.l1_ms
    };
    match first {
        Some(s) => {
            let took = ms(s - t);
            v.recovery_ms = Some(took);
            if took > bound as f64 {
                v.violations.push(Violation {
                    rule: Rule::L1,
                    detail: format!(
                        "a standby worker started {took:.0} ms after {site} was lost; the bound is {bound} ms{}",
                        if leader_lost { " (leader lost with it)" } else { "" }
                    ),
                });
            }
        }
        None => v.violations.push(Violation {
            rule: Rule::L1,
            detail: format!("no standby worker started after {site} was lost"),
        }),
    }
}

fn l2(run: &Collected, bounds: Bounds, v: &mut Verdict) {
    for e in &run.events {
        let HarnessEvent::FaultStart {
            t_ns: t,
            site: Some(site),
            isolates_site: true,
            fault,
            ..
        } = e
        else {
            continue;
        };
        if fault.contains("frozen") {
            // A frozen site does nothing by construction; S2 covers its resume.
            continue;
        }
        let end = fault_end_after(run, *t);
        let limit = t + bounds.lease_ttl_ms * 1_000_000;
        for w in run.workers.iter().filter(|w| &w.site == site) {
            let w_end = w.end_ns(run.end_ns);
            if w.start_ns <= *t && w_end > limit {
                v.violations.push(Violation {
                    rule: Rule::L2,
                    detail: format!(
                        "worker {} of cut-off {site} ran until {:.0} ms after the cut (lease TTL {} ms)",
                        w.pid,
                        ms(w_end - t),
                        bounds.lease_ttl_ms
                    ),
                });
            }
            if w.start_ns > limit && w.start_ns < end {
                v.violations.push(Violation {
                    rule: Rule::L2,
                    detail: format!(
                        "worker {} started at cut-off {site} {:.0} ms into the cut: a lease from a minority",
                        w.pid,
                        ms(w.start_ns - t)
                    ),
                });
            }
        }
    }
}

fn l3(run: &Collected, expect: Expect, v: &mut Verdict) {
    if !expect.active_stays_healthy {
        return;
    }
    let affected: BTreeSet<&str> = run.affected_executors.iter().map(String::as_str).collect();
    let stopped: Vec<&WorkerLog> = run
        .workers
        .iter()
        .filter(|w| w.site == run.initial_active && !affected.contains(w.executor.as_str()))
        .filter(|w| {
            w.exit_ns
                .is_some_and(|e| e > run.faults_from_ns && e < run.end_ns)
        })
        .collect();
    v.needless_interruptions = stopped.len() as u64;
    for w in stopped {
        v.violations.push(Violation {
            rule: Rule::L3,
            detail: format!(
                "worker {} of healthy active site {} ({}) stopped {:.0} ms into the faults",
                w.pid,
                w.site,
                w.executor,
                ms(w.exit_ns.unwrap_or(0).saturating_sub(run.faults_from_ns))
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Attempt;
    use crate::workload::LedgerRow;

    const MS: u64 = 1_000_000;

    fn worker(pid: i32, site: &str, epoch: u64, start: u64, exit: Option<u64>) -> WorkerLog {
        WorkerLog {
            pid,
            site: site.into(),
            instance: 0,
            epoch,
            executor: format!("exec-{site}-1"),
            start_ns: start * MS,
            exit_ns: exit.map(|e| e * MS),
            last_ns: start * MS,
            alive_at_end: exit.is_none(),
            attempts: Vec::new(),
        }
    }

    fn row(seq: i64, epoch: i64, site: &str, t: u64) -> LedgerRow {
        LedgerRow {
            seq,
            epoch,
            site: site.into(),
            pid: 1,
            mono_ns: (t * MS) as i64,
        }
    }

    fn run(
        workers: Vec<WorkerLog>,
        ledger: Vec<LedgerRow>,
        events: Vec<HarnessEvent>,
    ) -> Collected {
        Collected {
            workers,
            ledger,
            history: Vec::new(),
            events,
            faults_from_ns: 1000 * MS,
            end_ns: 20_000 * MS,
            initial_active: "site-a".into(),
            final_active: "site-b".into(),
            affected_executors: Vec::new(),
            settled: true,
            netem_missing: false,
        }
    }

    const BOUNDS: Bounds = Bounds {
        l1_ms: 4250,
        l1_leader_lost_ms: 5350,
        lease_ttl_ms: 2000,
    };

    fn rules(v: &Verdict) -> Vec<Rule> {
        v.violations.iter().map(|x| x.rule).collect()
    }

    fn cut(t: u64) -> HarnessEvent {
        HarnessEvent::FaultStart {
            t_ns: t * MS,
            fault: "site-cut".into(),
            site: Some("site-a".into()),
            isolates_site: true,
            leader_at_site: false,
        }
    }

    /// A clean failover: site-a gone before site-b starts, recovery within the bound.
    #[test]
    fn clean_failover_passes_and_measures_recovery() {
        let r = run(
            vec![
                worker(1, "site-a", 1, 0, Some(2500)),
                worker(2, "site-b", 2, 5000, None),
            ],
            vec![row(1, 1, "site-a", 100), row(2, 2, "site-b", 5100)],
            vec![cut(1000)],
        );
        let v = check(&r, crate::faults::CATALOG[0].expect, BOUNDS);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.recovery_ms, Some(4000.0));
    }

    /// Overlapping workers of two sites are an S1 violation, except in a whole-site
    /// freeze, where they are reported apart.
    #[test]
    fn overlap_is_s1_unless_host_freeze() {
        let r = run(
            vec![
                worker(1, "site-a", 1, 0, Some(3000)),
                worker(2, "site-b", 2, 2900, None),
            ],
            Vec::new(),
            Vec::new(),
        );
        let v = check(&r, crate::faults::CATALOG[2].expect, BOUNDS);
        assert_eq!(rules(&v), vec![Rule::S1]);
        let freeze = crate::faults::find("freeze-site").expect("freeze").expect;
        let v = check(&r, freeze, BOUNDS);
        assert!(v.violations.is_empty());
        assert_eq!(v.freeze_overlaps.len(), 1);
    }

    /// A lower fencing value accepted after a higher one is an S2 violation; refused
    /// stale writes are counted.
    #[test]
    fn stale_accept_is_s2_and_refusals_are_counted() {
        let mut stale = worker(1, "site-a", 1, 0, Some(3000));
        stale.attempts.push(Attempt {
            t_ns: 2600 * MS,
            done_ns: 2601 * MS,
            epoch: 1,
            outcome: Outcome::Refused { highest: 2 },
        });
        let r = run(
            vec![stale],
            vec![
                row(1, 1, "site-a", 100),
                row(2, 2, "site-b", 2500),
                row(3, 1, "site-a", 2700),
            ],
            Vec::new(),
        );
        let v = check(&r, crate::faults::CATALOG[2].expect, BOUNDS);
        assert_eq!(rules(&v), vec![Rule::S2]);
        assert_eq!(v.accepted_stale, 1);
        assert_eq!(v.refused_stale, 1);
        assert_eq!(v.stale_after_newer, 1);
        assert_eq!(v.stale_after_newer_refused, 1);
    }

    /// An acknowledged promote missing from the history is an S3 violation.
    #[test]
    fn lost_acknowledged_promote_is_s3() {
        let ack = HarnessEvent::Acknowledged {
            t_ns: 2000 * MS,
            command: "promote".into(),
            site: Some("site-b".into()),
            epoch: 2,
        };
        let mut r = run(Vec::new(), Vec::new(), vec![ack]);
        let v = check(&r, crate::faults::CATALOG[2].expect, BOUNDS);
        assert_eq!(rules(&v), vec![Rule::S3]);
        r.history = vec![serde_json::json!({"epoch": 2, "to": "site-b"})];
        assert!(check(&r, crate::faults::CATALOG[2].expect, BOUNDS)
            .violations
            .is_empty());
    }

    /// A worker at a cut-off site alive past the lease TTL is an L2 violation; a slow
    /// recovery is L1.
    #[test]
    fn cut_site_outliving_its_lease_is_l2_and_slow_recovery_is_l1() {
        let r = run(
            vec![
                worker(1, "site-a", 1, 0, Some(3100)),
                worker(2, "site-b", 2, 9000, None),
            ],
            Vec::new(),
            vec![cut(1000)],
        );
        let v = check(&r, crate::faults::CATALOG[0].expect, BOUNDS);
        assert_eq!(rules(&v), vec![Rule::L1, Rule::L2]);
    }

    /// A healthy active site's worker stopped during the faults is a needless
    /// interruption; one of an executor the fault killed is not.
    #[test]
    fn needless_interruptions_skip_directly_hit_executors() {
        let mut r = run(
            vec![
                worker(1, "site-a", 1, 0, Some(2000)),
                worker(2, "site-a", 1, 2100, None),
            ],
            Vec::new(),
            Vec::new(),
        );
        let healthy = crate::faults::find("kill-leader")
            .expect("kill-leader")
            .expect;
        let v = check(&r, healthy, BOUNDS);
        assert_eq!(v.needless_interruptions, 1);
        r.affected_executors = vec!["exec-site-a-1".into()];
        assert_eq!(check(&r, healthy, BOUNDS).needless_interruptions, 0);
    }
}

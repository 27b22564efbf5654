//! Seeded fault schedules: what happens when, drawn from the seed before the run starts.

use std::time::Duration;

use failover_core::NodeId;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::net::{Endpoint, HOLDER_BASE};

/// Which controller a crash or a pause hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whoever leads when the fault fires (a random one if none does).
    Leader,
    /// This one.
    Node(NodeId),
}

/// One scheduled fault or operator action.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// A controller crashes; `power_loss` loses what it had not synced.
    Crash {
        /// Which controller.
        target: Target,
        /// Whether unsynced writes are lost too.
        power_loss: bool,
    },
    /// Every crashed controller restarts on what its disk kept.
    RestartAll,
    /// A controller stops whole, as under SIGSTOP or a long VM pause: none of its tasks
    /// runs, its peers and holders hear nothing, and what it was doing resumes with its
    /// timers late. Only a running controller is paused.
    Pause {
        /// Which controller.
        target: Target,
    },
    /// Every paused controller runs again.
    ResumeAll,
    /// These links are cut (each one way).
    Cut(Vec<(Endpoint, Endpoint)>),
    /// These links are restored.
    Mend(Vec<(Endpoint, Endpoint)>),
    /// Message loss probability and extra random delay from now on.
    Weather {
        /// Probability that a message is lost.
        loss: f64,
        /// Largest extra delay of a message.
        extra_delay_ms: u64,
    },
    /// The operator promotes a data site (a schedule may crash the leader moments
    /// later, in the middle of the promotion).
    Promote {
        /// The site's index.
        site: usize,
        /// Skip the readiness check.
        force: bool,
    },
    /// The operator demotes the group (no active site).
    Demote,
}

/// The parties a schedule may cut apart.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Controllers by site index.
    pub controllers: Vec<Vec<NodeId>>,
    /// Holder endpoints by site index (empty for the witness).
    pub holders: Vec<Vec<Endpoint>>,
    /// Indexes of the sites that can be promoted.
    pub data_sites: Vec<usize>,
}

impl Layout {
    fn site_endpoints(&self, site: usize) -> Vec<Endpoint> {
        let mut all: Vec<Endpoint> = self.controllers[site].clone();
        all.extend(&self.holders[site]);
        all
    }

    fn all_endpoints(&self) -> Vec<Endpoint> {
        (0..self.controllers.len())
            .flat_map(|s| self.site_endpoints(s))
            .collect()
    }
}

/// A schedule: faults at offsets from the start, then everything heals at `heal_at`.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Faults in time order.
    pub faults: Vec<(Duration, Fault)>,
    /// When every fault is healed and every controller restarted.
    pub heal_at: Duration,
}

fn both_ways(a: &[Endpoint], b: &[Endpoint]) -> Vec<(Endpoint, Endpoint)> {
    let mut cuts = Vec::new();
    for x in a {
        for y in b {
            cuts.push((*x, *y));
            cuts.push((*y, *x));
        }
    }
    cuts
}

fn random_cut(rng: &mut SmallRng, layout: &Layout) -> Vec<(Endpoint, Endpoint)> {
    let sites = layout.controllers.len();
    match rng.random_range(0..5) {
        // A site split: one site against the others.
        0 => {
            let alone = rng.random_range(0..sites);
            let rest: Vec<Endpoint> = (0..sites)
                .filter(|s| *s != alone)
                .flat_map(|s| layout.site_endpoints(s))
                .collect();
            both_ways(&layout.site_endpoints(alone), &rest)
        }
        // One controller isolated.
        1 => {
            let all = layout.all_endpoints();
            let controllers: Vec<Endpoint> =
                all.iter().copied().filter(|e| *e < HOLDER_BASE).collect();
            let node = controllers[rng.random_range(0..controllers.len())];
            let rest: Vec<Endpoint> = all.into_iter().filter(|e| *e != node).collect();
            both_ways(&[node], &rest)
        }
        // A data site's holders cut from every controller (the site is lost to the cluster).
        2 => {
            let site = layout.data_sites[rng.random_range(0..layout.data_sites.len())];
            let controllers: Vec<Endpoint> = layout.controllers.iter().flatten().copied().collect();
            let mut cuts = both_ways(&layout.holders[site], &controllers);
            cuts.extend(both_ways(
                &layout.controllers[site],
                &layout
                    .all_endpoints()
                    .into_iter()
                    .filter(|e| !layout.site_endpoints(site).contains(e))
                    .collect::<Vec<_>>(),
            ));
            cuts
        }
        // One-way cuts between random pairs.
        _ => {
            let all = layout.all_endpoints();
            let n = rng.random_range(1..6);
            (0..n)
                .map(|_| {
                    let a = all[rng.random_range(0..all.len())];
                    let mut b = all[rng.random_range(0..all.len())];
                    if a == b {
                        b = all[(all.iter().position(|e| *e == a).unwrap_or(0) + 1) % all.len()];
                    }
                    (a, b)
                })
                .collect()
        }
    }
}

/// Pauses drawn from a generator of their own, so the other faults of a seed stay what
/// they were before pauses existed: none in a quarter of the seeds, up to three in the
/// rest, of 0.2-4 s each (a stop shorter and longer than an election), most of them of
/// the leader; a pause may come back seconds before or after another fault.
fn pauses(seed: u64, start: Duration, heal_at: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x7061_7573_6573);
    let span_ms = (heal_at - start).as_millis() as u64;
    let mut faults = Vec::new();
    for _ in 0..rng.random_range(0..4) {
        let at = start + Duration::from_millis(rng.random_range(0..span_ms));
        let end = (at + Duration::from_millis(rng.random_range(200..4000))).min(heal_at);
        let target = if rng.random_bool(0.6) {
            Target::Leader
        } else {
            Target::Node(rng.random_range(1..=5))
        };
        faults.push((at, Fault::Pause { target }));
        faults.push((end, Fault::ResumeAll));
    }
    faults
}

impl Schedule {
    /// The schedule of `seed`: faults between `start` and `heal_at`.
    pub fn generate(seed: u64, layout: &Layout, start: Duration, heal_at: Duration) -> Schedule {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7363_6865_6475_6c65);
        let mut faults = Vec::new();
        let span_ms = (heal_at - start).as_millis() as u64;
        let count = rng.random_range(4..12);
        for _ in 0..count {
            let at = start + Duration::from_millis(rng.random_range(0..span_ms));
            let length = Duration::from_millis(rng.random_range(500..6000));
            let end = (at + length).min(heal_at);
            match rng.random_range(0..10) {
                0 | 1 => {
                    let target = if rng.random_bool(0.5) {
                        Target::Leader
                    } else {
                        Target::Node(rng.random_range(1..=5))
                    };
                    let power_loss = rng.random_bool(0.5);
                    faults.push((at, Fault::Crash { target, power_loss }));
                    faults.push((end, Fault::RestartAll));
                }
                2..=4 => {
                    let cuts = random_cut(&mut rng, layout);
                    faults.push((at, Fault::Cut(cuts.clone())));
                    faults.push((end, Fault::Mend(cuts)));
                }
                5 => {
                    let loss = rng.random_range(0.02..0.3);
                    let extra_delay_ms = rng.random_range(0..300);
                    faults.push((
                        at,
                        Fault::Weather {
                            loss,
                            extra_delay_ms,
                        },
                    ));
                    faults.push((
                        end,
                        Fault::Weather {
                            loss: 0.0,
                            extra_delay_ms: 0,
                        },
                    ));
                }
                6..=8 => {
                    let site = layout.data_sites[rng.random_range(0..layout.data_sites.len())];
                    let crash_leader_after = rng
                        .random_bool(0.3)
                        .then(|| Duration::from_millis(rng.random_range(0..400)));
                    let force = rng.random_bool(0.3);
                    faults.push((at, Fault::Promote { site, force }));
                    if let Some(after) = crash_leader_after {
                        let crash = Fault::Crash {
                            target: Target::Leader,
                            power_loss: rng.random_bool(0.5),
                        };
                        faults.push((at + after, crash));
                        faults.push((end.max(at + after), Fault::RestartAll));
                    }
                }
                _ => faults.push((at, Fault::Demote)),
            }
        }
        faults.extend(pauses(seed, start, heal_at));
        faults.sort_by_key(|(at, _)| *at);
        Schedule { faults, heal_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            controllers: vec![vec![1, 2], vec![3, 4], vec![5]],
            holders: vec![
                vec![HOLDER_BASE, HOLDER_BASE + 1],
                vec![HOLDER_BASE + 2],
                vec![],
            ],
            data_sites: vec![0, 1],
        }
    }

    /// The schedule holds the seed's pauses besides its other faults; every pause is
    /// followed by a resume no later than healing, and many pause the leader.
    #[test]
    fn pauses_are_added_without_changing_the_other_faults() {
        let (start, heal_at) = (Duration::from_secs(3), Duration::from_secs(25));
        let mut paused_leader = 0;
        for seed in 0..200 {
            let schedule = Schedule::generate(seed, &layout(), start, heal_at);
            let pauses = pauses(seed, start, heal_at);
            let others: Vec<_> = schedule
                .faults
                .iter()
                .filter(|(_, f)| !matches!(f, Fault::Pause { .. } | Fault::ResumeAll))
                .collect();
            assert_eq!(others.len() + pauses.len(), schedule.faults.len());
            for pair in pauses.chunks(2) {
                let [(at, Fault::Pause { target }), (end, Fault::ResumeAll)] = pair else {
                    panic!("seed {seed}: a pause without its resume: {pair:?}");
                };
                assert!(at <= end && *end <= heal_at, "seed {seed}: {pair:?}");
                paused_leader += usize::from(*target == Target::Leader);
            }
        }
        assert!(paused_leader > 50, "{paused_leader}");
    }
}

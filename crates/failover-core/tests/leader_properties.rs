//! Properties of the sans-IO leader under random event sequences: operator promotes and
//! demotes, grants and releases, time passing, site reports coming and going, polls, and
//! proposals committed, refused or lost in any order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use failover_core::config::{GroupConfig, Hooks, SiteConfig};
use failover_core::leader::change::check_ready;
use failover_core::leader::observe::{observe, ExecutorSeen, Heard};
use failover_core::leader::{Effect, Leader, Proposal};
use failover_core::lease::LeaseTiming;
use failover_core::policy::{self, Decision};
use failover_core::{
    ChangeKind, ClusterState, Command, Epoch, GroupName, SiteId, Timing, Topology,
};
use proptest::prelude::*;

const SITES: [&str; 3] = ["a", "b", "c"];

fn topology() -> Topology {
    Topology {
        cluster_name: "t".into(),
        tls: None,
        limits: Default::default(),
        cluster_id: None,
        tokens: Vec::new(),
        timing: Timing::default(),
        sites: SITES
            .iter()
            .map(|s| SiteConfig {
                name: (*s).into(),
                controllers: Vec::new(),
                hooks: Hooks::default(),
            })
            .collect(),
        groups: ["g", "h"]
            .iter()
            .map(|g| GroupConfig {
                name: (*g).into(),
                sites: SITES.iter().map(|s| (*s).into()).collect(),
                auto_failover: true,
                accept_no_witness: false,
            })
            .collect(),
    }
}

#[derive(Debug, Clone)]
enum Event {
    /// An operator asks to move a group to a site (or to none).
    Change { group: usize, site: Option<usize> },
    /// An engine at a site acquires a lease of a group.
    Grant { group: usize, site: usize },
    /// The executor of a site reports for a group (ready or not).
    Report {
        group: usize,
        site: usize,
        ready: bool,
    },
    /// Time passes.
    Advance { ms: u64 },
    /// The reconcile loop polls the leader.
    Poll,
    /// One proposal in flight is committed and applied.
    Commit { pick: usize },
    /// One proposal in flight is not committed.
    Lose { pick: usize },
    /// Another proposer (a former leader) completes a demoting group first.
    CompleteElsewhere { group: usize },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..2usize, proptest::option::of(0..3usize))
            .prop_map(|(group, site)| Event::Change { group, site }),
        (0..2usize, 0..3usize).prop_map(|(group, site)| Event::Grant { group, site }),
        (0..2usize, 0..3usize, any::<bool>()).prop_map(|(group, site, ready)| Event::Report {
            group,
            site,
            ready
        }),
        (1..5000u64).prop_map(|ms| Event::Advance { ms }),
        Just(Event::Poll),
        Just(Event::Poll),
        any::<usize>().prop_map(|pick| Event::Commit { pick }),
        any::<usize>().prop_map(|pick| Event::Lose { pick }),
        (0..2usize).prop_map(|group| Event::CompleteElsewhere { group }),
    ]
}

fn group_name(i: usize) -> GroupName {
    ["g", "h"][i].into()
}

/// The world the leader runs in.
struct World {
    topology: Topology,
    state: ClusterState,
    leader: Leader,
    now: Instant,
    reports: BTreeMap<(usize, usize), (Instant, bool)>,
    in_flight: Vec<Proposal>,
    /// Every effect handed out, with the epoch the group was at when it was handed out.
    effects: Vec<Effect>,
    /// Completions applied from this leader's proposals: (group, from epoch).
    completed_by_us: BTreeSet<(GroupName, Epoch)>,
}

impl World {
    fn new() -> Self {
        let topology = topology();
        let now = Instant::now();
        let timing = LeaseTiming {
            ttl: Duration::from_millis(topology.timing.lease_ttl_ms),
            max_clock_drift: Duration::from_millis(topology.timing.max_clock_drift_ms),
        };
        World {
            topology,
            state: ClusterState::default(),
            leader: Leader::new(timing, now),
            now,
            reports: BTreeMap::new(),
            in_flight: Vec::new(),
            effects: Vec::new(),
            completed_by_us: BTreeSet::new(),
        }
    }

    fn heard(&self) -> Heard {
        Heard {
            executors: self
                .reports
                .iter()
                .map(|((g, s), (at, ready))| ExecutorSeen {
                    site: SITES[*s].into(),
                    executor_id: format!("e-{s}-{g}"),
                    group: group_name(*g),
                    age: self.now.saturating_duration_since(*at),
                    ready: *ready,
                    healthy: true,
                    message: String::new(),
                })
                .collect(),
            ..Heard::default()
        }
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Change { group, site } => {
                let g = group_name(group);
                let command = match site {
                    Some(s) => Command::BeginPromotion {
                        group: g,
                        to: SITES[s].into(),
                        kind: ChangeKind::Promote,
                        actor: "op".into(),
                        reason: "test".into(),
                        at_unix_ms: 0,
                    },
                    None => Command::BeginDemotion {
                        group: g,
                        actor: "op".into(),
                        reason: "test".into(),
                        at_unix_ms: 0,
                    },
                };
                let _ = self.state.apply(&command);
            }
            Event::Grant { group, site } => {
                let command = Command::Grant {
                    group: group_name(group),
                    site: SITES[site].into(),
                    holder: format!("i-{site}"),
                    ttl_ms: self.topology.timing.lease_ttl_ms,
                };
                if let Ok(failover_core::Outcome::Granted(lease)) = self.state.apply(&command) {
                    self.leader.leases_mut().on_granted(lease.id, self.now);
                }
            }
            Event::Report { group, site, ready } => {
                self.reports.insert((group, site), (self.now, ready));
            }
            Event::Advance { ms } => self.now += Duration::from_millis(ms),
            Event::Poll => self.poll(),
            Event::Commit { pick } => self.commit(pick),
            Event::Lose { pick } => {
                if !self.in_flight.is_empty() {
                    let p = self.in_flight.remove(pick % self.in_flight.len());
                    self.leader.on_not_committed(p.id);
                }
            }
            Event::CompleteElsewhere { group } => {
                let g = group_name(group);
                if let Some(c) = self
                    .state
                    .groups
                    .get(&g)
                    .and_then(|g| failover_core::promotion::completion(g, 0))
                {
                    self.state.apply(&c).expect("a demoting group completes");
                }
            }
        }
    }

    fn poll(&mut self) {
        let sites: Vec<SiteId> = SITES.iter().map(|s| (*s).into()).collect();
        let fresh = Duration::from_millis(self.topology.timing.failure_timeout_ms);
        let observed = observe(&sites, &self.heard(), self.leader.since(), self.now, fresh);
        let ready = self
            .leader
            .poll(&self.state, &self.topology, &observed, self.now, 0);
        for p in &ready.proposals {
            if let Command::CompletePromotion { group, .. } = &p.command {
                let twice = self.in_flight.iter().any(
                    |q| matches!(&q.command, Command::CompletePromotion { group: h, .. } if h == group),
                );
                assert!(
                    !twice,
                    "a second completion of {group} while one is in flight"
                );
            }
        }
        self.in_flight.extend(ready.proposals);
    }

    fn commit(&mut self, pick: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        let p = self.in_flight.remove(pick % self.in_flight.len());
        let before = match &p.command {
            Command::CompletePromotion { group, .. } => self.state.groups.get(group).cloned(),
            _ => None,
        };
        let result = self.state.apply(&p.command);
        let effects = self.leader.on_applied(p.id, &result);
        if let (
            Command::CompletePromotion {
                group, from_epoch, ..
            },
            Ok(_),
        ) = (&p.command, &result)
        {
            self.completed_by_us.insert((group.clone(), *from_epoch));
        }
        for effect in effects {
            let Effect::AfterDemote {
                group, site, epoch, ..
            } = &effect;
            // Owed by this very commit: a completion of that group from that epoch,
            // which applying just moved past it, leaving the demoted site.
            assert!(
                matches!(&p.command, Command::CompletePromotion { group: g, from_epoch, .. }
                    if g == group && from_epoch == epoch),
                "{effect:?} handed out for {:?}",
                p.command
            );
            assert!(
                result.is_ok(),
                "{effect:?} handed out for a refused command"
            );
            let was = before.as_ref().expect("the group existed before");
            assert_eq!(
                was.active_site.as_ref(),
                Some(site),
                "hook for the site left"
            );
            assert!(
                self.state.groups[group].epoch > *epoch,
                "hook before the commit"
            );
            assert!(
                !self.effects.contains(&effect),
                "{effect:?} handed out twice"
            );
            self.effects.push(effect);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the order of polls, commits, losses and races, every hook is handed out at
    /// most once, only by the commit that owes it and after it applied, and a completion
    /// this leader committed while leaving a site always owed that site's hook.
    #[test]
    fn hooks_once_and_only_after_their_commit(events in proptest::collection::vec(event(), 1..120)) {
        let mut world = World::new();
        for e in events {
            world.step(e);
        }
        let handed: BTreeSet<(GroupName, Epoch)> = world
            .effects
            .iter()
            .map(|Effect::AfterDemote { group, epoch, .. }| (group.clone(), *epoch))
            .collect();
        // Demotions to no site and promotions alike leave an active site: every
        // completion of ours owed exactly one hook.
        prop_assert_eq!(handed, world.completed_by_us);
    }

    /// Every candidate the failover policy would promote passes the operator's readiness
    /// gate, and the gate refuses exactly the sites without a ready executor of a group
    /// that has executors.
    #[test]
    fn readiness_agrees_with_the_policy(events in proptest::collection::vec(event(), 1..60)) {
        let mut world = World::new();
        world.step(Event::Poll);
        world.step(Event::Commit { pick: 0 });
        world.step(Event::Commit { pick: 0 });
        for e in events {
            world.step(e);
        }
        let sites: Vec<SiteId> = SITES.iter().map(|s| (*s).into()).collect();
        let fresh = Duration::from_millis(world.topology.timing.failure_timeout_ms);
        let observed = observe(&sites, &world.heard(), world.leader.since(), world.now, fresh);
        let decisions = policy::decide(
            &world.state,
            &world.topology.groups,
            &world.topology.timing,
            &observed,
            world.now,
            u64::MAX,
        );
        for d in decisions {
            if let Decision::Failover { group, candidates, .. } = d {
                for site in candidates {
                    prop_assert!(check_ready(Some(&observed), &group, &site, false).is_ok());
                }
            }
        }
        for g in 0..2 {
            let group = group_name(g);
            for site in &sites {
                let refused = check_ready(Some(&observed), &group, site, false).is_err();
                let has_reports = world.reports.keys().any(|(rg, _)| *rg == g);
                let ready = world.reports.iter().any(|((rg, rs), (at, r))| {
                    *rg == g && SITES[*rs] == site.as_str() && *r
                        && world.now.saturating_duration_since(*at) < fresh
                });
                prop_assert_eq!(refused, has_reports && !ready);
                prop_assert!(check_ready(Some(&observed), &group, site, true).is_ok());
            }
        }
    }
}

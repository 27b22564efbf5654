//! The failover policy: which groups have lost their active site, and whom to promote.
//!
//! Inputs are what the leader observed (per site: when it last heard from any controller
//! or executor there, and, per group, from that site's executors, and whether they report
//! ready), the replicated state, the topology's groups and timing, and the time. Output is
//! a decision per group. Nothing here acts: the controller runs hooks and proposes.
//!
//! Rules:
//! - The active site is *lost for a group* when none of its executors for that group has
//!   reported for `failure_timeout` (whether or not its controllers answer: a site whose
//!   executors are all silent cannot run the group). A site is *lost* outright when its
//!   controllers and executors have all been silent that long.
//! - Automatic failover happens only from a lost active site, so there is no automatic
//!   failback: a site that comes back stays standby until an operator promotes it.
//! - Not within `failover_cooldown` of the group's last change of active site.
//! - Candidates are the group's other sites in priority order that are not lost for the
//!   group and whose executors report ready for it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::{GroupConfig, Timing};
use crate::ids::{GroupName, SiteId};
use crate::state::{ChangeKind, ClusterState, Phase};

/// What the leader has heard from one site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteObservation {
    /// The last time any controller or executor of the site was heard from.
    pub last_heard: Option<Instant>,
    /// Per group: the last report from an executor of this site for that group.
    pub group_last_heard: BTreeMap<GroupName, Instant>,
    /// Per group: whether an executor of this site reports ready (and healthy) for it.
    pub ready: BTreeMap<GroupName, bool>,
}

/// Everything the policy looks at besides the replicated state.
#[derive(Debug, Clone)]
pub struct Observations {
    /// When observation began (this leader's start): silence is counted from no earlier.
    pub since: Instant,
    /// Per site.
    pub sites: BTreeMap<SiteId, SiteObservation>,
}

/// What the policy says about one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Promote the first of `candidates` whose before-acquire hook agrees.
    Failover {
        /// The group.
        group: GroupName,
        /// Eligible sites in priority order.
        candidates: Vec<SiteId>,
        /// Why, for the history.
        reason: String,
    },
    /// The active site is lost but nothing is done, and why.
    Hold {
        /// The group.
        group: GroupName,
        /// Why not.
        reason: String,
    },
}

impl Observations {
    fn silent_for(&self, heard: Option<Instant>, now: Instant) -> Duration {
        let from = heard.map_or(self.since, |h| h.max(self.since));
        now.saturating_duration_since(from)
    }

    /// Whether the whole site (controllers and executors) has been silent too long.
    pub fn site_lost(&self, site: &SiteId, timing: &Timing, now: Instant) -> bool {
        let heard = self.sites.get(site).and_then(|s| s.last_heard);
        self.silent_for(heard, now) >= Duration::from_millis(timing.failure_timeout_ms)
    }

    /// Whether `site`'s executors for `group` have been silent too long.
    pub fn lost_for(
        &self,
        site: &SiteId,
        group: &GroupName,
        timing: &Timing,
        now: Instant,
    ) -> bool {
        let heard = self
            .sites
            .get(site)
            .and_then(|s| s.group_last_heard.get(group).copied());
        self.silent_for(heard, now) >= Duration::from_millis(timing.failure_timeout_ms)
    }

    /// Whether any executor of any site has reported for `group` (a group run without
    /// executors has no notion of readiness).
    pub fn has_reports_for(&self, group: &GroupName) -> bool {
        self.sites
            .values()
            .any(|s| s.group_last_heard.contains_key(group))
    }

    /// Whether an executor of `site` reports ready for `group`.
    pub fn ready_for(&self, site: &SiteId, group: &GroupName) -> bool {
        self.sites
            .get(site)
            .and_then(|s| s.ready.get(group))
            .copied()
            .unwrap_or(false)
    }
}

/// The decisions for every group whose active site is lost.
pub fn decide(
    state: &ClusterState,
    groups: &[GroupConfig],
    timing: &Timing,
    observed: &Observations,
    now: Instant,
    now_unix_ms: u64,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    for config in groups {
        let Some(group) = state.groups.get(&config.name) else {
            continue;
        };
        let (Phase::Active, Some(active)) = (&group.phase, &group.active_site) else {
            continue;
        };
        if !observed.lost_for(active, &group.name, timing, now) {
            continue;
        }
        let hold = |reason: String| Decision::Hold {
            group: group.name.clone(),
            reason,
        };
        if !config.auto_failover {
            decisions.push(hold(format!("{active} is lost; automatic failover is off")));
            continue;
        }
        // The group's creation is not a change of active site: no cooldown after it.
        let last_change = group
            .history
            .iter()
            .rev()
            .find(|h| h.kind != ChangeKind::Created)
            .map(|h| h.completed_at_unix_ms);
        if last_change
            .is_some_and(|at| now_unix_ms < at.saturating_add(timing.failover_cooldown_ms))
        {
            decisions.push(hold(format!(
                "{active} is lost; cooldown of {} ms after the last change",
                timing.failover_cooldown_ms
            )));
            continue;
        }
        let candidates: Vec<SiteId> = group
            .sites
            .iter()
            .filter(|s| *s != active)
            .filter(|s| !observed.lost_for(s, &group.name, timing, now))
            .filter(|s| observed.ready_for(s, &group.name))
            .cloned()
            .collect();
        if candidates.is_empty() {
            decisions.push(hold(format!("{active} is lost; no standby site is ready")));
            continue;
        }
        decisions.push(Decision::Failover {
            group: group.name.clone(),
            candidates,
            reason: format!(
                "{active} silent for at least {} ms",
                timing.failure_timeout_ms
            ),
        });
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn setup() -> (ClusterState, Vec<GroupConfig>, Timing, Instant) {
        let mut state = ClusterState::default();
        state
            .apply(&Command::CreateGroup {
                group: "g".into(),
                sites: vec!["a".into(), "b".into(), "c".into()],
                at_unix_ms: 0,
            })
            .expect("create");
        let groups = vec![GroupConfig {
            name: "g".into(),
            sites: vec!["a".into(), "b".into(), "c".into()],
            auto_failover: true,
            accept_no_witness: false,
        }];
        (state, groups, Timing::default(), Instant::now())
    }

    fn heard(at: Instant, ready: bool) -> SiteObservation {
        SiteObservation {
            last_heard: Some(at),
            group_last_heard: BTreeMap::from([("g".into(), at)]),
            ready: BTreeMap::from([("g".into(), ready)]),
        }
    }

    /// A silent active site is failed over to the ready standbys in priority order; a
    /// standby that is not ready or is silent itself is skipped.
    #[test]
    fn lost_active_site_fails_over_to_ready_standby() {
        let (state, groups, timing, t0) = setup();
        let now = t0 + Duration::from_millis(timing.failure_timeout_ms);
        let observed = Observations {
            since: t0,
            sites: BTreeMap::from([
                ("a".into(), heard(t0, true)),
                ("b".into(), heard(now, false)),
                ("c".into(), heard(now, true)),
            ]),
        };
        let d = decide(&state, &groups, &timing, &observed, now, 60_000);
        assert_eq!(
            d,
            vec![Decision::Failover {
                group: "g".into(),
                candidates: vec!["c".into()],
                reason: "a silent for at least 1500 ms".into(),
            }]
        );
        // One millisecond earlier, a is not lost yet.
        let d = decide(
            &state,
            &groups,
            &timing,
            &observed,
            now - Duration::from_millis(1),
            60_000,
        );
        assert!(d.is_empty());
    }

    /// Silence is counted from the leader's start at the earliest; a site not heard
    /// since is no candidate; `auto_failover: false` holds the failover but reports it.
    #[test]
    fn new_leader_and_manual_groups() {
        let (state, mut groups, timing, t0) = setup();
        let start = t0 + Duration::from_secs(60);
        let quiet = Observations {
            since: start,
            sites: BTreeMap::from([("b".into(), heard(t0, true))]),
        };
        let early = start + Duration::from_millis(1499);
        assert!(decide(&state, &groups, &timing, &quiet, early, 0).is_empty());
        let later = start + Duration::from_millis(1500);
        let held = decide(&state, &groups, &timing, &quiet, later, 0);
        assert!(matches!(&held[0], Decision::Hold { reason, .. } if reason.contains("no standby")));
        let observed_b = Observations {
            since: start,
            sites: BTreeMap::from([("b".into(), heard(later, true))]),
        };
        let d = decide(&state, &groups, &timing, &observed_b, later, 0);
        assert!(
            matches!(d[0], Decision::Failover { .. }),
            "no cooldown after creation"
        );
        groups[0].auto_failover = false;
        let d = decide(&state, &groups, &timing, &observed_b, later, 0);
        assert!(matches!(&d[0], Decision::Hold { reason, .. } if reason.contains("off")));
    }

    /// After a change of active site, a lost site is held for the cooldown.
    #[test]
    fn cooldown_after_a_change_holds() {
        let (mut state, groups, timing, t0) = setup();
        state
            .apply(&Command::BeginPromotion {
                group: "g".into(),
                to: "b".into(),
                kind: ChangeKind::Promote,
                actor: "t".into(),
                reason: String::new(),
                at_unix_ms: 1_000,
            })
            .expect("begin");
        let g = state.groups[&GroupName::from("g")].clone();
        state
            .apply(&crate::promotion::completion(&g, 1_000).expect("complete"))
            .expect("complete");
        let now = t0 + Duration::from_millis(timing.failure_timeout_ms);
        let observed = Observations {
            since: t0,
            sites: BTreeMap::from([("a".into(), heard(now, true))]),
        };
        let within = 1_000 + timing.failover_cooldown_ms - 1;
        let d = decide(&state, &groups, &timing, &observed, now, within);
        assert!(matches!(&d[0], Decision::Hold { reason, .. } if reason.contains("cooldown")));
        let after = 1_000 + timing.failover_cooldown_ms;
        let d = decide(&state, &groups, &timing, &observed, now, after);
        assert!(matches!(d[0], Decision::Failover { .. }));
    }
}

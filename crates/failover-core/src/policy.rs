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
//! - The active site is *unhealthy for a group* when it is not lost but every executor
//!   of it that reported for the group within `failure_timeout` says it is unhealthy
//!   (a crash loop, failing health checks): it is up but cannot run the group.
//! - Automatic failover happens only from a lost or unhealthy active site, so there is no
//!   automatic failback: a site that comes back stays standby until an operator promotes
//!   it.
//! - A lost active site is replaced whatever the time since the last change (anti-flapping
//!   never extends an outage: L1 holds right after a switchover too). A health-based move
//!   is held back within `failover_cooldown` of the group's last change of active site,
//!   so two sites that each fail their checks cannot bounce the group between them.
//! - A paused group (`failover pause`) is never moved automatically: the decision is a
//!   hold saying who paused it and why. Operators still promote and demote it.
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
    /// Per group, when every executor of this site that reported for it recently says it
    /// is unhealthy: why (from their reports).
    pub unhealthy: BTreeMap<GroupName, String>,
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

    /// Why `site`'s executors for `group` are all unhealthy, if they are.
    pub fn unhealthy_for(&self, site: &SiteId, group: &GroupName) -> Option<&str> {
        self.sites
            .get(site)
            .and_then(|s| s.unhealthy.get(group))
            .map(String::as_str)
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

/// Why the active site should be replaced.
enum Trigger {
    /// Silent for `failure_timeout`: replaced whatever the time since the last change.
    /// `heard`: whether an executor of the site ever reported for the group to this
    /// leader (a fresh cluster has none yet, which is not the same as a site gone dark).
    Lost { heard: bool },
    /// Up but unable to run the group: replaced only outside the cooldown.
    Unhealthy(String),
}

impl Trigger {
    /// What holds the group, as the first half of a held-back reason.
    fn held(&self, active: &SiteId) -> String {
        match self {
            Trigger::Lost { heard: true } => format!("{active} is lost for the group"),
            Trigger::Lost { heard: false } => {
                format!("no executor at {active} (the active site) has reported")
            }
            Trigger::Unhealthy(why) => format!("{active} is unhealthy ({why})"),
        }
    }

    /// The reason recorded in the history.
    fn reason(&self, active: &SiteId, timing: &Timing) -> String {
        match self {
            Trigger::Lost { .. } => format!(
                "{active} silent for at least {} ms",
                timing.failure_timeout_ms
            ),
            Trigger::Unhealthy(why) => format!("{active}'s executors are unhealthy: {why}"),
        }
    }
}

/// Whether `group`'s active site should be replaced, and why.
fn trigger(
    observed: &Observations,
    active: &SiteId,
    group: &GroupName,
    timing: &Timing,
    now: Instant,
) -> Option<Trigger> {
    if observed.lost_for(active, group, timing, now) {
        let heard = observed
            .sites
            .get(active)
            .is_some_and(|s| s.group_last_heard.contains_key(group));
        return Some(Trigger::Lost { heard });
    }
    observed
        .unhealthy_for(active, group)
        .map(|why| Trigger::Unhealthy(why.to_owned()))
}

/// When the cooldown after `group`'s last change of active site ends (unix ms); `None`
/// when there was no change (its creation is not one).
fn cooldown_end(group: &crate::state::GroupState, timing: &Timing) -> Option<u64> {
    group
        .history
        .iter()
        .rev()
        .find(|h| h.kind != ChangeKind::Created)
        .map(|h| {
            h.completed_at_unix_ms
                .saturating_add(timing.failover_cooldown_ms)
        })
}

/// The held-back reason of a paused group: `paused by ACTOR: REASON`.
pub fn paused_by(pause: &crate::state::Pause) -> String {
    if pause.reason.is_empty() {
        format!("paused by {}", pause.actor)
    } else {
        format!("paused by {}: {}", pause.actor, pause.reason)
    }
}

/// What keeps standby `site` from taking `group` over, for people.
fn standby_missing(
    observed: &Observations,
    site: &SiteId,
    group: &GroupName,
    timing: &Timing,
    now: Instant,
) -> String {
    let heard = observed
        .sites
        .get(site)
        .is_some_and(|s| s.group_last_heard.contains_key(group));
    if !heard {
        format!("no executor at {site} has reported")
    } else if observed.lost_for(site, group, timing, now) {
        format!("{site}'s executors are silent")
    } else {
        format!("no ready executor at {site}")
    }
}

/// The decisions for every group whose active site is lost or unhealthy.
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
        let Some(trigger) = trigger(observed, active, &group.name, timing, now) else {
            continue;
        };
        let hold = |why: String| Decision::Hold {
            group: group.name.clone(),
            reason: format!("{}; {why}", trigger.held(active)),
        };
        if let Some(pause) = &group.pause {
            decisions.push(hold(paused_by(pause)));
            continue;
        }
        if !config.auto_failover {
            decisions.push(hold("automatic failover is off".into()));
            continue;
        }
        // Anti-flapping holds back health-based moves only: a lost site is replaced now.
        let cooling = matches!(trigger, Trigger::Unhealthy(_))
            && cooldown_end(group, timing).is_some_and(|end| now_unix_ms < end);
        if cooling {
            decisions.push(hold(format!(
                "a health-based failover waits out the cooldown of {} ms after the last change",
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
            let why: Vec<String> = group
                .sites
                .iter()
                .filter(|s| *s != active)
                .map(|s| standby_missing(observed, s, &group.name, timing, now))
                .collect();
            decisions.push(hold(format!(
                "no standby site is ready ({})",
                why.join("; ")
            )));
            continue;
        }
        decisions.push(Decision::Failover {
            group: group.name.clone(),
            candidates,
            reason: trigger.reason(active, timing),
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
            unhealthy: BTreeMap::new(),
        }
    }

    fn unhealthy(at: Instant, why: &str) -> SiteObservation {
        SiteObservation {
            unhealthy: BTreeMap::from([("g".into(), why.to_owned())]),
            ..heard(at, false)
        }
    }

    /// The group promoted from a to b, completed at `at_unix_ms`.
    fn switched_to_b(state: &mut ClusterState, at_unix_ms: u64) {
        state
            .apply(&Command::BeginPromotion {
                group: "g".into(),
                to: "b".into(),
                kind: ChangeKind::Promote,
                actor: "t".into(),
                reason: String::new(),
                at_unix_ms,
            })
            .expect("begin");
        let g = state.groups[&GroupName::from("g")].clone();
        state
            .apply(&crate::promotion::completion(&g, at_unix_ms).expect("complete"))
            .expect("complete");
    }

    /// A fresh cluster whose executors never reported is held with what is really
    /// missing, not "a is lost"; a standby that reports but is not ready is named so.
    #[test]
    fn held_reason_names_what_is_missing() {
        let (state, groups, timing, t0) = setup();
        let now = t0 + Duration::from_millis(timing.failure_timeout_ms);
        let fresh = Observations {
            since: t0,
            sites: BTreeMap::new(),
        };
        let d = decide(&state, &groups, &timing, &fresh, now, 0);
        assert_eq!(
            d,
            vec![Decision::Hold {
                group: "g".into(),
                reason: "no executor at a (the active site) has reported; no standby site is \
                         ready (no executor at b has reported; no executor at c has reported)"
                    .into(),
            }]
        );
        let observed = Observations {
            since: t0,
            sites: BTreeMap::from([
                ("a".into(), heard(t0, true)),
                ("b".into(), heard(now, false)),
            ]),
        };
        let d = decide(&state, &groups, &timing, &observed, now, 0);
        assert_eq!(
            d,
            vec![Decision::Hold {
                group: "g".into(),
                reason: "a is lost for the group; no standby site is ready (no ready \
                         executor at b; no executor at c has reported)"
                    .into(),
            }]
        );
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

    /// A lost active site is replaced at once whatever the time since the last change:
    /// one millisecond after a switchover, and at the last millisecond of the cooldown.
    #[test]
    fn lost_site_is_replaced_during_the_cooldown() {
        let (mut state, groups, timing, t0) = setup();
        switched_to_b(&mut state, 1_000);
        let now = t0 + Duration::from_millis(timing.failure_timeout_ms);
        let observed = Observations {
            since: t0,
            sites: BTreeMap::from([("a".into(), heard(now, true))]),
        };
        for at in [1_001, 1_000 + timing.failover_cooldown_ms - 1] {
            let d = decide(&state, &groups, &timing, &observed, now, at);
            assert_eq!(
                d,
                vec![Decision::Failover {
                    group: "g".into(),
                    candidates: vec!["a".into()],
                    reason: "b silent for at least 1500 ms".into(),
                }],
                "at {at}"
            );
        }
    }

    /// An unhealthy active site (heard, but every executor unhealthy) is failed over to a
    /// ready standby with the reason from its reports; after a change it waits out the
    /// cooldown, to the millisecond, and says so.
    #[test]
    fn unhealthy_site_fails_over_outside_the_cooldown() {
        let (mut state, groups, timing, t0) = setup();
        let now = t0 + Duration::from_millis(10);
        let observed = Observations {
            since: t0,
            sites: BTreeMap::from([
                ("a".into(), unhealthy(now, "worker 0 is crash-looping")),
                ("c".into(), heard(now, true)),
            ]),
        };
        let expected = |from: &str, to: &str| {
            vec![Decision::Failover {
                group: "g".into(),
                candidates: vec![to.into()],
                reason: format!("{from}'s executors are unhealthy: worker 0 is crash-looping"),
            }]
        };
        let d = decide(&state, &groups, &timing, &observed, now, 0);
        assert_eq!(d, expected("a", "c"), "no cooldown after creation");

        switched_to_b(&mut state, 1_000);
        let observed = Observations {
            since: t0,
            sites: BTreeMap::from([
                ("b".into(), unhealthy(now, "worker 0 is crash-looping")),
                ("c".into(), heard(now, true)),
            ]),
        };
        let within = 1_000 + timing.failover_cooldown_ms - 1;
        let d = decide(&state, &groups, &timing, &observed, now, within);
        assert_eq!(
            d,
            vec![Decision::Hold {
                group: "g".into(),
                reason: "b is unhealthy (worker 0 is crash-looping); a health-based failover \
                         waits out the cooldown of 30000 ms after the last change"
                    .into(),
            }]
        );
        let after = 1_000 + timing.failover_cooldown_ms;
        let d = decide(&state, &groups, &timing, &observed, now, after);
        assert_eq!(d, expected("b", "c"));
    }

    /// An unhealthy active site with no ready standby stays, and the hold says why; a
    /// healthy, heard active site gives no decision at all.
    #[test]
    fn unhealthy_site_without_a_ready_standby_is_held() {
        let (state, groups, timing, t0) = setup();
        let now = t0 + Duration::from_millis(10);
        let observed = Observations {
            since: t0,
            sites: BTreeMap::from([
                (
                    "a".into(),
                    unhealthy(now, "worker 1 failed its health check"),
                ),
                ("b".into(), heard(now, false)),
            ]),
        };
        let d = decide(&state, &groups, &timing, &observed, now, 0);
        assert_eq!(
            d,
            vec![Decision::Hold {
                group: "g".into(),
                reason: "a is unhealthy (worker 1 failed its health check); no standby site \
                         is ready (no ready executor at b; no executor at c has reported)"
                    .into(),
            }]
        );
        let healthy = Observations {
            since: t0,
            sites: BTreeMap::from([
                ("a".into(), heard(now, true)),
                ("b".into(), heard(now, true)),
            ]),
        };
        assert!(decide(&state, &groups, &timing, &healthy, now, 0).is_empty());
    }

    /// A paused group is held whatever happens to its active site, and the hold names who
    /// paused it and why; once resumed, the same observations fail it over.
    #[test]
    fn paused_group_is_held_until_resumed() {
        let (mut state, groups, timing, t0) = setup();
        state
            .apply(&Command::Pause {
                group: "g".into(),
                actor: "alice@ops".into(),
                reason: "switch upgrade".into(),
                at_unix_ms: 5,
            })
            .expect("pause");
        let now = t0 + Duration::from_millis(timing.failure_timeout_ms);
        let lost = Observations {
            since: t0,
            sites: BTreeMap::from([("b".into(), heard(now, true))]),
        };
        let sick = Observations {
            since: t0,
            sites: BTreeMap::from([
                ("a".into(), unhealthy(now, "worker 0 is crash-looping")),
                ("b".into(), heard(now, true)),
            ]),
        };
        assert_eq!(
            decide(&state, &groups, &timing, &lost, now, 0),
            vec![Decision::Hold {
                group: "g".into(),
                reason:
                    "no executor at a (the active site) has reported; paused by alice@ops: switch \
                         upgrade"
                        .into(),
            }]
        );
        assert!(matches!(
            &decide(&state, &groups, &timing, &sick, now, 0)[0],
            Decision::Hold { reason, .. } if reason.ends_with("paused by alice@ops: switch upgrade")
        ));
        state
            .apply(&Command::Resume {
                group: "g".into(),
                actor: "bob@ops".into(),
                reason: String::new(),
                at_unix_ms: 6,
            })
            .expect("resume");
        assert!(matches!(
            &decide(&state, &groups, &timing, &lost, now, 0)[0],
            Decision::Failover { candidates, .. } if candidates == &vec![SiteId::from("b")]
        ));
    }
}

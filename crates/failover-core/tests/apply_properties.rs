//! Property tests of the state machine: random command sequences, valid or not, never
//! break the group invariants (one active site per group, epochs strictly increasing,
//! history consistent) and rejections never change state.

use failover_core::lease::LeaseId;
use failover_core::{
    ChangeKind, ClusterState, Command, Epoch, FencingValue, GroupName, Outcome, Rejection, SiteId,
};
use proptest::prelude::*;

const GROUPS: [&str; 3] = ["g0", "g1", "missing"];
const SITES: [&str; 4] = ["site-a", "site-b", "site-c", "nowhere"];

fn group() -> impl Strategy<Value = GroupName> {
    prop::sample::select(&GROUPS[..]).prop_map(GroupName::from)
}

fn site() -> impl Strategy<Value = SiteId> {
    prop::sample::select(&SITES[..]).prop_map(SiteId::from)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (group(), prop::collection::vec(site(), 0..4)).prop_map(|(group, mut sites)| {
            let mut seen = std::collections::BTreeSet::new();
            sites.retain(|s| seen.insert(s.clone()));
            Command::CreateGroup {
                group,
                sites,
                at_unix_ms: 1,
            }
        }),
        (group(), site(), any::<u64>(), any::<bool>()).prop_map(|(group, to, at_unix_ms, auto)| {
            Command::BeginPromotion {
                group,
                to,
                kind: if auto {
                    ChangeKind::Failover
                } else {
                    ChangeKind::Promote
                },
                actor: "prop".into(),
                reason: "test".into(),
                at_unix_ms,
            }
        }),
        (group(), 0u64..6, any::<u64>()).prop_map(|(group, e, at_unix_ms)| {
            Command::CompletePromotion {
                group,
                from_epoch: Epoch(e),
                at_unix_ms,
            }
        }),
        (group(), site(), 0u8..4).prop_map(|(group, site, h)| Command::Grant {
            group,
            site,
            holder: format!("instance-{h}"),
            ttl_ms: 1000,
        }),
        group().prop_map(|group| Command::BeginDemotion {
            group,
            actor: "prop".into(),
            reason: "maintenance".into(),
            at_unix_ms: 3,
        }),
        (group(), 0u64..12).prop_map(|(group, l)| Command::Release {
            group,
            lease: LeaseId(l),
        }),
        (group(), prop::collection::vec(0u64..12, 0..4)).prop_map(|(group, ids)| {
            Command::Expire {
                group,
                leases: ids.into_iter().map(LeaseId).collect(),
            }
        }),
        (group(), 0u8..2, any::<u64>()).prop_map(|(group, who, at_unix_ms)| Command::Pause {
            group,
            actor: format!("op{who}@host"),
            reason: "maintenance".into(),
            at_unix_ms,
        }),
        (group(), any::<u64>()).prop_map(|(group, at_unix_ms)| Command::Resume {
            group,
            actor: "op@host".into(),
            reason: String::new(),
            at_unix_ms,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any sequence keeps: epochs never decrease, they rise by exactly one with each change
    /// of active site, the active site is always eligible, every lease is at the active site
    /// and epoch, fencing tokens only grow (S2), and a rejection changes nothing.
    #[test]
    fn random_sequences_keep_invariants(commands in prop::collection::vec(command(), 1..80)) {
        let mut state = ClusterState::default();
        let mut last_token = std::collections::BTreeMap::new();
        for command in &commands {
            let before = state.clone();
            let was_paused = before.groups.get(command.group().expect("a group command")).is_some_and(|g| g.pause.is_some());
            let result = state.apply(command);
            // A paused group is never moved by an automatic failover; pausing and resuming
            // never touch the active site, the epoch or the leases.
            if was_paused {
                if let Command::BeginPromotion { kind: ChangeKind::Failover, .. } = command {
                    prop_assert!(result.is_err(), "a failover of a paused group began");
                }
            }
            if let (Command::Pause { .. } | Command::Resume { .. }, Ok(_)) = (command, &result) {
                let (a, b) = (&before.groups[command.group().expect("a group command")], &state.groups[command.group().expect("a group command")]);
                prop_assert_eq!((&a.active_site, a.epoch, &a.phase, &a.leases), (&b.active_site, b.epoch, &b.phase, &b.leases));
                prop_assert_eq!(b.pause.is_some(), matches!(command, Command::Pause { .. }));
                prop_assert_eq!(b.pause_history.len(), a.pause_history.len() + 1);
            }
            match result {
                Err(_) => prop_assert_eq!(&state, &before),
                Ok(outcome) => {
                    if let Outcome::Granted(lease) = &outcome {
                        let group = command.group().expect("a group command").clone();
                        let g = &state.groups[&group];
                        prop_assert_eq!(Some(&lease.site), g.active_site.as_ref());
                        prop_assert!(g.pending().is_none(), "no grant while demoting");
                        if let Some(&(epoch, token)) = last_token.get(&group) {
                            prop_assert!(lease.token > token, "tokens strictly increase");
                            prop_assert!(lease.epoch >= epoch, "no token of an older epoch later");
                        }
                        last_token.insert(group, (lease.epoch, lease.token));
                        // A holder id's live lease is never dropped by its re-acquire.
                        for (id, old) in &before.groups.get(command.group().expect("a group command")).map(|g| g.leases.clone()).unwrap_or_default() {
                            prop_assert!(g.leases.contains_key(id), "lease {} of {} silently superseded", id, old.holder);
                        }
                    }
                    for (name, after) in &state.groups {
                        after.assert_invariants();
                        let Some(old) = before.groups.get(name) else { continue };
                        prop_assert!(after.epoch >= old.epoch);
                        if after.active_site != old.active_site {
                            prop_assert_eq!(after.epoch, old.epoch.next());
                            prop_assert_eq!(after.history.len(), old.history.len() + 1);
                        } else {
                            prop_assert_eq!(after.epoch, old.epoch);
                        }
                    }
                }
            }
        }
    }

    /// S2: the fencing value of every grant is its epoch: equal for every holder granted
    /// in one epoch (whatever their tokens), strictly larger for every grant of a later
    /// epoch, and never smaller than one granted before.
    #[test]
    fn fencing_value_is_equal_within_an_epoch_and_grows_across(
        commands in prop::collection::vec(command(), 1..120)
    ) {
        let mut state = ClusterState::default();
        let mut granted: Vec<(GroupName, Epoch, FencingValue)> = Vec::new();
        for command in &commands {
            if let Ok(Outcome::Granted(lease)) = state.apply(command) {
                let group = command.group().expect("a group command").clone();
                let value = lease.fencing_value();
                prop_assert_eq!(value, FencingValue(state.groups[&group].epoch.0));
                for (_, epoch, earlier) in granted.iter().filter(|(g, ..)| *g == group) {
                    if *epoch == lease.epoch {
                        prop_assert_eq!(*earlier, value, "holders of one epoch share the value");
                    } else {
                        prop_assert!(*epoch < lease.epoch && *earlier < value, "a later epoch's value is larger");
                    }
                }
                granted.push((group, lease.epoch, value));
            }
        }
    }

    /// Replaying the same log from scratch gives the same state (determinism).
    #[test]
    fn apply_is_deterministic(commands in prop::collection::vec(command(), 1..60)) {
        let mut first = ClusterState::default();
        let mut second = ClusterState::default();
        for command in &commands {
            let a = first.apply(command);
            let b = second.apply(command);
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(first, second);
    }
}

fn created() -> ClusterState {
    let mut state = ClusterState::default();
    state
        .apply(&Command::CreateGroup {
            group: "default".into(),
            sites: vec!["site-a".into(), "site-b".into()],
            at_unix_ms: 10,
        })
        .expect("create");
    state
}

fn begin(to: &str) -> Command {
    Command::BeginPromotion {
        group: "default".into(),
        to: to.into(),
        kind: ChangeKind::Promote,
        actor: "ops@host".into(),
        reason: "maintenance".into(),
        at_unix_ms: 20,
    }
}

/// A promotion goes through Demoting, then Active at the next epoch, and is recorded.
#[test]
fn promotion_moves_through_demoting_to_next_epoch() {
    let mut state = created();
    state.apply(&begin("site-b")).expect("begin");
    let g = state.groups[&GroupName::from("default")].clone();
    assert_eq!(g.phase.name(), "demoting");
    assert_eq!(g.active_site, Some(SiteId::from("site-a")));
    assert_eq!(g.epoch, Epoch(1));
    let done = failover_core::promotion::completion(&g, 30).expect("demoting completes");
    state.apply(&done).expect("complete");
    let g = &state.groups[&GroupName::from("default")];
    assert_eq!(
        (
            g.active_site.as_ref().map(SiteId::as_str),
            g.epoch,
            g.phase.name()
        ),
        (Some("site-b"), Epoch(2), "active")
    );
    let last = g.history.last().expect("history");
    assert_eq!(last.from, Some(SiteId::from("site-a")));
    assert_eq!(
        (last.actor.as_str(), last.reason.as_str()),
        ("ops@host", "maintenance")
    );
    assert_eq!(
        (last.requested_at_unix_ms, last.completed_at_unix_ms),
        (20, 30)
    );
    // A stale completion for the old epoch is refused and changes nothing.
    let before = state.clone();
    assert!(matches!(
        state.apply(&done),
        Err(Rejection::NoPendingPromotion { .. })
    ));
    assert_eq!(state, before);
}

/// Promoting the active site, an ineligible site, or during a promotion is refused.
#[test]
fn invalid_promotions_are_refused() {
    let mut state = created();
    assert!(matches!(
        state.apply(&begin("site-a")),
        Err(Rejection::AlreadyActive { .. })
    ));
    assert!(matches!(
        state.apply(&begin("witness")),
        Err(Rejection::UnknownSite { .. })
    ));
    state.apply(&begin("site-b")).expect("begin");
    assert!(matches!(
        state.apply(&begin("site-b")),
        Err(Rejection::PromotionInProgress { .. })
    ));
}

fn grant(site: &str, holder: &str) -> Command {
    Command::Grant {
        group: "default".into(),
        site: site.into(),
        holder: holder.into(),
        ttl_ms: 2000,
    }
}

/// Grants go only to the active site, never during a promotion, each with a larger token;
/// completing a promotion ends every lease of the old epoch.
#[test]
fn grants_follow_the_active_site_and_tokens_grow() {
    let mut state = created();
    let Ok(Outcome::Granted(first)) = state.apply(&grant("site-a", "a1")) else {
        panic!("site-a is active");
    };
    assert!(matches!(
        state.apply(&grant("site-b", "b1")),
        Err(Rejection::Standby { .. })
    ));
    let Ok(Outcome::Granted(again)) = state.apply(&grant("site-a", "a1")) else {
        panic!("re-acquire");
    };
    assert!(again.token > first.token, "a re-acquire gets a new token");
    let g = &state.groups[&GroupName::from("default")];
    assert_eq!(g.leases.len(), 2, "the old lease still counts");
    assert!(g.is_superseded(&g.leases[&first.id]) && !g.is_superseded(&g.leases[&again.id]));
    assert_eq!(first.fencing_value(), again.fencing_value());
    state.apply(&begin("site-b")).expect("begin");
    assert!(
        matches!(
            state.apply(&grant("site-a", "a2")),
            Err(Rejection::Standby { demoting: true, .. })
        ),
        "no grant while demoting"
    );
    let g = state.groups[&GroupName::from("default")].clone();
    state
        .apply(&failover_core::promotion::completion(&g, 40).expect("complete"))
        .expect("complete");
    assert!(state.groups[&GroupName::from("default")].leases.is_empty());
    let Ok(Outcome::Granted(b)) = state.apply(&grant("site-b", "b1")) else {
        panic!("site-b is active now");
    };
    assert!(b.token > again.token && b.epoch == Epoch(2));
    assert!(matches!(
        state.apply(&Command::Release {
            group: "default".into(),
            lease: again.id
        }),
        Err(Rejection::UnknownLease { .. })
    ));
}

/// A demotion drains like a promotion, then leaves no site active (no grants at all); a
/// promotion out of maintenance completes at once at the next epoch.
#[test]
fn demote_to_maintenance_and_promote_back() {
    let mut state = created();
    let demote = Command::BeginDemotion {
        group: "default".into(),
        actor: "ops".into(),
        reason: "maintenance".into(),
        at_unix_ms: 50,
    };
    state.apply(&demote).expect("begin demotion");
    let g = state.groups[&GroupName::from("default")].clone();
    assert_eq!(g.phase.name(), "demoting");
    state
        .apply(&failover_core::promotion::completion(&g, 60).expect("complete"))
        .expect("complete");
    let g = &state.groups[&GroupName::from("default")];
    assert_eq!(
        (g.active_site.clone(), g.epoch, g.phase.name()),
        (None, Epoch(2), "no_active")
    );
    assert!(matches!(
        state.apply(&grant("site-a", "a1")),
        Err(Rejection::Standby { .. })
    ));
    assert!(matches!(
        state.apply(&demote),
        Err(Rejection::NoActiveSite(_))
    ));
    state
        .apply(&begin("site-a"))
        .expect("promote out of maintenance");
    let g = &state.groups[&GroupName::from("default")];
    assert_eq!(
        (g.active_site.clone(), g.epoch, g.phase.name()),
        (Some("site-a".into()), Epoch(3), "active")
    );
    let kinds: Vec<&str> = g.history.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "demote", "promote"]);
}

/// Pause refuses automatic failovers and nothing else: an operator promote and demote
/// still move the group, both the pause and the resume are recorded with actor and reason, and pausing
/// twice or resuming an unpaused group is refused without a change.
#[test]
fn pause_holds_back_failover_but_not_operators() {
    let mut state = created();
    let g: GroupName = "default".into();
    let pause = Command::Pause {
        group: g.clone(),
        actor: "alice@ops".into(),
        reason: "network work".into(),
        at_unix_ms: 50,
    };
    state.apply(&pause).expect("pause");
    let before = state.clone();
    assert!(matches!(
        state.apply(&pause),
        Err(Rejection::AlreadyPaused { .. })
    ));
    let failover = Command::BeginPromotion {
        group: g.clone(),
        to: "site-b".into(),
        kind: ChangeKind::Failover,
        actor: "controller-1".into(),
        reason: "site-a silent".into(),
        at_unix_ms: 60,
    };
    let refused = state.apply(&failover).expect_err("paused");
    assert_eq!(
        refused.to_string(),
        "automatic failover of group `default` is paused by alice@ops: network work"
    );
    assert_eq!(state, before);
    state
        .apply(&begin("site-b"))
        .expect("operator promote while paused");
    assert_eq!(
        state.groups[&g].pending().map(|p| p.kind),
        Some(ChangeKind::Promote)
    );
    let g_state = state.groups[&g].clone();
    let complete = failover_core::promotion::completion(&g_state, 62).expect("demoting");
    state
        .apply(&complete)
        .expect("operator promote completes while paused");
    state
        .apply(&Command::BeginDemotion {
            group: g.clone(),
            actor: "alice@ops".into(),
            reason: "drain site-b".into(),
            at_unix_ms: 64,
        })
        .expect("operator demote while paused");
    let group = &state.groups[&g];
    assert!(group.pause.is_some(), "operator changes keep the pause");
    assert_eq!(
        group.active_site.as_ref().map(SiteId::as_str),
        Some("site-b")
    );
    let resume = Command::Resume {
        group: g.clone(),
        actor: "bob@ops".into(),
        reason: "done".into(),
        at_unix_ms: 70,
    };
    state.apply(&resume).expect("resume");
    assert!(matches!(state.apply(&resume), Err(Rejection::NotPaused(_))));
    let group = &state.groups[&g];
    assert!(group.pause.is_none());
    let log: Vec<(bool, &str, &str, u64)> = group
        .pause_history
        .iter()
        .map(|e| (e.paused, e.actor.as_str(), e.reason.as_str(), e.at_unix_ms))
        .collect();
    assert_eq!(
        log,
        vec![
            (true, "alice@ops", "network work", 50),
            (false, "bob@ops", "done", 70)
        ]
    );
}

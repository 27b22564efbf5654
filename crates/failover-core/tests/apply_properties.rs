//! Property tests of the state machine: random command sequences, valid or not, never
//! break the group invariants (one active site per group, epochs strictly increasing,
//! history consistent) and rejections never change state.

use failover_core::{ChangeKind, ClusterState, Command, Epoch, GroupName, Rejection, SiteId};
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
            sites.dedup();
            Command::CreateGroup {
                group,
                sites,
                at_unix_ms: 1,
            }
        }),
        (group(), site(), any::<u64>()).prop_map(|(group, to, at_unix_ms)| {
            Command::BeginPromotion {
                group,
                to,
                kind: ChangeKind::Promote,
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
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any sequence keeps: epochs never decrease, they rise by exactly one with each change
    /// of active site, the active site is always eligible, and a rejection changes nothing.
    #[test]
    fn random_sequences_keep_invariants(commands in prop::collection::vec(command(), 1..80)) {
        let mut state = ClusterState::default();
        for command in &commands {
            let before = state.clone();
            match state.apply(command) {
                Err(_) => prop_assert_eq!(&state, &before),
                Ok(_) => {
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
    let g = state.apply(&begin("site-b")).expect("begin");
    assert_eq!(g.phase.name(), "demoting");
    assert_eq!(g.active_site, SiteId::from("site-a"));
    assert_eq!(g.epoch, Epoch(1));
    let done = failover_core::promotion::completion(&g, 30).expect("demoting completes");
    let g = state.apply(&done).expect("complete");
    assert_eq!(
        (g.active_site.as_str(), g.epoch, g.phase.name()),
        ("site-b", Epoch(2), "active")
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

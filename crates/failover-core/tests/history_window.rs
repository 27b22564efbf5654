//! The bounded history window: whatever the commands and the window, a group keeps at
//! most the window in memory, and the records it moved out (`trim_history`) followed by
//! what it kept are exactly everything appended, in order, at consecutive sequence
//! numbers; and the per-kind change counts equal those of the untrimmed history.

use failover_core::{
    Archived, ChangeCounts, ChangeKind, ClusterState, Command, GroupName, HistoryEntry,
    HistoryRecord, PauseEvent, SiteId,
};
use proptest::prelude::*;

const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];

#[derive(Debug, Clone)]
enum Op {
    Promote(usize, ChangeKind),
    Demote,
    Pause,
    Resume,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..SITES.len(),
            prop_oneof![
                Just(ChangeKind::Promote),
                Just(ChangeKind::ForcedPromote),
                Just(ChangeKind::Failover),
            ]
        )
            .prop_map(|(site, kind)| Op::Promote(site, kind)),
        Just(Op::Demote),
        Just(Op::Pause),
        Just(Op::Resume),
    ]
}

fn group() -> GroupName {
    GroupName::from("g")
}

fn created() -> ClusterState {
    let mut state = ClusterState::default();
    let create = Command::CreateGroup {
        group: group(),
        sites: SITES.iter().map(|s| SiteId::from(*s)).collect(),
        at_unix_ms: 1,
    };
    assert!(state.apply(&create).is_ok());
    state
}

/// Applies `op` at time `at`: a promotion or demotion is begun and completed at once.
fn apply(state: &mut ClusterState, op: &Op, at: u64) {
    let g = group();
    let commands = match op {
        Op::Promote(site, kind) => vec![Command::BeginPromotion {
            group: g.clone(),
            to: SiteId::from(SITES[*site]),
            kind: *kind,
            actor: "prop".into(),
            reason: format!("at {at}"),
            at_unix_ms: at,
        }],
        Op::Demote => vec![Command::BeginDemotion {
            group: g.clone(),
            actor: "prop".into(),
            reason: format!("at {at}"),
            at_unix_ms: at,
        }],
        Op::Pause => vec![Command::Pause {
            group: g.clone(),
            actor: "prop".into(),
            reason: format!("at {at}"),
            at_unix_ms: at,
        }],
        Op::Resume => vec![Command::Resume {
            group: g.clone(),
            actor: "prop".into(),
            reason: format!("at {at}"),
            at_unix_ms: at,
        }],
    };
    for command in commands {
        if state.apply(&command).is_ok() && matches!(op, Op::Promote(..) | Op::Demote) {
            let from_epoch = state.groups[&g].epoch;
            let _ = state.apply(&Command::CompletePromotion {
                group: g.clone(),
                from_epoch,
                at_unix_ms: at + 1,
            });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_window_is_bounded_and_nothing_is_lost(
        ops in prop::collection::vec(op(), 0..120),
        window in 1usize..6,
    ) {
        let mut full = created();
        let mut windowed = created();
        let mut archived: Vec<Archived> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let at = 10 + 10 * i as u64;
            apply(&mut full, op, at);
            apply(&mut windowed, op, at);
            archived.extend(windowed.trim_history(window));
            let g = &windowed.groups[&group()];
            prop_assert!(g.history.len() <= window && !g.history.is_empty());
            prop_assert!(g.pause_history.len() <= window);
            g.assert_invariants();
        }
        let all = &full.groups[&group()];
        let g = &windowed.groups[&group()];
        let mut changes: Vec<HistoryEntry> = Vec::new();
        let mut pauses: Vec<PauseEvent> = Vec::new();
        for a in archived {
            prop_assert_eq!(&a.group, &group());
            match a.record {
                HistoryRecord::Change(e) => {
                    prop_assert_eq!(a.seq, changes.len() as u64);
                    changes.push(e);
                }
                HistoryRecord::Pause(e) => {
                    prop_assert_eq!(a.seq, pauses.len() as u64);
                    pauses.push(e);
                }
            }
        }
        prop_assert_eq!(g.history_archived, changes.len() as u64);
        prop_assert_eq!(g.pause_history_archived, pauses.len() as u64);
        g.assert_archive(&changes, &pauses);
        changes.extend(g.history.iter().cloned());
        pauses.extend(g.pause_history.iter().cloned());
        prop_assert_eq!(&changes, &all.history);
        prop_assert_eq!(&pauses, &all.pause_history);
        prop_assert_eq!(g.history_len(), all.history.len() as u64);
        prop_assert_eq!(g.pause_history_len(), all.pause_history.len() as u64);
        // The counts the metrics serve do not stop at the window.
        let reference = ChangeCounts::of(all.history.iter().map(|h| h.kind));
        prop_assert_eq!(g.change_counts, reference);
        prop_assert_eq!(all.change_counts, reference);
        // Apart from the history, the windowed state is the full one.
        prop_assert_eq!((g.epoch, &g.active_site, &g.phase, &g.pause),
            (all.epoch, &all.active_site, &all.phase, &all.pause));
    }
}

#[test]
fn a_trimmed_state_trims_nothing_more() {
    let mut state = created();
    for i in 0..10 {
        apply(
            &mut state,
            &Op::Promote(i % 2 + 1, ChangeKind::Promote),
            10 * i as u64 + 10,
        );
    }
    let first = state.trim_history(3);
    assert_eq!(first.len(), 11 - 3);
    assert!(state.trim_history(3).is_empty());
    assert_eq!(state.groups[&group()].history_archived, 8);
}

#[test]
#[should_panic(expected = "archived changes missing")]
fn an_archive_short_of_a_record_is_caught() {
    let mut state = created();
    for i in 0..5 {
        apply(
            &mut state,
            &Op::Promote(i % 2 + 1, ChangeKind::Promote),
            10 * i as u64 + 10,
        );
    }
    let archived = state.trim_history(2);
    let changes: Vec<HistoryEntry> = archived
        .into_iter()
        .skip(1)
        .filter_map(|a| match a.record {
            HistoryRecord::Change(e) => Some(e),
            HistoryRecord::Pause(_) => None,
        })
        .collect();
    state.groups[&group()].assert_archive(&changes, &[]);
}

#[test]
#[should_panic(expected = "each change starts where the previous ended")]
fn a_broken_chain_across_the_boundary_is_caught() {
    let mut state = created();
    for i in 0..5 {
        apply(
            &mut state,
            &Op::Promote(i % 2 + 1, ChangeKind::Promote),
            10 * i as u64 + 10,
        );
    }
    let mut changes: Vec<HistoryEntry> = state
        .trim_history(2)
        .into_iter()
        .filter_map(|a| match a.record {
            HistoryRecord::Change(e) => Some(e),
            HistoryRecord::Pause(_) => None,
        })
        .collect();
    if let Some(last) = changes.last_mut() {
        last.to = Some(SiteId::from("site-c"));
    }
    state.groups[&group()].assert_archive(&changes, &[]);
}

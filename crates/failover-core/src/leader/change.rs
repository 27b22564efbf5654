//! Operator changes of a group's active site: whether to start one, join one under way,
//! or answer at once; the promote readiness gate; who is told to drain.

use crate::ids::{GroupName, SiteId};
use crate::policy::Observations;
use crate::promotion;
use crate::state::GroupState;
use crate::Rejection;

/// What to do with an operator's request to move `group` to a target (`None`: demote to
/// no active site).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangePlan {
    /// Nothing is under way: propose the change (a promote first passes [`check_ready`]
    /// and the target's `before_acquire` hook).
    Start,
    /// The group already is where the change would take it: answer at once.
    AlreadyThere,
    /// A change to the same target is under way: wait for it instead of starting another.
    Join,
    /// The request cannot be served; nothing is proposed.
    Refuse(Rejection),
}

/// The plan for a request to move `group` to `target`, decided on the typed refusal of
/// [`promotion::check_start`] / [`promotion::check_demote`].
pub fn plan_change(group: &GroupState, target: Option<&SiteId>) -> ChangePlan {
    let check = match target {
        Some(site) => promotion::check_start(group, site),
        None => promotion::check_demote(group),
    };
    match check {
        Ok(()) => ChangePlan::Start,
        Err(Rejection::AlreadyActive { .. } | Rejection::NoActiveSite(_)) => {
            ChangePlan::AlreadyThere
        }
        Err(Rejection::PromotionInProgress { .. })
            if group.pending().map(|p| p.to.as_ref()) == Some(target) =>
        {
            ChangePlan::Join
        }
        Err(rejection) => ChangePlan::Refuse(rejection),
    }
}

/// Why a plain promote to a site is refused before anything is proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The group has executors, and none at the target reports ready.
    #[error(
        "{site} is not ready for group {group} (no executor there reports ready); \
         use --force to promote it anyway"
    )]
    NoReadyExecutor {
        /// The target site.
        site: SiteId,
        /// The group.
        group: GroupName,
    },
}

/// The promote readiness gate: a plain promote (not `force`) to `site` needs a ready
/// executor there, when the group has executors at all (a group run without executors
/// has no notion of readiness). `observed` is `None` off the leader, where nothing is
/// known and nothing is refused. It asks exactly what the failover policy asks of a
/// candidate, so an automatic failover never picks a site an operator could not.
pub fn check_ready(
    observed: Option<&Observations>,
    group: &GroupName,
    site: &SiteId,
    force: bool,
) -> Result<(), NotReady> {
    let Some(observed) = observed else {
        return Ok(());
    };
    if force || !observed.has_reports_for(group) || observed.ready_for(site, group) {
        return Ok(());
    }
    Err(NotReady::NoReadyExecutor {
        site: site.clone(),
        group: group.clone(),
    })
}

/// Whether holders at `site` are told to drain `group`: a change is under way and `site`
/// is the active site it leaves.
pub fn drains(group: &GroupState, site: &SiteId) -> bool {
    group.pending().is_some() && group.active_site.as_ref() == Some(site)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::state::{ChangeKind, ClusterState};

    fn demoting_to(to: &str) -> GroupState {
        let mut state = ClusterState::default();
        let g: GroupName = "g".into();
        state
            .apply(&Command::CreateGroup {
                group: g.clone(),
                sites: vec!["a".into(), "b".into(), "c".into()],
                at_unix_ms: 0,
            })
            .expect("create");
        state
            .apply(&Command::BeginPromotion {
                group: g.clone(),
                to: to.into(),
                kind: ChangeKind::Promote,
                actor: "t".into(),
                reason: String::new(),
                at_unix_ms: 1,
            })
            .expect("begin");
        state.groups[&g].clone()
    }

    /// A promote to the site already being promoted to joins it; to another site it is
    /// refused; to the active site while nothing is under way it is already there.
    #[test]
    fn join_only_the_same_target() {
        let g = demoting_to("b");
        assert_eq!(plan_change(&g, Some(&"b".into())), ChangePlan::Join);
        assert!(matches!(
            plan_change(&g, Some(&"c".into())),
            ChangePlan::Refuse(Rejection::PromotionInProgress { .. })
        ));
        assert!(matches!(plan_change(&g, None), ChangePlan::Refuse(_)));
        assert!(drains(&g, &"a".into()));
        assert!(!drains(&g, &"b".into()));
    }
}

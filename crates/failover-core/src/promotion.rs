//! The promotion protocol: `Active{A}` → `Demoting{A→B}` → `Active{B, epoch+1}`.
//!
//! A leader calls [`check_start`] before proposing `BeginPromotion` (and `apply` calls it
//! again, since the state may have moved between proposal and commit), then, while the
//! group is demoting, asks [`completion`] whether the old site is drained and the
//! completion may be proposed.

use crate::command::{Command, Rejection};
use crate::ids::SiteId;
use crate::state::{GroupState, Phase};

/// Whether a promotion of `group` to `to` may begin now, or why not.
pub fn check_start(group: &GroupState, to: &SiteId) -> Result<(), Rejection> {
    group.check_site(to)?;
    check_not_changing(group)?;
    if group.is_serving(to) {
        return Err(Rejection::AlreadyActive {
            group: group.name.clone(),
            site: to.clone(),
            epoch: group.epoch,
        });
    }
    Ok(())
}

/// Whether `group` may be demoted to no active site now, or why not.
pub fn check_demote(group: &GroupState) -> Result<(), Rejection> {
    check_not_changing(group)?;
    if matches!(group.phase, Phase::NoActive) {
        return Err(Rejection::NoActiveSite(group.name.clone()));
    }
    Ok(())
}

fn check_not_changing(group: &GroupState) -> Result<(), Rejection> {
    if let Phase::Demoting(pending) = &group.phase {
        return Err(Rejection::PromotionInProgress {
            group: group.name.clone(),
            from: site_name(group.active_site.as_ref()),
            to: site_name(pending.to.as_ref()),
        });
    }
    Ok(())
}

pub use crate::model::site_name;

/// The command that finishes the group's promotion. `None` when the group is not demoting.
/// Propose it only once nothing of the old site can still hold the group: see
/// [`crate::lease::LeaderLeases::completions`], which is the only caller in a controller.
pub fn completion(group: &GroupState, at_unix_ms: u64) -> Option<Command> {
    match &group.phase {
        Phase::Active | Phase::NoActive => None,
        Phase::Demoting(_) => Some(Command::CompletePromotion {
            group: group.name.clone(),
            from_epoch: group.epoch,
            at_unix_ms,
        }),
    }
}

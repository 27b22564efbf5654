//! The promotion protocol: `Active{A}` → `Demoting{A→B}` → `Active{B, epoch+1}`.
//!
//! A leader calls [`check_start`] before proposing `BeginPromotion` (and `apply` calls it
//! again, since the state may have moved between proposal and commit), then, while the
//! group is demoting, asks [`completion`] whether the old site is drained and the
//! completion may be proposed.
//!
//! The rules read a group through [`Position`], the few values they need, and not the
//! state machine's `GroupState` (which converts into it), so that the state machine can
//! ask them without the two modules depending on each other.

use crate::command::{Command, Rejection};
use crate::ids::{Epoch, GroupName, SiteId};
use crate::model::{PendingChange, Phase};

/// Where a group stands: its sites, active site, epoch and phase, borrowed from the
/// group's state (`&GroupState` converts into it), which is all the promotion rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    /// The group's name.
    pub name: &'a GroupName,
    /// Its eligible sites, highest priority first.
    pub sites: &'a [SiteId],
    /// Its active site (the one being drained while demoting).
    pub active_site: Option<&'a SiteId>,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its phase.
    pub phase: &'a Phase,
}

impl<'a> Position<'a> {
    /// Refuses a site that is not eligible for this group.
    pub fn check_site(&self, site: &SiteId) -> Result<(), Rejection> {
        if self.sites.contains(site) {
            return Ok(());
        }
        Err(Rejection::UnknownSite {
            group: self.name.clone(),
            site: site.clone(),
            eligible: self
                .sites
                .iter()
                .map(SiteId::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The change under way, if any.
    pub fn pending(&self) -> Option<&'a PendingChange> {
        match self.phase {
            Phase::Active | Phase::NoActive => None,
            Phase::Demoting(pending) => Some(pending),
        }
    }

    /// Whether `site` is the active site and no change is under way.
    pub fn is_serving(&self, site: &SiteId) -> bool {
        matches!(self.phase, Phase::Active) && self.active_site == Some(site)
    }
}

/// Whether a promotion of `group` to `to` may begin now, or why not.
pub fn check_start<'a>(group: impl Into<Position<'a>>, to: &SiteId) -> Result<(), Rejection> {
    let group = group.into();
    group.check_site(to)?;
    check_not_changing(&group)?;
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
pub fn check_demote<'a>(group: impl Into<Position<'a>>) -> Result<(), Rejection> {
    let group = group.into();
    check_not_changing(&group)?;
    if matches!(group.phase, Phase::NoActive) {
        return Err(Rejection::NoActiveSite(group.name.clone()));
    }
    Ok(())
}

fn check_not_changing(group: &Position<'_>) -> Result<(), Rejection> {
    if let Some(pending) = group.pending() {
        return Err(Rejection::PromotionInProgress {
            group: group.name.clone(),
            from: site_name(group.active_site),
            to: site_name(pending.to.as_ref()),
        });
    }
    Ok(())
}

pub use crate::model::site_name;

/// The command that finishes the group's promotion. `None` when the group is not demoting.
/// Propose it only once nothing of the old site can still hold the group: see
/// [`crate::lease::LeaderLeases::completions`], which is the only caller in a controller.
pub fn completion<'a>(group: impl Into<Position<'a>>, at_unix_ms: u64) -> Option<Command> {
    let group = group.into();
    match group.phase {
        Phase::Active | Phase::NoActive => None,
        Phase::Demoting(_) => Some(Command::CompletePromotion {
            group: group.name.clone(),
            from_epoch: group.epoch,
            at_unix_ms,
        }),
    }
}

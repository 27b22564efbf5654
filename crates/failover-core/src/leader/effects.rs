//! Obligations owed after a commit: what the driver must do once, and only once, the
//! proposal that owes it has been applied with the outcome that owes it.

use std::collections::BTreeMap;

use crate::command::{Command, CommandResult, Outcome};
use crate::ids::{Epoch, GroupName, SiteId};

/// Something the driver does outside the replicated state, owed by a committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Run `site`'s `after_demote` hook: its demotion from `group` completed.
    AfterDemote {
        /// The group.
        group: GroupName,
        /// The site that was demoted.
        site: SiteId,
        /// The epoch the change started from.
        epoch: Epoch,
        /// Why the change happened.
        reason: String,
    },
}

/// Names one proposal of this leader, so that its outcome can be handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

/// A command to propose through Raft. The driver MUST hand its fate back to the leader:
/// [`crate::leader::Leader::on_applied`] with what applying it answered, or
/// [`crate::leader::Leader::on_not_committed`] when Raft did not commit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Its id.
    pub id: ProposalId,
    /// The command.
    pub command: Command,
}

/// What a proposal in flight owes once applied: the effects of a completion of `group`
/// from `from_epoch`.
#[derive(Debug, Clone)]
struct Owed {
    group: GroupName,
    from_epoch: Epoch,
    effects: Vec<Effect>,
}

/// The completions in flight and what each owes; at most one per group.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    next: u64,
    owed: BTreeMap<ProposalId, Owed>,
}

impl Ledger {
    /// A fresh id for a proposal that owes nothing.
    pub(crate) fn plain(&mut self, command: Command) -> Proposal {
        self.next += 1;
        Proposal {
            id: ProposalId(self.next),
            command,
        }
    }

    /// Whether a completion of `group` is in flight (then no second one is proposed).
    pub(crate) fn in_flight(&self, group: &GroupName) -> bool {
        self.owed.values().any(|o| &o.group == group)
    }

    /// A completion of `group` from `from_epoch` that owes `effects` once applied.
    pub(crate) fn owing(
        &mut self,
        command: Command,
        group: GroupName,
        from_epoch: Epoch,
        effects: Vec<Effect>,
    ) -> Proposal {
        assert!(
            !self.in_flight(&group),
            "two completions of {group} in flight"
        );
        let proposal = self.plain(command);
        self.owed.insert(
            proposal.id,
            Owed {
                group,
                from_epoch,
                effects,
            },
        );
        proposal
    }

    /// The effects `id` owes given what applying it answered: its effects when it moved
    /// its group past the epoch it completes, nothing when it was refused (the change was
    /// completed by another proposal, whose proposer owed its effects).
    pub(crate) fn applied(&mut self, id: ProposalId, result: &CommandResult) -> Vec<Effect> {
        assert!(
            id.0 <= self.next,
            "outcome handed back for unknown proposal {id:?}"
        );
        let Some(owed) = self.owed.remove(&id) else {
            return Vec::new();
        };
        match result {
            Ok(Outcome::Group(summary))
                if summary.name == owed.group && summary.epoch > owed.from_epoch =>
            {
                owed.effects
            }
            _ => Vec::new(),
        }
    }

    /// Forgets what `id` owed: it was not committed (a later poll proposes it again if
    /// it is still owed).
    pub(crate) fn not_committed(&mut self, id: ProposalId) {
        self.owed.remove(&id);
    }

    /// How many proposals with effects are in flight.
    pub(crate) fn len(&self) -> usize {
        self.owed.len()
    }
}

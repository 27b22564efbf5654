//! The leader's decisions, sans-IO: what a controller that leads must propose, and what
//! it owes after each commit.
//!
//! [`Leader`] holds the leader's soft state (lease renewal times, [`LeaderLeases`], and
//! the completions in flight). It reads no clock and does no I/O: every method takes the
//! applied state and the time (`now`, never going backwards) as arguments.
//!
//! # Driver contract
//! A controller that leads calls, in this order, on every pass of its reconcile loop:
//! 1. [`observe::observe`] with what it heard, for the policy's [`Observations`];
//! 2. [`Leader::poll`], which returns a [`Ready`]: commands to propose, failover
//!    decisions, and the next instant at which to poll again;
//! 3. for every [`Proposal`], once Raft answered, exactly one of [`Leader::on_applied`]
//!    (with what applying it answered) or [`Leader::on_not_committed`];
//!    `on_applied` returns the [`Effect`]s the proposal owed: the driver runs them then,
//!    never before, and never again (the leader forgets them as it hands them out).
//!
//! So a hook owed by a completion runs once, after the completion was applied, and not
//! at all when the completion was refused or not committed (a later poll proposes it
//! again, owing the hook afresh). A leader that loses office after the commit and before
//! running the hook does not run it: effects are at most once across leaders.
//!
//! # Layout
//! - [`reach`]: whether a controller is reachable and the leader still holds a quorum.
//! - [`observe`]: the failure detector's rule (what counts as hearing a site, when a
//!   report means ready or unhealthy).
//! - [`change`]: operator changes: start, join or answer at once; the readiness gate; who
//!   drains.
//! - [`effects`]: proposals, and the effects they owe after commit.

pub mod change;
pub mod effects;
pub mod observe;
pub mod reach;

use std::time::Instant;

use crate::command::{Command, CommandResult};
use crate::config::Topology;
use crate::lease::{LeaderLeases, LeaseTiming};
use crate::policy::{self, Decision, Observations};
use crate::state::ClusterState;

pub use effects::{Effect, Proposal, ProposalId};

/// What one [`Leader::poll`] returns; it MUST be handled: every proposal proposed and its
/// fate handed back, every decision acted on.
#[derive(Debug, Clone, Default)]
pub struct Ready {
    /// Commands to propose, in order.
    pub proposals: Vec<Proposal>,
    /// The failover policy's decisions for groups whose active site is lost or unhealthy.
    pub decisions: Vec<Decision>,
    /// The next instant at which a poll may have something new to say.
    pub next_timeout: Option<Instant>,
}

/// The soft state of one term this controller leads.
#[derive(Debug)]
pub struct Leader {
    since: Instant,
    leases: LeaderLeases,
    ledger: effects::Ledger,
}

impl Leader {
    /// A leader that took office at `since`: every lease gets a full TTL from then.
    pub fn new(timing: LeaseTiming, since: Instant) -> Self {
        Leader {
            since,
            leases: LeaderLeases::new(timing, since),
            ledger: effects::Ledger::default(),
        }
    }

    /// When this leader took office (the failure detector counts silence from then).
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The lease soft state.
    pub fn leases(&self) -> &LeaderLeases {
        &self.leases
    }

    /// The lease soft state, for renewals, grants and releases.
    pub fn leases_mut(&mut self) -> &mut LeaderLeases {
        &mut self.leases
    }

    /// What is owed as of `now`: groups the topology declares and the state lacks,
    /// completions of promotions whose old site can no longer hold the group (each
    /// owing its old site's `after_demote` hook; none while one for the group is in
    /// flight), expirations of leases unrenewed past their TTL plus the drift bound, and
    /// the policy's decisions. `at_unix_ms` is recorded in history only.
    pub fn poll(
        &mut self,
        state: &ClusterState,
        topology: &Topology,
        observed: &Observations,
        now: Instant,
        at_unix_ms: u64,
    ) -> Ready {
        let mut proposals: Vec<Proposal> = topology
            .groups
            .iter()
            .filter(|g| !state.groups.contains_key(&g.name))
            .map(|g| {
                self.ledger.plain(Command::CreateGroup {
                    group: g.name.clone(),
                    sites: g.sites.clone(),
                    at_unix_ms,
                })
            })
            .collect();
        self.leases.observe(state, now);
        for completion in self.leases.completions(state, now, at_unix_ms) {
            let Some(g) = completion.group().and_then(|g| state.groups.get(g)) else {
                continue;
            };
            if self.ledger.in_flight(&g.name) {
                continue;
            }
            let effects = match (&g.active_site, g.pending()) {
                (Some(old), Some(pending)) => vec![Effect::AfterDemote {
                    group: g.name.clone(),
                    site: old.clone(),
                    epoch: g.epoch,
                    reason: pending.reason.clone(),
                }],
                _ => Vec::new(),
            };
            let proposal = self
                .ledger
                .owing(completion, g.name.clone(), g.epoch, effects);
            proposals.push(proposal);
        }
        for expiry in self.leases.expirations(state, now) {
            proposals.push(self.ledger.plain(expiry));
        }
        assert!(
            self.ledger.len() <= state.groups.len(),
            "more completions in flight than groups"
        );
        let decisions = policy::decide(
            state,
            &topology.groups,
            &topology.timing,
            observed,
            now,
            at_unix_ms,
        );
        Ready {
            proposals,
            decisions,
            next_timeout: self.leases.poll_timeout(state),
        }
    }

    /// A proposal outside [`Leader::poll`] (an automatic failover the driver starts once
    /// a hook agreed): it owes nothing, but takes an id like every proposal.
    pub fn propose(&mut self, command: Command) -> Proposal {
        self.ledger.plain(command)
    }

    /// Proposal `id` was committed and applying it answered `result`: the effects it
    /// owes, to run now and never again.
    pub fn on_applied(&mut self, id: ProposalId, result: &CommandResult) -> Vec<Effect> {
        self.ledger.applied(id, result)
    }

    /// Proposal `id` was not committed (no quorum, lost leadership): it owes nothing.
    pub fn on_not_committed(&mut self, id: ProposalId) {
        self.ledger.not_committed(id);
    }
}

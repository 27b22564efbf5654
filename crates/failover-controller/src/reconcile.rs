//! The leader's reconcile loop: turns what the core says is owed into Raft proposals.
//!
//! On the leader only, whenever the applied state changes, a promotion begins, a lease is
//! released, or the next lease deadline passes, it:
//! 1. creates groups the topology declares and the state lacks;
//! 2. completes promotions whose old site can no longer hold the group
//!    ([`LeaderLeases::completions`](failover_core::lease::LeaderLeases::completions));
//! 3. drops leases unrenewed past their TTL plus the drift bound.
//!
//! Each step is idempotent: a proposal that lost a race is refused by `apply` and changes
//! nothing, so a new leader can run the loop on whatever state it inherits.

use std::sync::Arc;
use std::time::Duration;

use failover_core::Command;
use tokio::sync::watch;

use crate::services::{propose, NodeContext};

/// Longest sleep between two passes when nothing wakes the loop.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// Runs until `shutdown` turns true.
pub async fn run(ctx: Arc<NodeContext>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = ctx.view.subscribe();
    let mut sleep = MAX_SLEEP;
    loop {
        tokio::select! {
            _ = ctx.reconcile.notified() => {}
            _ = changes.changed() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        sleep = MAX_SLEEP;
        if ctx.raft.is_leader() {
            sleep = step(&ctx).await.min(MAX_SLEEP);
        }
    }
}

/// One pass over the state; returns how long until the next lease deadline.
/// Failures are logged and retried on the next pass.
pub async fn step(ctx: &NodeContext) -> Duration {
    let (owed, next) = owed_commands(ctx);
    for command in owed {
        let what = command.to_string();
        match propose(ctx, command).await {
            Ok(outcome) => tracing::info!(%what, ?outcome, "committed"),
            Err(e) => tracing::warn!(%what, reason = %e.into_status().message(), "not committed"),
        }
    }
    next
}

fn owed_commands(ctx: &NodeContext) -> (Vec<Command>, Duration) {
    let state = ctx.view.read();
    let now = ctx.clock.now();
    let at_unix_ms = ctx.clock.unix_ms();
    let mut owed: Vec<Command> = ctx
        .topology
        .groups
        .iter()
        .filter(|g| !state.groups.contains_key(&g.name))
        .map(|g| Command::CreateGroup {
            group: g.name.clone(),
            sites: g.sites.clone(),
            at_unix_ms,
        })
        .collect();
    let next = ctx.leases.with_leader(|leader| {
        leader.observe(&state, now);
        owed.extend(leader.completions(&state, now, at_unix_ms));
        owed.extend(leader.expirations(&state, now));
        leader.poll_timeout(&state)
    });
    let sleep = next.flatten().map_or(MAX_SLEEP, |at| {
        crate::leases::until(now, at) + Duration::from_millis(1)
    });
    (owed, sleep)
}

//! The leader's reconcile loop: turns what the core says is owed into Raft proposals.
//!
//! On the leader only, after every wake-up (a promotion began) or tick, it:
//! 1. creates groups the topology declares and the state lacks;
//! 2. completes promotions whose old site is drained ([`promotion::completion`]).
//!
//! Each step is idempotent: a proposal that lost a race is refused by `apply` and changes
//! nothing, so a new leader can run the loop on whatever state it inherits.

use std::sync::Arc;
use std::time::Duration;

use failover_core::{promotion, Command};
use tokio::sync::watch;

use crate::services::admin::propose;
use crate::services::NodeContext;

/// How often the loop runs when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);

/// Runs until `shutdown` turns true.
pub async fn run(ctx: Arc<NodeContext>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = ctx.reconcile.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if ctx.raft.is_leader() {
            step(&ctx).await;
        }
    }
}

/// One pass over the state. Failures are logged and retried on the next pass.
pub async fn step(ctx: &NodeContext) {
    for command in owed_commands(ctx) {
        let what = command.to_string();
        match propose(ctx, command).await {
            Ok(group) => {
                tracing::info!(%what, epoch = %group.epoch, active = %group.active_site, "committed")
            }
            Err(status) => tracing::warn!(%what, reason = %status.message(), "not committed"),
        }
    }
}

fn owed_commands(ctx: &NodeContext) -> Vec<Command> {
    let state = ctx.view.read();
    let now = ctx.clock.unix_ms();
    let create = ctx
        .topology
        .groups
        .iter()
        .filter(|g| !state.groups.contains_key(&g.name))
        .map(|g| Command::CreateGroup {
            group: g.name.clone(),
            sites: g.sites.clone(),
            at_unix_ms: now,
        });
    let complete = state
        .groups
        .values()
        .filter_map(|g| promotion::completion(g, now));
    create.chain(complete).collect()
}

//! The leader's reconcile loop: turns what the core says is owed into Raft proposals.
//!
//! On the leader only, whenever the applied state changes, a promotion begins, a lease is
//! released, or the next lease deadline passes, it:
//! 1. creates groups the topology declares and the state lacks;
//! 2. completes promotions whose old site can no longer hold the group
//!    ([`LeaderLeases::completions`](failover_core::lease::LeaderLeases::completions));
//! 3. drops leases unrenewed past their TTL plus the drift bound;
//! 4. runs `after_demote` hooks of sites whose demotion completed;
//! 5. asks the failover policy about lost active sites and promotes the first ready
//!    standby whose `before_acquire` hook agrees.
//!
//! Each step is idempotent: a proposal that lost a race is refused by `apply` and changes
//! nothing, so a new leader can run the loop on whatever state it inherits.

use std::sync::Arc;
use std::time::Duration;

use failover_core::policy::{self, Decision};
use failover_core::{ChangeKind, Command, GroupName, SiteId};
use tokio::sync::watch;

use crate::detector;
use crate::hooks::{self, HookEnv};
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
    let owed = owed_commands(ctx);
    for command in owed.commands {
        let what = command.to_string();
        match propose(ctx, command).await {
            Ok(outcome) => tracing::info!(%what, ?outcome, "committed"),
            Err(e) => tracing::warn!(%what, reason = %e.into_status().message(), "not committed"),
        }
    }
    for (site, env) in owed.demoted {
        let hooks = ctx.topology.hooks(site.as_str());
        tokio::spawn(async move { hooks::after_demote(&hooks, &env).await });
    }
    fail_over(ctx, owed.decisions).await;
    owed.sleep
}

/// What one pass owes: commands to propose, demoted sites whose hooks to run, failover
/// decisions, and how long until the next deadline.
struct Owed {
    commands: Vec<Command>,
    demoted: Vec<(SiteId, HookEnv)>,
    decisions: Vec<Decision>,
    sleep: Duration,
}

fn owed_commands(ctx: &NodeContext) -> Owed {
    let state = ctx.view.read();
    let now = ctx.clock.now();
    let at_unix_ms = ctx.clock.unix_ms();
    let mut commands: Vec<Command> = ctx
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
    let mut demoted = Vec::new();
    let next = ctx.leases.with_leader(|leader| {
        leader.observe(&state, now);
        for completion in leader.completions(&state, now, at_unix_ms) {
            if let Some(g) = state.groups.get(completion.group()) {
                if let (Some(old), Some(pending)) = (&g.active_site, g.pending()) {
                    let env = HookEnv {
                        group: g.name.to_string(),
                        site: old.to_string(),
                        epoch: g.epoch.0,
                        reason: pending.reason.clone(),
                    };
                    demoted.push((old.clone(), env));
                }
            }
            commands.push(completion);
        }
        #[cfg(feature = "chaos-broken-skip-lease-wait")]
        commands.extend(broken_skip_lease_wait(&state, at_unix_ms));
        commands.extend(leader.expirations(&state, now));
        leader.poll_timeout(&state)
    });
    let decisions = match ctx.leases.leader_since() {
        Some(since) => {
            let observed = detector::observe(ctx, since, now);
            policy::decide(
                &state,
                &ctx.topology.groups,
                &ctx.topology.timing,
                &observed,
                now,
                at_unix_ms,
            )
        }
        None => Vec::new(),
    };
    let sleep = next.flatten().map_or(MAX_SLEEP, |at| {
        crate::leases::until(now, at) + Duration::from_millis(1)
    });
    Owed {
        commands,
        demoted,
        decisions,
        sleep,
    }
}

/// Acts on the policy's decisions: for each group to fail over, the first candidate whose
/// `before_acquire` hook agrees is promoted; groups held are recorded for status.
async fn fail_over(ctx: &NodeContext, decisions: Vec<Decision>) {
    let mut held = std::collections::BTreeMap::new();
    for decision in decisions {
        match decision {
            Decision::Hold { group, reason } => {
                held.insert(group, reason);
            }
            Decision::Failover {
                group,
                candidates,
                reason,
            } => {
                if let Some(why) = promote_first_willing(ctx, &group, &candidates, &reason).await {
                    held.insert(group, why);
                }
            }
        }
    }
    ctx.set_held(held);
}

/// Promotes the first candidate whose hook agrees; returns why none was, if none was.
async fn promote_first_willing(
    ctx: &NodeContext,
    group: &GroupName,
    candidates: &[SiteId],
    reason: &str,
) -> Option<String> {
    let epoch = ctx.view.read().group(group).map(|g| g.epoch.0).unwrap_or(0);
    let mut vetoes = Vec::new();
    for site in candidates {
        let env = HookEnv {
            group: group.to_string(),
            site: site.to_string(),
            epoch,
            reason: reason.to_owned(),
        };
        let hooks = ctx.topology.hooks(site.as_str());
        if let Err(veto) = hooks::before_acquire(&hooks, &env).await {
            tracing::warn!(%group, %site, error = %veto, "before_acquire hook vetoed the failover");
            vetoes.push(format!("{site}: {veto}"));
            continue;
        }
        let command = Command::BeginPromotion {
            group: group.clone(),
            to: site.clone(),
            kind: ChangeKind::Failover,
            actor: format!("controller-{}", ctx.node_id),
            reason: reason.to_owned(),
            at_unix_ms: ctx.clock.unix_ms(),
        };
        match propose(ctx, command).await {
            Ok(_) => {
                tracing::warn!(%group, to = %site, %reason, "automatic failover begins");
                return None;
            }
            Err(e) => {
                return Some(format!(
                    "failover to {site} not committed: {}",
                    e.into_status().message()
                ))
            }
        }
    }
    Some(format!(
        "every ready standby was vetoed by its before_acquire hook: {}",
        vetoes.join("; ")
    ))
}

/// The deliberately broken build (feature `chaos-broken-skip-lease-wait`, test-only):
/// completes every promotion at once, without waiting out the old site's leases, so the
/// chaos harness can show that its checks catch the split brain that follows.
#[cfg(feature = "chaos-broken-skip-lease-wait")]
fn broken_skip_lease_wait(state: &failover_core::ClusterState, at_unix_ms: u64) -> Vec<Command> {
    state
        .groups
        .values()
        .filter_map(|g| failover_core::promotion::completion(g, at_unix_ms))
        .collect()
}

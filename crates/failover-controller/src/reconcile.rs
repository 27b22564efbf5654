//! The leader's reconcile loop: the driver of [`failover_core::leader::Leader`].
//!
//! On the leader only, whenever the applied state changes, a promotion begins, a lease is
//! released, or the leader's next deadline passes, one pass:
//! 1. gathers what this controller heard ([`detector::observe`]);
//! 2. polls the core leader, which returns what to propose (groups the topology declares
//!    and the state lacks, completions of promotions whose old site can no longer hold
//!    the group, expirations of leases unrenewed past their TTL plus the drift bound) and
//!    the failover policy's decisions;
//! 3. proposes each command and hands its fate back to the core, which answers with the
//!    effects the commit owes (the `after_demote` hook of a site whose demotion completed):
//!    they run then, once, as tracked and bounded tasks ([`HookTasks`]);
//! 4. for each group to fail over, promotes the first ready standby whose
//!    `before_acquire` hook agrees.
//!
//! Each step is idempotent: a proposal that lost a race is refused by `apply` and changes
//! nothing (and owes nothing), so a new leader can run the loop on whatever state it
//! inherits.

use std::sync::Arc;
use std::time::Duration;

use failover_core::leader::{Effect, Ready};
use failover_core::policy::Decision;
use failover_core::{ChangeKind, Command, GroupName, SiteId};
use tokio::sync::watch;

use crate::context::{propose, NodeContext, ProposeError};
use crate::detector;
use crate::hooks::{self, HookEnv, HookTasks};

/// Longest sleep between two passes when nothing wakes the loop.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// Runs until `shutdown` turns true; hooks still running then are stopped.
pub async fn run(ctx: Arc<NodeContext>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = ctx.view.subscribe();
    let mut hooks = HookTasks::default();
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
        hooks.reap();
        if ctx.raft.is_leader() {
            sleep = step(&ctx, &mut hooks).await.min(MAX_SLEEP);
        }
    }
}

/// One pass over the state; returns how long until the leader's next deadline.
/// Failures are logged and retried on the next pass.
pub async fn step(ctx: &NodeContext, hooks: &mut HookTasks) -> Duration {
    let Some((term, ready, sleep)) = poll(ctx) else {
        return MAX_SLEEP;
    };
    fix_cluster_id(ctx).await;
    for proposal in ready.proposals {
        let what = proposal.command.to_string();
        let id = proposal.id;
        let result = match propose(ctx, proposal.command).await {
            Ok(outcome) => {
                tracing::info!(%what, ?outcome, "committed");
                Ok(outcome)
            }
            Err(ProposeError::Rejected(rejection)) => {
                tracing::warn!(%what, reason = %rejection, "refused");
                Err(rejection)
            }
            Err(ProposeError::Status(status)) => {
                tracing::warn!(%what, reason = %status.message(), "not committed");
                ctx.leases.with_core_in(term, |l| l.on_not_committed(id));
                continue;
            }
        };
        let effects = ctx
            .leases
            .with_core_in(term, |l| l.on_applied(id, &result))
            .unwrap_or_default();
        for effect in effects {
            run_effect(ctx, hooks, effect).await;
        }
    }
    #[cfg(feature = "chaos-broken-skip-lease-wait")]
    {
        // Collected first: the state's read guard must not be held across a proposal.
        let commands = broken_skip_lease_wait(&ctx.view.read(), ctx.clock.unix_ms());
        for command in commands {
            let _ = propose(ctx, command).await;
        }
    }
    fail_over(ctx, ready.decisions).await;
    sleep
}

/// The first leader of a new cluster fixes its identity: the topology's `cluster_id` if
/// it pins one, else a random 128-bit id in hex, committed through the log so every
/// controller holds the same one. Idempotent: a cluster that has an id refuses another,
/// and a lost proposal is retried next pass.
async fn fix_cluster_id(ctx: &NodeContext) {
    if ctx.view.read().cluster_id.is_some() {
        return;
    }
    let id = ctx
        .topology
        .cluster_id
        .clone()
        .unwrap_or_else(new_cluster_id);
    match propose(ctx, Command::SetClusterId { id: id.clone() }).await {
        Ok(_) => tracing::info!(cluster_id = %id, "cluster id fixed"),
        Err(ProposeError::Rejected(rejection)) => {
            tracing::debug!(reason = %rejection, "cluster id already fixed")
        }
        Err(ProposeError::Status(status)) => {
            tracing::warn!(reason = %status.message(), "cluster id not committed")
        }
    }
}

/// 128 random bits in hex, from the runtime's generator (seeded in the simulation, so a
/// run replays).
fn new_cluster_id() -> String {
    use openraft::rt::AsyncRuntime;
    use rand::Rng as _;
    let mut rng = crate::runtime::ControllerRuntime::thread_rng();
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

/// Polls the core leader as of now: the term it leads, what it owes, and how long until
/// its next deadline. `None` when this controller does not lead.
fn poll(ctx: &NodeContext) -> Option<(u64, Ready, Duration)> {
    // Lock order everywhere: the state view, then the lease manager.
    let state = ctx.view.read();
    let now = ctx.clock.now();
    let at_unix_ms = ctx.clock.unix_ms();
    let since = ctx.leases.leader_since()?;
    let observed = detector::observe(ctx, since, now);
    let (term, ready) = ctx.leases.with_core_term(|term, leader| {
        let ready = leader.poll(&state, &ctx.topology, &observed, now, at_unix_ms);
        (term, ready)
    })?;
    let sleep = ready.next_timeout.map_or(MAX_SLEEP, |at| {
        crate::leases::until(now, at) + Duration::from_millis(1)
    });
    Some((term, ready, sleep))
}

/// Carries out one effect a commit owed.
async fn run_effect(ctx: &NodeContext, hooks: &mut HookTasks, effect: Effect) {
    match effect {
        Effect::AfterDemote {
            group,
            site,
            epoch,
            reason,
        } => {
            let env = HookEnv {
                group: group.to_string(),
                site: site.to_string(),
                epoch: epoch.0,
                reason,
            };
            hooks
                .after_demote(ctx.topology.hooks(site.as_str()), env)
                .await;
        }
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

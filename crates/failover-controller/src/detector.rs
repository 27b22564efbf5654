//! The leader's failure detector, driver side: gathers what this controller heard, with
//! times on its one clock, and hands it to the rule in
//! [`failover_core::leader::observe`].
//!
//! Controllers are heard through Raft heartbeat acknowledgements (openraft's leader
//! metrics, placed on the injected clock), executors through their reports, engines that
//! embed the lease API through their acquires and accepted renewals.

use std::time::{Duration, Instant};

use failover_core::leader::observe::{self, ExecutorSeen, Heard};
use failover_core::policy::Observations;
use failover_core::{GroupName, SiteId};

use crate::context::NodeContext;

/// What the leader has observed of every site, as of `now`. `since` is when this
/// controller became leader.
pub fn observe(ctx: &NodeContext, since: Instant, now: Instant) -> Observations {
    let sites: Vec<SiteId> = ctx.topology.sites.iter().map(|s| s.name.clone()).collect();
    let fresh = Duration::from_millis(ctx.topology.timing.failure_timeout_ms);
    observe::observe(&sites, &heard(ctx, now), since, now, fresh)
}

/// Everything this controller heard, as of `now`.
fn heard(ctx: &NodeContext, now: Instant) -> Heard {
    let metrics = ctx.metrics();
    let controllers = ctx
        .topology
        .controllers()
        .filter_map(|(site, c)| {
            let at = if c.id == ctx.node_id {
                Some(now)
            } else {
                ctx.acked_at(&metrics, c.id)
            };
            at.map(|at| (site.clone(), at))
        })
        .collect();
    let executors = ctx
        .topology
        .sites
        .iter()
        .flat_map(|site| ctx.executors.site(site.name.as_str(), now))
        .map(|(age, report)| ExecutorSeen {
            site: SiteId(report.site),
            executor_id: report.executor_id,
            group: GroupName(report.group),
            age,
            ready: report.ready,
            healthy: report.healthy,
            message: report.message,
        })
        .collect();
    Heard {
        controllers,
        executors,
        engines: ctx.leases.engines().seen(),
    }
}

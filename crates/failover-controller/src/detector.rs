//! The leader's failure detector: what it has heard from each site, as the policy's input.
//!
//! Controllers are heard through Raft heartbeat acknowledgements (openraft's leader
//! metrics), executors through their reports. Silence is counted from no earlier than the
//! moment this controller became leader: a new leader knows nothing older.

use std::collections::BTreeMap;
use std::time::Instant;

use failover_core::policy::{Observations, SiteObservation};
use failover_core::{GroupName, SiteId};
use openraft::Instant as _;

use crate::services::NodeContext;

/// What the leader has observed of every site, as of `now`. `since` is when this
/// controller became leader.
pub fn observe(ctx: &NodeContext, since: Instant, now: Instant) -> Observations {
    let metrics = ctx.metrics();
    let mut sites: BTreeMap<SiteId, SiteObservation> = ctx
        .topology
        .sites
        .iter()
        .map(|s| (s.name.clone(), SiteObservation::default()))
        .collect();
    for (site, controller) in ctx.topology.controllers() {
        if controller.id == ctx.node_id {
            hear(&mut sites, site, now);
            continue;
        }
        let acked = metrics
            .heartbeat
            .as_ref()
            .and_then(|h| h.get(&controller.id).cloned().flatten());
        if let Some(acked) = acked {
            hear(
                &mut sites,
                site,
                now.checked_sub(acked.elapsed()).unwrap_or(now),
            );
        }
    }
    let fresh = std::time::Duration::from_millis(ctx.topology.timing.failure_timeout_ms);
    for site in &ctx.topology.sites {
        for (age, report) in ctx.executors.site(site.name.as_str(), now) {
            let at = now.checked_sub(age).unwrap_or(now);
            hear(&mut sites, &site.name, at);
            if let Some(obs) = sites.get_mut(&site.name) {
                let group = GroupName(report.group.clone());
                let last = obs.group_last_heard.entry(group.clone()).or_insert(at);
                *last = (*last).max(at);
                // A stale report says nothing about readiness now.
                let ready = obs.ready.entry(group).or_insert(false);
                *ready |= age < fresh && report.ready && report.healthy;
            }
        }
    }
    Observations { since, sites }
}

fn hear(sites: &mut BTreeMap<SiteId, SiteObservation>, site: &SiteId, at: Instant) {
    if let Some(obs) = sites.get_mut(site) {
        obs.last_heard = Some(obs.last_heard.map_or(at, |h| h.max(at)));
    }
}

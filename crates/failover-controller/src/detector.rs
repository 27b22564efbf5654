//! The leader's failure detector: what it has heard from each site, as the policy's input.
//!
//! Controllers are heard through Raft heartbeat acknowledgements (openraft's leader
//! metrics), executors through their reports, engines that embed the lease API through
//! their acquires (a standby's carry its readiness) and accepted renewals. Silence is counted from no earlier than the
//! moment this controller became leader: a new leader knows nothing older.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use failover_core::policy::{Observations, SiteObservation};
use failover_core::{GroupName, SiteId};
use failover_proto::executor::ExecutorReport;
use openraft::Instant as _;

use crate::leases::EngineSeen;
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
    let fresh = Duration::from_millis(ctx.topology.timing.failure_timeout_ms);
    // Sites whose executors report for a group: their readiness is the executors' word.
    let mut executor_run: BTreeSet<(SiteId, GroupName)> = BTreeSet::new();
    for site in &ctx.topology.sites {
        let reports = ctx.executors.site(site.name.as_str(), now);
        if let Some(obs) = sites.get_mut(&site.name) {
            obs.unhealthy = unhealthy(&reports, fresh);
        }
        for (age, report) in reports {
            let at = now.checked_sub(age).unwrap_or(now);
            hear(&mut sites, &site.name, at);
            if let Some(obs) = sites.get_mut(&site.name) {
                let group = GroupName(report.group.clone());
                executor_run.insert((site.name.clone(), group.clone()));
                let last = obs.group_last_heard.entry(group.clone()).or_insert(at);
                *last = (*last).max(at);
                // A stale report says nothing about readiness now.
                let ready = obs.ready.entry(group).or_insert(false);
                *ready |= age < fresh && report.ready && report.healthy;
            }
        }
    }
    for seen in ctx.leases.engines().seen() {
        hear_engine(&mut sites, &executor_run, &seen, fresh, now);
    }
    Observations { since, sites }
}

/// Per group, why the site is unhealthy for it: it has recent reports for the group and
/// none of them is healthy. One healthy executor is enough for the site to run the group.
fn unhealthy(
    reports: &[(std::time::Duration, ExecutorReport)],
    fresh: std::time::Duration,
) -> BTreeMap<GroupName, String> {
    let mut verdict: BTreeMap<GroupName, Option<String>> = BTreeMap::new();
    for (_, report) in reports.iter().filter(|(age, _)| *age < fresh) {
        let group = verdict
            .entry(GroupName(report.group.clone()))
            .or_insert_with(|| Some(String::new()));
        match (report.healthy, group.as_mut()) {
            (true, _) => *group = None,
            (false, Some(why)) if why.is_empty() => {
                *why = if report.message.is_empty() {
                    format!("executor {} reports unhealthy", report.executor_id)
                } else {
                    report.message.clone()
                };
            }
            (false, _) => {}
        }
    }
    verdict
        .into_iter()
        .filter_map(|(group, why)| why.map(|why| (group, why)))
        .collect()
}

/// Adds what engines speaking the lease API said: an acquire or an accepted renewal
/// counts as hearing the site for the group (a holder that renews is running it), and a
/// standby instance polling with `ready` makes the site ready for the group as a ready
/// executor does, unless executors run the group at that site (then their reports decide:
/// an executor's own session polls too, and must not override its report).
fn hear_engine(
    sites: &mut BTreeMap<SiteId, SiteObservation>,
    executor_run: &BTreeSet<(SiteId, GroupName)>,
    seen: &EngineSeen,
    fresh: Duration,
    now: Instant,
) {
    hear(sites, &seen.site, seen.heard_at);
    let Some(obs) = sites.get_mut(&seen.site) else {
        return;
    };
    let last = obs
        .group_last_heard
        .entry(seen.group.clone())
        .or_insert(seen.heard_at);
    *last = (*last).max(seen.heard_at);
    let ready = obs.ready.entry(seen.group.clone()).or_insert(false);
    if !executor_run.contains(&(seen.site.clone(), seen.group.clone())) {
        *ready |= seen
            .ready_at
            .is_some_and(|at| now.saturating_duration_since(at) < fresh);
    }
}

fn hear(sites: &mut BTreeMap<SiteId, SiteObservation>, site: &SiteId, at: Instant) {
    if let Some(obs) = sites.get_mut(site) {
        obs.last_heard = Some(obs.last_heard.map_or(at, |h| h.max(at)));
    }
}

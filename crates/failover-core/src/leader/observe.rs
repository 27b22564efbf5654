//! The failure detector's rule: from what the leader heard, the policy's [`Observations`].
//!
//! The driver gathers what it heard (controllers through Raft heartbeat acknowledgements,
//! executors through their reports, engines that embed the lease API through their
//! acquires and accepted renewals) with times on its one clock, and calls [`observe`].
//! Silence is counted from no earlier than the moment this controller became leader
//! (`since`): a new leader knows nothing older.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::ids::{GroupName, SiteId};
use crate::policy::{Observations, SiteObservation};

/// An executor's latest report, as the detector reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorSeen {
    /// The site it runs at.
    pub site: SiteId,
    /// Its id (named in the unhealthy reason when it gave no message).
    pub executor_id: String,
    /// The group it runs.
    pub group: GroupName,
    /// How long ago its report arrived.
    pub age: Duration,
    /// Whether it reported ready to take the group over.
    pub ready: bool,
    /// Whether it reported healthy.
    pub healthy: bool,
    /// What it said (why it is unhealthy, if it is).
    pub message: String,
}

/// One site's engines for one group: what acquires and accepted renewals told the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSeen {
    /// The group.
    pub group: GroupName,
    /// The site.
    pub site: SiteId,
    /// The last acquire or accepted renewal from an engine of this site for this group.
    pub heard_at: Instant,
    /// The last acquire of an instance whose latest acquire said it is ready, if any.
    pub ready_at: Option<Instant>,
}

/// Everything the leader heard, with times on the driver's clock.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    /// Per controller: its site and when it last acknowledged a heartbeat (the leader
    /// itself is heard `now`).
    pub controllers: Vec<(SiteId, Instant)>,
    /// The latest report of every executor.
    pub executors: Vec<ExecutorSeen>,
    /// What engines speaking the lease API said.
    pub engines: Vec<EngineSeen>,
}

/// Whether a report of `age` makes its site ready: only a report younger than the
/// failure timeout (`fresh`) says anything about now, and only a ready, healthy one.
pub fn report_means_ready(age: Duration, fresh: Duration, ready: bool, healthy: bool) -> bool {
    age < fresh && ready && healthy
}

/// What the leader has observed of every site in `sites`, as of `now`; `since` is when
/// this controller became leader, `fresh` the failure timeout.
pub fn observe(
    sites: &[SiteId],
    heard: &Heard,
    since: Instant,
    now: Instant,
    fresh: Duration,
) -> Observations {
    let mut observed: BTreeMap<SiteId, SiteObservation> = sites
        .iter()
        .map(|s| (s.clone(), SiteObservation::default()))
        .collect();
    for (site, at) in &heard.controllers {
        hear(&mut observed, site, *at);
    }
    for site in sites {
        let reports: Vec<&ExecutorSeen> =
            heard.executors.iter().filter(|e| &e.site == site).collect();
        if let Some(obs) = observed.get_mut(site) {
            obs.unhealthy = unhealthy(&reports, fresh);
        }
    }
    // Sites whose executors report for a group: their readiness is the executors' word.
    let mut executor_run: BTreeSet<(SiteId, GroupName)> = BTreeSet::new();
    for report in &heard.executors {
        let at = now.checked_sub(report.age).unwrap_or(now);
        hear(&mut observed, &report.site, at);
        let Some(obs) = observed.get_mut(&report.site) else {
            continue;
        };
        executor_run.insert((report.site.clone(), report.group.clone()));
        let last = obs
            .group_last_heard
            .entry(report.group.clone())
            .or_insert(at);
        *last = (*last).max(at);
        let ready = obs.ready.entry(report.group.clone()).or_insert(false);
        *ready |= report_means_ready(report.age, fresh, report.ready, report.healthy);
    }
    for seen in &heard.engines {
        hear_engine(&mut observed, &executor_run, seen, fresh, now);
    }
    Observations {
        since,
        sites: observed,
    }
}

/// Per group, why the site is unhealthy for it: it has recent reports for the group and
/// none of them is healthy. One healthy executor is enough for the site to run the group.
fn unhealthy(reports: &[&ExecutorSeen], fresh: Duration) -> BTreeMap<GroupName, String> {
    let mut verdict: BTreeMap<GroupName, Option<String>> = BTreeMap::new();
    for report in reports.iter().filter(|r| r.age < fresh) {
        let group = verdict
            .entry(report.group.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_millis(1500);

    fn report(site: &str, id: &str, age_ms: u64, ready: bool, healthy: bool) -> ExecutorSeen {
        ExecutorSeen {
            site: site.into(),
            executor_id: id.into(),
            group: "g".into(),
            age: Duration::from_millis(age_ms),
            ready,
            healthy,
            message: String::new(),
        }
    }

    /// A fresh ready and healthy report makes its site ready; a stale one does not, but
    /// still counts as hearing the site when it arrived.
    #[test]
    fn fresh_report_means_ready() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let sites: Vec<SiteId> = vec!["a".into(), "b".into()];
        let heard = Heard {
            executors: vec![
                report("a", "e1", 100, true, true),
                report("b", "e2", 1500, true, true),
            ],
            ..Heard::default()
        };
        let o = observe(&sites, &heard, t0, now, FRESH);
        assert!(o.ready_for(&"a".into(), &"g".into()));
        assert!(!o.ready_for(&"b".into(), &"g".into()));
        assert_eq!(
            o.sites[&SiteId::from("b")].last_heard,
            Some(now - Duration::from_millis(1500))
        );
    }

    /// One healthy executor keeps its site healthy; all unhealthy names the first reason.
    #[test]
    fn unhealthy_only_when_every_fresh_report_is() {
        let t0 = Instant::now();
        let sites: Vec<SiteId> = vec!["a".into()];
        let mut heard = Heard {
            executors: vec![
                report("a", "e1", 10, false, false),
                report("a", "e2", 10, false, true),
            ],
            ..Heard::default()
        };
        let o = observe(&sites, &heard, t0, t0, FRESH);
        assert_eq!(o.unhealthy_for(&"a".into(), &"g".into()), None);
        heard.executors[1].healthy = false;
        let o = observe(&sites, &heard, t0, t0, FRESH);
        assert_eq!(
            o.unhealthy_for(&"a".into(), &"g".into()),
            Some("executor e1 reports unhealthy")
        );
    }

    /// A ready engine poll makes its site ready unless executors run the group there.
    #[test]
    fn engine_readiness_yields_to_executors() {
        let t0 = Instant::now();
        let sites: Vec<SiteId> = vec!["a".into()];
        let engine = EngineSeen {
            group: "g".into(),
            site: "a".into(),
            heard_at: t0,
            ready_at: Some(t0),
        };
        let mut heard = Heard {
            engines: vec![engine],
            ..Heard::default()
        };
        assert!(observe(&sites, &heard, t0, t0, FRESH).ready_for(&"a".into(), &"g".into()));
        heard.executors.push(report("a", "e1", 0, false, true));
        assert!(!observe(&sites, &heard, t0, t0, FRESH).ready_for(&"a".into(), &"g".into()));
    }
}

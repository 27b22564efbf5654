//! What the leader knows of the site executors: their latest reports (soft state, not
//! replicated) and the reload generations operators asked for.
//!
//! An executor's entry lives from its first report until it deregisters (a clean stop),
//! or, for one that died without deregistering, until it has been silent for
//! [`FORGET_AFTER`]. From [`stale_after`] of silence on it is shown as stale: its report
//! says nothing about now, and `failover reload` does not wait for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use failover_proto::executor::ExecutorReport;

/// Most executors remembered; the longest-silent is forgotten beyond it.
pub const MAX_EXECUTORS: usize = 1024;

/// How long an executor that stopped reporting without deregistering stays listed
/// (as stale) before the leader forgets it: long enough for an operator to notice a dead
/// executor in `failover status`, short enough that the list does not fill with them.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// Silence after which an executor is stale: the failure detector's bound, since a
/// report older than that already counts for nothing there.
pub fn stale_after(timing: &failover_core::Timing) -> Duration {
    Duration::from_millis(timing.failure_timeout_ms)
}

/// Whether an executor last heard `age` ago is stale under the bound `stale_after`.
pub fn is_stale(age: Duration, stale_after: Duration) -> bool {
    age >= stale_after
}

/// The leader's view of the executors.
#[derive(Debug, Default)]
pub struct ExecutorRegistry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    reports: HashMap<String, (Instant, ExecutorReport)>,
    reload_generation: HashMap<String, u64>,
    /// The incarnation each executor deregistered with, and when: its reports that
    /// arrive later (sent before the deregistration, delayed or timed out on the way)
    /// are ignored, so they cannot list a stopped executor again. Kept for
    /// [`FORGET_AFTER`], at most [`MAX_EXECUTORS`].
    deregistered: HashMap<String, (Instant, u64)>,
}

impl ExecutorRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a report received at `now`; returns the reload generation asked for its
    /// site. A late report of an incarnation that already deregistered is not recorded.
    pub fn on_report(&self, report: ExecutorReport, now: Instant) -> u64 {
        let mut inner = self.lock();
        let generation = inner
            .reload_generation
            .get(&report.site)
            .copied()
            .unwrap_or(0);
        inner.forget_silent(now);
        let late = report.incarnation != 0
            && inner
                .deregistered
                .get(&report.executor_id)
                .is_some_and(|(_, incarnation)| *incarnation == report.incarnation);
        if late {
            return generation;
        }
        insert_bounded(
            &mut inner.reports,
            report.executor_id.clone(),
            (now, report),
        );
        generation
    }

    /// Forgets an executor that stopped cleanly (its `incarnation`, 0 if unknown) at
    /// `now`; returns whether it was known. Only an entry of the same site is removed, so
    /// a mistyped site cannot drop another's.
    pub fn deregister(
        &self,
        executor_id: &str,
        site: &str,
        incarnation: u64,
        now: Instant,
    ) -> bool {
        let mut inner = self.lock();
        let known = inner
            .reports
            .get(executor_id)
            .is_some_and(|(_, r)| r.site == site);
        if known {
            inner.reports.remove(executor_id);
            if incarnation != 0 {
                insert_bounded(
                    &mut inner.deregistered,
                    executor_id.to_owned(),
                    (now, incarnation),
                );
            }
        }
        known
    }

    /// Asks the executors of `site` for a reload; returns the new generation. Generations
    /// are wall-clock milliseconds (made strictly increasing here), so they keep growing
    /// across a change of leader, whose registry starts empty.
    pub fn request_reload(&self, site: &str, now_unix_ms: u64) -> u64 {
        let mut inner = self.lock();
        let generation = inner.reload_generation.entry(site.to_owned()).or_insert(0);
        *generation = (*generation + 1).max(now_unix_ms);
        *generation
    }

    /// The reports of `site`'s executors with the time since each arrived; executors
    /// silent for [`FORGET_AFTER`] are forgotten first.
    pub fn site(&self, site: &str, now: Instant) -> Vec<(Duration, ExecutorReport)> {
        let mut inner = self.lock();
        inner.forget_silent(now);
        let mut reports: Vec<_> = inner
            .reports
            .values()
            .filter(|(_, r)| r.site == site)
            .map(|(at, r)| (now.saturating_duration_since(*at), r.clone()))
            .collect();
        reports.sort_by(|a, b| a.1.executor_id.cmp(&b.1.executor_id));
        reports
    }
}

/// Inserts into a map of entries stamped with the time they arrived, keeping at most
/// [`MAX_EXECUTORS`] of them: beyond it the oldest is dropped.
fn insert_bounded<T>(map: &mut HashMap<String, (Instant, T)>, id: String, entry: (Instant, T)) {
    map.insert(id, entry);
    if map.len() > MAX_EXECUTORS {
        let oldest = map
            .iter()
            .min_by_key(|(_, (at, _))| *at)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            map.remove(&id);
        }
    }
}

impl Inner {
    fn forget_silent(&mut self, now: Instant) {
        self.reports
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < FORGET_AFTER);
        self.deregistered
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, site: &str) -> ExecutorReport {
        ExecutorReport {
            executor_id: id.into(),
            group: "default".into(),
            site: site.into(),
            ..ExecutorReport::default()
        }
    }

    fn ids(registry: &ExecutorRegistry, site: &str, now: Instant) -> Vec<String> {
        registry
            .site(site, now)
            .into_iter()
            .map(|(_, r)| r.executor_id)
            .collect()
    }

    /// A deregistered executor disappears at once; deregistering under another site
    /// removes nothing.
    #[test]
    fn deregister_forgets_only_the_named_executor_of_its_site() {
        let registry = ExecutorRegistry::default();
        let t0 = Instant::now();
        registry.on_report(report("e1", "site-a"), t0);
        registry.on_report(report("e2", "site-a"), t0);
        assert!(!registry.deregister("e1", "site-b", 0, t0));
        assert_eq!(ids(&registry, "site-a", t0), ["e1", "e2"]);
        assert!(registry.deregister("e1", "site-a", 0, t0));
        assert_eq!(ids(&registry, "site-a", t0), ["e2"]);
        assert!(!registry.deregister("e1", "site-a", 0, t0));
    }

    /// A report of the deregistered incarnation that arrives late lists nothing; a new
    /// incarnation with the same id (a restart) is listed at once; the memory of the
    /// deregistration ends after FORGET_AFTER.
    #[test]
    fn late_report_of_a_deregistered_incarnation_is_ignored() {
        let registry = ExecutorRegistry::default();
        let t0 = Instant::now();
        let of = |incarnation| ExecutorReport {
            incarnation,
            ..report("e1", "site-a")
        };
        registry.on_report(of(7), t0);
        assert!(registry.deregister("e1", "site-a", 7, t0));
        registry.on_report(of(7), t0 + Duration::from_secs(2));
        assert!(ids(&registry, "site-a", t0 + Duration::from_secs(2)).is_empty());
        registry.on_report(of(8), t0 + Duration::from_secs(3));
        assert_eq!(
            ids(&registry, "site-a", t0 + Duration::from_secs(3)),
            ["e1"]
        );
        assert!(registry.deregister("e1", "site-a", 8, t0 + Duration::from_secs(4)));
        registry.on_report(of(8), t0 + Duration::from_secs(4) + FORGET_AFTER);
        assert_eq!(
            ids(
                &registry,
                "site-a",
                t0 + Duration::from_secs(4) + FORGET_AFTER
            ),
            ["e1"]
        );
    }

    /// An executor is stale from exactly the bound on, and forgotten from exactly
    /// FORGET_AFTER on; a new report brings it back.
    #[test]
    fn silent_executor_turns_stale_then_is_forgotten() {
        let registry = ExecutorRegistry::default();
        let t0 = Instant::now();
        let bound = Duration::from_millis(1500);
        registry.on_report(report("e1", "site-a"), t0);
        let age = |now| registry.site("site-a", now)[0].0;
        assert!(!is_stale(age(t0 + bound - Duration::from_millis(1)), bound));
        assert!(is_stale(age(t0 + bound), bound));
        let last = t0 + FORGET_AFTER - Duration::from_millis(1);
        assert_eq!(ids(&registry, "site-a", last), ["e1"]);
        assert!(ids(&registry, "site-a", t0 + FORGET_AFTER).is_empty());
        registry.on_report(report("e1", "site-a"), t0 + FORGET_AFTER);
        assert_eq!(ids(&registry, "site-a", t0 + FORGET_AFTER), ["e1"]);
    }
}

//! What the leader knows of the site executors: their latest reports (soft state, not
//! replicated) and the reload generations operators asked for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use failover_proto::executor::ExecutorReport;

/// Most executors remembered; the longest-silent is forgotten beyond it.
pub const MAX_EXECUTORS: usize = 1024;

/// The leader's view of the executors.
#[derive(Debug, Default)]
pub struct ExecutorRegistry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    reports: HashMap<String, (Instant, ExecutorReport)>,
    reload_generation: HashMap<String, u64>,
}

impl ExecutorRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a report received at `now`; returns the reload generation asked for its site.
    pub fn on_report(&self, report: ExecutorReport, now: Instant) -> u64 {
        let mut inner = self.lock();
        let generation = inner
            .reload_generation
            .get(&report.site)
            .copied()
            .unwrap_or(0);
        inner
            .reports
            .insert(report.executor_id.clone(), (now, report));
        if inner.reports.len() > MAX_EXECUTORS {
            let oldest = inner
                .reports
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                inner.reports.remove(&id);
            }
        }
        generation
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

    /// The reports of `site`'s executors with the time since each arrived.
    pub fn site(&self, site: &str, now: Instant) -> Vec<(Duration, ExecutorReport)> {
        let inner = self.lock();
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

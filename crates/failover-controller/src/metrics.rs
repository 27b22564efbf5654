//! The controller's `/metrics`: OpenMetrics text built afresh on every scrape from the
//! Raft metrics, the applied state, the lease counters, the failure detector and the
//! executor reports. [`crate::http`] routes the scrape here.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use failover_core::{ChangeKind, ClusterState, Phase};
use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::context::NodeContext;
use crate::types::TypeConfig;

/// The content type of the OpenMetrics text format, which Prometheus negotiates.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupSiteLabels {
    group: String,
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

/// Executors by site and group: never by executor id, which carries the process id when
/// generated, so every restart would start a new series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ExecutorLabels {
    site: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PromotionLabels {
    group: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Builds a registry from the current Raft metrics, applied state, lease counters, the
/// failure detector and executor reports, and encodes it. A fresh registry per scrape:
/// the values are read, not accumulated, so nothing has to be kept in step between
/// scrapes.
pub(crate) fn render(ctx: &NodeContext) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register(
        "failover_build",
        "The version of the failover binary this controller runs",
        Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
    );
    raft_metrics(&mut registry, &ctx.metrics());
    group_metrics(&mut registry, &ctx.view.read());
    lease_metrics(&mut registry, ctx);
    limit_metrics(&mut registry, ctx);
    site_metrics(&mut registry, ctx);
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry)?;
    Ok(body)
}

fn gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

fn flag(value: bool) -> i64 {
    i64::from(value)
}

/// Saturates instead of wrapping for values beyond `i64::MAX` (never reached in practice).
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn raft_metrics(registry: &mut Registry, metrics: &openraft::RaftMetrics<TypeConfig>) {
    registry.register(
        "failover_raft_is_leader",
        "1 if this controller is the Raft leader, else 0",
        gauge(flag(metrics.state == ServerState::Leader)),
    );
    registry.register(
        "failover_raft_term",
        "The Raft term this controller is in",
        gauge(int(metrics.current_term)),
    );
    registry.register(
        "failover_raft_leader_id",
        "The id of the leader this controller knows, 0 if none",
        gauge(int(metrics.current_leader.unwrap_or(0))),
    );
}

fn group_metrics(registry: &mut Registry, state: &ClusterState) {
    let epoch = Family::<GroupLabels, Gauge>::default();
    let active = Family::<GroupSiteLabels, Gauge>::default();
    let demoting = Family::<GroupLabels, Gauge>::default();
    let leases = Family::<GroupLabels, Gauge>::default();
    let failovers = Family::<GroupLabels, Counter>::default();
    let promotions = Family::<PromotionLabels, Counter>::default();
    let last_change = Family::<GroupLabels, Gauge<f64, AtomicU64>>::default();
    let paused = Family::<GroupLabels, Gauge>::default();
    for g in state.groups.values() {
        let labels = GroupLabels {
            group: g.name.to_string(),
        };
        epoch.get_or_create(&labels).set(int(g.epoch.0));
        for site in &g.sites {
            let site_labels = GroupSiteLabels {
                group: g.name.to_string(),
                site: site.to_string(),
            };
            let is_active = g.active_site.as_ref() == Some(site);
            active.get_or_create(&site_labels).set(flag(is_active));
        }
        let is_demoting = matches!(g.phase, Phase::Demoting(_));
        demoting.get_or_create(&labels).set(flag(is_demoting));
        leases
            .get_or_create(&labels)
            .set(int(g.leases.len() as u64));
        // From the per-kind counts, not the history in memory: that window is bounded.
        let counts = &g.change_counts;
        failovers
            .get_or_create(&labels)
            .inc_by(counts.get(ChangeKind::Failover));
        for trigger in ["manual", "automatic"] {
            let n: u64 = ALL_KINDS
                .iter()
                .filter(|kind| promotion_trigger(**kind) == Some(trigger))
                .map(|kind| counts.get(*kind))
                .sum();
            promotions
                .get_or_create(&PromotionLabels {
                    group: g.name.to_string(),
                    trigger: trigger.to_owned(),
                })
                .inc_by(n);
        }
        if let Some(last) = g.history.last() {
            last_change
                .get_or_create(&labels)
                .set(last.completed_at_unix_ms as f64 / 1000.0);
        }
        paused.get_or_create(&labels).set(flag(g.pause.is_some()));
    }
    registry.register(
        "failover_group_epoch",
        "The group's epoch in this controller's applied state",
        epoch,
    );
    registry.register(
        "failover_group_active",
        "1 for the group's active site (also while it is being demoted), 0 for its other \
         eligible sites",
        active,
    );
    registry.register(
        "failover_group_demoting",
        "1 while the group's active site is being demoted for a promotion, else 0",
        demoting,
    );
    registry.register("failover_group_leases", "Live leases of the group", leases);
    registry.register(
        "failover_failovers",
        "Automatic failovers of the group since its creation",
        failovers,
    );
    registry.register(
        "failover_promotions",
        "Changes of the group's active site to another site since its creation, by \
         trigger: manual (failover promote, with or without --force) or automatic (failover)",
        promotions,
    );
    registry.register_with_unit(
        "failover_group_last_change_timestamp",
        "When the group's last change of active site (or its creation) completed, unix time \
         on the proposing leader's clock",
        Unit::Seconds,
        last_change,
    );
    registry.register(
        "failover_group_paused",
        "1 while automatic failover of the group is paused (failover pause), else 0",
        paused,
    );
}

/// Every kind of change, for summing counts by trigger.
const ALL_KINDS: [ChangeKind; 5] = [
    ChangeKind::Created,
    ChangeKind::Promote,
    ChangeKind::ForcedPromote,
    ChangeKind::Failover,
    ChangeKind::Demote,
];

/// `manual` or `automatic` for a change that promoted a site; `None` for the group's
/// creation and demotions to no site.
fn promotion_trigger(kind: ChangeKind) -> Option<&'static str> {
    match kind {
        ChangeKind::Promote | ChangeKind::ForcedPromote => Some("manual"),
        ChangeKind::Failover => Some("automatic"),
        ChangeKind::Created | ChangeKind::Demote => None,
    }
}

fn lease_metrics(registry: &mut Registry, ctx: &NodeContext) {
    let counts = ctx.leases.keepalives();
    let keepalives = Family::<ResultLabels, Counter>::default();
    for (result, n) in [
        ("accepted", counts.accepted),
        ("refused", counts.refused),
        ("not_leader", counts.not_leader),
    ] {
        let labels = ResultLabels {
            result: result.to_owned(),
        };
        keepalives.get_or_create(&labels).inc_by(n);
    }
    registry.register(
        "failover_keepalives",
        "Lease renewals this controller answered since it started, by result: accepted, \
         refused by the lease rules, or not_leader when leadership could not be confirmed",
        keepalives,
    );
}

fn limit_metrics(registry: &mut Registry, ctx: &NodeContext) {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &ctx.limits.counters;
    let refused = Family::<LimitLabels, Counter>::default();
    for (limit, n) in [
        ("acquires_per_second", &counters.refused_acquires),
        ("watch_streams", &counters.refused_watches),
        ("keepalive_streams", &counters.refused_keepalives),
    ] {
        let labels = LimitLabels {
            limit: limit.to_owned(),
        };
        refused.get_or_create(&labels).inc_by(n.load(Relaxed));
    }
    registry.register(
        "failover_limit_refusals",
        "Calls this controller refused RESOURCE_EXHAUSTED since it started, by the \
         per-identity limit they were over (the topology's limits: section)",
        refused,
    );
    let stalled = Family::<StreamLabels, Counter>::default();
    for (stream, n) in [
        ("watch", &counters.stalled_watches),
        ("keepalive", &counters.stalled_keepalives),
    ] {
        let labels = StreamLabels {
            stream: stream.to_owned(),
        };
        stalled.get_or_create(&labels).inc_by(n.load(Relaxed));
    }
    registry.register(
        "failover_stalled_streams",
        "Server streams this controller closed since it started because their client left \
         an answer untaken for limits.stall_timeout_ms",
        stalled,
    );
}

fn site_metrics(registry: &mut Registry, ctx: &NodeContext) {
    let now = ctx.clock.now();
    // The failure detector runs on the leader only; elsewhere the family stays empty.
    let observed = ctx
        .leases
        .leader_since()
        .map(|since| crate::detector::observe(ctx, since, now));
    let lost = Family::<SiteLabels, Gauge>::default();
    let last_seen = Family::<ExecutorLabels, Gauge<f64, AtomicU64>>::default();
    let live = Family::<ExecutorLabels, Gauge>::default();
    let stale_after = crate::executors::stale_after(&ctx.topology.timing);
    for site in &ctx.topology.sites {
        if let Some(observed) = &observed {
            let is_lost = observed.site_lost(&site.name, &ctx.topology.timing, now);
            let labels = SiteLabels {
                site: site.name.to_string(),
            };
            lost.get_or_create(&labels).set(flag(is_lost));
        }
        let reports = ctx.executors.site(site.name.as_str(), now);
        for (labels, (age, count)) in live_executors(site.name.as_str(), &reports, stale_after) {
            last_seen.get_or_create(&labels).set(age.as_secs_f64());
            live.get_or_create(&labels).set(int(count));
        }
    }
    registry.register(
        "failover_site_lost",
        "1 when the leader's failure detector considers the site lost (controllers and \
         executors silent for timing.failure_timeout_ms), else 0; reported by the leader only",
        lost,
    );
    registry.register_with_unit(
        "failover_executor_last_seen",
        "Time since the latest report of a live executor of the site and group reached \
         this controller (executors report to the leader; other controllers have none)",
        Unit::Seconds,
        last_seen,
    );
    registry.register(
        "failover_executors",
        "Executors of the site and group heard within timing.failure_timeout_ms; stale \
         ones are left out, so a dead executor's series ends instead of growing old",
        live,
    );
}

/// Per group, the live (not stale) executors of `site`: the age of the latest report and
/// how many there are. Groups with only stale executors are left out.
fn live_executors(
    site: &str,
    reports: &[(Duration, failover_proto::executor::ExecutorReport)],
    stale_after: Duration,
) -> std::collections::BTreeMap<ExecutorLabels, (Duration, u64)> {
    let mut by_group = std::collections::BTreeMap::new();
    for (age, report) in reports {
        if crate::executors::is_stale(*age, stale_after) {
            continue;
        }
        let labels = ExecutorLabels {
            site: site.to_owned(),
            group: report.group.clone(),
        };
        let entry = by_group.entry(labels).or_insert((*age, 0));
        entry.0 = entry.0.min(*age);
        entry.1 += 1;
    }
    by_group
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use failover_core::{Command, GroupName, SiteId};

    /// A state with one group, `default`, over site-a and site-b (site-a active).
    pub(crate) fn state() -> ClusterState {
        let mut state = ClusterState::default();
        let create = Command::CreateGroup {
            group: GroupName("default".into()),
            sites: vec![SiteId("site-a".into()), SiteId("site-b".into())],
            at_unix_ms: 0,
        };
        state.apply(&create).expect("create");
        state
    }

    /// The text `/metrics` serves for the group metrics of `state`.
    fn group_metrics_text(state: &ClusterState) -> String {
        let mut registry = Registry::default();
        group_metrics(&mut registry, state);
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).expect("encode");
        body
    }

    /// The group metrics encode with the expected names, labels and values.
    #[test]
    fn group_metrics_encode() {
        let body = group_metrics_text(&state());
        for expected in [
            "failover_group_epoch{group=\"default\"} 1\n",
            "failover_group_active{group=\"default\",site=\"site-a\"} 1\n",
            "failover_group_active{group=\"default\",site=\"site-b\"} 0\n",
            "failover_group_demoting{group=\"default\"} 0\n",
            "failover_group_leases{group=\"default\"} 0\n",
            "failover_failovers_total{group=\"default\"} 0\n",
            "# EOF\n",
        ] {
            assert!(body.contains(expected), "missing {expected:?} in\n{body}");
        }
    }

    /// Promotions are counted by trigger, the last change's time and the pause are shown.
    #[test]
    fn promotions_last_change_and_pause_encode() {
        let mut state = state();
        let group = GroupName("default".into());
        for (to, kind, at) in [
            ("site-b", ChangeKind::Promote, 2_000),
            ("site-a", ChangeKind::Failover, 5_500),
        ] {
            let begin = Command::BeginPromotion {
                group: group.clone(),
                to: SiteId(to.into()),
                kind,
                actor: "test".into(),
                reason: "test".into(),
                at_unix_ms: at,
            };
            state.apply(&begin).expect("begin");
            let g = state.groups[&group].clone();
            let done = failover_core::promotion::completion(&g, at).expect("completion");
            state.apply(&done).expect("complete");
        }
        let pause = Command::Pause {
            group,
            actor: "op@host".into(),
            reason: "upgrade".into(),
            at_unix_ms: 6_000,
        };
        state.apply(&pause).expect("pause");
        let body = group_metrics_text(&state);
        for expected in [
            "failover_promotions_total{group=\"default\",trigger=\"manual\"} 1\n",
            "failover_promotions_total{group=\"default\",trigger=\"automatic\"} 1\n",
            "failover_group_last_change_timestamp_seconds{group=\"default\"} 5.5\n",
            "failover_group_paused{group=\"default\"} 1\n",
        ] {
            assert!(body.contains(expected), "missing {expected:?} in\n{body}");
        }
    }

    /// The counts go on past the history window: 3,000 changes with a window of 4.
    #[test]
    fn counts_do_not_stop_at_the_history_window() {
        let mut state = state();
        let group = GroupName("default".into());
        for i in 0..3_000u64 {
            let kind = match i % 3 {
                0 => ChangeKind::Failover,
                1 => ChangeKind::Promote,
                _ => ChangeKind::ForcedPromote,
            };
            let to = if i.is_multiple_of(2) {
                "site-b"
            } else {
                "site-a"
            };
            let begin = Command::BeginPromotion {
                group: group.clone(),
                to: SiteId(to.into()),
                kind,
                actor: "test".into(),
                reason: "test".into(),
                at_unix_ms: 10 + i,
            };
            state.apply(&begin).expect("begin");
            let g = state.groups[&group].clone();
            let done = failover_core::promotion::completion(&g, 10 + i).expect("completion");
            state.apply(&done).expect("complete");
            state.trim_history(4);
        }
        assert_eq!(state.groups[&group].history.len(), 4);
        let body = group_metrics_text(&state);
        for expected in [
            "failover_failovers_total{group=\"default\"} 1000\n",
            "failover_promotions_total{group=\"default\",trigger=\"manual\"} 2000\n",
            "failover_promotions_total{group=\"default\",trigger=\"automatic\"} 1000\n",
        ] {
            assert!(body.contains(expected), "missing {expected:?} in\n{body}");
        }
    }

    /// Stale executors are left out; live ones are counted per site and group with the
    /// age of the latest report.
    #[test]
    fn stale_executors_are_dropped() {
        let report = |id: &str, group: &str| failover_proto::executor::ExecutorReport {
            executor_id: id.into(),
            group: group.into(),
            ..Default::default()
        };
        let ms = Duration::from_millis;
        let reports = vec![
            (ms(200), report("exec-site-a-h-100", "default")),
            (ms(50), report("exec-site-a-h-101", "default")),
            (ms(1_500), report("exec-site-a-h-99", "default")),
            (ms(4_000), report("exec-site-a-h-98", "other")),
        ];
        let live = live_executors("site-a", &reports, ms(1_500));
        let labels = ExecutorLabels {
            site: "site-a".into(),
            group: "default".into(),
        };
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live.get(&labels), Some(&(ms(50), 2)));
    }
}

//! The controller's HTTP endpoints, for load balancers and Prometheus.
//!
//! gRPC is the API of the CLI, the executors and the peers, but the tools that route
//! traffic to the active site (HAProxy, nginx, cloud load balancers) and the tools that
//! scrape metrics speak plain HTTP. This module answers them from what the controller
//! already has, without a sidecar:
//!
//! - `GET /active/<group>/<site>`: 200 when `<site>` is the active site of `<group>` and
//!   this controller confirmed within one leader lease that its leader holds a quorum, 503
//!   otherwise (load balancers take anything but 200 as down, so there is no 404);
//! - `GET /health`: 200 `ok` when this controller's Raft node runs and follows a leader;
//! - `GET /metrics`: the OpenMetrics text exposition, built afresh on every scrape.
//!
//! Every answer comes from this controller's own applied state, Raft metrics and its
//! latest quorum confirmation (a background read-index round four times per leader lease);
//! nothing is forwarded per request, so a health check costs no Raft round trip. The server
//! takes an already-bound listener from the caller, like the gRPC server.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use failover_core::leader::reach::Quorum;
use failover_core::{ChangeKind, ClusterState, GroupName, NodeId, Phase, SiteId};
use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::NodeContext;
use crate::types::TypeConfig;

/// The content type of the OpenMetrics text format, which Prometheus negotiates.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The HTTP routes of a controller over its shared context.
pub fn router(ctx: Arc<NodeContext>) -> Router {
    Router::new()
        .route("/active/{group}/{site}", get(active))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// Serves [`router`] on `listener` until `shutdown` turns true.
/// over TLS (server certificate only; no client certificate asked) when `tls` is given.
pub(crate) async fn serve(
    ctx: Arc<NodeContext>,
    listener: TcpListener,
    tls: Option<Arc<crate::auth::ServerTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let result = match tls {
        None => {
            axum::serve(listener, router(ctx))
                .with_graceful_shutdown(stop)
                .await
        }
        Some(tls) => {
            axum::serve(TlsListener::new(listener, tls), router(ctx))
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// `GET /active/<group>/<site>`: 200 when `<site>` is the active site of `<group>` and no
/// promotion is under way (the phase is `active`), 503 with the reason otherwise, also
/// for an unknown group or site.
///
/// The answer comes from this controller's applied state: on a follower it may lag the
/// leader's by about one heartbeat, which a load balancer polling every second or so
/// does not notice. A controller that cannot vouch for its state answers 503: one that
/// knows no leader (an election is under way, or it is cut off and campaigning), and a
/// leader that no quorum has acknowledged within an election timeout, and any controller
/// without a read-index round, started less than one leader lease
/// (`election_timeout_max_ms`) ago, confirming that its leader held a quorum
/// ([`crate::confirm`]): a follower that still hears a leader which lost the majority stops
/// answering 200 before the majority can elect a leader, let alone promote.
async fn active(
    State(ctx): State<Arc<NodeContext>>,
    Path((group, site)): Path<(String, String)>,
) -> Response {
    let answer = current(&ctx)
        .and_then(|_| confirmed(&ctx))
        .and_then(|_| active_site(&ctx.view.read(), &group, &site));
    match answer {
        Ok(body) => text(StatusCode::OK, body),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// Whether a read-index round confirmed, less than one leader lease ago, that the leader this
/// controller follows held a quorum, and the applied state reached its read index (see
/// [`crate::confirm`]). Why not otherwise.
fn confirmed(ctx: &NodeContext) -> Result<(), String> {
    let window = crate::confirm::trust_window(&ctx.topology.timing);
    let applied = ctx.metrics().last_applied.map(|l| l.index);
    ctx.confirmations.vouch(ctx.clock.now(), window, applied)
}

/// Whether `site` is the active site of `group` in `state`, in words either way.
fn active_site(state: &ClusterState, group: &str, site: &str) -> Result<String, String> {
    let Some(g) = state.groups.get(&GroupName(group.to_owned())) else {
        return Err(format!("unknown group `{group}`"));
    };
    let site_id = SiteId(site.to_owned());
    if !g.sites.contains(&site_id) {
        return Err(format!("site `{site}` is not eligible for group `{group}`"));
    }
    let active = g.active_site.as_ref();
    match &g.phase {
        Phase::Active if active == Some(&site_id) => Ok(format!(
            "active: `{site}` is the active site of `{group}` (epoch {})",
            g.epoch.0
        )),
        Phase::Active => Err(format!(
            "standby: `{group}` is active at `{}` (epoch {})",
            active.map_or("no site", |s| s.as_str()),
            g.epoch.0
        )),
        Phase::Demoting(pending) => Err(format!(
            "demoting: `{group}` is leaving `{}` for `{}` (epoch {})",
            active.map_or("no site", |s| s.as_str()),
            pending.to.as_ref().map_or("no site", |s| s.as_str()),
            g.epoch.0
        )),
        Phase::NoActive => Err(format!(
            "no site is active for `{group}` (maintenance, epoch {})",
            g.epoch.0
        )),
    }
}

/// `GET /health`: 200 `ok` when the Raft node runs and knows a leader (when it is the
/// leader: a quorum acknowledged it within an election timeout), 503 with the reason.
///
/// It also needs a recent quorum confirmation, like `/active`: with pre-vote a follower
/// whose leader died keeps naming that leader until a real election succeeds, which a
/// minority never achieves.
async fn health(State(ctx): State<Arc<NodeContext>>) -> Response {
    match current(&ctx).and_then(|_| confirmed(&ctx)) {
        Ok(_) => text(StatusCode::OK, "ok".to_owned()),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// The leader this controller follows, if its applied state can be trusted as current
/// (up to replication lag); why not otherwise.
fn current(ctx: &NodeContext) -> Result<NodeId, String> {
    let metrics = ctx.metrics();
    if let Err(e) = &metrics.running_state {
        return Err(format!("raft is not running: {e}"));
    }
    let Some(leader) = metrics.current_leader else {
        return Err(
            "no leader known: an election is under way or this controller is cut off \
                    from the majority"
                .to_owned(),
        );
    };
    if leader == ctx.node_id {
        // A leader cut off from the majority goes on believing it leads: count who
        // acknowledged its heartbeats lately (itself included).
        let now = ctx.clock.now();
        let quorum = Quorum::count(
            ctx.topology
                .controllers()
                .map(|(_, c)| ctx.reachable(&metrics, c.id, now)),
        );
        if !quorum.holds() {
            let within = Duration::from_millis(ctx.topology.timing.election_timeout_max_ms);
            return Err(format!(
                "leader without a quorum: {} of {} controllers acknowledged it \
                 within {within:?}",
                quorum.heard, quorum.total
            ));
        }
    }
    Ok(leader)
}

fn text(status: StatusCode, mut body: String) -> Response {
    body.push('\n');
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET /metrics`: the controller's state as OpenMetrics text.
async fn metrics(State(ctx): State<Arc<NodeContext>>) -> Response {
    match render(&ctx) {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, OPENMETRICS),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        ),
    }
}

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
fn render(ctx: &NodeContext) -> Result<String, std::fmt::Error> {
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
        let count = g
            .history
            .iter()
            .filter(|h| h.kind == ChangeKind::Failover)
            .count();
        failovers.get_or_create(&labels).inc_by(count as u64);
        for trigger in ["manual", "automatic"] {
            let n = g
                .history
                .iter()
                .filter(|h| promotion_trigger(h.kind) == Some(trigger))
                .count();
            promotions
                .get_or_create(&PromotionLabels {
                    group: g.name.to_string(),
                    trigger: trigger.to_owned(),
                })
                .inc_by(n as u64);
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
        "Automatic failovers of the group recorded in its history",
        failovers,
    );
    registry.register(
        "failover_promotions",
        "Changes of the group's active site to another site recorded in its history, by \
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

/// A listener whose connections are TLS (handshakes run in their own tasks, so a slow
/// client delays nobody).
struct TlsListener {
    local: std::io::Result<std::net::SocketAddr>,
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: Arc<crate::auth::ServerTls>) -> TlsListener {
        let local = listener.local_addr();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                if tx.is_closed() {
                    return;
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    );
                    if let Ok(Ok(stream)) = handshake.await {
                        let _ = tx.send((stream, addr)).await;
                    }
                });
            }
        });
        TlsListener { local, rx }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept task ended: wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_core::Command;

    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        let create = Command::CreateGroup {
            group: GroupName("default".into()),
            sites: vec![SiteId("site-a".into()), SiteId("site-b".into())],
            at_unix_ms: 0,
        };
        state.apply(&create).expect("create");
        state
    }

    /// The active site answers yes; a standby, an unknown site and an unknown group no.
    #[test]
    fn active_site_answers() {
        let state = state();
        let yes = active_site(&state, "default", "site-a").expect("site-a is active");
        assert!(yes.starts_with("active"), "{yes}");
        let standby = active_site(&state, "default", "site-b").expect_err("standby");
        assert!(standby.starts_with("standby"), "{standby}");
        let unknown = active_site(&state, "default", "site-z").expect_err("unknown site");
        assert!(unknown.contains("not eligible"), "{unknown}");
        let nope = active_site(&state, "nope", "site-a").expect_err("unknown group");
        assert!(nope.contains("unknown group"), "{nope}");
    }

    /// While a promotion drains the active site, neither site is reported active.
    #[test]
    fn demoting_site_is_not_active() {
        let mut state = state();
        let begin = Command::BeginPromotion {
            group: GroupName("default".into()),
            to: SiteId("site-b".into()),
            kind: ChangeKind::Promote,
            actor: "test".into(),
            reason: "test".into(),
            at_unix_ms: 1,
        };
        state.apply(&begin).expect("begin");
        let old = active_site(&state, "default", "site-a").expect_err("draining");
        assert!(old.starts_with("demoting"), "{old}");
        active_site(&state, "default", "site-b").expect_err("not yet active");
    }

    /// The group metrics encode with the expected names, labels and values.
    #[test]
    fn group_metrics_encode() {
        let mut registry = Registry::default();
        group_metrics(&mut registry, &state());
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).expect("encode");
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
        let mut registry = Registry::default();
        group_metrics(&mut registry, &state);
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).expect("encode");
        for expected in [
            "failover_promotions_total{group=\"default\",trigger=\"manual\"} 1\n",
            "failover_promotions_total{group=\"default\",trigger=\"automatic\"} 1\n",
            "failover_group_last_change_timestamp_seconds{group=\"default\"} 5.5\n",
            "failover_group_paused{group=\"default\"} 1\n",
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

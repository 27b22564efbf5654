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
//! Every answer carries the controller's cluster id in `x-failover-cluster` (as gRPC
//! answers do), once the cluster has one, so a probe can tell which cluster answered.
//!
//! Every answer comes from this controller's own applied state, Raft metrics and its
//! latest quorum confirmation (a background read-index round four times per leader lease);
//! nothing is forwarded per request, so a health check costs no Raft round trip. The server
//! takes an already-bound listener from the caller, like the gRPC server.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use failover_core::leader::reach::Quorum;
use failover_core::{ClusterState, GroupName, NodeId, Phase, SiteId};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::NodeContext;

/// The HTTP routes of a controller over its shared context.
pub fn router(ctx: Arc<NodeContext>) -> Router {
    Router::new()
        .route("/active/{group}/{site}", get(active))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::map_response_with_state(
            ctx.clone(),
            stamp_cluster,
        ))
        .with_state(ctx)
}

/// Puts this controller's cluster id on an answer.
async fn stamp_cluster(State(ctx): State<Arc<NodeContext>>, mut response: Response) -> Response {
    let id = ctx.view.read().cluster_id.clone();
    if let Some(value) = id.and_then(|id| header::HeaderValue::from_str(&id).ok()) {
        response
            .headers_mut()
            .insert(failover_proto::wire::CLUSTER_HEADER, value);
    }
    response
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
    match crate::metrics::render(&ctx) {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, crate::metrics::OPENMETRICS),
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
    use failover_core::{ChangeKind, Command};

    use crate::metrics::tests::state;

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
}

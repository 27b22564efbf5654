//! The cluster's identity on a controller (docs/security.md, "Cluster identity").
//!
//! - [`ClusterLayer`] (beside `auth::AuthLayer`) refuses a call that names another
//!   cluster in [`CLUSTER_HEADER`] with `FAILED_PRECONDITION` naming both ids, answers
//!   `UNAVAILABLE` (retry) to a client call that names a cluster while this controller
//!   does not know its own yet (Raft from peers passes: the id arrives through the log
//!   or a snapshot), refuses `Acquire` until the id is fixed, and puts this controller's
//!   id on every answer.
//! - [`check_start`] refuses to start a controller whose data dir records another id than
//!   the topology's `cluster_id:` pin.
//! - [`watch`] records the id in the data dir when it is first applied, keeps this
//!   controller's [`ClusterPin`] (what its own Raft and forwarding calls carry) on it,
//!   and stops the controller when a majority of the controllers answer for another
//!   cluster: it was started on another cluster's data dir.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use failover_core::{NodeId, Topology};
use failover_proto::pin::ClusterPin;
use failover_proto::wire::CLUSTER_HEADER;
use tokio::sync::watch;

use crate::context::NodeContext;
use crate::store::{ClusterIdRecord, StateView};

/// Path prefix of the peers' Raft service: accepted from a controller that has no id yet.
const RAFT_PREFIX: &str = "/failover.raft.v1.RaftService/";
/// The one call refused until the cluster has an id: no lease without an identity.
const ACQUIRE: &str = "/failover.lease.v1.LeaseService/Acquire";
/// How often [`watch`] looks at the applied id and at the peers' answers.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// [`probe`] runs on every this many passes of [`watch`] (once a second).
const PROBE_EVERY: u32 = 5;
/// How long [`probe`] waits for a peer's status.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a call for cluster `theirs` (its header, if any) to `path` may proceed on a
/// controller whose id is `ours` (what it answers with: the recorded or applied id, or
/// the topology's pin) and whose replicated state has an id (`fixed`).
pub fn decide(
    ours: Option<&str>,
    fixed: bool,
    theirs: Option<&str>,
    path: &str,
) -> Result<(), tonic::Status> {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if ours != theirs => {
            return Err(tonic::Status::failed_precondition(format!(
                "this controller belongs to cluster {ours}; the request is for cluster \
                 {theirs} (docs/security.md, \"Cluster identity\")"
            )));
        }
        (None, Some(theirs)) if !path.starts_with(RAFT_PREFIX) => {
            return Err(tonic::Status::unavailable(format!(
                "this controller does not know its cluster's id yet (a new cluster fixes it \
                 when its first leader is elected); the request is for cluster {theirs}: \
                 retry"
            )));
        }
        _ => {}
    }
    if path == ACQUIRE && !fixed {
        return Err(tonic::Status::unavailable(
            "the cluster has no id yet (its first leader fixes one): no lease is granted \
             before it does; retry",
        ));
    }
    Ok(())
}

/// Checks every call's cluster id and adds this controller's to every answer (module
/// doc).
#[derive(Clone)]
pub struct ClusterLayer {
    pin: ClusterPin,
    view: Arc<StateView>,
}

impl ClusterLayer {
    /// A layer answering with `pin`'s id (this controller's) and gating acquires on the
    /// applied state `view`.
    pub fn new(pin: ClusterPin, view: Arc<StateView>) -> Self {
        ClusterLayer { pin, view }
    }
}

impl<S> tower::Layer<S> for ClusterLayer {
    type Service = ClusterService<S>;

    fn layer(&self, inner: S) -> ClusterService<S> {
        ClusterService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ClusterLayer`] wraps around the controller's gRPC services.
#[derive(Clone)]
pub struct ClusterService<S> {
    inner: S,
    layer: ClusterLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

fn stamp(headers: &mut http::HeaderMap, ours: &Option<http::HeaderValue>) {
    if let Some(value) = ours {
        headers.insert(CLUSTER_HEADER, value.clone());
    }
}

impl<S, B> tower::Service<http::Request<B>> for ClusterService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let ours = self.layer.pin.id();
        let fixed = self.layer.view.read().cluster_id.is_some();
        let theirs = request
            .headers()
            .get(CLUSTER_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let value = ours.as_deref().and_then(|id| id.parse().ok());
        if let Err(status) = decide(
            ours.as_deref(),
            fixed,
            theirs.as_deref(),
            request.uri().path(),
        ) {
            let mut response = status.into_http();
            stamp(response.headers_mut(), &value);
            return Box::pin(async move { Ok(response) });
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            stamp(response.headers_mut(), &value);
            Ok(response)
        })
    }
}

/// Why a controller may not run on its data dir.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "data dir {dir} belongs to cluster {recorded}, but {who} names cluster {other}: this \
     controller was started on another cluster's data dir and refuses to run (it proposed \
     nothing). Point --data-dir at this controller's own data dir{advice}"
)]
pub struct ForeignDataDir {
    /// The data dir.
    pub dir: String,
    /// The id it records (or applied).
    pub recorded: String,
    /// Who names the other id: the topology's `cluster_id`, or the controllers that
    /// answered.
    pub who: String,
    /// The id they name.
    pub other: String,
    /// What else the operator may do.
    pub advice: String,
}

/// Refuses a data dir that records another id than the topology's `cluster_id:` pin, and
/// sets up this controller's pin: its own id (recorded, else the topology's), never
/// learned from an answer.
pub fn check_start(
    topology: &Topology,
    pin: &ClusterPin,
    recorded: Option<String>,
    dir: &str,
) -> Result<(), ForeignDataDir> {
    if let (Some(recorded), Some(pinned)) = (&recorded, &topology.cluster_id) {
        if recorded != pinned {
            return Err(ForeignDataDir {
                dir: dir.to_owned(),
                recorded: recorded.clone(),
                who: "the topology's cluster_id".to_owned(),
                other: pinned.clone(),
                advice: ", or correct cluster_id in the topology".to_owned(),
            });
        }
    }
    pin.set_learning(false);
    pin.set(recorded.or_else(|| topology.cluster_id.clone()));
    Ok(())
}

/// The id that a majority of the topology's controllers (this one not counted, so it
/// takes all but a minority of the others) answered with instead of `ours`, with those
/// controllers; `None` while no such majority exists. `foreign` maps addresses to the
/// id the controller there last answered with, when it differed.
pub fn foreign_majority(
    topology: &Topology,
    me: NodeId,
    foreign: &BTreeMap<String, String>,
) -> Option<(String, Vec<(NodeId, String)>)> {
    let total = topology.controllers().count();
    let mut by_id: BTreeMap<&str, Vec<(NodeId, String)>> = BTreeMap::new();
    for (_, c) in topology.controllers().filter(|(_, c)| c.id != me) {
        if let Some(id) = foreign.get(&c.addr) {
            by_id
                .entry(id.as_str())
                .or_default()
                .push((c.id, c.addr.clone()));
        }
    }
    by_id
        .into_iter()
        .find(|(_, who)| who.len() > total / 2)
        .map(|(id, who)| (id.to_owned(), who))
}

/// Keeps the data dir's record and this controller's pin on the applied id, and sends
/// why on `fatal` (then ends) when this controller must not run (module doc).
pub async fn watch(
    ctx: Arc<NodeContext>,
    record: ClusterIdRecord,
    dir: String,
    fatal: watch::Sender<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut recorded = match record.read() {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster id recorded in the data dir");
            None
        }
    };
    let pin = ctx.dialer.pin().clone();
    // Raft reaches the peers its log names, which may be another cluster's: the
    // topology's controllers are asked directly until a majority answered with this
    // controller's id.
    let mut confirmed = false;
    let mut passes_to_probe: u32 = 0;
    loop {
        if !confirmed {
            if passes_to_probe == 0 {
                confirmed = probe(&ctx).await;
                passes_to_probe = PROBE_EVERY;
            }
            passes_to_probe -= 1;
        }
        let checked = check_once(
            &ctx.topology,
            ctx.node_id,
            &ctx.view,
            &pin,
            &record,
            &mut recorded,
            &dir,
        )
        .await;
        if let Err(why) = checked {
            tracing::error!("{why}");
            let _ = fatal.send(Some(why.to_string()));
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Asks every other controller of the topology for its status through this controller's
/// pinned channels (which note the ones answering for another cluster); true when a
/// majority of the topology (this one not counted) answered with this controller's id.
async fn probe(ctx: &NodeContext) -> bool {
    let Some(ours) = ctx.dialer.pin().id() else {
        return false;
    };
    let total = ctx.topology.controllers().count();
    let asks = ctx
        .topology
        .controllers()
        .filter(|(_, c)| c.id != ctx.node_id)
        .filter_map(|(_, c)| ctx.dialer.channel(&c.addr).ok())
        .map(|channel| async move {
            let mut client = failover_proto::wire::admin_client(channel);
            let call = client.status(failover_proto::admin::StatusRequest {});
            match tokio::time::timeout(PROBE_TIMEOUT, call).await {
                Ok(Ok(answer)) => answer
                    .metadata()
                    .get(CLUSTER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                _ => None,
            }
        });
    let answers = futures::future::join_all(asks).await;
    let same = answers.iter().flatten().filter(|id| **id == ours).count();
    same > total / 2
}

async fn check_once(
    topology: &Topology,
    me: NodeId,
    view: &StateView,
    pin: &ClusterPin,
    record: &ClusterIdRecord,
    recorded: &mut Option<String>,
    dir: &str,
) -> Result<(), ForeignDataDir> {
    let applied = view.read().cluster_id.clone();
    if let Some(applied) = applied {
        let expected = recorded.clone().or_else(|| topology.cluster_id.clone());
        if let Some(expected) = expected.filter(|e| *e != applied) {
            let (recorded, who, other) = match recorded {
                Some(_) => (expected, "its own log".to_owned(), applied),
                None => (applied, "the topology's cluster_id".to_owned(), expected),
            };
            return Err(ForeignDataDir {
                dir: dir.to_owned(),
                recorded,
                who,
                other,
                advice: String::new(),
            });
        }
        if recorded.is_none() {
            match record.write(&applied).await {
                Ok(()) => {
                    tracing::info!(cluster_id = %applied, "cluster id recorded in the data dir");
                    *recorded = Some(applied.clone());
                }
                Err(e) => tracing::warn!(error = %e, "cannot record the cluster id"),
            }
        }
        if pin.id().as_deref() != Some(applied.as_str()) {
            pin.set(Some(applied));
        }
    }
    if let (Some(ours), Some((other, who))) =
        (pin.id(), foreign_majority(topology, me, &pin.foreign()))
    {
        let who: Vec<String> = who
            .iter()
            .map(|(id, addr)| format!("controller {id} at {addr}"))
            .collect();
        return Err(ForeignDataDir {
            dir: dir.to_owned(),
            recorded: ours,
            who: format!("a majority of the cluster ({})", who.join(", ")),
            other,
            advice: String::new(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMOTE: &str = "/failover.admin.v1.AdminService/Promote";
    const VOTE: &str = "/failover.raft.v1.RaftService/Vote";

    #[test]
    fn another_clusters_call_is_refused_naming_both() {
        let refused = decide(Some("aaaa"), true, Some("bbbb"), PROMOTE).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused
            .message()
            .contains("this controller belongs to cluster aaaa; the request is for cluster bbbb"));
        // Raft from another cluster's controller too.
        let vote = decide(Some("aaaa"), true, Some("bbbb"), VOTE).unwrap_err();
        assert_eq!(vote.code(), tonic::Code::FailedPrecondition);
        assert!(decide(Some("aaaa"), true, Some("aaaa"), PROMOTE).is_ok());
        assert!(
            decide(Some("aaaa"), true, None, PROMOTE).is_ok(),
            "a client that knows no id yet learns it from the answer"
        );
    }

    #[test]
    fn a_controller_without_an_id_asks_clients_to_retry_but_hears_peers() {
        let retry = decide(None, false, Some("aaaa"), PROMOTE).unwrap_err();
        assert_eq!(retry.code(), tonic::Code::Unavailable);
        assert!(decide(None, false, Some("aaaa"), VOTE).is_ok());
        assert!(decide(None, false, None, PROMOTE).is_ok());
    }

    #[test]
    fn no_lease_before_the_id_is_fixed() {
        let early = decide(None, false, None, ACQUIRE).unwrap_err();
        assert_eq!(early.code(), tonic::Code::Unavailable);
        let pinned_only = decide(Some("aaaa"), false, Some("aaaa"), ACQUIRE).unwrap_err();
        assert_eq!(pinned_only.code(), tonic::Code::Unavailable);
        assert!(decide(Some("aaaa"), true, Some("aaaa"), ACQUIRE).is_ok());
    }

    fn topology(n: u64) -> Topology {
        let controllers: String = (1..=n)
            .map(|i| format!("      - {{ id: {i}, addr: \"10.0.0.{i}:7100\" }}\n"))
            .collect();
        let yaml = format!("sites:\n  - name: a\n    controllers:\n{controllers}groups: []\n");
        Topology::from_yaml(&yaml, "t").expect("topology")
    }

    fn foreign(addrs: &[u64], id: &str) -> BTreeMap<String, String> {
        addrs
            .iter()
            .map(|i| (format!("10.0.0.{i}:7100"), id.to_owned()))
            .collect()
    }

    #[test]
    fn only_a_majority_of_the_others_makes_a_controller_the_stranger() {
        let three = topology(3);
        assert_eq!(foreign_majority(&three, 3, &foreign(&[1], "b")), None);
        let (id, who) = foreign_majority(&three, 3, &foreign(&[1, 2], "b")).expect("majority");
        assert_eq!(id, "b");
        assert_eq!(who.len(), 2);
        let five = topology(5);
        assert_eq!(foreign_majority(&five, 5, &foreign(&[1, 2], "b")), None);
        assert!(foreign_majority(&five, 5, &foreign(&[1, 2, 3], "b")).is_some());
        // Its own address never counts.
        assert_eq!(foreign_majority(&three, 1, &foreign(&[1, 2], "b")), None);
    }

    #[test]
    fn a_data_dir_of_another_cluster_than_the_topology_pins_is_refused() {
        let mut t = topology(3);
        t.cluster_id = Some("aaaa".into());
        let pin = ClusterPin::learning();
        let refused = check_start(&t, &pin, Some("bbbb".into()), "/data/c1").unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains("data dir /data/c1 belongs to cluster bbbb"),
            "{text}"
        );
        assert!(text.contains("cluster_id names cluster aaaa"), "{text}");
        assert!(check_start(&t, &pin, None, "/data/c1").is_ok());
        assert_eq!(pin.id().as_deref(), Some("aaaa"));
        assert!(check_start(&t, &pin, Some("aaaa".into()), "/data/c1").is_ok());
    }
}

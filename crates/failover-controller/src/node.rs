//! Assembles a controller: storage, Raft, services and the reconcile loop.

use failover_proto::wire;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use failover_core::lease::LeaseTiming;

use failover_core::{NodeId, Topology};
use failover_proto::admin::admin_service_server::AdminServiceServer;
use failover_proto::executor::executor_service_server::ExecutorServiceServer;
use failover_proto::lease::lease_service_server::LeaseServiceServer;
use failover_proto::raft::raft_service_server::RaftServiceServer;
use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{InitializeError, RaftError};
use openraft::network::{NetSnapshot, RaftNetworkFactory};
use openraft::{BasicNode, SnapshotPolicy};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tonic::transport::server::Connected;

use crate::context::NodeContext;
use crate::leases::LeaseManager;
use crate::network::RaftNetwork;
use crate::services::admin::AdminServer;
use crate::services::executor::ExecutorServer;
use crate::services::lease::LeaseServer;
use crate::services::raft::RaftServer;
use crate::store::Raft;
use crate::store::{self, OpenError, StateView};
use crate::types::TypeConfig;
use failover_net::Clock;
use failover_net::Dialer;

/// How long shutdown waits for each task before aborting it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How long a snapshot send may take, install on the receiver included (~30 MB at
/// 1,000,000 leases).
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 60_000;

/// What a controller needs to know about itself.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// The whole topology; this controller must be in it.
    pub topology: Topology,
    /// This controller's id.
    pub node_id: NodeId,
    /// Where its Raft log and state live.
    pub data_dir: PathBuf,
    /// On an empty data dir, join the cluster the peers already formed as an empty
    /// follower instead of refusing to start (see [`crate::rejoin`]).
    pub join_existing: bool,
    /// Mutual TLS for the gRPC (and, with `tls_http`, HTTP) server; `None` serves
    /// plaintext and checks no roles (the topology's `tls: { insecure: true }`).
    pub tls: Option<Arc<crate::auth::ServerTls>>,
    /// Serve the HTTP endpoints over TLS too (without asking a client certificate):
    /// [`crate::auth::http_tls`].
    pub tls_http: Option<Arc<crate::auth::ServerTls>>,
    /// How many changes and pause events per group stay in memory; the older ones are
    /// read from the data file. Default [`failover_core::HISTORY_WINDOW`].
    pub history_window: usize,
}

/// Why a controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The node id is not one of the topology's controllers.
    #[error("controller {0} is not in the topology (known ids: {1})")]
    NotInTopology(NodeId, String),
    /// The data directory could not be used.
    #[error(transparent)]
    Storage(#[from] OpenError),
    /// Raft refused the configuration or failed to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The data dir is empty but the cluster already exists (see [`crate::rejoin`]).
    #[error(
        "the data dir of controller {node} holds no Raft state, but the cluster already \
         exists: controller {} (term {}) answered, and {}. A controller that \
         lost its data must not vote as if it never ran, or a committed change can be lost. \
         If this controller's disk was replaced, or it never ran before and starts after \
         the others formed the cluster, start it with --join-existing to catch up from the \
         leader as a follower (docs/runbook.md, \"Replacing a controller whose disk is \
         gone\"); if its data is somewhere else, point --data-dir at it",
        .existing.peer, .existing.term, .existing.evidence
    )]
    EmptyDataDir {
        /// This controller.
        node: NodeId,
        /// The peer that reported the existing cluster.
        existing: crate::rejoin::ExistingCluster,
    },
    /// The data dir belongs to another cluster (docs/security.md, "Cluster identity").
    #[error(transparent)]
    ForeignDataDir(#[from] crate::identity::ForeignDataDir),
}

/// What a controller runs on besides its topology: storage, the Raft transport, how it
/// reaches peers to forward requests, and its clock. [`Controller::start`] builds them
/// from a data dir and a dialer; the deterministic simulation supplies simulated ones.
pub struct Parts<N> {
    /// The Raft log and vote.
    pub log_store: store::LogStore,
    /// The state machine (its view is what the services read).
    pub state_machine: store::StateMachine,
    /// The Raft transport.
    pub network: N,
    /// How services reach other controllers (forwarding to the leader).
    pub dialer: Arc<dyn Dialer>,
    /// Monotonic time for leases and wall-clock time for history.
    pub clock: Arc<dyn Clock>,
}

/// A running controller. Dropping it does not stop it: call [`Controller::shutdown`].
pub struct Controller {
    ctx: Arc<NodeContext>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Why this controller must stop (set once, by [`crate::identity::watch`]).
    fatal: watch::Receiver<Option<String>>,
}

impl Controller {
    /// Opens storage, starts Raft, forms the cluster on first start, serves gRPC on
    /// `incoming` and, if given, HTTP (see [`crate::http`]) on `http`, a listener the caller
    /// bound. Peers are dialed through `dialer`; history times come from `clock`.
    pub async fn start<S, IO, IE>(
        options: ControllerOptions,
        incoming: S,
        http: Option<tokio::net::TcpListener>,
        dialer: Arc<dyn Dialer>,
        clock: Arc<dyn Clock>,
    ) -> Result<Controller, ControllerError>
    where
        S: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let ControllerOptions {
            topology,
            node_id,
            data_dir,
            join_existing,
            tls,
            tls_http,
            history_window,
        } = options;
        check_member(&topology, node_id)?;
        let (log_store, mut state_machine) = store::open(&data_dir, node_id)?;
        state_machine
            .set_history_window(history_window)
            .map_err(|source| store::OpenError::Damaged {
                dir: data_dir.display().to_string(),
                source,
            })?;
        let parts = Parts {
            log_store,
            state_machine,
            network: RaftNetwork::new(dialer.clone(), clock.clone()),
            dialer,
            clock,
        };
        let dir = data_dir.display().to_string();
        let mut controller = Controller::launch(topology, node_id, parts, &dir).await?;
        let ctx = controller.ctx.clone();
        let pristine = !ctx
            .raft
            .is_initialized()
            .await
            .map_err(|e| ControllerError::Raft(e.to_string()))?;
        if pristine && !join_existing {
            if let Some(existing) = crate::rejoin::probe_existing_cluster(
                &ctx.topology,
                node_id,
                ctx.dialer.clone(),
                ctx.clock.unix_ms(),
            )
            .await
            {
                controller.shutdown().await;
                return Err(ControllerError::EmptyDataDir {
                    node: node_id,
                    existing,
                });
            }
        }
        // Before serving: the leader must know this controller's log starts over before it
        // can hear so (see crate::rejoin).
        if pristine && join_existing {
            match crate::rejoin::allow_rejoin(&ctx.topology, node_id, &*ctx.dialer).await {
                Some(leader) => tracing::warn!(
                    leader,
                    "empty data dir: joining the existing cluster as a follower; this \
                     controller proposes no membership and waits for the leader's log"
                ),
                None => tracing::warn!(
                    "empty data dir: joining the existing cluster as a follower, but no \
                     leader answered; waiting for one to send the log"
                ),
            }
        }
        let shutdown_rx = controller.shutdown.subscribe();
        match &tls {
            Some(tls) => {
                tracing::info!(files = %tls.files().describe(), "serving gRPC over mutual TLS")
            }
            None => tracing::warn!(
                "INSECURE: serving gRPC in plaintext without authentication (tls.insecure: true); \
                 anyone who reaches this port can promote, demote and acquire leases"
            ),
        }
        controller.tasks.push(tokio::spawn(serve(
            ctx.clone(),
            crate::auth::accept(incoming, tls),
            shutdown_rx.clone(),
            data_dir.clone(),
        )));
        if let Some(listener) = http {
            controller.tasks.push(tokio::spawn(crate::http::serve(
                ctx,
                listener,
                tls_http,
                shutdown_rx,
            )));
        }
        if !(pristine && join_existing) {
            form_cluster(&controller.ctx).await?;
        }
        Ok(controller)
    }

    /// Starts a controller on the given [`Parts`] without serving gRPC or HTTP: callers
    /// reach it in process through [`Controller::context`]. The deterministic simulation
    /// runs the real Raft node, state machine, lease batcher and reconcile loop this way,
    /// over a simulated network, disk and clock.
    pub async fn start_with<N>(
        topology: Topology,
        node_id: NodeId,
        parts: Parts<N>,
    ) -> Result<Controller, ControllerError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = crate::snapshot_data::SnapshotData>,
    {
        check_member(&topology, node_id)?;
        let controller = Controller::launch(topology, node_id, parts, "(storage backend)").await?;
        form_cluster(&controller.ctx).await?;
        Ok(controller)
    }

    /// Starts Raft and the background tasks every controller runs.
    async fn launch<N>(
        topology: Topology,
        node_id: NodeId,
        parts: Parts<N>,
        dir: &str,
    ) -> Result<Controller, ControllerError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = crate::snapshot_data::SnapshotData>,
    {
        let Parts {
            log_store,
            state_machine,
            network,
            dialer,
            clock,
        } = parts;
        // Before Raft starts: a data dir of another cluster than the topology pins never
        // runs, and this controller's own calls carry its id from the first one on.
        let record = log_store.cluster_id_record();
        let recorded = record.read().map_err(|source| store::OpenError::Damaged {
            dir: dir.to_owned(),
            source,
        })?;
        crate::identity::check_start(&topology, dialer.pin(), recorded, dir)?;
        let view: Arc<StateView> = state_machine.view();
        let raft = start_raft(&topology, node_id, network, log_store, state_machine).await?;
        let timing = LeaseTiming {
            ttl: Duration::from_millis(topology.timing.lease_ttl_ms),
            max_clock_drift: Duration::from_millis(topology.timing.max_clock_drift_ms),
        };
        let (leases, renewals) = LeaseManager::new(timing, clock.clone());
        let limits = crate::limits::Limiter::new(topology.limits);
        let ctx = Arc::new(NodeContext {
            node_id,
            topology,
            raft,
            view,
            dialer,
            clock,
            reconcile: Arc::new(Notify::new()),
            leases: leases.clone(),
            executors: Arc::default(),
            confirmations: Default::default(),
            held: Default::default(),
            limits,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (fatal_tx, fatal) = watch::channel(None);
        let tasks = vec![
            crate::runtime::spawn(crate::identity::watch(
                ctx.clone(),
                record,
                dir.to_owned(),
                fatal_tx,
                shutdown_rx.clone(),
            )),
            crate::runtime::spawn(crate::reconcile::run(ctx.clone(), shutdown_rx.clone())),
            crate::runtime::spawn(crate::confirm::run(
                crate::confirm::Confirmer {
                    node_id: ctx.node_id,
                    topology: ctx.topology.clone(),
                    raft: ctx.raft.clone(),
                    dialer: ctx.dialer.clone(),
                    clock: ctx.clock.clone(),
                    confirmations: ctx.confirmations.clone(),
                },
                shutdown_rx.clone(),
            )),
            crate::runtime::spawn(crate::leases::follow_leadership(
                ctx.raft.clone(),
                leases.clone(),
                shutdown_rx.clone(),
            )),
            crate::runtime::spawn(crate::leases::run_batcher(
                ctx.raft.clone(),
                leases,
                ctx.view.clone(),
                renewals,
                shutdown_rx.clone(),
            )),
            crate::runtime::spawn(store::run_snapshot_schedule(
                ctx.raft.clone(),
                ctx.view.clone(),
                shutdown_rx,
            )),
        ];
        Ok(Controller {
            ctx,
            shutdown,
            tasks,
            fatal,
        })
    }

    /// Resolves with why this controller must stop, if it ever must (it was started on
    /// another cluster's data dir, [`crate::identity`]); the caller shuts it down and
    /// exits non-zero.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        let why = match fatal.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            // The watch ended without a verdict (shutting down): never resolves.
            None => std::future::pending().await,
        }
    }

    /// What the services share: Raft, the applied state, the lease manager (for in-process
    /// callers such as the simulation).
    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    /// The Raft handle (metrics, leadership).
    pub fn raft(&self) -> &Raft {
        &self.ctx.raft
    }

    /// The applied state.
    pub fn view(&self) -> &Arc<StateView> {
        &self.ctx.view
    }

    /// Hands leadership over if this controller leads (see [`hand_over_leadership`]),
    /// then stops serving, stops Raft, and waits for every task.
    pub async fn shutdown(self) {
        hand_over_leadership(&self.ctx).await;
        let _ = self.shutdown.send(true);
        if let Err(e) = self.ctx.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        for mut task in self.tasks {
            if tokio::time::timeout(SHUTDOWN_WAIT, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a task did not stop within {SHUTDOWN_WAIT:?}; aborting it");
                task.abort();
            }
        }
    }
}

/// A leader that stops first makes a caught-up follower leader (openraft's leadership
/// transfer: the successor campaigns at once and the others stop honouring this leader's
/// lease), so a rolling restart never waits out an election timeout while holders'
/// renewals go unanswered (docs/leases.md, "Riding out controller churn"). It tries one
/// successor per `election_timeout_max_ms`, and gives up after two of them: the cluster
/// then elects a leader the ordinary way. A follower stops at once.
async fn hand_over_leadership(ctx: &NodeContext) {
    let per_attempt = Duration::from_millis(ctx.topology.timing.election_timeout_max_ms);
    let deadline = tokio::time::Instant::now() + 2 * per_attempt;
    let mut tried: Vec<NodeId> = Vec::new();
    let mut metrics = ctx.raft.metrics();
    loop {
        let candidates = {
            let m = metrics.borrow_watched();
            if m.current_leader != Some(ctx.node_id) || !m.state.is_leader() {
                if !tried.is_empty() {
                    tracing::info!(leader = ?m.current_leader, term = m.current_term, "handed leadership over");
                }
                return;
            }
            followers(ctx, &m)
        };
        let site = |id: NodeId| ctx.topology.controller(id).map(|(site, _)| site.clone());
        let Some(to) = successor(site(ctx.node_id), &candidates, &tried, site) else {
            tracing::warn!(
                "no caught-up follower to hand leadership to; stopping without (the others elect a leader after their election timeout)"
            );
            return;
        };
        tried.push(to);
        tracing::info!(to, "stopping while leading: handing leadership over");
        if let Err(e) = ctx.raft.trigger().transfer_leader(to).await {
            tracing::warn!(error = %e, "cannot hand leadership over");
            return;
        }
        let attempt_end = (tokio::time::Instant::now() + per_attempt).min(deadline);
        let lost = tokio::time::timeout_at(attempt_end, async {
            // Until the successor leads (its first heartbeat names it), not merely until
            // this node stepped down: stopping in between would leave the election to it.
            while metrics.changed().await.is_ok() {
                let m = metrics.borrow_watched();
                if m.current_leader.is_some_and(|l| l != ctx.node_id) {
                    return;
                }
            }
        })
        .await;
        if lost.is_err() && tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                tried = ?tried,
                "leadership was not taken over in time; stopping anyway"
            );
            return;
        }
    }
}

/// A follower as the leader sees it, for choosing a successor.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Follower {
    id: NodeId,
    /// Its log is as long as the leader's.
    caught_up: bool,
    /// It acknowledged a heartbeat within the last election timeout.
    reachable: bool,
}

/// The voters other than the leader, from the leader's metrics.
fn followers(
    ctx: &NodeContext,
    m: &openraft::RaftMetrics<crate::types::TypeConfig>,
) -> Vec<Follower> {
    let now = ctx.clock.now();
    let last = m.last_log_index;
    m.membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != m.id)
        .map(|id| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index);
            Follower {
                id,
                caught_up: matched.is_some() && matched == last,
                reachable: ctx.reachable(m, id, now),
            }
        })
        .collect()
}

/// The follower to hand leadership to: reachable and caught up, not tried yet, at the
/// leader's own site if one is (the leader stays near the holders it served), else the
/// lowest id. `None` when no follower qualifies.
fn successor<S: PartialEq>(
    own_site: Option<S>,
    followers: &[Follower],
    tried: &[NodeId],
    site_of: impl Fn(NodeId) -> Option<S>,
) -> Option<NodeId> {
    let mut eligible: Vec<NodeId> = followers
        .iter()
        .filter(|f| f.caught_up && f.reachable && !tried.contains(&f.id))
        .map(|f| f.id)
        .collect();
    eligible.sort_unstable();
    let same_site = eligible
        .iter()
        .copied()
        .find(|id| own_site.is_some() && site_of(*id) == own_site);
    same_site.or_else(|| eligible.first().copied())
}

/// Refuses a node id the topology does not list.
fn check_member(topology: &Topology, node_id: NodeId) -> Result<(), ControllerError> {
    if topology.controller(node_id).is_some() {
        return Ok(());
    }
    let known: Vec<String> = topology
        .controllers()
        .map(|(_, c)| c.id.to_string())
        .collect();
    Err(ControllerError::NotInTopology(node_id, known.join(", ")))
}

async fn start_raft<N>(
    topology: &Topology,
    node_id: NodeId,
    network: N,
    log_store: store::LogStore,
    state_machine: store::StateMachine,
) -> Result<Raft, ControllerError>
where
    N: RaftNetworkFactory<TypeConfig>,
    N::Network: NetSnapshot<TypeConfig, SnapshotData = crate::snapshot_data::SnapshotData>,
{
    let timing = topology.timing;
    let config = openraft::Config {
        cluster_name: topology.cluster_name.clone(),
        heartbeat_interval: timing.raft_heartbeat_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        // Snapshots follow the state's size instead (`store::SnapshotSchedule`).
        snapshot_policy: SnapshotPolicy::Never,
        // A snapshot travels whole and the receiver decodes and fsyncs it before it
        // answers: openraft's 200 ms default is too short for a large state on a loaded
        // machine, and a send that times out is retried with the same snapshot.
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        max_in_snapshot_log_to_keep: 200,
        // The state machine and the committed index are not fsynced on apply, so a leader
        // restored without an election could serve a linearizable read from a state that
        // misses entries it had already acknowledged. An election (new term, blank entry)
        // makes the restarted node learn the true commit index first.
        enable_leader_restore: Some(false),
        // A node that could not win an election (it was frozen, cut off, or restarted)
        // first asks whether it would; without this it bumps its term, and the healthy
        // leader steps down the moment it hears the higher term (docs/leases.md, "Riding
        // out controller churn").
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| ControllerError::Raft(e.to_string()))?;
    Raft::new(node_id, Arc::new(config), network, log_store, state_machine)
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))
}

/// On a pristine data dir, proposes the topology's controllers as the initial membership.
/// Every controller does this with the same membership, which openraft allows: whoever
/// wins the first election replicates it, and a restart finds the cluster already formed.
async fn form_cluster(ctx: &NodeContext) -> Result<(), ControllerError> {
    let initialized = ctx
        .raft
        .is_initialized()
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    let members: BTreeMap<NodeId, BasicNode> = ctx
        .topology
        .controllers()
        .map(|(_, c)| {
            (
                c.id,
                BasicNode {
                    addr: c.addr.clone(),
                },
            )
        })
        .collect();
    match ctx.raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(ControllerError::Raft(e.to_string())),
    }
}

async fn serve<S, IO, IE>(
    ctx: Arc<NodeContext>,
    incoming: S,
    mut shutdown: watch::Receiver<bool>,
    data_dir: PathBuf,
) where
    S: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let raft = RaftServiceServer::new(RaftServer::new(ctx.raft.clone(), data_dir))
        .max_decoding_message_size(wire::MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(wire::MAX_RAFT_MESSAGE_BYTES);
    // Requests on the other APIs are a handful of bounded fields: anything larger is
    // refused before it is decoded.
    let admin = AdminServiceServer::new(AdminServer::new(ctx.clone()))
        .max_decoding_message_size(wire::MAX_REQUEST_BYTES)
        .max_encoding_message_size(wire::MAX_RESPONSE_BYTES);
    let lease = LeaseServiceServer::new(LeaseServer::new(ctx.clone()))
        .max_decoding_message_size(wire::MAX_REQUEST_BYTES)
        .max_encoding_message_size(wire::MAX_RESPONSE_BYTES);
    let executor = ExecutorServiceServer::new(ExecutorServer::new(ctx.clone()))
        .max_decoding_message_size(wire::MAX_REQUEST_BYTES)
        .max_encoding_message_size(wire::MAX_RESPONSE_BYTES);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(crate::auth::AuthLayer::new(&ctx.topology.tokens))
        .layer(crate::identity::ClusterLayer::new(
            ctx.dialer.pin().clone(),
            ctx.view.clone(),
        ))
        .add_service(raft)
        .add_service(admin)
        .add_service(lease)
        .add_service(executor)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::{successor, Follower};

    fn f(id: u64, caught_up: bool, reachable: bool) -> Follower {
        Follower {
            id,
            caught_up,
            reachable,
        }
    }

    fn site(id: u64) -> Option<&'static str> {
        Some(if id <= 2 { "a" } else { "b" })
    }

    #[test]
    fn successor_prefers_a_caught_up_follower_at_the_same_site() {
        let all = [f(3, true, true), f(2, true, true), f(4, true, true)];
        assert_eq!(successor(site(1), &all, &[], site), Some(2));
        // Not caught up, or unreachable: another site's lowest id.
        let lagging = [f(2, false, true), f(4, true, true), f(3, true, true)];
        assert_eq!(successor(site(1), &lagging, &[], site), Some(3));
        let gone = [f(2, true, false), f(4, true, true)];
        assert_eq!(successor(site(1), &gone, &[], site), Some(4));
    }

    #[test]
    fn successor_skips_the_tried_and_gives_up_without_candidates() {
        let all = [f(2, true, true), f(3, true, true)];
        assert_eq!(successor(site(1), &all, &[2], site), Some(3));
        assert_eq!(successor(site(1), &all, &[2, 3], site), None);
        assert_eq!(successor(site(1), &[f(2, false, false)], &[], site), None);
    }
}

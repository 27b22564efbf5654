//! Assembles a controller: storage, Raft, services and the reconcile loop.

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
use openraft::errors::{InitializeError, RaftError};
use openraft::network::{NetSnapshot, RaftNetworkFactory};
use openraft::{BasicNode, SnapshotPolicy};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tonic::transport::server::Connected;

use crate::leases::LeaseManager;
use crate::network::RaftNetwork;
use crate::services::admin::AdminServer;
use crate::services::executor::ExecutorServer;
use crate::services::lease::LeaseServer;
use crate::services::raft::RaftServer;
use crate::services::NodeContext;
use crate::store::{self, OpenError, StateView};
use crate::types::{Raft, TypeConfig};
use failover_client::clock::Clock;
use failover_client::Dialer;

/// How long shutdown waits for each task before aborting it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Largest gRPC message a controller accepts (snapshots travel in one message).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What a controller needs to know about itself.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// The whole topology; this controller must be in it.
    pub topology: Topology,
    /// This controller's id.
    pub node_id: NodeId,
    /// Where its Raft log and state live.
    pub data_dir: PathBuf,
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
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let ControllerOptions {
            topology,
            node_id,
            data_dir,
        } = options;
        check_member(&topology, node_id)?;
        let (log_store, state_machine) = store::open(&data_dir, node_id)?;
        let parts = Parts {
            log_store,
            state_machine,
            network: RaftNetwork::new(dialer.clone()),
            dialer,
            clock,
        };
        let mut controller = Controller::launch(topology, node_id, parts).await?;
        let shutdown_rx = controller.shutdown.subscribe();
        let ctx = controller.ctx.clone();
        controller.tasks.push(tokio::spawn(serve(
            ctx.clone(),
            incoming,
            shutdown_rx.clone(),
        )));
        if let Some(listener) = http {
            controller
                .tasks
                .push(tokio::spawn(crate::http::serve(ctx, listener, shutdown_rx)));
        }
        form_cluster(&controller.ctx).await?;
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
        N::Network: NetSnapshot<TypeConfig, SnapshotData = Vec<u8>>,
    {
        check_member(&topology, node_id)?;
        let controller = Controller::launch(topology, node_id, parts).await?;
        form_cluster(&controller.ctx).await?;
        Ok(controller)
    }

    /// Starts Raft and the background tasks every controller runs.
    async fn launch<N>(
        topology: Topology,
        node_id: NodeId,
        parts: Parts<N>,
    ) -> Result<Controller, ControllerError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = Vec<u8>>,
    {
        let Parts {
            log_store,
            state_machine,
            network,
            dialer,
            clock,
        } = parts;
        let view: Arc<StateView> = state_machine.view();
        let raft = start_raft(&topology, node_id, network, log_store, state_machine).await?;
        let timing = LeaseTiming {
            ttl: Duration::from_millis(topology.timing.lease_ttl_ms),
            max_clock_drift: Duration::from_millis(topology.timing.max_clock_drift_ms),
        };
        let (leases, renewals) = LeaseManager::new(timing, clock.clone());
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
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(crate::reconcile::run(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::confirm::run(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::leases::follow_leadership(
                ctx.raft.clone(),
                leases.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(crate::leases::run_batcher(
                ctx.raft.clone(),
                leases,
                ctx.view.clone(),
                renewals,
                shutdown_rx,
            )),
        ];
        Ok(Controller {
            ctx,
            shutdown,
            tasks,
        })
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

    /// Stops serving, stops Raft, and waits for every task.
    pub async fn shutdown(self) {
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
    N::Network: NetSnapshot<TypeConfig, SnapshotData = Vec<u8>>,
{
    let timing = topology.timing;
    let config = openraft::Config {
        cluster_name: topology.cluster_name.clone(),
        heartbeat_interval: timing.raft_heartbeat_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
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

async fn serve<S, IO, IE>(ctx: Arc<NodeContext>, incoming: S, mut shutdown: watch::Receiver<bool>)
where
    S: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let raft = RaftServiceServer::new(RaftServer::new(ctx.raft.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServiceServer::new(AdminServer::new(ctx.clone()));
    let lease = LeaseServiceServer::new(LeaseServer::new(ctx.clone()));
    let executor = ExecutorServiceServer::new(ExecutorServer::new(ctx.clone()));
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
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

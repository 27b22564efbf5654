//! `failover controller`: one Raft node of the topology, until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use failover_client::tls::TlsFiles;
use failover_client::TlsDialer;
use failover_controller::{Controller, ControllerOptions, SystemClock, TcpDialer};
use failover_core::NodeId;
use futures::{Stream, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::TcpListenerStream;

/// Arguments of `failover controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The topology file.
    #[arg(long)]
    pub config: PathBuf,
    /// This controller's id in the topology.
    #[arg(long)]
    pub node: NodeId,
    /// Where this controller keeps its Raft log and state.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Start on an empty data dir although the other controllers already formed the
    /// cluster: join it as a follower that catches up from the leader (a replaced disk,
    /// or a first start after the others). Without it such a start is refused.
    #[arg(long)]
    pub join_existing: bool,
    /// How many changes of active site and pause events per group stay in memory (older
    /// ones are read from the data file). For tests that cross the window quickly.
    #[arg(long, hide = true, default_value_t = failover_core::HISTORY_WINDOW,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub history_window: usize,
}

pub(crate) async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let topology = super::load_topology(&args.config)?;
    let (site, me) = topology
        .controller(args.node)
        .map(|(site, c)| (site.clone(), c.clone()))
        .with_context(|| {
            format!(
                "controller {} is not in {}",
                args.node,
                args.config.display()
            )
        })?;
    let socket = reserve(&me.addr)
        .await
        .with_context(|| format!("cannot listen on {}", me.addr))?;
    let http = match &me.http_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (http_addr)"))?,
        ),
        None => None,
    };
    let security = transport(&args.config, &topology, &me)?;
    let options = ControllerOptions {
        topology,
        node_id: args.node,
        data_dir: args.data_dir,
        join_existing: args.join_existing,
        tls: security.server,
        tls_http: security.http,
        history_window: args.history_window,
    };
    let controller = Controller::start(
        options,
        incoming(socket),
        http,
        security.dialer,
        Arc::new(SystemClock),
    )
    .await?;
    tracing::info!(
        node = args.node,
        %site,
        addr = %me.addr,
        http_addr = me.http_addr.as_deref().unwrap_or("none"),
        "controller started"
    );
    // Controller::start returned: gRPC and HTTP are bound and served, and the Raft node
    // runs (with the cluster formed or joined).
    crate::systemd::ready(&format!("controller {} serving on {}", args.node, me.addr));
    tokio::select! {
        stop = wait_for_stop_signal() => stop?,
        why = controller.failed() => {
            crate::systemd::stopping();
            controller.shutdown().await;
            anyhow::bail!(why);
        }
    }
    tracing::info!(node = args.node, "stopping");
    crate::systemd::stopping();
    controller.shutdown().await;
    Ok(())
}

/// How a controller secures its connections.
struct Security {
    server: Option<Arc<failover_controller::auth::ServerTls>>,
    http: Option<Arc<failover_controller::auth::ServerTls>>,
    dialer: Arc<dyn failover_controller::Dialer>,
}

/// The controller's TLS material from the topology (paths relative to the topology
/// file), or plaintext when the topology says `insecure: true`.
fn transport(
    config: &Path,
    topology: &failover_core::Topology,
    me: &failover_core::config::ControllerConfig,
) -> anyhow::Result<Security> {
    let tls = topology
        .transport()
        .map_err(|why| anyhow::anyhow!("{}: {why}", config.display()))?;
    if tls.insecure {
        return Ok(Security {
            server: None,
            http: None,
            dialer: Arc::new(TcpDialer::default()),
        });
    }
    let base = config.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Option<String>| p.as_ref().map(|p| base.join(p)).unwrap_or_default();
    let files = TlsFiles {
        ca: resolve(&tls.ca),
        cert: resolve(&me.cert),
        key: resolve(&me.key),
    };
    let server = if topology.tokens.is_empty() {
        failover_controller::auth::server_tls(files.clone())?
    } else {
        failover_controller::auth::server_tls_allowing_tokens(files.clone())?
    };
    let http = if tls.http {
        Some(failover_controller::auth::http_tls(files.clone())?)
    } else {
        None
    };
    let dialer = Arc::new(TlsDialer::new(failover_client::tls::client_tls(files)?));
    Ok(Security {
        server: Some(server),
        http,
        dialer,
    })
}

/// Binds `addr` without listening yet: the port is taken (a clash fails here, at start),
/// but connections are refused until [`incoming`] is first polled, which the controller
/// does only once it serves. Until then a peer's probe of this controller
/// (`failover_controller::rejoin`) fails at once instead of waiting on a socket nobody
/// answers, so controllers started together on empty data dirs do not wait for each other.
async fn reserve(addr: &str) -> anyhow::Result<TcpSocket> {
    let resolved = tokio::net::lookup_host(addr)
        .await?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    let socket = if resolved.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio listeners do on Unix: a restart can bind while old connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(resolved)?;
    Ok(socket)
}

/// The gRPC connections of a socket from [`reserve`], listening from the first poll on.
fn incoming(socket: TcpSocket) -> impl Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::once(async move { socket.listen(1024) })
        .flat_map(|listening| match listening {
            Ok(listener) => TcpListenerStream::new(listener).left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        })
        // Replies are small and latency-bound: without TCP_NODELAY each one can wait out
        // a delayed ACK (40 ms on Linux).
        .map(|stream| stream.and_then(|s| s.set_nodelay(true).map(|()| s)))
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

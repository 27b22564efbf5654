//! `failover controller`: one Raft node of the topology, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use failover_controller::{Controller, ControllerOptions, SystemClock, TcpDialer};
use failover_core::NodeId;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

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
    let listener = tokio::net::TcpListener::bind(&me.addr)
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
    let options = ControllerOptions {
        topology,
        node_id: args.node,
        data_dir: args.data_dir,
    };
    // Replies are small and latency-bound: without TCP_NODELAY each one can wait out a
    // delayed ACK (40 ms on Linux).
    let incoming = TcpListenerStream::new(listener)
        .map(|stream| stream.and_then(|s| s.set_nodelay(true).map(|()| s)));
    let controller = Controller::start(
        options,
        incoming,
        http,
        Arc::new(TcpDialer::default()),
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
    wait_for_stop_signal().await?;
    tracing::info!(node = args.node, "stopping");
    controller.shutdown().await;
    Ok(())
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

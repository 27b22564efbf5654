//! `failover-bench`: the lease workload of `scripts/bench-leases.py`, against failover's
//! lease API or against etcd's, so both are measured the same way.
//!
//! The workload (identical for both systems):
//!
//! 1. **Grants.** `--leases N` leases, lease `i` held by its own instance (`bench-{i}`),
//!    granted with `--concurrency C` requests in flight, spread over `--streams`
//!    connections. Reports grants/s (`N / wall time`) and the latency of each request.
//! 2. **Keepalives.** For `--duration-secs`, every lease is renewed in rounds, as fast as
//!    the system answers, over `--streams` bidirectional streams (one connection each,
//!    lease `i` on stream `i % streams`), each with at most `--window` renewals in flight
//!    and never two for the same lease. Reports renewals answered per second and the
//!    latency of each (from send to answer).
//!
//! Requests go to the leader (found before the clock starts). The result is one JSON object
//! on stdout; progress and errors go to stderr.

mod etcd;
mod failover;
mod stats;
mod workload;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};

use crate::workload::Workload;

/// Command line of `failover-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "failover-bench",
    about = "Lease grant and keepalive load against failover or etcd"
)]
struct Cli {
    #[command(subcommand)]
    system: System,
}

/// The system under test.
#[derive(Debug, Subcommand)]
enum System {
    /// failover's LeaseService (Acquire, KeepAlive).
    Failover {
        #[command(flatten)]
        common: CommonArgs,
        /// The failover group.
        #[arg(long, default_value = "default")]
        group: String,
        /// The site the instances are at (the group's active site).
        #[arg(long, default_value = "site-a")]
        site: String,
    },
    /// etcd's Lease service (LeaseGrant, LeaseKeepAlive).
    Etcd {
        #[command(flatten)]
        common: CommonArgs,
        /// TTL requested for each lease, in seconds.
        #[arg(long, default_value_t = 60)]
        ttl_secs: i64,
    },
}

/// Workload arguments shared by both systems.
#[derive(Debug, Args)]
struct CommonArgs {
    /// `host:port` of every member, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// How many leases to grant and keep alive.
    #[arg(long, default_value_t = 1000)]
    leases: usize,
    /// Grant requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections, and keepalive streams (one per connection).
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Renewals in flight per keepalive stream.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Length of the keepalive phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// List the slowest 1% of grants with the time each finished (to line them up with
    /// the servers' logs).
    #[arg(long)]
    trace_slow: bool,
    /// How long to wait for an elected leader (and, for failover, the group).
    #[arg(long, default_value_t = 60.0)]
    ready_timeout_secs: f64,
}

impl CommonArgs {
    fn workload(&self) -> anyhow::Result<Workload> {
        anyhow::ensure!(self.leases > 0, "--leases must be positive");
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be positive");
        anyhow::ensure!(self.streams > 0, "--streams must be positive");
        anyhow::ensure!(self.window > 0, "--window must be positive");
        anyhow::ensure!(
            self.duration_secs > 0.0 && self.duration_secs.is_finite(),
            "--duration-secs must be positive"
        );
        Ok(Workload {
            leases: self.leases,
            concurrency: self.concurrency,
            streams: self.streams,
            window: self.window,
            duration: Duration::from_secs_f64(self.duration_secs),
            trace_slow: self.trace_slow,
        })
    }

    fn ready_timeout(&self) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(self.ready_timeout_secs).context("bad --ready-timeout-secs")
    }
}

/// Opens one HTTP/2 connection to `addr` (`host:port`).
pub(crate) async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad address `{addr}`"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// Opens `n` separate connections to `addr`.
pub(crate) async fn connect_many(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(connect(addr).await?);
    }
    Ok(channels)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.system {
        System::Failover {
            common,
            group,
            site,
        } => {
            let target =
                failover::Failover::ready(&common.endpoints, group, site, common.ready_timeout()?)
                    .await?;
            workload::run(target, &common.workload()?).await?
        }
        System::Etcd { common, ttl_secs } => {
            let target =
                etcd::Etcd::ready(&common.endpoints, ttl_secs, common.ready_timeout()?).await?;
            workload::run(target, &common.workload()?).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

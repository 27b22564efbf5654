//! `failover exec`: the site executor. Runs the workers only while the site holds the
//! group's lease; SIGHUP reloads them one by one; SIGINT/SIGTERM stops them and releases.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use failover_client::{SystemClock, TcpDialer};
use failover_core::supervision::RestartPolicy;
use failover_executor::health::HealthCheck;
use failover_executor::{Control, ExecutorOptions};
use tokio::signal::unix::{signal, SignalKind};

use super::ClusterArgs;

/// Arguments of `failover exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The failover group.
    #[arg(long, default_value = "default")]
    pub group: String,
    /// This executor's site.
    #[arg(long)]
    pub site: String,
    /// Number of workers to run.
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// PORT of worker i is port-base + i.
    #[arg(long, default_value_t = 8000)]
    pub port_base: u16,
    /// Health check: a shell command, run with the worker's environment; exit 0 is healthy.
    #[arg(long, conflicts_with = "health_url")]
    pub health_cmd: Option<String>,
    /// Health check: a URL (`{port}` is replaced by the worker's PORT); 2xx is healthy.
    #[arg(long)]
    pub health_url: Option<String>,
    /// Time a worker gets between TERM and KILL (e.g. 500ms, 2s).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub stop_grace: Duration,
    /// Time workers get to stop on a planned switchover before the lease is released.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// This executor's id (default: exec-SITE-HOSTNAME-PID).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The worker command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub(crate) async fn run(args: ExecArgs) -> anyhow::Result<()> {
    let (endpoints, timing) = args.cluster.endpoints_and_timing()?;
    let id = args.id.clone().unwrap_or_else(|| {
        format!(
            "exec-{}-{}-{}",
            args.site,
            super::promote::hostname(),
            std::process::id()
        )
    });
    let health = match (&args.health_cmd, &args.health_url) {
        (Some(cmd), _) => Some(HealthCheck::Command(cmd.clone())),
        (None, Some(url)) => Some(HealthCheck::Url(url.clone())),
        (None, None) => None,
    };
    check_ride_out(&timing, args.stop_grace)?;
    let options = ExecutorOptions {
        group: args.group,
        site: args.site,
        instances: args.instances,
        port_base: args.port_base,
        health,
        stop_grace: args.stop_grace,
        drain_timeout: args.drain_timeout,
        command: args.command,
        endpoints,
        guard_exe: std::env::current_exe().context("cannot find the failover executable")?,
        max_clock_drift: Duration::from_millis(timing.max_clock_drift_ms),
        lease_ttl: Duration::from_millis(timing.lease_ttl_ms),
        report_interval: Duration::from_millis(timing.keepalive_interval_ms),
        executor_id: id,
        restart: RestartPolicy::default(),
    };
    failover_executor::executor::check_command(&options.command)?;
    let (control, commands) = tokio::sync::mpsc::channel(4);
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        let stop = super::controller::wait_for_stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = hangup.recv() => { let _ = control.send(Control::Reload).await; }
                _ = &mut stop => { let _ = control.send(Control::Shutdown).await; return; }
            }
        }
    });
    failover_executor::run(
        options,
        Arc::new(TcpDialer::default()),
        Arc::new(SystemClock),
        commands,
    )
    .await?;
    Ok(())
}

/// Refuses a stop grace that would stop the workers during an ordinary leader election:
/// the executor keeps twice its stop grace off the lease (the lease is believed until
/// `sent + ttl - drift - stop_grace` and the guard starts stopping a stop grace before
/// that), and what the topology's timing leaves for that is
/// [`Timing::ride_out_margin_ms`](failover_core::config::Timing::ride_out_margin_ms).
fn check_ride_out(
    timing: &failover_core::config::Timing,
    stop_grace: Duration,
) -> anyhow::Result<()> {
    let margin = timing.ride_out_margin_ms();
    let kept = 2 * stop_grace.as_millis() as i64;
    if kept >= margin {
        anyhow::bail!(
            "--stop-grace {} is too long to ride out a leader election: the executor keeps \
             2 x stop grace ({kept} ms) off the lease, and lease_ttl_ms {} - \
             max_clock_drift_ms {} - 2 x keepalive_interval_ms {} - election takeover {} ms \
             leaves {margin} ms; use a stop grace under {} ms or a longer lease \
             (docs/leases.md, \"Riding out controller churn\")",
            humantime::format_duration(stop_grace),
            timing.lease_ttl_ms,
            timing.max_clock_drift_ms,
            timing.keepalive_interval_ms,
            timing.takeover_ms(),
            (margin.max(0) + 1) / 2,
        );
    }
    Ok(())
}

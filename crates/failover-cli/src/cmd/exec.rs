//! `failover exec`: the site executor. Runs the workers only while the site holds the
//! group's lease; SIGHUP reloads them one by one; SIGINT/SIGTERM stops them and releases.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use failover_client::SystemClock;
use failover_core::supervision::RestartPolicy;
use failover_executor::health::HealthCheck;
use failover_executor::output::default_log_dir;
use failover_executor::{Containment, Control, ExecutorOptions, OutputOptions};
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
    /// Directory of the workers' log files, `GROUP.SITE.INSTANCE.log` (default:
    /// /var/log/failover for root, else $XDG_STATE_HOME/failover/log or
    /// ~/.local/state/failover/log).
    #[arg(long, env = "FAILOVER_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Rotate a worker's log file before it passes this size (e.g. 10MiB, 512KiB).
    #[arg(long, default_value = "10MiB", value_parser = parse_bytes)]
    pub log_max_size: u64,
    /// Rotated log files kept per worker (`.log.1` is the newest).
    #[arg(long, default_value_t = failover_executor::output::DEFAULT_KEEP_FILES)]
    pub log_keep: u32,
    /// Do not copy worker output to this executor's stderr (it still goes to the log files).
    #[arg(long)]
    pub no_echo: bool,
    /// How worker trees are contained: `auto` (a cgroup v2 per tree when the machine
    /// allows it, else process group) or `process-group`.
    #[arg(long, default_value = "auto")]
    pub containment: Containment,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The worker command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub(crate) async fn run(args: ExecArgs) -> anyhow::Result<()> {
    let (endpoints, timing) = args.cluster.endpoints_and_timing()?;
    let dialer = args.cluster.dialer()?;
    super::exec_check::check(&args.cluster, &endpoints, &args.site, &args.group).await?;
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
    let registered = Arc::new(tokio::sync::Notify::new());
    let status = format!("executor {id} of group {} at {}", args.group, args.site);
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
        output: OutputOptions {
            // SAFETY: geteuid has no preconditions.
            log_dir: args
                .log_dir
                .unwrap_or_else(|| default_log_dir(unsafe { libc::geteuid() } == 0)),
            max_file_bytes: args.log_max_size,
            keep_files: args.log_keep,
            echo: !args.no_echo,
        },
        containment: args.containment,
        registered: Some(registered.clone()),
        cluster_id: args.cluster.pinned_cluster_id(),
    };
    failover_executor::check_command(&options.command)?;
    // Workers left by a previous executor of this group and site that was killed
    // together with its guards run with no lease: end them before taking one.
    for marker in failover_executor::contain::sweep_stale(&options.group, &options.site) {
        tracing::warn!(%marker, "killed a worker tree left by an executor that is gone");
    }
    tokio::spawn(async move {
        registered.notified().await;
        crate::systemd::ready(&format!("{status}: registered with the cluster"));
    });
    let (control, commands) = tokio::sync::mpsc::channel(4);
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        let stop = super::controller::wait_for_stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = hangup.recv() => { let _ = control.send(Control::Reload).await; }
                _ = &mut stop => {
                    crate::systemd::stopping();
                    let _ = control.send(Control::Shutdown).await;
                    return;
                }
            }
        }
    });
    failover_executor::run(options, dialer, Arc::new(SystemClock), commands).await?;
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

/// A size such as `10MiB`, `512KiB`, `2MB` or `4096` (bytes).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: expected e.g. 10MiB, 512KiB or 4096"))?;
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`: use B, KiB, MiB or GiB"
            ))
        }
    };
    let bytes = number
        .checked_mul(unit_bytes)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes == 0 {
        return Err("a log file size must be at least 1 byte".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("10MiB"), Ok(10 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert!(parse_bytes("10 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("MiB").is_err());
    }
}

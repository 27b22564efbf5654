//! What `failover exec` is told, and the checks that refuse options that cannot work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use failover_client::Endpoints;
use failover_core::executor::SupervisorConfig;
use failover_core::supervision::RestartPolicy;

use crate::contain::Containment;
use crate::health::HealthCheck;
use crate::output::OutputOptions;

/// What `failover exec` is told.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The failover group.
    pub group: String,
    /// This executor's site.
    pub site: String,
    /// Number of workers.
    pub instances: u32,
    /// PORT of worker i is `port_base + i`.
    pub port_base: u16,
    /// How worker health is checked, if at all.
    pub health: Option<HealthCheck>,
    /// Time a worker gets between TERM and KILL (also kept off the lease's end).
    pub stop_grace: Duration,
    /// Time workers get to stop on a planned switchover before the lease is released.
    pub drain_timeout: Duration,
    /// The worker command and its arguments.
    pub command: Vec<String>,
    /// Where the controllers are.
    pub endpoints: Endpoints,
    /// The `failover` executable (for `failover guard`).
    pub guard_exe: PathBuf,
    /// The topology's `max_clock_drift_ms`.
    pub max_clock_drift: Duration,
    /// The topology's `lease_ttl_ms`.
    pub lease_ttl: Duration,
    /// How often to report to the controllers (the executor's heartbeat).
    pub report_interval: Duration,
    /// This executor's id, unique in the group.
    pub executor_id: String,
    /// Restart policy for crashed workers.
    pub restart: RestartPolicy,
    /// Where worker output goes (log directory, rotation, echo on stderr).
    pub output: OutputOptions,
    /// How each worker tree is contained (cgroup v2 when possible, or process group).
    pub containment: Containment,
    /// Notified once, when the leader first accepts a report: the executor is then
    /// registered with the cluster (`failover exec` tells systemd it is ready).
    pub registered: Option<Arc<tokio::sync::Notify>>,
    /// The cluster this executor works for (`--cluster-id`): its lease session refuses
    /// a controller of any other cluster. `None`: the first answer's id is pinned for the
    /// executor's lifetime (docs/security.md, "Cluster identity").
    pub cluster_id: Option<String>,
}

/// Why an executor cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The worker command cannot be found or is not executable.
    #[error("worker command `{0}` not found or not executable")]
    CommandNotFound(String),
    /// No worker command was given.
    #[error("no worker command given (put it after `--`)")]
    NoCommand,
    /// Options that cannot work together.
    #[error("{0}")]
    Invalid(String),
}

/// What the operator can ask of a running executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Replace the workers one by one (SIGHUP, or `failover reload`).
    Reload,
    /// Stop the workers, release the lease, exit.
    Shutdown,
}

/// The stop grace is kept off the lease twice: the lease is believed until `sent + ttl -
/// drift - stop_grace`, and the guard starts stopping a stop grace before that. What is
/// left must outlast a keepalive round, or workers would be stopped between renewals.
pub(crate) fn check_stop_grace(opts: &ExecutorOptions) -> Result<(), ExecutorError> {
    let usable = opts.lease_ttl.saturating_sub(opts.max_clock_drift);
    let left = usable.saturating_sub(opts.stop_grace * 2);
    if left <= opts.report_interval {
        return Err(ExecutorError::Invalid(format!(
            "--stop-grace {:?} is too long for lease_ttl_ms {} and max_clock_drift_ms {}: \
             ttl - drift - 2 x stop grace must exceed the keepalive interval ({:?}); \
             use a stop grace under {:?}",
            opts.stop_grace,
            opts.lease_ttl.as_millis(),
            opts.max_clock_drift.as_millis(),
            opts.report_interval,
            usable.saturating_sub(opts.report_interval) / 2,
        )));
    }
    Ok(())
}

/// Checks that the worker command exists and is executable (a PATH lookup for bare names).
pub fn check_command(command: &[String]) -> Result<PathBuf, ExecutorError> {
    let program = command.first().ok_or(ExecutorError::NoCommand)?;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| ExecutorError::CommandNotFound(program.clone()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Refuses options the executor cannot run with, naming what is wrong.
pub(crate) fn validate(opts: &ExecutorOptions) -> Result<(), ExecutorError> {
    check_command(&opts.command)?;
    if opts.instances == 0 {
        return Err(ExecutorError::Invalid(
            "--instances must be at least 1".into(),
        ));
    }
    check_stop_grace(opts)?;
    if u32::from(opts.port_base) + opts.instances > u32::from(u16::MAX) {
        return Err(ExecutorError::Invalid(
            "--port-base + --instances exceeds 65535".into(),
        ));
    }
    Ok(())
}

/// The supervisor's bounds for these options.
pub(crate) fn supervisor_config(opts: &ExecutorOptions) -> SupervisorConfig {
    SupervisorConfig {
        restart: opts.restart,
        health_checked: opts.health.is_some(),
        ..SupervisorConfig::new(opts.instances, opts.stop_grace, opts.drain_timeout)
    }
}

/// PORT of worker `instance`. [`validate`] checked that `port_base + instances` fits.
pub(crate) fn port(opts: &ExecutorOptions, instance: u32) -> u16 {
    u16::try_from(u32::from(opts.port_base) + instance).unwrap_or(u16::MAX)
}

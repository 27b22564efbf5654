//! The executor's heartbeat: its state as the controllers see it (`failover status`,
//! the readiness gate of a promotion, `failover reload`), sent to the leader.

use std::time::{Duration, Instant};

use failover_client::{Dialer, LeaseState};
use failover_core::executor::Supervisor;
use failover_proto::executor::executor_service_client::ExecutorServiceClient;
use failover_proto::executor::{ExecutorReport, WorkerReport};

use crate::options::ExecutorOptions;
use crate::session;

/// Time one controller gets to answer a report.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Controllers tried per report at most (the leader hint, then every endpoint).
const MAX_ATTEMPTS: usize = 8;

/// The report of the executor `opts` describe, at `now`.
pub(crate) fn message(
    opts: &ExecutorOptions,
    supervisor: &Supervisor,
    lease: &LeaseState,
    now: Instant,
) -> ExecutorReport {
    let (state, epoch, token) = session::report_fields(lease);
    let unhealthy = supervisor.unhealthy_reason();
    let state = if unhealthy.is_some() { "paused" } else { state };
    let workers = supervisor
        .slots(now)
        .into_iter()
        .map(|slot| WorkerReport {
            instance: slot.instance,
            pid: slot.pid.unwrap_or(0),
            state: slot.state.name().into(),
            restarts: slot.restarts,
            uptime_ms: slot.uptime.as_millis() as u64,
            health: slot.health.name().into(),
            generation: slot.worker.map_or(0, |w| w.0),
        })
        .collect();
    let reload = supervisor.reload_outcome();
    ExecutorReport {
        executor_id: opts.executor_id.clone(),
        group: opts.group.clone(),
        site: opts.site.clone(),
        ready: supervisor.ready(now),
        healthy: unhealthy.is_none(),
        lease_state: state.into(),
        epoch,
        fencing_token: token,
        workers,
        reload_done: reload.generation,
        reload_ok: reload.ok,
        reload_message: reload.message.clone(),
        message: unhealthy.unwrap_or_default().to_owned(),
    }
}

/// What the leader answered a report with.
pub(crate) struct Accepted {
    /// The controller that accepted it (tried first next time).
    pub(crate) leader: String,
    /// The reload generation the cluster asks for.
    pub(crate) reload_generation: u64,
}

/// Sends `report` to the leader: `hint` first, then every endpoint, following the
/// leader header of a refusal. Bounded by [`MAX_ATTEMPTS`] tries of [`ATTEMPT_TIMEOUT`].
/// `Err` carries the next hint (a leader named by a refusal, if any).
pub(crate) async fn send(
    dialer: &dyn Dialer,
    opts: &ExecutorOptions,
    hint: Option<String>,
    report: ExecutorReport,
) -> Result<Accepted, Option<String>> {
    let mut next_hint = None;
    let mut targets: Vec<String> = hint.into_iter().collect();
    targets.extend(opts.endpoints.addrs().iter().cloned());
    for addr in targets.into_iter().take(MAX_ATTEMPTS) {
        let Ok(channel) = dialer.channel(&addr) else {
            continue;
        };
        let mut client = ExecutorServiceClient::new(channel);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, client.report(report.clone())).await {
            Ok(Ok(ack)) => {
                return Ok(Accepted {
                    leader: addr,
                    reload_generation: ack.into_inner().reload_generation,
                })
            }
            Ok(Err(status)) => {
                next_hint = status
                    .metadata()
                    .get("x-failover-leader")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
            }
            Err(_) => next_hint = None,
        }
    }
    Err(next_hint)
}

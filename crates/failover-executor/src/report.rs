//! The executor's heartbeat: its state as the controllers see it (`failover status`,
//! the readiness gate of a promotion, `failover reload`), and its delivery to the leader,
//! off the driver's loop.
//!
//! The loop that extends the guards' deadlines must never wait on the network: a report
//! to a frozen or cut-off leader gets no reset, only a timeout, and while the loop waited
//! on it no renewal reached the guards, which then stopped healthy workers at the old
//! deadline. So a report runs as its own task, one at a time, and its outcome comes back
//! to the loop as an event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use failover_client::{Dialer, LeaseState};
use failover_core::executor::Supervisor;
use failover_proto::executor::{ExecutorReport, WorkerReport};
use failover_proto::types::{Health, LeaseState as WireLease, WorkerState};
use failover_proto::wire;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::options::ExecutorOptions;
use crate::session;

/// The report of the executor `opts` describe (process `incarnation`), at `now`.
pub(crate) fn message(
    opts: &ExecutorOptions,
    incarnation: u64,
    supervisor: &Supervisor,
    lease: &LeaseState,
    now: Instant,
) -> ExecutorReport {
    let (state, epoch, token) = session::report_fields(lease);
    let unhealthy = supervisor.unhealthy_reason();
    let state = if unhealthy.is_some() {
        WireLease::Paused
    } else {
        state
    };
    let workers = supervisor
        .slots(now)
        .into_iter()
        .map(|slot| WorkerReport {
            instance: slot.instance,
            pid: slot.pid.unwrap_or(0),
            state: WorkerState::from(slot.state).into(),
            restarts: slot.restarts,
            uptime_ms: slot.uptime.as_millis() as u64,
            health: Health::from(slot.health).into(),
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
        epoch: epoch.0,
        fencing_token: token.0,
        workers,
        reload_done: reload.generation,
        reload_ok: reload.ok,
        reload_message: reload.message.clone(),
        message: unhealthy.unwrap_or_default().to_owned(),
        incarnation,
    }
}

/// A random, non-zero incarnation for this executor process (`ExecutorReport.incarnation`):
/// a restarted executor keeps its id but not its incarnation.
pub(crate) fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Each `RandomState` is keyed from the operating system's randomness.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// How long one controller gets to answer a report.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// What one report delivery found out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// The controller to ask first next time: the one that accepted this report (the
    /// leader), or the leader a follower named.
    pub(crate) ask_next: Option<String>,
    /// The reload generation the leader asks for; `None` when nobody accepted the report.
    pub(crate) reload_generation: Option<u64>,
}

/// Sends `report` to `hint` (the controller that accepted the last one) and, if that
/// fails, to every endpoint at once: only the leader accepts, followers refuse naming
/// it, and a controller that does not answer holds up no other. Takes at most about two
/// answer timeouts.
pub(crate) async fn deliver(
    dialer: Arc<dyn Dialer>,
    endpoints: Vec<String>,
    hint: Option<String>,
    report: ExecutorReport,
) -> Delivery {
    if let Some(hint) = hint {
        match send_one(&*dialer, &hint, &report).await {
            Answer::Accepted(generation) => return accepted(hint, generation),
            Answer::Refused(Some(leader)) if leader != hint => {
                if let Answer::Accepted(generation) = send_one(&*dialer, &leader, &report).await {
                    return accepted(leader, generation);
                }
            }
            _ => {}
        }
    }
    let mut attempts: FuturesUnordered<_> = endpoints
        .into_iter()
        .map(|addr| {
            let dialer = dialer.clone();
            let report = report.clone();
            async move {
                let answer = send_one(&*dialer, &addr, &report).await;
                (addr, answer)
            }
        })
        .collect();
    let mut named = None;
    while let Some((addr, answer)) = attempts.next().await {
        match answer {
            Answer::Accepted(generation) => return accepted(addr, generation),
            Answer::Refused(Some(leader)) => named = Some(leader),
            Answer::Refused(None) | Answer::Silent => {}
        }
    }
    Delivery {
        ask_next: named,
        reload_generation: None,
    }
}

fn accepted(addr: String, generation: u64) -> Delivery {
    Delivery {
        ask_next: Some(addr),
        reload_generation: Some(generation),
    }
}

enum Answer {
    /// The leader took it and asks for this reload generation.
    Accepted(u64),
    /// Refused, naming the leader if the controller knows it.
    Refused(Option<String>),
    /// No connection or no answer in time.
    Silent,
}

async fn send_one(dialer: &dyn Dialer, addr: &str, report: &ExecutorReport) -> Answer {
    let Ok(channel) = dialer.channel(addr) else {
        return Answer::Silent;
    };
    let mut client = wire::executor_client(channel);
    match tokio::time::timeout(ANSWER_WITHIN, client.report(report.clone())).await {
        Ok(Ok(ack)) => Answer::Accepted(ack.into_inner().reload_generation),
        Ok(Err(status)) => Answer::Refused(wire::leader_named(&status)),
        Err(_) => Answer::Silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_client::TcpDialer;
    use failover_proto::executor::executor_service_server::{
        ExecutorService, ExecutorServiceServer,
    };
    use failover_proto::executor::{DeregisterAck, DeregisterRequest, ReportAck};
    use failover_proto::wire::LEADER_HEADER;
    use tokio::net::TcpListener;
    use tonic::{Request, Response, Status};

    /// A controller: the leader takes reports, a follower refuses naming the leader.
    struct Controller {
        leader: Option<String>,
    }

    #[tonic::async_trait]
    impl ExecutorService for Controller {
        async fn report(&self, _: Request<ExecutorReport>) -> Result<Response<ReportAck>, Status> {
            match &self.leader {
                None => Ok(Response::new(ReportAck {
                    reload_generation: 7,
                })),
                Some(leader) => {
                    let mut status = Status::unavailable("not the leader");
                    status
                        .metadata_mut()
                        .insert(LEADER_HEADER, leader.parse().expect("ascii"));
                    Err(status)
                }
            }
        }

        async fn deregister(
            &self,
            _: Request<DeregisterRequest>,
        ) -> Result<Response<DeregisterAck>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    async fn serve(controller: Controller) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ExecutorServiceServer::new(controller))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// A frozen controller: the kernel accepts the connection, nobody ever answers.
    async fn frozen() -> (String, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        (listener.local_addr().expect("addr").to_string(), listener)
    }

    #[tokio::test]
    async fn a_frozen_last_leader_does_not_keep_the_report_from_the_new_one() {
        let leader = serve(Controller { leader: None }).await;
        let follower = serve(Controller {
            leader: Some(leader.clone()),
        })
        .await;
        let (stuck, _held) = frozen().await;
        let delivery = deliver(
            Arc::new(TcpDialer::default()),
            vec![stuck.clone(), follower, leader.clone()],
            Some(stuck),
            ExecutorReport::default(),
        )
        .await;
        assert_eq!(
            delivery,
            Delivery {
                ask_next: Some(leader),
                reload_generation: Some(7),
            }
        );
    }

    #[tokio::test]
    async fn a_follower_naming_the_leader_is_followed_at_once() {
        let leader = serve(Controller { leader: None }).await;
        let follower = serve(Controller {
            leader: Some(leader.clone()),
        })
        .await;
        let delivery = deliver(
            Arc::new(TcpDialer::default()),
            vec![follower.clone()],
            Some(follower),
            ExecutorReport::default(),
        )
        .await;
        assert_eq!(delivery.ask_next, Some(leader));
        assert_eq!(delivery.reload_generation, Some(7));
    }

    #[tokio::test]
    async fn nobody_accepting_keeps_the_named_leader_for_next_time() {
        let (stuck, _held) = frozen().await;
        let follower = serve(Controller {
            leader: Some(stuck.clone()),
        })
        .await;
        let delivery = deliver(
            Arc::new(TcpDialer::default()),
            vec![follower, stuck.clone()],
            None,
            ExecutorReport::default(),
        )
        .await;
        assert_eq!(
            delivery,
            Delivery {
                ask_next: Some(stuck),
                reload_generation: None,
            }
        );
    }
}

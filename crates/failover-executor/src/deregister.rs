//! Telling the leader that an executor stopped cleanly, so `failover status` stops
//! listing it and `failover reload` stops waiting for it.

use std::time::Duration;

use failover_client::Dialer;
use failover_proto::executor::DeregisterRequest;

use crate::ExecutorOptions;

/// Time one controller gets to answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Controllers tried at most (the leader hint, then every endpoint, following redirects).
const MAX_ATTEMPTS: usize = 8;

/// Deregisters the executor `opts` describe (its id and site, and this process's
/// `incarnation`, so the leader ignores its reports still on the way) from the leader; returns
/// whether a leader confirmed it. The executor's shutdown calls it last, after the
/// workers stopped and the lease was released.
///
/// Best effort and bounded (at most [`MAX_ATTEMPTS`] tries of [`ATTEMPT_TIMEOUT`]): a
/// stopping executor must not hang on an unreachable cluster. If no leader answers, the
/// leader marks the executor stale after its stale bound and forgets it later.
/// `leader_hint` is the controller that last accepted a report, tried first.
pub async fn deregister(
    dialer: &dyn Dialer,
    opts: &ExecutorOptions,
    incarnation: u64,
    leader_hint: Option<&str>,
) -> bool {
    let request = DeregisterRequest {
        executor_id: opts.executor_id.clone(),
        site: opts.site.clone(),
        incarnation,
    };
    let mut targets: Vec<String> = leader_hint.map(str::to_owned).into_iter().collect();
    targets.extend(opts.endpoints.addrs().iter().cloned());
    let mut tried = 0;
    while tried < MAX_ATTEMPTS && !targets.is_empty() {
        let addr = targets.remove(0);
        tried += 1;
        let Ok(channel) = dialer.channel(&addr) else {
            continue;
        };
        let mut client = failover_proto::wire::executor_client(channel);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, client.deregister(request.clone())).await {
            Ok(Ok(_)) => {
                tracing::info!(controller = %addr, "deregistered from the leader");
                return true;
            }
            Ok(Err(status)) => {
                let leader =
                    failover_proto::wire::leader_named(&status).filter(|leader| *leader != addr);
                if let Some(leader) = leader {
                    targets.insert(0, leader);
                }
            }
            Err(_) => {}
        }
    }
    tracing::warn!("no leader confirmed the deregistration; it will list this executor as stale");
    false
}

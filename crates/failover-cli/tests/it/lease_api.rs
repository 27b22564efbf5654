//! The lease API's answers to bad input: precise gRPC statuses, nothing changed.

use std::time::Duration;

use crate::common::{eventually, Cluster};
use failover_proto::lease::{
    acquire_response, keep_alive_response, AcquireRequest, KeepAliveRequest, ReleaseRequest,
};
use tonic::Code;

fn acquire(group: &str, site: &str, instance: &str) -> AcquireRequest {
    AcquireRequest {
        group: group.into(),
        site: site.into(),
        instance: instance.into(),
        ready: false,
    }
}

/// Unknown group or site, a site outside the group, an empty instance id, a keepalive or
/// release for an unknown lease, and a follower asked to grant: each gets its own status
/// and none of them creates a lease or bumps a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_requests_get_precise_statuses() {
    let mut cluster = Cluster::new_insecure();
    cluster.start_all();
    // A leader elected again under load would answer UNAVAILABLE: bad input must be
    // refused the same by any controller, so the checks below go to a follower first.
    let status = cluster.wait_ready(Duration::from_secs(30)).await;
    let addr = |id: u64| cluster.node(id).addr.clone();
    let mut leader = crate::common::lease_client("site-a", &addr(status.leader));

    let follower = status
        .controllers
        .iter()
        .find(|c| c.id != status.leader)
        .expect("follower");
    let mut follower = crate::common::lease_client("site-a", &follower.addr);
    // The follower learns of the group when it applies the leader's creation of it; until
    // then it rightly answers NOT_FOUND.
    let not_leader = eventually(
        "the follower to know the group",
        Duration::from_secs(20),
        || {
            let mut follower = follower.clone();
            async move {
                let refused = follower
                    .acquire(acquire("default", "site-a", "i1"))
                    .await
                    .expect_err("not leader");
                (refused.code() != Code::NotFound).then_some(refused)
            }
        },
    )
    .await;
    assert_eq!(not_leader.code(), Code::Unavailable);
    let hint = not_leader
        .metadata()
        .get("x-failover-leader")
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        hint,
        Some(addr(status.leader).as_str()),
        "points at the leader"
    );

    // Bad input: the same precise status from any controller (this is a follower).
    let code = |r: Result<tonic::Response<_>, tonic::Status>| {
        r.map(|_: tonic::Response<failover_proto::lease::AcquireResponse>| ())
            .expect_err("refused")
            .code()
    };
    assert_eq!(
        code(follower.acquire(acquire("nope", "site-a", "i1")).await),
        Code::NotFound
    );
    assert_eq!(
        code(follower.acquire(acquire("default", "site-z", "i1")).await),
        Code::NotFound
    );
    assert_eq!(
        code(follower.acquire(acquire("default", "witness", "i1")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(follower.acquire(acquire("default", "site-a", "")).await),
        Code::InvalidArgument
    );

    let standby = leader
        .acquire(acquire("default", "site-b", "b1"))
        .await
        .expect("standby answer")
        .into_inner();
    assert!(
        matches!(standby.result, Some(acquire_response::Result::Standby(ref s)) if s.active_site == "site-a" && s.epoch == 1)
    );

    let mut release = leader
        .release(ReleaseRequest {
            group: "default".into(),
            lease_id: 999,
        })
        .await;
    // If an election moved the leader under load, ask the new one.
    if release.as_ref().err().map(|e| e.code()) == Some(Code::Unavailable) {
        let now = cluster.wait_ready(Duration::from_secs(30)).await.leader;
        leader = crate::common::lease_client("site-a", &addr(now));
        release = leader
            .release(ReleaseRequest {
                group: "default".into(),
                lease_id: 999,
            })
            .await;
    }
    assert_eq!(release.expect_err("unknown lease").code(), Code::NotFound);

    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    requests
        .send(KeepAliveRequest {
            group: "default".into(),
            lease_id: 999,
            seq: 7,
        })
        .await
        .expect("queue keepalive");
    let mut answers = leader
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("open keepalive stream")
        .into_inner();
    let answer = answers.message().await.expect("stream").expect("an answer");
    assert_eq!(answer.seq, 7);
    match answer.result {
        Some(keep_alive_response::Result::Refused(r)) => assert_eq!(
            r.reason(),
            failover_proto::types::RefusalReason::Unknown,
            "{r:?}"
        ),
        other => panic!("keepalive for an unknown lease was not refused: {other:?}"),
    }

    // Nothing above created a lease or used a token: the first real grant gets token 1.
    let granted = leader
        .acquire(acquire("default", "site-a", "a1"))
        .await
        .expect("grant")
        .into_inner();
    let Some(acquire_response::Result::Granted(grant)) = granted.result else {
        panic!("site-a is active: {granted:?}");
    };
    assert_eq!(grant.fencing_token, 1);
    let mut admin = cluster.client();
    let leases = admin.leases("default").await.expect("leases").leases;
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].holder.as_str(), leases[0].fencing_token),
        ("a1", 1)
    );
    assert!(leases[0].ttl_left_ms > 0 && leases[0].ttl_left_ms <= 3500);
}

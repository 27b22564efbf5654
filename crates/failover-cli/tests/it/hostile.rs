//! Hostile input at the wire boundary: oversized fields and messages, unknown enum values,
//! absurd counts. Each gets INVALID_ARGUMENT (or OUT_OF_RANGE for a whole message over the
//! bound) naming what is wrong, and the committed state is the same afterwards.

use std::time::Duration;

use crate::common::Cluster;
use failover_proto::admin::admin_service_client::AdminServiceClient;
use failover_proto::admin::{HistoryRequest, LeasesRequest, PromoteRequest, StatusRequest};
use failover_proto::executor::executor_service_client::ExecutorServiceClient;
use failover_proto::executor::{ExecutorReport, WorkerReport};
use failover_proto::lease::lease_service_client::LeaseServiceClient;
use failover_proto::lease::{AcquireRequest, WatchRequest};
use failover_proto::types::LeaseState;
use failover_proto::wire::{MAX_NAME_BYTES, MAX_REASON_BYTES, MAX_REQUEST_BYTES, MAX_WORKERS};
use tonic::transport::Channel;
use tonic::Code;

/// What must not change: every group's site, epoch and phase, the history and the leases.
async fn committed(admin: &mut AdminServiceClient<Channel>) -> String {
    let status = admin
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let groups: Vec<_> = status
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.active_site.clone(), g.epoch, g.phase))
        .collect();
    let history = admin
        .history(HistoryRequest::default())
        .await
        .expect("history")
        .into_inner();
    let leases = admin
        .leases(LeasesRequest::default())
        .await
        .expect("leases")
        .into_inner();
    format!("{groups:?}\n{:?}\n{:?}", history.entries, leases.leases)
}

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, naming: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(naming),
        "{naming:?} not named in {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_by_name_and_change_nothing() {
    // Plaintext: what is checked here is the wire boundary behind the TLS layer, with
    // clients that any role could send (tests/security.rs checks who may send what).
    let mut cluster = Cluster::new_insecure();
    cluster.start_all();
    let status = cluster.wait_ready(Duration::from_secs(30)).await;
    let leader = status
        .controllers
        .iter()
        .find(|c| c.id == status.leader)
        .expect("leader")
        .addr
        .clone();
    // Plain generated clients, without this workspace's client-side bounds: a hostile
    // peer has none.
    let channel = Channel::from_shared(format!("http://{leader}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut lease = LeaseServiceClient::new(channel.clone());
    let mut executor = ExecutorServiceClient::new(channel);
    let before = committed(&mut admin).await;

    // Oversized fields.
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    refused(
        lease
            .acquire(AcquireRequest {
                group: long.clone(),
                site: "site-a".into(),
                instance: "i".into(),
                ready: true,
            })
            .await,
        Code::InvalidArgument,
        "`group` is 129 bytes long",
    );
    refused(
        lease
            .acquire(AcquireRequest {
                group: "default".into(),
                site: "site-a".into(),
                instance: long.clone(),
                ready: true,
            })
            .await,
        Code::InvalidArgument,
        "`instance`",
    );
    refused(
        admin
            .promote(PromoteRequest {
                group: "default".into(),
                site: "site-b".into(),
                reason: "r".repeat(MAX_REASON_BYTES + 1),
                actor: "t@h".into(),
                wait: true,
                force: true,
            })
            .await,
        Code::InvalidArgument,
        "`reason`",
    );
    refused(
        admin
            .promote(PromoteRequest {
                group: "default".into(),
                site: "site-b\u{7}".into(),
                force: true,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "`site` holds a control character",
    );
    refused(
        lease
            .watch(WatchRequest {
                group: "default".into(),
                site: long.clone(),
            })
            .await,
        Code::InvalidArgument,
        "`site`",
    );

    // A whole message over the request bound is refused before it is decoded.
    let huge = "y".repeat(MAX_REQUEST_BYTES + 1);
    let result = admin
        .promote(PromoteRequest {
            group: "default".into(),
            site: "site-b".into(),
            reason: huge,
            force: true,
            ..Default::default()
        })
        .await;
    let status = result.expect_err("oversized message");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.message().contains("too large"), "{status:?}");

    // Unknown enum values and absurd counts in an executor report.
    let report = ExecutorReport {
        executor_id: "e1".into(),
        group: "default".into(),
        site: "site-a".into(),
        lease_state: 99,
        ..Default::default()
    };
    refused(
        executor.report(report.clone()).await,
        Code::InvalidArgument,
        "`lease_state` holds 99",
    );
    refused(
        executor
            .report(ExecutorReport {
                lease_state: LeaseState::Unspecified.into(),
                ..report.clone()
            })
            .await,
        Code::InvalidArgument,
        "`lease_state` is unspecified",
    );
    refused(
        executor
            .report(ExecutorReport {
                lease_state: LeaseState::Standby.into(),
                workers: vec![WorkerReport::default(); MAX_WORKERS + 1],
                ..report.clone()
            })
            .await,
        Code::InvalidArgument,
        "`workers` has 1025 entries",
    );
    refused(
        executor
            .report(ExecutorReport {
                lease_state: LeaseState::Standby.into(),
                workers: vec![WorkerReport {
                    state: -3,
                    ..Default::default()
                }],
                ..report.clone()
            })
            .await,
        Code::InvalidArgument,
        "`workers.state` holds -3",
    );

    assert_eq!(
        committed(&mut admin).await,
        before,
        "committed state changed"
    );
    // The refused report registered no executor.
    let status = admin
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        status.sites.iter().all(|s| s.executors.is_empty()),
        "{:?}",
        status.sites
    );
}

//! Multi-process tests of the controller cluster: real processes, real gRPC on loopback,
//! real data directories, real SIGKILL.

use std::time::Duration;

use crate::common::{eventually, Cluster};
use failover_proto::admin::{GroupStatus, PromoteRequest};

const READY: Duration = Duration::from_secs(30);

fn default_group(status: &failover_proto::admin::StatusResponse) -> GroupStatus {
    status
        .groups
        .iter()
        .find(|g| g.name == "default")
        .cloned()
        .expect("default group exists")
}

fn promote(site: &str) -> PromoteRequest {
    PromoteRequest {
        group: "default".into(),
        site: site.into(),
        reason: format!("test promotes {site}"),
        actor: "test@cluster".into(),
        wait: true,
        force: false,
    }
}

/// The full life of a cluster: formation, promote, leader killed with SIGKILL, new leader
/// with the promoted state intact, promote back, every controller killed and restarted
/// with state and history unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_survives_leader_kill_and_full_restart() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let status = cluster.wait_ready(READY).await;
    let group = default_group(&status);
    assert_eq!(
        (
            group.active_site.as_str(),
            group.epoch,
            failover_proto::wire::phase_name(group.phase())
        ),
        ("site-a", 1, "active")
    );

    let mut client = cluster.client();
    let promoted = client
        .promote(promote("site-b"))
        .await
        .expect("promote site-b");
    let group = promoted.group.expect("group");
    assert!(!promoted.already_active);
    assert_eq!((group.active_site.as_str(), group.epoch), ("site-b", 2));

    let old_leader = cluster.wait_ready(READY).await.leader;
    cluster.kill9(old_leader);
    let status = eventually("a new leader", READY, || {
        let mut client = cluster.client();
        async move {
            let s = client.status().await.ok()?;
            (s.leader != 0 && s.leader != old_leader).then_some(s)
        }
    })
    .await;
    let group = default_group(&status);
    assert_eq!(
        (group.active_site.as_str(), group.epoch),
        ("site-b", 2),
        "promotion survived the leader's death"
    );
    let dead = status
        .controllers
        .iter()
        .find(|c| c.id == old_leader)
        .expect("old leader listed");
    assert!(
        !dead.reachable,
        "the killed controller is reported unreachable"
    );

    let back = client
        .promote(promote("site-a"))
        .await
        .expect("promote site-a");
    let group = back.group.expect("group");
    assert_eq!((group.active_site.as_str(), group.epoch), ("site-a", 3));
    let history_before = client.history("default").await.expect("history").entries;
    assert_eq!(history_before.len(), 3, "created, promote, promote");
    assert_eq!(
        history_before
            .iter()
            .map(|e| (e.epoch, e.to.as_str()))
            .collect::<Vec<_>>(),
        [(1, "site-a"), (2, "site-b"), (3, "site-a")]
    );

    cluster.start(old_leader);
    cluster.kill_all();
    cluster.start_all();
    let status = cluster.wait_ready(READY).await;
    let group = default_group(&status);
    assert_eq!(
        (
            group.active_site.as_str(),
            group.epoch,
            failover_proto::wire::phase_name(group.phase())
        ),
        ("site-a", 3, "active")
    );
    let mut client = cluster.client();
    let history_after = client.history("default").await.expect("history").entries;
    assert_eq!(
        history_after, history_before,
        "history is unchanged by a full restart"
    );
}

/// Any controller can take a promote: a follower forwards it to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_forwards_promote_to_leader() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let status = cluster.wait_ready(READY).await;
    let follower = status
        .controllers
        .iter()
        .find(|c| c.id != status.leader)
        .expect("a follower")
        .id;
    let mut client = cluster.client_of(follower);
    // A follower that has not applied the cluster id yet asks its callers to retry; it
    // refuses before forwarding anything.
    let response = eventually("the follower to take the promote", READY, || {
        let mut client = client.clone();
        async move {
            match client.promote(promote("site-b")).await {
                Ok(response) => Some(response),
                Err(failover_client::ClientError::Unreachable { .. }) => None,
                Err(e) => panic!("promote via follower: {e}"),
            }
        }
    })
    .await;
    assert_eq!(response.group.expect("group").epoch, 2);
    let again = client
        .promote(promote("site-b"))
        .await
        .expect("promote again");
    assert!(again.already_active, "promoting the active site is a no-op");
    assert_eq!(
        again.group.expect("group").epoch,
        2,
        "a no-op does not bump the epoch"
    );
}

/// A controller asked to stop (SIGTERM) exits cleanly and promptly, leader or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_exit_on_sigterm() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let status = cluster.wait_ready(READY).await;
    for id in [status.leader, if status.leader == 1 { 2 } else { 1 }] {
        let exited = cluster.terminate(id, std::time::Duration::from_secs(10));
        assert_eq!(
            exited,
            Some(0),
            "controller {id} did not exit cleanly on SIGTERM"
        );
    }
}

//! Mutual TLS and roles (docs/security.md) on a real cluster: who is refused, and that a
//! refused request changes nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{eventually, Cluster};
use failover_client::{AdminClient, ClientError, Endpoints, TcpDialer, TlsDialer};
use failover_proto::admin::{PauseRequest, PromoteRequest};
use failover_proto::lease::lease_service_client::LeaseServiceClient;
use failover_proto::lease::AcquireRequest;

const READY: Duration = Duration::from_secs(30);

fn refused_code(error: &ClientError) -> Option<tonic::Code> {
    match error {
        ClientError::Refused(status) => Some(status.code()),
        _ => None,
    }
}

async fn history_len(cluster: &Cluster) -> usize {
    let mut client = cluster.client();
    client.history("").await.expect("history").entries.len()
}

/// A plaintext client, and a client whose certificate another CA signed, get no answer;
/// the reader may read but not promote or pause, and history is unchanged; an operator's
/// pause is recorded with its certificate's identity.
#[tokio::test]
async fn roles_and_certificates_decide_who_may_do_what() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let endpoints = Endpoints::parse(&cluster.endpoints()).expect("endpoints");

    // No certificate (plaintext): the TLS handshake fails, nothing answers.
    let mut plain = AdminClient::with_dialer(endpoints.clone(), Arc::new(TcpDialer::default()));
    plain.deadline = Duration::from_secs(2);
    let error = plain.status().await.expect_err("plaintext refused");
    assert!(
        matches!(error, ClientError::Unreachable { .. }),
        "plaintext: {error}"
    );

    // A certificate from another CA, even with the operator role: refused.
    let other = tempfile::tempdir().expect("temp dir");
    let rogue_ca = failover_cli::certs::Authority::open_or_create(other.path()).expect("CA");
    let rogue = rogue_ca.issue_client("operator", "mallory").expect("cert");
    let files = failover_client::tls::TlsFiles {
        ca: cluster.tls_files("operator-dev").ca,
        cert: rogue.cert,
        key: rogue.key,
    };
    let dialer = TlsDialer::new(failover_client::tls::client_tls(files).expect("tls"));
    let mut rogue_client = AdminClient::with_dialer(endpoints.clone(), Arc::new(dialer));
    rogue_client.deadline = Duration::from_secs(2);
    let error = rogue_client.status().await.expect_err("foreign CA refused");
    assert!(
        matches!(error, ClientError::Unreachable { .. }),
        "foreign CA: {error}"
    );

    // A reader reads, but may not change anything.
    let before = history_len(&cluster).await;
    let mut reader = AdminClient::with_dialer(endpoints.clone(), cluster.dialer_as("reader-dev"));
    reader.status().await.expect("a reader may read status");
    let error = reader
        .promote(PromoteRequest {
            group: "default".into(),
            site: "site-b".into(),
            force: true,
            actor: "eve".into(),
            ..Default::default()
        })
        .await
        .expect_err("a reader may not promote");
    assert_eq!(
        refused_code(&error),
        Some(tonic::Code::PermissionDenied),
        "{error}"
    );
    assert!(error.to_string().contains("reader/dev"), "{error}");
    let error = reader
        .pause(PauseRequest {
            group: "default".into(),
            reason: "x".into(),
            actor: "eve".into(),
        })
        .await
        .expect_err("a reader may not pause");
    assert_eq!(refused_code(&error), Some(tonic::Code::PermissionDenied));
    assert_eq!(
        history_len(&cluster).await,
        before,
        "a refused call changed history"
    );
    let status = cluster.client().status().await.expect("status");
    assert_eq!(status.groups[0].active_site, "site-a");

    // The operator may, and history names the certificate's identity; through a follower
    // too (the follower forwards on the operator's behalf).
    let leader = status.leader;
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .expect("a follower")
        .id;
    let operator = cluster.client_of(follower);
    // A follower that has not applied the cluster id yet asks its callers to retry.
    eventually("the follower to take the pause", READY, || {
        let mut operator = operator.clone();
        async move {
            match operator
                .pause(PauseRequest {
                    group: "default".into(),
                    reason: "maintenance".into(),
                    actor: "alice@host".into(),
                })
                .await
            {
                Ok(_) => Some(()),
                Err(failover_client::ClientError::Unreachable { .. }) => None,
                Err(e) => panic!("an operator may pause: {e}"),
            }
        }
    })
    .await;
    let history = cluster.client().history("default").await.expect("history");
    let last = history.entries.last().expect("an entry");
    assert_eq!(last.kind, "pause");
    assert_eq!(last.actor, "operator/dev (as alice@host)");
}

/// An engine certificate bound to site-a may ask for site-a's lease but not site-b's;
/// the operator certificate may not ask for leases at all.
#[tokio::test]
async fn engines_act_only_for_their_sites() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let leader = cluster.wait_ready(READY).await.leader;
    let addr = cluster
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .expect("leader")
        .addr
        .clone();
    let acquire = |site: &str| AcquireRequest {
        group: "default".into(),
        site: site.into(),
        instance: "i-1".into(),
        ready: true,
    };
    let engine_a = cluster
        .engine_dialer("site-a")
        .channel(&addr)
        .expect("channel");
    let mut lease = LeaseServiceClient::new(engine_a);
    let denied = lease
        .acquire(acquire("site-b"))
        .await
        .expect_err("site-a's engine may not acquire for site-b");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("site-a"), "{denied:?}");
    let granted = lease.acquire(acquire("site-a")).await;
    assert!(
        granted.as_ref().err().map(|s| s.code()) != Some(tonic::Code::PermissionDenied),
        "site-a's engine may acquire for site-a: {granted:?}"
    );

    let operator = cluster.dialer().channel(&addr).expect("channel");
    let denied = LeaseServiceClient::new(operator)
        .acquire(acquire("site-a"))
        .await
        .expect_err("an operator is not an engine");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
}

/// `insecure: true` runs in plaintext, and the controllers' logs say so.
#[tokio::test]
async fn insecure_mode_is_plaintext_and_says_so() {
    let mut cluster = Cluster::new_insecure();
    cluster.start_all();
    let endpoints = Endpoints::parse(&cluster.endpoints()).expect("endpoints");
    let mut plain = AdminClient::with_dialer(endpoints, Arc::new(TcpDialer::default()));
    crate::common::eventually("a plaintext answer", READY, || {
        let mut plain = plain.clone();
        async move { plain.status().await.ok().filter(|s| s.leader != 0) }
    })
    .await;
    plain.status().await.expect("status");
    assert!(
        cluster.log_of(1).contains("INSECURE"),
        "{}",
        cluster.log_of(1)
    );
}

/// New keys and certificates for every controller and client, written over the old files
/// on a running cluster while site-a's executor holds the lease: the lease is neither
/// lost nor replaced, controllers reload the files for new connections, a controller
/// restarted on the new files rejoins, and a client with the new certificate is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_a_running_cluster_without_interruption() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let _exec = cluster.exec("site-a", &[], &["sleep", "600"]);
    let held = |client: AdminClient| async move {
        let mut client = client;
        let leases = client.leases("default").await.ok()?;
        leases.leases.into_iter().find(|l| l.site == "site-a")
    };
    let before =
        crate::common::eventually("site-a holds the lease", READY, || held(cluster.client())).await;

    let tls = cluster.data_dir().join("tls");
    let old_operator = std::fs::read(tls.join("operator-dev.pem")).expect("old cert");
    let text = std::fs::read_to_string(&cluster.config).expect("topology");
    let topology = failover_core::Topology::from_yaml(&text, "test").expect("topology");
    failover_cli::certs::issue_for(&topology, &tls).expect("rotate");
    assert_ne!(
        std::fs::read(tls.join("operator-dev.pem")).expect("new cert"),
        old_operator,
        "the certificates were not replaced"
    );

    // A new client (new connections) with the new operator certificate is served, by
    // every controller: each reloads its own files on the new connection.
    for node in &cluster.nodes {
        let mut fresh = AdminClient::with_dialer(
            Endpoints::parse(&node.addr).expect("endpoint"),
            cluster.dialer(),
        );
        fresh
            .status()
            .await
            .unwrap_or_else(|e| panic!("controller {} after rotation: {e}", node.id));
        assert!(
            cluster
                .log_of(node.id)
                .contains("TLS files changed: reloaded"),
            "controller {} did not reload: {}",
            node.id,
            cluster.log_of(node.id)
        );
    }

    // A controller restarted on the new files rejoins: its peers accept its certificate.
    // A follower: a leader change is not what this test is about.
    let leader = cluster.wait_ready(READY).await.leader;
    let restarted = if leader == 5 { 4 } else { 5 };
    cluster.kill9(restarted);
    cluster.start(restarted);
    crate::common::eventually("the restarted controller reachable", READY, || {
        let mut client = cluster.client();
        async move {
            let status = client.status().await.ok()?;
            status
                .controllers
                .iter()
                .any(|c| c.id == restarted && c.reachable)
                .then_some(())
        }
    })
    .await;

    // The lease outlives all of it: same lease, same fencing token, through more than a
    // TTL after the rotation (a lease that missed its renewals would have expired).
    let until = std::time::Instant::now() + Duration::from_millis(4000);
    while std::time::Instant::now() < until {
        let after = held(cluster.client())
            .await
            .expect("site-a still holds the lease");
        assert_eq!(
            (after.lease_id, after.fencing_token, after.epoch),
            (before.lease_id, before.fencing_token, before.epoch),
            "the lease was replaced during the rotation"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An engine bound to site-b that knows the id of site-a's lease may neither renew nor
/// release it: PERMISSION_DENIED naming the engine, the lease and its site, and the lease
/// stays as it was (same id, still renewable by site-a's engine).
#[tokio::test]
async fn an_engine_may_not_renew_or_release_another_sites_lease() {
    use failover_proto::lease::{KeepAliveRequest, ReleaseRequest};
    let mut cluster = Cluster::new();
    cluster.start_all();
    let leader = cluster.wait_ready(READY).await.leader;
    let addr = cluster
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .expect("leader")
        .addr
        .clone();
    let channel = |site: &str| cluster.engine_dialer(site).channel(&addr).expect("channel");
    let mut engine_a = LeaseServiceClient::new(channel("site-a"));
    let grant = crate::common::wait_granted(&engine_a, "i-a").await;
    let lease_id = grant.lease_id;
    let held = || async {
        let leases = cluster.client().leases("default").await.expect("leases");
        leases
            .leases
            .into_iter()
            .find(|l| l.lease_id == lease_id)
            .map(|l| (l.lease_id, l.fencing_token, l.epoch, l.site))
    };
    let before = held().await.expect("the lease is listed");

    let mut engine_b = LeaseServiceClient::new(channel("site-b"));
    let check = |denied: &tonic::Status| {
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        let message = denied.message();
        for part in ["engine/", "[site-b]", "not site-a", &lease_id.to_string()] {
            assert!(message.contains(part), "`{part}` missing: {message}");
        }
    };
    let denied = engine_b
        .release(ReleaseRequest {
            group: "default".into(),
            lease_id,
        })
        .await
        .expect_err("site-b's engine may not release site-a's lease");
    check(&denied);

    let renewal = KeepAliveRequest {
        group: "default".into(),
        lease_id,
        seq: 1,
    };
    let denied = match engine_b
        .keep_alive(tokio_stream::iter(vec![renewal.clone()]))
        .await
    {
        Err(status) => status,
        Ok(answers) => {
            let mut answers = answers.into_inner();
            match answers.message().await {
                Err(status) => status,
                Ok(answer) => panic!("site-b's keepalive was answered: {answer:?}"),
            }
        }
    };
    check(&denied);

    // Nothing changed: the same lease, and its own engine still renews it.
    assert_eq!(held().await, Some(before));
    let mut answers = engine_a
        .keep_alive(tokio_stream::iter(vec![renewal]))
        .await
        .expect("site-a's keepalive")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("site-a's renewal answered")
        .expect("an answer");
    assert!(
        matches!(
            answer.result,
            Some(failover_proto::lease::keep_alive_response::Result::Renewed(
                _
            ))
        ),
        "{answer:?}"
    );
}

/// Certificates re-issued on a running cluster, then the leader killed with SIGKILL: the
/// new leader serves clients that present the new certificates, and site-a's lease goes
/// through the leader change untouched (a new leader treats every lease as renewed at its
/// start, DESIGN.md): same id, token and epoch, site-b never holds one, and the worker is
/// never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_across_a_leader_change() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let starts = cluster.data_dir().join("worker-starts");
    let script = format!("echo $$ >> '{}'; exec sleep 600", starts.display());
    let _exec = cluster.exec("site-a", &[], &["sh", "-c", &script]);
    let held = |client: AdminClient, site: &'static str| async move {
        let mut client = client;
        let leases = client.leases("default").await.ok()?;
        leases.leases.into_iter().find(|l| l.site == site)
    };
    let before = crate::common::eventually("site-a holds the lease", READY, || {
        held(cluster.client(), "site-a")
    })
    .await;
    crate::common::eventually("the worker started", READY, || async {
        std::fs::read_to_string(&starts)
            .ok()
            .filter(|t| !t.is_empty())
    })
    .await;

    let tls = cluster.data_dir().join("tls");
    let old_operator = std::fs::read(tls.join("operator-dev.pem")).expect("old cert");
    let text = std::fs::read_to_string(&cluster.config).expect("topology");
    let topology = failover_core::Topology::from_yaml(&text, "test").expect("topology");
    failover_cli::certs::issue_for(&topology, &tls).expect("rotate");
    assert_ne!(
        std::fs::read(tls.join("operator-dev.pem")).expect("new cert"),
        old_operator,
        "the certificates were not replaced"
    );

    let old_leader = cluster.wait_ready(READY).await.leader;
    cluster.kill9(old_leader);
    let new_leader = crate::common::eventually("a new leader", READY, || {
        let mut client = cluster.client();
        async move {
            let status = client.status().await.ok()?;
            (status.leader != 0 && status.leader != old_leader).then_some(status.leader)
        }
    })
    .await;

    // The new leader answers a client with the new certificate on a new connection.
    let addr = cluster
        .nodes
        .iter()
        .find(|n| n.id == new_leader)
        .expect("new leader")
        .addr
        .clone();
    let mut fresh =
        AdminClient::with_dialer(Endpoints::parse(&addr).expect("endpoint"), cluster.dialer());
    let status = fresh
        .status()
        .await
        .expect("the new leader serves the new certificate");
    assert_eq!(status.leader, new_leader);
    assert!(
        cluster
            .log_of(new_leader)
            .contains("TLS files changed: reloaded"),
        "the new leader did not reload: {}",
        cluster.log_of(new_leader)
    );

    // Through more than a TTL after the leader change: the same lease, never site-b's.
    let until = std::time::Instant::now() + Duration::from_millis(4000);
    while std::time::Instant::now() < until {
        let after = held(cluster.client(), "site-a")
            .await
            .expect("site-a still holds the lease");
        assert_eq!(
            (after.lease_id, after.fencing_token, after.epoch),
            (before.lease_id, before.fencing_token, before.epoch),
            "the lease was replaced across the leader change"
        );
        assert!(
            held(cluster.client(), "site-b").await.is_none(),
            "site-b holds a lease"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let started = std::fs::read_to_string(&starts).expect("worker starts");
    assert_eq!(
        started.lines().count(),
        1,
        "the worker was restarted: {started}"
    );
}

/// The first leader of a new cluster fixes its id (128 random bits in hex) through the
/// log: every controller shows the same one, `failover status` shows it (table and JSON),
/// and it survives a restart of every controller (it is stored with their data).
#[tokio::test]
async fn the_cluster_id_is_fixed_once_replicated_and_shown_by_status() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let id = crate::common::eventually("a cluster id", READY, || {
        let mut client = cluster.client();
        async move {
            let status = client.status().await.ok()?;
            (!status.cluster_id.is_empty()).then_some(status.cluster_id)
        }
    })
    .await;
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    for node in &cluster.nodes {
        let seen = crate::common::eventually("each controller knows the id", READY, || {
            let mut client = cluster.client_of(node.id);
            async move {
                let status = client.status().await.ok()?;
                (!status.cluster_id.is_empty()).then_some(status.cluster_id)
            }
        })
        .await;
        assert_eq!(seen, id, "controller {}", node.id);
    }

    let status = |args: &[&str]| {
        let out = std::process::Command::new(crate::common::failover_bin())
            .args(["status", "--endpoints", &cluster.endpoints()])
            .args(args)
            .output()
            .expect("failover status");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = status(&[]);
    assert!(table.contains(&format!("cluster: {id}\n")), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&status(&["--output", "json"])).expect("status JSON");
    assert_eq!(json["cluster_id"], id.as_str(), "{json}");

    cluster.kill_all();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let mut client = cluster.client();
    let after = client.status().await.expect("status").cluster_id;
    assert_eq!(after, id, "the id changed across a restart");
}

/// The cluster id, once every controller recorded it in its data dir (each logs it).
async fn recorded_cluster_id(cluster: &Cluster) -> String {
    let id = crate::common::eventually("a cluster id", READY, || {
        let mut client = cluster.client();
        async move {
            let status = client.status().await.ok()?;
            (!status.cluster_id.is_empty()).then_some(status.cluster_id)
        }
    })
    .await;
    for node in &cluster.nodes {
        crate::common::eventually("the id recorded in every data dir", READY, || async {
            (node.pid().is_none()
                || cluster
                    .log_of(node.id)
                    .contains("cluster id recorded in the data dir"))
            .then_some(())
        })
        .await;
    }
    id
}

/// The leases of `group` at `site` that `cluster` lists.
async fn site_leases(cluster: &Cluster, site: &str) -> Vec<failover_proto::admin::LeaseStatus> {
    let mut client = cluster.client();
    match client.leases("default").await {
        Ok(list) => list.leases.into_iter().filter(|l| l.site == site).collect(),
        Err(_) => Vec::new(),
    }
}

/// A controller started on the data dir of a controller of another cluster refuses to
/// run: it exits non-zero naming both ids and the data dir, and the cluster it was started
/// in keeps its term, leader and history (its votes were refused before Raft saw them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_on_another_clusters_data_dir_is_refused() {
    let mut old = Cluster::new();
    old.start_all();
    old.wait_ready(READY).await;
    let old_id = recorded_cluster_id(&old).await;
    old.kill_all();

    let mut cluster = Cluster::new();
    for id in 1..=4 {
        cluster.start(id);
    }
    cluster.wait_ready(READY).await;
    let new_id = recorded_cluster_id(&cluster).await;
    assert_ne!(old_id, new_id);
    let before = cluster.client().status().await.expect("status");
    let history = history_len(&cluster).await;

    // Controller 5 of the new cluster starts on controller 5's data of the old one.
    let dir = cluster.data_dir().join("controller-5");
    std::fs::create_dir_all(&dir).expect("data dir");
    std::fs::copy(
        old.data_dir().join("controller-5").join("raft.redb"),
        dir.join("raft.redb"),
    )
    .expect("copy the old data file");
    cluster.start(5);
    let code = cluster.wait_exit(5, READY);
    let log = cluster.log_of(5);
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!("belongs to cluster {old_id}"))
            && log.contains(&format!("names cluster {new_id}"))
            && log.contains(&dir.display().to_string()),
        "the refusal names both ids and the data dir: {log}"
    );

    let after = cluster.client().status().await.expect("status");
    assert_eq!(
        (after.term, after.leader, after.cluster_id.as_str()),
        (before.term, before.leader, new_id.as_str()),
        "the cluster's term or leader moved"
    );
    assert_eq!(history_len(&cluster).await, history);
}

/// An executor holding site-a's lease from one cluster, whose controllers are replaced by
/// a new cluster on the same addresses (same CA), stops holding: its worker is stopped
/// at the lease deadline, it never gets a lease from the new cluster, and its log says
/// why with both ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_of_a_replaced_cluster_gets_no_lease_from_the_new_one() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let old_id = recorded_cluster_id(&cluster).await;
    let starts = cluster.data_dir().join("worker-starts");
    let script = format!("echo $$ >> {}; exec sleep 600", starts.display());
    let _exec = cluster.exec("site-a", &[], &["sh", "-c", &script]);
    crate::common::eventually("site-a holds the lease", READY, || async {
        site_leases(&cluster, "site-a").await.pop()
    })
    .await;
    let worker: i32 = crate::common::eventually("the worker started", READY, || async {
        std::fs::read_to_string(&starts)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
    })
    .await;

    // A new cluster on the same addresses: every controller on an empty data dir.
    cluster.kill_all();
    for id in 1..=5 {
        let dir = cluster.data_dir().join(format!("controller-{id}"));
        std::fs::rename(
            &dir,
            cluster.data_dir().join(format!("old-controller-{id}")),
        )
        .expect("move the old data dir away");
        let log = cluster.data_dir().join(format!("controller-{id}.log"));
        std::fs::rename(
            &log,
            cluster.data_dir().join(format!("old-controller-{id}.log")),
        )
        .expect("move the old log away");
    }
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let new_id = recorded_cluster_id(&cluster).await;
    assert_ne!(old_id, new_id);

    crate::common::eventually("the worker is stopped", READY, || async {
        (!crate::common::alive(worker)).then_some(())
    })
    .await;
    let exec_log =
        || std::fs::read_to_string(cluster.data_dir().join("exec-site-a.log")).unwrap_or_default();
    crate::common::eventually("the executor says why", READY, || async {
        let log = exec_log();
        (log.contains(&format!("belongs to cluster {new_id}"))
            && log.contains(&format!("for cluster {old_id}")))
        .then_some(())
    })
    .await;
    // Standing by for several acquire rounds: the new cluster grants it nothing.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert!(
            site_leases(&cluster, "site-a").await.is_empty(),
            "the new cluster granted the old executor a lease: {}",
            exec_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = std::fs::read_to_string(&starts).expect("worker starts");
    assert_eq!(
        started.lines().count(),
        1,
        "a worker started again: {started}"
    );
}

/// The CLI pinned to another cluster (`--cluster-id`) exits 1 naming both ids and
/// changes nothing; pinned to the right one it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pinned_to_another_cluster_is_refused() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let id = recorded_cluster_id(&cluster).await;
    let history = history_len(&cluster).await;
    let wrong = "0123456789abcdef0123456789abcdef";
    let run = |pin: &str, args: &[&str]| {
        std::process::Command::new(crate::common::failover_bin())
            .args(args)
            .args(["--endpoints", &cluster.endpoints(), "--cluster-id", pin])
            .output()
            .expect("failover")
    };
    let out = run(wrong, &["promote", "site-b", "--force"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("belongs to cluster {id}")) && stderr.contains(wrong),
        "{stderr}"
    );
    let out = run(wrong, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let status = cluster.client().status().await.expect("status");
    assert_eq!(
        status.groups[0].active_site, "site-a",
        "the promote went through"
    );
    assert_eq!(history_len(&cluster).await, history);

    let out = run(&id, &["status"]);
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new(crate::common::failover_bin())
        .args(["status", "--cluster-id", "not an id"])
        .output()
        .expect("failover");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A dialer without a client certificate (it verifies the controllers against the
/// cluster CA) whose calls carry `token`, if any.
fn token_dialer(cluster: &Cluster, token: Option<&str>) -> Arc<dyn failover_client::Dialer> {
    let ca = cluster.tls_files("reader-dev").ca;
    let tls = failover_client::tls::client_tls_without_certificate(ca).expect("client TLS");
    let pin = failover_proto::pin::ClusterPin::learning();
    pin.set_token(token.map(str::to_owned));
    Arc::new(TlsDialer::new(tls).with_pin(pin))
}

/// Bearer tokens for clients without a certificate: a reader token reads status but its
/// promote is refused PERMISSION_DENIED and changes nothing; a wrong token and no token
/// are refused UNAUTHENTICATED; an engine token acquires only for its site; and the CLI
/// with --token-file reads as the token's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_authenticate_clients_without_certificates() {
    let reader_token = "reader-secret-0123456789";
    let engine_token = "engine-secret-0123456789";
    let operator_token = "operator-secret-0123456789";
    let hash = failover_controller::auth::token_sha256;
    let mut cluster = Cluster::new_with(|yaml| {
        format!(
            "{yaml}tokens:\n  - {{ name: dashboard, role: reader, sha256: {} }}\n  \
             - {{ name: batch-a, role: engine, sites: [site-a], sha256: {} }}\n  \
             - {{ name: ci, role: operator, sha256: {} }}\n",
            hash(reader_token),
            hash(engine_token),
            hash(operator_token)
        )
    });
    cluster.start_all();
    let leader = cluster.wait_ready(READY).await.leader;
    let addr = cluster
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .expect("leader")
        .addr
        .clone();
    let endpoints = Endpoints::parse(&cluster.endpoints()).expect("endpoints");
    let before = history_len(&cluster).await;

    let mut reader = AdminClient::with_dialer(
        endpoints.clone(),
        token_dialer(&cluster, Some(reader_token)),
    );
    reader.status().await.expect("a reader token reads status");
    let error = reader
        .promote(PromoteRequest {
            group: "default".into(),
            site: "site-b".into(),
            force: true,
            ..Default::default()
        })
        .await
        .expect_err("a reader token may not promote");
    assert_eq!(
        refused_code(&error),
        Some(tonic::Code::PermissionDenied),
        "{error}"
    );
    assert!(error.to_string().contains("reader/dashboard"), "{error}");
    assert_eq!(history_len(&cluster).await, before);
    let status = cluster.client().status().await.expect("status");
    assert_eq!(status.groups[0].active_site, "site-a");

    for (token, why) in [
        (Some("not-a-token"), "is not one of the topology's tokens"),
        (None, "no client certificate and no bearer token"),
    ] {
        let channel = token_dialer(&cluster, token)
            .channel(&addr)
            .expect("channel");
        let refused = failover_proto::wire::admin_client(channel)
            .status(failover_proto::admin::StatusRequest {})
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains(why), "{refused:?}");
    }

    let acquire = |site: &str| AcquireRequest {
        group: "default".into(),
        site: site.into(),
        instance: "token-1".into(),
        ready: true,
    };
    let channel = token_dialer(&cluster, Some(engine_token))
        .channel(&addr)
        .expect("channel");
    let mut lease = failover_proto::wire::lease_client(channel);
    let denied = lease
        .acquire(acquire("site-b"))
        .await
        .expect_err("an engine token for site-a may not acquire for site-b");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("engine/batch-a"), "{denied:?}");
    let granted = lease
        .acquire(acquire("site-a"))
        .await
        .expect("an engine token acquires for its site");
    assert!(
        matches!(
            granted.into_inner().result,
            Some(failover_proto::lease::acquire_response::Result::Granted(_))
        ),
        "site-a is active: the lease is granted"
    );

    // An operator token may pause, through a follower too; history names the token.
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .expect("a follower");
    let mut operator = AdminClient::with_dialer(
        Endpoints::parse(&follower.addr).expect("endpoint"),
        token_dialer(&cluster, Some(operator_token)),
    );
    operator
        .pause(PauseRequest {
            group: "default".into(),
            reason: "maintenance".into(),
            actor: String::new(),
        })
        .await
        .expect("an operator token may pause");
    let history = cluster.client().history("default").await.expect("history");
    let last = history.entries.last().expect("an entry");
    assert_eq!(
        (last.kind.as_str(), last.actor.as_str()),
        ("pause", "operator/ci")
    );

    // The CLI: --token-file with only the CA.
    let file = cluster.data_dir().join("reader.token");
    std::fs::write(&file, format!("{reader_token}\n")).expect("token file");
    let out = std::process::Command::new(crate::common::failover_bin())
        .args([
            "status",
            "--endpoints",
            &cluster.endpoints(),
            "--token-file",
        ])
        .arg(&file)
        .env_remove("FAILOVER_TLS_CERT")
        .env_remove("FAILOVER_TLS_KEY")
        .output()
        .expect("failover status");
    assert!(out.status.success(), "{out:?}");
}

/// `failover dev` on a topology without a `tls` section writes a reader token beside its
/// certificates and prints how to use it: with only the CA and that token, `status`
/// answers and `promote` is refused.
#[test]
fn failover_dev_issues_a_reader_token() {
    use std::io::{BufRead, BufReader};
    let cluster = Cluster::new(); // only for its free ports and temp dir
    let text = std::fs::read_to_string(&cluster.config).expect("topology");
    let plain: String = text
        .lines()
        .filter(|l| !l.starts_with("tls:"))
        .map(|l| match l.find(", cert:") {
            Some(at) => format!("{} }}\n", &l[..at]),
            None => format!("{l}\n"),
        })
        .collect();
    let config = cluster.data_dir().join("plain.yaml");
    std::fs::write(&config, plain).expect("plain topology");
    let data_dir = cluster.data_dir().join("dev");
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut dev = Killed(
        std::process::Command::new(crate::common::failover_bin())
            .args(["dev", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn dev"),
    );
    let stdout = dev.0.stdout.take().expect("stdout");
    let mut printed = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let ready = line.contains("Press Ctrl-C");
        printed.push(line);
        if ready {
            break;
        }
    }
    let token_file = data_dir.join("tls").join("reader-dev.token");
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&format!("FAILOVER_TOKEN_FILE={}", token_file.display()))),
        "{printed:?}"
    );
    let run = |args: &[&str]| {
        std::process::Command::new(crate::common::failover_bin())
            .args(args)
            .args(["--endpoints", &cluster.endpoints()])
            .env("FAILOVER_TLS_CA", data_dir.join("tls").join("ca.pem"))
            .env("FAILOVER_TOKEN_FILE", &token_file)
            .env_remove("FAILOVER_TLS_CERT")
            .env_remove("FAILOVER_TLS_KEY")
            .output()
            .expect("failover")
    };
    let out = run(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["promote", "site-b", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reader/reader-dev-token"), "{stderr}");
}

/// A topology that pins `cluster_id:` makes a new cluster take that id; a controller whose
/// data dir records another id than the topology pins refuses to start, naming both and
/// the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_pin_names_the_cluster_and_refuses_another_data_dir() {
    let mut cluster = Cluster::new_with(|yaml| yaml + "cluster_id: pinned-test-1\n");
    cluster.start_all();
    cluster.wait_ready(READY).await;
    assert_eq!(recorded_cluster_id(&cluster).await, "pinned-test-1");

    cluster.kill9(5);
    let text = std::fs::read_to_string(&cluster.config).expect("topology");
    std::fs::write(
        &cluster.config,
        text.replace("pinned-test-1", "pinned-test-2"),
    )
    .expect("topology");
    cluster.start(5);
    let code = cluster.wait_exit(5, READY);
    let log = cluster.log_of(5);
    assert_ne!(code, Some(0), "{log}");
    let dir = cluster.data_dir().join("controller-5");
    assert!(
        log.contains(&format!(
            "data dir {} belongs to cluster pinned-test-1, but the topology's cluster_id names cluster pinned-test-2",
            dir.display()
        )),
        "{log}"
    );
}

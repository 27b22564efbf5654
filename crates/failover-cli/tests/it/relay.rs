//! A holder cut from the leader, while the leader keeps its quorum and the holder still
//! reaches the other controllers, keeps its lease: its session asks a follower to relay
//! the keepalive stream (docs/leases.md, "Relayed renewals").
//!
//! The holder reaches every controller through a loopback proxy of its own (its dialer
//! maps each controller's address, also the leader's address in not-leader hints, to the
//! proxy's), so the test can cut the holder, and only the holder, from the leader: the
//! proxy stops passing bytes on every connection to the leader and holds new ones open
//! without answering, like a link that silently drops everything. The controllers reach
//! each other directly. A second test checks that a relayed stream acts for the engine
//! (its identity and site check) and that a follower relays only when asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{eventually, Cluster};
use failover_client::clock::SystemClock;
use failover_client::{Dialer, Endpoints, LeaseConfig, LeaseSession, LeaseState};
use failover_proto::pin::ClusterPin;
use failover_proto::wire::Chan;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TTL: Duration = Duration::from_millis(3500);

/// A loopback proxy in front of one controller; `cut` stops it passing bytes.
struct Proxy {
    addr: String,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let (cut, is_cut) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(pass(inbound, target.clone(), is_cut.clone()));
            }
        });
        Proxy { addr, cut, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes bytes both ways until the proxy is cut; from then on holds both sockets open
/// and passes nothing (no reset: a cut link is silent).
async fn pass(mut inbound: TcpStream, target: String, mut is_cut: watch::Receiver<bool>) {
    let already_cut = *is_cut.borrow();
    if already_cut {
        std::future::pending::<()>().await;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        cut = is_cut.wait_for(|cut| *cut) => cut.is_ok(),
    };
    if cut {
        // Both sockets stay open, and nothing passes.
        std::future::pending::<()>().await;
    }
}

/// The holder's dialer: every controller address goes to its proxy.
struct Proxied {
    inner: Arc<dyn Dialer>,
    to_proxy: HashMap<String, String>,
}

impl Dialer for Proxied {
    fn channel(&self, addr: &str) -> Result<Chan, failover_client::transport::DialError> {
        let proxied = self.to_proxy.get(addr).map_or(addr, String::as_str);
        self.inner.channel(proxied)
    }

    fn pin(&self) -> &ClusterPin {
        self.inner.pin()
    }
}

/// The holder's beliefs: the earliest `valid_until` seen after `since`, and whether it
/// stopped believing (any state but `Acquired`) after `since`.
async fn watch_beliefs(
    mut state: watch::Receiver<LeaseState>,
    since: watch::Receiver<Option<Instant>>,
) -> (Option<Instant>, Vec<String>) {
    let mut latest = None;
    let mut gaps = Vec::new();
    loop {
        let now = Instant::now();
        if let Some(since) = *since.borrow() {
            match &*state.borrow() {
                LeaseState::Acquired { valid_until, .. } => {
                    if now >= since {
                        latest = Some(*valid_until);
                    }
                }
                other => gaps.push(format!("{other:?}")),
            }
        }
        if state.changed().await.is_err() {
            return (latest, gaps);
        }
    }
}

/// The holder at site-a is cut from the leader (the leader at any site, keeping its
/// quorum through the others) for three TTLs: it never stops holding, its deadline keeps
/// moving, a follower logged that it relays, and the leader did not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_from_the_leader_renews_through_a_follower() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let leader = cluster.wait_ready(Duration::from_secs(30)).await.leader;

    let mut proxies = HashMap::new();
    for node in &cluster.nodes {
        proxies.insert(node.id, Proxy::start(node.addr.clone()).await);
    }
    let to_proxy: HashMap<String, String> = cluster
        .nodes
        .iter()
        .map(|n| (n.addr.clone(), proxies[&n.id].addr.clone()))
        .collect();
    let dialer = Arc::new(Proxied {
        inner: cluster.engine_dialer("site-a"),
        to_proxy,
    });
    let session = LeaseSession::start(
        LeaseConfig {
            endpoints: Endpoints::parse(&cluster.endpoints()).expect("endpoints"),
            group: "default".into(),
            site: "site-a".into(),
            instance: "a1".into(),
            max_clock_drift: Duration::from_millis(250),
            stop_grace: Duration::from_millis(100),
            standby_poll: Duration::from_millis(100),
            release_on_drain: true,
            cluster_id: None,
            token: None,
        },
        dialer,
        Arc::new(SystemClock),
    );
    eventually(
        "the site-a holder acquires",
        Duration::from_secs(20),
        || {
            let held = session.holds().is_some();
            async move { held.then_some(()) }
        },
    )
    .await;
    // The holder renews on the leader directly, through its proxy: cut that one.
    let (start_watching, since) = watch::channel(None);
    let beliefs = tokio::spawn(watch_beliefs(session.state(), since));
    let cut_at = Instant::now();
    let _ = start_watching.send(Some(cut_at));
    let _ = proxies[&leader].cut.send(true);

    // Three TTLs: without a relay the lease would have lapsed within one.
    let end = cut_at + 3 * TTL;
    while Instant::now() < end {
        assert!(
            session.holds().is_some(),
            "the holder stopped holding {:?} after it was cut from leader {leader}: {:?}",
            cut_at.elapsed(),
            *session.state().borrow()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = cluster.client().status().await.expect("status");
    assert_eq!(
        status.leader, leader,
        "the leader changed: the test did not exercise a healthy leader"
    );
    let relayed_by: Vec<u64> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .filter(|n| cluster.log_of(n.id).contains("relaying a keepalive stream"))
        .map(|n| n.id)
        .collect();
    assert!(
        !relayed_by.is_empty(),
        "no follower logged a relayed keepalive stream"
    );

    session.shutdown().await;
    drop(start_watching);
    let (latest, gaps) = beliefs.await.expect("belief watcher");
    assert!(
        gaps.iter().all(|g| g.contains("session stopped")),
        "the holder stopped believing during the cut: {gaps:?}"
    );
    let latest = latest.expect("a belief after the cut");
    // The last renewal was sent at most a few keepalive intervals before the end: the
    // deadline it set lies well past the cut plus one TTL.
    assert!(
        latest > cut_at + 2 * TTL,
        "the deadline stopped moving: {:?} after the cut",
        latest.saturating_duration_since(cut_at)
    );
    let relays: usize = cluster
        .nodes
        .iter()
        .map(|n| {
            cluster
                .log_of(n.id)
                .matches("relaying a keepalive stream")
                .count()
        })
        .sum();
    println!(
        "cut from leader {leader}; relayed by {relayed_by:?} ({relays} streams opened); \
         deadline {:?} after the cut",
        latest.saturating_duration_since(cut_at)
    );
}

/// Opens a keepalive stream on `addr` as `site`'s engine, asking it to relay, sends one
/// renewal of `lease_id`, and returns the first answer.
async fn relayed_renewal(
    cluster: &Cluster,
    site: &str,
    addr: &str,
    lease_id: u64,
) -> Result<failover_proto::lease::KeepAliveResponse, tonic::Status> {
    use failover_proto::lease::KeepAliveRequest;
    let channel = cluster.engine_dialer(site).channel(addr).expect("channel");
    let mut client = failover_proto::wire::lease_client(channel);
    let (requests, outgoing) = tokio::sync::mpsc::channel(1);
    let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    call.metadata_mut().insert(
        failover_proto::wire::RELAY_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let mut answers = client.keep_alive(call).await?.into_inner();
    requests
        .send(KeepAliveRequest {
            group: "default".into(),
            lease_id,
            seq: 1,
        })
        .await
        .expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("an answer within 10 s")?;
    answer.ok_or_else(|| tonic::Status::unknown("the stream ended without an answer"))
}

/// A relayed renewal reaches the leader as the engine (a peer may not call the lease API
/// at all, so a renewed answer proves the engine's identity went along), and an engine of
/// another site is refused on the relayed stream as it is on the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_stream_carries_the_engines_identity() {
    use failover_proto::lease::keep_alive_response;
    let mut cluster = Cluster::new();
    cluster.start_all();
    let leader = cluster.wait_ready(Duration::from_secs(30)).await.leader;
    let addr_of = |id: u64| cluster.node(id).addr.clone();
    let leader_addr = addr_of(leader);
    let follower = addr_of(if leader == 1 { 2 } else { 1 });
    let grant =
        crate::common::wait_granted(&crate::common::lease_client("site-a", &leader_addr), "i-a")
            .await;

    // A follower that has not applied the cluster id yet answers UNAVAILABLE: retry.
    let renewed = eventually(
        "a relayed renewal by site-a's engine",
        Duration::from_secs(30),
        || {
            let (cluster, follower) = (&cluster, &follower);
            async move {
                match relayed_renewal(cluster, "site-a", follower, grant.lease_id).await {
                    Ok(renewed) => Some(renewed),
                    Err(status) if status.code() == tonic::Code::Unavailable => None,
                    Err(status) => panic!("a relayed renewal by site-a's engine: {status:?}"),
                }
            }
        },
    )
    .await;
    assert!(
        matches!(
            renewed.result,
            Some(keep_alive_response::Result::Renewed(ref g)) if g.lease_id == grant.lease_id
        ),
        "{renewed:?}"
    );
    let denied = relayed_renewal(&cluster, "site-b", &follower, grant.lease_id)
        .await
        .expect_err("site-b's engine may not renew site-a's lease through a relay");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("not site-a"), "{denied:?}");
    // Without the header a follower still refuses, naming the leader.
    let channel = cluster
        .engine_dialer("site-a")
        .channel(&follower)
        .expect("channel");
    let (_requests, outgoing) =
        tokio::sync::mpsc::channel::<failover_proto::lease::KeepAliveRequest>(1);
    let refused = failover_proto::wire::lease_client(channel)
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect_err("a follower refuses a stream not asked to be relayed");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        failover_proto::wire::leader_named(&refused).as_deref(),
        Some(leader_addr.as_str())
    );
}

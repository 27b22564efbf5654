//! Per-identity limits and slow clients (docs/security.md, "Limits and slow clients") on
//! a real cluster: a flood from one identity is refused RESOURCE_EXHAUSTED while another
//! identity is served, and a client that never reads its stream is closed, not buffered.

use std::time::Duration;

use crate::common::{eventually, Cluster};
use failover_client::{ClientError, Dialer};
use failover_proto::admin::PromoteRequest;
use failover_proto::lease::lease_service_client::LeaseServiceClient;
use failover_proto::lease::{acquire_response, AcquireRequest, KeepAliveRequest, WatchRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READY: Duration = Duration::from_secs(30);

/// The value of the sample `name` (with its labels, as printed) in `/metrics` of `addr`.
async fn metric(addr: &str, sample: &str) -> Option<f64> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8(response).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

fn watch_request(site: &str) -> WatchRequest {
    WatchRequest {
        group: "default".into(),
        site: site.into(),
    }
}

/// The outcome of one flood of acquires at the leader.
struct Flood {
    granted: usize,
    refused: Vec<tonic::Status>,
}

/// 20 acquires at once from `flood` (site-a's engine), with one from `other` (site-b's)
/// after every fourth, all at `leader`; instances are named `flood-{round}-N`. `None`
/// when `leader` answered that it no longer leads: a loaded machine can move the
/// leadership, limits are counted per controller, so the caller starts over at the new
/// leader.
async fn flood_once(
    flood: &mut LeaseServiceClient<failover_proto::wire::Chan>,
    other: &mut LeaseServiceClient<failover_proto::wire::Chan>,
    round: usize,
) -> Option<Flood> {
    let mut granted = 0;
    let mut refused = Vec::new();
    for i in 0..20 {
        let answer = flood
            .acquire(AcquireRequest {
                group: "default".into(),
                site: "site-a".into(),
                instance: format!("flood-{round}-{i}"),
                ..Default::default()
            })
            .await;
        match answer {
            Ok(r) => match r.into_inner().result {
                Some(acquire_response::Result::Granted(_)) => granted += 1,
                other => panic!("unexpected answer {other:?}"),
            },
            Err(status) if status.code() == tonic::Code::Unavailable => return None,
            Err(status) => refused.push(status),
        }
        if i % 4 != 0 {
            continue;
        }
        // The other identity is served in the middle of the flood (a standby answer:
        // site-a is active); 5 calls stay within its own burst.
        let served = other
            .acquire(AcquireRequest {
                group: "default".into(),
                site: "site-b".into(),
                instance: format!("other-{round}-{i}"),
                ..Default::default()
            })
            .await;
        match served {
            Err(status) if status.code() == tonic::Code::Unavailable => return None,
            served => assert!(matches!(
                served
                    .expect("site-b's engine is served during site-a's flood")
                    .into_inner()
                    .result,
                Some(acquire_response::Result::Standby(_))
            )),
        }
    }
    Some(Flood { granted, refused })
}

/// One engine identity floods acquires and watches: it gets RESOURCE_EXHAUSTED naming
/// itself and the limit, nothing is granted for the refused acquires, and the other
/// site's engine is served all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_identity_is_refused_and_others_are_served() {
    let mut cluster = Cluster::new_with(|yaml| {
        yaml + "limits: { acquires_per_second: 2, acquire_burst: 5, watch_streams: 3 }\n"
    });
    cluster.start_all();
    let site_a = cluster.engine_dialer("site-a");
    let site_b = cluster.engine_dialer("site-b");
    let mut rounds = 0;
    let (leader, mut flood, mut other, outcome) = loop {
        assert!(rounds < 5, "the leadership moved during 5 floods in a row");
        let status = cluster.wait_ready(READY).await;
        let leader = cluster
            .nodes
            .iter()
            .find(|n| n.id == status.leader)
            .expect("leader node");
        let mut flood = LeaseServiceClient::new(site_a.channel(&leader.addr).expect("channel"));
        let mut other = LeaseServiceClient::new(site_b.channel(&leader.addr).expect("channel"));
        if let Some(outcome) = flood_once(&mut flood, &mut other, rounds).await {
            break (leader.http_addr.clone(), flood, other, outcome);
        }
        rounds += 1;
    };
    let Flood { granted, refused } = outcome;
    // The burst of 5 (and perhaps one more from the refill) is granted, the rest refused
    // before anything is proposed.
    assert!((5..=14).contains(&granted), "granted {granted}");
    assert!(!refused.is_empty(), "no acquire was refused");
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("engine/site-a")
                && status.message().contains("limits.acquires_per_second"),
            "{status:?}"
        );
    }
    // Nothing was committed for the refused acquires: the group holds one lease per grant.
    let leases = cluster
        .client()
        .leases("default")
        .await
        .expect("leases")
        .leases;
    let prefix = format!("flood-{rounds}-");
    let flooded = leases
        .iter()
        .filter(|l| l.holder.starts_with(&prefix))
        .count();
    assert_eq!(flooded, granted, "{leases:?}");

    // Watches: three open streams, the fourth refused; site-b still watches.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            flood
                .watch(watch_request("site-a"))
                .await
                .expect("within the limit")
                .into_inner(),
        );
    }
    let over = flood
        .watch(watch_request("site-a"))
        .await
        .expect_err("a fourth watch stream");
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
    assert!(
        over.message().contains("engine/site-a") && over.message().contains("limits.watch_streams"),
        "{over:?}"
    );
    let mut watching = other
        .watch(watch_request("site-b"))
        .await
        .expect("site-b watches during site-a's flood")
        .into_inner();
    let event = watching.message().await.expect("event").expect("an event");
    assert_eq!(event.active_site, "site-a");
    // Closing a stream gives its place back.
    held.pop();
    eventually(
        "a watch after one was closed",
        Duration::from_secs(10),
        || {
            let mut flood = flood.clone();
            async move { flood.watch(watch_request("site-a")).await.ok() }
        },
    )
    .await;
    let refusals = metric(
        &leader,
        "failover_limit_refusals_total{limit=\"acquires_per_second\"}",
    )
    .await
    .expect("metric");
    assert!(refusals >= refused.len() as f64, "{refusals}");
    cluster.kill_all();
}

/// Watch streams whose client never reads (an HTTP/2 window of one byte) are closed once
/// an event waits `stall_timeout_ms` for them; meanwhile a reading watcher and admin
/// calls are served, and the slow client, once it reads, gets RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_stream_is_closed() {
    let mut cluster =
        Cluster::new_insecure_with(|yaml| yaml + "limits: { stall_timeout_ms: 1000 }\n");
    cluster.start_all();
    let status = cluster.wait_ready(READY).await;
    let node = (
        cluster.nodes[0].addr.clone(),
        cluster.nodes[0].http_addr.clone(),
    );
    let leader = cluster
        .nodes
        .iter()
        .find(|n| n.id == status.leader)
        .map(|n| (n.addr.clone(), n.http_addr.clone()))
        .expect("leader");
    // A follower knows the group once it applied the leader's creation of it; until then
    // it rightly answers NOT_FOUND.
    let probe = failover_client::TcpDialer::default()
        .channel(&node.0)
        .expect("channel");
    eventually("controller 1 to know the group", READY, || {
        let mut probe = LeaseServiceClient::new(probe.clone());
        async move { probe.watch(watch_request("site-a")).await.ok().map(drop) }
    })
    .await;
    let slow_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.0))
        .expect("endpoint")
        .initial_stream_window_size(Some(1))
        .initial_connection_window_size(Some(1))
        .connect()
        .await
        .expect("slow client connects");
    let mut slow = LeaseServiceClient::new(slow_channel);
    let mut stuck = Vec::new();
    for _ in 0..3 {
        stuck.push(
            slow.watch(watch_request("site-a"))
                .await
                .expect("watch")
                .into_inner(),
        );
    }
    let reader_channel = failover_client::TcpDialer::default()
        .channel(&node.0)
        .expect("channel");
    let mut reader = LeaseServiceClient::new(reader_channel)
        .watch(watch_request("site-b"))
        .await
        .expect("watch")
        .into_inner();
    let first = reader.message().await.expect("event").expect("an event");
    assert_eq!(first.active_site, "site-a");

    // Changes of the group: each is an event every watcher is due.
    let mut admin = cluster.client();
    for (n, site) in ["site-b", "site-a", "site-b", "site-a"].iter().enumerate() {
        admin
            .promote(PromoteRequest {
                group: "default".into(),
                site: (*site).into(),
                force: true,
                wait: true,
                reason: format!("change {n}"),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e: ClientError| panic!("promote to {site}: {e}"));
        // The reading watcher sees the change: the slow ones delay nobody.
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let event = reader.message().await.expect("event").expect("open");
                if event.active_site == *site && event.promoting_to.is_empty() {
                    return event;
                }
            }
        })
        .await
        .expect("the reading watcher sees every change");
        assert_eq!(seen.active_site, *site);
    }
    let sample = "failover_stalled_streams_total{stream=\"watch\"}";
    eventually(
        "the stalled watches closed",
        Duration::from_secs(15),
        || {
            let http = node.1.clone();
            async move { (metric(&http, sample).await? >= 3.0).then_some(()) }
        },
    )
    .await;
    // Once the slow client reads, it learns why its stream ended.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stuck[0].message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the slow stream ends once read")
    .expect("ends with a status");
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert!(
        ended.message().contains("limits.stall_timeout_ms"),
        "{ended:?}"
    );
    // Admin calls were served throughout, and still are.
    admin.status().await.expect("status");

    // A keep-alive stream that sends renewals and never reads the answers: the leader
    // buffers a bounded number, then closes it.
    let dial_slow = |addr: String| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .initial_stream_window_size(Some(1))
            .initial_connection_window_size(Some(1))
            .connect()
            .await
            .expect("slow client connects")
    };
    let mut holder = LeaseServiceClient::new(dial_slow(leader.0.clone()).await);
    let granted = holder
        .acquire(AcquireRequest {
            group: "default".into(),
            site: "site-a".into(),
            instance: "slow-holder".into(),
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner();
    let Some(acquire_response::Result::Granted(grant)) = granted.result else {
        panic!("not granted: {granted:?}");
    };
    let renewals = tokio_stream::iter((0..6000u64).map(move |seq| KeepAliveRequest {
        group: "default".into(),
        lease_id: grant.lease_id,
        seq,
    }));
    let _unread = holder
        .keep_alive(renewals)
        .await
        .expect("keep-alive stream");
    let sample = "failover_stalled_streams_total{stream=\"keepalive\"}";
    eventually(
        "the unread keep-alive stream closed",
        Duration::from_secs(20),
        || {
            let http = leader.1.clone();
            async move { (metric(&http, sample).await? >= 1.0).then_some(()) }
        },
    )
    .await;
    admin
        .status()
        .await
        .expect("status after the slow keep-alive");
    cluster.kill_all();
}

//! Catch-up by snapshot with many live leases: a follower whose data dir is deleted while
//! 20,000 leases are live (its peers' logs purged up to their snapshots, so only a
//! snapshot can bring it up to date) rejoins with `--join-existing` and holds every lease
//! within a deadline; restarted on the data dir it installed, it holds them again.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{eventually, lease_client, Cluster};
use failover_proto::lease::acquire_response::Result as Acquired;
use failover_proto::lease::AcquireRequest;
use futures::StreamExt;

const LEASES: usize = 20_000;
/// Long-lived leases (nothing renews them here), no limit on one engine's grant rate, and
/// no automatic failover while the test holds the cluster.
const TOPOLOGY: &str = "limits: { acquires_per_second: 1000000, acquire_burst: 1000000 }
timing:
  lease_ttl_ms: 600000
  keepalive_interval_ms: 75000
";

/// Controller `http`'s live leases of group `default`, from its own `/metrics`.
fn leases_at(http: &str) -> Option<usize> {
    let out = Command::new("curl")
        .args(["-s", "-m", "5"])
        .arg(format!("http://{http}/metrics"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("failover_group_leases{group=\"default\"} "))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_catches_up_with_every_lease_by_snapshot() {
    let mut cluster = Cluster::new_with(|yaml| {
        yaml.replacen("sites:\n", &format!("{TOPOLOGY}sites:\n"), 1)
            .replacen(
                "sites: [site-a, site-b]\n",
                "sites: [site-a, site-b]\n    auto_failover: false\n",
                1,
            )
    });
    cluster.start_all();
    let status = cluster.wait_ready(Duration::from_secs(30)).await;
    let leader = status.leader;
    let addr = |id: u64| {
        cluster
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.addr.clone())
            .expect("node")
    };
    // Grants follow the leader: on a loaded machine an election may come mid-way.
    let addrs: Vec<(u64, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.addr.clone()))
        .collect();
    let current = Arc::new(Mutex::new(lease_client("site-a", &addr(leader))));
    let admin = cluster.client();
    futures::stream::iter(0..LEASES)
        .map(|i| {
            let current = current.clone();
            let mut admin = admin.clone();
            let addrs = addrs.clone();
            async move {
                let request = AcquireRequest {
                    group: "default".into(),
                    site: "site-a".into(),
                    instance: format!("engine-{i}"),
                    ready: false,
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let mut client = current.lock().expect("lock").clone();
                    match client.acquire(request.clone()).await {
                        Ok(reply) => {
                            let result = reply.into_inner().result;
                            assert!(matches!(result, Some(Acquired::Granted(_))), "{result:?}");
                            return;
                        }
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let leader = admin.status().await.map(|s| s.leader).unwrap_or(0);
                            if let Some((_, addr)) = addrs.iter().find(|(id, _)| *id == leader) {
                                *current.lock().expect("lock") = lease_client("site-a", addr);
                            }
                        }
                        Err(status) => panic!("acquire {i}: {status}"),
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    // A grant refused as its leader stepped down may still have committed, and its retry
    // then superseded it: count what the cluster holds.
    let leader = cluster.wait_ready(Duration::from_secs(30)).await.leader;
    let leader_http = cluster
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .map(|n| n.http_addr.clone())
        .expect("leader");
    let held = leases_at(&leader_http).expect("the leader's lease count");
    assert!(held >= LEASES, "{held} leases held");

    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .map(|n| (n.id, n.http_addr.clone()))
        .expect("a follower");
    let (id, http) = follower;
    eventually(
        "the follower to hold every lease",
        Duration::from_secs(60),
        || async { (leases_at(&http) == Some(held)).then_some(()) },
    )
    .await;

    cluster.kill9(id);
    std::fs::remove_dir_all(cluster.data_dir().join(format!("controller-{id}")))
        .expect("lose the disk");
    let started = Instant::now();
    cluster.start_with(id, &["--join-existing"], &[]);
    eventually(
        "the wiped follower to hold every lease",
        Duration::from_secs(60),
        || async { (leases_at(&http) == Some(held)).then_some(()) },
    )
    .await;
    let caught_up = started.elapsed();
    let log = cluster.log_of(id);
    let rejoined = log
        .rsplit_once("joining the existing cluster")
        .map_or("", |(_, after)| after);
    assert!(
        rejoined.contains("installed a snapshot from the leader"),
        "caught up without a snapshot:\n{log}"
    );
    println!("{held} leases: the wiped follower held them all {caught_up:?} after its start");

    // Restarted on the data dir it installed: no flag needed, every lease is back.
    assert_eq!(cluster.terminate(id, Duration::from_secs(15)), Some(0));
    cluster.start(id);
    eventually(
        "the restarted follower to hold every lease",
        Duration::from_secs(60),
        || async { (leases_at(&http) == Some(held)).then_some(()) },
    )
    .await;
}

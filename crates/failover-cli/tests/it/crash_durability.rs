//! S3 under load with real SIGKILL: promotes and lease grants run continuously while
//! controllers are killed at random (seeded) moments and restarted on their data dirs;
//! at the end every controller is killed at once and restarted. No acknowledged promote
//! or grant may be lost, and no epoch or lease may be handed out twice.
//!
//! `FAILOVER_CRASH_SEED` picks the kill schedule (default 14); `FAILOVER_CRASH_SECS` the
//! length of the loaded phase (default 30).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{eventually, Cluster};
use failover_client::{AdminClient, Endpoints};
use failover_proto::admin::PromoteRequest;
use failover_proto::lease::acquire_response::Result as Acquired;
use failover_proto::lease::lease_service_client::LeaseServiceClient;
use failover_proto::lease::AcquireRequest;

const READY: Duration = Duration::from_secs(60);

/// Two groups without automatic failover: `default` is promoted back and forth (it has no
/// leases, so a promote need not wait one out); `leases` gets the grants, with a TTL long
/// enough that none expires during the test, so every acknowledged one must still be
/// listed at the end.
fn topology(yaml: String) -> String {
    let groups = yaml.find("groups:").expect("groups section");
    format!(
        "{}timing:\n  lease_ttl_ms: 600000\ngroups:\n  - name: default\n    sites: [site-a, site-b]\n    auto_failover: false\n  - name: leases\n    sites: [site-a, site-b]\n    auto_failover: false\n",
        &yaml[..groups]
    )
}

/// What the cluster acknowledged.
#[derive(Debug, Default)]
struct Acked {
    /// Epoch → site of every acknowledged promote of `default`.
    promotes: BTreeMap<u64, String>,
    /// Lease id → (holder, epoch, fencing token) of every acknowledged grant.
    grants: BTreeMap<u64, (String, u64, u64)>,
    /// Problems seen while running (an epoch or lease id acknowledged twice).
    violations: Vec<String>,
}

/// Promotes `default` to the other site, again and again, recording each acknowledgement.
async fn promote_loop(endpoints: String, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let mut client = AdminClient::with_dialer(
        Endpoints::parse(&endpoints).expect("endpoints"),
        crate::common::operator_dialer(),
    );
    let mut target = "site-b";
    while !stop.load(Ordering::Relaxed) {
        let request = PromoteRequest {
            group: "default".into(),
            site: target.into(),
            reason: "crash test".into(),
            actor: "test@crash".into(),
            wait: true,
            force: false,
        };
        match client.promote(request).await {
            Ok(reply) => {
                let group = reply.group.expect("group in reply");
                let mut acked = acked.lock().expect("lock");
                if !reply.already_active {
                    if let Some(site) = acked
                        .promotes
                        .insert(group.epoch, group.active_site.clone())
                    {
                        acked.violations.push(format!(
                            "epoch {} acknowledged twice: {site} and {}",
                            group.epoch, group.active_site
                        ));
                    }
                }
                target = if group.active_site == "site-a" {
                    "site-b"
                } else {
                    "site-a"
                };
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Acquires leases for fresh holders at site-a, following the leader hint.
async fn grant_loop(endpoints: String, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let addrs: Vec<String> = endpoints.split(',').map(str::to_owned).collect();
    let mut next = 0usize;
    let mut hint: Option<String> = None;
    let mut n = 0u64;
    // One channel per controller; a channel reconnects by itself after a restart.
    let mut clients: BTreeMap<String, LeaseServiceClient<failover_proto::wire::Chan>> =
        BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let addr = hint.take().unwrap_or_else(|| {
            next = (next + 1) % addrs.len();
            addrs[next].clone()
        });
        let holder = format!("holder-{n}");
        let client = match clients.get(&addr) {
            Some(client) => client.clone(),
            None => {
                let client = crate::common::lease_client("site-a", &addr);
                clients.insert(addr.clone(), client.clone());
                client
            }
        };
        let mut client = client;
        let request = AcquireRequest {
            group: "leases".into(),
            site: "site-a".into(),
            instance: holder.clone(),
            ready: true,
        };
        match tokio::time::timeout(Duration::from_secs(2), client.acquire(request)).await {
            Ok(Ok(reply)) => {
                // Stay with the controller that answered: it is the leader.
                hint = Some(addr.clone());
                if let Some(Acquired::Granted(grant)) = reply.into_inner().result {
                    n += 1;
                    let mut acked = acked.lock().expect("lock");
                    let value = (holder, grant.epoch, grant.fencing_token);
                    if let Some(old) = acked.grants.insert(grant.lease_id, value) {
                        acked.violations.push(format!(
                            "lease {} acknowledged twice: {old:?}",
                            grant.lease_id
                        ));
                    }
                }
            }
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unknown
                    || status.code() == tonic::Code::Unavailable
                        && status.metadata().get("x-failover-leader").is_none()
                {
                    clients.remove(&addr);
                }
                hint = status
                    .metadata()
                    .get("x-failover-leader")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if hint.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(_) => {
                clients.remove(&addr);
            }
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Acknowledged promotes and grants survive random SIGKILLs of controllers under load
/// and a SIGKILL of the whole cluster; no epoch or lease is acknowledged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_random_kill9_under_load() {
    let seed = env_u64("FAILOVER_CRASH_SEED", 14);
    let run_for = Duration::from_secs(env_u64("FAILOVER_CRASH_SECS", 30));
    eprintln!("kill schedule seed {seed}, loaded for {run_for:?}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cluster = Cluster::new_with(topology);
    cluster.start_all();
    cluster.wait_ready(READY).await;

    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let promoter = tokio::spawn(promote_loop(
        cluster.endpoints(),
        acked.clone(),
        stop.clone(),
    ));
    let granter = tokio::spawn(grant_loop(cluster.endpoints(), acked.clone(), stop.clone()));

    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
        // Half of the kills hit the leader, where an acknowledgement is decided.
        let leader = cluster
            .client()
            .status()
            .await
            .map(|s| s.leader)
            .unwrap_or(0);
        let victim = if leader != 0 && rng.bool() {
            leader
        } else {
            rng.u64(1..=5)
        };
        cluster.kill9(victim);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.u64(100..1500))).await;
        cluster.start(victim);
    }
    // The whole cluster at once: nothing acknowledged may depend on a page cache alone
    // surviving in another process.
    cluster.kill_all();
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(15), promoter).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), granter).await;
    cluster.start_all();
    cluster.wait_ready(READY).await;

    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    eprintln!(
        "{kills} kills; acknowledged {} promotes and {} grants",
        acked.promotes.len(),
        acked.grants.len()
    );
    assert!(acked.violations.is_empty(), "{:?}", acked.violations);
    assert!(
        acked.promotes.len() >= 3,
        "too few promotes acknowledged to prove anything"
    );
    assert!(
        acked.grants.len() >= 10,
        "too few grants acknowledged to prove anything"
    );

    let mut client = cluster.client();
    let history = eventually("the history", READY, || {
        let mut client = client.clone();
        async move { client.history("default").await.ok() }
    })
    .await;
    let recorded: BTreeMap<u64, String> = history
        .entries
        .iter()
        .map(|e| (e.epoch, e.to.clone()))
        .collect();
    assert_eq!(
        recorded.len(),
        history.entries.len(),
        "an epoch appears twice in the history: {:?}",
        history.entries
    );
    for (epoch, site) in &acked.promotes {
        assert_eq!(
            recorded.get(epoch),
            Some(site),
            "acknowledged promote to {site} at epoch {epoch} is lost; history: {recorded:?}"
        );
    }

    let leases = client.leases("leases").await.expect("leases");
    let listed: BTreeMap<u64, (String, u64, u64)> = leases
        .leases
        .iter()
        .map(|l| (l.lease_id, (l.holder.clone(), l.epoch, l.fencing_token)))
        .collect();
    // A holder may list more than one lease: an acquire retried after a lost answer gets a
    // new lease, and the first one stays, superseded, until it expires (docs/leases.md).
    for (id, grant) in &acked.grants {
        assert_eq!(
            listed.get(id),
            Some(grant),
            "acknowledged lease {id} ({grant:?}) is lost or changed"
        );
    }

    // Nothing acknowledged before is handed out again: a fresh grant gets a new lease id,
    // and a fresh promote a new epoch.
    let max_lease = *acked.grants.keys().max().expect("grants");
    let max_epoch = *recorded.keys().max().expect("history");
    let promoted = client
        .promote(PromoteRequest {
            group: "default".into(),
            site: if recorded[&max_epoch] == "site-a" {
                "site-b"
            } else {
                "site-a"
            }
            .into(),
            reason: "after the crash".into(),
            actor: "test@crash".into(),
            wait: true,
            force: false,
        })
        .await
        .expect("promote after restart");
    assert!(promoted.group.expect("group").epoch > max_epoch);
    let stop = Arc::new(AtomicBool::new(false));
    let after = Arc::new(Mutex::new(Acked::default()));
    let granter = tokio::spawn(grant_loop(cluster.endpoints(), after.clone(), stop.clone()));
    eventually("a grant after the restart", READY, || {
        let after = after.clone();
        async move { (!after.lock().expect("lock").grants.is_empty()).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = granter.await;
    let fresh = *after
        .lock()
        .expect("lock")
        .grants
        .keys()
        .min()
        .expect("grant");
    assert!(
        fresh > max_lease,
        "lease id {fresh} reused (acknowledged up to {max_lease})"
    );
}

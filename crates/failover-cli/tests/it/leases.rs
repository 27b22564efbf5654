//! Leases across real controller processes: holders at two sites never believe they hold
//! the group at the same instant, through 20 promotions and a leader killed mid-promotion.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{eventually, Cluster};
use failover_client::{LeaseSession, LeaseState};
use failover_proto::admin::PromoteRequest;

/// The defaults of the test topology (those of `Timing::default()`).
const TTL: Duration = Duration::from_millis(3500);
const DRIFT: Duration = crate::common::SESSION_DRIFT;
const STOP_GRACE: Duration = Duration::from_millis(100);

/// An interval in which one holder believed it held the lease, on this process's
/// monotonic clock. Over-approximated: it starts when the acquire was sent and ends when
/// the loss was observed (or at the deadline, if earlier).
#[derive(Debug, Clone)]
struct Belief {
    /// Shown when an assertion fails.
    #[allow(dead_code)]
    holder: String,
    site: &'static str,
    start: Instant,
    end: Instant,
    tokens: Vec<u64>,
}

type Beliefs = Arc<Mutex<Vec<Belief>>>;

/// Follows one session's published state and records its belief intervals.
async fn record(holder: String, site: &'static str, session: &LeaseSession, beliefs: Beliefs) {
    let mut state = session.state();
    let mut open: Option<Belief> = None;
    let usable = TTL - DRIFT - STOP_GRACE;
    loop {
        let current = state.borrow_and_update().clone();
        let now = Instant::now();
        match current {
            // A draining holder starts no new work but may still run work begun before
            // the notice, until it releases: it still believes.
            LeaseState::Acquired {
                token, valid_until, ..
            }
            | LeaseState::Draining {
                token, valid_until, ..
            } => {
                let belief = open.get_or_insert_with(|| Belief {
                    holder: holder.clone(),
                    site,
                    start: valid_until - usable,
                    end: valid_until,
                    tokens: Vec::new(),
                });
                belief.end = belief.end.max(valid_until);
                if belief.tokens.last() != Some(&token.0) {
                    belief.tokens.push(token.0);
                }
            }
            _ => {
                if let Some(mut belief) = open.take() {
                    belief.end = belief.end.min(now);
                    beliefs.lock().expect("beliefs").push(belief);
                }
            }
        }
        if state.changed().await.is_err() {
            if let Some(mut belief) = open.take() {
                belief.end = belief.end.min(Instant::now());
                beliefs.lock().expect("beliefs").push(belief);
            }
            return;
        }
    }
}

fn session(cluster: &Cluster, site: &str, instance: &str) -> LeaseSession {
    crate::common::lease_session(&cluster.endpoints(), site, instance, STOP_GRACE)
}

fn promote(site: &str, wait: bool) -> PromoteRequest {
    PromoteRequest {
        group: "default".into(),
        site: site.into(),
        reason: "lease test".into(),
        actor: "test@leases".into(),
        wait,
        force: false,
    }
}

/// 20 promotions back and forth with two holders per site, one of them with the leader
/// killed right after the demotion committed: belief intervals of different sites never
/// overlap, and every site-b holding after a site-a holding carries larger tokens (and
/// vice versa).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_at_two_sites_never_overlap() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let beliefs: Beliefs = Arc::default();
    let holders: [(&'static str, &'static str); 4] = [
        ("site-a", "a1"),
        ("site-a", "a2"),
        ("site-b", "b1"),
        ("site-b", "b2"),
    ];
    let sessions: Vec<(&'static str, Arc<LeaseSession>)> = holders
        .iter()
        .map(|(site, id)| (*site, Arc::new(session(&cluster, site, id))))
        .collect();
    let recorders: Vec<_> = holders
        .iter()
        .zip(&sessions)
        .map(|(&(site, id), (_, s))| {
            let (s, beliefs, id) = (s.clone(), beliefs.clone(), id.to_string());
            tokio::spawn(async move { record(id, site, &s, beliefs).await })
        })
        .collect();
    let held_by = |site: &'static str| {
        let sessions = sessions.clone();
        move || {
            let sessions = sessions.clone();
            async move {
                sessions
                    .iter()
                    .filter(|(s, _)| *s == site)
                    .all(|(_, session)| session.holds().is_some())
                    .then_some(())
            }
        }
    };
    eventually(
        "site-a holders acquire",
        Duration::from_secs(20),
        held_by("site-a"),
    )
    .await;

    let mut client = cluster.client();
    for round in 0..20 {
        let site = if round % 2 == 0 { "site-b" } else { "site-a" };
        if round == 9 {
            // The leader dies right after the demotion committed: the next leader must
            // finish the promotion, and must not let the new site in before the old is out.
            let started = client.promote(promote(site, false)).await.expect("promote");
            assert_eq!(
                started.group.expect("group").phase(),
                failover_proto::types::Phase::Demoting
            );
            let leader = cluster.wait_ready(Duration::from_secs(30)).await.leader;
            cluster.kill9(leader);
            eventually(
                "the promotion to finish under a new leader",
                Duration::from_secs(30),
                || {
                    let mut client = cluster.client();
                    async move {
                        let s = client.status().await.ok()?;
                        let g = s.groups.first()?;
                        (s.consistent
                            && g.active_site == site
                            && g.phase() == failover_proto::types::Phase::Active)
                            .then_some(())
                    }
                },
            )
            .await;
            cluster.start(leader);
        } else {
            let done = client
                .promote(promote(site, true))
                .await
                .expect("promote --wait");
            assert_eq!(done.group.expect("group").active_site, site);
        }
        eventually(
            &format!("{site} holders acquire (round {round})"),
            Duration::from_secs(20),
            held_by(site),
        )
        .await;
    }

    for (_, s) in &sessions {
        s.shutdown().await;
    }
    for r in recorders {
        r.await.expect("recorder");
    }
    let beliefs = beliefs.lock().expect("beliefs").clone();
    check_beliefs(&beliefs);
}

fn check_beliefs(beliefs: &[Belief]) {
    for site in ["site-a", "site-b"] {
        let count = beliefs.iter().filter(|b| b.site == site).count();
        assert!(
            count >= 10,
            "{site} held the lease only {count} times: {beliefs:#?}"
        );
    }
    for a in beliefs {
        for b in beliefs.iter().filter(|b| b.site != a.site) {
            let overlap = a.start < b.end && b.start < a.end;
            assert!(!overlap, "S1 broken: {a:#?} overlaps {b:#?}");
            if a.end <= b.start {
                let a_max = a.tokens.iter().max().expect("a token");
                let b_min = b.tokens.iter().min().expect("a token");
                assert!(a_max < b_min, "S2 broken: {a:#?} then {b:#?}");
            }
        }
    }
    let mut tokens: Vec<u64> = beliefs
        .iter()
        .flat_map(|b| b.tokens.iter().copied())
        .collect();
    let total = tokens.len();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), total, "every grant has its own token");
}

/// A holder configured with the default drift bound (as one started with only the
/// endpoints is) runs by the timing the cluster sends with the grant: a cluster with a
/// larger drift bound and a shorter keepalive interval than the defaults gets a holder
/// whose deadline counts the cluster's drift, and which knows the cluster's cadence and
/// ride-out margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_takes_its_timing_from_the_grant() {
    const CLUSTER_DRIFT: Duration = Duration::from_millis(700);
    const CLUSTER_KEEPALIVE: Duration = Duration::from_millis(150);
    let mut cluster = Cluster::new_with(|yaml| {
        yaml.replacen(
            "sites:\n",
            "timing: { max_clock_drift_ms: 700, keepalive_interval_ms: 150 }\nsites:\n",
            1,
        )
    });
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    // The holder's own bound is the default one (250 ms), smaller than the cluster's.
    let holder = session(&cluster, "site-a", "a1");
    let mut state = holder.state();
    let valid_until = eventually("the lease acquired", Duration::from_secs(30), || {
        let current = state.borrow_and_update().clone();
        async move {
            match current {
                LeaseState::Acquired { valid_until, .. } => Some(valid_until),
                _ => None,
            }
        }
    })
    .await;
    // The acquire was sent before now, so a deadline counted with the cluster's drift is
    // at most this; one counted with the holder's own 250 ms would be up to 450 ms later.
    let latest = Instant::now() + TTL - CLUSTER_DRIFT - STOP_GRACE;
    assert!(
        valid_until <= latest,
        "the deadline does not count the cluster's drift bound: it is {:?} past the latest \
         one the cluster's timing allows",
        valid_until - latest
    );
    let timing = holder.granted_timing().expect("a grant carries the timing");
    assert_eq!(timing.ttl, TTL);
    assert_eq!(timing.max_clock_drift, CLUSTER_DRIFT);
    assert_eq!(timing.keepalive_interval, Some(CLUSTER_KEEPALIVE));
    // ttl 3500 - drift 700 - 2 x keepalive 150 - takeover (2 x 500 + 100) = 1400 ms.
    assert_eq!(timing.ride_out_margin, Some(Duration::from_millis(1400)));
    // Renewals keep it: after several keepalive intervals the lease is still held and its
    // deadline still counts the cluster's drift.
    let mut renewed = holder.state();
    let later = eventually("a renewal", Duration::from_secs(10), || {
        let current = renewed.borrow_and_update().clone();
        async move {
            match current {
                LeaseState::Acquired { valid_until: v, .. } if v > valid_until => Some(v),
                _ => None,
            }
        }
    })
    .await;
    assert!(later <= Instant::now() + TTL - CLUSTER_DRIFT - STOP_GRACE);
    holder.shutdown().await;
}

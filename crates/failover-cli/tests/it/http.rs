//! The controllers' HTTP endpoints (`/active`, `/health`, `/metrics`) on a real
//! multi-process cluster, through a plain HTTP/1.1 client on a TcpStream.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{eventually, Cluster};
use failover_proto::admin::PromoteRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READY: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(10);

/// `GET path` on `addr`: the status code and the body, or `None` on any transport error.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    get_with_head(addr, path)
        .await
        .map(|(status, _, body)| (status, body))
}

/// `GET path` on `addr`: the status code, the header block and the body.
async fn get_with_head(addr: &str, path: &str) -> Option<(u16, String, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8(response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, head.to_ascii_lowercase(), body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// One sample of the text exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus / OpenMetrics text format strictly enough to catch a malformed
/// exposition: comment lines are `# HELP`, `# TYPE`, `# UNIT` or the final `# EOF`; every
/// other line is `name{label="value",...} number`.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut eof = false;
    for line in text.lines() {
        if eof {
            return Err(format!("line after # EOF: {line:?}"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name) = (parts.next(), parts.next());
            if !matches!(kind, Some("HELP" | "TYPE" | "UNIT")) || name.is_none() {
                return Err(format!("unexpected comment: {line:?}"));
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value: {line:?}"))?;
        let value: f64 = value
            .parse()
            .map_err(|e| format!("bad value in {line:?}: {e}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("unclosed labels: {line:?}"))?;
                let mut labels = BTreeMap::new();
                for pair in inner.split(',').filter(|p| !p.is_empty()) {
                    let (key, quoted) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("bad label {pair:?} in {line:?}"))?;
                    let value = quoted
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or_else(|| format!("unquoted label {pair:?} in {line:?}"))?;
                    labels.insert(key.to_owned(), value.to_owned());
                }
                (name, labels)
            }
        };
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !valid_name {
            return Err(format!("bad metric name in {line:?}"));
        }
        samples.push((name.to_owned(), labels, value));
    }
    if !eof {
        return Err("no # EOF at the end".to_owned());
    }
    Ok(samples)
}

/// The value of the unlabelled sample `name`.
fn value_of(samples: &[Sample], name: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, labels, _)| n == name && labels.is_empty())
        .map(|(_, _, v)| *v)
}

/// `(status of /active/default/site-a, of /active/default/site-b)` on every controller.
async fn active_everywhere(cluster: &Cluster) -> Vec<(u64, Option<u16>, Option<u16>)> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        let a = get(&node.http_addr, "/active/default/site-a").await;
        let b = get(&node.http_addr, "/active/default/site-b").await;
        out.push((node.id, a.map(|r| r.0), b.map(|r| r.0)));
    }
    out
}

/// Every controller answers `/health`, `/active` and `/metrics` from its own state; after
/// a promotion every controller moves the 200 from site-a to site-b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_controller_serves_active_health_and_metrics() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    // The id is fixed by a command of its own; a controller shows it once it applied it.
    let cluster_id = eventually("the cluster id in a status", READY, || async {
        let status = cluster.client().status().await.ok()?;
        (!status.cluster_id.is_empty()).then_some(status.cluster_id)
    })
    .await;

    // Followers apply what the leader committed within about a heartbeat.
    eventually("site-a active on every controller", SETTLE, || async {
        active_everywhere(&cluster)
            .await
            .iter()
            .all(|(_, a, b)| *a == Some(200) && *b == Some(503))
            .then_some(())
    })
    .await;

    let build_info = format!(
        "failover_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut leaders = 0;
    for node in &cluster.nodes {
        let addr = node.http_addr.as_str();
        let (status, head, body) = get_with_head(addr, "/health")
            .await
            .expect("/health answers");
        assert_eq!((status, body.trim()), (200, "ok"), "/health of {}", node.id);
        // Every answer names the cluster that gave it.
        assert!(
            head.contains(&format!("x-failover-cluster: {cluster_id}")),
            "{head}"
        );

        let (status, body) = get(addr, "/active/default/site-a").await.expect("answers");
        assert_eq!(status, 200, "site-a on {}: {body}", node.id);
        let (status, body) = get(addr, "/active/default/site-b").await.expect("answers");
        assert_eq!(status, 503, "site-b on {}: {body}", node.id);
        assert!(body.contains("standby"), "reason for site-b: {body}");
        let (status, body) = get(addr, "/active/nope/site-a").await.expect("answers");
        assert_eq!(status, 503, "unknown group on {}: {body}", node.id);
        assert!(body.contains("unknown group"), "reason: {body}");
        let (status, body) = get(addr, "/active/default/site-z").await.expect("answers");
        assert_eq!(status, 503, "unknown site on {}: {body}", node.id);

        let (status, body) = get(addr, "/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "/metrics of {}", node.id);
        let samples = parse_exposition(&body)
            .unwrap_or_else(|e| panic!("/metrics of {} does not parse: {e}\n{body}", node.id));
        assert!(
            body.contains("failover_group_epoch{group=\"default\"} 1\n"),
            "epoch of default on {}:\n{body}",
            node.id
        );
        for name in [
            "failover_raft_term",
            "failover_raft_leader_id",
            "failover_raft_is_leader",
        ] {
            assert!(
                value_of(&samples, name).is_some(),
                "{name} missing on {}:\n{body}",
                node.id
            );
        }
        for expected in [
            "failover_group_active{group=\"default\",site=\"site-a\"} 1\n",
            "failover_group_active{group=\"default\",site=\"site-b\"} 0\n",
            "failover_group_demoting{group=\"default\"} 0\n",
            "failover_group_leases{group=\"default\"} 0\n",
            "failover_failovers_total{group=\"default\"} 0\n",
            "failover_keepalives_total{result=\"accepted\"} 0\n",
            "failover_promotions_total{group=\"default\",trigger=\"manual\"} 0\n",
            "failover_promotions_total{group=\"default\",trigger=\"automatic\"} 0\n",
            "failover_group_paused{group=\"default\"} 0\n",
            build_info.as_str(),
        ] {
            assert!(
                body.contains(expected),
                "{expected:?} missing on {}:\n{body}",
                node.id
            );
        }
        // The failure detector runs on the leader: only it reports lost sites.
        let lost: Vec<&Sample> = samples
            .iter()
            .filter(|(name, _, _)| name == "failover_site_lost")
            .collect();
        if value_of(&samples, "failover_raft_is_leader") == Some(1.0) {
            leaders += 1;
            let sites: BTreeMap<&str, f64> = lost
                .iter()
                .map(|(_, labels, v)| (labels["site"].as_str(), *v))
                .collect();
            assert_eq!(
                sites,
                BTreeMap::from([("site-a", 0.0), ("site-b", 0.0), ("witness", 0.0)]),
                "no site is lost"
            );
        } else {
            assert!(lost.is_empty(), "follower {} reports {lost:?}", node.id);
        }
    }
    assert_eq!(leaders, 1, "exactly one controller reports itself leader");

    let mut client = cluster.client();
    client
        .promote(PromoteRequest {
            group: "default".into(),
            site: "site-b".into(),
            reason: "test promotes site-b".into(),
            actor: "test@http".into(),
            wait: true,
            ..Default::default()
        })
        .await
        .expect("promote site-b");

    eventually("site-b active on every controller", SETTLE, || async {
        active_everywhere(&cluster)
            .await
            .iter()
            .all(|(_, a, b)| *a == Some(503) && *b == Some(200))
            .then_some(())
    })
    .await;
    for node in &cluster.nodes {
        let (_, body) = get(&node.http_addr, "/metrics").await.expect("answers");
        assert!(
            body.contains("failover_group_epoch{group=\"default\"} 2\n"),
            "epoch after the promotion on {}:\n{body}",
            node.id
        );
        assert!(
            body.contains("failover_promotions_total{group=\"default\",trigger=\"manual\"} 1\n"),
            "manual promotion counted on {}:\n{body}",
            node.id
        );
        // The last change is the promotion, completed within the last minute.
        let samples = parse_exposition(&body).expect("parses");
        let last_change = samples
            .iter()
            .find(|(n, l, _)| {
                n == "failover_group_last_change_timestamp_seconds" && l["group"] == "default"
            })
            .map(|(_, _, v)| *v)
            .expect("last change time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            (now - 60.0..=now + 1.0).contains(&last_change),
            "last change at {last_change}, now {now}"
        );
    }
}

/// Controllers that cannot vouch for their state answer 503 on `/health` and `/active`,
/// with the reason: a leader no quorum acknowledges (three of five controllers killed),
/// then a controller that knows no leader (the leader killed too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_without_quorum_report_no_active_site() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let leader = cluster.wait_ready(READY).await.leader;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .expect("a follower");
    let http_of = |id: u64| {
        cluster
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.http_addr.clone())
            .expect("known controller")
    };
    let (leader_http, follower_http) = (http_of(leader), http_of(follower));
    eventually("site-a active on leader and follower", SETTLE, || async {
        let a = get(&leader_http, "/active/default/site-a").await;
        let b = get(&follower_http, "/active/default/site-a").await;
        (a.map(|r| r.0) == Some(200) && b.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;

    let others: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id != leader && id != follower)
        .collect();
    for id in others {
        cluster.kill9(id);
    }
    // Whichever notices first: the heartbeat count or the expired quorum confirmation.
    let reason = stops_vouching(&leader_http, leader).await;
    assert!(
        reason.contains("without a quorum") || reason.contains("no quorum confirmation"),
        "reason: {reason}"
    );

    cluster.kill9(leader);
    // With pre-vote the follower keeps naming the dead leader (no election can win), so
    // what it lacks is a quorum confirmation; once it campaigns it knows no leader.
    let reason = stops_vouching(&follower_http, follower).await;
    assert!(
        reason.contains("no leader") || reason.contains("no quorum confirmation"),
        "reason: {reason}"
    );
}

/// Waits until controller `id` answers 503 for site-a on `/active` and on `/health`;
/// returns the reason `/active` gave.
async fn stops_vouching(addr: &str, id: u64) -> String {
    // `/active` may stop a little earlier than `/health`: it also needs a recent quorum
    // confirmation of its applied state.
    eventually(
        &format!("controller {id} to stop vouching for site-a"),
        SETTLE,
        || async move {
            let (status, body) = get(addr, "/active/default/site-a").await?;
            let (health, _) = get(addr, "/health").await?;
            (status == 503 && health == 503).then_some(body)
        },
    )
    .await
}

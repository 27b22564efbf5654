//! The history kept whole on disk and bounded in memory, across processes: with a window
//! of 3 records, a cluster goes through more changes of active site and pause events than
//! that (and enough log entries for a snapshot and a purge), then one controller restarts
//! and another loses its data dir and rejoins with `--join-existing` (catching up by
//! snapshot): every controller serves the whole history, in order, from its own store.

use std::process::Command;
use std::time::Duration;

use crate::common::{eventually, failover_bin, Cluster};
use failover_proto::admin::{HistoryEntry, PauseRequest, PromoteRequest, ResumeRequest};

const WINDOW: &str = "3";
/// Changes of active site (beyond the creation).
const CHANGES: usize = 6;
/// Pause and resume pairs: 2 log entries each, past the 1,000 entries after which a
/// snapshot is taken and the log before it purged, on every controller (the first
/// interval is stretched to up to 1,667 entries by node id: `SnapshotSchedule::stagger`).
const PAUSE_PAIRS: usize = 900;

fn start(cluster: &mut Cluster, id: u64, join: bool) {
    let mut args = vec!["--history-window", WINDOW];
    if join {
        args.push("--join-existing");
    }
    cluster.start_with(id, &args, &[]);
}

/// Controller `id`'s own history of the default group (its local store, no forwarding).
async fn local_history(cluster: &Cluster, id: u64) -> Option<Vec<HistoryEntry>> {
    let addr = cluster.nodes.iter().find(|n| n.id == id)?.addr.clone();
    let history = cluster
        .client()
        .stale_history(&addr, "default")
        .await
        .ok()?;
    Some(history.entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_controller_serves_the_whole_history_after_restart_and_rejoin() {
    let mut cluster = Cluster::new();
    for id in 1..=5 {
        start(&mut cluster, id, false);
    }
    cluster.wait_ready(Duration::from_secs(30)).await;
    let mut client = cluster.client();
    for i in 0..CHANGES {
        let site = if i.is_multiple_of(2) {
            "site-b"
        } else {
            "site-a"
        };
        client
            .promote(PromoteRequest {
                group: "default".into(),
                site: site.into(),
                reason: format!("change {i}"),
                actor: "test".into(),
                wait: true,
                force: true,
            })
            .await
            .unwrap_or_else(|e| panic!("promote {i} to {site}: {e}"));
    }
    for i in 0..PAUSE_PAIRS {
        let reason = format!("pair {i}");
        client
            .pause(PauseRequest {
                group: "default".into(),
                reason: reason.clone(),
                actor: "test".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("pause {i}: {e}"));
        client
            .resume(ResumeRequest {
                group: "default".into(),
                reason,
                actor: "test".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("resume {i}: {e}"));
    }

    // The whole history through the leader: every change and pause event, in order.
    let history = client.history("default").await.expect("history").entries;
    let changes: Vec<&HistoryEntry> = history
        .iter()
        .filter(|e| e.kind != "pause" && e.kind != "resume")
        .collect();
    assert_eq!(changes.len(), CHANGES + 1, "{changes:?}");
    for (i, pair) in changes.windows(2).enumerate() {
        assert_eq!(pair[1].epoch, pair[0].epoch + 1, "change {i}");
        assert_eq!(pair[1].from, pair[0].to, "change {i}");
    }
    let pauses: Vec<(String, String)> = history
        .iter()
        .filter(|e| e.kind == "pause" || e.kind == "resume")
        .map(|e| (e.kind.clone(), e.reason.clone()))
        .collect();
    let expected: Vec<(String, String)> = (0..PAUSE_PAIRS)
        .flat_map(|i| {
            [
                ("pause".to_owned(), format!("pair {i}")),
                ("resume".to_owned(), format!("pair {i}")),
            ]
        })
        .collect();
    assert_eq!(pauses, expected);

    // `failover history --limit`: the newest entries, in the same order.
    let out = Command::new(failover_bin())
        .args([
            "history", "--group", "default", "--limit", "4", "-o", "json",
        ])
        .env("FAILOVER_ENDPOINTS", cluster.endpoints())
        .output()
        .expect("run failover history");
    assert!(out.status.success(), "{out:?}");
    let limited: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("history JSON");
    let reasons: Vec<&str> = limited
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default())
        .collect();
    let tail: Vec<&str> = history[history.len() - 4..]
        .iter()
        .map(|e| e.reason.as_str())
        .collect();
    assert_eq!(reasons, tail);

    // Paging back with `before_unix_ms`, deep into the archive (the window holds 3 of
    // each kind): each page is the newest entries completed before the bound.
    let mut before = 0;
    for page in 0..4 {
        let got = client
            .history_page("default", 50, before)
            .await
            .unwrap_or_else(|e| panic!("page {page}: {e}"))
            .entries;
        let eligible: Vec<&HistoryEntry> = history
            .iter()
            .filter(|e| before == 0 || e.completed_at_unix_ms < before)
            .collect();
        let expected: Vec<&HistoryEntry> = eligible[eligible.len().saturating_sub(50)..].to_vec();
        assert_eq!(got.iter().collect::<Vec<_>>(), expected, "page {page}");
        before = got.first().expect("a full page").completed_at_unix_ms;
    }

    // Every controller has it all from its own store (a follower of a loaded machine
    // may still be applying the 1,300 changes).
    for id in 1..=5 {
        let got = eventually(
            &format!("controller {id}'s history"),
            Duration::from_secs(60),
            || async { local_history(&cluster, id).await.filter(|h| *h == history) },
        )
        .await;
        assert_eq!(got.len(), history.len());
    }

    // A follower restarts; another loses its data dir and rejoins from the others.
    let leader = cluster.client().status().await.expect("status").leader;
    let mut followers = (1..=5).filter(|id| *id != leader);
    let restarted = followers.next().expect("a follower");
    let wiped = followers.next().expect("another follower");
    cluster.kill9(restarted);
    cluster.kill9(wiped);
    std::fs::remove_dir_all(cluster.data_dir().join(format!("controller-{wiped}")))
        .expect("lose the disk");
    start(&mut cluster, restarted, false);
    start(&mut cluster, wiped, true);
    for id in [restarted, wiped] {
        eventually(
            &format!("controller {id}'s history after the restart"),
            Duration::from_secs(60),
            || async { local_history(&cluster, id).await.filter(|h| *h == history) },
        )
        .await;
    }
    let log = cluster.log_of(wiped);
    assert!(
        log.contains("installed a snapshot"),
        "the rejoined controller caught up by snapshot: {log}"
    );
}

//! docs/runbook.md, run: every command the runbook tells an operator to type is run here
//! against a real five-controller cluster (crate::common::Cluster), with the checks the runbook
//! tells the operator to make. `curl` stands in for the operator's HTTP client.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{alive, eventually, failover_bin, workers, Cluster, Proc};
use serde_json::Value;

/// `failover ARGS` with `FAILOVER_ENDPOINTS` set to every controller, as the runbook does.
fn failover(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(failover_bin())
        .args(args)
        .env("FAILOVER_ENDPOINTS", cluster.endpoints())
        .output()
        .expect("run failover")
}

/// Like [`failover`], and the command must succeed; returns stdout.
fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = failover(cluster, args);
    assert!(
        out.status.success(),
        "failover {args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `failover status --output json`, the default group's (active_site, epoch, phase).
fn group_of(cluster: &Cluster) -> (String, u64, String) {
    let status = json(&ok(cluster, &["status", "--output", "json"]));
    let group = &status["groups"][0];
    (
        group["active_site"].as_str().unwrap_or_default().to_owned(),
        group["epoch"].as_u64().unwrap_or_default(),
        group["phase"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `curl -s -o /dev/null -w '%{http_code}' http://ADDR/PATH`.
fn http_code(addr: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -s http://ADDR/metrics | grep -E '^failover_(raft_leader_id|group_epoch|group_active)' | sort`.
fn metrics(addr: &str) -> Vec<String> {
    let out = Command::new("curl")
        .args(["-s", "-m", "5"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("failover_raft_leader_id")
                || l.starts_with("failover_group_epoch")
                || l.starts_with("failover_group_active")
        })
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect()
}

fn controller_dir(cluster: &Cluster, id: u64) -> std::path::PathBuf {
    cluster.data_dir().join(format!("controller-{id}"))
}

/// `cp -a FROM TO`.
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Waits until controller `id` has exited by itself; its exit code.
async fn exit_code_of(cluster: &mut Cluster, id: u64) -> Option<i32> {
    let pid = cluster
        .nodes
        .iter()
        .find(|n| n.id == id)
        .and_then(|n| n.pid());
    let pid = pid.expect("controller started");
    eventually(
        &format!("controller {id} to exit"),
        Duration::from_secs(30),
        || async move { (!alive(pid)).then_some(()) },
    )
    .await;
    cluster.terminate(id, Duration::from_secs(1))
}

struct Sites {
    dir: std::path::PathBuf,
    a: Proc,
    b: Option<Proc>,
}

/// One executor per data site, site-a running its worker, site-b ready.
async fn executors(cluster: &Cluster) -> Sites {
    let dir = cluster.data_dir().join("work");
    std::fs::create_dir_all(&dir).expect("work dir");
    let script = workers::script(&dir);
    let script = script.to_str().expect("utf8");
    let a = cluster.exec("site-a", &["--id", "exec-a"], &[script]);
    let b = cluster.exec("site-b", &["--id", "exec-b"], &[script]);
    eventually("site-a's worker", Duration::from_secs(60), || async {
        (!workers::live(&dir, "site-a").is_empty()).then_some(())
    })
    .await;
    cluster.wait_executor_ready("site-b").await;
    Sites { dir, a, b: Some(b) }
}

/// Runbook: planned switchover, then the split-brain checks (`/active`, metrics, leases
/// and the workers' fencing value compared across every controller), a whole site dark
/// (automatic failover, no automatic failback), and a lost quorum (status says the view
/// may be stale) and its recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_switchover_split_brain_site_dark_and_lost_quorum() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let mut sites = executors(&cluster).await;

    // Planned switchover.
    let table = ok(&cluster, &["status"]);
    assert!(table.contains("site-a"), "{table}");
    assert_eq!(group_of(&cluster).0, "site-a");
    ok(
        &cluster,
        &[
            "promote",
            "site-b",
            "--group",
            "default",
            "--reason",
            "planned switchover",
            "--wait",
        ],
    );
    let (active, epoch, phase) = group_of(&cluster);
    assert_eq!((active.as_str(), phase.as_str()), ("site-b", "active"));
    let history = json(&ok(
        &cluster,
        &["history", "--group", "default", "--output", "json"],
    ));
    let last = history.as_array().and_then(|h| h.last()).expect("history");
    assert_eq!(last["kind"], "promote", "{last}");
    assert_eq!(last["to"], "site-b", "{last}");
    assert_eq!(last["reason"], "planned switchover", "{last}");

    // Split-brain checks: every controller answers /active 200 for site-b only (followers
    // follow within a heartbeat), and reports the same leader, epoch and active site.
    let http: Vec<String> = cluster.nodes.iter().map(|n| n.http_addr.clone()).collect();
    for addr in &http {
        eventually(
            &format!("{addr} to answer 200 for site-b"),
            // A heartbeat on an idle machine; a loaded one can miss quorum confirmations
            // for a while, during which the controller answers 503.
            Duration::from_secs(30),
            || async move { (http_code(addr, "/active/default/site-b") == "200").then_some(()) },
        )
        .await;
        assert_eq!(http_code(addr, "/active/default/site-a"), "503", "{addr}");
    }
    let views: Vec<Vec<String>> = http.iter().map(|a| metrics(a)).collect();
    for view in &views {
        assert_eq!(view, &views[0], "controllers disagree: {views:#?}");
    }
    let epoch_line = format!("failover_group_epoch{{group=\"default\"}} {epoch}");
    assert!(views[0].contains(&epoch_line), "{:#?}", views[0]);
    assert!(
        views[0].contains(&"failover_group_active{group=\"default\",site=\"site-b\"} 1".into()),
        "{:#?}",
        views[0]
    );
    let leases = eventually("site-b's lease", Duration::from_secs(10), || async {
        let leases = json(&ok(
            &cluster,
            &["leases", "--group", "default", "--output", "json"],
        ));
        let all = leases.as_array().cloned().unwrap_or_default();
        (!all.is_empty()).then_some(all)
    })
    .await;
    for lease in &leases {
        assert_eq!(lease["site"], "site-b", "{lease}");
        assert_eq!(lease["epoch"], epoch, "{lease}");
    }
    let token = eventually("site-b's worker", Duration::from_secs(20), || async {
        std::fs::read_to_string(sites.dir.join("token-site-b-0")).ok()
    })
    .await;
    assert_eq!(
        token.trim(),
        epoch.to_string(),
        "worker's FAILOVER_FENCING_TOKEN"
    );

    // A whole site dark: site-b (active) loses its controllers and its executor.
    drop(sites.b.take());
    cluster.kill9(3);
    cluster.kill9(4);
    eventually(
        "automatic failover to site-a",
        Duration::from_secs(60),
        || async {
            let out = failover(&cluster, &["status", "--output", "json"]);
            let status: Value = serde_json::from_slice(&out.stdout).ok()?;
            (status["groups"][0]["active_site"] == "site-a"
                && status["groups"][0]["phase"] == "active")
                .then_some(())
        },
    )
    .await;
    let history = json(&ok(
        &cluster,
        &["history", "--group", "default", "--output", "json"],
    ));
    let last = history.as_array().and_then(|h| h.last()).expect("history");
    assert_eq!(last["kind"], "failover", "{last}");
    cluster.start(3);
    cluster.start(4);
    cluster.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        group_of(&cluster).0,
        "site-a",
        "no automatic failback when site-b is back"
    );

    // Lost quorum: 3 of 5 controllers gone. Status still answers from what it can reach
    // and says the view may be stale (consistent: false), or exits non-zero.
    for id in [3, 4, 5] {
        cluster.kill9(id);
    }
    let out = failover(&cluster, &["status", "--output", "json"]);
    let stale = !out.status.success()
        || serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|s| s["consistent"] == Value::Bool(false));
    assert!(
        stale,
        "status without a quorum: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    for id in [3, 4, 5] {
        cluster.start(id);
    }
    cluster.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(group_of(&cluster).0, "site-a");
    drop(sites.a);
}

/// Runbook: replacing a controller whose disk is gone. Started on an empty data dir the
/// controller refuses (naming `--join-existing`); with the flag it catches up from the
/// leader, and then carries the quorum: with site-a's two controllers down, the rest
/// (3, 4, 5) still promote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_replacing_a_controller_whose_disk_is_gone() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    ok(
        &cluster,
        &["promote", "site-b", "--reason", "before", "--wait"],
    );
    let (_, epoch, _) = group_of(&cluster);

    // The empty-dir check ignores a cluster younger than its formation window.
    let window = failover_controller::rejoin::FORMATION_WINDOW;
    eventually(
        "the cluster to outlive its formation window",
        window * 3,
        || async {
            let history = json(&ok(&cluster, &["history", "--output", "json"]));
            let created = history[0]["requested_at_unix_ms"].as_u64()?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_millis() as u64;
            (now.saturating_sub(created) > window.as_millis() as u64 + 1000).then_some(())
        },
    )
    .await;

    cluster.kill9(3);
    std::fs::remove_dir_all(controller_dir(&cluster, 3)).expect("lose the disk");
    cluster.start(3);
    let code = exit_code_of(&mut cluster, 3).await;
    let log = cluster.log_of(3);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("holds no Raft state") && log.contains("--join-existing"),
        "{log}"
    );

    cluster.start_with(3, &["--join-existing"], &[]);
    let http = cluster.nodes[2].http_addr.clone();
    let epoch_line = format!("failover_group_epoch{{group=\"default\"}} {epoch}");
    eventually(
        "controller 3 to apply the cluster's state",
        Duration::from_secs(30),
        || {
            let http = http.clone();
            let epoch_line = epoch_line.clone();
            async move { metrics(&http).contains(&epoch_line).then_some(()) }
        },
    )
    .await;
    // Once it holds state, a restart needs no flag.
    assert_eq!(cluster.terminate(3, Duration::from_secs(15)), Some(0));
    cluster.start(3);
    cluster.wait_ready(Duration::from_secs(30)).await;

    cluster.kill9(1);
    cluster.kill9(2);
    ok(
        &cluster,
        &["promote", "site-a", "--reason", "after", "--wait"],
    );
    assert_eq!(
        group_of(&cluster),
        ("site-a".into(), epoch + 1, "active".into())
    );
}

/// Runbook: backing up a controller (stop, copy, start) and restoring a whole cluster from
/// that one copy: the restored controller starts as usual, the others on empty data dirs
/// with `--join-existing`, and the state is the backup's (a promotion after the backup is
/// gone, as the runbook warns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_backup_and_restore() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    ok(
        &cluster,
        &["promote", "site-b", "--reason", "in the backup", "--wait"],
    );
    let (_, epoch_in_backup, _) = group_of(&cluster);

    // Backup: stop controller 5, copy its data dir, start it again.
    assert_eq!(cluster.terminate(5, Duration::from_secs(15)), Some(0));
    let backup = cluster.data_dir().join("backup-controller-5");
    copy_dir(&controller_dir(&cluster, 5), &backup);
    cluster.start(5);
    cluster.wait_ready(Duration::from_secs(30)).await;
    ok(
        &cluster,
        &[
            "promote",
            "site-a",
            "--reason",
            "after the backup",
            "--wait",
        ],
    );

    // Every controller's disk is lost.
    cluster.kill_all();
    for id in 1..=5 {
        std::fs::remove_dir_all(controller_dir(&cluster, id)).expect("lose the disk");
    }

    // Restore: controller 5 from the backup, the others empty, joining it.
    copy_dir(&backup, &controller_dir(&cluster, 5));
    cluster.start(5);
    for id in 1..=4 {
        cluster.start_with(id, &["--join-existing"], &[]);
    }
    cluster.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(
        group_of(&cluster),
        ("site-b".into(), epoch_in_backup, "active".into()),
        "the state of the backup"
    );
    let history = json(&ok(&cluster, &["history", "--output", "json"]));
    let reasons: Vec<&str> = history
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"in the backup"), "{reasons:?}");
    assert!(!reasons.contains(&"after the backup"), "{reasons:?}");
}

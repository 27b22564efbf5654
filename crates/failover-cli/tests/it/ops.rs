//! What an operator sees during maintenance and outages: `failover pause` / `resume` from
//! the command line (with the history actor of a process without `USER`), and controller
//! logs that stay short and plain while a site is down.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{eventually, failover_bin, Cluster};

const READY: Duration = Duration::from_secs(30);

/// `failover ARGS --endpoints ...` with `USER` unset, as under systemd or cron.
fn failover_without_user(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    let out = Command::new(failover_bin())
        .args(args)
        .args(["--endpoints", &cluster.endpoints()])
        .env_remove("USER")
        .output()
        .expect("run failover");
    assert!(
        out.status.success(),
        "failover {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The user name of this process's uid and the host name, as `id -un` and `hostname` say.
fn expected_actor() -> String {
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd).args(args).output().expect("run");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    format!("{}@{}", run("id", &["-un"]), run("hostname", &[]))
}

/// `pause --group` then `resume` (every group) from the CLI: status shows the pause in the
/// table and the JSON; pausing again changes nothing and says so; the history records both
/// with the uid's user name and the host name as the actor although `USER` is unset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_from_the_cli() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let claimed = expected_actor();
    assert!(!claimed.starts_with("unknown@"), "{claimed}");
    // History names the certificate's identity, with what the CLI claimed.
    let actor = format!("operator/dev (as {claimed})");

    let out = failover_without_user(
        &cluster,
        &["pause", "--group", "default", "--reason", "switch upgrade"],
    );
    let printed = stdout(&out);
    assert!(
        printed.contains(&format!(
            "group default: automatic failover paused by {actor} since "
        )) && printed.trim_end().ends_with(": switch upgrade"),
        "{printed}"
    );
    let unknown = Command::new(failover_bin())
        .args([
            "pause",
            "--group",
            "nope",
            "--endpoints",
            &cluster.endpoints(),
        ])
        .output()
        .expect("run failover");
    assert_eq!(unknown.status.code(), Some(1));
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("unknown group `nope`"), "{said}");
    let again = stdout(&failover_without_user(
        &cluster,
        &["pause", "--group", "default"],
    ));
    assert!(again.contains("already paused; nothing changed"), "{again}");

    let table = stdout(&failover_without_user(&cluster, &["status"]));
    assert!(
        table.contains(&format!(
            "group default: automatic failover paused by {actor}"
        )),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &failover_without_user(&cluster, &["status", "--output", "json"]).stdout,
    )
    .expect("status JSON");
    let group = &json["groups"][0];
    assert_eq!(group["paused"], true, "{json}");
    assert_eq!(group["paused_by"], actor.as_str());
    assert_eq!(group["paused_reason"], "switch upgrade");
    assert!(group["paused_since_unix_ms"]
        .as_u64()
        .is_some_and(|t| t > 0));

    let resumed = stdout(&failover_without_user(
        &cluster,
        &["resume", "--reason", "upgrade done"],
    ));
    assert!(
        resumed.contains("group default: automatic failover is on"),
        "{resumed}"
    );
    let history: serde_json::Value = serde_json::from_slice(
        &failover_without_user(&cluster, &["history", "--output", "json"]).stdout,
    )
    .expect("history JSON");
    let entries: Vec<(String, String, String)> = history
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("kind"), s("actor"), s("reason"))
        })
        .filter(|(kind, ..)| kind == "pause" || kind == "resume")
        .collect();
    assert_eq!(
        entries,
        vec![
            ("pause".into(), actor.clone(), "switch upgrade".into()),
            ("resume".into(), actor.clone(), "upgrade done".into()),
        ]
    );
}

/// The lines about unreachable peers in `log`: `(ours about controller 1, ours about
/// controller 2, openraft's)`.
fn peer_lines(log: &str) -> (usize, usize, Vec<&str>) {
    let ours = |id: u64| {
        log.lines()
            .filter(|l| l.contains(&format!("controller {id} unreachable")))
            .count()
    };
    let openraft = log
        .lines()
        .filter(|l| l.contains("openraft"))
        .filter(|l| {
            l.contains("Unreachable")
                || l.contains("RPCError")
                || l.contains("while requesting")
                || l.contains("heartbeat")
        })
        .collect();
    (ours(1), ours(2), openraft)
}

/// A site down for several seconds (one controller frozen, whose calls time out, and one
/// killed, whose connections are refused) leaves one line per peer in the leader's log,
/// not one per retry, and one line per peer when it is back; no log file written with
/// stderr redirected holds an ANSI escape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_outage_logs_one_line_per_peer_down_and_up() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.elect_until(|leader| leader > 2).await;
    let leader = cluster.wait_ready(READY).await.leader;
    let before = cluster.log_of(leader).len();
    let frozen = cluster.node_mut(1).pid().expect("controller 1 runs");
    // SAFETY: kill(2) on a child of this test; the cluster SIGKILLs it on drop anyway.
    unsafe { libc::kill(frozen, libc::SIGSTOP) };
    cluster.kill9(2);
    let since_kill = |cluster: &Cluster| cluster.log_of(leader)[before..].to_owned();
    eventually("the leader logs both peers down", READY, || async {
        let log = since_kill(&cluster);
        (log.contains("controller 1 unreachable") && log.contains("controller 2 unreachable"))
            .then_some(())
    })
    .await;
    // openraft retries each peer many times a second: watch the log for a while, and at
    // every look it still holds one line per peer.
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        let log = since_kill(&cluster);
        let (one, two, openraft) = peer_lines(&log);
        assert_eq!((one, two), (1, 1), "peer lines during the outage:\n{log}");
        assert!(openraft.is_empty(), "openraft's own lines: {openraft:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // SAFETY: as above.
    unsafe { libc::kill(frozen, libc::SIGCONT) };
    cluster.start(2);
    eventually("the leader logs both peers back", READY, || async {
        let log = since_kill(&cluster);
        (log.contains("controller 1 reachable again")
            && log.contains("controller 2 reachable again"))
        .then_some(())
    })
    .await;
    let log = since_kill(&cluster);
    let (one, two, openraft) = peer_lines(&log);
    assert_eq!((one, two), (1, 1), "{log}");
    assert!(openraft.is_empty(), "openraft's own lines: {openraft:#?}");
    for node in &cluster.nodes {
        let log = cluster.log_of(node.id);
        assert!(!log.is_empty());
        assert!(
            !log.contains("\x1b["),
            "ANSI escape in controller {}'s log",
            node.id
        );
    }
}

/// The executor logs its lease state once per change, standby included: many standby
/// polls and renewals later its log still holds one `standby` line, and one `acquired`
/// line after its site is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_logs_each_lease_state_once() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let dir = cluster.data_dir().join("work");
    std::fs::create_dir_all(&dir).expect("work dir");
    let script = crate::common::workers::script(&dir);
    let _b = cluster.exec(
        "site-b",
        &["--instances", "1"],
        &[script.to_str().expect("utf8")],
    );
    let log_path = cluster.data_dir().join("exec-site-b.log");
    let count = |what: &str| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    let standby = "lease state: standby (site-a active at epoch 1)";
    eventually("the standby line", READY, || async {
        (count(standby) > 0).then_some(())
    })
    .await;
    cluster.wait_executor_ready("site-b").await;
    // Standby polls every 100 ms and reports every 250 ms: watch a few seconds of them.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert_eq!(count(standby), 1, "standby logged more than once");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = cluster.client();
    client
        .promote(failover_proto::admin::PromoteRequest {
            group: "default".into(),
            site: "site-b".into(),
            actor: "test@ops".into(),
            wait: true,
            ..Default::default()
        })
        .await
        .expect("promote site-b");
    let acquired = "lease state: acquired (epoch 2,";
    eventually("the acquired line", READY, || async {
        (count(acquired) > 0).then_some(())
    })
    .await;
    // Renewals every 250 ms: still one line.
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        assert_eq!(count(acquired), 1, "acquired logged more than once");
        assert_eq!(count("lease state: standby"), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

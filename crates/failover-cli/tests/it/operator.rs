//! What an operator sees during an incident, with real processes: a frozen site's
//! executor shown fenced (never running) once its lease deadline passed, a lost quorum
//! said plainly with its own exit code and within a bounded time, endpoint forms, and
//! every documented exit code (docs/cli.md).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{eventually, failover_bin, workers, Cluster};
use serde_json::Value;

/// Runs `failover ARGS` and returns its output and how long it took.
fn failover(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(failover_bin())
        .args(args)
        .env_remove("FAILOVER_ENDPOINTS")
        .output()
        .expect("run failover");
    (out, started.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `signal` to controller `id` of the cluster.
fn signal(cluster: &Cluster, id: u64, signal: i32) {
    let pid = cluster
        .nodes
        .iter()
        .find(|n| n.id == id)
        .and_then(|n| n.pid())
        .expect("running controller");
    // SAFETY: kill(2) on a controller this test started.
    unsafe { libc::kill(pid, signal) };
}

/// Exit codes 2 (usage) and 1 (bad endpoint) need no cluster; 3 (nothing answered)
/// comes at once for a refused port and an unresolvable host.
#[test]
fn exit_codes_without_a_cluster() {
    let (out, _) = failover(&["status", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let (out, _) = failover(&["status", "--endpoints", "localhost"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the port is missing"),
        "{}",
        stderr(&out)
    );

    let port = crate::common::free_ports(1)[0];
    let nothing = format!("127.0.0.1:{port}");
    for command in ["status", "history", "leases"] {
        let (out, took) = failover(&[command, "--insecure", "--endpoints", &nothing]);
        assert_eq!(out.status.code(), Some(3), "{command}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("connection refused"),
            "{command}: {}",
            stderr(&out)
        );
        assert!(took < Duration::from_secs(1), "{command} took {took:?}");
    }
    let (out, took) = failover(&["promote", "site-b", "--insecure", "--endpoints", &nothing]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(took < Duration::from_secs(1), "promote took {took:?}");

    let (out, took) = failover(&[
        "status",
        "--insecure",
        "--endpoints",
        "no-such-host.invalid:7001",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot resolve the host name"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// `failover check` summarizes a valid file (exit 0) and lists every error of an invalid
/// one with its field path, each once (exit 1), without contacting anything.
#[test]
fn check_validates_a_topology_file() {
    let cluster = Cluster::new(); // only for its topology file; nothing runs
    let config = cluster.config.to_str().expect("utf8");
    let (out, _) = failover(&["check", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary = stdout(&out);
    for needle in [
        "valid topology `test`",
        "controllers: 5; Raft quorum: 3",
        "site-a > site-b",
        "L1: a lost active site's group runs at a standby within 5500 ms",
        "L2:",
    ] {
        assert!(summary.contains(needle), "{needle}: {summary}");
    }
    let text = std::fs::read_to_string(&cluster.config).expect("read");
    let bad = cluster.data_dir().join("bad.yaml");
    std::fs::write(
        &bad,
        text.replace("id: 2,", "id: 1,")
            .replace("sites: [site-a, site-b]", "sites: [site-a, site-z]"),
    )
    .expect("write");
    let (out, _) = failover(&["check", "--config", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let id_error = "bad.yaml: sites[0].controllers[1].id: controller id 1 is used twice";
    let site_error = "bad.yaml: groups[0].sites[1]: unknown site `site-z`";
    assert_eq!(err.matches(id_error).count(), 1, "{err}");
    assert_eq!(err.matches(site_error).count(), 1, "{err}");
    assert!(err.contains("(2 errors)"), "{err}");
}

/// On a healthy cluster: exit 0 with the JSON a superset of the table (`-o json`), the
/// URL form of an endpoint accepted, the HTTP port named as the likely mistake, a fresh
/// cluster's hold explained by what is missing (not "site-a is lost"), and no panic when
/// the reader of any command's output goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_cluster_answers_and_explains() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let endpoints = cluster.endpoints();

    // No executor has reported yet: after failure_timeout the leader holds the group and
    // says what is missing.
    let json = eventually("a held-back reason", Duration::from_secs(15), || async {
        let (out, _) = failover(&["status", "-o", "json", "--endpoints", &endpoints]);
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        json["groups"][0]["held_back"].is_string().then_some(json)
    })
    .await;
    let group = &json["groups"][0];
    let held = group["held_back"].as_str().expect("held");
    assert!(!held.contains("is lost"), "{held}");
    assert!(
        held.contains("no executor at site-a") && held.contains("no executor at site-b"),
        "{held}"
    );
    assert_eq!(json["quorum"]["confirmed"], true, "{json}");
    assert_eq!(group["active_site"], "site-a");
    assert_eq!(group["promoting_to"], Value::Null);
    assert_eq!(group["last_change"]["kind"], "created");
    assert!(group["active_since_unix_ms"].as_u64().is_some(), "{json}");
    assert_eq!(group["lost_sites"], serde_json::json!([]));

    let (out, took) = failover(&["status", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(took < Duration::from_millis(1500), "status took {took:?}");
    let table = stdout(&out);
    for needle in [
        "ACTIVE SINCE",
        "last change: created",
        "held back:   no executor",
    ] {
        assert!(table.contains(needle), "{needle}: {table}");
    }

    let node = &cluster.nodes[0];
    let url = format!("http://{}", node.addr);
    let (out, _) = failover(&["status", "--endpoints", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (out, took) = failover(&["status", "--endpoints", &node.http_addr]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is it the HTTP port"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");

    for args in [
        &["status"][..],
        &["status", "-o", "json"],
        &["history"],
        &["history", "-o", "json"],
        &["leases"],
        &["leases", "-o", "json"],
    ] {
        let mut child = Command::new(failover_bin())
            .args(args)
            .args(["--endpoints", &endpoints])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("ends");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
    }
}

/// With 3 of 5 controllers frozen, every command says "no quorum" within a bounded
/// time and exits 4; status and history still show what the reachable controllers know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_quorum_is_said_plainly_and_exits_4() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let endpoints = cluster.endpoints();
    // The controllers left running must have applied the group's creation, or their
    // local view has nothing to show once the quorum is gone.
    let client = cluster.client();
    for node in cluster.nodes.iter().filter(|n| n.site == "site-b") {
        eventually(
            &format!("controller {} to have applied the group", node.id),
            Duration::from_secs(15),
            || async {
                let history = client.stale_history(&node.addr, "default").await.ok()?;
                (!history.entries.is_empty()).then_some(())
            },
        )
        .await;
    }
    for id in [1, 2, 5] {
        signal(&cluster, id, libc::SIGSTOP);
    }
    // The first answers after the freeze may still come from a leader's last quorum.
    eventually(
        "status to see the quorum gone",
        Duration::from_secs(15),
        || async {
            let (out, _) = failover(&["status", "--endpoints", &endpoints]);
            (out.status.code() == Some(4)).then_some(())
        },
    )
    .await;

    let (out, took) = failover(&["status", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(took < Duration::from_millis(4500), "status took {took:?}");
    assert!(
        stderr(&out).contains("no quorum: 2 of 5 controllers reachable, 3 needed"),
        "{}",
        stderr(&out)
    );
    let table = stdout(&out);
    assert!(table.contains("possibly stale"), "{table}");
    assert!(table.contains("NO QUORUM: 2 of 5"), "{table}");
    assert!(
        table.contains("default"),
        "the group is still shown: {table}"
    );

    let (out, _) = failover(&["status", "-o", "json", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(4));
    let json: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(json["quorum"]["confirmed"], false, "{json}");
    assert_eq!(json["quorum"]["reachable"], 2, "{json}");
    assert_eq!(json["consistent"], false, "{json}");
    let reachable: Vec<u64> = json["controllers"]
        .as_array()
        .expect("controllers")
        .iter()
        .filter(|c| c["reachable"] == true)
        .filter_map(|c| c["id"].as_u64())
        .collect();
    assert_eq!(reachable, [3, 4], "{json}");

    let (out, took) = failover(&["history", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(took < Duration::from_secs(5), "history took {took:?}");
    assert!(stderr(&out).contains("possibly stale"), "{}", stderr(&out));
    assert!(stdout(&out).contains("created"), "{}", stdout(&out));

    let (out, took) = failover(&["leases", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(took < Duration::from_secs(5), "leases took {took:?}");

    let (out, took) = failover(&["promote", "site-b", "--force", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(took < Duration::from_millis(4500), "promote took {took:?}");
    assert!(stderr(&out).contains("no quorum"), "{}", stderr(&out));

    // Only the frozen controllers are named: nothing answered at all is exit 3.
    let frozen: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| [1, 2, 5].contains(&n.id))
        .map(|n| n.addr.as_str())
        .collect();
    let (out, took) = failover(&["status", "--endpoints", &frozen.join(",")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(took < Duration::from_millis(4500), "took {took:?}");
    assert!(
        stderr(&out).contains("no answer within"),
        "{}",
        stderr(&out)
    );
}

/// A whole site frozen (its controllers and its executor): once the executor's lease
/// deadline passed, status shows it fenced, with the time since, and its workers as
/// fenced, never as holding or running next to the new active site; every call answers
/// within about a second although two endpoints never answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_site_shows_its_executor_fenced() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    // The leader must outlive the freeze to remember site-a's executor (a new leader
    // never heard of it and shows only that site-a is lost).
    cluster.elect_until(|leader| leader >= 3).await;
    let dir = cluster.data_dir().join("work");
    std::fs::create_dir_all(&dir).expect("work dir");
    let script = workers::script(&dir);
    let script = script.to_str().expect("utf8").to_owned();
    let a = cluster.exec("site-a", &["--instances", "1"], &[&script]);
    let _b = cluster.exec("site-b", &["--instances", "1"], &[&script]);
    eventually("site-a's worker", Duration::from_secs(20), || async {
        (!workers::live(&dir, "site-a").is_empty()).then_some(())
    })
    .await;
    cluster.wait_executor_ready("site-b").await;
    let endpoints = cluster.endpoints();

    // Site-a holds: its executor is shown holding with time left on its lease, once the
    // report saying so reached the leader ("holding" alone comes from the replicated
    // lease, which can be granted before the executor's next report; a site frozen in
    // between leaves the leader with a last report of "connecting", shown as silent).
    let a_exec = eventually(
        "site-a's executor holding",
        Duration::from_secs(10),
        || async {
            let (out, _) = failover(&["status", "-o", "json", "--endpoints", &endpoints]);
            let json: Value = serde_json::from_slice(&out.stdout).ok()?;
            let e = executor_of(&json, "site-a")?.clone();
            (e["state"] == "holding" && e["lease"] == "acquired").then_some(e)
        },
    )
    .await;
    assert!(
        a_exec["lease_left_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{a_exec}"
    );
    assert_eq!(a_exec["fencing_value"], 1, "{a_exec}");

    a.signal(libc::SIGSTOP);
    signal(&cluster, 1, libc::SIGSTOP);
    signal(&cluster, 2, libc::SIGSTOP);

    let json = eventually(
        "site-b active and site-a's executor fenced",
        Duration::from_secs(30),
        || async {
            let (out, took) = failover(&["status", "-o", "json", "--endpoints", &endpoints]);
            let json: Value = serde_json::from_slice(&out.stdout).ok()?;
            // Whatever the moment, a site-a executor past its deadline is never holding.
            if let Some(e) = executor_of(&json, "site-a") {
                if e["state"] == "holding" {
                    assert!(e["lease_left_ms"].as_u64().is_some_and(|ms| ms > 0), "{e}");
                }
            }
            let done = out.status.code() == Some(0)
                && json["groups"][0]["active_site"] == "site-b"
                && executor_of(&json, "site-a")?["state"] == "fenced";
            if done {
                assert!(took < Duration::from_millis(2500), "status took {took:?}");
            }
            done.then_some(json)
        },
    )
    .await;
    let a_exec = executor_of(&json, "site-a").expect("site-a's executor");
    assert!(a_exec["fenced_for_ms"].is_u64(), "{a_exec}");
    assert_eq!(a_exec["lease_left_ms"], Value::Null, "{a_exec}");
    for worker in a_exec["workers"].as_array().expect("workers") {
        assert_eq!(worker["state"], "fenced", "{a_exec}");
    }
    assert_eq!(
        json["groups"][0]["lost_sites"],
        serde_json::json!(["site-a"])
    );
    assert_eq!(json["groups"][0]["last_change"]["kind"], "failover");

    // With the quorum intact, the CLI answers fast although site-a never answers (one
    // attempt at a frozen endpoint alone is 3 s; the bound is loose for loaded machines).
    let (out, took) = failover(&["status", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(took < Duration::from_millis(2500), "status took {took:?}");
    let table = stdout(&out);
    let a_lines: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("site-a") && !l.contains("127.0.0.1"))
        .collect();
    for line in &a_lines {
        assert!(
            !line.contains("running") || line.contains("last reported running"),
            "{table}"
        );
        assert!(!line.contains("holding"), "{table}");
    }
    assert!(table.contains("fenced (deadline passed"), "{table}");
    let (out, took) = failover(&["history", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(took < Duration::from_millis(2500), "history took {took:?}");
}

/// The first executor of `site` in a status JSON.
fn executor_of<'a>(json: &'a Value, site: &str) -> Option<&'a Value> {
    json["sites"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == site)?["executors"]
        .as_array()?
        .first()
}

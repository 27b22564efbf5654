//! The leader's executor registry with real processes: an executor that stops cleanly
//! deregisters, one killed with SIGKILL turns stale and `failover reload` does not wait
//! for it, and `failover exec` refuses a site or group the cluster does not run.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{eventually, failover_bin, workers, Cluster};
use failover_proto::admin::ExecutorStatus;

const READY: Duration = Duration::from_secs(30);

/// The executors the leader lists for `site`, by id.
async fn listed(cluster: &Cluster, site: &str) -> Option<Vec<ExecutorStatus>> {
    let status = cluster.client().status().await.ok()?;
    let site = status.sites.into_iter().find(|s| s.name == site)?;
    Some(site.executors)
}

fn id_of(e: &ExecutorStatus) -> &str {
    e.report.as_ref().map_or("", |r| r.executor_id.as_str())
}

/// Runs `failover exec` with `args` and waits up to `within` for it to exit (killing it
/// if it does not, which fails the test).
fn exec_once(cluster: &Cluster, args: &[&str], within: Duration) -> Output {
    let site = args
        .iter()
        .position(|a| *a == "--site")
        .and_then(|i| args.get(i + 1))
        .copied()
        .filter(|s| ["site-a", "site-b", "witness"].contains(s))
        // An unknown site has no certificate: any engine's passes the check that refuses it.
        .unwrap_or("site-a");
    let child = Command::new(failover_bin())
        .arg("exec")
        .args(args)
        .arg("--config")
        .arg(&cluster.config)
        .args(["--", "/bin/sh", "-c", "sleep 1000"])
        .envs(cluster.engine_env(site))
        .env("FAILOVER_ENDPOINTS", cluster.endpoints())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exec");
    let mut child = child;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("exec output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("`failover exec {args:?}` was still running after {within:?}");
}

/// `failover exec` for an unknown site and group, and for the witness (a site in no
/// group), exits 1 at start with a message naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_refuses_unknown_site_group_and_witness() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;

    let out = exec_once(
        &cluster,
        &["--site", "site-z", "--group", "nope"],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown site `site-z`"), "{stderr}");
    assert!(stderr.contains("unknown group `nope`"), "{stderr}");
    assert!(stderr.contains("site-a, site-b, witness"), "{stderr}");

    let out = exec_once(&cluster, &["--site", "witness"], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("site `witness` is a witness"), "{stderr}");
}

/// An executor stopped with SIGTERM disappears from the leader's list at once (it
/// deregisters); one killed with SIGKILL is listed as stale after the stale bound, and a
/// reload finishes with the live executor alone, listing the stale one as skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_executor_deregisters_and_reload_skips_a_dead_one() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let dir = cluster.data_dir().join("work");
    std::fs::create_dir_all(&dir).expect("work dir");
    let script = workers::script(&dir);
    let script = script.to_str().expect("utf8");
    let live = cluster.exec("site-a", &["--id", "exec-live"], &[script]);
    let stopping = cluster.exec("site-a", &["--id", "exec-stopping"], &[script]);
    let killed = cluster.exec("site-a", &["--id", "exec-killed"], &[script]);
    eventually("three executors listed", READY, || async {
        let executors = listed(&cluster, "site-a").await?;
        (executors.len() == 3 && executors.iter().all(|e| !e.stale)).then_some(())
    })
    .await;

    stopping.signal(libc::SIGTERM);
    let stopped_at = Instant::now();
    let deregistered = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(executors) = listed(&cluster, "site-a").await {
                if !executors.iter().any(|e| id_of(e) == "exec-stopping") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        deregistered.is_ok(),
        "the stopped executor is still listed after 15 s; executors' log:\n{}",
        cluster.exec_log("site-a")
    );
    // Without deregistering it would stay listed for the 5 min forget bound.
    assert!(stopped_at.elapsed() < Duration::from_secs(15));

    killed.signal(libc::SIGKILL);
    let stale = eventually("the killed executor is stale", READY, || async {
        let executors = listed(&cluster, "site-a").await?;
        executors
            .into_iter()
            .find(|e| id_of(e) == "exec-killed" && e.stale)
    })
    .await;
    assert_eq!(
        stale.stale_after_ms, 1500,
        "failure_timeout_ms of the topology"
    );
    assert!(stale.last_seen_ms >= stale.stale_after_ms);
    assert_eq!(stale.forget_after_ms, 300_000);

    let table = Command::new(failover_bin())
        .args(["status", "--endpoints", &cluster.endpoints()])
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&table.stdout);
    let killed_line = table
        .lines()
        .find(|l| l.contains("exec-killed") && l.contains("default"))
        .unwrap_or_default();
    assert!(
        (killed_line.contains("silent for") && killed_line.contains("stale after 1.5s"))
            || killed_line.contains("fenced"),
        "{table}"
    );

    // A reload can roll back when a loaded machine starves the new worker's lease
    // renewal; that is the executor's business, not the registry's, so it gets three
    // tries. Every try must finish without waiting for the stale executor.
    let mut reloaded = false;
    for _ in 0..3 {
        let started = Instant::now();
        let out = Command::new(failover_bin())
            .args([
                "reload",
                "--site",
                "site-a",
                "--endpoints",
                &cluster.endpoints(),
            ])
            .output()
            .expect("run reload");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "reload took {:?}: {stdout}{stderr}",
            started.elapsed()
        );
        assert!(
            stdout.contains("exec-killed: skipped: stale"),
            "{stdout}{stderr}"
        );
        assert!(stdout.contains("exec-live: "), "{stdout}{stderr}");
        if out.status.success() {
            assert!(stdout.contains("exec-live: reloaded"), "{stdout}");
            reloaded = true;
            break;
        }
        eprintln!("reload rolled back, trying again: {stdout}{stderr}");
    }
    assert!(reloaded, "the live executor never finished a reload");
    drop(live);
}

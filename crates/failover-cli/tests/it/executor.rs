//! `failover exec` with real processes: shell-script workers that start a child of their
//! own, a real controller cluster, SIGSTOP and SIGKILL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{alive, eventually, failover_bin, workers, Cluster, Proc};
use failover_proto::admin::PromoteRequest;

/// Lease bounds of the test topology (`Timing::default()`) and the executor's stop grace.
const TTL: Duration = Duration::from_millis(3500);
const DRIFT: Duration = Duration::from_millis(250);
const STOP_GRACE: Duration = Duration::from_millis(500);
/// What a poll every 10 ms may add to an observed instant.
const OBSERVATION_SLACK: Duration = Duration::from_millis(100);

/// Waits until `n` workers (each with its child) of `site` are alive.
async fn wait_running(dir: &Path, site: &str, n: usize) -> Vec<i32> {
    eventually(
        &format!("{n} workers of {site} running"),
        Duration::from_secs(20),
        || async {
            let live = workers::live(dir, site);
            (live.len() == 2 * n).then_some(live)
        },
    )
    .await
}

/// Polls every 10 ms until none of `pids` is alive; returns when that was first seen.
async fn wait_all_dead(pids: &[i32], timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if !pids.iter().any(|p| alive(*p)) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "workers still alive after {timeout:?}: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The latest instant the workers may live, for a lease last renewable at `last_renewal`:
/// the executor's deadline `sent + ttl - drift - stop_grace`, plus polling slack.
fn lease_bound(last_renewal: Instant) -> Instant {
    last_renewal + TTL - DRIFT - STOP_GRACE + OBSERVATION_SLACK
}

async fn started(cluster: &mut Cluster) -> PathBuf {
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let dir = cluster.data_dir().join("work");
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

/// What a freeze test stops with SIGSTOP.
enum Freeze {
    Controllers,
    Executor,
}

/// Starts two workers at site-a, freezes `what`, and checks the workers and their
/// children are gone before the lease deadline.
async fn workers_stop_before_deadline(what: Freeze) {
    let mut cluster = Cluster::new();
    let dir = started(&mut cluster).await;
    let script = workers::script(&dir);
    let exec = cluster.exec(
        "site-a",
        &["--instances", "2"],
        &[script.to_str().expect("utf8")],
    );
    let pids = wait_running(&dir, "site-a", 2).await;
    let frozen_at = Instant::now();
    match what {
        Freeze::Controllers => cluster.signal_all(libc::SIGSTOP),
        Freeze::Executor => exec.signal(libc::SIGSTOP),
    }
    let dead_at = wait_all_dead(&pids, TTL).await;
    let after = dead_at - frozen_at;
    assert!(
        dead_at <= lease_bound(frozen_at),
        "gone {after:?} after the freeze"
    );
    eprintln!("workers gone {after:?} after the freeze");
}

/// Every controller frozen with SIGSTOP: no renewal can succeed, and the workers and their
/// children are gone before the lease deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stop_before_deadline_when_controllers_freeze() {
    workers_stop_before_deadline(Freeze::Controllers).await;
}

/// The executor frozen with SIGSTOP cannot renew or stop anything itself: its guards
/// still stop every worker and child before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stop_before_deadline_when_executor_freezes() {
    workers_stop_before_deadline(Freeze::Executor).await;
}

/// The executor killed with SIGKILL: its guards see their pipe close and stop the
/// workers within the stop grace, well before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stop_when_executor_is_killed() {
    let mut cluster = Cluster::new();
    let dir = started(&mut cluster).await;
    let script = workers::script(&dir);
    let mut exec: Proc = cluster.exec(
        "site-a",
        &["--instances", "2"],
        &[script.to_str().expect("utf8")],
    );
    let pids = wait_running(&dir, "site-a", 2).await;
    let killed_at = Instant::now();
    exec.0.kill().expect("kill -9 executor");
    let dead_at = wait_all_dead(&pids, TTL).await;
    assert!(
        dead_at <= killed_at + STOP_GRACE + OBSERVATION_SLACK,
        "gone {:?} after the kill",
        dead_at - killed_at
    );
}

/// A worker that dies is started again (with backoff), and the restart is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_worker_is_respawned() {
    let mut cluster = Cluster::new();
    let dir = started(&mut cluster).await;
    let script = workers::script(&dir);
    let _exec = cluster.exec(
        "site-a",
        &["--instances", "1"],
        &[script.to_str().expect("utf8")],
    );
    let first = wait_running(&dir, "site-a", 1).await;
    let worker = *first.iter().min().expect("a pid");
    // SAFETY: killing a process this test's executor started.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    let respawned = eventually("a new worker", Duration::from_secs(10), || async {
        let live = workers::live(&dir, "site-a");
        (live.len() == 2 && !live.contains(&worker)).then_some(live)
    })
    .await;
    assert!(
        !first.iter().any(|p| respawned.contains(p)),
        "the crashed tree is gone"
    );
    let mut client = cluster.client();
    let restarts = eventually("the restart in status", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            let status = client.status().await.ok()?;
            let w = status
                .sites
                .iter()
                .find(|s| s.name == "site-a")?
                .executors
                .first()?
                .report
                .clone()?
                .workers
                .first()
                .copied()?;
            (w.restarts == 1 && w.state() == failover_proto::types::WorkerState::Running)
                .then_some(w.restarts)
        }
    })
    .await;
    assert_eq!(restarts, 1);
    let _ = client.status().await;
}

/// A reload whose new workers fail rolls back: the old workers keep running, and
/// `failover reload` says so with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_reload_rolls_back() {
    let mut cluster = Cluster::new();
    let dir = started(&mut cluster).await;
    let script = workers::script(&dir);
    let health = format!(
        "test -f {}/healthy-$FAILOVER_SITE-$FAILOVER_INSTANCE",
        dir.display()
    );
    let _exec = cluster.exec(
        "site-a",
        &["--instances", "2", "--health-cmd", &health],
        &[script.to_str().expect("utf8")],
    );
    let old = wait_running(&dir, "site-a", 2).await;
    std::fs::write(dir.join("broken"), "").expect("break the next generation");
    let out = reload_site_a(&cluster);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("FAILED: rolled back"), "{stdout}");
    assert!(stderr.contains("previous workers keep running"), "{stderr}");
    assert!(
        old.iter().all(|p| alive(*p)),
        "the old generation still runs"
    );

    std::fs::remove_file(dir.join("broken")).expect("fix it");
    let out = reload_site_a(&cluster);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_all_dead(&old, Duration::from_secs(5)).await;
    wait_running(&dir, "site-a", 2).await;
}

/// Runs `failover reload --site site-a` against the cluster.
fn reload_site_a(cluster: &Cluster) -> std::process::Output {
    std::process::Command::new(failover_bin())
        .args([
            "reload",
            "--site",
            "site-a",
            "--endpoints",
            &cluster.endpoints(),
        ])
        .output()
        .expect("run reload")
}

/// A planned promote with both executors up hands over in well under one TTL, and the
/// new site's workers carry a larger fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_promote_hands_over_fast() {
    let mut cluster = Cluster::new();
    let dir = started(&mut cluster).await;
    let script = workers::script(&dir);
    let script = script.to_str().expect("utf8");
    let _a = cluster.exec("site-a", &["--instances", "2"], &[script]);
    let _b = cluster.exec("site-b", &["--instances", "2"], &[script]);
    let a_pids = wait_running(&dir, "site-a", 2).await;
    assert!(
        workers::live(&dir, "site-b").is_empty(),
        "standby runs nothing"
    );
    let mut client = cluster.client();
    // Give site-b's executor time to report in, so the handover measures only the switch.
    eventually(
        "site-b's executor reporting",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                let s = client.status().await.ok()?;
                (!s.sites
                    .iter()
                    .find(|s| s.name == "site-b")?
                    .executors
                    .is_empty())
                .then_some(())
            }
        },
    )
    .await;
    let promoted_at = Instant::now();
    let request = PromoteRequest {
        group: "default".into(),
        site: "site-b".into(),
        reason: "test".into(),
        actor: "test".into(),
        wait: true,
        force: false,
    };
    client.promote(request).await.expect("promote --wait");
    let b_pids = wait_running(&dir, "site-b", 2).await;
    let handover = promoted_at.elapsed();
    assert!(
        !a_pids.iter().any(|p| alive(*p)),
        "site-a's workers are gone"
    );
    assert!(handover < TTL / 2, "handover took {handover:?}");
    let token = |site: &str| -> u64 {
        std::fs::read_to_string(dir.join(format!("token-{site}-0")))
            .expect("token")
            .trim()
            .parse()
            .expect("number")
    };
    assert!(token("site-b") > token("site-a"));
    assert_eq!(b_pids.len(), 4);
    eprintln!("planned handover: {handover:?}");
}

/// A command that does not exist is refused at start, before any lease is taken.
#[test]
fn missing_command_is_refused() {
    let cluster = Cluster::new();
    let out = std::process::Command::new(failover_bin())
        .args(["exec", "--site", "site-a", "--config"])
        .arg(&cluster.config)
        .args(["--", "/nonexistent/worker"])
        .output()
        .expect("run exec");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("worker command `/nonexistent/worker` not found"),
        "{stderr}"
    );
}

/// A stop grace that leaves no lease between renewals is refused at start, with the bound.
#[test]
fn stop_grace_too_long_for_the_lease_is_refused() {
    let cluster = Cluster::new();
    let out = std::process::Command::new(failover_bin())
        .args([
            "exec",
            "--site",
            "site-a",
            "--stop-grace",
            "900ms",
            "--config",
        ])
        .arg(&cluster.config)
        .args(["--", "/bin/sh"])
        .output()
        .expect("run exec");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--stop-grace 900ms is too long"),
        "{stderr}"
    );
}

/// The topology of the stop-lifetime tests: a TTL long enough for a 1.5 s stop grace.
const LONG_TTL: &str = "cluster_name: test\ntiming:\n  lease_ttl_ms: 6000\n";
/// The stop grace (and drain timeout) of the stop-lifetime tests' executors.
const LONG_GRACE: Duration = Duration::from_millis(1500);
/// A worker that ignores SIGTERM lives at least this long after it (the grace less the
/// resolution of /proc/uptime and scheduling), in seconds.
fn lived_at_least_s() -> f64 {
    LONG_GRACE.as_secs_f64() - 0.3
}

/// Two sites whose workers ignore SIGTERM (unless `stubborn` is false: then site-a's
/// first generation obeys it), site-a running two, site-b ready, and an observer watching
/// both from outside the executors.
struct StubbornSites {
    cluster: Cluster,
    dir: PathBuf,
    a: Proc,
    _b: Proc,
    observer: workers::Observer,
    first: Vec<i32>,
}

async fn stubborn_sites(stubborn: bool) -> StubbornSites {
    let mut cluster = Cluster::new_with(|yaml| yaml.replacen("cluster_name: test\n", LONG_TTL, 1));
    let dir = started(&mut cluster).await;
    let script = workers::stubborn_script(&dir);
    workers::set_stubborn(&dir, stubborn);
    let script = script.to_str().expect("utf8");
    let grace = format!("{}ms", LONG_GRACE.as_millis());
    let args = [
        "--instances",
        "2",
        "--stop-grace",
        &grace,
        "--drain-timeout",
        &grace,
    ];
    let a = exec_by_config(&cluster, "site-a", &args, script);
    let first = wait_running(&dir, "site-a", 2).await;
    workers::set_stubborn(&dir, true);
    let b = exec_by_config(&cluster, "site-b", &args, script);
    cluster.wait_executor_ready("site-b").await;
    let observer = workers::Observer::start(&dir);
    StubbornSites {
        cluster,
        dir,
        a,
        _b: b,
        observer,
        first,
    }
}

/// `failover exec` that finds the controllers and the timing in the topology file only.
/// ([`Cluster::exec`] also sets FAILOVER_ENDPOINTS, and `--endpoints` makes the CLI use
/// the default timing, which refuses a stop grace fitted to the longer TTL here.)
fn exec_by_config(cluster: &Cluster, site: &str, args: &[&str], script: &str) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cluster.data_dir().join(format!("exec-{site}.log")))
        .expect("log file");
    let child = std::process::Command::new(failover_bin())
        .args(["exec", "--site", site, "--config"])
        .arg(&cluster.config)
        .args(args)
        .args(["--", script])
        .envs(cluster.engine_env(site))
        .env("RUST_LOG", "info")
        .env_remove("FAILOVER_ENDPOINTS")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn exec");
    Proc(child)
}

/// `failover promote site-b --wait`.
async fn promote_b(cluster: &Cluster) {
    let request = PromoteRequest {
        group: "default".into(),
        site: "site-b".into(),
        reason: "test".into(),
        actor: "test".into(),
        wait: true,
        force: false,
    };
    cluster
        .client()
        .promote(request)
        .await
        .expect("promote --wait");
}

impl StubbornSites {
    /// Waits for site-b's two workers, then checks what the observer saw: no instant at
    /// which both sites' workers ran, and every worker of site-a that ignored SIGTERM
    /// took the grace.
    async fn site_b_took_over_without_overlap(self) {
        wait_running(&self.dir, "site-b", 2).await;
        let observed = self.observer.finish();
        assert!(observed.rounds > 100, "the observer ran");
        assert!(
            observed.overlaps.is_empty(),
            "both sites' workers ran at once: {:?}",
            observed.overlaps
        );
        let lived = observed.lived_after_term(&self.dir, "site-a");
        assert!(!lived.is_empty(), "site-a's workers were SIGTERMed");
        for (pid, seconds) in &lived {
            assert!(
                *seconds >= lived_at_least_s(),
                "worker {pid} lived only {seconds:.3} s after SIGTERM: {lived:?}"
            );
        }
        eprintln!("site-a's workers after SIGTERM (s): {lived:?}");
    }

    /// The site-a pids recorded so far that were not running at the start.
    fn new_site_a_pids(&self) -> Vec<i32> {
        workers::recorded(&self.dir, "site-a")
            .into_iter()
            .filter(|p| !self.first.contains(p))
            .collect()
    }
}

/// A planned promote while site-a's workers ignore SIGTERM: site-a releases the lease
/// only once its guards killed the trees, so site-b's workers never run beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_only_after_stubborn_workers_are_gone() {
    let s = stubborn_sites(true).await;
    promote_b(&s.cluster).await;
    s.site_b_took_over_without_overlap().await;
}

/// A promote right after a rolling reload finished, while the retiring generation still
/// takes its stop grace and the new one stops at once: the lease waits for the retiring
/// trees too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_retiring_generation_of_a_reload() {
    let s = stubborn_sites(true).await;
    workers::set_stubborn(&s.dir, false);
    s.a.signal(libc::SIGHUP);
    let retiring = eventually(
        "the old generation SIGTERMed at the end of the reload",
        Duration::from_secs(20),
        || async {
            let termed: Vec<i32> = workers::terms(&s.dir)
                .into_iter()
                .filter(|(site, pid, _)| site == "site-a" && s.first.contains(pid))
                .map(|(_, pid, _)| pid)
                .collect();
            (!termed.is_empty()).then_some(termed)
        },
    )
    .await;
    assert!(
        retiring.iter().any(|p| alive(*p)),
        "the retiring generation is still stopping when the promote begins"
    );
    promote_b(&s.cluster).await;
    s.site_b_took_over_without_overlap().await;
}

/// `failover reload` interrupted by a promote: the reload is rolled back (and says so),
/// and the lease waits for the new generation's trees (which ignore SIGTERM) as well as
/// the old one's (which stop at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_during_a_reload_waits_for_both_generations() {
    let s = stubborn_sites(false).await;
    let mut reload = Proc(
        std::process::Command::new(failover_bin())
            .args([
                "reload",
                "--site",
                "site-a",
                "--endpoints",
                &s.cluster.endpoints(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run reload"),
    );
    let new = eventually(
        "a worker of the new generation",
        Duration::from_secs(20),
        || async {
            let new: Vec<i32> = s
                .new_site_a_pids()
                .into_iter()
                .filter(|p| alive(*p))
                .collect();
            (!new.is_empty()).then_some(new)
        },
    )
    .await;
    assert!(s.first.iter().any(|p| alive(*p)), "the old generation runs");
    promote_b(&s.cluster).await;
    assert!(
        new.iter().all(|p| !alive(*p)),
        "the promote completed while the new generation ran"
    );
    let out = eventually(
        "the reload command's verdict",
        Duration::from_secs(20),
        || {
            let done = reload.0.try_wait().ok().flatten();
            async move { done }
        },
    )
    .await;
    let mut stdout = String::new();
    if let Some(mut pipe) = reload.0.stdout.take() {
        use std::io::Read;
        pipe.read_to_string(&mut stdout).expect("reload output");
    }
    assert_eq!(out.code(), Some(1), "{stdout}");
    assert!(stdout.contains("rolled back: a drain began"), "{stdout}");
    s.site_b_took_over_without_overlap().await;
}

/// SIGTERM to site-a's executor and a promote at once: the executor keeps the lease
/// until its guards report the stubborn trees gone, then releases and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_only_after_stubborn_workers_are_gone() {
    let mut s = stubborn_sites(true).await;
    s.a.signal(libc::SIGTERM);
    assert!(s.first.iter().all(|p| alive(*p)));
    promote_b(&s.cluster).await;
    let status = eventually("site-a's executor exits", Duration::from_secs(20), || {
        let done = s.a.0.try_wait().ok().flatten();
        async move { done }
    })
    .await;
    assert_eq!(status.code(), Some(0));
    s.site_b_took_over_without_overlap().await;
}

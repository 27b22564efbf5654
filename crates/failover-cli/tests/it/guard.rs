//! The guard with real processes: workers that print on stdout and stderr, flood their
//! output, ignore SIGTERM, double-fork and call setsid; the guard signalled or SIGKILLed.
//!
//! Most tests drive `failover guard` directly over its control socket (the test plays
//! the executor, with a deadline it never extends); the rest run `failover exec` against
//! a real controller cluster. Every process a test starts carries a marker in its
//! environment or argv, and [`Reaper`] kills whatever still carries it when the test ends,
//! also when it fails.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::workers::{self, Reaper};
use crate::common::{alive, eventually, failover_bin, Cluster};
use failover_executor::contain;
use failover_executor::monotonic::now_ns;

/// The stop grace the tests give the guard.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// What polling /proc every 5 ms on a loaded machine may add to an observed instant.
const OBSERVATION_SLACK: Duration = Duration::from_millis(200);

/// How the tree is contained in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cgroup,
    ProcessGroup,
}

/// A `failover guard` started by the test, which holds the other end of its channel.
struct GuardProc {
    child: Child,
    control: BufReader<UnixStream>,
    deadline_ns: u64,
    cgroup: Option<PathBuf>,
}

impl GuardProc {
    /// Starts a guard for `worker marker` with a deadline `deadline_in` from now; output
    /// goes to `dir/worker.log` (rotated at `max_bytes`, 2 kept) and, prefixed
    /// `site-t/0`, to `dir/guard-stderr.log`. `None` when `mode` needs a cgroup and the
    /// machine has none to give.
    fn start(
        dir: &Path,
        mode: Mode,
        deadline_in: Duration,
        max_bytes: u64,
        worker: &Path,
        marker: &str,
    ) -> Option<GuardProc> {
        let cgroup = match mode {
            Mode::Cgroup => match contain::create_cgroup(&format!("failover-{marker}")) {
                Ok(dir) => Some(dir),
                Err(why) => {
                    eprintln!("SKIPPED: no cgroup v2 for this test: {why}");
                    return None;
                }
            },
            Mode::ProcessGroup => None,
        };
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let deadline_ns = now_ns() + deadline_in.as_nanos() as u64;
        let stderr = std::fs::File::create(dir.join("guard-stderr.log")).expect("stderr file");
        let mut command = Command::new(failover_bin());
        command
            .args(["guard", "--deadline-ns", &deadline_ns.to_string()])
            .args(["--stop-grace-ms", &STOP_GRACE.as_millis().to_string()])
            .args(["--control-fd", "3", "--echo-prefix", "site-t/0"])
            .args(["--log-max-bytes", &max_bytes.to_string(), "--log-keep", "2"])
            .arg("--log-file")
            .arg(dir.join("worker.log"));
        if let Some(cgroup) = &cgroup {
            command.arg("--cgroup").arg(cgroup);
        }
        let fd = theirs.as_raw_fd();
        // SAFETY: only dup2 between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .arg("--")
            .arg(worker)
            .arg(marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn guard");
        drop(theirs);
        Some(GuardProc {
            child,
            control: BufReader::new(ours),
            deadline_ns,
            cgroup,
        })
    }

    /// The next report line, waiting up to `timeout`.
    fn report(&mut self, timeout: Duration) -> String {
        self.control
            .get_ref()
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut line = String::new();
        self.control.read_line(&mut line).expect("a report line");
        line.trim_end().to_string()
    }

    /// Reads `started <pid>` and `contained ...`; returns the worker pid.
    fn started(&mut self) -> i32 {
        let started = self.report(Duration::from_secs(5));
        let pid = started
            .strip_prefix("started ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("expected `started <pid>`, got {started:?}"));
        let contained = self.report(Duration::from_secs(5));
        let expected = if self.cgroup.is_some() {
            "contained cgroup"
        } else {
            "contained process-group"
        };
        assert!(contained.starts_with(expected), "{contained}");
        pid
    }

    fn send(&mut self, line: &str) {
        self.control
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .expect("send to guard");
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits up to `timeout` for the guard to exit; its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for GuardProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.cgroup {
            contain::kill_cgroup_and_wait(dir, Duration::from_secs(2));
        }
    }
}

/// Polls every 5 ms until no process carries `marker`; returns CLOCK_MONOTONIC ns then.
fn wait_tree_gone(marker: &str, timeout: Duration) -> u64 {
    let until = Instant::now() + timeout;
    loop {
        let left = workers::workers_marked(marker);
        if left.is_empty() {
            return now_ns();
        }
        assert!(
            Instant::now() < until,
            "worker processes still alive after {timeout:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let until = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text;
            }
        }
        assert!(Instant::now() < until, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn margin_ms(report: &str) -> i64 {
    report
        .rsplit_once("margin_ms=")
        .and_then(|(_, ms)| ms.parse().ok())
        .unwrap_or_else(|| panic!("no margin in {report:?}"))
}

/// A worker whose grandchild double-forks and calls setsid (a new session and process
/// group, reparented away from the worker) is gone, grandchild included, by a deadline
/// that was never extended.
fn daemon_is_gone_by_the_deadline(mode: Mode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let reaper = Reaper::new("daemon");
    let script = workers::daemonizer(dir.path());
    let Some(mut guard) = GuardProc::start(
        dir.path(),
        mode,
        Duration::from_secs(3),
        1 << 20,
        &script,
        &reaper.0,
    ) else {
        return;
    };
    let worker = guard.started();
    let daemon: i32 = wait_for_file(&dir.path().join("daemon.pid"), Duration::from_secs(2))
        .trim()
        .parse()
        .expect("daemon pid");
    assert!(alive(daemon) && alive(worker));
    assert_ne!(
        session_of(daemon),
        session_of(worker),
        "the daemon left the session"
    );
    let gone_ns = wait_tree_gone(&reaper.0, Duration::from_secs(6));
    let late_ns = gone_ns as i64 - guard.deadline_ns as i64;
    assert!(
        late_ns <= OBSERVATION_SLACK.as_nanos() as i64,
        "tree gone {} ms after the deadline",
        late_ns / 1_000_000
    );
    let end = guard.report(Duration::from_secs(5));
    assert!(end.starts_with("stopped"), "{end}");
    assert!(margin_ms(&end) >= 0, "{end}");
    assert_eq!(guard.wait(Duration::from_secs(5)), Some(0));
    if let Some(cgroup) = &guard.cgroup {
        assert!(!cgroup.exists(), "the guard removes its cgroup");
    }
    eprintln!(
        "{mode:?}: tree gone {} ms before the deadline",
        -late_ns / 1_000_000
    );
}

/// The session id of `pid` (field 6 of /proc/PID/stat).
fn session_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("name") + 2..];
    after
        .split_whitespace()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .expect("session")
}

#[test]
fn double_forked_setsid_daemon_is_gone_by_the_deadline_in_a_cgroup() {
    daemon_is_gone_by_the_deadline(Mode::Cgroup);
}

#[test]
fn double_forked_setsid_daemon_is_gone_by_the_deadline_without_a_cgroup() {
    daemon_is_gone_by_the_deadline(Mode::ProcessGroup);
}

/// A worker (and its child) that ignore SIGTERM are killed before the deadline, after
/// being sent TERM a stop grace before it.
#[test]
fn worker_ignoring_sigterm_is_killed_before_the_deadline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let reaper = Reaper::new("stubborn");
    let script = workers::stubborn(dir.path());
    let mut guard = GuardProc::start(
        dir.path(),
        Mode::ProcessGroup,
        Duration::from_millis(2500),
        1 << 20,
        &script,
        &reaper.0,
    )
    .expect("no cgroup needed");
    guard.started();
    let gone_ns = wait_tree_gone(&reaper.0, Duration::from_secs(6));
    assert!(
        gone_ns <= guard.deadline_ns + OBSERVATION_SLACK.as_nanos() as u64,
        "tree gone {} ms after the deadline",
        (gone_ns as i64 - guard.deadline_ns as i64) / 1_000_000
    );
    let end = guard.report(Duration::from_secs(5));
    assert!(end.starts_with("stopped"), "{end}");
    let log = std::fs::read_to_string(dir.path().join("worker.log")).expect("log");
    assert!(
        log.contains("got TERM, ignoring it"),
        "TERM came first: {log}"
    );
}

/// SIGTERM, SIGINT or SIGHUP to the guard: it stops its tree (a worker that ignores TERM
/// included) within the stop grace, reports it, and only then exits.
#[test]
fn guard_stops_its_tree_on_sigterm_sigint_and_sighup() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let dir = tempfile::tempdir().expect("temp dir");
        let reaper = Reaper::new("signalled");
        let script = workers::stubborn(dir.path());
        let mut guard = GuardProc::start(
            dir.path(),
            Mode::Cgroup,
            Duration::from_secs(60),
            1 << 20,
            &script,
            &reaper.0,
        )
        .or_else(|| {
            GuardProc::start(
                dir.path(),
                Mode::ProcessGroup,
                Duration::from_secs(60),
                1 << 20,
                &script,
                &reaper.0,
            )
        })
        .expect("guard");
        guard.started();
        wait_for_file(&dir.path().join("worker.log"), Duration::from_secs(5));
        let sent = Instant::now();
        guard.signal(signal);
        wait_tree_gone(&reaper.0, STOP_GRACE + Duration::from_secs(2));
        let gone = sent.elapsed();
        // The guard KILLs at the end of the stop grace; what the test sees later than
        // that is its own polling on a loaded machine (hence the wider slack here).
        assert!(
            gone <= STOP_GRACE + 2 * OBSERVATION_SLACK,
            "signal {signal}: tree gone {gone:?} after it"
        );
        let end = guard.report(Duration::from_secs(5));
        assert!(
            end.starts_with(&format!("stopped (the guard got signal {signal};")),
            "{end}"
        );
        assert_eq!(guard.wait(Duration::from_secs(5)), Some(0));
        eprintln!("signal {signal}: tree gone {gone:?} after it");
    }
}

/// A worker that writes tens of MiB of binary noise as fast as it can is never stalled:
/// it gets to the end, the log files stay within their bound, the guard still answers,
/// and the lines copied to stderr carry the prefix.
#[test]
fn flood_of_binary_output_is_rotated_and_never_stalls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let reaper = Reaper::new("flood");
    let script = workers::flood(dir.path(), 24);
    let max_bytes: u64 = 1 << 20;
    let mut guard = GuardProc::start(
        dir.path(),
        Mode::ProcessGroup,
        Duration::from_secs(120),
        max_bytes,
        &script,
        &reaper.0,
    )
    .expect("no cgroup needed");
    guard.started();
    let log = dir.path().join("worker.log");
    let until = Instant::now() + Duration::from_secs(60);
    while !std::fs::read(&log).is_ok_and(|b| b.windows(13).any(|w| w == b"done flooding")) {
        assert!(Instant::now() < until, "the worker never finished writing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker.log"))
        .map(|e| {
            let len = e.metadata().expect("metadata").len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    files.sort();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["worker.log", "worker.log.1", "worker.log.2"]);
    assert!(files.iter().all(|(_, len)| *len <= max_bytes), "{files:?}");
    // Still answering: a stop request ends the tree at once.
    guard.send("stop 200");
    let end = guard.report(Duration::from_secs(5));
    assert!(end.starts_with("stopped"), "{end}");
    wait_tree_gone(&reaper.0, Duration::from_secs(2));
    let echoed = std::fs::read(dir.path().join("guard-stderr.log")).expect("stderr");
    let echoed = String::from_utf8_lossy(&echoed);
    let tail: Vec<&str> = echoed.lines().rev().take(3).collect();
    assert!(
        echoed.contains("site-t/0 | done flooding"),
        "echo tail missing; last lines: {tail:?}"
    );
    assert!(
        echoed.lines().all(|l| l.starts_with("site-t/0 | ")),
        "every echoed line carries the prefix"
    );
}

async fn cluster_with_workdir(cluster: &mut Cluster) -> PathBuf {
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let dir = cluster.data_dir().join("work");
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

/// A worker that prints continuously on stdout and stderr keeps running (its output is
/// not mistaken for the guard's reports), and its lines land in its log file and on the
/// executor's stderr with the site and instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatty_worker_keeps_running_and_its_output_is_logged() {
    let mut cluster = Cluster::new();
    let dir = cluster_with_workdir(&mut cluster).await;
    let reaper = Reaper::new("chatty");
    let script = workers::chatty(&dir);
    let logs = dir.join("logs");
    let _exec = cluster.exec(
        "site-a",
        &["--log-dir", logs.to_str().expect("utf8")],
        &[script.to_str().expect("utf8"), &reaper.0],
    );
    let log = logs.join("default.site-a.0.log");
    eventually(
        "30 jobs in the worker's log",
        Duration::from_secs(30),
        || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|t| t.contains("processing job 30\n"))
            }
        },
    )
    .await;
    let starts = workers::started(&dir, "chatty.sh");
    assert_eq!(starts.len(), 1, "started once, never restarted: {starts:?}");
    assert!(alive(starts[0]), "the first worker still runs");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("warning: job 30 took long\n"),
        "stderr in the log"
    );
    let executor_stderr =
        std::fs::read_to_string(cluster.data_dir().join("exec-site-a.log")).expect("exec log");
    assert!(
        executor_stderr.contains("site-a/0 | processing job 30\n"),
        "stdout echoed with its prefix"
    );
    assert!(
        executor_stderr.contains("site-a/0 | warning: job 30 took long\n"),
        "stderr echoed with its prefix"
    );
    assert!(
        !executor_stderr.contains("worker crashed"),
        "{executor_stderr}"
    );
}

/// The guard SIGKILLed: the worker and its setsid'd grandchild are gone anyway (the
/// executor sees the channel close and kills the tree), well within the lease.
async fn guard_sigkill_leaves_no_worker(containment: &str) {
    let mut cluster = Cluster::new();
    let dir = cluster_with_workdir(&mut cluster).await;
    let reaper = Reaper::new("guard-kill");
    let script = workers::daemonizer(&dir);
    let logs = dir.join("logs");
    let _exec = cluster.exec(
        "site-a",
        &[
            "--log-dir",
            logs.to_str().expect("utf8"),
            "--containment",
            containment,
        ],
        &[script.to_str().expect("utf8"), &reaper.0],
    );
    let daemon_pid = dir.join("daemon.pid");
    let daemon: i32 = eventually("the daemon", Duration::from_secs(30), || {
        let path = daemon_pid.clone();
        async move { std::fs::read_to_string(&path).ok()?.trim().parse().ok() }
    })
    .await;
    let tree = workers::workers_marked(&reaper.0);
    let worker = workers::started(&dir, "daemonizer.sh")[0];
    let guard = parent_of(worker);
    assert!(
        tree.contains(&worker) && tree.contains(&daemon),
        "worker {worker} and daemon {daemon} in {tree:?}"
    );
    let killed_at = Instant::now();
    // SAFETY: kill(2) on the guard this test's executor started.
    unsafe { libc::kill(guard, libc::SIGKILL) };
    let until = killed_at + Duration::from_secs(3);
    while tree.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < until,
            "{containment}: still alive after the guard's SIGKILL: {:?}",
            tree.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gone = killed_at.elapsed();
    assert!(
        gone <= STOP_GRACE + OBSERVATION_SLACK,
        "{containment}: tree gone {gone:?} after the guard's SIGKILL"
    );
    eprintln!("{containment}: tree gone {gone:?} after the guard's SIGKILL");
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("name") + 2..];
    after
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("ppid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_sigkill_leaves_no_worker_with_cgroups() {
    guard_sigkill_leaves_no_worker("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_sigkill_leaves_no_worker_without_cgroups() {
    guard_sigkill_leaves_no_worker("process-group").await;
}

/// The executor and its guard both SIGKILLed (the executor frozen first, so it cannot
/// react): the setsid'd daemon survives them, with no lease. The next executor of the
/// site kills it at start, before it starts a worker of its own.
async fn next_executor_kills_what_a_dead_one_left(containment: &str, group: &str) {
    // A group of its own: an executor sweeps only its own group's leftovers, so tests
    // running beside this one cannot sweep its daemon first.
    let mut cluster =
        Cluster::new_with(|yaml| format!("{yaml}  - name: {group}\n    sites: [site-a, site-b]\n"));
    let dir = cluster_with_workdir(&mut cluster).await;
    let reaper = Reaper::new("stale");
    let script = workers::daemonizer(&dir);
    let script = script.to_str().expect("utf8");
    let args = ["--containment", containment, "--group", group];
    let exec = cluster.exec("site-a", &args, &[script, &reaper.0]);
    let daemon_pid = dir.join("daemon.pid");
    let daemon: i32 = eventually("the daemon", Duration::from_secs(30), || {
        let path = daemon_pid.clone();
        async move { std::fs::read_to_string(&path).ok()?.trim().parse().ok() }
    })
    .await;
    let worker = workers::started(&dir, "daemonizer.sh")[0];
    let guard = parent_of(worker);
    exec.signal(libc::SIGSTOP);
    // SAFETY: kill(2) on the guard this test's executor started.
    unsafe { libc::kill(guard, libc::SIGKILL) };
    drop(exec); // SIGCONT, SIGKILL, reaped
    eventually(
        "the worker gone by PDEATHSIG",
        Duration::from_secs(5),
        || async { (!alive(worker)).then_some(()) },
    )
    .await;
    assert!(alive(daemon), "the daemon outlived executor and guard");
    std::fs::remove_file(&daemon_pid).expect("forget the old daemon");
    let _next = cluster.exec("site-a", &args, &[script, &reaper.0]);
    eventually("the new executor's daemon", Duration::from_secs(30), || {
        let path = daemon_pid.clone();
        async move { std::fs::read_to_string(&path).ok() }
    })
    .await;
    assert!(
        !alive(daemon),
        "{containment}: the old daemon was killed before the new workers started"
    );
    let log = std::fs::read_to_string(cluster.data_dir().join("exec-site-a.log")).expect("log");
    assert!(log.contains("killed a worker tree left by an executor that is gone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_executor_kills_what_a_dead_one_left_with_cgroups() {
    next_executor_kills_what_a_dead_one_left("auto", "stale-cgroup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_executor_kills_what_a_dead_one_left_without_cgroups() {
    next_executor_kills_what_a_dead_one_left("process-group", "stale-pgroup").await;
}

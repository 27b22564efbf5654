//! One worker slot's process: a guard (`failover guard`) and the worker tree under it.
//!
//! The executor talks to each guard over a socket pair of its own (the guard's end is
//! its fd 3): the worker's stdout and stderr belong to the worker and go, through the
//! guard, to the instance's log file and the executor's stderr. If the guard dies
//! without reporting the end of its tree (SIGKILL, a crash), the channel closes and the
//! executor kills the tree itself before it reports the worker ended: `cgroup.kill` on
//! the tree's cgroup, and every process carrying the tree's environment marker.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use failover_core::executor::{WorkerExit, WorkerId};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::contain::{self, Containment, TreeId, TREE_MARKER_ENV};
use crate::output::OutputOptions;

/// What a guard reported about its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardEvent {
    /// The worker runs with this pid.
    Started(u32),
    /// The worker tree is gone.
    Ended {
        /// How the worker ended, typed for the supervisor.
        exit: WorkerExit,
        /// The guard's report as sent (with its deadline margin), for the log.
        report: String,
    },
}

/// A guard event, labelled with the worker it is about.
#[derive(Debug, Clone)]
pub struct WorkerEvent {
    /// The slot (instance number).
    pub instance: u32,
    /// The worker (one per start, so stale events are recognised).
    pub worker: WorkerId,
    /// What happened.
    pub event: GuardEvent,
}

/// Reads the guard's end report: its first word says how the tree ended (`stopped`,
/// `exited <status>`, `killed <signal>`, `failed <why>`); `None` for anything else.
pub fn parse_end(report: &str) -> Option<WorkerExit> {
    let mut words = report.split_whitespace();
    let number = |word: Option<&str>| word.and_then(|w| w.parse::<i32>().ok());
    match words.next()? {
        "stopped" => Some(WorkerExit::StoppedByGuard),
        "exited" => number(words.next()).map(WorkerExit::Exited),
        "killed" => number(words.next()).map(WorkerExit::Signalled),
        "failed" => Some(WorkerExit::FailedToStart),
        _ => None,
    }
}

/// A running guard: the driver's handle on one worker.
pub struct Worker {
    /// The slot.
    pub instance: u32,
    /// The worker's environment (health checks run with it too).
    pub env: Vec<(String, String)>,
    guard: Child,
    control: Option<OwnedWriteHalf>,
    cgroup: Option<PathBuf>,
}

/// Everything a worker is started with.
pub struct Spawn<'a> {
    /// The `failover` executable that provides `failover guard`.
    pub guard_exe: &'a Path,
    /// The worker command and its arguments.
    pub command: &'a [String],
    /// Environment for the worker (FAILOVER_*, PORT).
    pub env: Vec<(String, String)>,
    /// The slot.
    pub instance: u32,
    /// The worker.
    pub worker: WorkerId,
    /// The lease deadline the tree must be gone by, as CLOCK_MONOTONIC nanoseconds.
    pub deadline_ns: u64,
    /// Time the worker gets between TERM and KILL.
    pub stop_grace: Duration,
    /// The failover group (names the log file).
    pub group: &'a str,
    /// This executor's site (names the log file and prefixes the echoed lines).
    pub site: &'a str,
    /// Where the worker's output goes.
    pub output: &'a OutputOptions,
    /// How the worker tree is contained.
    pub containment: Containment,
}

/// How long the executor keeps killing the tree of a guard that died.
const ORPHAN_KILL_LIMIT: Duration = Duration::from_secs(2);

/// What the executor needs to kill a tree whose guard is gone.
struct Tree {
    cgroup: Option<PathBuf>,
    marker: String,
}

impl Tree {
    /// Kills every process of the tree; says how, for the worker's end report.
    fn kill(&self) -> String {
        let mut emptied = true;
        if let Some(dir) = &self.cgroup {
            emptied &= contain::kill_cgroup_and_wait(dir, ORPHAN_KILL_LIMIT);
        }
        // Also without a cgroup, and for anything that left it: the environment marker.
        emptied &= contain::kill_marked(&self.marker, ORPHAN_KILL_LIMIT);
        if emptied {
            "tree killed by the executor".into()
        } else {
            tracing::error!(marker = %self.marker, "a worker tree whose guard died would not die");
            "tree NOT fully killed".into()
        }
    }
}

impl Worker {
    /// Starts a guard with its worker; events arrive on `events`.
    pub fn spawn(spec: Spawn<'_>, events: mpsc::Sender<WorkerEvent>) -> std::io::Result<Worker> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let (instance, worker) = (spec.instance, spec.worker);
        let generation = worker.0;
        let id = TreeId {
            group: spec.group.to_string(),
            site: spec.site.to_string(),
            instance,
            executor_pid: std::process::id(),
            generation,
        };
        let marker = id.marker();
        let cgroup = match spec.containment {
            Containment::Auto => tree_cgroup(&id.cgroup_name()),
            Containment::ProcessGroup => None,
        };
        let mut command = guard_command(&spec, cgroup.as_deref());
        command.env(TREE_MARKER_ENV, &marker);
        let fd = theirs.as_raw_fd();
        // SAFETY: only dup2 and fcntl between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // The guard's end of the channel becomes its fd 3 (dup2 clears CLOEXEC).
                let ok = if fd == 3 {
                    libc::fcntl(fd, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(fd, 3) == 3
                };
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let guard = match command.spawn() {
            Ok(guard) => guard,
            Err(e) => {
                if let Some(dir) = &cgroup {
                    contain::remove_cgroup(dir);
                }
                return Err(e);
            }
        };
        drop(theirs);
        ours.set_nonblocking(true)?;
        let (read, write) = tokio::net::UnixStream::from_std(ours)?.into_split();
        let tree = Tree {
            cgroup: cgroup.clone(),
            marker,
        };
        tokio::spawn(watch(read, tree, instance, worker, events));
        Ok(Worker {
            instance,
            env: spec.env,
            guard,
            control: Some(write),
            cgroup,
        })
    }

    async fn send(&mut self, line: String) {
        if let Some(control) = &mut self.control {
            if control.write_all(line.as_bytes()).await.is_err() {
                self.control = None;
            }
        }
    }

    /// Moves the deadline the guard enforces to `deadline_ns` (CLOCK_MONOTONIC).
    pub async fn extend(&mut self, deadline_ns: u64) {
        self.send(format!("deadline {deadline_ns}\n")).await;
    }

    /// Asks the guard to stop the tree: TERM now, KILL after `grace` (or before the
    /// deadline, whichever comes first).
    pub async fn stop(&mut self, grace: Duration) {
        self.send(format!("stop {}\n", grace.as_millis())).await;
    }

    /// Reaps the guard process once it ended.
    pub async fn reap(mut self) {
        self.control = None;
        let _ = self.guard.wait().await;
        if let Some(dir) = &self.cgroup {
            // The guard removes it; this covers a guard that could not.
            contain::remove_cgroup(dir);
        }
    }
}

/// The `failover guard` command line for `spec`.
fn guard_command(spec: &Spawn<'_>, cgroup: Option<&Path>) -> Command {
    let mut command = Command::new(spec.guard_exe);
    command
        .arg("guard")
        .arg("--deadline-ns")
        .arg(spec.deadline_ns.to_string())
        .arg("--stop-grace-ms")
        .arg(spec.stop_grace.as_millis().to_string())
        .arg("--control-fd")
        .arg("3")
        .arg("--log-file")
        .arg(spec.output.log_file(spec.group, spec.site, spec.instance))
        .arg("--log-max-bytes")
        .arg(spec.output.max_file_bytes.to_string())
        .arg("--log-keep")
        .arg(spec.output.keep_files.to_string());
    if let Some(dir) = cgroup {
        command.arg("--cgroup").arg(dir);
    }
    if spec.output.echo {
        command
            .arg("--echo-prefix")
            .arg(format!("{}/{}", spec.site, spec.instance));
    }
    command
        .arg("--")
        .args(spec.command)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(false);
    command
}

/// A cgroup for one tree, or `None` (said once) when the machine does not allow it.
fn tree_cgroup(name: &str) -> Option<PathBuf> {
    static SAID: AtomicBool = AtomicBool::new(false);
    match contain::create_cgroup(name) {
        Ok(dir) => Some(dir),
        Err(why) => {
            if !SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %why,
                    "no cgroup for worker trees: containing them by process group, \
                     subreaper and environment marker"
                );
            }
            None
        }
    }
}

/// Reads the guard's reports until its channel closes. A guard that closes it without a
/// final report died: its tree is killed here before the end is reported, so `Ended`
/// always means the tree is gone.
async fn watch(
    read: OwnedReadHalf,
    mut tree: Tree,
    instance: u32,
    worker: WorkerId,
    events: mpsc::Sender<WorkerEvent>,
) {
    let generation = worker.0;
    let send = |event| {
        let events = events.clone();
        async move {
            let labelled = WorkerEvent {
                instance,
                worker,
                event,
            };
            let _ = events.send(labelled).await;
        }
    };
    let mut lines = BufReader::new(read).lines();
    let mut ended = false;
    while let Ok(Some(line)) = lines.next_line().await {
        match line.split_once(' ') {
            Some(("started", pid)) => {
                if let Ok(pid) = pid.parse() {
                    send(GuardEvent::Started(pid)).await;
                }
            }
            Some(("contained", how)) => {
                if how == "process-group" {
                    // The guard could not use the cgroup; it removed it.
                    tree.cgroup = None;
                }
                tracing::debug!(instance, generation, %how, "worker tree contained");
            }
            _ => {
                ended = true;
                let exit = parse_end(&line).unwrap_or_else(|| {
                    tracing::warn!(instance, generation, report = %line, "unknown guard report");
                    WorkerExit::GuardLost
                });
                send(GuardEvent::Ended { exit, report: line }).await;
            }
        }
    }
    if !ended {
        let how = tokio::task::spawn_blocking(move || tree.kill())
            .await
            .unwrap_or_else(|e| format!("tree kill failed: {e}"));
        tracing::warn!(instance, generation, %how, "the guard died without reporting");
        let report = format!("guard exited; {how}");
        send(GuardEvent::Ended {
            exit: WorkerExit::GuardLost,
            report,
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every end report the guard sends maps to its typed end; anything else is refused.
    #[test]
    fn guard_end_reports_are_typed() {
        let cases = [
            ("stopped margin_ms=120", Some(WorkerExit::StoppedByGuard)),
            (
                "stopped (exited 0) margin_ms=3",
                Some(WorkerExit::StoppedByGuard),
            ),
            (
                "stopped (the guard got signal 15; killed 9) margin_ms=-1",
                Some(WorkerExit::StoppedByGuard),
            ),
            ("exited 3 margin_ms=2000", Some(WorkerExit::Exited(3))),
            ("killed 9 margin_ms=2000", Some(WorkerExit::Signalled(9))),
            ("failed No such file", Some(WorkerExit::FailedToStart)),
            ("exited", None),
            ("stoppedx", None),
            ("", None),
        ];
        for (report, expected) in cases {
            assert_eq!(parse_end(report), expected, "{report:?}");
        }
    }
}

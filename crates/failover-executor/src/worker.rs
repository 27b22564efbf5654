//! One worker slot's process: a guard (`failover guard`) and the worker tree under it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::monotonic::instant_to_ns;

/// What a guard reported about its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardEvent {
    /// The worker runs with this pid.
    Started(u32),
    /// The worker tree is gone: how the worker ended (`exited 0`, `killed 9`, `stopped`).
    Ended(String),
}

/// A guard event, labelled with the worker it is about.
#[derive(Debug, Clone)]
pub struct WorkerEvent {
    /// The slot (instance number).
    pub instance: u32,
    /// The generation of the worker (bumped by each start, so stale events are ignored).
    pub generation: u64,
    /// What happened.
    pub event: GuardEvent,
}

/// A running guard and what is known of its worker.
pub struct Worker {
    /// The slot.
    pub instance: u32,
    /// This worker's generation.
    pub generation: u64,
    /// The worker's pid, once the guard reported it.
    pub pid: Option<u32>,
    /// When it was started.
    pub started_at: Instant,
    /// Whether a stop was asked for.
    pub stopping: bool,
    guard: Child,
    stdin: Option<ChildStdin>,
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
    /// Its generation.
    pub generation: u64,
    /// The lease deadline the tree must be gone by.
    pub deadline: Instant,
    /// Time the worker gets between TERM and KILL.
    pub stop_grace: Duration,
}

impl Worker {
    /// Starts a guard with its worker; events arrive on `events`.
    pub fn spawn(spec: Spawn<'_>, events: mpsc::Sender<WorkerEvent>) -> std::io::Result<Worker> {
        let mut guard = Command::new(spec.guard_exe)
            .arg("guard")
            .arg("--deadline-ns")
            .arg(instant_to_ns(spec.deadline).to_string())
            .arg("--stop-grace-ms")
            .arg(spec.stop_grace.as_millis().to_string())
            .arg("--")
            .args(spec.command)
            .envs(spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()?;
        let stdin = guard.stdin.take();
        let stdout = guard
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("guard has no stdout"))?;
        let (instance, generation) = (spec.instance, spec.generation);
        tokio::spawn(async move {
            let send = |event| {
                let events = events.clone();
                async move {
                    let labelled = WorkerEvent {
                        instance,
                        generation,
                        event,
                    };
                    let _ = events.send(labelled).await;
                }
            };
            let mut lines = BufReader::new(stdout).lines();
            let mut ended = false;
            while let Ok(Some(line)) = lines.next_line().await {
                match line.split_once(' ') {
                    Some(("started", pid)) => {
                        if let Ok(pid) = pid.parse() {
                            send(GuardEvent::Started(pid)).await;
                        }
                    }
                    _ => {
                        ended = true;
                        send(GuardEvent::Ended(line.clone())).await;
                    }
                }
            }
            if !ended {
                send(GuardEvent::Ended("guard exited".into())).await;
            }
        });
        Ok(Worker {
            instance,
            generation,
            pid: None,
            started_at: Instant::now(),
            stopping: false,
            guard,
            stdin,
        })
    }

    async fn send(&mut self, line: String) {
        if let Some(stdin) = &mut self.stdin {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                self.stdin = None;
            }
        }
    }

    /// Moves the deadline the guard enforces.
    pub async fn extend(&mut self, deadline: Instant) {
        if !self.stopping {
            self.send(format!("deadline {}\n", instant_to_ns(deadline)))
                .await;
        }
    }

    /// Asks the guard to stop the tree: TERM now, KILL after `grace` (or before the
    /// deadline, whichever comes first).
    pub async fn stop(&mut self, grace: Duration) {
        self.stopping = true;
        self.send(format!("stop {}\n", grace.as_millis())).await;
    }

    /// Reaps the guard process once it ended.
    pub async fn reap(mut self) {
        self.stdin = None;
        let _ = self.guard.wait().await;
    }
}

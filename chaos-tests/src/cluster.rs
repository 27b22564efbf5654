//! The operator's view: the `failover` CLI run from the operator's namespace against the
//! run's topology file, every call bounded in time.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

/// Runs `failover` subcommands as an operator would.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The operator's namespace.
    pub ns: String,
    /// The `failover` binary.
    pub bin: PathBuf,
    /// The run's topology file.
    pub config: PathBuf,
    /// The group.
    pub group: String,
    /// The client's TLS settings (`FAILOVER_TLS_*`), empty in plaintext runs.
    pub env: Vec<(String, String)>,
}

/// The group as `failover status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Active site ("" for none).
    pub active_site: String,
    /// Epoch.
    pub epoch: u64,
    /// `active` or `demoting`.
    pub phase: String,
}

/// An operator command's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its JSON output, if any.
    pub json: Option<Value>,
    /// Its stderr (the reason of a refusal).
    pub stderr: String,
}

impl Operator {
    /// Runs `failover ARGS --config topology` with a time bound.
    pub fn call(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Answer> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if !args.contains(&"--endpoints") {
            command.arg("--config").arg(&self.config);
        }
        let out = output_within(&mut command, timeout)?;
        Ok(Answer {
            ok: out.status.success(),
            json: serde_json::from_slice(&out.stdout).ok(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// `failover status --output json`, if a controller answered.
    pub fn status(&self) -> Option<Value> {
        let a = self
            .call(&["status", "--output", "json"], Duration::from_secs(5))
            .ok()?;
        if a.ok {
            a.json
        } else {
            None
        }
    }

    /// The leader, when the answer is from a leader that holds a quorum.
    pub fn leader(&self) -> Option<u64> {
        let s = self.status()?;
        if s.get("consistent")?.as_bool()? {
            s.get("leader")?.as_u64()
        } else {
            None
        }
    }

    /// The group's active site, epoch and phase (from a consistent answer).
    pub fn group(&self) -> Option<GroupView> {
        let s = self.status()?;
        if !s.get("consistent")?.as_bool()? {
            return None;
        }
        s.get("groups")?
            .as_array()?
            .iter()
            .find(|g| g.get("name").and_then(Value::as_str) == Some(self.group.as_str()))
            .map(|g| GroupView {
                active_site: g
                    .get("active_site")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                epoch: g.get("epoch").and_then(Value::as_u64).unwrap_or(0),
                phase: g
                    .get("phase")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            })
    }

    /// Whether a site has a ready executor that reported within the last second.
    pub fn site_ready(&self, site: &str) -> bool {
        let Some(s) = self.status() else {
            return false;
        };
        s.get("sites")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|x| x.get("name").and_then(Value::as_str) == Some(site))
            .flat_map(|x| x.get("executors").and_then(Value::as_array).cloned())
            .flatten()
            .any(|e| {
                e.get("ready").and_then(Value::as_bool) == Some(true)
                    && e.get("last_seen_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(u64::MAX)
                        < 1500
            })
    }

    /// `failover promote SITE --wait` (with `--force` if asked).
    pub fn promote(&self, site: &str, force: bool) -> anyhow::Result<Answer> {
        self.promote_through(site, force, None)
    }

    /// `failover promote SITE --wait` through the given controllers only (so a command
    /// issued during a partition does not first wait out unreachable ones).
    pub fn promote_via(&self, site: &str, force: bool, endpoints: &str) -> anyhow::Result<Answer> {
        self.promote_through(site, force, Some(endpoints))
    }

    fn promote_through(
        &self,
        site: &str,
        force: bool,
        endpoints: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut args = vec![
            "promote",
            site,
            "--group",
            &self.group,
            "--wait",
            "--output",
            "json",
            "--reason",
            "chaos",
        ];
        if let Some(endpoints) = endpoints {
            args.extend(["--endpoints", endpoints]);
        }
        if force {
            args.push("--force");
        }
        self.call(&args, Duration::from_secs(20))
    }

    /// `failover demote --wait`: no site active (maintenance).
    pub fn demote(&self) -> anyhow::Result<Answer> {
        self.call(
            &[
                "demote",
                "--group",
                &self.group,
                "--wait",
                "--output",
                "json",
                "--reason",
                "chaos",
            ],
            Duration::from_secs(20),
        )
    }

    /// `failover reload --site SITE`.
    pub fn reload(&self, site: &str) -> anyhow::Result<Answer> {
        self.call(&["reload", "--site", site], Duration::from_secs(60))
    }

    /// Every history entry of the group.
    pub fn history(&self) -> anyhow::Result<Vec<Value>> {
        let a = self.call(
            &["history", "--group", &self.group, "--output", "json"],
            Duration::from_secs(10),
        )?;
        if !a.ok {
            anyhow::bail!("failover history failed: {}", a.stderr);
        }
        a.json
            .and_then(|v| v.as_array().cloned())
            .context("failover history printed no JSON list")
    }
}

/// Runs a command, killing it if it takes longer than `timeout`.
pub fn output_within(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    use std::os::unix::process::CommandExt;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let pid = child.id() as i32;
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + timeout;
    while !waiter.is_finished() {
        if Instant::now() >= deadline {
            // SAFETY: kill on the child's process group, which this function started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiting for {command:?} panicked"))?
        .with_context(|| format!("waiting for {command:?}"))
}

/// Polls `probe` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline || crate::interrupted() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

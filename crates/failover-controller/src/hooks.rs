//! Site hooks: operator commands the leader runs around a change of a site's role.
//!
//! `before_acquire` runs before a site becomes active for a group; a non-zero exit or a
//! timeout vetoes the promotion to that site. `after_demote` runs after a site was
//! demoted, best effort. Both get `FAILOVER_GROUP`, `FAILOVER_SITE`, `FAILOVER_EPOCH` (the
//! epoch the change starts from) and `FAILOVER_REASON`.

use std::process::Stdio;
use std::time::Duration;

use failover_core::config::Hooks;
use tokio::process::Command;

/// What a hook is told.
#[derive(Debug, Clone)]
pub struct HookEnv {
    /// The group.
    pub group: String,
    /// The site the hook is about.
    pub site: String,
    /// The epoch the change starts from.
    pub epoch: u64,
    /// Why the change happens.
    pub reason: String,
}

/// Why a hook vetoed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookError {
    /// It exited non-zero (or by a signal).
    #[error("hook `{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed on stderr.
        stderr: String,
    },
    /// It did not finish in time and was killed.
    #[error("hook `{command}` did not finish within {timeout:?}")]
    TimedOut {
        /// The command.
        command: String,
        /// The bound.
        timeout: Duration,
    },
    /// It could not be started.
    #[error("hook `{command}` could not start: {reason}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        reason: String,
    },
}

/// Runs `command` with `sh -c` and the hook environment, within `timeout`.
pub async fn run(command: &str, env: &HookEnv, timeout: Duration) -> Result<(), HookError> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("FAILOVER_GROUP", &env.group)
        .env("FAILOVER_SITE", &env.site)
        .env("FAILOVER_EPOCH", env.epoch.to_string())
        .env("FAILOVER_REASON", &env.reason)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HookError::Spawn {
            command: command.to_owned(),
            reason: e.to_string(),
        })?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| HookError::TimedOut {
            command: command.to_owned(),
            timeout,
        })?
        .map_err(|e| HookError::Spawn {
            command: command.to_owned(),
            reason: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(HookError::Failed {
        command: command.to_owned(),
        status: output.status.to_string(),
        stderr: tail,
    })
}

/// Runs the site's `before_acquire` hook, if any.
pub async fn before_acquire(hooks: &Hooks, env: &HookEnv) -> Result<(), HookError> {
    match &hooks.before_acquire {
        Some(command) => run(command, env, Duration::from_millis(hooks.timeout_ms)).await,
        None => Ok(()),
    }
}

/// Runs the site's `after_demote` hook, if any, and logs how it went.
pub async fn after_demote(hooks: &Hooks, env: &HookEnv) {
    if let Some(command) = &hooks.after_demote {
        match run(command, env, Duration::from_millis(hooks.timeout_ms)).await {
            Ok(()) => tracing::info!(site = %env.site, group = %env.group, "after_demote hook ran"),
            Err(e) => {
                tracing::warn!(site = %env.site, group = %env.group, error = %e, "after_demote hook failed")
            }
        }
    }
}

/// Most `after_demote` hooks running at once; one more waits for a running one to end.
pub const MAX_HOOK_TASKS: usize = 16;

/// The `after_demote` hooks the leader started and has not yet seen end: tracked, never
/// fire-and-forget, and bounded by [`MAX_HOOK_TASKS`]. Dropping it aborts the tasks,
/// which kills the hook processes (they are spawned with `kill_on_drop`).
#[derive(Debug, Default)]
pub struct HookTasks {
    running: tokio::task::JoinSet<()>,
}

impl HookTasks {
    /// Starts `hooks`' `after_demote` hook for `env`, first waiting for a running hook to
    /// end if [`MAX_HOOK_TASKS`] run.
    pub async fn after_demote(&mut self, hooks: Hooks, env: HookEnv) {
        self.reap();
        while self.running.len() >= MAX_HOOK_TASKS {
            if self.running.join_next().await.is_none() {
                break;
            }
        }
        self.running
            .spawn(async move { after_demote(&hooks, &env).await });
    }

    /// Forgets hooks that ended.
    pub fn reap(&mut self) {
        while self.running.try_join_next().is_some() {}
    }

    /// How many hooks run.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether no hook runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            group: "g".into(),
            site: "b".into(),
            epoch: 3,
            reason: "test".into(),
        }
    }

    /// A hook sees its environment; a failing one says how, with its stderr.
    #[tokio::test]
    async fn hook_gets_environment_and_reports_failure() {
        let ok = run(
            r#"test "$FAILOVER_GROUP/$FAILOVER_SITE/$FAILOVER_EPOCH" = g/b/3"#,
            &env(),
            Duration::from_secs(5),
        )
        .await;
        assert!(ok.is_ok(), "{ok:?}");
        let err = run("echo nope >&2; exit 4", &env(), Duration::from_secs(5))
            .await
            .expect_err("fails");
        let text = err.to_string();
        assert!(
            text.contains("exit status: 4") && text.contains("nope"),
            "{text}"
        );
    }

    /// Hook tasks are tracked and bounded: with more hooks started than the bound, no
    /// more than the bound run at once, and every one ends.
    #[tokio::test]
    async fn hook_tasks_are_bounded() {
        let dir = std::env::temp_dir().join(format!("hook-tasks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let hooks = Hooks {
            before_acquire: None,
            after_demote: Some(format!(
                "touch {}/$FAILOVER_EPOCH; sleep 0.2",
                dir.display()
            )),
            timeout_ms: 5_000,
        };
        let mut tasks = HookTasks::default();
        for epoch in 0..(MAX_HOOK_TASKS as u64 + 4) {
            let env = HookEnv { epoch, ..env() };
            tasks.after_demote(hooks.clone(), env).await;
            assert!(tasks.len() <= MAX_HOOK_TASKS);
        }
        while tasks.running.join_next().await.is_some() {}
        let ran = std::fs::read_dir(&dir).expect("read dir").count();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(ran, MAX_HOOK_TASKS + 4);
    }

    /// A hook that runs too long is killed and counts as a veto.
    #[tokio::test]
    async fn slow_hook_times_out() {
        let err = run("sleep 5", &env(), Duration::from_millis(100))
            .await
            .expect_err("times out");
        assert!(matches!(err, HookError::TimedOut { .. }));
    }
}

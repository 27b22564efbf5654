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

    /// A hook that runs too long is killed and counts as a veto.
    #[tokio::test]
    async fn slow_hook_times_out() {
        let err = run("sleep 5", &env(), Duration::from_millis(100))
            .await
            .expect_err("times out");
        assert!(matches!(err, HookError::TimedOut { .. }));
    }
}

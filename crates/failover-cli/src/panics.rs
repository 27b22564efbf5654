//! What a panic does, per kind of command.
//!
//! A long-running process (`failover controller`, `failover exec`) must not outlive a
//! panic. tokio catches a panic in a spawned task and ends only that task, so without
//! this a controller whose Raft core panicked (openraft's own assertions, or an
//! invariant of failover-core) would keep answering probes and holding its ports with no
//! Raft behind them, and an executor whose report task panicked would keep its workers
//! with nobody telling the cluster. Both are built to survive `kill -9` (an acknowledged
//! write is fsynced; guards stop workers at the lease deadline), so the safe reaction is
//! the same: print the panic and abort, and let the supervisor restart the process from
//! what is on disk.
//!
//! A command that prints and ends behaves like other Unix filters when its reader goes
//! away (`failover history | head -1`): it ends by SIGPIPE, as `cat` does, not with a
//! panic. SIGPIPE itself stays ignored (Rust's default), because the network writes too:
//! a TLS or HTTP/2 write to a peer that closed the connection (the CLI pointed at an HTTP
//! port, say) must be an error the command reports, not a signal that kills it. So only a
//! failed write to stdout, which `println!` turns into a panic, is turned back into the
//! signal.

/// For long-running commands: any panic, on any thread or task, prints as usual and then
/// aborts the process (SIGABRT, exit status 134).
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("failover: a panic is a bug; aborting so the process restarts from its data");
        std::process::abort();
    }));
}

/// For commands that print and end: a write to a closed stdout ends the process by
/// SIGPIPE; other panics behave as usual.
pub fn end_quietly_when_the_reader_goes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_went_away(info) {
            // SAFETY: restoring one signal's default disposition and raising it on this
            // process, which ends it as the reader's departure ends any filter.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default(info);
    }));
}

/// Whether a panic is `println!` failing because stdout's reader went away.
fn stdout_went_away(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let message = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or("");
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Set in the child process this test starts (the test binary itself, running only
    /// [`child_panics_in_a_spawned_task`]).
    const CHILD: &str = "FAILOVER_PANICS_TEST_CHILD";

    /// In the child: the hook installed, a tokio task panics while the main task would
    /// otherwise wait for a minute. The parent asserts the process died of SIGABRT.
    #[test]
    fn child_panics_in_a_spawned_task() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        super::abort_on_panic();
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            tokio::spawn(async { panic!("planted panic in a task") });
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        unreachable!("the panic in the task must have aborted the process");
    }

    #[test]
    fn a_panic_in_any_task_aborts_a_long_running_process() {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args(["--exact", "panics::tests::child_panics_in_a_spawned_task"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child still runs 30 s after its task panicked");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().expect("piped stderr"), &mut stderr)
            .expect("read the child's stderr");
        assert_eq!(
            status.signal(),
            Some(libc::SIGABRT),
            "status {status:?}, stderr: {stderr}"
        );
        assert!(
            stderr.contains("planted panic in a task"),
            "stderr: {stderr}"
        );
        assert!(stderr.contains("aborting"), "stderr: {stderr}");
    }
}

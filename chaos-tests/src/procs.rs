//! Processes of a run: controllers, executors and PostgreSQL, each started inside its
//! namespace with `ip netns exec`, in a process group of its own (so a Ctrl-C at the
//! harness reaches only the harness, which then cleans up), with its output in a log file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How to start one process again (a restart reuses it).
#[derive(Debug, Clone)]
pub struct Spec {
    /// The namespace it runs in.
    pub ns: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Where its stdout and stderr go (appended).
    pub log: PathBuf,
}

/// The processes of a run, by name (`c1`, `exec-site-a-1`, `postgres`).
#[derive(Debug, Default)]
pub struct Procs {
    specs: BTreeMap<String, Spec>,
    running: BTreeMap<String, Child>,
}

impl Procs {
    /// Starts a process under a name; the spec is kept for restarts.
    pub fn start(&mut self, name: &str, spec: Spec) -> anyhow::Result<()> {
        let child = spawn(&spec).with_context(|| format!("cannot start {name}"))?;
        self.specs.insert(name.to_string(), spec);
        self.running.insert(name.to_string(), child);
        Ok(())
    }

    /// Starts a stopped (killed) process again with the same spec.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let spec = self
            .specs
            .get(name)
            .with_context(|| format!("no process named {name}"))?
            .clone();
        self.reap(name);
        let child = spawn(&spec).with_context(|| format!("cannot restart {name}"))?;
        self.running.insert(name.to_string(), child);
        Ok(())
    }

    /// The pid of a running process.
    pub fn pid(&self, name: &str) -> Option<i32> {
        self.running.get(name).map(|c| c.id() as i32)
    }

    /// SIGKILLs a process and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.running.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs a process and waits up to `timeout` for it to exit (then SIGKILLs it).
    /// Returns whether it exited by itself.
    pub fn terminate(&mut self, name: &str, timeout: Duration) -> bool {
        let Some(mut child) = self.running.remove(name) else {
            return true;
        };
        // SAFETY: kill on a child this harness started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Names of the processes currently started.
    pub fn names(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Kills every process (the namespaces' removal catches what they started).
    pub fn kill_all(&mut self) {
        for name in self.names() {
            self.kill(&name);
        }
    }

    fn reap(&mut self, name: &str) {
        if let Some(mut child) = self.running.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn spawn(spec: &Spec) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("cannot open log {}", spec.log.display()))?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &spec.ns])
        .args(&spec.argv)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    Ok(command.spawn()?)
}

/// Sends a signal to every pid in the list (a whole site's processes for a freeze).
pub fn signal_all(pids: &[i32], signal: i32) {
    for pid in pids {
        // SAFETY: kill on pids inside a namespace this harness created.
        unsafe { libc::kill(*pid, signal) };
    }
}

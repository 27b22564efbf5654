//! The guard: one small process per worker tree that holds the lease deadline.
//!
//! The executor starts `failover guard`, which starts the worker in its own process group
//! and becomes the subreaper of everything the worker starts. The executor extends the
//! deadline over the guard's stdin. The guard stops the whole tree (TERM, then KILL) so
//! that it is gone by the deadline, when:
//! - the deadline comes near (the executor is frozen, or could not renew),
//! - the executor asks (`stop`), or
//! - its stdin closes (the executor died, even by SIGKILL).
//!
//! It depends on nothing being scheduled but itself. If the guard itself is SIGKILLed,
//! `PR_SET_PDEATHSIG` still kills the worker but not the worker's own children; nothing in
//! failover sends SIGKILL to a guard.
//!
//! Protocol, one line per message. In (stdin): `deadline <monotonic-ns>`,
//! `stop <grace-ms>`. Out (stdout): `started <pid>`, then one of `exited <code>` or
//! `killed <signal>` (the worker ended on its own: a crash) or `stopped ...` (the guard
//! stopped it: deadline, stop request, or executor gone), followed by `margin_ms=<ms>`: how long before the
//! lease deadline the whole tree was gone.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::monotonic::now_ns;

/// What `failover guard` is given.
#[derive(Debug, Clone)]
pub struct GuardArgs {
    /// The lease deadline (CLOCK_MONOTONIC ns): the tree must be gone by then.
    pub deadline_ns: u64,
    /// Time between TERM and the deadline.
    pub stop_grace: Duration,
    /// The worker command.
    pub command: Vec<String>,
}

/// Time kept between KILL and the deadline, for the kernel to deliver it.
const KILL_MARGIN_NS: u64 = 20_000_000;

/// Runs a guard to completion; the return value is the process exit code.
pub fn run(args: GuardArgs) -> i32 {
    match Guard::start(args) {
        Ok(mut guard) => guard.supervise(),
        Err(e) => {
            println!("failed {e}");
            2
        }
    }
}

struct Guard {
    deadline_ns: u64,
    stop_grace_ns: u64,
    worker: libc::pid_t,
    pidfd: libc::c_int,
    termed: bool,
    stop_by_ns: Option<u64>,
    /// Bytes read from stdin that do not yet form a whole line.
    pending: Vec<u8>,
    /// Whether stdin is still open (after EOF it is no longer polled).
    stdin_open: bool,
}

impl Guard {
    fn start(args: GuardArgs) -> std::io::Result<Guard> {
        // SAFETY: plain syscalls on this process.
        unsafe {
            libc::setsid();
            if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
        let (program, rest) = args
            .command
            .split_first()
            .ok_or_else(|| std::io::Error::other("no command"))?;
        let mut command = Command::new(program);
        command.args(rest).stdin(Stdio::null());
        // SAFETY: setpgid and prctl are async-signal-safe. The worker gets its own process
        // group (so the tree can be signalled as one) and dies with the guard.
        unsafe {
            command.pre_exec(|| {
                if libc::setpgid(0, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = command.spawn()?;
        let worker = child.id() as libc::pid_t;
        // SAFETY: pidfd_open on our own child's pid.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, worker, 0) } as libc::c_int;
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::mem::forget(child); // reaped by waitpid below
        say(&format!("started {worker}"));
        Ok(Guard {
            deadline_ns: args.deadline_ns,
            stop_grace_ns: args.stop_grace.as_nanos() as u64,
            worker,
            pidfd,
            termed: false,
            stop_by_ns: None,
            pending: Vec::new(),
            stdin_open: true,
        })
    }

    /// The instant by which the tree must be killed.
    fn kill_at(&self) -> u64 {
        let deadline = self.deadline_ns.saturating_sub(KILL_MARGIN_NS);
        self.stop_by_ns.map_or(deadline, |stop| stop.min(deadline))
    }

    fn term_at(&self) -> u64 {
        if self.stop_by_ns.is_some() {
            return 0;
        }
        self.deadline_ns.saturating_sub(self.stop_grace_ns)
    }

    fn supervise(&mut self) -> i32 {
        loop {
            let now = now_ns();
            if now >= self.kill_at() {
                self.kill_tree(libc::SIGKILL);
                return self.finish("stopped");
            }
            if now >= self.term_at() && !self.termed {
                self.kill_tree(libc::SIGTERM);
                self.termed = true;
            }
            let next = if self.termed {
                self.kill_at()
            } else {
                self.term_at().min(self.kill_at())
            };
            let timeout_ms = (next.saturating_sub(now) / 1_000_000).clamp(1, 1000) as libc::c_int;
            let mut fds = [
                libc::pollfd {
                    // A negative fd is skipped by poll(2).
                    fd: if self.stdin_open {
                        libc::STDIN_FILENO
                    } else {
                        -1
                    },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfd entries.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
            if ready < 0 {
                continue; // EINTR
            }
            if fds[1].revents != 0 {
                let status = self.reap_worker();
                self.kill_tree(libc::SIGKILL);
                // A worker that ends after our TERM was stopped, not crashed.
                let report = if self.termed {
                    format!("stopped ({status})")
                } else {
                    status
                };
                return self.finish(&report);
            }
            if fds[0].revents != 0 {
                self.read_command();
            }
        }
    }

    /// Reads what stdin has (never blocking on more: poll said it is readable) and applies
    /// every whole line.
    fn read_command(&mut self) {
        let mut buffer = [0u8; 4096];
        // SAFETY: reading into a local buffer of that length.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            self.stdin_open = false;
            // The executor is gone: nobody will extend the deadline or supervise the work.
            self.begin_stop(self.stop_grace_ns);
            return;
        }
        self.pending.extend_from_slice(&buffer[..n as usize]);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let mut parts = line.split_whitespace();
            match (
                parts.next(),
                parts.next().and_then(|v| v.parse::<u64>().ok()),
            ) {
                (Some("deadline"), Some(ns)) if self.stop_by_ns.is_none() => {
                    self.deadline_ns = ns;
                    self.termed = false;
                }
                (Some("stop"), Some(grace_ms)) => self.begin_stop(grace_ms * 1_000_000),
                _ => {}
            }
        }
    }

    fn begin_stop(&mut self, grace_ns: u64) {
        if self.stop_by_ns.is_none() {
            self.stop_by_ns = Some(now_ns() + grace_ns);
            self.kill_tree(libc::SIGTERM);
            self.termed = true;
        }
    }

    fn reap_worker(&self) -> String {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(self.worker, &mut status, 0) };
        if libc::WIFSIGNALED(status) {
            format!("killed {}", libc::WTERMSIG(status))
        } else {
            format!("exited {}", libc::WEXITSTATUS(status))
        }
    }

    /// Signals the worker's process group and every other descendant of this guard.
    fn kill_tree(&self, signal: libc::c_int) {
        // SAFETY: signalling our own children and descendants.
        unsafe { libc::kill(-self.worker, signal) };
        for pid in descendants(std::process::id() as libc::pid_t) {
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Reaps what is left (everything was sent SIGKILL) and reports.
    fn finish(&self, report: &str) -> i32 {
        for _ in 0..200 {
            self.kill_tree(libc::SIGKILL);
            let mut status = 0;
            // SAFETY: reaping our own children.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid < 0 {
                break; // ECHILD: nothing left
            }
            if pid == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // How long before the lease deadline the tree was gone (negative: after it).
        let margin_ms = (self.deadline_ns as i128 - now_ns() as i128) / 1_000_000;
        say(&format!("{report} margin_ms={margin_ms}"));
        0
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Every live descendant of `root`, found through /proc parent links.
pub fn descendants(root: libc::pid_t) -> BTreeSet<libc::pid_t> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = BTreeSet::from([root]);
    loop {
        let before = found.len();
        for (pid, ppid) in &parents {
            if found.contains(ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.remove(&root);
    found
}

/// The parent pid from /proc/PID/stat (the field after the parenthesized name).
fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?.parse().ok()
}

//! The guard: one small process per worker tree that holds the lease deadline.
//!
//! The executor starts `failover guard`, which starts the worker in its own process group
//! (and its own cgroup v2 when the executor made one, see [`crate::contain`]) and becomes
//! the subreaper of everything the worker starts. The executor extends the deadline over
//! a control channel of its own (a socket on fd 3, never stdin or stdout). The guard stops
//! the whole tree (TERM, then KILL) so that it is gone by the deadline, when:
//! - the deadline comes near (the executor is frozen, or could not renew),
//! - the executor asks (`stop`),
//! - the control channel closes (the executor died, even by SIGKILL), or
//! - the guard gets SIGTERM, SIGINT or SIGHUP: it stops the tree within the stop grace
//!   and only then exits.
//!
//! It depends on nothing being scheduled but itself. If the guard itself is SIGKILLed,
//! the worker gets `PR_SET_PDEATHSIG` and the executor, seeing the channel close without
//! a final report, kills the rest of the tree (`cgroup.kill`, or every process carrying
//! the tree's environment marker).
//!
//! The guard also reads the worker's stdout and stderr and writes them to the instance's
//! rotating log file and, line by line with a prefix, to its own stderr (the executor's),
//! see [`crate::output`].
//!
//! Protocol on the control channel, one line per message. In: `deadline <monotonic-ns>`,
//! `stop <grace-ms>`. Out: `started <pid>`, `contained cgroup <dir>` or
//! `contained process-group`, then one of `exited <code>` or `killed <signal>` (the
//! worker ended on its own: a crash) or `stopped ...` (the guard stopped it: deadline,
//! stop request, executor gone, or a signal to the guard), followed by
//! `margin_ms=<ms>`: how long before the lease deadline the whole tree was gone. A
//! guard that cannot start its worker says `failed <why>`.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::contain;
use crate::monotonic::now_ns;
use crate::output::{Echo, Lines, RotatingFile};

/// What `failover guard` is given.
#[derive(Debug, Clone)]
pub struct GuardArgs {
    /// The lease deadline (CLOCK_MONOTONIC ns): the tree must be gone by then.
    pub deadline_ns: u64,
    /// Time between TERM and the deadline.
    pub stop_grace: Duration,
    /// The control channel to the executor (a socket; fd 3 when started by `exec`).
    pub control_fd: RawFd,
    /// The cgroup made for this tree, if the executor could make one.
    pub cgroup: Option<PathBuf>,
    /// Where the worker's output goes.
    pub output: GuardOutput,
    /// The worker command.
    pub command: Vec<String>,
}

/// Where a guard writes its worker's output.
#[derive(Debug, Clone, Default)]
pub struct GuardOutput {
    /// The rotating log file of this instance (none: output is not kept).
    pub log_file: Option<PathBuf>,
    /// Rotate before the file passes this size.
    pub max_file_bytes: u64,
    /// Rotated files kept.
    pub keep_files: u32,
    /// Prefix for lines copied to stderr (`site-a/0`); none: no copy.
    pub echo_prefix: Option<String>,
}

/// Time kept between KILL and the deadline, for the kernel to deliver it.
const KILL_MARGIN_NS: u64 = 20_000_000;
/// One read of worker output.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Reads per stream per wake-up, so a flood of output cannot starve the deadline check.
const READS_PER_WAKE: usize = 16;
/// How long the guard keeps killing and reaping a tree that will not empty.
const FINISH_LIMIT_NS: u64 = 2_000_000_000;

/// Runs a guard to completion; the return value is the process exit code.
pub fn run(args: GuardArgs) -> i32 {
    let control = args.control_fd;
    // Checked before this process opens anything, which could take that number: a guard
    // without its channel would never learn that the executor is gone.
    // SAFETY: fcntl on a descriptor number; a closed one only fails.
    if unsafe { libc::fcntl(control, libc::F_GETFD) } < 0 {
        eprintln!(
            "failover guard: --control-fd {control} is not an open descriptor ({}); \
             the guard is started by `failover exec`",
            std::io::Error::last_os_error()
        );
        return 2;
    }
    // The worker must not inherit the channel: it has to close when this guard ends.
    set_cloexec(control);
    match Guard::start(args) {
        Ok(mut guard) => guard.supervise(),
        Err(e) => {
            say(control, &format!("failed {e}"));
            2
        }
    }
}

/// One of the worker's output streams.
struct Stream {
    fd: Option<OwnedFd>,
    lines: Lines,
}

struct Guard {
    deadline_ns: u64,
    stop_grace_ns: u64,
    worker: libc::pid_t,
    pidfd: OwnedFd,
    termed: bool,
    stop_by_ns: Option<u64>,
    control: RawFd,
    /// Bytes read from the control channel that do not yet form a whole line.
    pending: Vec<u8>,
    /// Whether the control channel is still open (after EOF it is no longer polled).
    control_open: bool,
    /// Woken by SIGTERM, SIGINT and SIGHUP; `signalled` says which came last.
    signals: UnixStream,
    signalled: Arc<AtomicUsize>,
    cgroup: Option<PathBuf>,
    streams: [Stream; 2],
    log: Option<RotatingFile>,
    log_failing: bool,
    echo: Echo,
    echo_lines: bool,
}

impl Guard {
    fn start(args: GuardArgs) -> std::io::Result<Guard> {
        // SAFETY: plain syscalls on this process.
        unsafe {
            libc::setsid();
            if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let (signals, wake) = UnixStream::pair()?;
        signals.set_nonblocking(true)?;
        let signalled = Arc::new(AtomicUsize::new(0));
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            signal_hook::flag::register_usize(signal, signalled.clone(), signal as usize)?;
            signal_hook::low_level::pipe::register(signal, wake.try_clone()?)?;
        }
        let (program, rest) = args
            .command
            .split_first()
            .ok_or_else(|| std::io::Error::other("no command"))?;
        let mut cgroup = args.cgroup;
        let mut child = match spawn_worker(program, rest, cgroup.as_deref()) {
            Ok(child) => child,
            Err(e) if cgroup.is_some() => {
                eprintln!(
                    "failover guard: cannot start the worker in its cgroup ({e}); \
                     containing it by process group instead"
                );
                if let Some(dir) = cgroup.take() {
                    contain::remove_cgroup(&dir);
                }
                spawn_worker(program, rest, None)?
            }
            Err(e) => return Err(e),
        };
        let worker = child.id() as libc::pid_t;
        let streams = [
            output_stream(child.stdout.take().map(OwnedFd::from))?,
            output_stream(child.stderr.take().map(OwnedFd::from))?,
        ];
        // SAFETY: pidfd_open on our own child's pid.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, worker, 0) } as libc::c_int;
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd) };
        drop(child); // reaped by waitpid below
        let output = args.output;
        let echo = Echo::start(
            output
                .echo_prefix
                .clone()
                .unwrap_or_else(|| "failover guard".into()),
        )?;
        say(args.control_fd, &format!("started {worker}"));
        match &cgroup {
            Some(dir) => say(
                args.control_fd,
                &format!("contained cgroup {}", dir.display()),
            ),
            None => say(args.control_fd, "contained process-group"),
        }
        Ok(Guard {
            deadline_ns: args.deadline_ns,
            stop_grace_ns: args.stop_grace.as_nanos() as u64,
            worker,
            pidfd,
            termed: false,
            stop_by_ns: None,
            control: args.control_fd,
            pending: Vec::new(),
            control_open: true,
            signals,
            signalled,
            cgroup,
            streams,
            log: output
                .log_file
                .map(|path| RotatingFile::new(path, output.max_file_bytes, output.keep_files)),
            log_failing: false,
            echo,
            echo_lines: output.echo_prefix.is_some(),
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
                return self.finish(self.end_report(None));
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
            let readable = |fd: Option<RawFd>| libc::pollfd {
                // A negative fd is skipped by poll(2).
                fd: fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            };
            let mut fds = [
                readable(self.control_open.then_some(self.control)),
                readable(Some(self.pidfd.as_raw_fd())),
                readable(Some(self.signals.as_raw_fd())),
                readable(self.streams[0].fd.as_ref().map(|f| f.as_raw_fd())),
                readable(self.streams[1].fd.as_ref().map(|f| f.as_raw_fd())),
            ];
            // SAFETY: a valid array of pollfd entries of that length.
            let ready =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if ready < 0 {
                continue; // EINTR
            }
            if fds[2].revents != 0 {
                self.on_signal();
            }
            if fds[0].revents != 0 {
                self.read_command();
            }
            for (index, fd) in fds[3..].iter().enumerate() {
                if fd.revents != 0 {
                    self.read_output(index, READS_PER_WAKE);
                }
            }
            if fds[1].revents != 0 {
                let status = self.reap_worker();
                self.kill_tree(libc::SIGKILL);
                return self.finish(self.end_report(Some(status)));
            }
        }
    }

    /// How the end is reported: the worker's exit `status` if it ended by itself (`None`:
    /// the guard killed the tree at its deadline), and a crash only if nobody asked it
    /// to stop.
    fn end_report(&self, status: Option<String>) -> String {
        let signal = self.signalled.load(Ordering::SeqCst);
        match (signal, status) {
            (0, None) => "stopped".into(),
            (0, Some(status)) if self.termed => format!("stopped ({status})"),
            (0, Some(status)) => status,
            (signal, status) => format!(
                "stopped (the guard got signal {signal}; {})",
                status.unwrap_or_else(|| "killed at the end of the stop grace".into())
            ),
        }
    }

    fn on_signal(&mut self) {
        let mut drained = [0u8; 64];
        while matches!(self.signals.read(&mut drained), Ok(n) if n > 0) {}
        // Stop the tree within the stop grace, and only then exit.
        self.begin_stop(self.stop_grace_ns);
    }

    /// Reads what the control channel has (never blocking on more: poll said it is
    /// readable) and applies every whole line.
    fn read_command(&mut self) {
        let mut buffer = [0u8; 4096];
        // SAFETY: reading into a local buffer of that length.
        let n = unsafe { libc::read(self.control, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            return;
        }
        if n <= 0 {
            self.control_open = false;
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
                (Some("stop"), Some(grace_ms)) => {
                    self.begin_stop(grace_ms.saturating_mul(1_000_000))
                }
                _ => {}
            }
        }
    }

    /// Reads up to `reads` chunks of one output stream into the log and the echo.
    fn read_output(&mut self, index: usize, reads: usize) {
        let mut buffer = vec![0u8; READ_CHUNK_BYTES];
        for _ in 0..reads {
            let Some(fd) = self.streams[index].fd.as_ref().map(|f| f.as_raw_fd()) else {
                return;
            };
            // SAFETY: reading into a buffer of that length from our own pipe end.
            let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
            if n > 0 {
                self.sink(index, &buffer[..n as usize]);
                continue;
            }
            let error = std::io::Error::last_os_error().kind();
            if n < 0 && error == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n < 0 && error == std::io::ErrorKind::WouldBlock {
                return;
            }
            // End of the stream (every writer closed it) or a broken pipe.
            self.streams[index].fd = None;
            let (stream, echo) = (&mut self.streams[index], &mut self.echo);
            if self.echo_lines {
                stream.lines.flush(&mut |line| echo.line(line));
            }
            return;
        }
    }

    fn sink(&mut self, index: usize, bytes: &[u8]) {
        if let Some(log) = &mut self.log {
            log.write(bytes);
            match (&log.error, self.log_failing) {
                (Some(error), false) => {
                    self.log_failing = true;
                    let note = format!("[worker output is being lost: {error}]");
                    self.echo.line(note.as_bytes());
                }
                (None, true) => self.log_failing = false,
                _ => {}
            }
        }
        if self.echo_lines {
            let (stream, echo) = (&mut self.streams[index], &mut self.echo);
            stream.lines.feed(bytes, &mut |line| echo.line(line));
        }
    }

    fn begin_stop(&mut self, grace_ns: u64) {
        if self.stop_by_ns.is_none() {
            self.stop_by_ns = Some(now_ns().saturating_add(grace_ns));
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

    /// Signals the worker's process group, every process in the tree's cgroup, and every
    /// other descendant of this guard.
    fn kill_tree(&self, signal: libc::c_int) {
        // SAFETY: signalling our own children and descendants.
        unsafe { libc::kill(-self.worker, signal) };
        if let Some(dir) = &self.cgroup {
            if signal == libc::SIGKILL {
                let _ = contain::kill_cgroup(dir);
            } else {
                for pid in contain::cgroup_pids(dir) {
                    // SAFETY: every process in this tree's cgroup is part of the tree.
                    unsafe { libc::kill(pid, signal) };
                }
            }
        }
        for pid in descendants(std::process::id() as libc::pid_t) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Whether every child is reaped and the cgroup, if any, is empty.
    fn reap_all(&self) -> bool {
        loop {
            let mut status = 0;
            // SAFETY: reaping our own children.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid < 0 {
                // ECHILD: no child left.
                return self
                    .cgroup
                    .as_deref()
                    .is_none_or(|dir| !contain::populated(dir));
            }
            if pid == 0 {
                return false;
            }
        }
    }

    /// Kills and reaps what is left, saves the last output, and reports.
    fn finish(&mut self, report: String) -> i32 {
        let give_up_at = now_ns() + FINISH_LIMIT_NS;
        loop {
            self.kill_tree(libc::SIGKILL);
            if self.reap_all() || now_ns() >= give_up_at {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // How long before the lease deadline the tree was gone (negative: after it).
        let margin_ms = (self.deadline_ns as i128 - now_ns() as i128) / 1_000_000;
        for index in 0..self.streams.len() {
            self.read_output(index, READS_PER_WAKE);
            let (stream, echo) = (&mut self.streams[index], &mut self.echo);
            if self.echo_lines {
                stream.lines.flush(&mut |line| echo.line(line));
            }
        }
        if let Some(dir) = &self.cgroup {
            contain::remove_cgroup(dir);
        }
        self.echo.finish(Duration::from_millis(100));
        say(self.control, &format!("{report} margin_ms={margin_ms}"));
        0
    }
}

/// Starts the worker: in the tree's cgroup (if any) before it runs a single instruction
/// of its own, in a process group of its own, and killed if this guard dies.
fn spawn_worker(program: &str, rest: &[String], cgroup: Option<&Path>) -> std::io::Result<Child> {
    let procs = cgroup
        .map(|dir| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        })
        .transpose()?;
    let procs_fd = procs.as_ref().map(|file| file.as_raw_fd());
    // SAFETY: getpid has no preconditions.
    let guard_pid = unsafe { libc::getpid() };
    let mut command = Command::new(program);
    command
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (write, setpgid, prctl, getppid) between fork
    // and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = procs_fd {
                // Writing "0" moves the writer itself into the cgroup.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The guard may have died before the prctl: then no signal would ever come.
            if libc::getppid() != guard_pid {
                return Err(std::io::Error::other(
                    "the guard died while starting the worker",
                ));
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop(procs);
    child
}

fn output_stream(fd: Option<OwnedFd>) -> std::io::Result<Stream> {
    if let Some(fd) = &fd {
        // SAFETY: fcntl on a pipe end we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(Stream {
        fd,
        lines: Lines::default(),
    })
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this process was given; a bad fd only fails.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Sends one line to the executor; a closed channel is ignored (the executor is gone).
fn say(fd: RawFd, line: &str) {
    let text = format!("{line}\n");
    let mut bytes = text.as_bytes();
    while !bytes.is_empty() {
        // SAFETY: writing from a live buffer of that length; MSG_NOSIGNAL keeps a closed
        // socket from raising SIGPIPE.
        let mut n =
            unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSOCK) {
            // SAFETY: as above, for a pipe.
            n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Every live descendant of `root`, found through /proc parent links.
pub fn descendants(root: libc::pid_t) -> BTreeSet<libc::pid_t> {
    let parents = contain::parents();
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

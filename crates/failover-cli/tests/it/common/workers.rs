//! Shell-script workers for executor tests: each records its pid and its child's pid, its
//! fencing token, and a health marker under a directory, and runs until killed; with
//! `dir/broken` present it exits at once (a failing new generation). Like real engines,
//! they log as they go.
//!
//! [`stubborn_script`] workers also ignore SIGTERM (so a stop takes the whole grace) and
//! append `start`/`term` lines with a host monotonic timestamp to `dir/lifetimes`;
//! [`Observer`] watches every recorded worker from outside the executor and proves that
//! no two sites' workers ever ran at the same instant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::alive;

/// Writes the worker script into `dir` and returns its path.
pub fn script(dir: &Path) -> PathBuf {
    let text = format!(
        r#"#!/bin/sh
d={dir}
[ -f "$d/broken" ] && {{ echo "worker $$: broken build, exiting" >&2; exit 3; }}
sleep 1000 &
echo "$$ $!" > "$d/pids-$FAILOVER_SITE-$FAILOVER_INSTANCE.$$"
echo "$FAILOVER_FENCING_TOKEN" > "$d/token-$FAILOVER_SITE-$FAILOVER_INSTANCE"
touch "$d/healthy-$FAILOVER_SITE-$FAILOVER_INSTANCE"
echo "worker $$ of $FAILOVER_SITE up, token $FAILOVER_FENCING_TOKEN" >&2
echo "processing jobs as $FAILOVER_SITE/$FAILOVER_INSTANCE"
wait
"#,
        dir = dir.display()
    );
    write_script(&dir.join("worker.sh"), &text)
}

/// Writes a worker that, when `dir/stubborn` exists as it starts, ignores SIGTERM (it and
/// its child), so its stop takes the whole grace and ends in SIGKILL; otherwise it dies on
/// SIGTERM at once. It appends `start SITE PID UPTIME` to `dir/lifetimes`, and a stubborn
/// one `term SITE PID UPTIME` on each SIGTERM (UPTIME from /proc/uptime: the host's
/// monotonic clock, which a shell can read). While `dir/crash-SITE-INSTANCE` exists it
/// exits at once, as a crash. Creates `dir/stubborn`.
pub fn stubborn_script(dir: &Path) -> PathBuf {
    set_stubborn(dir, true);
    let text = format!(
        r#"#!/bin/sh
d={dir}
now() {{ cut -d' ' -f1 /proc/uptime; }}
if [ -f "$d/crash-$FAILOVER_SITE-$FAILOVER_INSTANCE" ]; then
  echo "worker $$ of $FAILOVER_SITE: cannot start, exiting" >&2
  exit 3
fi
echo "start $FAILOVER_SITE $$ $(now)" >> "$d/lifetimes"
if [ -f "$d/stubborn" ]; then
  trap 'echo "term $FAILOVER_SITE $$ $(now)" >> "$d/lifetimes"; echo "worker $$ ignores SIGTERM" >&2' TERM
  (trap '' TERM; exec sleep 1000) &
else
  sleep 1000 &
fi
echo "$$ $!" > "$d/pids-$FAILOVER_SITE-$FAILOVER_INSTANCE.$$"
echo "$FAILOVER_FENCING_TOKEN" > "$d/token-$FAILOVER_SITE-$FAILOVER_INSTANCE"
echo "worker $$ of $FAILOVER_SITE up, token $FAILOVER_FENCING_TOKEN" >&2
echo "processing jobs as $FAILOVER_SITE/$FAILOVER_INSTANCE"
while :; do wait; done
"#,
        dir = dir.display()
    );
    write_script(&dir.join("stubborn.sh"), &text)
}

/// Whether workers started from now on ignore SIGTERM.
pub fn set_stubborn(dir: &Path, stubborn: bool) {
    let marker = dir.join("stubborn");
    if stubborn {
        std::fs::write(&marker, "").expect("stubborn marker");
    } else if marker.exists() {
        std::fs::remove_file(&marker).expect("remove the stubborn marker");
    }
}

fn write_script(path: &Path, text: &str) -> PathBuf {
    let path = path.to_path_buf();
    std::fs::write(&path, text).expect("write worker");
    let c = std::ffi::CString::new(path.to_str().expect("utf8")).expect("path");
    // SAFETY: chmod on a file we just wrote.
    unsafe { libc::chmod(c.as_ptr(), 0o755) };
    path
}

/// Every (worker, child) pid recorded for `site` so far.
pub fn recorded(dir: &Path, site: &str) -> Vec<i32> {
    let prefix = format!("pids-{site}-");
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The recorded pids of `site` that are still alive.
pub fn live(dir: &Path, site: &str) -> Vec<i32> {
    recorded(dir, site)
        .into_iter()
        .filter(|p| alive(*p))
        .collect()
}

/// The `term` lines of `dir/lifetimes`: (site, pid, host monotonic seconds).
pub fn terms(dir: &Path) -> Vec<(String, i32, f64)> {
    let text = std::fs::read_to_string(dir.join("lifetimes")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == "term").then_some(())?;
            let site = parts.next()?.to_owned();
            let pid = parts.next()?.parse().ok()?;
            let at = parts.next()?.parse().ok()?;
            Some((site, pid, at))
        })
        .collect()
}

/// The host's monotonic clock as /proc/uptime shows it (CLOCK_BOOTTIME), in seconds.
pub fn uptime_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One worker process the observer knows of.
struct Watched {
    site: String,
    pidfd: Option<i32>,
    /// Host monotonic seconds when it was first seen gone.
    gone_at: Option<f64>,
}

impl Watched {
    fn open(site: String, pid: i32) -> Watched {
        // SAFETY: pidfd_open on a pid; a failure (ESRCH) means it is already gone.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        Watched {
            site,
            pidfd: (fd >= 0).then_some(fd),
            gone_at: (fd < 0).then(uptime_s),
        }
    }

    /// Whether the process still runs (its pidfd is not readable yet).
    fn running(&mut self) -> bool {
        let Some(fd) = self.pidfd else { return false };
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pidfd we own, without waiting.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready == 0 {
            return true;
        }
        // SAFETY: closing the pidfd we opened.
        unsafe { libc::close(fd) };
        self.pidfd = None;
        self.gone_at = Some(uptime_s());
        false
    }
}

/// What the observer saw.
#[derive(Debug, Default)]
pub struct Observed {
    /// Rounds in which workers of two sites ran at once, described.
    pub overlaps: Vec<String>,
    /// Per pid: when it was first seen gone (host monotonic seconds).
    pub gone_at: BTreeMap<i32, f64>,
    /// How many polling rounds ran.
    pub rounds: u64,
}

impl Observed {
    /// How long each SIGTERMed worker of `site` lived after its TERM, in seconds.
    pub fn lived_after_term(&self, dir: &Path, site: &str) -> Vec<(i32, f64)> {
        terms(dir)
            .into_iter()
            .filter(|(s, ..)| s == site)
            .filter_map(|(_, pid, at)| self.gone_at.get(&pid).map(|gone| (pid, gone - at)))
            .collect()
    }
}

/// Watches, from outside the executors, every worker (and child) recorded under a
/// directory, every 2 ms, and records each round in which workers of two different sites
/// were both running.
///
/// Why a round proves an overlap: a pid is watched only once its worker recorded it, so
/// it was running before the round began; a process that is running when checked was
/// running at every instant since it started. So if, within one round, a worker of site X
/// is seen running at instant t1 and one of site Y at t2 > t1, both ran at t1. The check
/// has no false alarms; an overlap shorter than a round could be missed, which is why the
/// workers ignore SIGTERM: the overlaps this looks for would last a whole stop grace.
pub struct Observer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Observed>>,
}

impl Observer {
    /// Starts watching `dir`.
    pub fn start(dir: &Path) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || observe(&dir, &flag));
        Observer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching and returns what was seen.
    pub fn finish(mut self) -> Observed {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("observer running")
            .join()
            .expect("observer thread")
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn observe(dir: &Path, stop: &AtomicBool) -> Observed {
    let mut watched: BTreeMap<i32, Watched> = BTreeMap::new();
    let mut observed = Observed::default();
    while !stop.load(Ordering::SeqCst) {
        for (site, pid) in recorded_by_site(dir) {
            watched
                .entry(pid)
                .or_insert_with(|| Watched::open(site, pid));
        }
        observed.rounds += 1;
        let mut running: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for (pid, w) in watched.iter_mut() {
            if w.running() {
                running.entry(w.site.clone()).or_default().insert(*pid);
            }
        }
        if running.len() > 1 && observed.overlaps.len() < 16 {
            observed
                .overlaps
                .push(format!("at {:.3} s running: {running:?}", uptime_s()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (pid, w) in watched.iter_mut() {
        w.running();
        if let Some(at) = w.gone_at {
            observed.gone_at.insert(*pid, at);
        }
        if let Some(fd) = w.pidfd.take() {
            // SAFETY: closing the pidfd we opened.
            unsafe { libc::close(fd) };
        }
    }
    observed
}

/// Every (site, pid) recorded under `dir` (workers and their children).
fn recorded_by_site(dir: &Path) -> Vec<(String, i32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("pids-")?;
            let (site_instance, _) = rest.split_once('.')?;
            let (site, _) = site_instance.rsplit_once('-')?;
            // A line is whole once its newline is written.
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.ends_with('\n').then_some(())?;
            let pids: Vec<i32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            let site = site.to_owned();
            Some(pids.into_iter().map(move |p| (site.clone(), p)))
        })
        .flatten()
        .collect()
}

/// Writes an executable shell script `name` into `dir` and returns its path. Every
/// script takes a marker as `$1` and runs with it as `GUARD_TEST_MARKER` in its
/// environment, so it and every process it starts can be found in /proc (see
/// [`workers_marked`]), and records `$$` in `dir/name.pids`.
fn marked_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        // Re-executed once with the marker in its environment, so that the script's own
        // /proc/PID/environ carries it too, not only its children's.
        "#!/bin/sh\n[ \"$GUARD_TEST_MARKER\" = \"$1\" ] || GUARD_TEST_MARKER=\"$1\" exec \"$0\" \"$@\"\n\
         d={dir}\necho $$ >> \"$d/{name}.pids\"\n{body}\n",
        dir = dir.display()
    );
    std::fs::write(&path, text).expect("write worker");
    let c = std::ffi::CString::new(path.to_str().expect("utf8")).expect("path");
    // SAFETY: chmod on a file we just wrote.
    unsafe { libc::chmod(c.as_ptr(), 0o755) };
    path
}

/// A worker that prints a line on stdout and one on stderr every 100 ms, forever, like
/// an engine processing jobs.
pub fn chatty(dir: &Path) -> PathBuf {
    marked_script(
        dir,
        "chatty.sh",
        r#"i=0
while true; do
  echo "processing job $i"
  echo "warning: job $i took long" >&2
  i=$((i+1))
  sleep 0.1
done"#,
    )
}

/// A worker that daemonizes a grandchild the classic way (fork, setsid, fork) so it is
/// in neither the worker's process group nor its session, records the grandchild's pid
/// in `dir/daemon.pid`, then keeps printing.
pub fn daemonizer(dir: &Path) -> PathBuf {
    marked_script(
        dir,
        "daemonizer.sh",
        r#"( setsid sh -c 'echo $$ > "$0/daemon.pid.tmp"; mv "$0/daemon.pid.tmp" "$0/daemon.pid"; exec sleep 1000' "$d" & )
while true; do echo "daemon started, worker alive"; sleep 0.2; done"#,
    )
}

/// A worker that catches SIGTERM, says so, and keeps running (and a child that ignores
/// it too); only SIGKILL ends it.
pub fn stubborn(dir: &Path) -> PathBuf {
    marked_script(
        dir,
        "stubborn.sh",
        r#"trap 'echo "got TERM, ignoring it"' TERM
sh -c 'trap "" TERM; while true; do sleep 0.1; done' &
while true; do echo "still here"; sleep 0.1; done"#,
    )
}

/// A worker that writes `megabytes` MiB of binary noise on stdout and some on stderr as
/// fast as it can, then (after half a second, so a stderr copy that dropped lines during
/// the flood has caught up) says `done flooding` and sleeps.
pub fn flood(dir: &Path, megabytes: u32) -> PathBuf {
    marked_script(
        dir,
        "flood.sh",
        &format!(
            r#"head -c {megabytes}M /dev/urandom
head -c 1M /dev/urandom >&2
sleep 0.5
printf '\ndone flooding\n'

exec sleep 1000"#
        ),
    )
}

/// The pids recorded by script `name` in `dir` (one per start).
pub fn started(dir: &Path, name: &str) -> Vec<i32> {
    std::fs::read_to_string(dir.join(format!("{name}.pids")))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Every live process started by a marked script, or by its descendants: those whose
/// environment holds `GUARD_TEST_MARKER=<marker>`.
pub fn workers_marked(marker: &str) -> Vec<i32> {
    marked_in(&format!("GUARD_TEST_MARKER={marker}"), &["environ"])
}

/// Every live process (not this test process) whose environment or command line holds
/// `marker`: the workers, and the guards and executors that were given them.
pub fn marked(marker: &str) -> Vec<i32> {
    marked_in(marker, &["environ", "cmdline"])
}

fn marked_in(marker: &str, files: &[&str]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && alive(*pid))
        .filter(|pid| {
            files.iter().any(|file| {
                std::fs::read(format!("/proc/{pid}/{file}"))
                    .is_ok_and(|bytes| bytes.windows(marker.len()).any(|w| w == marker.as_bytes()))
            })
        })
        .collect()
}

/// SIGKILLs every worker process carrying its marker when dropped, so a failing test
/// leaves nothing behind (not even a daemonized grandchild). Guards and executors are
/// left to their owners (`Proc`, the guard handles), so a guard can still clean up.
pub struct Reaper(pub String);

impl Reaper {
    /// A marker unique to this test process and `name`.
    pub fn new(name: &str) -> Reaper {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Reaper(format!("guard-test-{}-{nanos}-{name}", std::process::id()))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for _ in 0..100 {
            let pids = workers_marked(&self.0);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) on a process this test started (it carries the marker).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

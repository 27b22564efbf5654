//! Shell-script workers for executor tests: each records its pid and its child's pid, its
//! fencing token, and a health marker under a directory, and runs until killed; with
//! `dir/broken` present it exits at once (a failing new generation).

use std::path::{Path, PathBuf};

use super::alive;

/// Writes the worker script into `dir` and returns its path.
pub fn script(dir: &Path) -> PathBuf {
    let path = dir.join("worker.sh");
    let text = format!(
        r#"#!/bin/sh
d={dir}
[ -f "$d/broken" ] && exit 3
sleep 1000 &
echo "$$ $!" > "$d/pids-$FAILOVER_SITE-$FAILOVER_INSTANCE.$$"
echo "$FAILOVER_FENCING_TOKEN" > "$d/token-$FAILOVER_SITE-$FAILOVER_INSTANCE"
touch "$d/healthy-$FAILOVER_SITE-$FAILOVER_INSTANCE"
wait
"#,
        dir = dir.display()
    );
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

//! Containment of a worker tree: a cgroup v2 per tree where the machine allows it, else
//! the process group, the guard as subreaper, and a marker in the environment.
//!
//! A cgroup holds every process the worker starts, whatever it does (double fork,
//! `setsid`, a new process group), and `cgroup.kill` ends them all in one write. It needs
//! a cgroup v2 hierarchy this process may write to (root, or a delegated subtree such as
//! a systemd unit with `Delegate=yes`) and a kernel with `cgroup.kill` (5.14). Both are
//! checked at run time; without them the tree is found through /proc instead: the guard
//! is the subreaper of everything under it, and every process carries
//! [`TREE_MARKER_ENV`] in its environment, which the executor searches for when the guard
//! itself is gone.
//!
//! /proc (the process list, states, parents, environments, this process's cgroup and
//! mounts) is read through the `procfs` crate, which parses each file the way the kernel
//! documents it (a `comm` with spaces or parentheses, escapes in mount paths).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procfs::process::{MountInfo, Process, Stat};

/// Environment variable that marks every process of one worker tree, with the tree's
/// [`TreeId`] (`<group>.<site>.<instance>.<executor pid>.<generation>`).
///
/// Children inherit it, so the executor can find a tree whose guard was SIGKILLed even
/// without a cgroup. A process that execs with a cleared environment loses it: only the
/// cgroup closes that gap.
pub const TREE_MARKER_ENV: &str = "FAILOVER_TREE";

/// Names one worker tree: its marker, and (prefixed `failover.`) its cgroup.
///
/// Group and site names hold only letters, digits, `-` and `_` (the topology checks
/// this), so the dots separate the fields unambiguously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeId {
    /// The failover group.
    pub group: String,
    /// The executor's site.
    pub site: String,
    /// The worker slot.
    pub instance: u32,
    /// The pid of the executor that started the tree.
    pub executor_pid: u32,
    /// The worker's generation.
    pub generation: u64,
}

impl TreeId {
    /// The marker value (`FAILOVER_TREE`).
    pub fn marker(&self) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.group, self.site, self.instance, self.executor_pid, self.generation
        )
    }

    /// The cgroup directory name.
    pub fn cgroup_name(&self) -> String {
        format!("failover.{}", self.marker())
    }

    /// Reads a marker back.
    pub fn parse(marker: &str) -> Option<TreeId> {
        let fields: Vec<&str> = marker.split('.').collect();
        let [group, site, instance, pid, generation] = fields.as_slice() else {
            return None;
        };
        Some(TreeId {
            group: group.to_string(),
            site: site.to_string(),
            instance: instance.parse().ok()?,
            executor_pid: pid.parse().ok()?,
            generation: generation.parse().ok()?,
        })
    }

    /// Whether the executor that started this tree is gone (its pid is dead, or now
    /// belongs to a process that is not `failover`).
    fn orphaned(&self) -> bool {
        live_stat(self.executor_pid as libc::pid_t).is_none_or(|stat| stat.comm != "failover")
    }
}

/// Kills what executors of `group` at `site` that are gone (`kill -9` of the executor
/// together with its guards) left running: their trees' cgroups, and every process
/// carrying their marker. Run by `failover exec` at start, before it can take a lease,
/// so no worker of a previous executor on this host runs beside the new ones. Returns
/// the markers of the trees it killed.
pub fn sweep_stale(group: &str, site: &str) -> Vec<String> {
    let ours = |id: &TreeId| id.group == group && id.site == site && id.orphaned();
    let mut swept = BTreeSet::new();
    if let Some(base) = own_cgroup() {
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("failover.").and_then(TreeId::parse) else {
                continue;
            };
            if ours(&id) {
                kill_cgroup_and_wait(&entry.path(), Duration::from_secs(2));
                swept.insert(id.marker());
            }
        }
    }
    for (_, marker) in markers() {
        if TreeId::parse(&marker).is_some_and(|id| ours(&id)) && !swept.contains(&marker) {
            kill_marked(&marker, Duration::from_secs(2));
            swept.insert(marker);
        }
    }
    swept.into_iter().collect()
}

/// Every process that carries a tree marker, with the marker. A process whose
/// environment cannot be read (another user's, or gone meanwhile) is skipped.
fn markers() -> Vec<(libc::pid_t, String)> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|process| {
            let environ = process.environ().ok()?;
            let marker = environ.get(std::ffi::OsStr::new(TREE_MARKER_ENV))?;
            Some((process.pid(), marker.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Every live process (not a zombie) with its parent: the links a tree is found by.
pub fn parents() -> Vec<(libc::pid_t, libc::pid_t)> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|process| process.stat().ok())
        .filter(is_live)
        .map(|stat| (stat.pid, stat.ppid))
        .collect()
}

/// How the executor contains worker trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Containment {
    /// A cgroup v2 per tree when the machine allows it, else [`Containment::ProcessGroup`].
    #[default]
    Auto,
    /// Process group, subreaper and environment marker only (no cgroup).
    ProcessGroup,
}

impl std::str::FromStr for Containment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Containment::Auto),
            "process-group" => Ok(Containment::ProcessGroup),
            other => Err(format!(
                "unknown containment `{other}`: expected `auto` or `process-group`"
            )),
        }
    }
}

/// The cgroup v2 directory this process is in, if a cgroup v2 hierarchy is mounted.
pub fn own_cgroup() -> Option<PathBuf> {
    let me = Process::myself().ok()?;
    // The cgroup v2 line of /proc/self/cgroup: hierarchy 0, no controllers (`0::/path`).
    let cgroups = me.cgroups().ok()?;
    let v2 = cgroups
        .0
        .iter()
        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())?;
    let mounts = me.mountinfo().ok()?;
    cgroup_dir(&mounts.0, &v2.pathname)
}

/// Where the cgroup `relative` (as in /proc/self/cgroup) lives, given this process's
/// mounts (/proc/self/mountinfo): below the first cgroup2 mount.
fn cgroup_dir(mounts: &[MountInfo], relative: &str) -> Option<PathBuf> {
    let mount = mounts.iter().find(|m| m.fs_type == "cgroup2")?;
    // A mount of a subtree (a container's namespace) shows paths below its root.
    let inside = if mount.root == "/" {
        relative
    } else {
        relative
            .strip_prefix(mount.root.as_str())
            .unwrap_or(relative)
    };
    Some(mount.mount_point.join(inside.trim_start_matches('/')))
}

/// Creates the cgroup `name` under this process's own cgroup, for one worker tree. An
/// error says why the machine does not allow it (no cgroup v2, no write access, no
/// `cgroup.kill`); the caller then falls back to the process group.
pub fn create_cgroup(name: &str) -> Result<PathBuf, String> {
    let base = own_cgroup().ok_or("no cgroup v2 hierarchy is mounted")?;
    let dir = base.join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if !dir.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&dir);
        return Err("the kernel has no cgroup.kill (needs Linux 5.14)".into());
    }
    Ok(dir)
}

/// Kills every process in the cgroup at once (`cgroup.kill`).
pub fn kill_cgroup(dir: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))?;
    file.write_all(b"1")
}

/// Whether any process is still in the cgroup (or its state cannot be read).
pub fn populated(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "populated 1"),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// The pids in the cgroup.
pub fn cgroup_pids(dir: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.parse().ok()).collect())
        .unwrap_or_default()
}

/// Removes an empty cgroup; a cgroup that is already gone is fine.
pub fn remove_cgroup(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

/// Kills everything in the cgroup and waits, up to `within`, until it is empty; then
/// removes it. Returns whether it emptied.
pub fn kill_cgroup_and_wait(dir: &Path, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        if !populated(dir) {
            remove_cgroup(dir);
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        let _ = kill_cgroup(dir);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every live process whose environment holds `FAILOVER_TREE=<marker>`, except `except`.
pub fn marked(marker: &str, except: libc::pid_t) -> BTreeSet<libc::pid_t> {
    markers()
        .into_iter()
        .filter(|(pid, found)| found == marker && *pid != except && alive(*pid))
        .map(|(pid, _)| pid)
        .collect()
}

/// SIGKILLs every process marked with `marker` until none is left, for up to `within`.
/// Returns whether none is left.
pub fn kill_marked(marker: &str, within: Duration) -> bool {
    let until = Instant::now() + within;
    let me = std::process::id() as libc::pid_t;
    loop {
        let pids = marked(marker, me);
        if pids.is_empty() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process that carries this executor's tree marker.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: libc::pid_t) -> bool {
    live_stat(pid).is_some()
}

/// The status of `pid` (/proc/PID/stat), when it is a live process.
fn live_stat(pid: libc::pid_t) -> Option<Stat> {
    Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .filter(is_live)
}

/// Whether a process is running, sleeping or stopped, not a zombie or dead.
fn is_live(stat: &Stat) -> bool {
    stat.state != 'Z' && stat.state != 'X'
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

    /// Mounts as /proc/self/mountinfo lists them.
    fn mounts(text: &str) -> Vec<MountInfo> {
        text.lines()
            .map(|line| MountInfo::from_line(line).expect("a mountinfo line"))
            .collect()
    }

    #[test]
    fn cgroup_dir_follows_the_cgroup2_mount() {
        assert_eq!(
            cgroup_dir(&mounts(HYBRID), "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/"))
        );
        assert_eq!(
            cgroup_dir(&mounts(HYBRID), "/system.slice/x.service"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/system.slice/x.service"
            ))
        );
    }

    #[test]
    fn cgroup_dir_strips_the_root_of_a_subtree_mount() {
        let info = "50 40 0:30 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_dir(&mounts(info), "/kubepods/pod1/app"),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
    }

    #[test]
    fn no_cgroup2_mount_means_no_cgroup() {
        let v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup_dir(&mounts(v1), "/"), None);
    }

    #[test]
    fn tree_ids_read_back_and_name_their_cgroup() {
        let id = TreeId {
            group: "default".into(),
            site: "site-a".into(),
            instance: 2,
            executor_pid: 4242,
            generation: 7,
        };
        assert_eq!(id.marker(), "default.site-a.2.4242.7");
        assert_eq!(id.cgroup_name(), "failover.default.site-a.2.4242.7");
        assert_eq!(TreeId::parse(&id.marker()), Some(id));
        assert_eq!(TreeId::parse("default.site-a.2.4242"), None);
        assert_eq!(TreeId::parse("a.b.c.d.e"), None);
    }

    #[test]
    fn containment_parses_and_names_bad_input() {
        assert_eq!("auto".parse(), Ok(Containment::Auto));
        assert_eq!("process-group".parse(), Ok(Containment::ProcessGroup));
        let err = "cgroup".parse::<Containment>().unwrap_err();
        assert!(err.contains("`cgroup`"), "{err}");
    }
}

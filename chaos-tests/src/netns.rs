//! The network: one namespace per site, one for PostgreSQL, one for the operator, all
//! joined by veth links to a bridge that lives in a hub namespace of its own. Nothing is
//! created in the host's namespace, and every name starts with [`PREFIX`], so leftovers are
//! easy to find and nothing else on the machine is touched.
//!
//! Network faults are applied here: a link down (a site cut off), iptables drops inside a
//! site's namespace (partitions, one-way partitions, random loss), and tc on a link.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::Context;

use crate::sites::{Plan, OPS_IP, PG_IP};

/// Every namespace the harness creates starts with this.
pub const PREFIX: &str = "fochaos-";

/// One member of the bridge: a namespace with one veth end named `eth0`.
#[derive(Debug, Clone)]
pub struct Member {
    /// The namespace's name.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// The name of the veth end in the hub (the one a cut takes down).
    pub hub_port: String,
}

/// The namespaces of one run. Dropping it removes them (after killing what runs inside).
#[derive(Debug)]
pub struct Network {
    hub: String,
    /// The operator's namespace, where the harness runs the CLI.
    pub ops: Member,
    /// PostgreSQL's namespace.
    pub pg: Member,
    /// One per site, in the plan's order.
    pub sites: Vec<(String, Member)>,
    removed: bool,
}

/// Namespaces whose name starts with [`PREFIX`]: leftovers of an earlier run.
pub fn leftovers() -> anyhow::Result<Vec<String>> {
    let out = run_output(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect())
}

/// Refuses to start when an earlier run left namespaces behind.
pub fn refuse_leftovers() -> anyhow::Result<()> {
    let left = leftovers()?;
    if !left.is_empty() {
        anyhow::bail!(
            "leftover chaos namespaces from an earlier run: {}. Remove them (and every \
             process inside them) with `chaos cleanup`, then start again",
            left.join(", ")
        );
    }
    Ok(())
}

/// Kills every process inside each leftover namespace and deletes it.
pub fn cleanup() -> anyhow::Result<Vec<String>> {
    let left = leftovers()?;
    for ns in &left {
        remove_namespace(ns);
    }
    Ok(left)
}

/// The pids of every process in a namespace.
pub fn pids(ns: &str) -> Vec<i32> {
    run_output(Command::new("ip").args(["netns", "pids", ns]))
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn remove_namespace(ns: &str) {
    for _ in 0..20 {
        let pids = pids(ns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill on a pid inside a namespace this harness created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

impl Network {
    /// Creates the hub, the bridge and one namespace per member, addressed from the plan.
    pub fn create(run_id: &str, plan: &Plan) -> anyhow::Result<Network> {
        let hub = format!("{PREFIX}{run_id}-hub");
        let mut net = Network {
            hub: hub.clone(),
            ops: member(run_id, "ops", OPS_IP, 0),
            pg: member(run_id, "pg", PG_IP, 1),
            sites: plan
                .sites
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), member(run_id, &s.name, s.ip, i + 2)))
                .collect(),
            removed: false,
        };
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let members: Vec<Member> = std::iter::once(net.ops.clone())
            .chain(std::iter::once(net.pg.clone()))
            .chain(net.sites.iter().map(|(_, m)| m.clone()))
            .collect();
        for m in &members {
            net.attach(m)?;
        }
        Ok(net)
    }

    fn attach(&mut self, m: &Member) -> anyhow::Result<()> {
        let hub = self.hub.as_str();
        ip(&["netns", "add", &m.ns])?;
        ip(&["-n", &m.ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            hub,
            "link",
            "add",
            &m.hub_port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &m.ns,
        ])?;
        ip(&["-n", hub, "link", "set", &m.hub_port, "master", "br0"])?;
        ip(&["-n", hub, "link", "set", &m.hub_port, "up"])?;
        let cidr = format!("{}/24", m.ip);
        ip(&["-n", &m.ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &m.ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// The member of a site.
    pub fn site(&self, name: &str) -> anyhow::Result<&Member> {
        self.sites
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
            .with_context(|| format!("no namespace for site {name}"))
    }

    /// Every namespace of the run, the hub last.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.ops.ns.clone(), self.pg.ns.clone()];
        all.extend(self.sites.iter().map(|(_, m)| m.ns.clone()));
        all.push(self.hub.clone());
        all
    }

    /// Cuts a site off: its link to the bridge goes down (nothing in or out).
    pub fn cut(&self, site: &str) -> anyhow::Result<()> {
        let port = self.site(site)?.hub_port.clone();
        ip(&["-n", &self.hub, "link", "set", &port, "down"])
    }

    /// Brings a cut site's link back up.
    pub fn reconnect(&self, site: &str) -> anyhow::Result<()> {
        let port = self.site(site)?.hub_port.clone();
        ip(&["-n", &self.hub, "link", "set", &port, "up"])
    }

    /// Drops every packet `from` sends to `to` (one direction), silently.
    pub fn drop_one_way(&self, from: &str, to: Ipv4Addr) -> anyhow::Result<()> {
        let ns = self.site(from)?.ns.clone();
        let to = to.to_string();
        iptables(&ns, &["-A", "OUTPUT", "-d", &to, "-j", "DROP"])?;
        Ok(())
    }

    /// Drops a share of the packets a site sends to each address in `to` (random loss).
    pub fn lossy(&self, from: &str, to: &[Ipv4Addr], probability: f64) -> anyhow::Result<()> {
        let ns = self.site(from)?.ns.clone();
        let p = format!("{probability:.3}");
        for addr in to {
            let addr = addr.to_string();
            iptables(
                &ns,
                &[
                    "-A",
                    "OUTPUT",
                    "-d",
                    &addr,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Delays what a site sends (tc netem on its hub port, in the direction hub → site too).
    /// Returns false when the kernel has no netem, so the caller reports it.
    pub fn delay(&self, site: &str, delay_ms: u64, jitter_ms: u64) -> anyhow::Result<bool> {
        let m = self.site(site)?.clone();
        let d = format!("{delay_ms}ms");
        let j = format!("{jitter_ms}ms");
        let ok = Command::new("ip")
            .args([
                "netns", "exec", &m.ns, "tc", "qdisc", "replace", "dev", "eth0", "root",
            ])
            .args(["netem", "delay", &d, &j, "reorder", "25%", "50%"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        Ok(ok)
    }

    /// Limits the rate a site sends at (a token bucket): a queue that adds delay under
    /// bursts, used where the kernel has no netem.
    pub fn throttle(&self, site: &str, rate_kbit: u64) -> anyhow::Result<()> {
        let m = self.site(site)?.clone();
        let rate = format!("{rate_kbit}kbit");
        run(Command::new("ip")
            .args([
                "netns", "exec", &m.ns, "tc", "qdisc", "replace", "dev", "eth0", "root",
            ])
            .args(["tbf", "rate", &rate, "burst", "8kb", "latency", "300ms"]))
    }

    /// Removes every drop, loss, delay and cut of every site.
    pub fn heal(&self) -> anyhow::Result<()> {
        for (name, m) in &self.sites {
            self.reconnect(name)?;
            iptables(&m.ns, &["-F", "OUTPUT"])?;
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", &m.ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                ])
                .output();
        }
        Ok(())
    }

    /// Kills everything inside the namespaces and deletes them.
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        for ns in self.namespaces() {
            remove_namespace(&ns);
        }
        self.removed = true;
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.remove();
    }
}

fn member(run_id: &str, name: &str, ip: Ipv4Addr, index: usize) -> Member {
    Member {
        ns: format!("{PREFIX}{run_id}-{name}"),
        ip,
        hub_port: format!("p{index}"),
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn iptables(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip")
        .args(["netns", "exec", ns, "iptables", "-w"])
        .args(args))
}

/// Runs a command to completion; a failure names the command and its stderr.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    run_output(command).map(|_| ())
}

/// Runs a command to completion and returns its stdout.
pub fn run_output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

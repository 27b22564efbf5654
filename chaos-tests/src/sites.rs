//! The sites file: which sites exist, which hold data (run executors) and which are
//! witnesses, and the per-run topology file with every address rewritten to the site's
//! namespace address.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;
use failover_core::{Timing, Topology};

/// One site as the harness lays it out.
#[derive(Debug, Clone)]
pub struct SitePlan {
    /// The site's name in the topology.
    pub name: String,
    /// The address of the site's namespace on the chaos bridge.
    pub ip: Ipv4Addr,
    /// Raft node ids of the controllers the site hosts.
    pub controllers: Vec<u64>,
    /// Whether the site is eligible for the group (and so runs executors and workers).
    pub data: bool,
}

/// The whole layout of one run: sites with addresses, and the topology to write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every site, in the order of the sites file.
    pub sites: Vec<SitePlan>,
    /// The group the workload runs under (the first of the file).
    pub group: String,
    /// The group's eligible sites, highest priority first.
    pub group_sites: Vec<String>,
    /// Timing of the topology (for the L1 and L2 bounds).
    pub timing: Timing,
    /// The topology with rewritten addresses.
    pub topology: Topology,
}

/// The subnet of the chaos bridge: 10.213.0.0/24, private to the hub namespace.
pub const SUBNET_PREFIX: [u8; 3] = [10, 213, 0];
/// Address of the operator's namespace (where the harness runs the CLI).
pub const OPS_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
/// Address of the PostgreSQL namespace.
pub const PG_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 3);
/// The port PostgreSQL listens on.
pub const PG_PORT: u16 = 5432;

impl Plan {
    /// Reads a sites file and lays its sites out on the chaos subnet.
    pub fn load(path: &Path) -> anyhow::Result<Plan> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sites file {}", path.display()))?;
        let topology = Topology::from_yaml(&text, &path.display().to_string())?;
        Plan::from_topology(topology)
    }

    fn from_topology(mut topology: Topology) -> anyhow::Result<Plan> {
        let group = topology
            .groups
            .first()
            .context("the sites file declares no group: the workload needs one")?
            .clone();
        if group.sites.len() < 2 {
            anyhow::bail!(
                "group {} has fewer than two sites: nothing to fail over to",
                group.name
            );
        }
        if topology.sites.len() > 200 {
            anyhow::bail!("more than 200 sites do not fit the chaos subnet");
        }
        let mut sites = Vec::new();
        for (index, site) in topology.sites.iter_mut().enumerate() {
            let ip = Ipv4Addr::new(
                SUBNET_PREFIX[0],
                SUBNET_PREFIX[1],
                SUBNET_PREFIX[2],
                10 + index as u8,
            );
            for c in &mut site.controllers {
                c.addr = rewrite(&c.addr, ip)?;
                if let Some(http) = &c.http_addr {
                    c.http_addr = Some(rewrite(http, ip)?);
                }
            }
            sites.push(SitePlan {
                name: site.name.to_string(),
                ip,
                controllers: site.controllers.iter().map(|c| c.id).collect(),
                data: group.sites.iter().any(|s| s == &site.name),
            });
        }
        Ok(Plan {
            sites,
            group: group.name.to_string(),
            group_sites: group.sites.iter().map(|s| s.to_string()).collect(),
            timing: topology.timing,
            topology,
        })
    }

    /// The topology file for this run, as YAML, in plaintext (`insecure: true`).
    pub fn topology_yaml(&self) -> anyhow::Result<String> {
        let mut topology = self.topology.clone();
        topology.tls = Some(failover_core::config::TlsConfig {
            insecure: true,
            ..Default::default()
        });
        Ok(serde_norway::to_string(&topology)?)
    }

    /// The topology file for this run, as YAML, over mutual TLS as a real deployment runs
    /// it: a CA and every certificate are issued into `tls_dir` (controllers for their
    /// namespace addresses, an operator, and an engine per site).
    pub fn secured_topology_yaml(&self, tls_dir: &Path) -> anyhow::Result<String> {
        let topology = failover_cli::certs::issue_for(&self.topology, tls_dir)?;
        Ok(serde_norway::to_string(&topology)?)
    }

    /// The site by name.
    pub fn site(&self, name: &str) -> Option<&SitePlan> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The site a controller lives at.
    pub fn site_of(&self, node: u64) -> Option<&SitePlan> {
        self.sites.iter().find(|s| s.controllers.contains(&node))
    }

    /// Every controller id.
    pub fn controllers(&self) -> Vec<u64> {
        self.sites
            .iter()
            .flat_map(|s| s.controllers.iter().copied())
            .collect()
    }

    /// Sites that hold controllers but are not eligible for the group.
    pub fn witnesses(&self) -> Vec<&SitePlan> {
        self.sites.iter().filter(|s| !s.data).collect()
    }

    /// The L1 bound: failure_timeout + lease_ttl + max_clock_drift + one keepalive round,
    /// plus one election when the leader was lost with the site.
    pub fn l1_bound_ms(&self, leader_lost: bool) -> u64 {
        let t = &self.timing;
        let election = if leader_lost {
            t.election_timeout_max_ms + t.raft_heartbeat_ms
        } else {
            0
        };
        t.failure_timeout_ms
            + t.lease_ttl_ms
            + t.max_clock_drift_ms
            + t.keepalive_interval_ms
            + election
    }
}

/// `host:port` with the host replaced by `ip`.
fn rewrite(addr: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
    let (_, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("address {addr} has no port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("address {addr} has no valid port"))?;
    Ok(format!("{ip}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example sites file lays out as two data sites and a witness, with every
    /// controller address moved to its site's namespace address.
    #[test]
    fn example_is_rewritten_to_namespace_addresses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sites.example.yaml");
        let plan = Plan::load(&path).expect("example loads");
        assert_eq!(plan.group_sites, vec!["site-a", "site-b"]);
        assert_eq!(plan.witnesses().len(), 1);
        let a = plan.site("site-a").expect("site-a");
        assert_eq!(a.ip, Ipv4Addr::new(10, 213, 0, 10));
        let yaml = plan.topology_yaml().expect("yaml");
        assert!(yaml.contains("10.213.0.10:7101"), "{yaml}");
        assert!(!yaml.contains("127.0.0.1"), "{yaml}");
        let back = Topology::from_yaml(&yaml, "generated").expect("generated file is valid");
        assert_eq!(back.sites.len(), 3);
    }
}

//! `failover exec`'s start check: its site and group must exist in the cluster, and the
//! site must be one of the group's sites (a witness, a site in no group, runs no
//! executors). Asked of the cluster, which knows the topology it runs.

use std::time::{Duration, Instant};

use failover_client::{AdminClient, ClientError, Endpoints};
use failover_core::placement::Placements;
use failover_core::Topology;

use super::ClusterArgs;

/// How long a freshly formed cluster gets to create its groups before the check uses
/// what it has.
const GROUPS_WAIT: Duration = Duration::from_secs(10);

/// Checks `site` and `group` with the cluster; an error names what is wrong.
///
/// When no controller answers, the topology file (if `--config` names one) decides, and
/// without one the executor starts unchecked (it waits for the cluster anyway).
pub(crate) async fn check(
    cluster: &ClusterArgs,
    endpoints: &Endpoints,
    site: &str,
    group: &str,
) -> anyhow::Result<()> {
    let placements = match placements_from_cluster(endpoints, cluster.dialer()?).await {
        Ok(placements) => placements,
        Err(ClientError::Unreachable { .. }) => match &cluster.config {
            Some(path) => {
                tracing::warn!(
                    "no controller answered; checking site and group against {}",
                    path.display()
                );
                placements_from_topology(&super::load_topology(path)?)
            }
            None => {
                tracing::warn!("no controller answered; starting without checking site and group");
                return Ok(());
            }
        },
        Err(e) => return Err(e.into()),
    };
    placements
        .check(site, group)
        .map_err(|e| anyhow::anyhow!("failover exec cannot run here: {e}"))
}

async fn placements_from_cluster(
    endpoints: &Endpoints,
    dialer: std::sync::Arc<dyn failover_client::Dialer>,
) -> Result<Placements, ClientError> {
    let mut client = AdminClient::with_dialer(endpoints.clone(), dialer);
    let deadline = Instant::now() + GROUPS_WAIT;
    loop {
        let status = client.status().await?;
        // A cluster that just formed creates its groups right after the first election.
        if !status.groups.is_empty() || Instant::now() >= deadline {
            return Ok(Placements {
                sites: status.sites.into_iter().map(|s| s.name).collect(),
                groups: status
                    .groups
                    .into_iter()
                    .map(|g| (g.name, g.sites))
                    .collect(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn placements_from_topology(topology: &Topology) -> Placements {
    Placements {
        sites: topology.sites.iter().map(|s| s.name.to_string()).collect(),
        groups: topology
            .groups
            .iter()
            .map(|g| {
                let sites = g.sites.iter().map(|s| s.to_string()).collect();
                (g.name.to_string(), sites)
            })
            .collect(),
    }
}

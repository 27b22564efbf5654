//! `failover reload --site S`: a rolling reload of a site's workers, reported when done.

use std::time::{Duration, Instant};

use clap::Args;

use super::ClusterArgs;

/// How long `reload` waits for the executors to finish.
const RELOAD_WAIT: Duration = Duration::from_secs(90);

/// Arguments of `failover reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The site whose executors reload their workers.
    #[arg(long)]
    pub site: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub(crate) async fn run(args: ReloadArgs) -> anyhow::Result<()> {
    let mut client = args.cluster.client()?;
    let generation = client.reload(&args.site).await?.generation;
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let status = client.status().await?;
        let executors: Vec<_> = status
            .sites
            .iter()
            .filter(|s| s.name == args.site)
            .flat_map(|s| s.executors.iter().filter_map(|e| e.report.clone()))
            .collect();
        if executors.is_empty() {
            anyhow::bail!("no executor of site {} reports to the leader", args.site);
        }
        if executors.iter().all(|e| e.reload_done >= generation) {
            let mut failed = false;
            for e in &executors {
                let verdict = if e.reload_ok { "reloaded" } else { "FAILED" };
                println!("{}: {verdict}: {}", e.executor_id, e.reload_message);
                failed |= !e.reload_ok;
            }
            if failed {
                anyhow::bail!(
                    "reload of site {} failed; the previous workers keep running",
                    args.site
                );
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the executors of site {} did not finish the reload within {RELOAD_WAIT:?}",
                args.site
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

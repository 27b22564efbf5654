//! `failover reload --site S`: a rolling reload of a site's workers, reported when done.
//!
//! It waits for the site's live executors only: one the leader marks stale (silent for
//! the stale bound, e.g. killed without deregistering) is listed as skipped.

use std::time::{Duration, Instant};

use clap::Args;
use failover_proto::admin::StatusResponse;
use failover_proto::executor::ExecutorReport;

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
        let (live, stale) = site_executors(&status, &args.site);
        if live.is_empty() {
            anyhow::bail!(
                "no live executor of site {} reports to the leader{}",
                args.site,
                stale_note(&stale)
            );
        }
        if live.iter().all(|e| e.reload_done >= generation) {
            let mut failed = false;
            for e in &live {
                let verdict = if e.reload_ok { "reloaded" } else { "FAILED" };
                println!("{}: {verdict}: {}", e.executor_id, e.reload_message);
                failed |= !e.reload_ok;
            }
            for (id, silent_ms) in &stale {
                println!("{id}: skipped: stale (silent for {silent_ms} ms)");
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

/// The site's executors that report (live), and the stale ones with their silence: a
/// stale executor is probably dead, and waiting for it would only run into the timeout.
fn site_executors(
    status: &StatusResponse,
    site: &str,
) -> (Vec<ExecutorReport>, Vec<(String, u64)>) {
    let mut live = Vec::new();
    let mut stale = Vec::new();
    for executor in status
        .sites
        .iter()
        .filter(|s| s.name == site)
        .flat_map(|s| &s.executors)
    {
        let Some(report) = &executor.report else {
            continue;
        };
        if executor.stale {
            stale.push((report.executor_id.clone(), executor.last_seen_ms));
        } else {
            live.push(report.clone());
        }
    }
    (live, stale)
}

fn stale_note(stale: &[(String, u64)]) -> String {
    if stale.is_empty() {
        return String::new();
    }
    let ids: Vec<&str> = stale.iter().map(|(id, _)| id.as_str()).collect();
    format!(" (stale, not waited for: {})", ids.join(", "))
}

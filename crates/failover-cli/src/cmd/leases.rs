//! `failover leases`: the live leases, their holders, tokens and time left.
//!
//! Without a quorum it prints the leases a controller that answered has in its state,
//! without time left (only a leader tracks renewals), marked as possibly stale on
//! stderr, and exits with [`crate::EXIT_NO_QUORUM`].

use clap::Args;
use failover_client::ClientError;

use super::{ClusterArgs, Output};
use crate::output;
use failover_proto::admin::LeasesResponse;
use serde::Serialize;

use crate::output::{site_cell, table};

/// Arguments of `failover leases`.
#[derive(Debug, Args)]
pub struct LeasesArgs {
    /// Only this group (default: every group).
    #[arg(long, default_value = "")]
    pub group: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format (`-o json`).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: LeasesArgs) -> anyhow::Result<()> {
    let mut client = args.cluster.client()?;
    let leases = match client.leases(&args.group).await {
        Ok(leases) => leases,
        Err(ClientError::NoQuorum(no)) => {
            if let Ok(leases) = client.stale_leases(&no.view_from, &args.group).await {
                eprintln!(
                    "{no}; controller {}'s local leases follow, possibly stale, without time left",
                    no.view.answered_by
                );
                print(&leases, args.output)?;
            }
            return Err(ClientError::NoQuorum(no).into());
        }
        Err(e) => return Err(e.into()),
    };
    print(&leases, args.output)
}

fn print(leases: &failover_proto::admin::LeasesResponse, format: Output) -> anyhow::Result<()> {
    match format {
        Output::Json => output::print_json(&leases_json(leases))?,
        Output::Table => print!("{}", leases_table(leases)),
    }
    Ok(())
}

/// One lease as JSON.
#[derive(Debug, Serialize)]
pub(crate) struct LeaseJson {
    /// Group name.
    pub(crate) group: String,
    /// Lease id.
    pub(crate) lease_id: u64,
    /// Holder's site.
    pub(crate) site: String,
    /// Holder (instance id).
    pub(crate) holder: String,
    /// Epoch it was granted in.
    pub(crate) epoch: u64,
    /// Fencing token.
    pub(crate) fencing_token: u64,
    /// Milliseconds until the leader may consider it expired.
    pub(crate) ttl_left_ms: u64,
}

/// `failover leases --output json`: an array.
pub(crate) fn leases_json(l: &LeasesResponse) -> Vec<LeaseJson> {
    l.leases
        .iter()
        .map(|l| LeaseJson {
            group: l.group.clone(),
            lease_id: l.lease_id,
            site: l.site.clone(),
            holder: l.holder.clone(),
            epoch: l.epoch,
            fencing_token: l.fencing_token,
            ttl_left_ms: l.ttl_left_ms,
        })
        .collect()
}

/// The human form of `failover leases`.
pub(crate) fn leases_table(l: &LeasesResponse) -> String {
    let rows: Vec<Vec<String>> = l
        .leases
        .iter()
        .map(|l| {
            vec![
                l.group.clone(),
                l.lease_id.to_string(),
                site_cell(&l.site),
                l.holder.clone(),
                l.epoch.to_string(),
                l.fencing_token.to_string(),
                if l.ttl_left_ms == 0 {
                    "-".to_owned()
                } else {
                    format!("{} ms", l.ttl_left_ms)
                },
            ]
        })
        .collect();
    table(
        &[
            "GROUP", "LEASE", "SITE", "HOLDER", "EPOCH", "TOKEN", "TTL LEFT",
        ],
        &rows,
    )
}

//! `failover leases`: the live leases, their holders, tokens and time left.
//!
//! Without a quorum it prints the leases a controller that answered has in its state,
//! without time left (only a leader tracks renewals), marked as possibly stale on
//! stderr, and exits with [`crate::EXIT_NO_QUORUM`].

use clap::Args;
use failover_client::ClientError;

use super::{ClusterArgs, Output};
use crate::output;

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
        Output::Json => output::print_json(&output::leases_json(leases))?,
        Output::Table => print!("{}", output::leases_table(leases)),
    }
    Ok(())
}

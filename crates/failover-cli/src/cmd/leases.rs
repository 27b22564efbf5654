//! `failover leases`: the live leases, their holders, tokens and time left.

use clap::Args;

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
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: LeasesArgs) -> anyhow::Result<()> {
    let leases = args.cluster.client()?.leases(&args.group).await?;
    match args.output {
        Output::Json => output::print_json(&output::leases_json(&leases))?,
        Output::Table => print!("{}", output::leases_table(&leases)),
    }
    Ok(())
}

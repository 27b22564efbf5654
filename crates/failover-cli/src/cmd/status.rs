//! `failover status`: leader, controllers, groups.

use clap::Args;

use super::{ClusterArgs, Output};
use crate::output;

/// Arguments of `failover status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let status = args.cluster.client()?.status().await?;
    match args.output {
        Output::Json => output::print_json(&output::StatusJson::from(&status))?,
        Output::Table => print!("{}", output::status_table(&status)),
    }
    Ok(())
}

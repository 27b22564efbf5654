//! `failover history`: every change of active site, oldest first.

use clap::Args;

use super::{ClusterArgs, Output};
use crate::output;

/// Arguments of `failover history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this group (default: every group).
    #[arg(long, default_value = "")]
    pub group: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let history = args.cluster.client()?.history(&args.group).await?;
    match args.output {
        Output::Json => output::print_json(&output::history_json(&history))?,
        Output::Table => print!("{}", output::history_table(&history)),
    }
    Ok(())
}

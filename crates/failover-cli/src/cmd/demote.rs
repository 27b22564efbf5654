//! `failover demote`: no site active for a group (maintenance), through the same drain as
//! a promote; `failover promote SITE` ends it.

use clap::Args;
use failover_proto::admin::DemoteRequest;

use super::{ClusterArgs, Output};

/// Arguments of `failover demote`.
#[derive(Debug, Args)]
pub struct DemoteArgs {
    /// The failover group.
    #[arg(long, default_value = "default")]
    pub group: String,
    /// Why; recorded in the history.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Block until no site is active.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format (`-o json`).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: DemoteArgs) -> anyhow::Result<()> {
    let mut client = args.cluster.client()?;
    let request = DemoteRequest {
        group: args.group,
        reason: args.reason,
        actor: super::promote::actor(),
        wait: args.wait,
    };
    let response = client.demote(request).await?;
    super::promote::print_change(&response, args.output)
}

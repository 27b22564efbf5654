//! `failover pause` and `failover resume`: hold back automatic failover of a group (or of
//! every group) during maintenance, and let it act again. Operator promotes and demotes
//! keep working while paused.

use clap::Args;
use failover_proto::admin::{PauseRequest, PauseResponse, ResumeRequest};
use serde::Serialize;

use super::{ClusterArgs, Output};
use crate::output;

/// Arguments of `failover pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The failover group; every group when absent.
    #[arg(long)]
    pub group: Option<String>,
    /// Why; recorded in the history and shown in status.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// Arguments of `failover resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The failover group; every group when absent.
    #[arg(long)]
    pub group: Option<String>,
    /// Why; recorded in the history.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// What `pause` and `resume` print with `--output json`.
#[derive(Debug, Serialize)]
struct PauseJson {
    /// Every group asked about, after the request.
    groups: Vec<output::GroupJson>,
    /// Groups that were already in the asked-for state.
    unchanged: Vec<String>,
}

pub(crate) async fn pause(args: PauseArgs) -> anyhow::Result<()> {
    let mut client = args.cluster.client()?;
    let request = PauseRequest {
        group: args.group.unwrap_or_default(),
        reason: args.reason,
        actor: super::promote::actor(),
    };
    let response = client.pause(request).await?;
    print(&response, args.output, "already paused")
}

pub(crate) async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let mut client = args.cluster.client()?;
    let request = ResumeRequest {
        group: args.group.unwrap_or_default(),
        reason: args.reason,
        actor: super::promote::actor(),
    };
    let response = client.resume(request).await?;
    print(&response, args.output, "was not paused")
}

fn print(response: &PauseResponse, output: Output, unchanged: &str) -> anyhow::Result<()> {
    if output == Output::Json {
        return output::print_json(&PauseJson {
            groups: response
                .groups
                .iter()
                .map(output::GroupJson::from)
                .collect(),
            unchanged: response.unchanged.clone(),
        });
    }
    for group in &response.groups {
        let note = if response.unchanged.contains(&group.name) {
            format!(" ({unchanged}; nothing changed)")
        } else {
            String::new()
        };
        println!("{}{note}", output::pause_line(group));
    }
    Ok(())
}

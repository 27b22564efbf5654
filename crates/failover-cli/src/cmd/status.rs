//! `failover status`: leader, controllers, groups, executors and their workers.
//!
//! Without a quorum it still prints what the controllers that answered know, marked as
//! possibly stale, and exits with [`crate::EXIT_NO_QUORUM`].

use clap::Args;
use failover_client::admin::NoQuorum;
use failover_client::ClientError;
use failover_proto::admin::StatusResponse;

use super::{ClusterArgs, Output};
use crate::output::{self, QuorumJson, StatusJson};

/// Arguments of `failover status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format (`-o json`).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let insecure = args.cluster.tls_cert.is_none();
    match client.confirmed_status().await {
        Ok((_, status)) => {
            let quorum = QuorumJson::confirmed(status.controllers.len());
            print(&status, quorum, args.output, insecure)
        }
        Err(ClientError::NoQuorum(no)) => {
            let view = as_seen_by_the_cli(&no);
            print(&view, QuorumJson::lost(&no), args.output, insecure)?;
            Err(ClientError::NoQuorum(no).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints the status; `insecure`: the answer came over plaintext (`tls.insecure`), which
/// the table's first line and the JSON's `transport` say.
fn print(
    status: &StatusResponse,
    quorum: QuorumJson,
    output: Output,
    insecure: bool,
) -> anyhow::Result<()> {
    let transport = if insecure { "insecure" } else { "mutual-tls" };
    match output {
        Output::Json => {
            let mut json = serde_json::to_value(StatusJson::new(status, quorum))?;
            if let Some(map) = json.as_object_mut() {
                map.insert("transport".into(), transport.into());
            }
            output::print_json(&json)
        }
        Output::Table => {
            if insecure {
                println!("transport: INSECURE (plaintext, no authentication: tls.insecure)");
            }
            print!("{}", output::status_table(status, &quorum));
            Ok(())
        }
    }
}

/// Without a leader nobody knows the others' health: a follower's view says "unknown".
/// What the CLI does know is who answered it, and the role each gives itself.
fn as_seen_by_the_cli(no: &NoQuorum) -> StatusResponse {
    let mut view = no.view.clone();
    for c in &mut view.controllers {
        match no.answered_roles.iter().find(|(id, _)| *id == c.id) {
            Some((_, role)) => {
                c.reachable = true;
                if !role.is_empty() {
                    c.role.clone_from(role);
                }
            }
            None => {
                c.reachable = false;
                c.role = "unreachable".to_owned();
            }
        }
    }
    view
}

//! `failover history`: every change of active site, oldest first.
//!
//! Without a quorum it prints the history of a controller that answered, marked as
//! possibly stale on stderr, and exits with [`crate::EXIT_NO_QUORUM`].

use clap::Args;
use failover_client::ClientError;

use super::{ClusterArgs, Output};
use crate::output;
use failover_proto::admin::HistoryResponse;

use crate::output::{format_unix_ms, history_entry_json, site_cell, table, HistoryJson};

/// Arguments of `failover history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this group (default: every group).
    #[arg(long, default_value = "")]
    pub group: String,
    /// Only the newest N entries (still oldest first); 0 for all.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format (`-o json`).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let mut client = args.cluster.client()?;
    let history = match client.history_page(&args.group, args.limit, 0).await {
        Ok(history) => history,
        Err(ClientError::NoQuorum(no)) => {
            let stale = client
                .stale_history_page(&no.view_from, &args.group, args.limit)
                .await;
            if let Ok(history) = stale {
                eprintln!(
                    "{no}; controller {}'s local history follows, possibly stale",
                    no.view.answered_by
                );
                print(&history, args.output)?;
            }
            return Err(ClientError::NoQuorum(no).into());
        }
        Err(e) => return Err(e.into()),
    };
    print(&history, args.output)
}

fn print(history: &failover_proto::admin::HistoryResponse, format: Output) -> anyhow::Result<()> {
    match format {
        Output::Json => output::print_json(&history_json(history))?,
        Output::Table => print!("{}", history_table(history)),
    }
    Ok(())
}

/// `failover history --output json`: an array, oldest first.
pub(crate) fn history_json(h: &HistoryResponse) -> Vec<HistoryJson> {
    h.entries.iter().map(history_entry_json).collect()
}

/// The human form of `failover history`.
pub(crate) fn history_table(h: &HistoryResponse) -> String {
    let rows: Vec<Vec<String>> = h
        .entries
        .iter()
        .map(|e| {
            vec![
                e.group.clone(),
                e.epoch.to_string(),
                site_cell(&e.from),
                site_cell(&e.to),
                e.kind.clone(),
                e.actor.clone(),
                format_unix_ms(e.completed_at_unix_ms),
                e.reason.clone(),
            ]
        })
        .collect();
    table(
        &[
            "GROUP",
            "EPOCH",
            "FROM",
            "TO",
            "KIND",
            "ACTOR",
            "COMPLETED",
            "REASON",
        ],
        &rows,
    )
}

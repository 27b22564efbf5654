//! `chaos`: parses the command line and calls the harness (see the `chaos_tests` crate).

use std::path::PathBuf;

use anyhow::Context;
use chaos_tests::{baseline, faults, netns, report, session, workload};
use clap::{Parser, Subcommand};

/// Chaos harness for failover: real clusters in network namespaces, real faults, checked
/// history.
#[derive(Debug, Parser)]
#[command(name = "chaos")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the scenarios.
    List,
    /// Run a scenario (or `all`) for K seeds starting at N.
    Run(session::RunArgs),
    /// Print the table of the results in a directory and write report.json/report.md.
    Report(ReportArgs),
    /// Remove namespaces (and every process in them) that an earlier run left behind.
    Cleanup,
    /// Internal: the engine worker the executors run.
    #[command(hide = true)]
    Worker(workload::WorkerArgs),
    /// Internal: the etcd-lock gate of the baseline.
    #[command(hide = true)]
    EtcdGate(baseline::GateArgs),
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// The results directory.
    #[arg(long, default_value = "chaos-tests/results/latest")]
    results: PathBuf,
    /// A Markdown file whose `<!-- chaos:NAME:begin/end -->` section gets the table.
    #[arg(long)]
    doc: Option<PathBuf>,
    /// The section name in --doc.
    #[arg(long, default_value = "quick")]
    section: String,
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::List => list(),
        Command::Run(args) => require_root().and_then(|()| {
            ctrlc::set_handler(chaos_tests::interrupt)
                .context("cannot install the Ctrl-C handler")?;
            session::run(&args)
        }),
        Command::Report(args) => report_cmd(args).map(|()| true),
        Command::Cleanup => require_root().and_then(|()| cleanup()),
        Command::Worker(args) => workload::worker(args).map(|()| true),
        Command::EtcdGate(args) => baseline::gate(args).map(|()| true),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn list() -> anyhow::Result<bool> {
    for s in faults::CATALOG
        .iter()
        .chain(std::iter::once(&faults::BROKEN))
    {
        println!("{:<24} {}", s.name, s.about);
    }
    Ok(true)
}

fn cleanup() -> anyhow::Result<bool> {
    let removed = netns::cleanup()?;
    if removed.is_empty() {
        println!("nothing to clean up");
    } else {
        println!(
            "removed {} namespaces: {}",
            removed.len(),
            removed.join(", ")
        );
    }
    Ok(true)
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("chaos needs root (it creates network namespaces and sends signals)");
    }
    Ok(())
}

fn report_cmd(args: ReportArgs) -> anyhow::Result<()> {
    let runs = report::load_runs(&args.results)?;
    let rows = report::table(&runs, &session::order());
    let text = report::write(&args.results, &rows, &runs)?;
    println!("{text}");
    if let Some(doc) = &args.doc {
        report::update_doc(doc, &args.section, &report::markdown(&rows))?;
    }
    Ok(())
}

//! `failover check --config FILE`: validates a topology file and says what it describes,
//! without contacting a cluster.
//!
//! Every error is printed with its field path, each once (a YAML syntax or type error
//! stops parsing, so it comes alone); the exit code is then [`crate::EXIT_REFUSED`].

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use failover_core::{Timing, Topology};

/// Arguments of `failover check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The topology file to check.
    #[arg(long)]
    pub config: PathBuf,
}

/// A topology file that did not pass: how many errors (they are printed on stderr).
#[derive(Debug, thiserror::Error)]
#[error("{file} is not a valid topology ({count} error{})", if *.count == 1 { "" } else { "s" })]
pub(crate) struct Invalid {
    file: String,
    count: usize,
}

pub(crate) fn run(args: CheckArgs) -> anyhow::Result<()> {
    let file = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read topology file {file}"))?;
    match Topology::check_yaml(&text, &file) {
        Ok(topology) => {
            print!("{}", summary(&file, &topology));
            Ok(())
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            Err(Invalid {
                file,
                count: errors.len(),
            }
            .into())
        }
    }
}

/// What a valid topology describes, for people.
fn summary(file: &str, t: &Topology) -> String {
    let mut out = String::new();
    let controllers = t.controllers().count();
    let _ = writeln!(out, "{file}: valid topology `{}`", t.cluster_name);
    let _ = writeln!(
        out,
        "\ncontrollers: {controllers}; Raft quorum: {} (survives the loss of {})",
        controllers / 2 + 1,
        controllers - (controllers / 2 + 1)
    );
    for site in &t.sites {
        let list: Vec<String> = site
            .controllers
            .iter()
            .map(|c| match &c.http_addr {
                Some(http) => format!("{} at {} (http {http})", c.id, c.addr),
                None => format!("{} at {}", c.id, c.addr),
            })
            .collect();
        let list = if list.is_empty() {
            "no controllers".to_owned()
        } else {
            list.join(", ")
        };
        let _ = writeln!(out, "  site {}: {list}", site.name);
    }
    let _ = writeln!(out, "\ngroups:");
    for g in &t.groups {
        let sites: Vec<&str> = g.sites.iter().map(|s| s.as_str()).collect();
        let auto = match (g.auto_failover, g.accept_no_witness) {
            (false, _) => "off",
            (true, false) => "on",
            (true, true) => "on, without a witness (accepted)",
        };
        let _ = writeln!(
            out,
            "  {}: sites {} (priority order; starts at {}), automatic failover {auto}",
            g.name,
            sites.join(" > "),
            sites.first().copied().unwrap_or("-")
        );
    }
    out.push_str(&timing(&t.timing));
    out
}

/// The timing and the bounds it implies (docs/failover.md, docs/leases.md).
fn timing(t: &Timing) -> String {
    let l1 = t.failure_timeout_ms + t.lease_ttl_ms + t.max_clock_drift_ms + t.keepalive_interval_ms;
    let mut out = String::from("\ntiming:\n");
    let _ = writeln!(
        out,
        "  raft heartbeat {} ms, election timeout {}-{} ms (a new leader within {} ms)",
        t.raft_heartbeat_ms,
        t.election_timeout_min_ms,
        t.election_timeout_max_ms,
        t.takeover_ms()
    );
    let _ = writeln!(
        out,
        "  lease ttl {} ms, keepalive {} ms, max clock drift {} ms (rides out an election \
         with {} ms to spare)",
        t.lease_ttl_ms,
        t.keepalive_interval_ms,
        t.max_clock_drift_ms,
        t.ride_out_margin_ms()
    );
    let _ = writeln!(
        out,
        "  failure timeout {} ms, failover cooldown {} ms",
        t.failure_timeout_ms, t.failover_cooldown_ms
    );
    let _ = writeln!(
        out,
        "  L1: a lost active site's group runs at a standby within {l1} ms \
         (failure_timeout + ttl + drift + keepalive), plus up to {} ms when the leader \
         was at the lost site",
        t.election_timeout_max_ms
    );
    let _ = writeln!(
        out,
        "  L2: a site cut off from the quorum stops its workers within {} ms of its last \
         renewal (ttl - drift, less the executor's stop grace)",
        t.lease_ttl_ms - t.max_clock_drift_ms
    );
    out
}

//! Arguments of every subcommand, and how the cluster is found.

mod check;
mod controller;
mod demote;
mod dev;
mod exec;
mod exec_check;
pub mod guard;
mod history;
mod leases;
mod pause;
mod promote;
mod reload;
mod status;
mod token;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::sync::Arc;

use failover_client::tls::TlsFiles;
use failover_client::{AdminClient, Dialer, Endpoints, TcpDialer, TlsDialer};
use failover_core::{Timing, Topology};
use failover_proto::pin::ClusterPin;

/// How long a command keeps asking while controllers answer without a confirmed leader
/// (an election takes `election_timeout_max_ms`, 500 ms by default, plus a round).
const CLI_SETTLE: Duration = Duration::from_secs(3);
/// How long one controller may take to answer a probe or a call.
const CLI_ATTEMPT: Duration = Duration::from_secs(3);

/// Multi-site failover coordinator.
#[derive(Debug, Parser)]
#[command(name = "failover", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The value of `--log-format` that selects this format (to pass it on to children).
    pub fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// Output format of commands that print state.
#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Aligned tables.
    #[default]
    Table,
    /// JSON on stdout.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one controller (a Raft node) of the topology.
    Controller(controller::ControllerArgs),
    /// Start every controller of a topology on this machine and wait for Ctrl-C.
    Dev(dev::DevArgs),
    /// Show the leader, the controllers and every group's active site.
    Status(status::StatusArgs),
    /// Make a site active for a group.
    Promote(promote::PromoteArgs),
    /// Make no site active for a group (maintenance).
    Demote(demote::DemoteArgs),
    /// Pause automatic failover of a group, or of every group (maintenance).
    Pause(pause::PauseArgs),
    /// Resume automatic failover of a group, or of every group.
    Resume(pause::ResumeArgs),
    /// Show every change of active site, oldest first.
    History(history::HistoryArgs),
    /// Validate a topology file and summarize it, without contacting a cluster.
    Check(check::CheckArgs),
    /// Show the live leases: site, holder, epoch, fencing token, time left.
    Leases(leases::LeasesArgs),
    /// Run a site's workers while the site holds the group's lease.
    Exec(exec::ExecArgs),
    /// Replace a site's workers one by one (rolling reload).
    Reload(reload::ReloadArgs),
    /// Issue bearer tokens for clients that cannot use certificates.
    Token(token::TokenArgs),
    /// Internal: the per-worker guard started by `exec`.
    #[command(hide = true)]
    Guard(guard::GuardArgs),
}

impl Command {
    /// Whether the command keeps running (and so logs at `info` by default).
    pub fn is_long_running(&self) -> bool {
        matches!(
            self,
            Command::Controller(_) | Command::Dev(_) | Command::Exec(_)
        )
    }
}

/// How commands that talk to the cluster find it.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Controller addresses, comma separated (`host:port,host:port`).
    #[arg(long, env = "FAILOVER_ENDPOINTS")]
    pub endpoints: Option<String>,
    /// A topology file whose controllers to contact (used when no endpoints are given).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// PEM file of the cluster CA (mutual TLS, docs/security.md).
    #[arg(long, env = "FAILOVER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate (its role: operator, reader or engine).
    #[arg(long, env = "FAILOVER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of this client's private key.
    #[arg(long, env = "FAILOVER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Connect in plaintext, to a cluster run with `tls: { insecure: true }`.
    #[arg(long, env = "FAILOVER_INSECURE")]
    pub insecure: bool,
    /// The id of the cluster to talk to (`failover status` shows it): a controller of
    /// any other cluster is refused. Without it, the id of the first controller that
    /// answers is pinned for the rest of the command (docs/security.md).
    #[arg(long, env = "FAILOVER_CLUSTER_ID", value_parser = parse_cluster_id)]
    pub cluster_id: Option<String>,
    /// A file holding a bearer token (the topology's `tokens:`), for a client without a
    /// certificate: give it with --tls-ca only (docs/security.md, "Bearer tokens").
    #[arg(long, env = "FAILOVER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// The bearer token in `path` (surrounding whitespace ignored).
pub(crate) fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()) {
        anyhow::bail!(
            "the token file {} must hold one token of visible ASCII characters",
            path.display()
        );
    }
    Ok(token.to_owned())
}

/// A valid `--cluster-id`.
fn parse_cluster_id(text: &str) -> Result<String, String> {
    failover_core::config::check_cluster_id(text)?;
    Ok(text.to_owned())
}

impl ClusterArgs {
    /// An admin client for the cluster these arguments name, with the CLI's time
    /// bounds (docs/cli.md, "Time bounds").
    pub fn client(&self) -> anyhow::Result<AdminClient> {
        let mut client = AdminClient::with_dialer(self.endpoints_and_timing()?.0, self.dialer()?);
        client.deadline = CLI_SETTLE;
        client.attempt_timeout = CLI_ATTEMPT;
        Ok(client)
    }

    /// How to reach the controllers: mutual TLS with `--tls-ca/--tls-cert/--tls-key` (or
    /// their environment variables), plaintext with `--insecure` or when the topology
    /// given with `--config` says `insecure: true`.
    pub fn dialer(&self) -> anyhow::Result<Arc<dyn Dialer>> {
        let pin = ClusterPin::from_option(self.pinned_cluster_id());
        if let Some(path) = &self.token_file {
            pin.set_token(Some(read_token(path)?));
            if let (Some(ca), None, None) = (&self.tls_ca, &self.tls_cert, &self.tls_key) {
                let tls = failover_client::tls::client_tls_without_certificate(ca.clone())?;
                return Ok(Arc::new(TlsDialer::new(tls).with_pin(pin)));
            }
            if self.tls_ca.is_none() {
                anyhow::bail!(
                    "a bearer token (--token-file) needs --tls-ca (or FAILOVER_TLS_CA): the \
                     client verifies the controllers against the cluster CA"
                );
            }
        }
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                let files = TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                };
                let tls = failover_client::tls::client_tls(files)?;
                return Ok(Arc::new(TlsDialer::new(tls).with_pin(pin)));
            }
            (None, None, None) => {}
            _ => anyhow::bail!(
                "give all three of --tls-ca, --tls-cert and --tls-key (or FAILOVER_TLS_CA, \
                 FAILOVER_TLS_CERT, FAILOVER_TLS_KEY), not only some"
            ),
        }
        let insecure_topology = self
            .config
            .as_deref()
            .and_then(|p| load_topology(p).ok())
            .is_some_and(|t| t.insecure());
        if self.insecure || insecure_topology {
            return Ok(Arc::new(TcpDialer::with_pin(pin)));
        }
        anyhow::bail!(
            "no client certificate: pass --tls-ca, --tls-cert and --tls-key (or set \
             FAILOVER_TLS_CA, FAILOVER_TLS_CERT, FAILOVER_TLS_KEY; `failover dev` prints \
             them), or --insecure for a cluster run with `tls: {{ insecure: true }}`"
        )
    }

    /// The cluster id every call is pinned to: `--cluster-id`, else the `cluster_id:` of
    /// the topology given with `--config`, else none (the first answer's is pinned).
    pub fn pinned_cluster_id(&self) -> Option<String> {
        self.cluster_id.clone().or_else(|| {
            self.config
                .as_deref()
                .and_then(|p| load_topology(p).ok())
                .and_then(|t| t.cluster_id)
        })
    }

    /// The controllers to contact, and the timing of the topology (defaults when only
    /// endpoints are given).
    pub fn endpoints_and_timing(&self) -> anyhow::Result<(Endpoints, Timing)> {
        let topology = match (&self.endpoints, &self.config) {
            (Some(list), _) => return Ok((Endpoints::parse(list)?, Timing::default())),
            (None, Some(path)) => load_topology(path)?,
            (None, None) => {
                let default = Path::new("sites.example.yaml");
                if !default.exists() {
                    anyhow::bail!(failover_client::endpoints::NoEndpoints);
                }
                load_topology(default)?
            }
        };
        Ok((Endpoints::from_topology(&topology), topology.timing))
    }
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Controller(args) => controller::run(args).await,
            Command::Dev(args) => dev::run(args, self.log_format).await,
            Command::Status(args) => status::run(args).await,
            Command::Promote(args) => promote::run(args).await,
            Command::Demote(args) => demote::run(args).await,
            Command::Pause(args) => pause::pause(args).await,
            Command::Resume(args) => pause::resume(args).await,
            Command::History(args) => history::run(args).await,
            Command::Leases(args) => leases::run(args).await,
            Command::Check(args) => check::run(args),
            Command::Exec(args) => exec::run(args).await,
            Command::Reload(args) => reload::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Guard(args) => guard::run(args),
        }
    }
}

/// Runs `failover guard`; never returns.
pub fn run_guard(args: guard::GuardArgs) -> ! {
    guard::run(args)
}

/// Reads and validates a topology file.
pub fn load_topology(path: &Path) -> anyhow::Result<Topology> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read topology file {}", path.display()))?;
    Ok(Topology::from_yaml(&text, &path.display().to_string())?)
}

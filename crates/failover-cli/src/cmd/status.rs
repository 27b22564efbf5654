//! `failover status`: leader, controllers, groups, executors and their workers.
//!
//! Without a quorum it still prints what the controllers that answered know, marked as
//! possibly stale, and exits with [`crate::EXIT_NO_QUORUM`].

use clap::Args;
use failover_client::admin::NoQuorum;
use failover_client::ClientError;
use failover_proto::admin::StatusResponse;

use super::{ClusterArgs, Output};
use crate::output;
use std::fmt::Write as _;

use failover_proto::types::{self, ExecutorState, WorkerState};
use failover_proto::wire;
use serde::Serialize;

use crate::output::{pause_lines, table, GroupJson};

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
            print!("{}", status_table(status, &quorum));
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

/// How sure a status answer is: confirmed by a quorum, or a possibly stale local view.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QuorumJson {
    /// Whether a leader confirmed the answer with a quorum.
    pub(crate) confirmed: bool,
    /// Controllers that answered the CLI (`null` when confirmed: not counted).
    pub(crate) reachable: Option<usize>,
    /// Controllers in the topology.
    pub(crate) total: usize,
    /// Controllers a quorum needs.
    pub(crate) needed: usize,
    /// Without a quorum: why, in words (`null` when confirmed).
    pub(crate) message: Option<String>,
}

impl QuorumJson {
    /// A confirmed answer over `total` controllers.
    pub(crate) fn confirmed(total: usize) -> QuorumJson {
        QuorumJson {
            confirmed: true,
            reachable: None,
            total,
            needed: total / 2 + 1,
            message: None,
        }
    }

    /// The answer of a cluster without a quorum.
    pub(crate) fn lost(no: &failover_client::admin::NoQuorum) -> QuorumJson {
        QuorumJson {
            confirmed: false,
            reachable: Some(no.answered),
            total: no.total,
            needed: no.needed,
            message: Some(no.to_string()),
        }
    }
}

/// `failover status --output json`: everything the table shows, and more.
#[derive(Debug, Serialize)]
pub(crate) struct StatusJson {
    /// Leader id, `null` when none is known.
    pub(crate) leader: Option<u64>,
    /// Current Raft term.
    pub(crate) term: u64,
    /// The controller that answered.
    pub(crate) answered_by: u64,
    /// Whether the answer reflects every committed change (false: a possibly stale view).
    pub(crate) consistent: bool,
    /// Whether a quorum confirmed the answer, and the counts when not.
    pub(crate) quorum: QuorumJson,
    /// Every controller of the topology.
    pub(crate) controllers: Vec<ControllerJson>,
    /// Every group.
    pub(crate) groups: Vec<GroupJson>,
    /// Every site with the executors reporting to the leader.
    pub(crate) sites: Vec<SiteJson>,
    /// The cluster's identity, `null` until its first leader fixed it.
    pub(crate) cluster_id: Option<String>,
}

/// One site in [`StatusJson`].
#[derive(Debug, Serialize)]
pub(crate) struct SiteJson {
    /// Site name.
    pub(crate) name: String,
    /// Every controller and executor there silent for `failure_timeout` (leader's view).
    pub(crate) lost: bool,
    /// Milliseconds since the leader last heard from the site (`null`: never).
    pub(crate) last_heard_ms: Option<u64>,
    /// Its executors.
    pub(crate) executors: Vec<ExecutorJson>,
}

/// One executor in [`SiteJson`].
#[derive(Debug, Serialize)]
pub(crate) struct ExecutorJson {
    /// Executor id.
    pub(crate) id: String,
    /// Group it runs.
    pub(crate) group: String,
    /// Its site.
    pub(crate) site: String,
    /// Its state as the leader knows it: `holding`, `draining`, `standby`, `connecting`,
    /// `lost`, `paused`, `silent` (stale, no lease) or `fenced` (its lease deadline
    /// passed; never shown as running).
    pub(crate) state: String,
    /// The fencing value (epoch) of the lease it holds or last claimed; `null` for none.
    pub(crate) fencing_value: Option<u64>,
    /// While holding or draining: ms until the leader may treat its lease as expired.
    pub(crate) lease_left_ms: Option<u64>,
    /// When fenced: ms since its lease deadline passed (at least).
    pub(crate) fenced_for_ms: Option<u64>,
    /// Ready to take over (as last reported).
    pub(crate) ready: bool,
    /// Not crash-looping or failing health checks (as last reported).
    pub(crate) healthy: bool,
    /// The lease state in its last report: `acquired`, `standby`, `draining`, `lost`,
    /// `connecting`, `paused`. A silent executor's report is old: see `state`.
    pub(crate) lease: String,
    /// Fencing token of the lease it reported holding (0 if none).
    pub(crate) fencing_token: u64,
    /// Milliseconds since the leader last heard from it.
    pub(crate) last_seen_ms: u64,
    /// Silent for `stale_after_ms` or longer (probably dead; it did not deregister).
    pub(crate) stale: bool,
    /// The stale bound.
    pub(crate) stale_after_ms: u64,
    /// A stale executor is forgotten once silent for this long.
    pub(crate) forget_after_ms: u64,
    /// Why it is not ready or healthy (`null` when it says nothing).
    pub(crate) message: Option<String>,
    /// Its workers.
    pub(crate) workers: Vec<WorkerJson>,
}

/// One worker in [`ExecutorJson`].
#[derive(Debug, Serialize)]
pub(crate) struct WorkerJson {
    /// Instance number.
    pub(crate) instance: u32,
    /// Process id (0 when not running).
    pub(crate) pid: u32,
    /// `running`, `starting`, `backoff`, `stopping`, `stopped`; `fenced` or `unknown`
    /// when its executor is fenced or silent (its last report is no longer true).
    pub(crate) state: String,
    /// The state in the executor's last report.
    pub(crate) reported_state: String,
    /// Restarts after crashes.
    pub(crate) restarts: u32,
    /// Milliseconds since it started.
    pub(crate) uptime_ms: u64,
    /// `healthy`, `unhealthy`, `unknown`.
    pub(crate) health: String,
}

/// A worker's state as status shows it: an executor the leader no longer hears from, or
/// whose lease deadline passed, does not run what it last reported.
fn worker_state(executor_state: ExecutorState, reported: WorkerState) -> String {
    match executor_state {
        ExecutorState::Fenced => "fenced".to_owned(),
        ExecutorState::Silent => "unknown".to_owned(),
        _ => wire::worker_state_name(reported).to_owned(),
    }
}

fn site_json(site: &failover_proto::admin::SiteStatus) -> SiteJson {
    SiteJson {
        name: site.name.clone(),
        lost: site.lost,
        last_heard_ms: (site.last_heard_ms != 0).then_some(site.last_heard_ms),
        executors: site
            .executors
            .iter()
            .filter_map(|e| e.report.as_ref().map(|r| (e, r)))
            .map(|(e, r)| {
                let state = match e.state() {
                    // An older controller: derive the least it can say.
                    ExecutorState::Unspecified if e.stale => ExecutorState::Silent,
                    ExecutorState::Unspecified => ExecutorState::Standby,
                    state => state,
                };
                let holds = matches!(state, ExecutorState::Holding | ExecutorState::Draining);
                ExecutorJson {
                    id: r.executor_id.clone(),
                    group: r.group.clone(),
                    site: site.name.clone(),
                    fencing_value: (e.fencing_value != 0).then_some(e.fencing_value),
                    lease_left_ms: holds.then_some(e.lease_left_ms),
                    fenced_for_ms: (state == ExecutorState::Fenced).then_some(e.fenced_for_ms),
                    ready: r.ready,
                    healthy: r.healthy,
                    lease: wire::lease_state_name(r.lease_state()).to_owned(),
                    fencing_token: r.fencing_token,
                    last_seen_ms: e.last_seen_ms,
                    stale: e.stale,
                    stale_after_ms: e.stale_after_ms,
                    forget_after_ms: e.forget_after_ms,
                    message: (!r.message.is_empty()).then(|| r.message.clone()),
                    workers: r
                        .workers
                        .iter()
                        .map(|w| WorkerJson {
                            instance: w.instance,
                            pid: w.pid,
                            state: worker_state(state, w.state()),
                            reported_state: wire::worker_state_name(w.state()).to_owned(),
                            restarts: w.restarts,
                            uptime_ms: w.uptime_ms,
                            health: wire::health_name(w.health()).to_owned(),
                        })
                        .collect(),
                    state: wire::executor_state_name(state).to_owned(),
                }
            })
            .collect(),
    }
}

/// One controller in [`StatusJson`].
#[derive(Debug, Serialize)]
pub(crate) struct ControllerJson {
    /// Raft node id.
    pub(crate) id: u64,
    /// Its site.
    pub(crate) site: String,
    /// Its gRPC address.
    pub(crate) addr: String,
    /// `leader`, `follower`, `unreachable` or `unknown` (a follower cannot see the
    /// others; without a quorum, the role a controller that answered gives itself).
    pub(crate) role: String,
    /// Whether the leader hears from it (without a quorum: whether it answered the CLI).
    pub(crate) reachable: bool,
}

impl StatusJson {
    /// The JSON of an answer; `quorum` says how sure it is.
    pub(crate) fn new(s: &StatusResponse, quorum: QuorumJson) -> Self {
        StatusJson {
            leader: (s.leader != 0).then_some(s.leader),
            term: s.term,
            answered_by: s.answered_by,
            consistent: s.consistent,
            quorum,
            controllers: s
                .controllers
                .iter()
                .map(|c| ControllerJson {
                    id: c.id,
                    site: c.site.clone(),
                    addr: c.addr.clone(),
                    role: c.role.clone(),
                    reachable: c.reachable,
                })
                .collect(),
            groups: s.groups.iter().map(GroupJson::from).collect(),
            sites: s.sites.iter().map(site_json).collect(),
            cluster_id: (!s.cluster_id.is_empty()).then(|| s.cluster_id.clone()),
        }
    }
}

/// The human form of `failover status`: the same facts as [`StatusJson`], which has more.
pub(crate) fn status_table(s: &StatusResponse, quorum: &QuorumJson) -> String {
    let json = StatusJson::new(s, quorum.clone());
    let leader = match (json.leader, quorum.confirmed) {
        (None, _) => "none elected".to_owned(),
        (Some(l), true) => l.to_string(),
        (Some(l), false) => format!("{l} (unconfirmed)"),
    };
    let mut out = format!("leader: {leader}   term: {}\n", s.term);
    let cluster = json.cluster_id.as_deref().unwrap_or("not fixed yet");
    let _ = writeln!(out, "cluster: {cluster}");
    match &quorum.message {
        Some(message) => {
            let _ = writeln!(
                out,
                "{}\nwhat follows is controller {}'s local view: possibly stale",
                message.replacen("no quorum", "NO QUORUM", 1),
                s.answered_by
            );
        }
        None if !s.consistent => {
            let _ = writeln!(
                out,
                "warning: controller {} could not confirm this with a quorum; it may be stale",
                s.answered_by
            );
        }
        None => {}
    }
    out.push('\n');
    out.push_str(&controllers_table(&json));
    out.push('\n');
    out.push_str(&groups_table(&json));
    out.push_str(&pause_lines(&s.groups));
    out.push_str(&executors_table(&json));
    out
}

fn controllers_table(json: &StatusJson) -> String {
    let rows: Vec<Vec<String>> = json
        .controllers
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.site.clone(),
                c.addr.clone(),
                c.role.clone(),
                if c.reachable { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    table(
        &["CONTROLLER", "SITE", "ADDRESS", "ROLE", "REACHABLE"],
        &rows,
    )
}

/// One row per group, then its last change and what holds it back, indented.
fn groups_table(json: &StatusJson) -> String {
    let rows: Vec<Vec<String>> = json
        .groups
        .iter()
        .map(|g| {
            let phase = match &g.promoting_to {
                Some(to) => format!("{} -> {to}", wire::phase_name(g.phase)),
                None if g.phase == types::Phase::Demoting => {
                    format!("{} -> -", wire::phase_name(g.phase))
                }
                None => wire::phase_name(g.phase).to_owned(),
            };
            let lost = if g.lost_sites.is_empty() {
                "-".to_owned()
            } else {
                g.lost_sites.join(",")
            };
            vec![
                g.name.clone(),
                g.active_site.clone().unwrap_or_else(|| "-".to_owned()),
                g.epoch.to_string(),
                phase,
                g.active_since.clone().unwrap_or_else(|| "-".to_owned()),
                lost,
            ]
        })
        .collect();
    let table_text = table(
        &[
            "GROUP",
            "ACTIVE",
            "EPOCH",
            "PHASE",
            "ACTIVE SINCE",
            "LOST SITES",
        ],
        &rows,
    );
    let mut out = String::new();
    // Interleave: each group's row, then its details.
    let mut lines = table_text.lines();
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for (line, g) in lines.zip(&json.groups) {
        out.push_str(line);
        out.push('\n');
        let change = g.last_change.as_ref().map_or_else(
            || "-".to_owned(),
            |c| {
                let reason = if c.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.reason)
                };
                format!(
                    "{} by {} ({} -> {}){reason}",
                    c.kind,
                    c.actor,
                    c.from.as_deref().unwrap_or("-"),
                    c.to.as_deref().unwrap_or("-"),
                )
            },
        );
        let _ = writeln!(out, "  last change: {change}");
        let _ = writeln!(
            out,
            "  held back:   {}",
            g.held_back.as_deref().unwrap_or("-")
        );
    }
    out
}

/// Executors (state as the leader knows it), then their workers.
fn executors_table(json: &StatusJson) -> String {
    let executors: Vec<&ExecutorJson> = json.sites.iter().flat_map(|s| &s.executors).collect();
    if executors.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = executors
        .iter()
        .map(|e| {
            let state = match (e.state.as_str(), e.fenced_for_ms) {
                ("fenced", Some(ms)) => format!("fenced (deadline passed {} ago)", seconds(ms)),
                ("silent", _) => format!(
                    "silent for {} (stale after {}, forgotten after {})",
                    seconds(e.last_seen_ms),
                    seconds(e.stale_after_ms),
                    seconds(e.forget_after_ms)
                ),
                (state, _) if !e.ready && matches!(state, "standby") => {
                    "standby, not ready".to_owned()
                }
                (state, _) => state.to_owned(),
            };
            vec![
                e.site.clone(),
                e.id.clone(),
                e.group.clone(),
                state,
                e.fencing_value
                    .map_or_else(|| "-".to_owned(), |v| v.to_string()),
                e.lease_left_ms.map_or_else(|| "-".to_owned(), seconds),
                format!("{} ago", seconds(e.last_seen_ms)),
                e.message.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&table(
        &[
            "SITE",
            "EXECUTOR",
            "GROUP",
            "STATE",
            "FENCING",
            "LEASE LEFT",
            "LAST SEEN",
            "MESSAGE",
        ],
        &rows,
    ));
    let workers: Vec<Vec<String>> = executors
        .iter()
        .flat_map(|e| {
            e.workers.iter().map(move |w| {
                vec![
                    e.id.clone(),
                    w.instance.to_string(),
                    if w.pid == 0 {
                        "-".into()
                    } else {
                        w.pid.to_string()
                    },
                    if w.state == w.reported_state {
                        w.state.clone()
                    } else {
                        format!("{} (last reported {})", w.state, w.reported_state)
                    },
                    w.restarts.to_string(),
                    seconds(w.uptime_ms),
                    w.health.clone(),
                ]
            })
        })
        .collect();
    if !workers.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "EXECUTOR", "WORKER", "PID", "STATE", "RESTARTS", "UPTIME", "HEALTH",
            ],
            &workers,
        ));
    }
    out
}

/// Milliseconds as seconds with one decimal (`3.2s`).
fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

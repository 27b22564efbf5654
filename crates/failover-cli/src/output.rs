//! What commands print: aligned tables for people, JSON for scripts.
//!
//! The JSON shapes are a contract (scripts and the chaos harness parse them): keys are
//! only ever added, never renamed.

use failover_proto::types::{ExecutorState, WorkerState};
use failover_proto::wire;
use std::fmt::Write as _;

use failover_proto::admin::{
    GroupStatus, HistoryResponse, LeasesResponse, PromoteResponse, StatusResponse,
};
use serde::Serialize;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// How sure a status answer is: confirmed by a quorum, or a possibly stale local view.
#[derive(Debug, Clone, Serialize)]
pub struct QuorumJson {
    /// Whether a leader confirmed the answer with a quorum.
    pub confirmed: bool,
    /// Controllers that answered the CLI (`null` when confirmed: not counted).
    pub reachable: Option<usize>,
    /// Controllers in the topology.
    pub total: usize,
    /// Controllers a quorum needs.
    pub needed: usize,
    /// Without a quorum: why, in words (`null` when confirmed).
    pub message: Option<String>,
}

impl QuorumJson {
    /// A confirmed answer over `total` controllers.
    pub fn confirmed(total: usize) -> QuorumJson {
        QuorumJson {
            confirmed: true,
            reachable: None,
            total,
            needed: total / 2 + 1,
            message: None,
        }
    }

    /// The answer of a cluster without a quorum.
    pub fn lost(no: &failover_client::admin::NoQuorum) -> QuorumJson {
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
pub struct StatusJson {
    /// Leader id, `null` when none is known.
    pub leader: Option<u64>,
    /// Current Raft term.
    pub term: u64,
    /// The controller that answered.
    pub answered_by: u64,
    /// Whether the answer reflects every committed change (false: a possibly stale view).
    pub consistent: bool,
    /// Whether a quorum confirmed the answer, and the counts when not.
    pub quorum: QuorumJson,
    /// Every controller of the topology.
    pub controllers: Vec<ControllerJson>,
    /// Every group.
    pub groups: Vec<GroupJson>,
    /// Every site with the executors reporting to the leader.
    pub sites: Vec<SiteJson>,
    /// The cluster's identity, `null` until its first leader fixed it.
    pub cluster_id: Option<String>,
}

/// One site in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct SiteJson {
    /// Site name.
    pub name: String,
    /// Every controller and executor there silent for `failure_timeout` (leader's view).
    pub lost: bool,
    /// Milliseconds since the leader last heard from the site (`null`: never).
    pub last_heard_ms: Option<u64>,
    /// Its executors.
    pub executors: Vec<ExecutorJson>,
}

/// One executor in [`SiteJson`].
#[derive(Debug, Serialize)]
pub struct ExecutorJson {
    /// Executor id.
    pub id: String,
    /// Group it runs.
    pub group: String,
    /// Its site.
    pub site: String,
    /// Its state as the leader knows it: `holding`, `draining`, `standby`, `connecting`,
    /// `lost`, `paused`, `silent` (stale, no lease) or `fenced` (its lease deadline
    /// passed; never shown as running).
    pub state: String,
    /// The fencing value (epoch) of the lease it holds or last claimed; `null` for none.
    pub fencing_value: Option<u64>,
    /// While holding or draining: ms until the leader may treat its lease as expired.
    pub lease_left_ms: Option<u64>,
    /// When fenced: ms since its lease deadline passed (at least).
    pub fenced_for_ms: Option<u64>,
    /// Ready to take over (as last reported).
    pub ready: bool,
    /// Not crash-looping or failing health checks (as last reported).
    pub healthy: bool,
    /// The lease state in its last report: `acquired`, `standby`, `draining`, `lost`,
    /// `connecting`, `paused`. A silent executor's report is old: see `state`.
    pub lease: String,
    /// Fencing token of the lease it reported holding (0 if none).
    pub fencing_token: u64,
    /// Milliseconds since the leader last heard from it.
    pub last_seen_ms: u64,
    /// Silent for `stale_after_ms` or longer (probably dead; it did not deregister).
    pub stale: bool,
    /// The stale bound.
    pub stale_after_ms: u64,
    /// A stale executor is forgotten once silent for this long.
    pub forget_after_ms: u64,
    /// Why it is not ready or healthy (`null` when it says nothing).
    pub message: Option<String>,
    /// Its workers.
    pub workers: Vec<WorkerJson>,
}

/// One worker in [`ExecutorJson`].
#[derive(Debug, Serialize)]
pub struct WorkerJson {
    /// Instance number.
    pub instance: u32,
    /// Process id (0 when not running).
    pub pid: u32,
    /// `running`, `starting`, `backoff`, `stopping`, `stopped`; `fenced` or `unknown`
    /// when its executor is fenced or silent (its last report is no longer true).
    pub state: String,
    /// The state in the executor's last report.
    pub reported_state: String,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// `healthy`, `unhealthy`, `unknown`.
    pub health: String,
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
pub struct ControllerJson {
    /// Raft node id.
    pub id: u64,
    /// Its site.
    pub site: String,
    /// Its gRPC address.
    pub addr: String,
    /// `leader`, `follower`, `unreachable` or `unknown` (a follower cannot see the
    /// others; without a quorum, the role a controller that answered gives itself).
    pub role: String,
    /// Whether the leader hears from it (without a quorum: whether it answered the CLI).
    pub reachable: bool,
}

/// One group in [`StatusJson`] and [`PromoteJson`].
#[derive(Debug, Serialize)]
pub struct GroupJson {
    /// Group name.
    pub name: String,
    /// Active site (`null`: none).
    pub active_site: Option<String>,
    /// Current epoch.
    pub epoch: u64,
    /// `active`, `demoting` or `no_active`.
    pub phase: String,
    /// While demoting: the site being promoted (`null`: none).
    pub promoting_to: Option<String>,
    /// Whether automatic failover of the group is paused.
    pub paused: bool,
    /// Who paused it, while paused.
    pub paused_by: Option<String>,
    /// Why, while paused.
    pub paused_reason: Option<String>,
    /// Since when (unix ms), while paused.
    pub paused_since_unix_ms: Option<u64>,
    /// Since when the active site (or none) is in place, ms since the Unix epoch.
    pub active_since_unix_ms: Option<u64>,
    /// The same in RFC 3339 (UTC).
    pub active_since: Option<String>,
    /// The last change (its creation if there was none).
    pub last_change: Option<HistoryJson>,
    /// The group's sites the leader counts as lost.
    pub lost_sites: Vec<String>,
    /// What holds an automatic failover back (`null`: nothing).
    pub held_back: Option<String>,
}

/// A site name on the wire (empty for none) as JSON: `null` for none.
fn site_or_null(site: &str) -> Option<String> {
    (!site.is_empty()).then(|| site.to_owned())
}

/// A site name on the wire as a table cell: `-` for none.
pub fn site_cell(site: &str) -> String {
    if site.is_empty() {
        "-".to_owned()
    } else {
        site.to_owned()
    }
}

impl From<&GroupStatus> for GroupJson {
    fn from(g: &GroupStatus) -> Self {
        let since = (g.active_since_unix_ms != 0).then_some(g.active_since_unix_ms);
        GroupJson {
            name: g.name.clone(),
            active_site: site_or_null(&g.active_site),
            epoch: g.epoch,
            phase: wire::phase_name(g.phase()).to_owned(),
            promoting_to: site_or_null(&g.promoting_to),
            active_since_unix_ms: since,
            active_since: since.map(format_unix_ms),
            last_change: g.last_change.as_ref().map(history_entry_json),
            lost_sites: g.lost_sites.clone(),
            held_back: (!g.held.is_empty()).then(|| g.held.clone()),
            paused: g.paused,
            paused_by: g.paused.then(|| g.paused_by.clone()),
            paused_reason: g.paused.then(|| g.paused_reason.clone()),
            paused_since_unix_ms: g.paused.then_some(g.paused_since),
        }
    }
}

impl StatusJson {
    /// The JSON of an answer; `quorum` says how sure it is.
    pub fn new(s: &StatusResponse, quorum: QuorumJson) -> Self {
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

/// One lease as JSON.
#[derive(Debug, Serialize)]
pub struct LeaseJson {
    /// Group name.
    pub group: String,
    /// Lease id.
    pub lease_id: u64,
    /// Holder's site.
    pub site: String,
    /// Holder (instance id).
    pub holder: String,
    /// Epoch it was granted in.
    pub epoch: u64,
    /// Fencing token.
    pub fencing_token: u64,
    /// Milliseconds until the leader may consider it expired.
    pub ttl_left_ms: u64,
}

/// `failover leases --output json`: an array.
pub fn leases_json(l: &LeasesResponse) -> Vec<LeaseJson> {
    l.leases
        .iter()
        .map(|l| LeaseJson {
            group: l.group.clone(),
            lease_id: l.lease_id,
            site: l.site.clone(),
            holder: l.holder.clone(),
            epoch: l.epoch,
            fencing_token: l.fencing_token,
            ttl_left_ms: l.ttl_left_ms,
        })
        .collect()
}

/// The human form of `failover leases`.
pub fn leases_table(l: &LeasesResponse) -> String {
    let rows: Vec<Vec<String>> = l
        .leases
        .iter()
        .map(|l| {
            vec![
                l.group.clone(),
                l.lease_id.to_string(),
                site_cell(&l.site),
                l.holder.clone(),
                l.epoch.to_string(),
                l.fencing_token.to_string(),
                if l.ttl_left_ms == 0 {
                    "-".to_owned()
                } else {
                    format!("{} ms", l.ttl_left_ms)
                },
            ]
        })
        .collect();
    table(
        &[
            "GROUP", "LEASE", "SITE", "HOLDER", "EPOCH", "TOKEN", "TTL LEFT",
        ],
        &rows,
    )
}

/// `failover promote --output json`.
#[derive(Debug, Serialize)]
pub struct PromoteJson {
    /// The group after the promotion.
    pub group: GroupJson,
    /// True when the site was already active.
    pub already_active: bool,
    /// Time the leader took, in milliseconds.
    pub elapsed_ms: u64,
    /// Without `--wait`: the latest time (ms) by which the promotion completes.
    pub completes_within_ms: u64,
}

impl From<(&PromoteResponse, &GroupStatus)> for PromoteJson {
    fn from((r, g): (&PromoteResponse, &GroupStatus)) -> Self {
        PromoteJson {
            group: GroupJson::from(g),
            already_active: r.already_active,
            elapsed_ms: r.elapsed_ms,
            completes_within_ms: r.completes_within_ms,
        }
    }
}

/// One history entry as JSON.
#[derive(Debug, Serialize)]
pub struct HistoryJson {
    /// Group name.
    pub group: String,
    /// Epoch that began with the change.
    pub epoch: u64,
    /// Previous active site (`null`: none, e.g. at creation).
    pub from: Option<String>,
    /// New active site (`null`: none, after a demote).
    pub to: Option<String>,
    /// `created`, `promote`, ...
    pub kind: String,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When it was requested (ms since the Unix epoch).
    pub requested_at_unix_ms: u64,
    /// When it completed (ms since the Unix epoch).
    pub completed_at_unix_ms: u64,
}

/// `failover history --output json`: an array, oldest first.
pub fn history_json(h: &HistoryResponse) -> Vec<HistoryJson> {
    h.entries.iter().map(history_entry_json).collect()
}

fn history_entry_json(e: &failover_proto::admin::HistoryEntry) -> HistoryJson {
    HistoryJson {
        group: e.group.clone(),
        epoch: e.epoch,
        from: site_or_null(&e.from),
        to: site_or_null(&e.to),
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        reason: e.reason.clone(),
        requested_at_unix_ms: e.requested_at_unix_ms,
        completed_at_unix_ms: e.completed_at_unix_ms,
    }
}

/// Renders rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The human form of `failover status`: the same facts as [`StatusJson`], which has more.
pub fn status_table(s: &StatusResponse, quorum: &QuorumJson) -> String {
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
                Some(to) => format!("{} -> {to}", g.phase),
                None if g.phase == "demoting" => format!("{} -> -", g.phase),
                None => g.phase.clone(),
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

/// The human form of `failover history`.
pub fn history_table(h: &HistoryResponse) -> String {
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

/// One line per paused group: who paused its automatic failover, since when, and why.
pub fn pause_lines(groups: &[GroupStatus]) -> String {
    groups
        .iter()
        .filter(|g| g.paused)
        .map(|g| format!("{}\n", pause_line(g)))
        .collect()
}

/// `group G: automatic failover paused by X since T: reason` (or `... is on`).
pub fn pause_line(g: &GroupStatus) -> String {
    if !g.paused {
        return format!("group {}: automatic failover is on", g.name);
    }
    let reason = if g.paused_reason.is_empty() {
        String::new()
    } else {
        format!(": {}", g.paused_reason)
    };
    format!(
        "group {}: automatic failover paused by {} since {}{reason}",
        g.name,
        g.paused_by,
        format_unix_ms(g.paused_since)
    )
}

/// RFC 3339 in UTC with milliseconds.
pub fn format_unix_ms(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dates render in UTC, including leap years.
    #[test]
    fn unix_ms_formats_as_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    /// Columns are padded to the widest cell.
    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "B"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     B\nlong  x\n");
    }
}

//! What commands print: aligned tables for people, JSON for scripts.
//!
//! The JSON shapes are a contract (scripts and the chaos harness parse them): keys are
//! only ever added, never renamed.

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

/// `failover status --output json`.
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
    /// Every controller of the topology.
    pub controllers: Vec<ControllerJson>,
    /// Every group.
    pub groups: Vec<GroupJson>,
    /// Every site with the executors reporting to the leader.
    pub sites: Vec<SiteJson>,
}

/// One site in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct SiteJson {
    /// Site name.
    pub name: String,
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
    /// Ready to take over.
    pub ready: bool,
    /// Not crash-looping or failing health checks.
    pub healthy: bool,
    /// `acquired`, `standby`, `draining`, `lost`, `connecting`, `paused`.
    pub lease: String,
    /// Fencing token of the lease it holds (0 if none).
    pub fencing_token: u64,
    /// Milliseconds since the leader last heard from it.
    pub last_seen_ms: u64,
    /// Silent for `stale_after_ms` or longer (probably dead; it did not deregister).
    pub stale: bool,
    /// The stale bound.
    pub stale_after_ms: u64,
    /// A stale executor is forgotten once silent for this long.
    pub forget_after_ms: u64,
    /// Why it is not ready or healthy.
    pub message: String,
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
    /// `running`, `starting`, `backoff`, `stopping`, `stopped`.
    pub state: String,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// `healthy`, `unhealthy`, `unknown`.
    pub health: String,
}

fn site_json(site: &failover_proto::admin::SiteStatus) -> SiteJson {
    SiteJson {
        name: site.name.clone(),
        executors: site
            .executors
            .iter()
            .filter_map(|e| e.report.as_ref().map(|r| (e, r)))
            .map(|(e, r)| ExecutorJson {
                id: r.executor_id.clone(),
                group: r.group.clone(),
                ready: r.ready,
                healthy: r.healthy,
                lease: r.lease_state.clone(),
                fencing_token: r.fencing_token,
                last_seen_ms: e.last_seen_ms,
                stale: e.stale,
                stale_after_ms: e.stale_after_ms,
                forget_after_ms: e.forget_after_ms,
                message: r.message.clone(),
                workers: r
                    .workers
                    .iter()
                    .map(|w| WorkerJson {
                        instance: w.instance,
                        pid: w.pid,
                        state: w.state.clone(),
                        restarts: w.restarts,
                        uptime_ms: w.uptime_ms,
                        health: w.health.clone(),
                    })
                    .collect(),
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
    /// `leader`, `follower`, `unreachable` or `unknown`.
    pub role: String,
    /// Whether the leader hears from it.
    pub reachable: bool,
}

/// One group in [`StatusJson`] and [`PromoteJson`].
#[derive(Debug, Serialize)]
pub struct GroupJson {
    /// Group name.
    pub name: String,
    /// Active site.
    pub active_site: String,
    /// Current epoch.
    pub epoch: u64,
    /// `active` or `demoting`.
    pub phase: String,
    /// While demoting: the site being promoted.
    pub promoting_to: Option<String>,
    /// Whether automatic failover of the group is paused.
    pub paused: bool,
    /// Who paused it, while paused.
    pub paused_by: Option<String>,
    /// Why, while paused.
    pub paused_reason: Option<String>,
    /// Since when (unix ms), while paused.
    pub paused_since_unix_ms: Option<u64>,
}

impl From<&GroupStatus> for GroupJson {
    fn from(g: &GroupStatus) -> Self {
        GroupJson {
            name: g.name.clone(),
            active_site: g.active_site.clone(),
            epoch: g.epoch,
            phase: g.phase.clone(),
            promoting_to: (!g.promoting_to.is_empty()).then(|| g.promoting_to.clone()),
            paused: g.paused,
            paused_by: g.paused.then(|| g.paused_by.clone()),
            paused_reason: g.paused.then(|| g.paused_reason.clone()),
            paused_since_unix_ms: g.paused.then_some(g.paused_since),
        }
    }
}

impl From<&StatusResponse> for StatusJson {
    fn from(s: &StatusResponse) -> Self {
        StatusJson {
            leader: (s.leader != 0).then_some(s.leader),
            term: s.term,
            answered_by: s.answered_by,
            consistent: s.consistent,
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
                l.site.clone(),
                l.holder.clone(),
                l.epoch.to_string(),
                l.fencing_token.to_string(),
                format!("{} ms", l.ttl_left_ms),
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
    /// Previous active site (`null` at creation).
    pub from: Option<String>,
    /// New active site.
    pub to: String,
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
    h.entries
        .iter()
        .map(|e| HistoryJson {
            group: e.group.clone(),
            epoch: e.epoch,
            from: (!e.from.is_empty()).then(|| e.from.clone()),
            to: e.to.clone(),
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            reason: e.reason.clone(),
            requested_at_unix_ms: e.requested_at_unix_ms,
            completed_at_unix_ms: e.completed_at_unix_ms,
        })
        .collect()
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

/// The human form of `failover status`.
pub fn status_table(s: &StatusResponse) -> String {
    let leader = if s.leader == 0 {
        "none elected".to_owned()
    } else {
        s.leader.to_string()
    };
    let mut out = format!("leader: {leader}   term: {}\n", s.term);
    if !s.consistent {
        out.push_str(&format!(
            "warning: controller {} could not confirm this with a quorum; it may be stale\n",
            s.answered_by
        ));
    }
    out.push('\n');
    let controllers: Vec<Vec<String>> = s
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
    out.push_str(&table(
        &["CONTROLLER", "SITE", "ADDRESS", "ROLE", "REACHABLE"],
        &controllers,
    ));
    out.push('\n');
    let groups: Vec<Vec<String>> = s
        .groups
        .iter()
        .map(|g| {
            let phase = if g.promoting_to.is_empty() {
                g.phase.clone()
            } else {
                format!("{} -> {}", g.phase, g.promoting_to)
            };
            let active = if g.active_site.is_empty() {
                "(none)".to_owned()
            } else {
                g.active_site.clone()
            };
            vec![
                g.name.clone(),
                active,
                g.epoch.to_string(),
                phase,
                g.held.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["GROUP", "ACTIVE", "EPOCH", "PHASE", "HELD BACK"],
        &groups,
    ));
    out.push_str(&pause_lines(&s.groups));
    let lost: Vec<&str> = s
        .sites
        .iter()
        .filter(|s| s.lost)
        .map(|s| s.name.as_str())
        .collect();
    if !lost.is_empty() {
        out.push_str(&format!(
            "\nlost sites (silent for failure_timeout): {}\n",
            lost.join(", ")
        ));
    }
    let workers: Vec<Vec<String>> = s
        .sites
        .iter()
        .map(site_json)
        .flat_map(|site| {
            site.executors.into_iter().flat_map(move |e| {
                let site = site.name.clone();
                let executor = if e.stale {
                    format!(
                        "{} (STALE: silent {} ms, over {} ms; forgotten after {} s)",
                        e.id,
                        e.last_seen_ms,
                        e.stale_after_ms,
                        e.forget_after_ms / 1000
                    )
                } else {
                    format!(
                        "{} ({}{}, seen {} ms ago)",
                        e.id,
                        e.lease,
                        if e.ready { ", ready" } else { ", NOT READY" },
                        e.last_seen_ms
                    )
                };
                e.workers.into_iter().map(move |w| {
                    vec![
                        site.clone(),
                        executor.clone(),
                        w.instance.to_string(),
                        if w.pid == 0 {
                            "-".into()
                        } else {
                            w.pid.to_string()
                        },
                        w.state,
                        w.restarts.to_string(),
                        format!("{:.1}s", w.uptime_ms as f64 / 1000.0),
                        w.health,
                    ]
                })
            })
        })
        .collect();
    if !workers.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "SITE", "EXECUTOR", "WORKER", "PID", "STATE", "RESTARTS", "UPTIME", "HEALTH",
            ],
            &workers,
        ));
    }
    out
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
                if e.from.is_empty() {
                    "-".to_owned()
                } else {
                    e.from.clone()
                },
                e.to.clone(),
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

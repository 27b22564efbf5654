//! What several commands print alike: the group view, history entries, pause lines,
//! tables, times and JSON writing. Each command's own rendering (tables for people, JSON
//! for scripts) lives beside it in [`crate::cmd`].
//!
//! The JSON shapes are a contract (scripts and the chaos harness parse them): keys are
//! only ever added, never renamed.

use failover_proto::types;
use failover_proto::wire;

use failover_proto::admin::GroupStatus;
use serde::Serialize;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A phase in JSON: its lowercase name, as tables show it.
fn phase_json<S: serde::Serializer>(phase: &types::Phase, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(wire::phase_name(*phase))
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
    #[serde(serialize_with = "phase_json")]
    pub phase: types::Phase,
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
pub fn site_or_null(site: &str) -> Option<String> {
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
            phase: g.phase(),
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

/// One history entry as JSON, for `failover history` and a group's last change.
pub fn history_entry_json(e: &failover_proto::admin::HistoryEntry) -> HistoryJson {
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

/// Renders rows as left-aligned columns separated by two spaces, without borders (what
/// `kubectl get` prints: easy to read, and to cut with `awk`).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for row in rows {
        t.add_row(row.iter().map(String::as_str));
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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
        let t = table(
            &["GROUP", "SITE", "REASON"],
            &[
                vec![
                    "default".into(),
                    "site-b".into(),
                    "planned switchover".into(),
                ],
                vec!["g".into(), "".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "GROUP    SITE    REASON\ndefault  site-b  planned switchover\ng\n"
        );
    }
}

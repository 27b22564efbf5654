//! The history archive: the records that left the groups' in-memory windows
//! ([`failover_core::ClusterState::trim_history`]), in the redb table `history`, keyed by
//! (group, kind, sequence) so writing a record again (a re-apply after a restart, a
//! snapshot installed over an archive) overwrites it with the same value.
//!
//! The archive only grows: a record at a sequence number below the window's first is
//! committed history, the same on every replica, and is never removed. Readers take the
//! window's first sequence numbers under the state's lock first and then read the
//! archive below them: what they read is complete, because the state machine writes the
//! records leaving the window before it releases the lock.

use std::io;

use failover_core::{Archived, GroupName, HistoryEntry, HistoryRecord, PauseEvent};
use redb::{Database, TableDefinition, WriteTransaction};

use super::{decode, io_err};

/// Archived history records by (group, kind, sequence), JSON-encoded.
pub(super) const HISTORY: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("history");

/// The kind byte of a change of active site.
const CHANGE: u8 = 0;
/// The kind byte of a pause event.
const PAUSE: u8 = 1;

/// Writes `records` (idempotently) in `txn`.
pub(super) fn store(txn: &WriteTransaction, records: &[Archived]) -> Result<(), redb::Error> {
    let mut table = txn.open_table(HISTORY)?;
    for archived in records {
        let (kind, value) = match &archived.record {
            HistoryRecord::Change(entry) => (CHANGE, serde_json::to_vec(entry)),
            HistoryRecord::Pause(event) => (PAUSE, serde_json::to_vec(event)),
        };
        let value = value.map_err(|e| redb::Error::Io(io::Error::other(e)))?;
        table.insert(
            (archived.group.as_str(), kind, archived.seq),
            value.as_slice(),
        )?;
    }
    Ok(())
}

/// One group's archived part, oldest first: its first `changes` changes of active site
/// and its first `pauses` pause events. A record missing below those counts is damage.
pub(super) fn read(
    db: &Database,
    group: &GroupName,
    changes: u64,
    pauses: u64,
) -> io::Result<(Vec<HistoryEntry>, Vec<PauseEvent>)> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(HISTORY).map_err(io_err)?;
    let name = group.as_str();
    let read_kind = |kind: u8, count: u64, what: &str| -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 20));
        let range = table
            .range((name, kind, 0)..(name, kind, count))
            .map_err(io_err)?;
        for (expected, item) in (0..count).zip(range) {
            let (key, value) = item.map_err(io_err)?;
            if key.value().2 != expected {
                break;
            }
            out.push(value.value().to_vec());
        }
        if out.len() as u64 != count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the history archive of group {name} is missing {what} {} of {count}",
                    out.len()
                ),
            ));
        }
        Ok(out)
    };
    let raw_changes = read_kind(CHANGE, changes, "change")?;
    let raw_pauses = read_kind(PAUSE, pauses, "pause event")?;
    let changes = raw_changes
        .iter()
        .map(|raw| decode(raw, "archived change"))
        .collect::<io::Result<Vec<HistoryEntry>>>()?;
    let pauses = raw_pauses
        .iter()
        .map(|raw| decode(raw, "archived pause event"))
        .collect::<io::Result<Vec<PauseEvent>>>()?;
    Ok((changes, pauses))
}

/// The newest of one group's archived records of one kind below sequence `count` (its
/// archived count) for which `keep` holds, at most `limit` of them (0: every one), oldest
/// first. Reads backwards from the newest and stops at `limit`, so a page of the newest
/// records costs the page, not the archive. A record missing below `count` is damage.
fn newest<T: serde::de::DeserializeOwned>(
    db: &Database,
    group: &GroupName,
    kind: u8,
    count: u64,
    limit: usize,
    keep: impl Fn(&T) -> bool,
    what: &str,
) -> io::Result<Vec<T>> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(HISTORY).map_err(io_err)?;
    let name = group.as_str();
    let mut out = Vec::new();
    let range = table
        .range((name, kind, 0)..(name, kind, count))
        .map_err(io_err)?;
    for (expected, item) in (0..count).rev().zip(range.rev()) {
        let (key, value) = item.map_err(io_err)?;
        if key.value().2 != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the history archive of group {name} is missing {what} {expected} of {count}"
                ),
            ));
        }
        let record: T = decode(value.value(), what)?;
        if keep(&record) {
            out.push(record);
            if out.len() == limit {
                break;
            }
        }
    }
    if out.len() != limit && count > 0 && table.get((name, kind, 0)).map_err(io_err)?.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the history archive of group {name} is missing {what} 0 of {count}"),
        ));
    }
    out.reverse();
    Ok(out)
}

/// The newest `limit` (0: all) of a group's first `count` archived changes that completed
/// before `before_unix_ms` (0: no bound), oldest first.
pub(super) fn newest_changes(
    db: &Database,
    group: &GroupName,
    count: u64,
    limit: usize,
    before_unix_ms: u64,
) -> io::Result<Vec<HistoryEntry>> {
    let keep = |e: &HistoryEntry| before_unix_ms == 0 || e.completed_at_unix_ms < before_unix_ms;
    newest(db, group, CHANGE, count, limit, keep, "archived change")
}

/// [`newest_changes`] for pause events (their time is when they were applied).
pub(super) fn newest_pauses(
    db: &Database,
    group: &GroupName,
    count: u64,
    limit: usize,
    before_unix_ms: u64,
) -> io::Result<Vec<PauseEvent>> {
    let keep = |e: &PauseEvent| before_unix_ms == 0 || e.at_unix_ms < before_unix_ms;
    newest(db, group, PAUSE, count, limit, keep, "archived pause event")
}

/// Whether the archive holds a group's first `changes` changes and `pauses` pause events
/// (checked by their last ones: the archive is written in order, in whole transactions).
pub(super) fn holds(
    db: &Database,
    group: &GroupName,
    changes: u64,
    pauses: u64,
) -> io::Result<bool> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(HISTORY).map_err(io_err)?;
    let has = |kind: u8, count: u64| -> io::Result<bool> {
        match count.checked_sub(1) {
            None => Ok(true),
            Some(last) => Ok(table
                .get((group.as_str(), kind, last))
                .map_err(io_err)?
                .is_some()),
        }
    };
    Ok(has(CHANGE, changes)? && has(PAUSE, pauses)?)
}

/// The records of `group`'s archive as [`Archived`] values, for writing them again.
pub(super) fn as_archived(
    group: &GroupName,
    changes: Vec<HistoryEntry>,
    pauses: Vec<PauseEvent>,
) -> Vec<Archived> {
    let changes = changes.into_iter().enumerate().map(|(i, e)| Archived {
        group: group.clone(),
        seq: i as u64,
        record: HistoryRecord::Change(e),
    });
    let pauses = pauses.into_iter().enumerate().map(|(i, e)| Archived {
        group: group.clone(),
        seq: i as u64,
        record: HistoryRecord::Pause(e),
    });
    changes.chain(pauses).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_core::{ChangeKind, Epoch, SiteId};
    use redb::Durability;

    const ARCHIVED: u64 = 10_000;

    fn change(i: u64) -> HistoryEntry {
        let site = |n: u64| Some(SiteId(format!("site-{}", n % 2)));
        HistoryEntry {
            epoch: Epoch(i + 1),
            from: (i > 0).then(|| site(i + 1)).flatten(),
            to: site(i),
            kind: ChangeKind::Promote,
            actor: "test".into(),
            reason: format!("change {i}"),
            requested_at_unix_ms: 1000 + i,
            completed_at_unix_ms: 1000 + i,
        }
    }

    /// A data file whose archive holds group `g`'s first [`ARCHIVED`] changes.
    fn archive() -> (tempfile::TempDir, Database, GroupName) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::create(dir.path().join("archive.redb")).expect("create");
        let group = GroupName("g".into());
        let records = as_archived(&group, (0..ARCHIVED).map(change).collect(), Vec::new());
        super::super::write(&db, Durability::Immediate, |txn| store(txn, &records)).expect("store");
        (dir, db, group)
    }

    #[test]
    fn a_page_is_the_newest_records_before_the_bound_oldest_first() {
        let (_dir, db, g) = archive();
        let newest = newest_changes(&db, &g, ARCHIVED, 5, 0).expect("page");
        assert_eq!(
            newest,
            (ARCHIVED - 5..ARCHIVED).map(change).collect::<Vec<_>>()
        );
        let before = newest_changes(&db, &g, ARCHIVED, 5, 1000 + 5000).expect("page");
        assert_eq!(before, (4995..5000).map(change).collect::<Vec<_>>());
        // Below a smaller archived count (what a reader saw under the lock) only.
        let below = newest_changes(&db, &g, 100, 3, 0).expect("page");
        assert_eq!(below, (97..100).map(change).collect::<Vec<_>>());
        let all_before = newest_changes(&db, &g, ARCHIVED, 0, 1000 + 10).expect("all");
        assert_eq!(all_before, (0..10).map(change).collect::<Vec<_>>());
        assert!(newest_pauses(&db, &g, 0, 5, 0).expect("none").is_empty());
    }

    #[test]
    fn a_page_reads_only_the_records_it_returns() {
        let (_dir, db, g) = archive();
        // The oldest record gone: a page of the newest never gets there, while reading
        // everything (or back to it) reports the gap.
        super::super::write(&db, Durability::Immediate, |txn| {
            txn.open_table(HISTORY)?.remove(("g", CHANGE, 0))?;
            Ok(())
        })
        .expect("remove");
        let newest = newest_changes(&db, &g, ARCHIVED, 20, 0).expect("page");
        assert_eq!(newest.len(), 20);
        let err = read(&db, &g, ARCHIVED, 0).expect_err("a gap");
        assert!(err.to_string().contains("missing change"), "{err}");
        let err = newest_changes(&db, &g, ARCHIVED, 0, 0).expect_err("a gap");
        assert!(
            err.to_string().contains("missing archived change 0"),
            "{err}"
        );
        // A gap in the middle is found too.
        super::super::write(&db, Durability::Immediate, |txn| {
            txn.open_table(HISTORY)?.remove(("g", CHANGE, 9_990))?;
            Ok(())
        })
        .expect("remove");
        let err = newest_changes(&db, &g, ARCHIVED, 20, 0).expect_err("a gap");
        assert!(
            err.to_string().contains("missing archived change 9990"),
            "{err}"
        );
    }
}

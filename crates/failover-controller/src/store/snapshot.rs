//! The snapshot encoding: compact, written and read in one pass, sized to the state.
//!
//! Layout (all integers LEB128 varints unless said otherwise):
//!
//! ```text
//! "FOSNAP4\n"                     8 bytes of magic
//! archive flag (1 byte)           1: the archive section follows the leases (the form a
//!                                  leader sends); 0: it does not, the history table of
//!                                  the data file holds it (the form a controller stores)
//! skeleton length (u64 LE), skeleton: the ClusterState as JSON with every group's
//!                                  `leases` and `holders` left empty
//! per group, in name order:       lease count, then per lease in id order:
//!                                  id, token, ttl_ms, flags, holder length, holder bytes
//! per group, in name order:       (flag 1 only) the archived history:
//!                                  `history_archived` changes, then
//!                                  `pause_history_archived` pause events, oldest first,
//!                                  each as its length and its JSON
//! ```
//!
//! The archive's watermark is in the skeleton (each group's `history_archived` and
//! `pause_history_archived`), so a stored snapshot needs no copy of the archive: the
//! history table holds every record below those counts, and the archive section is
//! appended from it when the snapshot is sent ([`with_archive`]). A follower that installs
//! a snapshot writes its archive section to its own table and stores it without one.
//!
//! Earlier formats are still read: `FOSNAP3` (no flag byte, the archive section always
//! there), `FOSNAP2` (no archive section: from before the window, when the skeleton held
//! the whole history) and the whole state as JSON. Their skeletons have no per-kind change
//! counts (`GroupState::change_counts`); those are counted from the history they hold.
//!
//! A lease's site and epoch are not written: every live lease is at its group's active
//! site and epoch (asserted when encoding). `flags` bit 0 says the lease is its holder's
//! current one (the `holders` index), which the leases alone cannot tell once a
//! re-acquired holder's newer lease was released. A lease costs about 5 bytes plus its
//! holder id; the few groups and their history stay JSON, so the format follows
//! `GroupState` without a second schema.

use std::collections::BTreeMap;
use std::io::{self, Read};

use failover_core::lease::{FencingToken, Lease};
use failover_core::{
    ChangeCounts, ClusterState, GroupName, HistoryEntry, HolderIndex, LeaseId, PauseEvent,
};

pub(crate) use crate::snapshot_data::PIECE_BYTES;

const MAGIC: &[u8; 8] = b"FOSNAP4\n";
/// The format before the archive flag and the change counts: the archive always follows.
const MAGIC_V3: &[u8; 8] = b"FOSNAP3\n";
/// The format before the archive section: the same up to the leases.
const MAGIC_V2: &[u8; 8] = b"FOSNAP2\n";
/// Where the archive flag sits in a `FOSNAP4` snapshot.
const FLAG_AT: usize = MAGIC.len();
/// The archive flag: the archive section follows the leases.
const ARCHIVE_INCLUDED: u8 = 1;
/// The archive flag: the history table holds the archive.
const ARCHIVE_IN_TABLE: u8 = 0;

/// One group's archived history: changes of active site and pause events, oldest first.
pub(crate) type GroupArchive = (Vec<HistoryEntry>, Vec<PauseEvent>);

/// A decoded snapshot: the in-memory state and every group's archived history: `None`
/// when the snapshot is a stored one whose archive is in the history table (empty maps
/// for the formats before the archive section).
#[derive(Debug)]
pub(crate) struct Decoded {
    pub state: ClusterState,
    pub archive: Option<BTreeMap<GroupName, GroupArchive>>,
}
const CURRENT_HOLDER: u64 = 1;

/// What a snapshot of the earlier, JSON-only format held.
#[derive(serde::Deserialize)]
struct JsonSnapshot {
    state: ClusterState,
}

/// The magic, the flag saying the archive is in the history table, and the skeleton: the
/// state without its leases. They are moved out of each group only while the skeleton is
/// written (a pointer swap each way), so this costs the size of the groups and their
/// history, not of the leases. [`encode_leases`] completes a stored snapshot;
/// [`with_archive`] makes it one to send.
pub(crate) fn encode_skeleton(state: &mut ClusterState) -> io::Result<Vec<u8>> {
    let mut taken = Vec::with_capacity(state.groups.len());
    for group in state.groups.values_mut() {
        taken.push((
            std::mem::take(&mut group.leases),
            std::mem::take(&mut group.holders),
        ));
    }
    let skeleton = serde_json::to_vec(&*state);
    for (group, (leases, holders)) in state.groups.values_mut().zip(taken) {
        group.leases = leases;
        group.holders = holders;
    }
    let skeleton = skeleton.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let leases: usize = state.groups.values().map(|g| g.leases.len()).sum();
    let mut out =
        Vec::with_capacity(MAGIC.len() + 9 + skeleton.len() + (leases * 24).min(PIECE_BYTES));
    out.extend_from_slice(MAGIC);
    out.push(ARCHIVE_IN_TABLE);
    out.extend_from_slice(&(skeleton.len() as u64).to_le_bytes());
    out.extend_from_slice(&skeleton);
    Ok(out)
}

/// Appends every group's leases, in the order of the skeleton's groups: `state` must be
/// the one [`encode_skeleton`] was given, unchanged.
pub(crate) fn encode_leases(state: &ClusterState, out: &mut Vec<u8>) {
    let kept: Result<(), std::convert::Infallible> = encode_leases_spilling(state, out, |_| Ok(()));
    match kept {
        Ok(()) => {}
        Err(never) => match never {},
    }
}

/// [`encode_leases`], handing `out` to `spill` whenever it holds at least
/// [`PIECE_BYTES`], so a stored snapshot is written piece by piece and never held whole
/// (`spill` takes what it writes out of the buffer).
///
/// One pass over the leases in id order with no per-lease search: whether a lease is its
/// holder's current one comes from the holders' lease ids, sorted once and walked
/// alongside, instead of a search of the holders by name for every lease.
pub(crate) fn encode_leases_spilling<E>(
    state: &ClusterState,
    out: &mut Vec<u8>,
    mut spill: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    for group in state.groups.values() {
        put(out, group.leases.len() as u64);
        let mut current: Vec<(u64, &str)> = group
            .holders
            .iter()
            .map(|(holder, id)| (id.0, holder.as_str()))
            .collect();
        current.sort_unstable();
        let mut current = current.into_iter().peekable();
        for lease in group.leases.values() {
            group.assert_lease(lease);
            put(out, lease.id.0);
            put(out, lease.token.0);
            put(out, lease.ttl_ms);
            while current.next_if(|(id, _)| *id < lease.id.0).is_some() {}
            let mut is_current = false;
            while let Some((_, holder)) = current.next_if(|(id, _)| *id == lease.id.0) {
                is_current |= holder == lease.holder;
            }
            put(out, if is_current { CURRENT_HOLDER } else { 0 });
            put(out, lease.holder.len() as u64);
            out.extend_from_slice(lease.holder.as_bytes());
            if out.len() >= PIECE_BYTES {
                spill(out)?;
            }
        }
    }
    Ok(())
}

/// The groups of a stored snapshot's skeleton with their archived counts (changes, pause
/// events), in the skeleton's order.
pub(crate) type Watermarks = Vec<(GroupName, u64, u64)>;

/// Reads the head of a snapshot from `src`, up to the end of its skeleton if it is a
/// stored one (`FOSNAP4` without its archive): returns the bytes read and, for a stored
/// snapshot, its [`Watermarks`], with the archive flag in the bytes already set, because
/// the caller appends the [`archive_section`] to send it. Any other snapshot is sent as it
/// is (`None`: the bytes read so far, to be followed by the rest of `src`).
pub(crate) fn read_head(src: &mut impl Read) -> io::Result<(Vec<u8>, Option<Watermarks>)> {
    let mut head = Vec::new();
    src.take(FLAG_AT as u64 + 1 + 8).read_to_end(&mut head)?;
    if !head.starts_with(MAGIC) || head.get(FLAG_AT) != Some(&ARCHIVE_IN_TABLE) {
        return Ok((head, None));
    }
    let len = head
        .get(FLAG_AT + 1..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| damaged("truncated in skeleton length"))?;
    let at = head.len();
    let read = src.take(len).read_to_end(&mut head)?;
    if read as u64 != len {
        return Err(damaged("truncated in skeleton"));
    }
    let state = parse_skeleton(&head[at..])?;
    head[FLAG_AT] = ARCHIVE_INCLUDED;
    let marks = state
        .groups
        .values()
        .map(|g| (g.name.clone(), g.history_archived, g.pause_history_archived))
        .collect();
    Ok((head, Some(marks)))
}

/// The archive section that follows the leases of a snapshot to send: `archive` yields,
/// per group of its skeleton in order, exactly that group's archived records.
pub(crate) fn archive_section<'a>(
    archive: impl IntoIterator<Item = &'a GroupArchive>,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_archive(archive, &mut out)?;
    Ok(out)
}

/// Turns a stored snapshot (see [`read_head`]) into one to send: `archive`
/// yields, per group of its skeleton in order, exactly that group's archived records.
pub(crate) fn with_archive<'a>(
    mut data: Vec<u8>,
    archive: impl IntoIterator<Item = &'a GroupArchive>,
) -> io::Result<Vec<u8>> {
    if !data.starts_with(MAGIC) || data.get(FLAG_AT) != Some(&ARCHIVE_IN_TABLE) {
        return Err(damaged("not a stored snapshot without its archive"));
    }
    data[FLAG_AT] = ARCHIVE_INCLUDED;
    encode_archive(archive, &mut data)?;
    Ok(data)
}

/// Appends every group's archived history, in the order of the skeleton's groups:
/// `archive` yields, per group of the skeleton's state, exactly its archived records.
fn encode_archive<'a>(
    archive: impl IntoIterator<Item = &'a GroupArchive>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    for (changes, pauses) in archive {
        put(out, changes.len() as u64);
        for entry in changes {
            put_json(out, entry)?;
        }
        put(out, pauses.len() as u64);
        for event in pauses {
            put_json(out, event)?;
        }
    }
    Ok(())
}

fn put_json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> io::Result<()> {
    let raw =
        serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    put(out, raw.len() as u64);
    out.extend_from_slice(&raw);
    Ok(())
}

/// [`decode_from`] a snapshot in memory.
#[cfg(test)]
pub(crate) fn decode(data: &[u8]) -> io::Result<Decoded> {
    decode_from(data)
}

/// Decodes a snapshot written by this module (or an earlier binary or JSON one) as it is
/// read, in one pass: only the state being built and one record are in memory, never the
/// whole encoded snapshot (the earliest format, JSON, is read whole). Damage is an
/// `InvalidData` error naming what is wrong; the caller still checks the invariants.
pub(crate) fn decode_from(mut src: impl io::BufRead) -> io::Result<Decoded> {
    let mut magic = Vec::with_capacity(MAGIC.len());
    (&mut src)
        .take(MAGIC.len() as u64)
        .read_to_end(&mut magic)?;
    let mut r = Reader::new(src);
    let (with_archive, counted) = if magic == MAGIC {
        match r.byte("the archive flag")? {
            ARCHIVE_INCLUDED => (true, true),
            ARCHIVE_IN_TABLE => (false, true),
            other => return Err(damaged(format!("archive flag {other}"))),
        }
    } else if magic == MAGIC_V3 {
        (true, false)
    } else if magic == MAGIC_V2 {
        (false, false)
    } else {
        let mut data = magic;
        r.src.read_to_end(&mut data)?;
        let mut state = serde_json::from_slice::<JsonSnapshot>(&data)
            .map_err(|e| damaged(format!("neither a binary nor a JSON snapshot: {e}")))?
            .state;
        let archive = BTreeMap::new();
        count_changes(&mut state, &archive)?;
        return Ok(Decoded {
            state,
            archive: Some(archive),
        });
    };
    let mut state = r.skeleton()?;
    for group in state.groups.values_mut() {
        let count = r.varint("lease count")?;
        let mut leases = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 24));
        let mut holders = HolderIndex::new();
        let mut previous: Option<u64> = None;
        for _ in 0..count {
            let id = r.varint("lease id")?;
            if previous.is_some_and(|p| p >= id) {
                return Err(damaged(format!(
                    "group {}: lease ids not increasing at {id}",
                    group.name
                )));
            }
            previous = Some(id);
            let token = r.varint("token")?;
            let ttl_ms = r.varint("ttl")?;
            let flags = r.varint("flags")?;
            let holder_len = r.varint("holder length")?;
            let holder_len = usize::try_from(holder_len).map_err(|_| damaged("holder length"))?;
            let holder = std::str::from_utf8(r.take(holder_len, "holder")?)
                .map_err(|_| damaged(format!("lease {id}: holder is not UTF-8")))?
                .to_owned();
            let site = group.active_site.clone().ok_or_else(|| {
                damaged(format!(
                    "group {} has leases but no active site",
                    group.name
                ))
            })?;
            if flags & CURRENT_HOLDER != 0 {
                holders.insert(holder.clone(), LeaseId(id));
            }
            leases.push((
                LeaseId(id),
                Lease {
                    id: LeaseId(id),
                    holder,
                    site,
                    epoch: group.epoch,
                    ttl_ms,
                    token: FencingToken(token),
                },
            ));
        }
        // Ids increase, so every insert lands in the rightmost leaf.
        group.leases = leases.into_iter().collect();
        group.holders = holders;
    }
    let stored = counted && !with_archive;
    let mut archive = BTreeMap::new();
    for group in state.groups.values() {
        if !with_archive {
            if !stored && (group.history_archived != 0 || group.pause_history_archived != 0) {
                return Err(damaged(format!(
                    "group {}: archived history in a snapshot without an archive",
                    group.name
                )));
            }
            continue;
        }
        let changes: Vec<HistoryEntry> = r.records(group.history_archived, "archived change")?;
        let pauses: Vec<PauseEvent> =
            r.records(group.pause_history_archived, "archived pause event")?;
        archive.insert(group.name.clone(), (changes, pauses));
    }
    let left = r.left()?;
    if left != 0 {
        return Err(damaged(format!("{left} bytes left after the last group")));
    }
    if !counted {
        count_changes(&mut state, &archive)?;
    }
    Ok(Decoded {
        state,
        archive: (!stored).then_some(archive),
    })
}

/// Sets every group's per-kind change counts from the history a snapshot of an earlier
/// format holds (its archive, then its window): such a snapshot holds the whole history.
fn count_changes(
    state: &mut ClusterState,
    archive: &BTreeMap<GroupName, GroupArchive>,
) -> io::Result<()> {
    for group in state.groups.values_mut() {
        let archived = archive.get(&group.name).map_or(&[][..], |(c, _)| &c[..]);
        if archived.len() as u64 != group.history_archived {
            return Err(damaged(format!(
                "group {}: {} archived changes where the skeleton says {}",
                group.name,
                archived.len(),
                group.history_archived
            )));
        }
        group.change_counts =
            ChangeCounts::of(archived.iter().chain(&group.history).map(|h| h.kind));
    }
    Ok(())
}

/// The skeleton (the state without its leases) from its JSON.
fn parse_skeleton(raw: &[u8]) -> io::Result<ClusterState> {
    serde_json::from_slice(raw).map_err(|e| damaged(format!("cannot decode the skeleton: {e}")))
}

fn damaged(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("damaged snapshot: {what}"),
    )
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads the parts of a snapshot from a buffered source; `scratch` holds the last
/// length-prefixed part taken, so a record costs no allocation of its own.
struct Reader<R> {
    src: R,
    scratch: Vec<u8>,
}

impl<R: io::BufRead> Reader<R> {
    fn new(src: R) -> Self {
        Reader {
            src,
            scratch: Vec::new(),
        }
    }

    /// The skeleton's length and the skeleton, decoded.
    fn skeleton(&mut self) -> io::Result<ClusterState> {
        let len = self.take(8, "skeleton length")?;
        let len = u64::from_le_bytes(len.try_into().map_err(|_| damaged("skeleton length"))?);
        let len = usize::try_from(len).map_err(|_| damaged("skeleton length"))?;
        parse_skeleton(self.take(len, "skeleton")?)
    }

    /// The next `n` bytes. A damaged length cannot make it allocate more than what the
    /// source holds: the bytes are read before room is made for them.
    fn take(&mut self, n: usize, what: &str) -> io::Result<&[u8]> {
        self.scratch.clear();
        let read = (&mut self.src)
            .take(n as u64)
            .read_to_end(&mut self.scratch)?;
        if read != n {
            return Err(damaged(format!("truncated in {what}")));
        }
        Ok(&self.scratch)
    }

    fn byte(&mut self, what: &str) -> io::Result<u8> {
        let buf = self.src.fill_buf()?;
        let byte = *buf
            .first()
            .ok_or_else(|| damaged(format!("truncated in {what}")))?;
        self.src.consume(1);
        Ok(byte)
    }

    fn varint(&mut self, what: &str) -> io::Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(what)?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(damaged(format!("{what}: varint longer than 64 bits")))
    }

    /// How many bytes are left in the source (reading them).
    fn left(&mut self) -> io::Result<u64> {
        io::copy(&mut self.src, &mut io::sink())
    }

    /// A count that must be `expected`, then that many length-prefixed JSON records.
    fn records<T: serde::de::DeserializeOwned>(
        &mut self,
        expected: u64,
        what: &str,
    ) -> io::Result<Vec<T>> {
        let count = self.varint(what)?;
        if count != expected {
            return Err(damaged(format!(
                "{count} {what}s where the skeleton says {expected}"
            )));
        }
        let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 20));
        for i in 0..count {
            let len = self.varint(what)?;
            let len = usize::try_from(len).map_err(|_| damaged(what))?;
            let raw = self.take(len, what)?;
            out.push(serde_json::from_slice(raw).map_err(|e| damaged(format!("{what} {i}: {e}")))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::encode_snapshot as encode_with;
    use failover_core::{Command, SiteId};

    /// A group with `leases` leases; every tenth holder re-acquired (its first lease is
    /// superseded), and every twentieth re-acquire was released again (a superseded lease
    /// whose holder has no current one).
    pub(crate) fn state(leases: u64) -> ClusterState {
        let mut state = ClusterState::default();
        let group = GroupName("g".into());
        let site = SiteId("a".into());
        let create = Command::CreateGroup {
            group: group.clone(),
            sites: vec![site.clone(), SiteId("b".into())],
            at_unix_ms: 1,
        };
        assert!(state.apply(&create).is_ok());
        for i in 0..leases {
            let reacquire = i % 10 == 1;
            let holder = format!("holder-{}", if reacquire { i - 1 } else { i });
            let grant = Command::Grant {
                group: group.clone(),
                site: site.clone(),
                holder,
                ttl_ms: 2000 + i,
            };
            assert!(state.apply(&grant).is_ok());
            if reacquire && i % 20 == 1 {
                let release = Command::Release {
                    group: group.clone(),
                    lease: LeaseId(i),
                };
                assert!(state.apply(&release).is_ok());
            }
        }
        state
    }

    fn encode(state: &mut ClusterState) -> io::Result<Vec<u8>> {
        encode_with(state, &BTreeMap::new())
    }

    /// `state(10)` after `changes` promotions and as many pauses and resumes, its history
    /// trimmed to `window`, with its archive.
    pub(crate) fn with_history(
        changes: u64,
        window: usize,
    ) -> (ClusterState, BTreeMap<GroupName, GroupArchive>) {
        let mut state = state(10);
        let group = GroupName("g".into());
        for i in 0..changes {
            let at_unix_ms = 100 + i;
            let to = SiteId(if i.is_multiple_of(2) { "b" } else { "a" }.into());
            let begin = Command::BeginPromotion {
                group: group.clone(),
                to,
                kind: failover_core::ChangeKind::Promote,
                actor: "test".into(),
                reason: format!("change {i}"),
                at_unix_ms,
            };
            assert!(state.apply(&begin).is_ok());
            let from_epoch = state.groups[&group].epoch;
            let complete = Command::CompletePromotion {
                group: group.clone(),
                from_epoch,
                at_unix_ms,
            };
            assert!(state.apply(&complete).is_ok());
            let pause = if i.is_multiple_of(2) {
                Command::Pause {
                    group: group.clone(),
                    actor: "test".into(),
                    reason: format!("pause {i}"),
                    at_unix_ms,
                }
            } else {
                Command::Resume {
                    group: group.clone(),
                    actor: "test".into(),
                    reason: format!("resume {i}"),
                    at_unix_ms,
                }
            };
            assert!(state.apply(&pause).is_ok());
        }
        let mut archive: BTreeMap<GroupName, GroupArchive> = BTreeMap::new();
        for a in state.trim_history(window) {
            let (changes, pauses) = archive.entry(a.group).or_default();
            match a.record {
                failover_core::HistoryRecord::Change(e) => changes.push(e),
                failover_core::HistoryRecord::Pause(e) => pauses.push(e),
            }
        }
        (state, archive)
    }

    #[test]
    fn round_trip_keeps_every_lease_and_holder() {
        let mut original = state(1000);
        let data = encode(&mut original).unwrap();
        assert_eq!(decode(&data).unwrap().state, original);
    }

    /// A snapshot with its archive, as `FOSNAP3` wrote it: no flag byte, and (with
    /// `counts` false) a skeleton whose groups have no change counts.
    fn as_v3(data: &[u8]) -> Vec<u8> {
        assert!(data.starts_with(MAGIC) && data[FLAG_AT] == ARCHIVE_INCLUDED);
        let mut out = MAGIC_V3.to_vec();
        out.extend_from_slice(&data[FLAG_AT + 1..]);
        out
    }

    fn without_counts(state: &ClusterState) -> ClusterState {
        let mut state = state.clone();
        for g in state.groups.values_mut() {
            g.change_counts = ChangeCounts::default();
        }
        state
    }

    #[test]
    fn round_trip_keeps_the_archived_history() {
        let (mut original, archive) = with_history(50, 4);
        let g = &original.groups[&GroupName("g".into())];
        assert_eq!((g.history.len(), g.history_archived), (4, 47));
        assert_eq!((g.pause_history.len(), g.pause_history_archived), (4, 46));
        assert_eq!(g.change_counts.promote, 50);
        let data = encode_with(&mut original, &archive).unwrap();
        let decoded = decode(&data).unwrap();
        assert_eq!(decoded.state, original);
        assert_eq!(decoded.archive, Some(archive));
        // A count that disagrees with the skeleton is damage.
        let err = decode(&encode(&mut original).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("where the skeleton says 47"),
            "{err}"
        );
    }

    #[test]
    fn a_stored_snapshot_holds_no_archive_and_gets_it_back_to_be_sent() {
        let (mut original, archive) = with_history(50, 4);
        let mut stored = encode_skeleton(&mut original).unwrap();
        encode_leases(&original, &mut stored);
        let decoded = decode(&stored).unwrap();
        assert_eq!(decoded.state, original);
        assert_eq!(decoded.archive, None, "the history table holds it");
        let sent = encode_with(&mut original, &archive).unwrap();
        // The archive costs the stored copy nothing: 47 changes and 46 pause events.
        assert!(
            stored.len() + 47 * 100 < sent.len(),
            "{} {}",
            stored.len(),
            sent.len()
        );
        // Read as a stream: the head up to the skeleton, the rest, the archive appended.
        let mut rest = &stored[..];
        let (mut streamed, marks) = read_head(&mut rest).unwrap();
        let marks = marks.expect("a stored snapshot");
        assert_eq!(marks, vec![(GroupName("g".into()), 47, 46)]);
        streamed.extend_from_slice(rest);
        let groups = marks.iter().map(|(name, _, _)| &archive[name]);
        streamed.extend(archive_section(groups).unwrap());
        assert_eq!(streamed, sent);
        let rebuilt = with_archive(stored, marks.iter().map(|(name, _, _)| &archive[name]));
        assert_eq!(rebuilt.unwrap(), sent);
        // A snapshot that carries its archive is sent as it is.
        let mut rest = &sent[..];
        let (head, marks) = read_head(&mut rest).unwrap();
        assert_eq!(marks, None);
        assert_eq!(head, sent[..head.len()]);
    }

    #[test]
    fn fosnap3_snapshots_are_read_and_their_changes_counted() {
        let (original, archive) = with_history(50, 4);
        let mut uncounted = without_counts(&original);
        let data = as_v3(&encode_with(&mut uncounted, &archive).unwrap());
        let decoded = decode(&data).unwrap();
        assert_eq!(decoded.state, original);
        assert_eq!(decoded.archive, Some(archive));
        let counts = decoded.state.groups[&GroupName("g".into())].change_counts;
        assert_eq!(
            (counts.created, counts.promote, counts.total()),
            (1, 50, 51)
        );
    }

    #[test]
    fn snapshots_without_an_archive_section_are_read() {
        // FOSNAP2: the same layout up to the leases, the whole history in the skeleton.
        let (original, archive) = with_history(30, usize::MAX);
        assert!(archive.is_empty());
        let mut data = as_v3(&encode(&mut without_counts(&original)).unwrap());
        data.truncate(data.len() - 2 * original.groups.len());
        data[..8].copy_from_slice(b"FOSNAP2\n");
        let decoded = decode(&data).unwrap();
        assert_eq!(decoded.state, original);
        assert_eq!(
            decoded.state.groups[&GroupName("g".into())].history.len(),
            31
        );
        assert_eq!(decoded.archive, Some(BTreeMap::new()));
    }

    #[test]
    fn earlier_json_snapshots_are_read() {
        let (original, _) = with_history(5, usize::MAX);
        let json = serde_json::json!({ "state": without_counts(&original) });
        let json = serde_json::to_vec(&json).unwrap();
        assert_eq!(decode(&json).unwrap().state, original);
    }

    #[test]
    fn truncation_is_reported() {
        let (mut original, archive) = with_history(10, 2);
        let data = encode_with(&mut original, &archive).unwrap();
        let err = decode(&data[..data.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut longer = data.clone();
        longer.push(0);
        let err = decode(&longer).unwrap_err();
        assert!(err.to_string().contains("left after"), "{err}");
    }
}

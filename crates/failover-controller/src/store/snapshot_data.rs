//! A snapshot's bytes as openraft hands them between the store and the network: a reader
//! that yields them piece by piece, so neither the sending nor the receiving controller
//! holds a whole encoded snapshot in memory.
//!
//! A leader's snapshot is read from the stored pieces ([`StoredPieces`]) inside one read
//! transaction, so a snapshot built meanwhile cannot pull them away; a follower stages
//! what it receives in an unlinked file in its data directory and installs from there.

use std::io::{self, BufRead, BufReader, Read};

use redb::{ReadOnlyTable, ReadTransaction};

use super::io_err;
use super::snapshot::PIECE_BYTES;
use super::SNAPSHOT_CHUNKS;

/// The bytes of one snapshot, to be read once.
pub struct SnapshotData {
    reader: Box<dyn BufRead + Send>,
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotData").finish_non_exhaustive()
    }
}

impl SnapshotData {
    /// Bytes already in memory: tests, the simulation, a snapshot an older controller sent
    /// in one message.
    pub fn from_bytes(data: Vec<u8>) -> Self {
        SnapshotData {
            reader: Box::new(io::Cursor::new(data)),
        }
    }

    /// The rest of `file` from its current position: a received snapshot staged on disk.
    pub fn from_file(file: std::fs::File) -> Self {
        Self::from_reader(file)
    }

    /// Whatever `reader` yields, buffered.
    pub(crate) fn from_reader(reader: impl Read + Send + 'static) -> Self {
        SnapshotData {
            reader: Box::new(BufReader::with_capacity(64 * 1024, reader)),
        }
    }

    /// Nothing: what a built snapshot hands back (openraft keeps only its metadata).
    pub fn empty() -> Self {
        Self::from_bytes(Vec::new())
    }

    /// The next piece, of at most [`PIECE_BYTES`]; `None` once everything was read.
    /// Blocking: call it off the async runtime's threads.
    pub fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut piece = Vec::new();
        (&mut self.reader)
            .take(PIECE_BYTES as u64)
            .read_to_end(&mut piece)?;
        Ok((!piece.is_empty()).then_some(piece))
    }

    /// Every remaining byte, for tools and tests that want the snapshot whole.
    pub fn into_bytes(mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.reader.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The bytes as a buffered reader, for decoding.
    pub(crate) fn reader(self) -> Box<dyn BufRead + Send> {
        self.reader
    }
}

/// Reads the pieces `first..first + count` of the stored snapshot, one at a time, from a
/// read transaction held for as long as the reader lives.
pub(crate) struct StoredPieces {
    table: ReadOnlyTable<u64, &'static [u8]>,
    next: u64,
    end: u64,
    piece: Vec<u8>,
    at: usize,
    /// Kept so the table's pages stay as they were when the reader was made.
    _txn: ReadTransaction,
}

impl StoredPieces {
    /// A reader of `count` pieces from `first`, in `txn`.
    pub(crate) fn new(txn: ReadTransaction, first: u64, count: u64) -> io::Result<Self> {
        let table = txn.open_table(SNAPSHOT_CHUNKS).map_err(io_err)?;
        Ok(StoredPieces {
            table,
            next: first,
            end: first + count,
            piece: Vec::new(),
            at: 0,
            _txn: txn,
        })
    }

    /// Loads the next piece; false at the end.
    fn load(&mut self) -> io::Result<bool> {
        if self.next == self.end {
            return Ok(false);
        }
        let key = self.next;
        let raw = self.table.get(key).map_err(io_err)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot piece {key} is missing"),
            )
        })?;
        self.piece.clear();
        self.piece.extend_from_slice(raw.value());
        self.at = 0;
        self.next += 1;
        Ok(true)
    }
}

impl Read for StoredPieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            if !self.load()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

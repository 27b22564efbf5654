//! The stored pieces of a snapshot, read one at a time.

use std::io::{self, Read};

use redb::{ReadOnlyTable, ReadTransaction};

use super::io_err;
use super::SNAPSHOT_CHUNKS;

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

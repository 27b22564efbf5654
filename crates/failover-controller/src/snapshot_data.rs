//! A snapshot's bytes as openraft hands them between the store and the network: a reader
//! that yields them piece by piece, so neither the sending nor the receiving controller
//! holds a whole encoded snapshot in memory.
//!
//! A leader's snapshot is read from the stored pieces (`store/pieces.rs`) inside one read
//! transaction, so a snapshot built meanwhile cannot pull them away; a follower stages
//! what it receives in an unlinked file in its data directory and installs from there
//! (`snapshot_stream.rs`). Its own module, so that the Raft types (`types.rs`) name it
//! without depending on the store.

use std::io::{self, BufRead, BufReader, Read};

/// Size of one piece of a snapshot as it is stored and sent.
pub const PIECE_BYTES: usize = 1 << 20;

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

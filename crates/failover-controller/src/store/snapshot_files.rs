//! The data of stored snapshots, as files in the data directory beside the data file.
//!
//! A snapshot written into the data file held redb's one write lock for every 1 MiB piece
//! (3-12 ms each), and the next log append's fdatasync flushed those pages too (10-17 ms
//! instead of about 4): a build stalled the grants in flight
//! (docs/benchmarks.md, "Leases: where the grant p99 goes"). In a file of its own, a
//! snapshot is written without any lock a log append waits for, and synced once, by an
//! fsync of that file only.
//!
//! Its pages are sent to the disk as it is written ([`PartialFile::append`]), so the
//! fsync that completes it has little left to flush: written whole and synced at the end,
//! a 22 MB snapshot (1,000,000 leases) left its writeback to that one fsync, and the log's
//! fdatasyncs queued behind it took 8-16 ms instead of about 0.5 (docs/benchmarks.md,
//! "Leases: a snapshot's writeback paced").
//!
//! Crash safety: a snapshot is written to `<name>.tmp`, fsynced, renamed to `<name>` and
//! the directory fsynced; only then does a durable commit of the data file name it as
//! current ([`super::state_machine`]). A crash at any point leaves the previous snapshot
//! current and at most a file no header names, which [`SnapshotFiles::remove_all_but`]
//! deletes when the store is opened.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The directory, inside the data directory, that holds the snapshot files.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// What a file being written is named until it is complete and synced.
const PARTIAL: &str = ".tmp";

/// How much of a file being written may be waiting for writeback: once this much more is
/// written, its writeback is started, and the writer waits for that of the stretch before
/// (so at most about twice this is ever in flight to the disk).
const WRITEBACK_BYTES: u64 = 1 << 20;

/// The directory of a controller's snapshot files.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    /// Opens (or creates, durably) the snapshot directory `dir`.
    pub(crate) fn open(dir: PathBuf) -> io::Result<Self> {
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            if let Some(parent) = dir.parent() {
                super::sync_dir(parent)?;
            }
        }
        Ok(SnapshotFiles { dir })
    }

    /// The name of the file of a snapshot up to log index `index`. Stored snapshots only
    /// ever replace one at a lower index, so a new name never is the current file's.
    pub(crate) fn name(index: u64) -> String {
        format!("snapshot-{index:020}.fosnap")
    }

    /// The path of the snapshot file `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts the file `name`, written as `<name>.tmp` until [`PartialFile::finish`].
    pub(crate) fn create(&self, name: &str) -> io::Result<PartialFile> {
        let partial = self.path(&format!("{name}{PARTIAL}"));
        let file = File::create(&partial)?;
        Ok(PartialFile {
            files: self.clone(),
            name: name.to_owned(),
            partial,
            file: Some(file),
            written: 0,
            started: 0,
        })
    }

    /// Opens the snapshot file `name` to read; a missing file is damage, named.
    pub(crate) fn open_file(&self, name: &str) -> io::Result<File> {
        let path = self.path(name);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot file {} named by the data file is missing",
                    path.display()
                ),
            ),
            _ => io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        })
    }

    /// Deletes the snapshot file `name` (nothing if it is gone already). Not synced: a
    /// file that comes back after a crash is no longer named and is deleted at open.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        remove_if_there(&self.path(name))
    }

    /// Deletes every file in the directory but `keep`: the partial and replaced files a
    /// crash left behind. Only while nothing is being written (at open).
    pub(crate) fn remove_all_but(&self, keep: Option<&str>) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if keep.is_some_and(|keep| entry.file_name() == keep) {
                continue;
            }
            if entry.file_type()?.is_file() {
                remove_if_there(&entry.path())?;
                tracing::info!(file = %entry.path().display(), "removed a snapshot file no longer current");
            }
        }
        Ok(())
    }
}

/// A snapshot file being written. Dropped before [`PartialFile::finish`] (a failed
/// encoding or write), it deletes what it wrote.
pub(crate) struct PartialFile {
    files: SnapshotFiles,
    name: String,
    partial: PathBuf,
    /// `None` once finished.
    file: Option<File>,
    /// Bytes written.
    written: u64,
    /// Bytes whose writeback has been started.
    started: u64,
}

impl PartialFile {
    /// Appends `piece`, and paces the file's writeback: each [`WRITEBACK_BYTES`] stretch
    /// is sent to the disk once written, after the writer has waited for the stretch
    /// before it. The dirty pages a build leaves never pile up into one burst that the
    /// log's fdatasyncs would queue behind, and the build goes at the disk's pace.
    pub(crate) fn append(&mut self, piece: &[u8]) -> io::Result<()> {
        let Some(file) = &mut self.file else {
            return Err(io::Error::other("snapshot file already finished"));
        };
        file.write_all(piece)?;
        self.written += piece.len() as u64;
        while self.written - self.started >= WRITEBACK_BYTES {
            writeback::start(file, self.started, WRITEBACK_BYTES)?;
            if let Some(before) = self.started.checked_sub(WRITEBACK_BYTES) {
                writeback::wait(file, before, WRITEBACK_BYTES)?;
            }
            self.started += WRITEBACK_BYTES;
        }
        Ok(())
    }

    /// Makes the file durable under its name (contents and size synced, renamed into
    /// place, the directory synced) and returns the name.
    pub(crate) fn finish(mut self) -> io::Result<String> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("snapshot file already finished"))?;
        let done = file
            .sync_all()
            .and_then(|()| fs::rename(&self.partial, self.files.path(&self.name)));
        if let Err(e) = done {
            self.file = Some(file);
            return Err(e);
        }
        super::sync_dir(&self.files.dir)?;
        Ok(std::mem::take(&mut self.name))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            if let Err(e) = remove_if_there(&self.partial) {
                tracing::warn!(file = %self.partial.display(), error = %e, "cannot delete an unfinished snapshot file");
            }
        }
    }
}

/// Writeback of a file's byte range, started or waited for (`sync_file_range(2)`). It
/// makes nothing durable (the file's fsync does): it only decides when the pages go to the
/// disk. Linux only; elsewhere the pages wait for the fsync.
mod writeback {
    use std::fs::File;
    use std::io;

    /// Starts the writeback of the dirty pages of `len` bytes from `offset`, without
    /// waiting for it.
    pub(super) fn start(file: &File, offset: u64, len: u64) -> io::Result<()> {
        sync_range(file, offset, len, false)
    }

    /// Waits until the pages of `len` bytes from `offset` are written to the disk (those
    /// dirty again since are written first).
    pub(super) fn wait(file: &File, offset: u64, len: u64) -> io::Result<()> {
        sync_range(file, offset, len, true)
    }

    #[cfg(target_os = "linux")]
    fn sync_range(file: &File, offset: u64, len: u64, wait: bool) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let flags = if wait {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        } else {
            libc::SYNC_FILE_RANGE_WRITE
        };
        let range = |n: u64| {
            libc::off64_t::try_from(n).map_err(|_| io::Error::other("file range too large"))
        };
        let (offset, len) = (range(offset)?, range(len)?);
        // SAFETY: the descriptor is open for as long as `file` is borrowed, and the call
        // reads nothing from this process's memory.
        let done = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sync_range(_: &File, _: u64, _: u64, _: bool) -> io::Result<()> {
        Ok(())
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_file_is_sent_to_the_disk_a_stretch_at_a_time_and_reads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let files = SnapshotFiles::open(dir.path().join(SNAPSHOTS_DIR)).expect("open");
        let name = SnapshotFiles::name(1);
        let mut file = files.create(&name).expect("create");
        // 3.5 stretches in pieces that do not divide one.
        let piece_bytes = 300 * 1024;
        let total = WRITEBACK_BYTES * 7 / 2;
        let mut expected = Vec::new();
        let mut k = 0u8;
        while (expected.len() as u64) < total {
            let piece = vec![k; piece_bytes.min((total as usize) - expected.len())];
            file.append(&piece).expect("write");
            expected.extend_from_slice(&piece);
            k = k.wrapping_add(1);
            assert!(file.written - file.started < WRITEBACK_BYTES);
        }
        assert_eq!(
            file.started,
            3 * WRITEBACK_BYTES,
            "three whole stretches started"
        );
        file.finish().expect("finish");
        let mut read = Vec::new();
        io::Read::read_to_end(&mut files.open_file(&name).expect("open"), &mut read).expect("read");
        assert!(
            read == expected,
            "{} bytes read, {} written",
            read.len(),
            expected.len()
        );
    }

    #[test]
    fn a_written_file_reads_back_and_leftovers_are_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let files = SnapshotFiles::open(dir.path().join(SNAPSHOTS_DIR)).expect("open");
        let name = SnapshotFiles::name(42);
        let mut file = files.create(&name).expect("create");
        file.append(b"abc").expect("write");
        file.append(b"de").expect("write");
        assert!(!files.path(&name).exists(), "named before it is complete");
        assert_eq!(file.finish().expect("finish"), name);
        // One given up is deleted.
        let mut dropped = files.create(&SnapshotFiles::name(43)).expect("create");
        dropped.append(b"xyz").expect("write");
        drop(dropped);
        let mut read = Vec::new();
        io::Read::read_to_end(&mut files.open_file(&name).expect("open"), &mut read).expect("read");
        assert_eq!(read, b"abcde");
        // What a crash leaves: a partial file and a replaced one.
        let partial = format!("{}{PARTIAL}", SnapshotFiles::name(50));
        fs::write(files.path(&partial), b"torn").expect("partial");
        fs::write(files.path(&SnapshotFiles::name(7)), b"old").expect("old");
        files.remove_all_but(Some(&name)).expect("clean");
        let left: Vec<_> = fs::read_dir(&files.dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(&name)]);
        files.remove(&name).expect("remove");
        files.remove(&name).expect("remove again is nothing");
        let err = files.open_file(&name).expect_err("gone");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("is missing"), "{err}");
    }
}

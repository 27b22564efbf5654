//! Worker output: per-instance log files with size-based rotation, and the line-by-line
//! copy on the executor's stderr (`site-a/0 | ...`, the foreman/pm2 habit).
//!
//! The guard reads the worker's stdout and stderr (it keeps running when the executor is
//! frozen, so a worker never blocks on a full pipe because the executor is stopped) and
//! hands the bytes to a [`Sink`]. Nothing here may block the guard for long or make it
//! fail: a log file that cannot be written loses bytes (counted, and said once), and a
//! slow stderr loses echoed lines (counted) instead of stalling the guard.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Where worker output goes; part of the executor's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputOptions {
    /// Directory of the per-instance log files (`<group>.<site>.<instance>.log`).
    pub log_dir: PathBuf,
    /// A log file is rotated before it would grow past this many bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept per instance (`.log.1` is the newest).
    pub keep_files: u32,
    /// Whether each line is also copied to the executor's stderr with a prefix.
    pub echo: bool,
}

/// Default size of one log file: 10 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated files kept per instance.
pub const DEFAULT_KEEP_FILES: u32 = 5;

/// Where the logs go when `--log-dir` is not given: `/var/log/failover` for root, else
/// `$XDG_STATE_HOME/failover/log` (`~/.local/state/failover/log`), else
/// `./failover-log`.
pub fn default_log_dir(is_root: bool) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/log/failover");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("failover/log");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(home).join(".local/state/failover/log");
    }
    PathBuf::from("failover-log")
}

impl OutputOptions {
    /// The log file of one instance.
    pub fn log_file(&self, group: &str, site: &str, instance: u32) -> PathBuf {
        self.log_dir.join(format!("{group}.{site}.{instance}.log"))
    }
}

/// A log file that is rotated by size: `name` is written, `name.1` .. `name.<keep>` are
/// the older ones, so at most `(keep + 1) x max_bytes` bytes are kept.
///
/// (`file-rotate` does this too, but panics when it cannot create the directory, and a
/// guard must not die because a disk is full or a directory was removed.)
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    /// Bytes that could not be written (unwritable directory, full disk).
    pub lost_bytes: u64,
    /// The last error, once per run of failures, for the caller to report.
    pub error: Option<String>,
}

impl RotatingFile {
    /// A log at `path`; nothing is opened until the first write.
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> RotatingFile {
        RotatingFile {
            path,
            max_bytes: max_bytes.max(1),
            keep,
            file: None,
            size: 0,
            lost_bytes: 0,
            error: None,
        }
    }

    /// Appends `bytes`, rotating first whenever the file would pass its limit. A cut
    /// prefers the last line end that fits; only a line longer than a whole file is split.
    pub fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.file.is_none() {
                self.open();
            }
            let room = self.max_bytes.saturating_sub(self.size) as usize;
            let take = if bytes.len() <= room {
                bytes.len()
            } else {
                match bytes[..room].iter().rposition(|b| *b == b'\n') {
                    Some(end) => end + 1,
                    None if self.size == 0 => room,
                    None => 0,
                }
            };
            if take == 0 {
                self.rotate();
                continue;
            }
            self.append(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let Some(file) = &mut self.file else {
            // Still counted against the file, so a broken disk cannot spin this loop.
            self.size += bytes.len() as u64;
            self.lost_bytes += bytes.len() as u64;
            return;
        };
        match file.write_all(bytes) {
            Ok(()) => {
                self.size += bytes.len() as u64;
                self.error = None;
            }
            Err(e) => {
                self.file = None;
                self.size += bytes.len() as u64;
                self.lost_bytes += bytes.len() as u64;
                self.error = Some(format!("cannot write {}: {e}", self.path.display()));
            }
        }
    }

    fn open(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => {
                self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(file);
            }
            Err(e) => self.error = Some(format!("cannot open {}: {e}", self.path.display())),
        }
    }

    /// `name.<keep-1>` → `name.<keep>`, …, `name` → `name.1`; the oldest is dropped.
    fn rotate(&mut self) {
        self.file = None;
        self.size = 0;
        if self.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let numbered = |n: u32| numbered_path(&self.path, n);
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        let _ = std::fs::rename(&self.path, numbered(1));
    }
}

/// `name.<n>` beside `path`.
pub fn numbered_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The longest line echoed whole; a longer one is cut into pieces of this size.
pub const MAX_ECHO_LINE_BYTES: usize = 8 * 1024;
/// The largest batch of whole lines written at once (PIPE_BUF on Linux).
const ECHO_WRITE_BYTES: usize = 4096;
/// Lines waiting for the stderr writer; past this, lines are dropped (and counted).
const ECHO_QUEUE_LINES: usize = 1024;

/// Copies worker lines to stderr from a thread of its own, so a slow or blocked stderr
/// (a terminal on hold, a full pipe) drops lines instead of stalling the guard.
pub struct Echo {
    prefix: String,
    queue: Option<SyncSender<Vec<u8>>>,
    done: Receiver<()>,
    dropped: u64,
}

impl Echo {
    /// Starts the writer thread; each line is written as `<prefix> | <line>`.
    pub fn start(prefix: String) -> std::io::Result<Echo> {
        let (queue, lines) = sync_channel::<Vec<u8>>(ECHO_QUEUE_LINES);
        let (finished, done) = sync_channel(1);
        std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                let stderr = std::io::stderr();
                let mut batch = Vec::new();
                let mut carried = None;
                while let Some(line) = carried.take().or_else(|| lines.recv().ok()) {
                    // Whole lines queued meanwhile go out in one write of at most
                    // PIPE_BUF bytes: a flood costs few syscalls, and on a pipe such a
                    // write is atomic, so the executor's own log lines never land in the
                    // middle of a worker's line.
                    batch.clear();
                    batch.extend_from_slice(&line);
                    while let Ok(more) = lines.try_recv() {
                        if batch.len() + more.len() > ECHO_WRITE_BYTES {
                            carried = Some(more);
                            break;
                        }
                        batch.extend_from_slice(&more);
                    }
                    if stderr.lock().write_all(&batch).is_err() {
                        break;
                    }
                }
                let _ = finished.send(());
            })?;
        Ok(Echo {
            prefix,
            queue: Some(queue),
            done,
            dropped: 0,
        })
    }

    /// Queues one line (without its newline); never blocks.
    pub fn line(&mut self, line: &[u8]) {
        let Some(queue) = &self.queue else { return };
        let mut text = Vec::with_capacity(self.prefix.len() + line.len() + 4);
        if self.dropped > 0 {
            let note = format!(
                "{} | [{} lines not echoed: stderr too slow; see the log file]\n",
                self.prefix, self.dropped
            );
            text.extend_from_slice(note.as_bytes());
        }
        text.extend_from_slice(self.prefix.as_bytes());
        text.extend_from_slice(b" | ");
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        text.extend_from_slice(String::from_utf8_lossy(line).as_bytes());
        text.push(b'\n');
        match queue.try_send(text) {
            Ok(()) => self.dropped = 0,
            Err(TrySendError::Full(_)) => self.dropped += 1,
            Err(TrySendError::Disconnected(_)) => self.queue = None,
        }
    }

    /// Lets the writer finish what is queued, waiting at most `within`.
    pub fn finish(&mut self, within: Duration) {
        self.queue = None;
        let _ = self.done.recv_timeout(within);
    }
}

/// Splits one stream into lines for the echo; a partial line waits for its end, up to
/// [`MAX_ECHO_LINE_BYTES`].
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Feeds bytes; calls `emit` for every whole line (without its newline).
    pub fn feed(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8])) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                emit(&bytes[..end]);
            } else {
                self.partial.extend_from_slice(&bytes[..end]);
                emit(&self.partial);
                self.partial.clear();
            }
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= MAX_ECHO_LINE_BYTES {
            let rest = self.partial.split_off(MAX_ECHO_LINE_BYTES);
            emit(&self.partial);
            self.partial = rest;
        }
    }

    /// Emits what is left of a last line without a newline (the stream ended).
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<(String, u64)> {
        let mut found: Vec<(String, u64)> = std::fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .map(|e| {
                let len = e.metadata().expect("metadata").len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn rotation_bounds_the_number_and_size_of_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("g.s.0.log");
        let mut log = RotatingFile::new(path.clone(), 100, 2);
        for i in 0..1000 {
            log.write(format!("line {i:04} of output\n").as_bytes());
        }
        let found = files(dir.path());
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["g.s.0.log", "g.s.0.log.1", "g.s.0.log.2"]);
        assert!(found.iter().all(|(_, len)| *len <= 100), "{found:?}");
        // Whole lines only, and the newest line is in the live file.
        let live = std::fs::read_to_string(&path).expect("read");
        assert!(live.ends_with("line 0999 of output\n"), "{live}");
        let older = std::fs::read_to_string(numbered_path(&path, 1)).expect("read");
        assert!(older.lines().all(|l| l.starts_with("line ")), "{older}");
        assert_eq!(log.lost_bytes, 0);
    }

    #[test]
    fn a_line_longer_than_a_file_is_split_not_lost() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l.log");
        let mut log = RotatingFile::new(path.clone(), 10, 5);
        log.write(&[b'x'; 35]);
        let total: u64 = files(dir.path()).iter().map(|(_, len)| len).sum();
        assert_eq!(total, 35);
        assert!(files(dir.path()).iter().all(|(_, len)| *len <= 10));
    }

    #[test]
    fn an_unwritable_directory_loses_bytes_without_failing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "").expect("write");
        let mut log = RotatingFile::new(blocker.join("x.log"), 1000, 1);
        log.write(b"hello\n");
        assert_eq!(log.lost_bytes, 6);
        assert!(log.error.as_deref().is_some_and(|e| e.contains("x.log")));
    }

    #[test]
    fn lines_join_partials_and_cut_long_lines() {
        let mut lines = Lines::default();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut emit = |l: &[u8]| seen.push(l.to_vec());
        lines.feed(b"processing ", &mut emit);
        lines.feed(b"job\nsecond\nthi", &mut emit);
        lines.feed(&[b'y'; MAX_ECHO_LINE_BYTES + 5], &mut emit);
        lines.flush(&mut emit);
        assert_eq!(seen[0], b"processing job");
        assert_eq!(seen[1], b"second");
        assert_eq!(seen[2].len(), MAX_ECHO_LINE_BYTES);
        assert!(seen[2].starts_with(b"thi"));
        assert_eq!(seen[3].len(), 8);
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn default_log_dir_for_root_is_var_log() {
        assert_eq!(default_log_dir(true), PathBuf::from("/var/log/failover"));
    }
}

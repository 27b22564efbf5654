//! A simulated disk for redb: what was written, and what a sync made durable.
//!
//! Every write and length change is applied to the contents the running process sees and
//! queued; `sync_data` (redb's fdatasync) applies the queue to the durable copy. A crash
//! reopens either the durable copy (power loss: unsynced writes are gone) or everything
//! written (the process was killed, the page cache survived).

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

#[derive(Debug)]
enum Pending {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug, Default)]
struct DiskState {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

/// One controller's disk. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct SimDisk(Arc<Mutex<DiskState>>);

impl SimDisk {
    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The disk a restarted controller finds: only what was synced after a power loss,
    /// everything written after a process kill.
    pub fn after_crash(&self, power_loss: bool) -> SimDisk {
        let state = self.lock();
        let bytes = if power_loss {
            state.durable.clone()
        } else {
            state.current.clone()
        };
        SimDisk(Arc::new(Mutex::new(DiskState {
            current: bytes.clone(),
            durable: bytes,
            pending: Vec::new(),
        })))
    }
}

fn set_len(buffer: &mut Vec<u8>, len: usize) {
    buffer.resize(len, 0);
}

fn write_at(buffer: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if buffer.len() < offset + data.len() {
        buffer.resize(offset + data.len(), 0);
    }
    buffer[offset..offset + data.len()].copy_from_slice(data);
}

fn to_usize(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| io::Error::other("offset beyond the address space"))
}

impl StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().current.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let offset = to_usize(offset)?;
        let state = self.lock();
        state
            .current
            .get(offset..offset + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = to_usize(len)?;
        let mut state = self.lock();
        set_len(&mut state.current, len);
        state.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        for op in pending {
            match op {
                Pending::Write { offset, data } => write_at(&mut state.durable, offset, &data),
                Pending::SetLen(len) => set_len(&mut state.durable, len),
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let offset = to_usize(offset)?;
        let mut state = self.lock();
        write_at(&mut state.current, offset, data);
        state.pending.push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_only_synced_writes_and_a_kill_keeps_all() {
        let disk = SimDisk::default();
        disk.write(0, b"synced").unwrap();
        disk.sync_data(false).unwrap();
        disk.write(0, b"SYNCED-not").unwrap();
        assert_eq!(disk.after_crash(true).read(0, 6).unwrap(), b"synced");
        assert_eq!(disk.after_crash(true).len().unwrap(), 6);
        assert_eq!(disk.after_crash(false).read(0, 10).unwrap(), b"SYNCED-not");
    }
}

//! Durable Raft storage in sled: the log and vote ([`SledLogStore`]) and the state
//! machine with its snapshot ([`SledStateMachine`]).
//!
//! Persistence ordering: an append or a vote is acknowledged to openraft only after
//! `flush_async` returns, so nothing Raft counts as persisted can be lost by kill -9.
//! The state machine lives in memory and is made durable by the log plus snapshots
//! (fsynced when built or installed): on start openraft installs the last snapshot and
//! re-applies the committed entries after it.

mod log;
mod state_machine;

use std::io;
use std::path::Path;

pub use log::SledLogStore;
pub use state_machine::{SledStateMachine, StateView};

use failover_core::NodeId;

/// The data directory could not be opened or does not belong to this controller.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled could not open the directory (permissions, lock held by another process, damage).
    #[error("cannot open data dir {dir}: {source}")]
    Sled {
        /// The directory.
        dir: String,
        /// sled's reason.
        source: sled::Error,
    },
    /// The directory holds the data of another controller.
    #[error("data dir {dir} belongs to controller {found}, not {expected}: point --data-dir at this controller's own directory")]
    WrongNode {
        /// The directory.
        dir: String,
        /// The node id recorded in it.
        found: NodeId,
        /// The node id this process runs as.
        expected: NodeId,
    },
    /// The state recorded in the directory cannot be decoded.
    #[error("data dir {dir} is damaged: {source}")]
    Damaged {
        /// The directory.
        dir: String,
        /// What could not be read.
        source: io::Error,
    },
}

/// Opens (or creates) a controller's data directory and returns its two stores.
pub fn open(dir: &Path, node_id: NodeId) -> Result<(SledLogStore, SledStateMachine), OpenError> {
    let shown = dir.display().to_string();
    let sled_err = |source| OpenError::Sled {
        dir: shown.clone(),
        source,
    };
    let db = sled::Config::new().path(dir).open().map_err(sled_err)?;
    let meta = db.open_tree("meta").map_err(sled_err)?;
    match meta.get("node_id").map_err(sled_err)? {
        Some(raw) => {
            let found = decode_u64(&raw).ok_or_else(|| OpenError::Damaged {
                dir: shown.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, "node_id is not 8 bytes"),
            })?;
            if found != node_id {
                return Err(OpenError::WrongNode {
                    dir: shown,
                    found,
                    expected: node_id,
                });
            }
        }
        None => {
            meta.insert("node_id", &node_id.to_be_bytes())
                .map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
        }
    }
    let log = SledLogStore::new(db.clone()).map_err(sled_err)?;
    let sm =
        SledStateMachine::open(db).map_err(|source| OpenError::Damaged { dir: shown, source })?;
    Ok((log, sm))
}

fn decode_u64(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

fn io_err(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8], what: &str) -> Result<T, io::Error> {
    serde_json::from_slice(raw).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot decode {what}: {e}"),
        )
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, io::Error> {
    serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

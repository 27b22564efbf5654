//! The cluster id as the data dir records it (`meta` table, key `cluster_id`), readable
//! before Raft starts: a controller started on another cluster's data dir is told apart
//! from its peers by it (docs/security.md, "Cluster identity").

use std::io;
use std::sync::Arc;

use redb::{Database, Durability};

use super::{read_meta, write_blocking, LogStore, META};

const CLUSTER_ID: &str = "cluster_id";

/// The data dir's record of the cluster id: written once, when the id is first applied
/// (from the log or an installed snapshot), never changed afterwards.
#[derive(Clone)]
pub struct ClusterIdRecord {
    db: Arc<Database>,
}

impl LogStore {
    /// The cluster id record of this store's data file.
    pub fn cluster_id_record(&self) -> ClusterIdRecord {
        ClusterIdRecord {
            db: self.shared.db.clone(),
        }
    }
}

impl ClusterIdRecord {
    /// The recorded id, if one was recorded.
    pub fn read(&self) -> io::Result<Option<String>> {
        match read_meta(&self.db, CLUSTER_ID)? {
            None => Ok(None),
            Some(raw) => String::from_utf8(raw)
                .map(Some)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "cluster_id is not UTF-8")),
        }
    }

    /// Records `id` (fdatasynced before this returns).
    pub async fn write(&self, id: &str) -> io::Result<()> {
        let raw = id.as_bytes().to_vec();
        write_blocking(&self.db, Durability::Immediate, move |txn| {
            txn.open_table(META)?.insert(CLUSTER_ID, raw.as_slice())?;
            Ok(())
        })
        .await
    }
}

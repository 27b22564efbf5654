//! The two ends of a `StreamSnapshot` call: the leader turns a snapshot into messages
//! (its header, data pieces, an end marker with the byte count), and the follower stages
//! them in a file and refuses a stream cut short, so a broken connection installs nothing.
//!
//! Neither end holds more than a few pieces in memory, whatever the snapshot's size.

use std::path::Path;

use failover_proto::raft::RaftPayload;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::snapshot_data::SnapshotData;

/// The last message of a `StreamSnapshot` call: how many data bytes came before it, so a
/// stream cut short is told from a whole one.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotEnd {
    /// The data bytes of every message between the header and this marker.
    pub bytes: u64,
}

/// Pieces read ahead of the network while a snapshot is streamed.
pub const PIECES_AHEAD: usize = 2;

/// The messages of a `StreamSnapshot` call, read from `data` on the blocking pool at most
/// [`PIECES_AHEAD`] ahead of the receiver: `header` (a `SnapshotHeader` as JSON), the data
/// pieces, and the end marker. A failed read ends the messages without the marker (the
/// receiver refuses the stream) and is the task's error. Dropping the receiver stops the
/// reading.
pub fn messages(
    header: Vec<u8>,
    mut data: SnapshotData,
) -> (mpsc::Receiver<RaftPayload>, JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = mpsc::channel(PIECES_AHEAD);
    let producer = tokio::task::spawn_blocking(move || {
        let first = RaftPayload {
            json: header,
            data: Vec::new(),
        };
        if tx.blocking_send(first).is_err() {
            return Ok(());
        }
        let mut bytes = 0u64;
        while let Some(piece) = data.next_piece()? {
            bytes += piece.len() as u64;
            let message = RaftPayload {
                json: Vec::new(),
                data: piece,
            };
            if tx.blocking_send(message).is_err() {
                return Ok(());
            }
        }
        let end = serde_json::to_vec(&SnapshotEnd { bytes }).map_err(std::io::Error::other)?;
        let _ = tx.blocking_send(RaftPayload {
            json: end,
            data: Vec::new(),
        });
        Ok(())
    });
    (rx, producer)
}

/// Receives the data pieces that follow a stream's header into an unlinked file in `dir`
/// (gone with the process, whatever happens) and returns it positioned at its start.
/// Refuses a stream that ends without its end marker (ABORTED) or whose marker counts
/// other bytes than arrived (INVALID_ARGUMENT).
pub async fn stage(
    dir: &Path,
    stream: &mut (impl Stream<Item = Result<RaftPayload, Status>> + Unpin),
) -> Result<std::fs::File, Status> {
    let file = tempfile::tempfile_in(dir).map_err(|e| {
        Status::internal(format!("cannot stage a snapshot in {}: {e}", dir.display()))
    })?;
    let mut file = tokio::fs::File::from_std(file);
    let failed = |e: std::io::Error| Status::internal(format!("cannot stage a snapshot: {e}"));
    let mut bytes = 0u64;
    let declared = loop {
        let Some(message) = stream.next().await.transpose()? else {
            return Err(Status::aborted(format!(
                "the snapshot stream ended after {bytes} bytes, before its end marker"
            )));
        };
        if !message.json.is_empty() {
            let end: SnapshotEnd = serde_json::from_slice(&message.json).map_err(|e| {
                Status::invalid_argument(format!("undecodable snapshot end marker: {e}"))
            })?;
            break end.bytes;
        }
        bytes += message.data.len() as u64;
        file.write_all(&message.data).await.map_err(failed)?;
    };
    if declared != bytes {
        return Err(Status::invalid_argument(format!(
            "the snapshot stream carried {bytes} bytes, its end marker says {declared}"
        )));
    }
    file.flush().await.map_err(failed)?;
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(failed)?;
    Ok(file.into_std().await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A snapshot of `len` bytes that are not all alike.
    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn collect(mut rx: mpsc::Receiver<RaftPayload>) -> Vec<RaftPayload> {
        let mut out = Vec::new();
        while let Some(m) = rx.recv().await {
            out.push(m);
        }
        out
    }

    /// A snapshot of 3.5 pieces goes out as its header, four pieces of at most
    /// `PIECE_BYTES` and the marker, and is staged byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_of_several_pieces_arrives_whole() {
        let piece = crate::snapshot_data::PIECE_BYTES;
        let data = bytes(piece * 7 / 2);
        let (rx, producer) = messages(
            b"{\"h\":1}".to_vec(),
            SnapshotData::from_bytes(data.clone()),
        );
        let sent = collect(rx).await;
        producer.await.expect("join").expect("read");
        assert_eq!(sent.len(), 1 + 4 + 1);
        assert_eq!(sent[0].json, b"{\"h\":1}");
        assert!(sent[1..5]
            .iter()
            .all(|m| m.json.is_empty() && m.data.len() <= piece));
        let mut stream = futures::stream::iter(sent.into_iter().skip(1).map(Ok));
        let dir = tempfile::tempdir().expect("dir");
        let mut staged = stage(dir.path(), &mut stream).await.expect("staged");
        let mut back = Vec::new();
        staged.read_to_end(&mut back).expect("read");
        assert!(back == data, "staged bytes differ");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            0,
            "unlinked"
        );
    }

    /// A stream that breaks before its end marker, or whose marker counts other bytes, is
    /// refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_cut_short_is_refused() {
        let (rx, producer) = messages(b"{}".to_vec(), SnapshotData::from_bytes(bytes(5000)));
        let sent = collect(rx).await;
        producer.await.expect("join").expect("read");
        let dir = tempfile::tempdir().expect("dir");

        let without_end = sent[1..sent.len() - 1].to_vec();
        let mut stream = futures::stream::iter(without_end.into_iter().map(Ok));
        let err = stage(dir.path(), &mut stream)
            .await
            .expect_err("no end marker");
        assert_eq!(err.code(), tonic::Code::Aborted, "{err}");

        let mut lost_piece = sent[2..].to_vec();
        lost_piece.insert(
            0,
            RaftPayload {
                json: Vec::new(),
                data: vec![1, 2, 3],
            },
        );
        let mut stream = futures::stream::iter(lost_piece.into_iter().map(Ok));
        let err = stage(dir.path(), &mut stream)
            .await
            .expect_err("other count");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

        let broken = vec![
            Ok(sent[1].clone()),
            Err(Status::unavailable("connection reset")),
        ];
        let mut stream = futures::stream::iter(broken);
        let err = stage(dir.path(), &mut stream).await.expect_err("broken");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    }
}

//! The Raft peer service: decodes openraft messages and hands them to the local node.

use failover_proto::raft::raft_service_server::RaftService;
use failover_proto::raft::RaftPayload;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::ReadPolicy;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;

use tonic::{Request, Response, Status, Streaming};

use crate::network::SnapshotHeader;
use crate::snapshot_data::SnapshotData;
use crate::store::Raft;
use crate::types::{Snapshot, TypeConfig};

/// Serves Raft RPCs from peers. Only controllers should reach it.
pub struct RaftServer {
    raft: Raft,
    /// Where a snapshot being received is staged: the data directory, so a large
    /// snapshot takes disk, not memory (nor a temporary directory that may be in memory).
    staging: PathBuf,
}

impl RaftServer {
    /// A server for the local Raft node, staging received snapshots in `staging`.
    pub fn new(raft: Raft, staging: PathBuf) -> Self {
        RaftServer { raft, staging }
    }

    /// Hands a received snapshot to openraft and answers with its response.
    async fn install(
        &self,
        header: SnapshotHeader,
        data: SnapshotData,
    ) -> Result<Response<RaftPayload>, Status> {
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: data,
        };
        let response = self
            .raft
            .install_full_snapshot(header.vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }
}

fn decode<T: DeserializeOwned>(payload: &RaftPayload, what: &str) -> Result<T, Status> {
    serde_json::from_slice(&payload.json)
        .map_err(|e| Status::invalid_argument(format!("undecodable {what}: {e}")))
}

fn reply<T: Serialize>(message: &T) -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(message).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload {
        json,
        data: Vec::new(),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(request.get_ref(), "vote request")?;
        let response = self
            .raft
            .vote(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(request.get_ref(), "pre-vote request")?;
        let response = self
            .raft
            .pre_vote(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }

    /// One read-index round on behalf of a follower. A non-leader (or a leader that cannot
    /// reach a quorum) fails; the caller's deadline bounds the wait.
    async fn read_index(
        &self,
        _request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let read = self
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(read.log_id())
    }

    /// A stopping leader names its successor: that node campaigns at once (once its log
    /// is as long as the leader's), every other one stops honouring the old leader's lease.
    async fn transfer_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> =
            decode(request.get_ref(), "transfer-leader request")?;
        let response = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }

    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(request.get_ref(), "append-entries request")?;
        let response = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }

    /// A snapshot in pieces: staged on disk whole before openraft sees it, so a stream
    /// that breaks installs nothing and costs no memory.
    async fn stream_snapshot(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        let header: SnapshotHeader = decode(&first, "snapshot header")?;
        let staged = crate::snapshot_stream::stage(&self.staging, &mut stream).await?;
        self.install(header, SnapshotData::from_file(staged)).await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let payload = request.into_inner();
        let header: SnapshotHeader = decode(&payload, "snapshot header")?;
        self.install(header, SnapshotData::from_bytes(payload.data))
            .await
    }
}

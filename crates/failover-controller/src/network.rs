//! The Raft transport: openraft's RPCs as JSON payloads in gRPC calls.
//!
//! Connections are made by a [`Dialer`] the caller supplies, so a simulated network can
//! replace TCP without touching this code.

use std::future::Future;
use std::sync::Arc;

use failover_client::Dialer;
use failover_core::NodeId;
use failover_proto::raft::raft_service_client::RaftServiceClient;
use failover_proto::raft::RaftPayload;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::Channel;

use crate::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};

/// Creates one [`PeerConnection`] per target; openraft calls it per replication stream.
#[derive(Clone)]
pub struct RaftNetwork {
    dialer: Arc<dyn Dialer>,
}

impl RaftNetwork {
    /// A network that dials through `dialer`.
    pub fn new(dialer: Arc<dyn Dialer>) -> Self {
        RaftNetwork { dialer }
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            client: self
                .dialer
                .channel(&node.addr)
                .map(RaftServiceClient::new)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The Raft RPC client to one peer.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    client: Result<RaftServiceClient<Channel>, String>,
}

type RpcErr = RPCError<TypeConfig>;

impl PeerConnection {
    fn client(&self) -> Result<RaftServiceClient<Channel>, RpcErr> {
        self.client.clone().map_err(|reason| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "controller {} at {}: {reason}",
                self.target, self.addr
            )))
        })
    }

    fn status_error(&self, status: tonic::Status) -> RpcErr {
        let message = format!("controller {} at {}: {status}", self.target, self.addr);
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                RPCError::Unreachable(Unreachable::from_string(message))
            }
            _ => RPCError::Network(NetworkError::from_string(message)),
        }
    }

    fn request<T: Serialize>(
        &self,
        message: &T,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<tonic::Request<RaftPayload>, RpcErr> {
        let json = serde_json::to_vec(message)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))?;
        let mut request = tonic::Request::new(RaftPayload { json, data });
        request.set_timeout(option.hard_ttl());
        Ok(request)
    }

    fn decode<T: DeserializeOwned>(&self, payload: RaftPayload) -> Result<T, RpcErr> {
        serde_json::from_slice(&payload.json).map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!(
                "controller {} sent an undecodable reply: {e}",
                self.target
            )))
        })
    }
}

/// The message an `InstallSnapshot` call carries beside the raw snapshot bytes.
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) vote: Vote,
    pub(crate) meta: SnapshotMeta,
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let request = self.request(&rpc, Vec::new(), &option)?;
        let reply = self
            .client()?
            .append_entries(request)
            .await
            .map_err(|s| self.status_error(s))?;
        self.decode(reply.into_inner())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let request = self.request(&rpc, Vec::new(), &option)?;
        let reply = self
            .client()?
            .vote(request)
            .await
            .map_err(|s| self.status_error(s))?;
        self.decode(reply.into_inner())
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let request = self.request(&rpc, Vec::new(), &option)?;
        let reply = self
            .client()?
            .pre_vote(request)
            .await
            .map_err(|s| self.status_error(s))?;
        self.decode(reply.into_inner())
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        let request = self.request(&rpc, Vec::new(), &option)?;
        let reply = self
            .client()?
            .transfer_leader(request)
            .await
            .map_err(|s| self.status_error(s))?;
        self.decode(reply.into_inner())
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
        };
        let request = self.request(&header, snapshot.snapshot, &option)?;
        let reply = self
            .client()?
            .install_snapshot(request)
            .await
            .map_err(|s| self.status_error(s))?;
        Ok(self.decode(reply.into_inner())?)
    }
}

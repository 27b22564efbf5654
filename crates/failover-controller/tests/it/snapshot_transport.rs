//! The snapshot transport against a peer over real gRPC on loopback: a snapshot of
//! several pieces arrives whole through `StreamSnapshot`, and a peer from before that call
//! (it answers UNIMPLEMENTED) gets the snapshot in one `InstallSnapshot` message from the
//! next attempt on, as openraft retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use failover_controller::network::{RaftNetwork, SnapshotHeader};
use failover_controller::snapshot_data::{SnapshotData, PIECE_BYTES};
use failover_controller::snapshot_stream;
use failover_controller::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use failover_net::{SystemClock, TcpDialer};
use failover_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use failover_proto::raft::RaftPayload;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::SnapshotResponse;
use openraft::{BasicNode, RaftNetworkV2};
use std::io::Read;
use tonic::{Request, Response, Status, Streaming};

/// A peer that records the snapshots it receives; `streams: false` is a controller from
/// before `StreamSnapshot`.
struct Peer {
    streams: bool,
    staging: tempfile::TempDir,
    received: Mutex<Vec<(&'static str, Vec<u8>)>>,
}

fn answer() -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(&SnapshotResponse::<TypeConfig>::new(Vote::new(1, 2)))
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload {
        json,
        data: Vec::new(),
    }))
}

/// The gRPC service over a shared [`Peer`].
struct Service(Arc<Peer>);

#[tonic::async_trait]
impl RaftService for Service {
    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("vote"))
    }
    async fn pre_vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("pre_vote"))
    }
    async fn append_entries(
        &self,
        _: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("append_entries"))
    }
    async fn read_index(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("read_index"))
    }
    async fn transfer_leader(
        &self,
        _: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("transfer_leader"))
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let payload = request.into_inner();
        let _: SnapshotHeader = serde_json::from_slice(&payload.json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.0
            .received
            .lock()
            .expect("lock")
            .push(("one message", payload.data));
        answer()
    }

    async fn stream_snapshot(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<RaftPayload>, Status> {
        if !self.0.streams {
            return Err(Status::unimplemented("StreamSnapshot"));
        }
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty"))?;
        let _: SnapshotHeader = serde_json::from_slice(&first.json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut staged = snapshot_stream::stage(self.0.staging.path(), &mut stream).await?;
        let mut data = Vec::new();
        staged
            .read_to_end(&mut data)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.0.received.lock().expect("lock").push(("stream", data));
        answer()
    }
}

/// Serves `peer` on a port the OS picks; the server stops when the test's runtime ends.
async fn serve(peer: Arc<Peer>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServiceServer::new(Service(peer)))
            .serve_with_incoming(incoming),
    );
    addr
}

fn snapshot(data: &[u8]) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 7)),
            last_membership: Default::default(),
        },
        snapshot: SnapshotData::from_bytes(data.to_vec()),
    }
}

fn data() -> Vec<u8> {
    (0..PIECE_BYTES * 5 / 2)
        .map(|i| (i * 13 % 251) as u8)
        .collect()
}

async fn send(
    conn: &mut failover_controller::network::PeerConnection,
    data: &[u8],
) -> Result<SnapshotResponse<TypeConfig>, String> {
    conn.full_snapshot(
        Vote::new(1, 1),
        snapshot(data),
        std::future::pending(),
        RPCOption::new(Duration::from_secs(20)),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn connect(addr: String) -> failover_controller::network::PeerConnection {
    let mut network = RaftNetwork::new(Arc::new(TcpDialer::default()), Arc::new(SystemClock));
    network.new_client(2, &BasicNode { addr }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_several_pieces_streams_whole() {
    let peer = Arc::new(Peer {
        streams: true,
        staging: tempfile::tempdir().expect("dir"),
        received: Mutex::new(Vec::new()),
    });
    let mut conn = connect(serve(peer.clone()).await).await;
    let data = data();
    let reply = send(&mut conn, &data).await.expect("sent");
    assert_eq!(reply.vote, Vote::new(1, 2));
    let received = peer.received.lock().expect("lock");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, "stream");
    assert!(received[0].1 == data, "the staged bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_streams_gets_the_snapshot_in_one_message_on_the_retry() {
    let peer = Arc::new(Peer {
        streams: false,
        staging: tempfile::tempdir().expect("dir"),
        received: Mutex::new(Vec::new()),
    });
    let mut conn = connect(serve(peer.clone()).await).await;
    let data = data();
    let first = send(&mut conn, &data).await.expect_err("unimplemented");
    assert!(first.contains("StreamSnapshot"), "{first}");
    assert!(peer.received.lock().expect("lock").is_empty());
    send(&mut conn, &data).await.expect("sent whole");
    let received = peer.received.lock().expect("lock");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, "one message");
    assert!(received[0].1 == data, "the bytes differ");
}

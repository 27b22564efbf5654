//! The Raft transport: openraft's RPCs as JSON payloads in gRPC calls.
//!
//! Connections are made by a [`Dialer`] the caller supplies, so a simulated network can
//! replace TCP without touching this code.
//!
//! Failed calls to a peer are not logged one by one (openraft retries them many times a
//! second): [`Reachability`] turns them into one line when the peer goes down, one summary
//! every [`SUMMARY_EVERY`] while it stays down, and one line when it answers again.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failover_core::NodeId;
use failover_net::Clock;
use failover_net::Dialer;
use failover_proto::raft::raft_service_client::RaftServiceClient;
use failover_proto::raft::RaftPayload;
use failover_proto::wire::Chan;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use serde::{de::DeserializeOwned, Serialize};

use crate::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};

/// How often a peer that stays unreachable is mentioned again in the log.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);
/// How long calls to a peer must keep failing before it is logged as down: a single
/// timed-out call under load is not an outage.
pub const DOWN_AFTER: Duration = Duration::from_secs(1);

/// The log rule for peers that stop answering: one line once a peer has failed every call
/// for `down_after`, a summary every `summary_every` while it stays down, one line when it
/// answers again (nothing for a blip shorter than `down_after`). Pure: time is an
/// argument, and it only says what to log.
#[derive(Debug)]
pub struct Reachability {
    down_after: Duration,
    summary_every: Duration,
    down: BTreeMap<NodeId, Outage>,
}

/// A peer's current run of failed calls, as far as this controller's calls saw it.
#[derive(Debug, Clone)]
struct Outage {
    since: Instant,
    failures: u64,
    /// When the last line about it was logged; `None` while it is still a blip.
    last_said: Option<Instant>,
    failures_said: u64,
}

/// A line the caller should log about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerNote {
    /// Every call failed for `down_after`.
    Down {
        /// The peer.
        peer: NodeId,
        /// Failed calls so far.
        failures: u64,
    },
    /// The peer is still down: how long, and how many calls failed since the last note.
    StillDown {
        /// The peer.
        peer: NodeId,
        /// Since the first failure.
        down_for: Duration,
        /// Failed calls since the previous note about this outage.
        failures: u64,
    },
    /// The peer answered again after an outage that was logged.
    Up {
        /// The peer.
        peer: NodeId,
        /// How long it was down.
        down_for: Duration,
        /// Failed calls during the outage.
        failures: u64,
    },
}

impl Reachability {
    /// A rule that logs a peer down after `down_after` of failures and repeats a summary
    /// every `summary_every` while it stays down.
    pub fn new(down_after: Duration, summary_every: Duration) -> Self {
        Reachability {
            down_after,
            summary_every,
            down: BTreeMap::new(),
        }
    }

    /// A call to `peer` failed at `now`; what to log, if anything.
    pub fn failed(&mut self, peer: NodeId, now: Instant) -> Option<PeerNote> {
        let outage = self.down.entry(peer).or_insert(Outage {
            since: now,
            failures: 0,
            last_said: None,
            failures_said: 0,
        });
        outage.failures += 1;
        match outage.last_said {
            None if now.saturating_duration_since(outage.since) >= self.down_after => {
                outage.last_said = Some(now);
                outage.failures_said = outage.failures;
                Some(PeerNote::Down {
                    peer,
                    failures: outage.failures,
                })
            }
            Some(said) if now.saturating_duration_since(said) >= self.summary_every => {
                let failures = outage.failures - outage.failures_said;
                outage.last_said = Some(now);
                outage.failures_said = outage.failures;
                Some(PeerNote::StillDown {
                    peer,
                    down_for: now.saturating_duration_since(outage.since),
                    failures,
                })
            }
            _ => None,
        }
    }

    /// A call to `peer` succeeded at `now`; what to log, if anything.
    pub fn answered(&mut self, peer: NodeId, now: Instant) -> Option<PeerNote> {
        let outage = self.down.remove(&peer)?;
        outage.last_said?;
        Some(PeerNote::Up {
            peer,
            down_for: now.saturating_duration_since(outage.since),
            failures: outage.failures,
        })
    }
}

/// Logs a note about `addr` (the peer's address), with the last error for context.
fn log_note(note: PeerNote, addr: &str, error: Option<&str>) {
    let error = error.unwrap_or("");
    match note {
        PeerNote::Down { peer, failures } => {
            tracing::warn!(peer, %addr, %error, failures, "controller {peer} unreachable; further failures are summarized every {}s", SUMMARY_EVERY.as_secs())
        }
        PeerNote::StillDown {
            peer,
            down_for,
            failures,
        } => tracing::warn!(
            peer,
            %addr,
            %error,
            down_for_ms = down_for.as_millis() as u64,
            failures,
            "controller {peer} still unreachable"
        ),
        PeerNote::Up {
            peer,
            down_for,
            failures,
        } => tracing::info!(
            peer,
            %addr,
            down_for_ms = down_for.as_millis() as u64,
            failures,
            "controller {peer} reachable again"
        ),
    }
}

/// Creates one [`PeerConnection`] per target; openraft calls it per replication stream.
#[derive(Clone)]
pub struct RaftNetwork {
    dialer: Arc<dyn Dialer>,
    clock: Arc<dyn Clock>,
    reachability: Arc<Mutex<Reachability>>,
}

impl RaftNetwork {
    /// A network that dials through `dialer` and times outages on `clock`.
    pub fn new(dialer: Arc<dyn Dialer>, clock: Arc<dyn Clock>) -> Self {
        RaftNetwork {
            dialer,
            clock,
            reachability: Arc::new(Mutex::new(Reachability::new(DOWN_AFTER, SUMMARY_EVERY))),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection {
            target,
            clock: self.clock.clone(),
            reachability: self.reachability.clone(),
            addr: node.addr.clone(),
            client: self
                .dialer
                .channel(&node.addr)
                .map(failover_proto::wire::raft_client)
                .map_err(|e| e.to_string()),
            whole_snapshots: false,
        }
    }
}

/// The Raft RPC client to one peer.
pub struct PeerConnection {
    target: NodeId,
    clock: Arc<dyn Clock>,
    reachability: Arc<Mutex<Reachability>>,
    addr: String,
    client: Result<RaftServiceClient<Chan>, String>,
    /// The peer answered `StreamSnapshot` with UNIMPLEMENTED (a controller from before
    /// it): send it snapshots in one message.
    whole_snapshots: bool,
}

type RpcErr = RPCError<TypeConfig>;

impl PeerConnection {
    /// Runs one call and feeds its outcome to the log rule; passes the result through. A
    /// call dropped before it ends (openraft gives up on it after its own timeout, as it
    /// does with a frozen peer's heartbeats and votes) counts as failed.
    async fn observed<T, E: std::fmt::Display>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let mut pending = Pending {
            conn: self,
            settled: false,
        };
        let result = call.await;
        pending.settled = true;
        match &result {
            Ok(_) => self.note(None),
            Err(e) => self.note(Some(e.to_string())),
        }
        result
    }

    /// Feeds one call's outcome (`None`: it succeeded; else why it failed) to the rule.
    fn note(&self, error: Option<String>) {
        let now = self.clock.now();
        let note = {
            let Ok(mut rule) = self.reachability.lock() else {
                return;
            };
            match &error {
                None => rule.answered(self.target, now),
                Some(_) => rule.failed(self.target, now),
            }
        };
        if let Some(note) = note {
            log_note(note, &self.addr, error.as_deref());
        }
    }

    fn client(&self) -> Result<RaftServiceClient<Chan>, RpcErr> {
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

    /// One Raft RPC without snapshot bytes: `message` sent through `method` of a client,
    /// the reply decoded, and the outcome counted for the outage log.
    async fn unary<M, R, F, Fut>(
        &self,
        message: &M,
        option: &RPCOption,
        method: F,
    ) -> Result<R, RpcErr>
    where
        M: Serialize,
        R: DeserializeOwned,
        F: FnOnce(RaftServiceClient<Chan>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let request = self.request(message, Vec::new(), option)?;
        let call = async {
            let client = self.client()?;
            method(client, request)
                .await
                .map_err(|s| self.status_error(s))
        };
        let reply = self.observed(call).await?;
        self.decode(reply.into_inner())
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

/// A call under way: counted as failed if dropped before it ends.
struct Pending<'a> {
    conn: &'a PeerConnection,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.conn
                .note(Some("no answer before openraft's timeout".to_owned()));
        }
    }
}

/// The message an `InstallSnapshot` call carries beside the raw snapshot bytes, and the
/// first message of a `StreamSnapshot` call.
#[derive(Serialize, serde::Deserialize)]
pub struct SnapshotHeader {
    /// The sending leader's vote.
    pub vote: Vote,
    /// The snapshot's metadata.
    pub meta: SnapshotMeta,
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = crate::snapshot_data::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        self.unary(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.unary(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.unary(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
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

    /// Streams the snapshot in pieces read from the store on the blocking pool, a few
    /// ahead of the network ([`crate::snapshot_stream`]), so its size costs no memory on
    /// either side.
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
        if self.whole_snapshots {
            let data = read_whole(snapshot.snapshot).await?;
            let request = self.request(&header, data, &option)?;
            let call = async {
                let mut client = self.client()?;
                client
                    .install_snapshot(request)
                    .await
                    .map_err(|s| self.status_error(s))
            };
            let reply = self.observed(call).await?;
            return Ok(self.decode(reply.into_inner())?);
        }
        let first = self.request(&header, Vec::new(), &option)?.into_inner();
        let (rx, producer) = crate::snapshot_stream::messages(first.json, snapshot.snapshot);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.set_timeout(option.hard_ttl());
        let unimplemented = std::sync::atomic::AtomicBool::new(false);
        let call = async {
            let mut client = self.client()?;
            client.stream_snapshot(request).await.map_err(|s| {
                if s.code() == tonic::Code::Unimplemented {
                    unimplemented.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                self.status_error(s)
            })
        };
        let reply = self.observed(call).await;
        if unimplemented.into_inner() {
            // Sent whole from the next attempt on (openraft retries).
            self.whole_snapshots = true;
        }
        // A failed read ends the stream without its end marker, which the peer refuses;
        // the read error is the one worth reporting.
        read_result(producer.await)?;
        Ok(self.decode(reply?.into_inner())?)
    }
}

/// The whole snapshot in memory, for a peer that takes it in one message only.
async fn read_whole(
    data: crate::snapshot_data::SnapshotData,
) -> Result<Vec<u8>, StreamingError<TypeConfig>> {
    read_result(tokio::task::spawn_blocking(move || data.into_bytes()).await)
}

/// What a blocking read of the snapshot to send gave, a failed read (or a panicked
/// reader) as openraft's error.
fn read_result<T>(
    joined: Result<std::io::Result<T>, tokio::task::JoinError>,
) -> Result<T, StreamingError<TypeConfig>> {
    joined
        .map_err(std::io::Error::other)
        .and_then(|read| read)
        .map_err(|e| {
            StreamingError::Network(NetworkError::from_string(format!(
                "cannot read the snapshot to send: {e}"
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outage of one peer gives one line once calls failed for `down_after`, one
    /// summary per period while it lasts (counting the failures since the previous line),
    /// and one when it ends; another peer's outage is separate; a blip shorter than
    /// `down_after` and successes of a healthy peer say nothing.
    #[test]
    fn outage_collapses_to_down_summaries_and_up() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut rule = Reachability::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(rule.answered(3, at(0)), None);
        // A blip: failures for 999 ms, then an answer.
        for ms in (0..1_000).step_by(111) {
            assert_eq!(rule.failed(3, at(ms)), None, "at {ms}");
        }
        assert_eq!(rule.answered(3, at(1_000)), None);
        // An outage from 10 000, one failed call every 10 ms.
        assert_eq!(rule.failed(3, at(10_000)), None);
        let mut notes = Vec::new();
        for ms in (10_010..=41_000).step_by(10) {
            notes.extend(rule.failed(3, at(ms)));
        }
        assert_eq!(
            notes,
            vec![
                PeerNote::Down {
                    peer: 3,
                    failures: 101
                },
                PeerNote::StillDown {
                    peer: 3,
                    down_for: Duration::from_secs(31),
                    failures: 3000,
                },
            ]
        );
        assert_eq!(rule.failed(4, at(41_000)), None);
        assert_eq!(
            rule.failed(4, at(42_000)),
            Some(PeerNote::Down {
                peer: 4,
                failures: 2
            })
        );
        assert_eq!(rule.failed(3, at(70_999)), None);
        assert_eq!(
            rule.answered(3, at(71_000)),
            Some(PeerNote::Up {
                peer: 3,
                down_for: Duration::from_secs(61),
                failures: 3102,
            })
        );
        assert_eq!(rule.answered(3, at(71_010)), None);
        // A new outage starts over.
        assert_eq!(rule.failed(3, at(80_000)), None);
        assert_eq!(
            rule.failed(3, at(81_000)),
            Some(PeerNote::Down {
                peer: 3,
                failures: 2
            })
        );
    }
}

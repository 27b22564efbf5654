//! etcd's lease API: LeaseGrant for grants, the LeaseKeepAlive stream for renewals.

use std::time::{Duration, Instant};

use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::workload::Target;

/// The minimal etcd v3 protos of `proto/etcd.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, StatusRequest};

/// Time one status probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// An etcd cluster, reached at its leader.
pub struct Etcd {
    leader: String,
    ttl_secs: i64,
}

impl Etcd {
    /// Finds the member that is the Raft leader (its status names itself as leader), for at
    /// most `timeout`.
    pub async fn ready(
        endpoints: &[String],
        ttl_secs: i64,
        timeout: Duration,
    ) -> anyhow::Result<Etcd> {
        anyhow::ensure!(ttl_secs > 0, "--ttl-secs must be positive");
        let until = Instant::now() + timeout;
        let mut last_error = String::from("no endpoint");
        while Instant::now() < until {
            for addr in endpoints {
                match is_leader(addr).await {
                    Ok(true) => {
                        return Ok(Etcd {
                            leader: addr.clone(),
                            ttl_secs,
                        })
                    }
                    Ok(false) => {}
                    Err(e) => last_error = format!("{addr}: {e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("no etcd leader within {timeout:?}: {last_error}")
    }
}

/// Whether the member at `addr` is the leader.
async fn is_leader(addr: &str) -> anyhow::Result<bool> {
    let channel = crate::connect(addr).await?;
    let status = tokio::time::timeout(
        PROBE_TIMEOUT,
        MaintenanceClient::new(channel).status(StatusRequest {}),
    )
    .await
    .map_err(|_| anyhow::anyhow!("status timed out"))??
    .into_inner();
    let member = status.header.map_or(0, |h| h.member_id);
    Ok(status.leader != 0 && status.leader == member)
}

impl Target for Etcd {
    type Request = LeaseKeepAliveRequest;
    type Answer = LeaseKeepAliveResponse;

    fn system(&self) -> &'static str {
        "etcd"
    }

    fn leader(&self) -> &str {
        &self.leader
    }

    async fn grant(&self, channel: Channel, _instance: usize) -> Result<u64, String> {
        let request = LeaseGrantRequest {
            ttl: self.ttl_secs,
            id: 0,
        };
        let response = LeaseClient::new(channel)
            .lease_grant(request)
            .await
            .map_err(|status| status.to_string())?
            .into_inner();
        if !response.error.is_empty() {
            return Err(response.error);
        }
        u64::try_from(response.id)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| format!("bad lease id {}", response.id))
    }

    fn keepalive_request(&self, lease: u64, _seq: u64) -> LeaseKeepAliveRequest {
        LeaseKeepAliveRequest {
            id: i64::try_from(lease).unwrap_or(i64::MAX),
        }
    }

    fn key(lease: u64, _seq: u64) -> u64 {
        // etcd answers carry no sequence number; the workload never has two renewals of
        // one lease in flight, so the lease id identifies the request.
        lease
    }

    fn answer(answer: &LeaseKeepAliveResponse) -> (u64, Result<(), String>) {
        let outcome = if answer.ttl > 0 {
            Ok(())
        } else {
            Err(format!("lease {} not found or expired", answer.id))
        };
        (u64::try_from(answer.id).unwrap_or(0), outcome)
    }

    async fn open_keepalive(
        &self,
        channel: Channel,
        requests: ReceiverStream<LeaseKeepAliveRequest>,
    ) -> Result<tonic::Streaming<LeaseKeepAliveResponse>, tonic::Status> {
        Ok(LeaseClient::new(channel)
            .lease_keep_alive(requests)
            .await?
            .into_inner())
    }
}

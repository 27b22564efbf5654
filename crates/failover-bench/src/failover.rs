//! failover's lease API: Acquire for grants, the KeepAlive stream for renewals.

use std::time::{Duration, Instant};

use failover_proto::lease::{
    acquire_response, keep_alive_response, AcquireRequest, KeepAliveRequest, KeepAliveResponse,
    WatchRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

use crate::workload::Target;

/// Metadata key a non-leader sets to the leader's address.
/// Time one probe of a controller may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A failover cluster, reached at its leader.
pub struct Failover {
    leader: String,
    group: String,
    site: String,
}

impl Failover {
    /// Finds the leader (following `x-failover-leader`) and waits until `group` is active
    /// at `site`, for at most `timeout`.
    pub async fn ready(
        endpoints: &[String],
        group: String,
        site: String,
        timeout: Duration,
    ) -> anyhow::Result<Failover> {
        let until = Instant::now() + timeout;
        let mut last_error = String::from("no endpoint");
        let mut next = 0;
        let mut hint: Option<String> = None;
        while Instant::now() < until {
            let addr = hint
                .take()
                .unwrap_or_else(|| endpoints[next % endpoints.len()].clone());
            next += 1;
            match probe(&addr, &group, &site).await {
                Probe::Ready => {
                    return Ok(Failover {
                        leader: addr,
                        group,
                        site,
                    })
                }
                Probe::NotLeader(leader) => hint = leader,
                Probe::NotYet(why) => last_error = format!("{addr}: {why}"),
            }
            if hint.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        anyhow::bail!("no failover leader ready within {timeout:?}: {last_error}")
    }
}

/// What a probe of one controller found.
enum Probe {
    /// The leader, with the group active at the site.
    Ready,
    /// Not the leader; the leader if it named one.
    NotLeader(Option<String>),
    /// Not reachable, or the group is not ready yet.
    NotYet(String),
}

/// Asks `addr` whether it leads, then whether the group is active at `site`.
///
/// The leadership question is a KeepAlive stream opened with no renewal in it: only the
/// leader accepts the stream, any other controller refuses it with UNAVAILABLE and the
/// leader's address in `x-failover-leader`. Nothing is granted or renewed.
async fn probe(addr: &str, group: &str, site: &str) -> Probe {
    let channel = match crate::connect(addr).await {
        Ok(channel) => channel,
        Err(e) => return Probe::NotYet(format!("{e:#}")),
    };
    let mut client = lease_client(channel);
    let no_renewals = tokio_stream::empty::<KeepAliveRequest>();
    match tokio::time::timeout(PROBE_TIMEOUT, client.keep_alive(no_renewals)).await {
        Err(_) => return Probe::NotYet("keepalive probe timed out".into()),
        Ok(Ok(_)) => {}
        Ok(Err(status)) if status.code() == Code::Unavailable => {
            return Probe::NotLeader(failover_proto::wire::leader_named(&status));
        }
        Ok(Err(status)) => return Probe::NotYet(status.to_string()),
    }
    let watch = WatchRequest {
        group: group.to_owned(),
        site: site.to_owned(),
    };
    let first_event = async {
        let mut events = client.watch(watch).await?.into_inner();
        events.message().await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, first_event).await {
        Ok(Ok(Some(event))) if event.active_site == site && event.promoting_to.is_empty() => {
            Probe::Ready
        }
        Ok(Ok(Some(event))) => Probe::NotYet(format!("group state {event:?}")),
        Ok(Ok(None)) => Probe::NotYet("watch ended at once".into()),
        Ok(Err(status)) => Probe::NotYet(status.to_string()),
        Err(_) => Probe::NotYet("watch timed out".into()),
    }
}

impl Target for Failover {
    type Request = KeepAliveRequest;
    type Answer = KeepAliveResponse;

    fn system(&self) -> &'static str {
        "failover"
    }

    fn leader(&self) -> &str {
        &self.leader
    }

    async fn grant(&self, channel: Channel, instance: usize) -> Result<u64, String> {
        let request = AcquireRequest {
            group: self.group.clone(),
            site: self.site.clone(),
            instance: format!("bench-{instance}"),
            ready: false,
        };
        let response = lease_client(channel)
            .acquire(request)
            .await
            .map_err(|status| status.to_string())?;
        match response.into_inner().result {
            Some(acquire_response::Result::Granted(grant)) => Ok(grant.lease_id),
            Some(acquire_response::Result::Standby(standby)) => {
                Err(format!("standby: {standby:?}"))
            }
            None => Err("empty acquire answer".into()),
        }
    }

    fn keepalive_request(&self, lease: u64, seq: u64) -> KeepAliveRequest {
        KeepAliveRequest {
            group: self.group.clone(),
            lease_id: lease,
            seq,
        }
    }

    fn key(_lease: u64, seq: u64) -> u64 {
        seq
    }

    fn answer(answer: &KeepAliveResponse) -> (u64, Result<(), String>) {
        let outcome = match &answer.result {
            Some(keep_alive_response::Result::Renewed(_)) => Ok(()),
            Some(keep_alive_response::Result::Refused(refused)) => Err(format!(
                "{}: {}",
                failover_proto::wire::refusal_name(refused.reason()),
                refused.message
            )),
            None => Err("empty keepalive answer".into()),
        };
        (answer.seq, outcome)
    }

    async fn open_keepalive(
        &self,
        channel: Channel,
        requests: ReceiverStream<KeepAliveRequest>,
    ) -> Result<tonic::Streaming<KeepAliveResponse>, tonic::Status> {
        Ok(lease_client(channel)
            .keep_alive(requests)
            .await?
            .into_inner())
    }
}

/// A lease client as every client of failover makes one: through the channel that
/// carries the cluster id (learned from the first answer) on every call.
fn lease_client(
    channel: Channel,
) -> failover_proto::lease::lease_service_client::LeaseServiceClient<failover_proto::wire::Chan> {
    use failover_proto::pin::{ClusterPin, PinnedChannel};
    failover_proto::wire::lease_client(PinnedChannel::new(channel, ClusterPin::learning(), "bench"))
}

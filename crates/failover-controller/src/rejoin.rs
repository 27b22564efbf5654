//! What a controller does when its data directory is empty: form the cluster (a first
//! start), or refuse, because the cluster already exists and this controller may have
//! lost the Raft state it promised to keep.
//!
//! Raft's safety rests on every voter remembering two things across restarts: the vote it
//! cast in its current term, and the log entries it acknowledged. A controller whose disk
//! was replaced remembers neither. With an empty log it grants its vote to any candidate,
//! also to one that lacks entries this controller helped commit, and with a forgotten vote
//! it may vote twice in one term. Either can elect a leader without a committed change (a
//! promotion, a lease grant) and break S1. So a controller on an empty data directory asks
//! its peers first, and refuses to start when they report an existing cluster, unless the
//! operator says, with `--join-existing`, that it should join that cluster as an empty
//! follower (docs/runbook.md, "Replacing a controller whose disk is gone"). Joining never
//! proposes a membership: the node waits for the leader to send it the log or a snapshot.
//!
//! "Existing" must not include a cluster that is forming right now: controllers started
//! together on empty data dirs see each other's first election within milliseconds. A
//! peer reports an existing cluster when its state holds groups (so a leader has
//! committed them) and the history shows a group created more than [`FORMATION_WINDOW`]
//! ago: the leader's history, or, when no leader answers (the cluster may have lost its
//! quorum, quite possibly because this controller is missing; or its new leader is slow
//! to confirm it), the peer's own; a peer whose history cannot be read at all counts as
//! an existing cluster. What this cannot tell: a disk lost within
//! [`FORMATION_WINDOW`] of the cluster's creation, and a topology without groups. The window
//! is short because a false refusal costs little (the message names `--join-existing`).

use std::sync::Arc;
use std::time::Duration;

use failover_core::{NodeId, Topology};
use failover_net::Dialer;
use failover_proto::admin::admin_service_client::AdminServiceClient;
use failover_proto::admin::{AllowRejoinRequest, HistoryRequest, StatusRequest};
use failover_proto::wire::Chan;
use tokio::time::Instant;

/// How long one peer may take to answer one call, and how long a peer is asked again
/// while it answers without a leader confirmed by a quorum (an election may be under
/// way). A leader that cannot confirm its quorum answers a status only after its 2 s read
/// timeout, so this is longer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause between two questions to a peer that answered without a confirmed leader, or
/// failed in a way that may pass (the leader changed under the call).
const PROBE_PAUSE: Duration = Duration::from_millis(100);

/// How old a group must be for its cluster to count as formed before this start, rather
/// than forming together with it.
pub const FORMATION_WINDOW: Duration = Duration::from_secs(15);

/// A peer that reports a cluster formed before this controller started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCluster {
    /// The controller that answered.
    pub peer: NodeId,
    /// Its Raft term.
    pub term: u64,
    /// What shows the cluster existed before, in words for the operator.
    pub evidence: String,
}

/// Asks every other controller of the topology, in parallel, whether the cluster already
/// existed before this start (see the module doc); the first that says so, or `None` when
/// none does or none answers. Each peer is asked at its topology address, over a channel
/// from `dialer`. `now_unix_ms` is the wall clock, compared with the history's creation
/// times.
pub async fn probe_existing_cluster(
    topology: &Topology,
    me: NodeId,
    dialer: Arc<dyn Dialer>,
    now_unix_ms: u64,
) -> Option<ExistingCluster> {
    let probes = topology
        .controllers()
        .filter(|(_, c)| c.id != me)
        .filter_map(|(_, c)| {
            let channel = dialer.channel(&c.addr).ok()?;
            Some(probe_peer(
                failover_proto::wire::admin_client(channel),
                c.id,
                now_unix_ms,
            ))
        });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .next()
}

/// Whether a failed call may succeed when asked again: the peer is there but its leader
/// changed or is being elected.
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// One peer's view of the cluster: its status as soon as a quorum confirms it, or, when
/// none confirms it within [`PROBE_TIMEOUT`], the last unconfirmed answer (flagged by
/// `consistent: false`). `None` when the peer does not answer at all.
async fn peer_status(
    client: &mut AdminServiceClient<Chan>,
) -> Option<failover_proto::admin::StatusResponse> {
    let end = Instant::now() + PROBE_TIMEOUT;
    let mut last = None;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.status(StatusRequest {})).await {
            Ok(Ok(answer)) => {
                let status = answer.into_inner();
                if status.consistent && status.leader != 0 {
                    return Some(status);
                }
                last = Some(status);
            }
            Ok(Err(_)) if last.is_none() => return None,
            Ok(Err(_)) | Err(_) => return last,
        }
        if Instant::now() + PROBE_PAUSE >= end {
            return last;
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// The whole history as the peer's leader has it (the peer forwards the call), or with
/// `stale` as the peer itself has it (no leader needed), asked again while the failure
/// may pass, for at most [`PROBE_TIMEOUT`].
async fn peer_history(
    client: &mut AdminServiceClient<Chan>,
    stale: bool,
) -> Option<failover_proto::admin::HistoryResponse> {
    let end = Instant::now() + PROBE_TIMEOUT;
    loop {
        let request = HistoryRequest {
            group: String::new(),
            allow_stale: stale,
            limit: 0,
            before_unix_ms: 0,
        };
        match tokio::time::timeout(PROBE_TIMEOUT, client.history(request)).await {
            Ok(Ok(answer)) => return Some(answer.into_inner()),
            Ok(Err(status)) if is_transient(&status) && Instant::now() + PROBE_PAUSE < end => {
                tokio::time::sleep(PROBE_PAUSE).await;
            }
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

async fn probe_peer(
    mut client: AdminServiceClient<Chan>,
    peer: NodeId,
    now_unix_ms: u64,
) -> Option<ExistingCluster> {
    let status = peer_status(&mut client).await?;
    if status.term == 0 || status.groups.is_empty() {
        return None;
    }
    let existing = |evidence: String| ExistingCluster {
        peer,
        term: status.term,
        evidence,
    };
    let confirmed = if status.consistent && status.leader != 0 {
        peer_history(&mut client, false).await
    } else {
        None
    };
    if let Some(history) = confirmed {
        return formed_before(oldest_change(&history), now_unix_ms, Led::Yes).map(existing);
    }
    // No leader answers: the cluster may have lost its quorum (quite possibly because
    // this controller is missing), or it is forming and its new leader has not yet
    // confirmed its quorum (a busy machine takes seconds). The peer's own state tells
    // the two apart by the age of its groups: what it holds is committed.
    let own = peer_history(&mut client, true).await;
    let groups = status.groups.len();
    formed_before(
        own.as_ref().and_then(oldest_change),
        now_unix_ms,
        Led::No { groups },
    )
    .map(existing)
}

/// Whether the history a peer answered came from a leader confirmed by its quorum.
#[derive(Debug, Clone, Copy)]
enum Led {
    Yes,
    /// No leader answered; the peer's own state holds `groups` groups.
    No {
        groups: usize,
    },
}

/// Why a history whose oldest change was requested at `oldest` (unix ms) shows a
/// cluster formed before this start (older than [`FORMATION_WINDOW`] at `now_unix_ms`),
/// in words for the operator; `None` when it is younger. Without a timed change (none
/// in the history, or a history that could not be read), nothing is shown when a leader
/// answered, and an existing cluster cannot be ruled out when none did.
fn formed_before(oldest: Option<u64>, now_unix_ms: u64, led: Led) -> Option<String> {
    let Some(oldest) = oldest else {
        return match led {
            Led::Yes => None,
            Led::No { groups } => Some(format!(
                "its state holds {groups} group(s) but no leader answers"
            )),
        };
    };
    let age_ms = now_unix_ms.saturating_sub(oldest);
    if age_ms <= FORMATION_WINDOW.as_millis() as u64 {
        return None;
    }
    let age_s = age_ms / 1000;
    Some(match led {
        Led::Yes => format!("its history starts {age_s} s ago, before this controller started"),
        Led::No { groups } => format!(
            "its state holds {groups} group(s), the oldest created {age_s} s ago, but no leader answers"
        ),
    })
}

/// When the oldest change of a history was requested (0, unknown, is left out).
fn oldest_change(history: &failover_proto::admin::HistoryResponse) -> Option<u64> {
    history
        .entries
        .iter()
        .map(|e| e.requested_at_unix_ms)
        .filter(|&at| at > 0)
        .min()
}

/// How long a joining controller keeps asking for the leader's [`allow_rejoin`].
const ALLOW_REJOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the leader (through any peer) to replicate to `me` from the start. A leader that
/// had replicated to this controller before its disk was lost sees its log go back, which
/// openraft treats as a broken follower (its Raft core stops) unless told first. Returns
/// the leader that agreed, or `None` when no leader answered within
/// [`ALLOW_REJOIN_TIMEOUT`]: then no leader holds a replication record of this controller
/// either (a leader elected later starts without one), and joining is still safe for
/// the leader.
pub async fn allow_rejoin(topology: &Topology, me: NodeId, dialer: &dyn Dialer) -> Option<NodeId> {
    let deadline = tokio::time::Instant::now() + ALLOW_REJOIN_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        for (_, peer) in topology.controllers().filter(|(_, c)| c.id != me) {
            let Ok(channel) = dialer.channel(&peer.addr) else {
                continue;
            };
            let mut client = failover_proto::wire::admin_client(channel);
            let request = client.allow_rejoin(AllowRejoinRequest { node_id: me });
            if let Ok(Ok(answer)) = tokio::time::timeout(PROBE_TIMEOUT, request).await {
                return Some(answer.into_inner().leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_proto::admin::{HistoryEntry, HistoryResponse};

    /// A history whose changes were requested at `times` (unix ms).
    fn history(times: &[u64]) -> HistoryResponse {
        HistoryResponse {
            entries: times
                .iter()
                .map(|&at| HistoryEntry {
                    requested_at_unix_ms: at,
                    ..Default::default()
                })
                .collect(),
        }
    }

    const NOW: u64 = 1_000_000;

    /// A cluster younger than the formation window is forming, whether or not its leader
    /// has confirmed its quorum yet (a new leader on a busy machine takes seconds): a
    /// controller of the topology that starts late joins it instead of refusing.
    #[test]
    fn a_forming_cluster_is_not_an_existing_one_with_or_without_a_leader() {
        let young = history(&[NOW - 5_000, NOW - 1_000]);
        assert_eq!(formed_before(oldest_change(&young), NOW, Led::Yes), None);
        assert_eq!(
            formed_before(oldest_change(&young), NOW, Led::No { groups: 1 }),
            None
        );
    }

    #[test]
    fn an_older_cluster_is_an_existing_one_with_or_without_a_leader() {
        let old = history(&[NOW - 1_000, NOW - 60_000]);
        let led = formed_before(oldest_change(&old), NOW, Led::Yes).expect("existing");
        assert!(led.contains("starts 60 s ago"), "{led}");
        let alone =
            formed_before(oldest_change(&old), NOW, Led::No { groups: 2 }).expect("existing");
        assert!(
            alone.contains("2 group(s), the oldest created 60 s ago, but no leader answers"),
            "{alone}"
        );
    }

    /// Without a timed change, only a leader's answer rules an existing cluster out.
    #[test]
    fn a_history_without_times_rules_out_nothing_without_a_leader() {
        let untimed = history(&[0]);
        assert_eq!(formed_before(oldest_change(&untimed), NOW, Led::Yes), None);
        let alone =
            formed_before(oldest_change(&untimed), NOW, Led::No { groups: 1 }).expect("existing");
        assert!(alone.contains("no leader answers"), "{alone}");
    }
}

//! The lease API: acquire, keep alive, release, watch.
//!
//! Only the leader grants, renews and releases; another controller answers `UNAVAILABLE`
//! with the leader's address in `x-failover-leader`. Validation happens before anything
//! is proposed, so bad input never reaches the log.
//!
//! One exception: a follower asked to relay a keepalive stream (`x-failover-relay`) opens
//! it on the leader over its peer channel, on behalf of the engine, and passes renewals
//! and answers through ([`route_keepalive`], docs/leases.md, "Relayed renewals").

use std::pin::Pin;
use std::sync::Arc;

use failover_core::lease::Renewed;
use failover_core::NodeId;
use failover_core::{
    Command, Epoch, FencingToken, FencingValue, GroupName, GroupState, LeaseId, Outcome, Rejection,
    SiteId,
};
use failover_proto::lease::lease_service_server::LeaseService;
use failover_proto::lease::{
    acquire_response, keep_alive_response, AcquireRequest, AcquireResponse, Grant, GroupEvent,
    KeepAliveRequest, KeepAliveResponse, Refused, ReleaseRequest, ReleaseResponse, Standby,
    WatchRequest,
};
use failover_proto::types::RefusalReason;
use failover_proto::wire::{self, FORWARDED_HEADER, LEADER_HEADER, RELAY_HEADER};
use futures::stream::FuturesUnordered;
use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::admin::rejection_status;
use super::{propose, NodeContext, ProposeError};
use crate::leases::{Renewal, RenewalError};
use crate::limits::{GuardedStream, StreamKind, Verdict};

/// Most keepalive answers buffered per stream; when the client leaves them untaken for
/// `limits.stall_timeout_ms`, the stream is closed (docs/security.md, "Limits and slow
/// clients").
const STREAM_BUFFER: usize = 4096;
/// Most renewals of one keepalive stream waiting for the batcher's answer at once.
pub const MAX_RENEWALS_IN_FLIGHT: usize = 4096;

/// What a controller does with a keepalive stream it is asked to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRoute {
    /// It leads: it serves the stream itself.
    Serve,
    /// A follower asked to relay: it opens the stream on `leader` (at `addr`) and passes
    /// renewals and answers through.
    Relay {
        /// The leader this follower knows of.
        leader: NodeId,
        /// Its address.
        addr: String,
    },
    /// Not the leader, and no relay asked for or possible: `UNAVAILABLE` with the
    /// leader's address, so the client goes there.
    Refuse,
}

/// Decides where a keepalive stream goes. Only the leader serves; a follower relays only
/// a stream whose client asked for it (`relay_asked`: the client could not reach the
/// leader itself, so the direct path keeps its single hop), never one another controller
/// already forwarded (`forwarded`: at most one relay, no loops between controllers that
/// disagree about the leader), and only to a leader other than itself.
pub fn route_keepalive(
    own: NodeId,
    is_leader: bool,
    relay_asked: bool,
    forwarded: bool,
    leader: Option<(NodeId, String)>,
) -> StreamRoute {
    if is_leader {
        return StreamRoute::Serve;
    }
    match leader {
        Some((leader, addr)) if relay_asked && !forwarded && leader != own => {
            StreamRoute::Relay { leader, addr }
        }
        _ => StreamRoute::Refuse,
    }
}

/// Serves the lease API.
pub struct LeaseServer {
    ctx: Arc<NodeContext>,
}

impl LeaseServer {
    /// A server over the controller's shared context.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        LeaseServer { ctx }
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.ctx.raft.is_leader() {
            return Ok(());
        }
        Err(not_leader(&self.ctx))
    }

    /// Refuses an engine that names a lease of a site it is not bound to (the lease id
    /// alone is no proof of ownership). A lease the state does not know passes: the
    /// state machine refuses it with its usual answer.
    fn require_lease_site(&self, group: &GroupName, lease: LeaseId) -> Result<(), Status> {
        lease_site_check(&self.ctx, crate::auth::caller().as_ref(), group, lease)
    }

    /// Checks that `site` is a site of the topology and of the group, then runs `f` on
    /// the group under the state's read lock. The group is never copied: with thousands
    /// of leases a copy per request would cost more than the grant.
    fn with_group<T>(
        &self,
        group: &GroupName,
        site: &SiteId,
        f: impl FnOnce(&GroupState) -> T,
    ) -> Result<T, Status> {
        crate::auth::require_site(site.as_str())?;
        if self.ctx.topology.site(site.as_str()).is_none() {
            return Err(Status::not_found(format!("unknown site `{site}`")));
        }
        let state = self.ctx.view.read();
        let g = state.group(group).map_err(|r| rejection_status(&r))?;
        g.check_site(site).map_err(|r| rejection_status(&r))?;
        Ok(f(g))
    }
}

/// The site check of a keepalive or release: `caller` (an engine) must be bound to the
/// site of `lease` in `group`.
fn lease_site_check(
    ctx: &NodeContext,
    caller: Option<&crate::auth::Identity>,
    group: &GroupName,
    lease: LeaseId,
) -> Result<(), Status> {
    let Some(caller) = caller else {
        return Ok(());
    };
    let site = {
        let state = ctx.view.read();
        state
            .group(group)
            .ok()
            .and_then(|g| g.leases.get(&lease))
            .map(|l| l.site.clone())
    };
    match site {
        Some(site) => crate::auth::require_site_of(caller, site.as_str()).map_err(|why| {
            Status::permission_denied(format!("lease {} of group {group}: {why}", lease.0))
        }),
        None => Ok(()),
    }
}

/// `UNAVAILABLE` with the leader's address when one is known.
pub fn not_leader(ctx: &NodeContext) -> Status {
    let mut status = Status::unavailable(format!("controller {} is not the leader", ctx.node_id));
    if let Some((_, addr)) = ctx.leader() {
        if let Ok(value) = addr.parse() {
            status.metadata_mut().insert(LEADER_HEADER, value);
        }
    }
    status
}

fn grant_message(ctx: &NodeContext, lease: LeaseId, epoch: Epoch, token: FencingToken) -> Grant {
    Grant {
        lease_id: lease.0,
        ttl_ms: ctx.topology.timing.lease_ttl_ms,
        epoch: epoch.0,
        fencing_token: token.0,
        keepalive_interval_ms: ctx.topology.timing.keepalive_interval_ms,
        fencing_value: FencingValue::from(epoch).0,
        max_clock_drift_ms: ctx.topology.timing.max_clock_drift_ms,
        // Config load refuses timing whose margin is not positive.
        ride_out_margin_ms: u64::try_from(ctx.topology.timing.ride_out_margin_ms()).unwrap_or(0),
    }
}

fn standby(rejection: &Rejection) -> Option<Standby> {
    match rejection {
        Rejection::Standby {
            active_site,
            epoch,
            demoting,
            ..
        } => Some(Standby {
            active_site: wire::site_to_wire(active_site.as_ref()),
            epoch: epoch.0,
            demoting: *demoting,
        }),
        _ => None,
    }
}

fn refused(error: &RenewalError) -> Refused {
    let reason = match error {
        RenewalError::Refused(refusal) => RefusalReason::from(refusal),
        RenewalError::NotLeader(_) => RefusalReason::NotLeader,
        RenewalError::Overloaded => RefusalReason::Overloaded,
    };
    Refused {
        reason: reason.into(),
        message: error.to_string(),
    }
}

/// One keepalive stream's task: submits each renewal to the batcher and sends the answers
/// back in the order they come. At most [`MAX_RENEWALS_IN_FLIGHT`] renewals of the stream
/// wait for an answer; beyond that it reads no more requests until one is answered (the
/// client's sends back up), so one task and a bounded set of waiting answers serve a
/// stream, however fast it sends. Ends when the client closes its side and every answer
/// went out, when the client goes away, or when an answer finds no room for
/// `limits.stall_timeout_ms` (the client does not read): then `verdict` ends the stream.
async fn serve_keepalives(
    ctx: Arc<NodeContext>,
    caller: Option<crate::auth::Identity>,
    mut incoming: Streaming<KeepAliveRequest>,
    answers: mpsc::Sender<Result<KeepAliveResponse, Status>>,
    verdict: Verdict,
    who: String,
) {
    let stall = ctx.limits.stall_timeout();
    let mut waiting = FuturesUnordered::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            next = incoming.next(), if open && waiting.len() < MAX_RENEWALS_IN_FLIGHT => {
                match next {
                    Some(Ok(req)) => match wire::KeepAlive::try_from(&req) {
                        Ok(keepalive) => {
                            let group = GroupName(req.group.clone());
                            if let Err(denied) =
                                lease_site_check(&ctx, caller.as_ref(), &group, keepalive.lease)
                            {
                                // As for malformed renewals: the stream ends with the
                                // refusal, and the lease is not renewed.
                                tracing::warn!(error = %denied.message(), "keepalive refused");
                                let _ = answers.send(Err(denied)).await;
                                return;
                            }
                            waiting.push(renew(&ctx, req, keepalive.lease))
                        }
                        Err(e) => {
                            // The stream ends with the error: a peer that sends malformed
                            // renewals is not one to keep answering.
                            let _ = answers.send(Err(Status::from(e))).await;
                            return;
                        }
                    },
                    _ => open = false,
                }
            }
            Some(answer) = waiting.next() => {
                match tokio::time::timeout(stall, answers.send(Ok(answer))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        ctx.limits.close_stalled(&verdict, &who, StreamKind::KeepAlive);
                        return;
                    }
                }
            }
        }
    }
}

/// Opens a keepalive stream on the leader for an engine that asked this follower to relay
/// it, and starts passing renewals and answers through. The stream on the leader carries
/// the engine's identity (`x-failover-on-behalf-of`), so the leader applies its role and
/// site checks and its per-identity limits to the engine, not to this controller, and
/// `x-failover-forwarded`, so a leader that was just deposed refuses it instead of
/// relaying again. Refused (`UNAVAILABLE`) when the leader does not accept the stream
/// within one keepalive interval: the client then tries the other controllers.
async fn relay_keepalive(
    ctx: Arc<NodeContext>,
    request: Request<Streaming<KeepAliveRequest>>,
    leader: NodeId,
    addr: String,
) -> Result<Response<EventStream<KeepAliveResponse>>, Status> {
    let who = crate::auth::limit_key();
    let permit = ctx
        .limits
        .open_stream(&who, StreamKind::KeepAlive, ctx.clock.now())?;
    let cannot = |why: String| {
        let mut status = Status::unavailable(format!(
            "controller {} cannot relay to the leader {leader}: {why}",
            ctx.node_id
        ));
        if let Ok(value) = addr.parse() {
            status.metadata_mut().insert(LEADER_HEADER, value);
        }
        status
    };
    let channel = ctx
        .dialer
        .channel(&addr)
        .map_err(|e| cannot(e.to_string()))?;
    let mut client = wire::lease_client(channel);
    let (upstream, outgoing) = mpsc::channel::<KeepAliveRequest>(RELAY_BUFFER);
    let mut call = Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    call.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    crate::auth::forward_caller(&mut call);
    let within = std::time::Duration::from_millis(ctx.topology.timing.keepalive_interval_ms);
    let from_leader = match tokio::time::timeout(within, client.keep_alive(call)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Err(cannot(status.message().to_owned())),
        Err(_) => return Err(cannot(format!("no answer within {within:?}"))),
    };
    // Rare (a holder cut from the leader): worth a line.
    tracing::info!(leader, "relaying a keepalive stream");
    let (answers, stream) = mpsc::channel(STREAM_BUFFER);
    let verdict = Verdict::default();
    let caller = crate::auth::caller();
    crate::runtime::spawn(pass_keepalives(
        ctx,
        Relayed {
            leader,
            caller,
            incoming: request.into_inner(),
            upstream,
            from_leader,
        },
        answers,
        verdict.clone(),
        who,
    ));
    Ok(Response::new(Box::pin(GuardedStream::new(
        stream, verdict, permit,
    ))))
}

/// Most renewals of a relayed stream waiting to go out to the leader.
const RELAY_BUFFER: usize = 64;

/// The two halves of a relayed keepalive stream.
struct Relayed {
    /// The leader the stream is open on.
    leader: NodeId,
    /// The engine, for the site check of each renewal.
    caller: Option<crate::auth::Identity>,
    /// Renewals from the engine.
    incoming: Streaming<KeepAliveRequest>,
    /// Renewals to the leader.
    upstream: mpsc::Sender<KeepAliveRequest>,
    /// Answers from the leader.
    from_leader: Streaming<KeepAliveResponse>,
}

/// Passes a relayed stream through: each renewal is checked as the leader would (bad
/// input and a lease of another site end the stream with the error) and sent on; each
/// answer goes back unchanged (the engine counts its lease from its own send time, so the
/// extra hop only shortens what it believes). Ends the engine's stream when the engine
/// closes its side, when the leader's stream ends or fails (its status is passed on),
/// when this controller sees another leader (or none), or when the engine does not read
/// its answers for `limits.stall_timeout_ms`. The client then reconnects.
async fn pass_keepalives(
    ctx: Arc<NodeContext>,
    relayed: Relayed,
    answers: mpsc::Sender<Result<KeepAliveResponse, Status>>,
    verdict: Verdict,
    who: String,
) {
    let Relayed {
        leader,
        caller,
        mut incoming,
        upstream,
        mut from_leader,
    } = relayed;
    let stall = ctx.limits.stall_timeout();
    let mut metrics = ctx.raft.metrics();
    loop {
        if metrics.borrow_watched().current_leader != Some(leader) {
            let _ = answers
                .send(Err(Status::unavailable(format!(
                    "controller {} no longer follows the leader {leader}; reconnect",
                    ctx.node_id
                ))))
                .await;
            return;
        }
        tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(req)) => {
                    let checked = wire::KeepAlive::try_from(&req).map_err(Status::from).and_then(|k| {
                        lease_site_check(&ctx, caller.as_ref(), &GroupName(req.group.clone()), k.lease)
                    });
                    if let Err(refused) = checked {
                        tracing::warn!(error = %refused.message(), "relayed keepalive refused");
                        let _ = answers.send(Err(refused)).await;
                        return;
                    }
                    if upstream.send(req).await.is_err() {
                        return;
                    }
                }
                // The engine closed its side or went away: so does the stream on the
                // leader (dropping `upstream` ends it).
                _ => return,
            },
            answer = from_leader.message() => {
                let answer = match answer {
                    Ok(Some(answer)) => Ok(answer),
                    Ok(None) => Err(Status::unavailable(format!(
                        "the leader {leader} ended the relayed stream; reconnect"
                    ))),
                    Err(status) => Err(status),
                };
                let last = answer.is_err();
                match tokio::time::timeout(stall, answers.send(answer)).await {
                    Ok(Ok(())) if !last => {}
                    Ok(_) => return,
                    Err(_) => {
                        ctx.limits.close_stalled(&verdict, &who, StreamKind::KeepAlive);
                        return;
                    }
                }
            }
            changed = metrics.changed() => if changed.is_err() { return },
            () = answers.closed() => return,
        }
    }
}

/// Submits one renewal and waits for its answer.
fn renew(
    ctx: &Arc<NodeContext>,
    req: KeepAliveRequest,
    lease: LeaseId,
) -> impl std::future::Future<Output = KeepAliveResponse> {
    let received_at = ctx.clock.now();
    let (reply, answer) = oneshot::channel();
    ctx.leases.submit(Renewal {
        group: GroupName(req.group.clone()),
        lease,
        received_at,
        reply,
    });
    let ctx = ctx.clone();
    async move {
        let result = match answer.await {
            Ok(Ok(Renewed {
                lease,
                epoch,
                token,
                site,
                ..
            })) => {
                ctx.leases
                    .engines()
                    .on_renewed(&GroupName(req.group.clone()), &site, received_at);
                keep_alive_response::Result::Renewed(grant_message(&ctx, lease, epoch, token))
            }
            Ok(Err(e)) => keep_alive_response::Result::Refused(refused(&e)),
            Err(_) => keep_alive_response::Result::Refused(refused(&RenewalError::NotLeader(
                "controller stopping".into(),
            ))),
        };
        KeepAliveResponse {
            lease_id: req.lease_id,
            seq: req.seq,
            result: Some(result),
        }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl LeaseService for LeaseServer {
    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        let received_at = self.ctx.clock.now();
        // Over its rate, a caller is refused before anything is read or proposed.
        self.ctx
            .limits
            .check_acquire(&crate::auth::limit_key(), received_at)?;
        let req = wire::Acquire::try_from(&request.into_inner())?;
        let site = req.site.clone();
        // Bad input gets the same answer from every controller; then only the leader grants.
        let check = self.with_group(&req.group, &site, |g| g.check_grant(&site))?;
        self.require_leader()?;
        // Any acquire is news that the site's engine is alive; a standby's `ready` makes
        // the site a failover candidate (the detector reads this).
        self.ctx.leases.engines().on_acquire(
            &req.group,
            &site,
            &req.instance,
            received_at,
            req.ready,
        );
        // Answer standby without a Raft write: standby holders poll.
        if let Err(rejection) = check {
            return match standby(&rejection) {
                Some(s) => Ok(Response::new(AcquireResponse {
                    result: Some(acquire_response::Result::Standby(s)),
                })),
                None => Err(rejection_status(&rejection)),
            };
        }
        let command = Command::Grant {
            group: req.group,
            site,
            holder: req.instance,
            ttl_ms: self.ctx.topology.timing.lease_ttl_ms,
        };
        let result = match propose(&self.ctx, command).await {
            Ok(Outcome::Granted(lease)) => {
                self.ctx
                    .leases
                    .with_leader(|l| l.on_granted(lease.id, received_at));
                acquire_response::Result::Granted(grant_message(
                    &self.ctx,
                    lease.id,
                    lease.epoch,
                    lease.token,
                ))
            }
            Ok(other) => return Err(Status::internal(format!("grant answered {other:?}"))),
            Err(ProposeError::Rejected(rejection)) => match standby(&rejection) {
                Some(s) => acquire_response::Result::Standby(s),
                None => return Err(rejection_status(&rejection)),
            },
            Err(ProposeError::Status(status)) => return Err(status),
        };
        Ok(Response::new(AcquireResponse {
            result: Some(result),
        }))
    }

    type KeepAliveStream = EventStream<KeepAliveResponse>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let route = route_keepalive(
            self.ctx.node_id,
            self.ctx.raft.is_leader(),
            request.metadata().contains_key(RELAY_HEADER),
            request.metadata().contains_key(FORWARDED_HEADER),
            self.ctx.leader(),
        );
        match route {
            StreamRoute::Serve => {}
            StreamRoute::Refuse => return Err(not_leader(&self.ctx)),
            StreamRoute::Relay { leader, addr } => {
                return relay_keepalive(self.ctx.clone(), request, leader, addr).await
            }
        }
        let who = crate::auth::limit_key();
        let permit =
            self.ctx
                .limits
                .open_stream(&who, StreamKind::KeepAlive, self.ctx.clock.now())?;
        let incoming = request.into_inner();
        let (answers, stream) = mpsc::channel(STREAM_BUFFER);
        let verdict = Verdict::default();
        // The stream is served by its own task, outside the call's scope: it takes the
        // caller along for the site check of each renewal.
        let caller = crate::auth::caller();
        crate::runtime::spawn(serve_keepalives(
            self.ctx.clone(),
            caller,
            incoming,
            answers,
            verdict.clone(),
            who,
        ));
        Ok(Response::new(Box::pin(GuardedStream::new(
            stream, verdict, permit,
        ))))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let req = wire::Release::try_from(&request.into_inner())?;
        let lease = req.lease;
        // Like bad input, a lease of another site gets the same answer everywhere.
        self.require_lease_site(&req.group, lease)?;
        self.require_leader()?;
        let command = Command::Release {
            group: req.group,
            lease,
        };
        match propose(&self.ctx, command).await {
            Ok(_) => {
                self.ctx.leases.with_leader(|l| l.on_released(lease));
                self.ctx.reconcile.notify_one();
                Ok(Response::new(ReleaseResponse {}))
            }
            Err(ProposeError::Rejected(rejection)) => Err(rejection_status(&rejection)),
            Err(ProposeError::Status(status)) => Err(status),
        }
    }

    type WatchStream = EventStream<GroupEvent>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = wire::Watch::try_from(&request.into_inner())?;
        let group = req.group;
        self.with_group(&group, &req.site, |_| ())?;
        let site = req.site.to_string();
        let who = crate::auth::limit_key();
        let permit = self
            .ctx
            .limits
            .open_stream(&who, StreamKind::Watch, self.ctx.clock.now())?;
        let ctx = self.ctx.clone();
        // One event waits at most: a watcher needs the newest view, not every one in
        // between, so the event is read from the state only once there is room for it.
        let (events, stream) = mpsc::channel(1);
        let verdict = Verdict::default();
        let ended = verdict.clone();
        crate::runtime::spawn(async move {
            let stall = ctx.limits.stall_timeout();
            let mut changes = ctx.view.subscribe();
            let mut last: Option<GroupEvent> = None;
            loop {
                let room = match tokio::time::timeout(stall, events.reserve()).await {
                    Ok(Ok(room)) => room,
                    // The client went away.
                    Ok(Err(_)) => return,
                    Err(_) => {
                        ctx.limits.close_stalled(&ended, &who, StreamKind::Watch);
                        return;
                    }
                };
                let event = ctx
                    .view
                    .read()
                    .group(&group)
                    .map(|g| wire::group_event(g, &site));
                let Ok(event) = event else { return };
                if last.as_ref() != Some(&event) {
                    room.send(Ok(event.clone()));
                    last = Some(event);
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = events.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(GuardedStream::new(
            stream, verdict, permit,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::{route_keepalive, StreamRoute};

    fn leader(id: u64) -> Option<(u64, String)> {
        Some((id, format!("10.0.0.{id}:7000")))
    }

    #[test]
    fn the_leader_serves_every_stream() {
        for (relay, forwarded) in [(false, false), (true, false), (false, true), (true, true)] {
            assert_eq!(
                route_keepalive(1, true, relay, forwarded, leader(1)),
                StreamRoute::Serve
            );
        }
    }

    #[test]
    fn a_follower_relays_only_when_asked() {
        assert_eq!(
            route_keepalive(2, false, false, false, leader(1)),
            StreamRoute::Refuse
        );
        assert_eq!(
            route_keepalive(2, false, true, false, leader(1)),
            StreamRoute::Relay {
                leader: 1,
                addr: "10.0.0.1:7000".into()
            }
        );
    }

    #[test]
    fn a_follower_never_relays_twice_nor_without_a_leader() {
        // Forwarded by another controller: one hop at most.
        assert_eq!(
            route_keepalive(2, false, true, true, leader(1)),
            StreamRoute::Refuse
        );
        assert_eq!(
            route_keepalive(2, false, true, false, None),
            StreamRoute::Refuse
        );
        // Metrics that still name this controller after it stepped down.
        assert_eq!(
            route_keepalive(2, false, true, false, leader(2)),
            StreamRoute::Refuse
        );
    }
}

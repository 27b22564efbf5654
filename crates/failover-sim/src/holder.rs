//! Simulated lease holders: engine instances that acquire, renew and release through the
//! controllers' real lease service and renewal batcher, called in process over the
//! simulated network, and believe they hold exactly what the core's `HolderLease` says.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use failover_controller::leases::{Renewal, RenewalError};
use failover_controller::services::lease::LeaseServer;
use failover_core::lease::{HolderLease, HolderTiming, RenewRefusal};
use failover_core::{Epoch, FencingToken, GroupName, LeaseId, NodeId};
use failover_proto::lease::lease_service_server::LeaseService;
use failover_proto::lease::{acquire_response, AcquireRequest, ReleaseRequest};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::check::Checker;
use crate::clock::DriftClock;
use crate::net::{round_trip, Endpoint, Net};
use failover_client::clock::Clock;

/// How long a holder waits for an acquire's or release's answer before it tries another
/// controller.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(700);

/// One simulated engine instance.
pub struct Holder {
    /// Its index (trace and checker name it so).
    pub index: usize,
    /// Its network endpoint.
    pub endpoint: Endpoint,
    /// Its site's index and name.
    pub site: (usize, String),
    /// The group it serves.
    pub group: GroupName,
    /// Its monotonic clock.
    pub clock: DriftClock,
    /// The network.
    pub net: Arc<Net>,
    /// The checker.
    pub checker: Arc<Mutex<Checker>>,
    /// How often it renews or polls.
    pub keepalive: Duration,
    /// The lease TTL (for counting needless interruptions).
    pub ttl: Duration,
    /// The holder-side drift and stop grace.
    pub timing: HolderTiming,
    /// Controller count (it tries them in turn to find the leader).
    pub controllers: u64,
}

/// Where a holder's keepalive stream runs: to the leader directly (`via == leader`), or
/// relayed by the follower `via` to the leader it knew when the stream opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    via: NodeId,
    leader: NodeId,
}

impl Route {
    fn relayed(&self) -> bool {
        self.via != self.leader
    }
}

enum Renew {
    Renewed(Duration),
    Draining,
    Refused(String),
    /// Not the leader (here is the one it knows of, if any), or no answer.
    Elsewhere(Option<NodeId>),
}

impl Holder {
    fn checker(&self) -> std::sync::MutexGuard<'_, Checker> {
        self.checker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until the runtime stops: acquires (polling every keepalive interval while
    /// standby), then renews as `LeaseSession` does until the lease is gone.
    pub async fn run(self) {
        let mut lease = HolderLease::new(self.timing);
        let mut target: NodeId = 1 + (self.index as u64 % self.controllers);
        loop {
            let local = self.clock.now();
            lease.handle_timeout(local);
            match lease.held(local) {
                Some(held) => self.hold(&mut lease, held.lease, &mut target).await,
                None => {
                    self.acquire(&mut lease, &mut target).await;
                    if lease.held(self.clock.now()).is_none() {
                        tokio::time::sleep(self.keepalive).await;
                    }
                }
            }
        }
    }

    /// The renewal cadence `LeaseSession` uses: the keepalive interval, but no more than
    /// a third of what is left of the lease.
    fn interval(&self, lease: &HolderLease) -> Duration {
        let usable = lease
            .poll_timeout()
            .map_or(Duration::from_millis(500), |until| {
                until.saturating_duration_since(self.clock.now())
            });
        let third = (usable / 3).max(Duration::from_millis(10));
        self.keepalive.min(third)
    }

    /// Renews `id` as `LeaseSession::hold` does: a stream to the leader (the known one
    /// first, else a race over every controller, directly and then through a follower
    /// that relays), one renewal every interval without waiting for answers, each
    /// counted from when it was sent; a stream whose oldest answer is two intervals
    /// overdue, or that says "not the leader", is abandoned for another. Returns when the
    /// lease lapsed, was refused or drained.
    async fn hold(&self, lease: &mut HolderLease, id: LeaseId, target: &mut NodeId) {
        let interval = self.interval(lease);
        let (answer_to, mut answers) = mpsc::unbounded_channel::<(u64, u64, Renew)>();
        let mut stream = 0u64;
        let mut seq = 0u64;
        let mut known = Some(*target);
        let mut suspect: Option<NodeId> = None;
        let mut until = self.belief_end(lease);
        'connect: loop {
            let route = tokio::select! {
                route = self.open(known.take(), suspect.take(), interval) => route,
                _ = self.deadline(lease) => {
                    if self.lapsed(lease, until) {
                        return;
                    }
                    continue 'connect;
                }
            };
            *target = route.leader;
            stream += 1;
            // Answers to requests sent on an earlier stream never come.
            let mut sent: BTreeMap<u64, (StdInstant, Instant)> = BTreeMap::new();
            let mut next_tick = Instant::now();
            loop {
                let overdue = sent.values().map(|(_, at)| *at + 2 * interval).min();
                tokio::select! {
                    _ = tokio::time::sleep_until(next_tick) => {
                        next_tick += interval;
                        seq += 1;
                        sent.insert(seq, (self.clock.now(), Instant::now()));
                        tokio::spawn(renew_once(
                            self.net.clone(),
                            self.endpoint,
                            route,
                            self.group.clone(),
                            id,
                            self.ttl,
                            (stream, seq),
                            answer_to.clone(),
                        ));
                    }
                    Some((on, n, answer)) = answers.recv() => {
                        if on != stream {
                            continue;
                        }
                        let Some((sent_at, _)) = sent.remove(&n) else {
                            continue;
                        };
                        let now = Instant::now();
                        match answer {
                            Renew::Renewed(ttl) => {
                                lease.on_renewed(self.clock.now(), sent_at, id, ttl);
                                self.note_belief(lease);
                                until = self.belief_end(lease).or(until);
                            }
                            Renew::Elsewhere(hint) => {
                                // A relayed stream that ended names no leader.
                                known = hint.filter(|h| *h != route.via && !route.relayed());
                                suspect = Some(route.via);
                                continue 'connect;
                            }
                            Renew::Draining => {
                                // The executor stops its workers, then releases.
                                self.checker().stop(now, self.index, "draining");
                                lease.on_lost();
                                self.release(id, route.leader).await;
                                return;
                            }
                            Renew::Refused(why) => {
                                self.checker().stop(now, self.index, &why);
                                self.checker()
                                    .lapsed(now, self.index, self.site.0, now, self.ttl, &why);
                                lease.on_lost();
                                return;
                            }
                        }
                    }
                    _ = sleep_until_some(overdue) => {
                        // The leader (or relay) stopped answering without closing the
                        // stream: go elsewhere, not back to it first.
                        suspect = Some(route.via);
                        continue 'connect;
                    }
                    _ = self.deadline(lease) => {
                        if self.lapsed(lease, until) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// True time at which the current belief ends, if the lease is held.
    fn belief_end(&self, lease: &HolderLease) -> Option<Instant> {
        lease
            .held(self.clock.now())
            .map(|held| self.clock.true_at(held.valid_until))
    }

    /// Resolves when the lease's deadline passes on the holder's clock.
    async fn deadline(&self, lease: &HolderLease) {
        match lease.poll_timeout() {
            Some(at) => {
                // One microsecond late, so the drifting clock has certainly reached it.
                let at = self.clock.true_at(at) + Duration::from_micros(1);
                tokio::time::sleep_until(at).await
            }
            None => std::future::pending().await,
        }
    }

    /// At the deadline: true (and counted) when the lease is gone.
    fn lapsed(&self, lease: &mut HolderLease, until: Option<Instant>) -> bool {
        lease.handle_timeout(self.clock.now());
        if lease.held(self.clock.now()).is_some() {
            return false;
        }
        let now = Instant::now();
        self.checker().lapsed(
            now,
            self.index,
            self.site.0,
            until.unwrap_or(now),
            self.ttl,
            "not renewed in time",
        );
        true
    }

    /// Finds the leader as `open_keepalive` does: the known leader alone first (unless
    /// it is the suspect), else every controller at once, and every controller asked to
    /// relay two `within` later; each attempt that is refused or not answered within
    /// `within` is made again `within / 2` later, the suspect's first ones one `within`
    /// late. The caller bounds the wait by the lease deadline.
    async fn open(
        &self,
        known: Option<NodeId>,
        suspect: Option<NodeId>,
        within: Duration,
    ) -> Route {
        if let Some(leader) = known.filter(|k| Some(*k) != suspect) {
            if accepts(
                self.net.clone(),
                self.endpoint,
                leader,
                Duration::ZERO,
                within,
            )
            .await
            {
                return Route {
                    via: leader,
                    leader,
                };
            }
        }
        let (tell, mut told) = mpsc::unbounded_channel::<(NodeId, bool, Option<Route>)>();
        let attempt = |to: NodeId, relay: bool, after: Duration| {
            let (net, from, tell) = (self.net.clone(), self.endpoint, tell.clone());
            tokio::spawn(async move {
                let route = if relay {
                    relays(net, from, to, after, within).await
                } else {
                    accepts(net, from, to, after, within)
                        .await
                        .then_some(Route {
                            via: to,
                            leader: to,
                        })
                };
                let _ = tell.send((to, relay, route));
            });
        };
        for to in 1..=self.controllers {
            let after = if Some(to) == suspect {
                within
            } else {
                Duration::ZERO
            };
            attempt(to, false, after);
            attempt(to, true, after + 2 * within);
        }
        loop {
            match told.recv().await {
                Some((_, _, Some(route))) => return route,
                Some((to, relay, None)) => attempt(to, relay, within / 2),
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Follows the leader hint a controller gave (as the real client follows
    /// `x-failover-leader`), or tries the next controller.
    fn redirect(&self, target: &mut NodeId, hint: Option<NodeId>) {
        *target = match hint {
            Some(leader) if leader != *target => leader,
            _ => *target % self.controllers + 1,
        };
    }

    fn note_belief(&self, lease: &HolderLease) {
        if let Some(held) = lease.held(self.clock.now()) {
            let (id, epoch, valid_until) = (held.lease, held.epoch, held.valid_until);
            let until = self.clock.true_at(valid_until);
            self.checker().believe(
                Instant::now(),
                self.index,
                self.site.0,
                epoch.0,
                id.0,
                until,
            );
        }
    }

    async fn acquire(&self, lease: &mut HolderLease, target: &mut NodeId) {
        let request = AcquireRequest {
            group: self.group.to_string(),
            site: self.site.1.clone(),
            instance: format!("holder-{}", self.index),
            ready: true,
        };
        let sent_at = self.clock.now();
        let answer = round_trip(
            &self.net,
            self.endpoint,
            *target,
            REQUEST_TIMEOUT,
            |slot| async move {
                let hint = slot.ctx.leader().map(|(id, _)| id);
                let answer = LeaseServer::new(slot.ctx)
                    .acquire(tonic::Request::new(request))
                    .await;
                (answer, hint)
            },
        )
        .await;
        let grant = match answer {
            Some((Ok(response), _)) => match response.into_inner().result {
                Some(acquire_response::Result::Granted(grant)) => grant,
                _ => return,
            },
            Some((Err(_), hint)) => return self.redirect(target, hint),
            None => return self.redirect(target, None),
        };
        self.checker().on_grant(
            Instant::now(),
            grant.lease_id,
            grant.epoch,
            grant.fencing_token,
        );
        lease.on_granted(
            sent_at,
            LeaseId(grant.lease_id),
            FencingToken(grant.fencing_token),
            Epoch(grant.epoch),
            Duration::from_millis(grant.ttl_ms),
        );
        self.note_belief(lease);
    }

    async fn release(&self, id: LeaseId, target: NodeId) {
        let request = ReleaseRequest {
            group: self.group.to_string(),
            lease_id: id.0,
        };
        let _ = round_trip(
            &self.net,
            self.endpoint,
            target,
            REQUEST_TIMEOUT,
            |slot| async move {
                LeaseServer::new(slot.ctx)
                    .release(tonic::Request::new(request))
                    .await
            },
        )
        .await;
    }
}

/// Whether controller `to` accepts a keepalive stream (it leads), asked `after` from now
/// and given up after `within`.
async fn accepts(
    net: Arc<Net>,
    from: Endpoint,
    to: NodeId,
    after: Duration,
    within: Duration,
) -> bool {
    tokio::time::sleep(after).await;
    round_trip(&net, from, to, within, |slot| async move {
        slot.ctx.raft.is_leader()
    })
    .await
    .unwrap_or(false)
}

/// Whether controller `to`, asked `after` from now to relay a keepalive stream, accepts
/// it within `within`, as `route_keepalive` decides: the leader serves it itself; a
/// follower opens it on the leader it knows (which must accept, being the leader) and
/// relays.
async fn relays(
    net: Arc<Net>,
    from: Endpoint,
    to: NodeId,
    after: Duration,
    within: Duration,
) -> Option<Route> {
    tokio::time::sleep(after).await;
    let inner = net.clone();
    round_trip(&net, from, to, within, |slot| async move {
        if slot.ctx.raft.is_leader() {
            return Some(Route {
                via: to,
                leader: to,
            });
        }
        let leader = slot.ctx.leader().map(|(id, _)| id).filter(|l| *l != to)?;
        accepts(inner, to, leader, Duration::ZERO, within)
            .await
            .then_some(Route { via: to, leader })
    })
    .await
    .flatten()
}

/// Resolves at `at`; pending forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One renewal of `id` on the stream `route`, answered on `answer_to` tagged with
/// `tag` (stream, sequence number); a lost request or answer (on either hop of a relayed
/// stream) is never answered. A relaying follower that no longer follows the leader the
/// stream was opened on ends the stream, as `pass_keepalives` does.
#[allow(clippy::too_many_arguments)]
async fn renew_once(
    net: Arc<Net>,
    from: Endpoint,
    route: Route,
    group: GroupName,
    id: LeaseId,
    ttl: Duration,
    tag: (u64, u64),
    answer_to: mpsc::UnboundedSender<(u64, u64, Renew)>,
) {
    let inner = net.clone();
    let answer = round_trip(&net, from, route.via, ttl, |slot| async move {
        if !route.relayed() {
            return Some(renew_at(slot, group, id).await);
        }
        if slot.ctx.leader().map(|(id, _)| id) != Some(route.leader) {
            return Some(Renew::Elsewhere(None));
        }
        round_trip(&inner, route.via, route.leader, ttl, |leader| {
            renew_at(leader, group, id)
        })
        .await
    })
    .await
    .flatten();
    if let Some(answer) = answer {
        let _ = answer_to.send((tag.0, tag.1, answer));
    }
}

/// One renewal of `id` at controller `slot`, as its lease service answers it.
async fn renew_at(slot: crate::net::Slot, group: GroupName, id: LeaseId) -> Renew {
    {
        let ctx = slot.ctx;
        if !ctx.raft.is_leader() {
            return Renew::Elsewhere(ctx.leader().map(|(id, _)| id));
        }
        let received_at = ctx.clock.now();
        let (reply, answer) = oneshot::channel();
        ctx.leases.submit(Renewal {
            group: group.clone(),
            lease: id,
            received_at,
            reply,
        });
        match answer.await {
            Ok(Ok(renewed)) => {
                ctx.leases
                    .engines()
                    .on_renewed(&group, &renewed.site, received_at);
                Renew::Renewed(renewed.ttl)
            }
            Ok(Err(RenewalError::Refused(RenewRefusal::Draining { .. }))) => Renew::Draining,
            Ok(Err(RenewalError::Refused(refusal))) => Renew::Refused(refusal.to_string()),
            Ok(Err(_)) | Err(_) => Renew::Elsewhere(None),
        }
    }
}

//! Simulated lease holders: engine instances that acquire, renew and release through the
//! controllers' real lease service and renewal batcher, called in process over the
//! simulated network, and believe they hold exactly what the core's `HolderLease` says.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use failover_controller::leases::{Renewal, RenewalError};
use failover_controller::services::lease::LeaseServer;
use failover_core::lease::{HolderLease, HolderTiming, RenewRefusal};
use failover_core::{Epoch, FencingToken, GroupName, LeaseId, NodeId};
use failover_proto::lease::lease_service_server::LeaseService;
use failover_proto::lease::{acquire_response, AcquireRequest, ReleaseRequest};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::check::Checker;
use crate::clock::DriftClock;
use crate::net::{round_trip, Endpoint, Net};
use failover_client::clock::Clock;

/// How long a holder waits for an answer before it tries another controller.
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

    /// Runs until the runtime stops.
    pub async fn run(self) {
        let mut lease = HolderLease::new(self.timing);
        let mut target: NodeId = 1 + (self.index as u64 % self.controllers);
        let mut had: Option<Instant> = None;
        loop {
            let local = self.clock.now();
            lease.handle_timeout(local);
            match lease.held(local) {
                Some(held) => {
                    if !self.renew(&mut lease, held.lease, &mut target).await {
                        had = None;
                    }
                }
                None => {
                    if let Some(until) = had.take() {
                        let now = Instant::now();
                        self.checker().lapsed(
                            now,
                            self.index,
                            self.site.0,
                            until,
                            self.ttl,
                            "not renewed in time",
                        );
                    }
                    self.acquire(&mut lease, &mut target).await;
                }
            }
            if let Some(held) = lease.held(self.clock.now()) {
                let valid_until = held.valid_until;
                had = Some(self.clock.true_at(valid_until));
            }
            tokio::time::sleep(self.keepalive).await;
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

    /// Renews `id`; false when the lease is gone.
    async fn renew(&self, lease: &mut HolderLease, id: LeaseId, target: &mut NodeId) -> bool {
        let group = self.group.clone();
        let sent_at = self.clock.now();
        let answer = round_trip(
            &self.net,
            self.endpoint,
            *target,
            REQUEST_TIMEOUT,
            |slot| async move {
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
                    Ok(Err(RenewalError::Refused(RenewRefusal::Draining { .. }))) => {
                        Renew::Draining
                    }
                    Ok(Err(RenewalError::Refused(refusal))) => Renew::Refused(refusal.to_string()),
                    Ok(Err(_)) | Err(_) => Renew::Elsewhere(None),
                }
            },
        )
        .await;
        let now = Instant::now();
        match answer.unwrap_or(Renew::Elsewhere(None)) {
            Renew::Renewed(ttl) => {
                lease.on_renewed(self.clock.now(), sent_at, id, ttl);
                self.note_belief(lease);
                true
            }
            Renew::Elsewhere(hint) => {
                self.redirect(target, hint);
                true
            }
            Renew::Draining => {
                // The executor stops its workers, then releases.
                self.checker().stop(now, self.index, "draining");
                lease.on_lost();
                self.release(id, *target).await;
                false
            }
            Renew::Refused(why) => {
                self.checker().stop(now, self.index, &why);
                self.checker()
                    .lapsed(now, self.index, self.site.0, now, self.ttl, &why);
                lease.on_lost();
                false
            }
        }
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

//! A lease session: acquires a group's lease for one instance, keeps it alive, follows
//! the leader, and reports what the instance may believe.
//!
//! Safety rests on [`HolderLease`] (in `failover-core`): validity is measured from when
//! each request was *sent*, on the monotonic clock, minus the drift bound and the stop
//! grace. The session publishes `Lost` when that deadline passes even if no controller
//! answers; [`LeaseSession::holds`] checks the deadline itself, so a caller that asks at
//! any instant never hears "held" after it.
//!
//! # What to pass downstream
//!
//! [`LeaseSession::holds`] answers the [`FencingValue`] (the lease's epoch): the same for
//! every holder of one epoch and larger for every later one, so every engine instance at
//! the active site can write, and a store refuses a stale site once the new one has
//! written. The per-lease token ([`LeaseState::Acquired`]'s `token`) is the lease's
//! identity, not something a store compares.
//!
//! # Stopping in the safe order
//!
//! On a drain notice (a promotion away from this site) or a lost lease the session stops
//! answering [`LeaseSession::holds`] at once, so no new work starts, and releases the lease
//! only when the caller says its work has stopped ([`LeaseSession::release`]) or, failing
//! that, one `stop_grace` later: a promotion cannot complete while work that checked
//! `holds()` a moment before is still running.
//!
//! ```no_run
//! # async fn engine(session: failover_client::LeaseSession) {
//! let mut working = false;
//! loop {
//!     // Ask before every unit of work, and carry the value downstream.
//!     let Some(fencing_value) = session.holds() else {
//!         // Standby, draining or lost: start nothing. The last job has returned, so
//!         // say the work stopped; without this the session releases one stop grace
//!         // after the notice.
//!         if std::mem::take(&mut working) {
//!             session.release().await;
//!         }
//!         tokio::time::sleep(std::time::Duration::from_millis(100)).await;
//!         continue;
//!     };
//!     working = true;
//!     // run_one_job(fencing_value).await; // must finish within stop_grace
//!     let _ = fencing_value;
//! }
//! # }
//! ```
//!
//! # Readiness
//!
//! A standby instance's acquire polls tell the leader whether it could take over now
//! ([`LeaseSession::set_ready`], true by default): a standby site whose instances are
//! ready is a candidate for automatic failover, as one whose executor reports ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use failover_core::lease::{HolderLease, HolderTiming};
use failover_core::{Epoch, FencingToken, FencingValue, GroupName, LeaseId, SiteId};
use failover_proto::lease::lease_service_client::LeaseServiceClient;
use failover_proto::lease::{
    AcquireRequest, GroupEvent, KeepAliveRequest, KeepAliveResponse, ReleaseRequest, WatchRequest,
};
use failover_proto::pin::ClusterPin;
use failover_proto::types::RefusalReason;
use failover_proto::wire::Chan;
use failover_proto::wire::{self, AcquireAnswer, Granted, KeepAliveAnswer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::endpoints::Endpoints;
use crate::transport::Dialer;

/// Longest wait between two attempts to reach a controller.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Why a holder stops when no renewal came in time.
const DEADLINE_PASSED: &str = "the lease deadline passed without a renewal";
/// Time one acquire or release may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What a lease session is for.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Where the controllers are.
    pub endpoints: Endpoints,
    /// The failover group.
    pub group: GroupName,
    /// This instance's site.
    pub site: SiteId,
    /// This instance's id (unique within the group).
    pub instance: String,
    /// The drift bound to assume until a grant says the cluster's (`max_clock_drift_ms`):
    /// from then on the session counts the cluster's bound, whatever this says, so a holder
    /// started with only the endpoints cannot assume less drift than the cluster does.
    pub max_clock_drift: Duration,
    /// Time this instance needs to stop its work; the lease is given up that much early.
    pub stop_grace: Duration,
    /// How often to try again while standby.
    pub standby_poll: Duration,
    /// On a drain notice, release by itself: when told the work stopped
    /// ([`LeaseSession::release`]) or one `stop_grace` after the notice, whichever is
    /// first. Set it when [`LeaseSession::holds`] gates the work and each unit of work
    /// ends within `stop_grace`. Clear it when the work's owner decides when it has
    /// stopped (as `failover exec` does): the session then stays `Draining` until told,
    /// or until the deadline passes. Either way new work stops at the notice.
    pub release_on_drain: bool,
    /// The cluster this session's calls are for (docs/security.md, "Cluster identity"):
    /// a controller of another cluster is refused and no lease from it is ever held.
    /// `None`: the dialer's pin decides (by default the first answer's id is pinned).
    pub cluster_id: Option<String>,
    /// A bearer token this session's calls carry (docs/security.md, "Bearer tokens");
    /// `None`: the dialer's (if any).
    pub token: Option<String>,
}

/// A dialer whose channels carry a pin of their own: a session pinned to
/// [`LeaseConfig::cluster_id`] (with the token of the dialer it wraps).
struct Repinned {
    inner: Arc<dyn Dialer>,
    pin: ClusterPin,
}

impl Dialer for Repinned {
    fn channel(&self, addr: &str) -> Result<Chan, crate::transport::DialError> {
        Ok(self.inner.channel(addr)?.with_pin(self.pin.clone()))
    }

    fn pin(&self) -> &ClusterPin {
        &self.pin
    }
}

/// What the instance may believe, as published by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Not yet in touch with a leader.
    Connecting,
    /// The site is not active (or is being demoted): do not run the gated work.
    Standby {
        /// The active site (`None` when no site is active).
        active_site: Option<SiteId>,
        /// The current epoch.
        epoch: Epoch,
    },
    /// Held: the work may run until `valid_until` (monotonic), carrying `token` downstream.
    Acquired {
        /// The lease.
        lease: LeaseId,
        /// The fencing token.
        token: FencingToken,
        /// The epoch.
        epoch: Epoch,
        /// When the work must have stopped unless renewed.
        valid_until: Instant,
    },
    /// A promotion away from this site began: start no new work, let running work stop,
    /// then call [`LeaseSession::release`] (with `release_on_drain` the session also
    /// releases one stop grace after the notice). The lease stays valid until
    /// `valid_until` at the latest.
    Draining {
        /// The lease.
        lease: LeaseId,
        /// The fencing token.
        token: FencingToken,
        /// The epoch.
        epoch: Epoch,
        /// When the work must have stopped.
        valid_until: Instant,
    },
    /// Given up: the deadline passed, the lease was refused (released, expired,
    /// superseded by a newer acquire of this instance id), or the drain ended. Start
    /// nothing; the lease is released when [`LeaseSession::release`] says the work
    /// stopped, or one stop grace after this state was published.
    Lost {
        /// Why.
        reason: String,
    },
}

impl LeaseState {
    /// The value to pass downstream while the lease is held or draining (the epoch).
    /// Whether it is still valid *now* is for [`LeaseSession::fencing_value`] to say.
    pub fn fencing_value(&self) -> Option<FencingValue> {
        match self {
            LeaseState::Acquired { epoch, .. } | LeaseState::Draining { epoch, .. } => {
                Some(FencingValue::from(*epoch))
            }
            _ => None,
        }
    }
}

/// The lease timing the cluster sent with the last grant or renewal: the session runs by
/// it (drift bound, keepalive cadence, TTL), not by local configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantTiming {
    /// The lease TTL, counted from when the request was sent.
    pub ttl: Duration,
    /// The cluster's drift bound (the holder's own when the grant carried none).
    pub max_clock_drift: Duration,
    /// How often the cluster asks the holder to renew (`None` if the grant said nothing).
    pub keepalive_interval: Option<Duration>,
    /// What a holder may keep off its lease and still ride out a leader election
    /// (docs/leases.md, "The timing inequality"); `None` if the grant said nothing.
    pub ride_out_margin: Option<Duration>,
}

impl GrantTiming {
    fn from_grant(grant: &Granted, own_drift: Duration) -> GrantTiming {
        GrantTiming {
            ttl: grant.ttl,
            max_clock_drift: grant.max_clock_drift.unwrap_or(own_drift),
            keepalive_interval: (!grant.keepalive_interval.is_zero())
                .then_some(grant.keepalive_interval),
            ride_out_margin: grant.ride_out_margin,
        }
    }
}

/// A running lease session. Dropping it stops renewing (the lease then expires);
/// [`LeaseSession::shutdown`] releases it first.
pub struct LeaseSession {
    state: watch::Receiver<LeaseState>,
    timing: watch::Receiver<Option<GrantTiming>>,
    clock: Arc<dyn Clock>,
    ready: Arc<AtomicBool>,
    commands: mpsc::Sender<Cmd>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl LeaseSession {
    /// Starts acquiring and renewing in the background.
    pub fn start(
        config: LeaseConfig,
        dialer: Arc<dyn Dialer>,
        clock: Arc<dyn Clock>,
    ) -> LeaseSession {
        let own_id = config
            .cluster_id
            .as_ref()
            .is_some_and(|id| dialer.pin().id().as_ref() != Some(id));
        let own_token = config
            .token
            .as_ref()
            .is_some_and(|t| dialer.pin().token().as_ref() != Some(t));
        let dialer: Arc<dyn Dialer> = if own_id || own_token {
            let pin =
                ClusterPin::from_option(config.cluster_id.clone().or_else(|| dialer.pin().id()));
            pin.set_token(config.token.clone().or_else(|| dialer.pin().token()));
            Arc::new(Repinned { inner: dialer, pin })
        } else {
            dialer
        };
        let (publish, state) = watch::channel(LeaseState::Connecting);
        let (publish_timing, timing) = watch::channel(None);
        let (commands, received) = mpsc::channel(4);
        let ready = Arc::new(AtomicBool::new(true));
        let driver = Driver {
            ready: ready.clone(),
            owed_release: None,
            holder: HolderLease::new(HolderTiming {
                max_clock_drift: config.max_clock_drift,
                stop_grace: config.stop_grace,
            }),
            config,
            dialer,
            clock: clock.clone(),
            publish,
            publish_timing,
            leader: None,
            next_endpoint: 0,
            backoff: Duration::from_millis(25),
            keepalive: None,
        };
        LeaseSession {
            state,
            timing,
            clock,
            ready,
            commands,
            task: std::sync::Mutex::new(Some(tokio::spawn(driver.run(received)))),
        }
    }

    /// The published state; `changed()` wakes on every transition.
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// The timing the cluster sent with the last grant or renewal; `None` before the
    /// first grant.
    pub fn granted_timing(&self) -> Option<GrantTiming> {
        *self.timing.borrow()
    }

    /// Whether new gated work may start now, and the fencing value it carries
    /// downstream: `Some` only while the lease is held, valid at this instant, and not
    /// draining. Ask before every unit of work.
    pub fn holds(&self) -> Option<FencingValue> {
        match &*self.state.borrow() {
            LeaseState::Acquired {
                epoch, valid_until, ..
            } if self.clock.now() < *valid_until => Some(FencingValue::from(*epoch)),
            _ => None,
        }
    }

    /// The fencing value for work already running: `Some` while the lease is held or
    /// draining and valid at this instant. Unlike [`LeaseSession::holds`] it answers
    /// during a drain, so work that started before the notice can finish its writes.
    pub fn fencing_value(&self) -> Option<FencingValue> {
        let state = self.state.borrow();
        match &*state {
            LeaseState::Acquired { valid_until, .. } | LeaseState::Draining { valid_until, .. }
                if self.clock.now() < *valid_until =>
            {
                state.fencing_value()
            }
            _ => None,
        }
    }

    /// The work has stopped: give the lease up now and go back to acquiring (standby
    /// until this site is active again). Also ends the wait after a loss or a drain,
    /// which otherwise lasts one stop grace.
    pub async fn release(&self) {
        let _ = self.commands.send(Cmd::Release).await;
    }

    /// Whether this instance could take the group's work over now. Standby polls carry
    /// it to the leader, which fails over only to a site with a ready instance (or a
    /// ready executor). True from the start; clear it while warming up or unhealthy.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Releases the lease (if held) at once and stops the session: call it once the
    /// gated work has stopped.
    pub async fn shutdown(&self) {
        let _ = self.commands.try_send(Cmd::Stop);
        if let Some(task) = self.take_task() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseSession {
    fn drop(&mut self) {
        if let Some(task) = self.take_task() {
            task.abort();
        }
    }
}

/// What the owner of a session asks of its driver.
#[derive(Debug, Clone, Copy)]
enum Cmd {
    /// Release the lease (the work has stopped).
    Release,
    /// Release and end the session.
    Stop,
}

/// Why the holding loop ended.
enum HoldEnd {
    /// Give up the lease and acquire again (refused, expired, drained).
    Reacquire,
    /// Shut down (after releasing).
    Stop,
}

/// Runs `work` to its end unless the owner stops the session meanwhile (`None`). A
/// release asked while nothing is held is moot and ignored: it must neither cut an
/// acquire short (its grant may already be committed) nor be kept for a later lease.
async fn unless_stopped<T>(
    work: impl std::future::Future<Output = T>,
    commands: &mut mpsc::Receiver<Cmd>,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            cmd = commands.recv() => match cmd {
                Some(Cmd::Release) => continue,
                Some(Cmd::Stop) | None => return None,
            },
        }
    }
}

/// The next event of an optional watch stream; `None` when it ended or failed, pending
/// forever when there is no stream.
async fn next_event(events: &mut Option<tonic::Streaming<GroupEvent>>) -> Option<GroupEvent> {
    match events {
        Some(stream) => stream.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// A keepalive stream opened on one controller: its address, whether that controller
/// relays it to the leader, a client for the watch stream, the request sender and the
/// answers.
type Opened = (
    String,
    bool,
    LeaseServiceClient<Chan>,
    mpsc::Sender<KeepAliveRequest>,
    tonic::Streaming<KeepAliveResponse>,
);

/// Resolves when the oldest unanswered keepalive has waited `deadline`; pending while
/// every keepalive is answered.
async fn answer_overdue(sent: &HashMap<u64, Instant>, deadline: Duration) {
    match sent.values().min() {
        Some(oldest) => {
            tokio::time::sleep_until(tokio::time::Instant::from_std(*oldest + deadline)).await
        }
        None => std::future::pending().await,
    }
}

/// Opens a keepalive stream on `addr`: the leader accepts one; with `relay`, a follower
/// that reaches the leader accepts one too and relays it (docs/leases.md, "Relayed
/// renewals"). `None` when it did not.
async fn open_on(
    dialer: Arc<dyn Dialer>,
    addr: String,
    within: Duration,
    relay: bool,
) -> Option<Opened> {
    let channel = dialer.channel(&addr).ok()?;
    let mut client = wire::lease_client(channel);
    let (requests, outgoing) = mpsc::channel::<KeepAliveRequest>(16);
    let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    if relay {
        call.metadata_mut().insert(
            wire::RELAY_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    match tokio::time::timeout(within, client.keep_alive(call)).await {
        Ok(Ok(response)) => Some((addr, relay, client, requests, response.into_inner())),
        _ => None,
    }
}

/// One attempt of [`open_keepalive`]'s race: which controller, and whether it is asked to
/// relay.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempt {
    addr: String,
    relay: bool,
    after: Duration,
}

/// The attempts [`open_keepalive`]'s race starts with: every controller asked directly at
/// once (the `suspect` one `within` late: a deposed leader that has not noticed yet
/// still accepts streams), and every controller asked to relay two `within` after its
/// direct attempt, so the leader, when reachable, is reached directly (its answer comes
/// within a round trip; an attempt lost on a lossy link is made again `retry` after its
/// `within`, before the relays are asked) and a follower relays only for a holder that
/// cannot reach the leader.
/// A single controller is never asked to relay (there is no one to relay to).
fn first_attempts(addrs: &[String], suspect: Option<&String>, within: Duration) -> Vec<Attempt> {
    let alone = addrs.len() == 1;
    let mut attempts = Vec::with_capacity(2 * addrs.len());
    for addr in addrs {
        let after = if !alone && Some(addr) == suspect {
            within
        } else {
            Duration::ZERO
        };
        attempts.push(Attempt {
            addr: addr.clone(),
            relay: false,
            after,
        });
        if !alone {
            attempts.push(Attempt {
                addr: addr.clone(),
                relay: true,
                after: after + 2 * within,
            });
        }
    }
    attempts
}

/// Opens a keepalive stream on the leader: the known `leader` alone first if there is
/// one (and it is not `suspect`), else a race over every controller (directly, then asked
/// to relay: [`first_attempts`]) that lasts until one accepts. Each attempt gets `within`;
/// an attempt that was refused is made again `retry` later, while attempts on controllers
/// that do not answer (frozen, cut off) run on beside them, so a hung controller never
/// delays asking the others again. `None` only without endpoints; the caller bounds the
/// whole wait by the lease deadline.
async fn open_keepalive(
    dialer: Arc<dyn Dialer>,
    endpoints: Endpoints,
    leader: Option<String>,
    suspect: Option<String>,
    within: Duration,
    retry: Duration,
) -> Option<Opened> {
    if let Some(leader) = leader.filter(|l| Some(l) != suspect.as_ref()) {
        if let Some(opened) = open_on(dialer.clone(), leader, within, false).await {
            return Some(opened);
        }
    }
    let attempt = |a: Attempt| {
        let dialer = dialer.clone();
        async move {
            tokio::time::sleep(a.after).await;
            let opened = open_on(dialer, a.addr.clone(), within, a.relay).await;
            (a, opened)
        }
    };
    let mut attempts: futures::stream::FuturesUnordered<_> =
        first_attempts(endpoints.addrs(), suspect.as_ref(), within)
            .into_iter()
            .map(attempt)
            .collect();
    // Hints are not followed: during an election they name the leader that was lost, and
    // the leader to be is among the controllers raced here anyway.
    while let Some((tried, result)) = futures::StreamExt::next(&mut attempts).await {
        if result.is_some() {
            return result;
        }
        attempts.push(attempt(Attempt {
            after: retry,
            ..tried
        }));
    }
    None
}

struct Driver {
    /// Whether standby polls say this instance is ready.
    ready: Arc<AtomicBool>,
    /// A lease given up but not released yet, and when to release it at the latest:
    /// one stop grace after it was given up, unless the owner says its work stopped.
    owed_release: Option<(LeaseId, Instant)>,
    config: LeaseConfig,
    dialer: Arc<dyn Dialer>,
    clock: Arc<dyn Clock>,
    holder: HolderLease,
    publish: watch::Sender<LeaseState>,
    publish_timing: watch::Sender<Option<GrantTiming>>,
    leader: Option<String>,
    next_endpoint: usize,
    backoff: Duration,
    /// The keepalive interval the controllers ask for (from the last grant).
    keepalive: Option<Duration>,
}

impl Driver {
    /// Takes the cluster's timing from a grant or renewal, before its deadline is counted.
    fn take_timing(&mut self, grant: &Granted) {
        let timing = GrantTiming::from_grant(grant, self.config.max_clock_drift);
        self.keepalive = timing.keepalive_interval;
        self.holder.set_timing(HolderTiming {
            max_clock_drift: timing.max_clock_drift,
            stop_grace: self.config.stop_grace,
        });
        self.publish_timing.send_if_modified(|current| {
            let changed = *current != Some(timing);
            *current = Some(timing);
            changed
        });
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Cmd>) {
        loop {
            let Some(acquired) = unless_stopped(self.acquire(), &mut commands).await else {
                return;
            };
            if !acquired {
                let poll = tokio::time::sleep(self.config.standby_poll);
                if unless_stopped(poll, &mut commands).await.is_none() {
                    return;
                }
                continue;
            }
            let end = self.hold(&mut commands).await;
            if !self.settle(&mut commands).await {
                return;
            }
            match end {
                HoldEnd::Reacquire => continue,
                HoldEnd::Stop => return,
            }
        }
    }

    /// Releases a lease given up earlier once its work has certainly stopped: when the
    /// owner says so, or at the owed time. False when the owner stopped the session.
    async fn settle(&mut self, commands: &mut mpsc::Receiver<Cmd>) -> bool {
        let Some((lease, release_at)) = self.owed_release.take() else {
            return true;
        };
        let keep_going = tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(release_at)) => true,
            cmd = commands.recv() => matches!(cmd, Some(Cmd::Release)),
        };
        self.release(lease).await;
        keep_going
    }

    /// The controller to talk to: the last known leader, else the next endpoint.
    fn target(&mut self) -> String {
        if let Some(leader) = &self.leader {
            return leader.clone();
        }
        let addrs = self.config.endpoints.addrs();
        let addr = addrs[self.next_endpoint % addrs.len()].clone();
        self.next_endpoint += 1;
        addr
    }

    fn client(&mut self) -> Option<(String, LeaseServiceClient<Chan>)> {
        let addr = self.target();
        match self.dialer.channel(&addr) {
            Ok(channel) => Some((addr, wire::lease_client(channel))),
            Err(e) => {
                tracing::debug!(error = %e, "cannot dial");
                self.leader = None;
                None
            }
        }
    }

    /// Learns from a failed call where the leader is; forgets a dead one.
    fn on_error(&mut self, status: &tonic::Status) {
        self.leader = wire::leader_named(status);
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn set(&self, state: LeaseState) {
        self.publish.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    fn publish_held(&self) {
        let now = self.clock.now();
        match self.holder.held(now) {
            Some(held) => self.set(LeaseState::Acquired {
                lease: held.lease,
                token: held.token,
                epoch: held.epoch,
                valid_until: held.valid_until,
            }),
            None => self.set(LeaseState::Lost {
                reason: DEADLINE_PASSED.into(),
            }),
        }
    }

    /// One acquire attempt. True when the lease is held afterwards.
    async fn acquire(&mut self) -> bool {
        let Some((addr, mut client)) = self.client() else {
            self.pause().await;
            return false;
        };
        let request = AcquireRequest {
            group: self.config.group.to_string(),
            site: self.config.site.to_string(),
            instance: self.config.instance.clone(),
            ready: self.ready.load(Ordering::Relaxed),
        };
        let sent_at = self.clock.now();
        let answer = tokio::time::timeout(CALL_TIMEOUT, client.acquire(request)).await;
        let response = match answer {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(%addr, %status, "acquire failed");
                if !matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ) {
                    self.set(LeaseState::Lost {
                        reason: status.message().to_owned(),
                    });
                }
                self.on_error(&status);
                self.pause().await;
                return false;
            }
            Err(_) => {
                self.leader = None;
                return false;
            }
        };
        self.leader = Some(addr);
        self.backoff = Duration::from_millis(25);
        match AcquireAnswer::try_from(&response) {
            Ok(AcquireAnswer::Granted(grant)) => {
                self.take_timing(&grant);
                self.holder
                    .on_granted(sent_at, grant.lease, grant.token, grant.epoch, grant.ttl);
                self.publish_held();
                self.holder.held(self.clock.now()).is_some()
            }
            Ok(AcquireAnswer::Standby(standby)) => {
                self.set(LeaseState::Standby {
                    active_site: standby.active_site,
                    epoch: standby.epoch,
                });
                false
            }
            Err(error) => {
                // Nothing is held on an answer this build cannot read; another controller
                // (or a later attempt) may answer properly.
                tracing::warn!(%error, "acquire answer refused");
                self.leader = None;
                self.pause().await;
                false
            }
        }
    }

    /// Renews until the lease is refused, its deadline passes, a drain notice arrives, or
    /// the owner releases it or stops the session.
    async fn hold(&mut self, commands: &mut mpsc::Receiver<Cmd>) -> HoldEnd {
        let lease = match self.holder.held(self.clock.now()) {
            Some(held) => held.lease,
            None => return HoldEnd::Reacquire,
        };
        let interval = self.keepalive_interval();
        let mut sent: HashMap<u64, Instant> = HashMap::new();
        let mut seq = 0u64;
        let mut suspect: Option<String> = None;
        'connect: loop {
            // Reach the leader: the known one, or whichever controller accepts the stream
            // first among all of them, tried at once (a cut controller never resets the
            // connection, so trying one at a time would wait out each timeout).
            let opened = tokio::select! {
                opened = open_keepalive(
                    self.dialer.clone(),
                    self.config.endpoints.clone(),
                    self.leader.clone(),
                    suspect.take(),
                    interval,
                    interval / 2,
                ) => opened,
                _ = self.deadline() => return self.lost(lease, DEADLINE_PASSED).await,
                cmd = commands.recv() => return self.on_command(lease, cmd).await,
            };
            let Some((addr, relayed, mut client, requests, mut answers)) = opened else {
                tokio::select! {
                    _ = tokio::time::sleep(self.backoff.min(interval / 2)) => {
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        continue 'connect;
                    }
                    _ = self.deadline() => return self.lost(lease, DEADLINE_PASSED).await,
                    cmd = commands.recv() => return self.on_command(lease, cmd).await,
                }
            };
            // Rare (a leader change): worth a line, with how much lease was left.
            tracing::info!(
                %addr,
                relayed,
                lease_left = ?self.holder.poll_timeout().map(|t| t.saturating_duration_since(self.clock.now())),
                "keepalive stream open"
            );
            let mut first_renewal = true;
            // A relaying follower is not the leader: acquires and releases go elsewhere.
            self.leader = (!relayed).then(|| addr.clone());
            self.backoff = Duration::from_millis(25);
            // Answers to requests sent on an earlier stream never come.
            sent.clear();
            // Drain notices arrive at once on the watch stream; a refused renewal would
            // tell the same one keepalive later.
            let watch_request = WatchRequest {
                group: self.config.group.to_string(),
                site: self.config.site.to_string(),
            };
            let mut events = tokio::time::timeout(interval, client.watch(watch_request))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| r.into_inner());
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        seq += 1;
                        sent.insert(seq, self.clock.now());
                        sent.retain(|s, _| *s + 64 > seq);
                        let request = KeepAliveRequest { group: self.config.group.to_string(), lease_id: lease.0, seq };
                        if requests.send(request).await.is_err() {
                            continue 'connect;
                        }
                    }
                    answer = answers.message() => {
                        let answer = match answer {
                            Ok(Some(answer)) => answer,
                            _ => { self.leader = None; suspect = Some(addr.clone()); continue 'connect; }
                        };
                        match KeepAliveAnswer::try_from(&answer) {
                            Ok(KeepAliveAnswer::Renewed { seq, grant }) => {
                                if let Some(sent_at) = sent.remove(&seq) {
                                    if std::mem::take(&mut first_renewal) {
                                        tracing::info!(%addr, took = ?self.clock.now().saturating_duration_since(sent_at), "renewed on the new stream");
                                    }
                                    self.take_timing(&grant);
                                    self.holder.on_renewed(self.clock.now(), sent_at, lease, grant.ttl);
                                    self.publish_held();
                                }
                            }
                            Ok(KeepAliveAnswer::Refused { reason: reason @ (RefusalReason::NotLeader | RefusalReason::Overloaded), message, .. }) => {
                                tracing::info!(%addr, reason = wire::refusal_name(reason), %message, "renewal refused; looking for the leader");
                                self.leader = None;
                                suspect = Some(addr.clone());
                                continue 'connect;
                            }
                            Ok(KeepAliveAnswer::Refused { reason: RefusalReason::Draining, .. }) => {
                                return self.drain(lease, commands).await;
                            }
                            Ok(KeepAliveAnswer::Refused { message, .. }) => {
                                return self.lost(lease, &message).await;
                            }
                            Err(error) => {
                                // An answer this build cannot read (an unknown refusal
                                // reason, an absurd TTL): the lease is not extended by
                                // it; ask another controller.
                                tracing::warn!(%addr, %error, "keepalive answer refused; looking for the leader");
                                self.leader = None;
                                suspect = Some(addr.clone());
                                continue 'connect;
                            }
                        }
                    }
                    _ = answer_overdue(&sent, 2 * interval) => {
                        // The controller stopped answering without closing the stream (a
                        // cut, a frozen process): go elsewhere, not back to it first.
                        tracing::info!(%addr, "keepalive answer overdue; looking for the leader");
                        self.leader = None;
                        suspect = Some(addr.clone());
                        continue 'connect;
                    }
                    event = next_event(&mut events) => match event {
                        Some(event) if event.drain => return self.drain(lease, commands).await,
                        Some(_) => {}
                        None => events = None,
                    },
                    _ = self.deadline() => return self.lost(lease, DEADLINE_PASSED).await,
                    cmd = commands.recv() => return self.on_command(lease, cmd).await,
                }
            }
        }
    }

    /// A promotion away from this site began: publish `Draining` (no new work), then
    /// release when the owner says the work stopped, or (with `release_on_drain`) one stop
    /// grace after the notice, or give up at the deadline.
    async fn drain(&mut self, lease: LeaseId, commands: &mut mpsc::Receiver<Cmd>) -> HoldEnd {
        let noticed_at = self.clock.now();
        let Some(held) = self.holder.held(noticed_at) else {
            return self.lost(lease, DEADLINE_PASSED).await;
        };
        let (lease, valid_until) = (held.lease, held.valid_until);
        self.set(LeaseState::Draining {
            lease,
            token: held.token,
            epoch: held.epoch,
            valid_until,
        });
        let stopped_at = noticed_at + self.config.stop_grace;
        let auto_release = async {
            if self.config.release_on_drain {
                tokio::time::sleep_until(tokio::time::Instant::from_std(stopped_at)).await
            } else {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            _ = auto_release => self.give_up(lease, "this site is being demoted", self.clock.now()),
            _ = self.deadline() => self.give_up(lease, DEADLINE_PASSED, stopped_at.max(self.clock.now())),
            cmd = commands.recv() => self.on_command(lease, cmd).await,
        }
    }

    async fn on_command(&mut self, lease: LeaseId, cmd: Option<Cmd>) -> HoldEnd {
        match cmd {
            // The owner says its work stopped: release at once.
            Some(Cmd::Release) => {
                let now = self.clock.now();
                self.give_up(lease, "released", now)
            }
            Some(Cmd::Stop) | None => self.end(lease, true).await,
        }
    }

    fn keepalive_interval(&self) -> Duration {
        // A third of the usable lease (two renewals may be lost before the deadline), and
        // no longer than the topology's interval: the timing check at config load
        // (`Timing::ride_out_margin`) counts on that cadence to ride out an election.
        let usable = self
            .holder
            .poll_timeout()
            .map_or(Duration::from_millis(500), |until| {
                until.saturating_duration_since(self.clock.now())
            });
        let third = (usable / 3).max(Duration::from_millis(10));
        self.keepalive.map_or(third, |k| k.min(third))
    }

    /// Resolves when the holder's deadline passes.
    async fn deadline(&self) {
        match self.holder.poll_timeout() {
            Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
            None => std::future::pending::<()>().await,
        }
    }

    /// Stops believing in the lease now; the release follows one stop grace later (or
    /// when the owner says its work stopped), since work that checked `holds()` a moment
    /// ago may still be running.
    async fn lost(&mut self, lease: LeaseId, reason: &str) -> HoldEnd {
        let release_at = self.clock.now() + self.config.stop_grace;
        self.give_up(lease, reason, release_at)
    }

    /// Stops believing in the lease now and owes its release at `release_at` (see
    /// [`Driver::settle`]).
    fn give_up(&mut self, lease: LeaseId, reason: &str, release_at: Instant) -> HoldEnd {
        self.holder.on_lost();
        self.set(LeaseState::Lost {
            reason: reason.to_owned(),
        });
        self.owed_release = Some((lease, release_at));
        HoldEnd::Reacquire
    }

    async fn end(&mut self, lease: LeaseId, stopping: bool) -> HoldEnd {
        self.holder.handle_timeout(self.clock.now());
        if stopping {
            self.holder.on_lost();
            self.set(LeaseState::Lost {
                reason: "session stopped".into(),
            });
            self.release(lease).await;
            return HoldEnd::Stop;
        }
        self.lost(lease, "the lease deadline passed without a renewal")
            .await
    }

    /// Best-effort release so a promotion need not wait out the TTL. The holder has
    /// already stopped believing it holds the lease.
    async fn release(&mut self, lease: LeaseId) {
        for _ in 0..3 {
            let Some((_, mut client)) = self.client() else {
                return;
            };
            let request = ReleaseRequest {
                group: self.config.group.to_string(),
                lease_id: lease.0,
            };
            match tokio::time::timeout(CALL_TIMEOUT, client.release(request)).await {
                Ok(Ok(_)) => return,
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => return,
                Ok(Err(status)) => self.on_error(&status),
                Err(_) => self.leader = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{first_attempts, Attempt};
    use std::time::Duration;

    fn addrs(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("c{i}:7000")).collect()
    }

    #[test]
    fn every_controller_is_asked_directly_before_it_is_asked_to_relay() {
        let within = Duration::from_millis(250);
        let attempts = first_attempts(&addrs(3), None, within);
        assert_eq!(attempts.len(), 6);
        for addr in addrs(3) {
            let direct = attempts.iter().find(|a| a.addr == addr && !a.relay);
            let relay = attempts.iter().find(|a| a.addr == addr && a.relay);
            assert_eq!(direct.map(|a| a.after), Some(Duration::ZERO));
            assert_eq!(relay.map(|a| a.after), Some(2 * within));
        }
    }

    #[test]
    fn the_suspect_is_asked_one_attempt_late_both_ways() {
        let within = Duration::from_millis(250);
        let suspect = "c2:7000".to_owned();
        let attempts = first_attempts(&addrs(3), Some(&suspect), within);
        assert!(attempts.contains(&Attempt {
            addr: suspect.clone(),
            relay: false,
            after: within
        }));
        assert!(attempts.contains(&Attempt {
            addr: suspect,
            relay: true,
            after: 3 * within
        }));
    }

    #[test]
    fn a_lone_controller_is_never_asked_to_relay() {
        let only = addrs(1);
        let attempts = first_attempts(&only, Some(&only[0]), Duration::from_millis(100));
        assert_eq!(
            attempts,
            vec![Attempt {
                addr: only[0].clone(),
                relay: false,
                after: Duration::ZERO
            }]
        );
    }
}

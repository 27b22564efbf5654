//! The admin API, tolerant of controllers that are down or frozen.
//!
//! Every call starts by asking every endpoint for its status *at once* (a frozen
//! controller accepts connections and never answers, so trying endpoints one after the
//! other costs a full timeout each). The first answer confirmed by a quorum names the
//! leader; the call then goes to the leader if it is one of the endpoints, otherwise to
//! the controller that answered (which forwards it). Without such an answer the call
//! fails with [`ClientError::NoQuorum`] (controllers answered, none could confirm a
//! leader with a quorum) or [`ClientError::Unreachable`] (nothing answered), carrying
//! the possibly stale view of the controllers that did answer.
//!
//! Time bounds (docs/cli.md, "Time bounds"): a refused or unresolvable endpoint fails at
//! once; an endpoint that does not answer is given `attempt_timeout`; probe rounds are
//! repeated (an election may be under way) while answers come but none is confirmed,
//! until `deadline` has passed.

use std::sync::Arc;
use std::time::Duration;

use failover_proto::admin::admin_service_client::AdminServiceClient;
use failover_proto::admin::{
    DemoteRequest, HistoryRequest, HistoryResponse, LeasesRequest, LeasesResponse, PauseRequest,
    PauseResponse, PromoteRequest, PromoteResponse, ReloadRequest, ReloadResponse, ResumeRequest,
    StatusRequest, StatusResponse,
};
use failover_proto::pin::is_cluster_mismatch;
use failover_proto::wire::Chan;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;

use crate::endpoints::Endpoints;
use crate::transport::{Dialer, TcpDialer};

/// How long a promote with `wait` may take (the server gives up after 60 s).
const PROMOTE_WAIT: Duration = Duration::from_secs(65);
/// How long the endpoint that last gave a confirmed answer has before every other
/// endpoint is asked too: one answer instead of one per controller while it is healthy.
const HEDGE: Duration = Duration::from_millis(200);
/// Pause between two probe rounds that found answers but no confirmed leader.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A controller answered with an error (unknown group, invalid site, ...).
    #[error("{}", .0.message())]
    Refused(tonic::Status),
    /// No controller answered.
    #[error("no controller answered ({tried}): {last}")]
    Unreachable {
        /// The addresses tried.
        tried: String,
        /// Why each failed, `; ` separated.
        last: String,
    },
    /// Controllers answered, but none could confirm a leader with a quorum.
    #[error("{0}")]
    NoQuorum(Box<NoQuorum>),
}

/// Controllers answered, but no leader could confirm its leadership with a quorum: the
/// cluster cannot change or confirm anything until enough controllers are back.
#[derive(Debug, Clone)]
pub struct NoQuorum {
    /// Controllers of the topology that answered this client.
    pub answered: usize,
    /// Who answered: controller id and the role it gives itself.
    pub answered_roles: Vec<(u64, String)>,
    /// Controllers in the topology.
    pub total: usize,
    /// How many must be reachable for a quorum.
    pub needed: usize,
    /// The leader some controller still believes in (unconfirmed), if any.
    pub believed_leader: Option<u64>,
    /// The view of the controller that answered with the highest term (possibly stale).
    pub view: StatusResponse,
    /// The endpoint that gave `view`.
    pub view_from: String,
    /// Endpoints that did not answer, with why.
    pub failures: Vec<(String, String)>,
}

impl std::fmt::Display for NoQuorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.answered >= self.needed {
            // Enough controllers answered: an election is under way, or the leader could
            // not confirm in time (overload). Still nothing is confirmed.
            write!(
                f,
                "no quorum confirmed: {} of {} controllers reachable ({} needed), but no \
                 leader confirmed its leadership in time (election under way or overloaded)",
                self.answered, self.total, self.needed
            )?;
        } else {
            write!(
                f,
                "no quorum: {} of {} controllers reachable, {} needed",
                self.answered, self.total, self.needed
            )?;
        }
        match self.believed_leader {
            Some(id) => write!(f, " (controller {id} was leader, unconfirmed)"),
            None => write!(f, " (no leader elected)"),
        }
    }
}

impl ClientError {
    /// The gRPC code of a refusal, `Unavailable` when nothing answered or no quorum.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Refused(status) => status.code(),
            ClientError::Unreachable { .. } | ClientError::NoQuorum(_) => Code::Unavailable,
        }
    }
}

/// One endpoint's answer to a probe: its status, or why not and whether it stayed silent,
/// or that it belongs to another cluster than this client's (a refusal: retrying cannot
/// help).
type Answer = Result<StatusResponse, (String, bool, Option<tonic::Status>)>;

/// Records one answer; true when it is confirmed by a quorum.
fn absorb(round: &mut Round, addr: String, answer: Answer) -> bool {
    match answer {
        Ok(status) if status.consistent && status.leader != 0 => {
            round.confirmed = Some((addr, status));
            true
        }
        Ok(status) => {
            round.answers.push((addr, status));
            false
        }
        Err((why, silent, mismatch)) => {
            round.silent |= silent;
            round.failures.push((addr, why));
            if mismatch.is_some() {
                round.mismatch = mismatch;
            }
            false
        }
    }
}

/// What one probe round learned: the answers, and why the other endpoints gave none.
#[derive(Debug, Default)]
struct Round {
    /// A status confirmed by a quorum, and the endpoint that gave it.
    confirmed: Option<(String, StatusResponse)>,
    /// Unconfirmed answers, by endpoint.
    answers: Vec<(String, StatusResponse)>,
    /// Endpoints that failed, with a reason for people.
    failures: Vec<(String, String)>,
    /// Whether some endpoint did not answer within the attempt timeout (as opposed to
    /// failing at once).
    silent: bool,
    /// An endpoint's answer for another cluster than this client's.
    mismatch: Option<tonic::Status>,
}

/// An admin client over a set of controllers.
#[derive(Clone)]
pub struct AdminClient {
    endpoints: Endpoints,
    dialer: Arc<dyn Dialer>,
    /// The endpoint of the last confirmed answer (shared by clones).
    preferred: Arc<std::sync::Mutex<Option<String>>>,
    /// Total time a call keeps probing while controllers answer without a confirmed
    /// leader (an election in progress). One round always runs.
    pub deadline: Duration,
    /// Time one controller may take to answer.
    pub attempt_timeout: Duration,
}

/// Whether a status means "try again" rather than "the answer is no".
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// A transport failure in words an operator can act on.
pub fn explain(addr: &str, status: &tonic::Status) -> String {
    let mut chain = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    let lower = chain.to_lowercase();
    if lower.contains("connection refused") {
        format!("{addr}: connection refused (nothing listens there)")
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        format!("{addr}: cannot resolve the host name")
    } else if lower.contains("grpc-status header missing")
        || lower.contains("h2 protocol error")
        || lower.contains("frame with invalid size")
        || lower.contains("http2 error")
    {
        format!(
            "{addr}: answered, but not as a controller's gRPC port \
             (is it the HTTP port? use the controller's `addr`, not `http_addr`)"
        )
    } else if let Some(at) = chain.find("no answer within") {
        // A connect or TLS handshake that timed out: said once, not per layer.
        let what = chain[at..].split(": ").next().unwrap_or("no answer");
        format!("{addr}: {what} (process stopped or host unreachable?)")
    } else if lower.contains("received corrupt message") {
        // A TLS client that got plaintext back.
        format!(
            "{addr}: answered, but not with TLS: is it the HTTP port (use the controller's \
             `addr`, not `http_addr`), or a cluster run with `tls: {{ insecure: true }}` \
             (then pass --insecure)?"
        )
    } else {
        format!("{addr}: {chain}")
    }
}

impl AdminClient {
    /// A client of the controllers at `endpoints`, over TCP.
    pub fn new(endpoints: Endpoints) -> Self {
        Self::with_dialer(endpoints, Arc::new(TcpDialer::default()))
    }

    /// A client that reaches controllers through `dialer`.
    pub fn with_dialer(endpoints: Endpoints, dialer: Arc<dyn Dialer>) -> Self {
        AdminClient {
            endpoints,
            dialer,
            preferred: Arc::default(),
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
        }
    }

    /// Asks the endpoints for their status, giving each `timeout`: the one that gave the
    /// last confirmed answer (else the first) first, and every other one at once if it
    /// has not confirmed within [`HEDGE`]. Ends at the first answer
    /// confirmed by a quorum, or when every endpoint answered, failed or timed out.
    async fn round(&self, timeout: Duration) -> Round {
        let mut tasks = JoinSet::new();
        let mut round = Round::default();
        let addrs = self.endpoints.addrs();
        let preferred = self
            .preferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|p| addrs.contains(p))
            .or_else(|| addrs.first().cloned());
        if let Some(first) = &preferred {
            self.ask(&mut tasks, &mut round, first, timeout);
            if let Ok(Some(Ok((addr, answer)))) =
                tokio::time::timeout(HEDGE, tasks.join_next()).await
            {
                if absorb(&mut round, addr, answer) {
                    return round;
                }
            }
        }
        for addr in addrs.iter().filter(|a| Some(*a) != preferred.as_ref()) {
            self.ask(&mut tasks, &mut round, addr, timeout);
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((addr, answer)) = joined else {
                continue;
            };
            if absorb(&mut round, addr, answer) {
                tasks.abort_all();
                break;
            }
        }
        if let Some((addr, status)) = &round.confirmed {
            let leader = status
                .controllers
                .iter()
                .find(|c| c.id == status.leader && addrs.contains(&c.addr))
                .map_or_else(|| addr.clone(), |c| c.addr.clone());
            *self.preferred.lock().unwrap_or_else(|p| p.into_inner()) = Some(leader);
        }
        round
    }

    /// Starts asking `addr` for its status.
    fn ask(
        &self,
        tasks: &mut JoinSet<(String, Answer)>,
        round: &mut Round,
        addr: &str,
        timeout: Duration,
    ) {
        let channel = match self.dialer.channel(addr) {
            Ok(channel) => channel,
            Err(e) => {
                round.failures.push((addr.to_owned(), e.to_string()));
                return;
            }
        };
        let addr = addr.to_owned();
        tasks.spawn(async move {
            let mut client = failover_proto::wire::admin_client(channel);
            let call = client.status(StatusRequest {});
            let answer = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) if is_cluster_mismatch(&status) => {
                    Err((explain(&addr, &status), false, Some(status)))
                }
                Ok(Err(status)) => Err((explain(&addr, &status), false, None)),
                Err(_) => Err((
                    format!(
                        "{addr}: no answer within {timeout:?} (process stopped or host unreachable?)"
                    ),
                    true,
                    None,
                )),
            };
            (addr, answer)
        });
    }

    /// The cluster's status as confirmed by a quorum, and the endpoint that gave it.
    ///
    /// Rounds repeat while controllers answer (or some stay silent) without a confirmed
    /// leader, an election may be under way, for at most `max(deadline, attempt_timeout)`
    /// in all; endpoints that all fail at once (refused, unresolvable) end it at once.
    /// Without a confirmed leader: [`ClientError::NoQuorum`] with the freshest view of
    /// the controllers that answered, or [`ClientError::Unreachable`] when none did.
    pub async fn confirmed_status(&self) -> Result<(String, StatusResponse), ClientError> {
        let end = Instant::now() + self.deadline.max(self.attempt_timeout);
        let mut last_answered: Option<Round> = None;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let round = self.round(self.attempt_timeout.min(left)).await;
            if let Some(found) = round.confirmed {
                return Ok(found);
            }
            if let Some(status) = round.mismatch {
                return Err(ClientError::Refused(status));
            }
            let retry = !round.answers.is_empty() || round.silent;
            let round = if round.answers.is_empty() {
                last_answered.take().unwrap_or(round)
            } else {
                round
            };
            let done = !retry || Instant::now() + ROUND_PAUSE >= end;
            if done {
                return Err(self.no_leader(round));
            }
            if !round.answers.is_empty() {
                last_answered = Some(round);
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    /// The error for a round that found no confirmed leader.
    fn no_leader(&self, round: Round) -> ClientError {
        let Some((view_from, view)) = round
            .answers
            .iter()
            .max_by_key(|(_, s)| (s.term, s.leader != 0))
            .cloned()
        else {
            let last: Vec<&str> = round.failures.iter().map(|(_, why)| why.as_str()).collect();
            return ClientError::Unreachable {
                tried: self.endpoints.addrs().join(", "),
                last: last.join("; "),
            };
        };
        let total = view.controllers.len().max(round.answers.len());
        // A follower may relay the leader's answer: count endpoints, not `answered_by`.
        let answered_roles: Vec<(u64, String)> = round
            .answers
            .iter()
            .filter_map(|(addr, s)| {
                let c = s.controllers.iter().find(|c| &c.addr == addr)?;
                Some((c.id, c.role.clone()))
            })
            .collect();
        let answered = round.answers.len();
        ClientError::NoQuorum(Box::new(NoQuorum {
            answered,
            answered_roles,
            total,
            needed: total / 2 + 1,
            believed_leader: round
                .answers
                .iter()
                .map(|(_, s)| s.leader)
                .find(|&l| l != 0),
            view,
            view_from,
            failures: round.failures,
        }))
    }

    /// Where to send a call that needs the leader: the leader's own address when it is
    /// one of the endpoints (no forwarding hop), else the endpoint that answered.
    async fn target(&self) -> Result<String, ClientError> {
        let (answered, status) = self.confirmed_status().await?;
        let leader = status
            .controllers
            .iter()
            .find(|c| c.id == status.leader)
            .map(|c| c.addr.clone());
        Ok(leader
            .filter(|addr| self.endpoints.addrs().contains(addr))
            .unwrap_or(answered))
    }

    /// Sends one call to the leader; a transient failure (the leader changed under it)
    /// locates the leader again, until `deadline`.
    async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminServiceClient<Chan>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(self.attempt_timeout, f).await
    }

    /// [`AdminClient::call`] whose call to the leader may take `timeout` (the probe
    /// keeps `attempt_timeout`).
    async fn call_within<T, F, Fut>(
        &mut self,
        timeout: Duration,
        mut f: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(AdminServiceClient<Chan>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        loop {
            let addr = self.target().await?;
            let channel = self
                .dialer
                .channel(&addr)
                .map_err(|e| ClientError::Unreachable {
                    tried: addr.clone(),
                    last: e.to_string(),
                })?;
            let answer =
                tokio::time::timeout(timeout, f(failover_proto::wire::admin_client(channel)))
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::unavailable("attempt timed out")));
            match answer {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if is_transient(&status) && started.elapsed() < self.deadline => {
                    tracing::debug!("{}; locating the leader again", explain(&addr, &status));
                    tokio::time::sleep(ROUND_PAUSE).await;
                }
                Err(status) if is_transient(&status) => {
                    return Err(ClientError::Unreachable {
                        tried: addr.clone(),
                        last: explain(&addr, &status),
                    })
                }
                Err(status) => return Err(ClientError::Refused(status)),
            }
        }
    }

    /// Leader, term, controllers and groups: the leader's answer when a quorum confirms
    /// it, otherwise the freshest possibly stale view (`consistent: false`) of any
    /// controller that answered. Use [`AdminClient::confirmed_status`] to tell the two
    /// apart as an error.
    pub async fn status(&mut self) -> Result<StatusResponse, ClientError> {
        match self.confirmed_status().await {
            Ok((_, status)) => Ok(status),
            Err(ClientError::NoQuorum(no)) => Ok(no.view),
            Err(e) => Err(e),
        }
    }

    /// Starts making `site` active for `group` (with `wait`: returns once it is).
    pub async fn promote(
        &mut self,
        request: PromoteRequest,
    ) -> Result<PromoteResponse, ClientError> {
        let wait = request.wait;
        self.call_waiting(wait, |mut c| {
            let request = request.clone();
            async move { c.promote(request).await }
        })
        .await
    }

    /// Starts demoting `group`'s active site to none (with `wait`: returns once done).
    pub async fn demote(&mut self, request: DemoteRequest) -> Result<PromoteResponse, ClientError> {
        let wait = request.wait;
        self.call_waiting(wait, |mut c| {
            let request = request.clone();
            async move { c.demote(request).await }
        })
        .await
    }

    /// A call that, with `wait`, may last as long as an old site's drain: up to a TTL
    /// and more, so its one attempt gets the longer bound.
    async fn call_waiting<T, F, Fut>(&mut self, wait: bool, f: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminServiceClient<Chan>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = if wait {
            PROMOTE_WAIT
        } else {
            self.attempt_timeout
        };
        self.call_within(timeout, f).await
    }

    /// Asks the executors of `site` for a rolling reload.
    pub async fn reload(&mut self, site: &str) -> Result<ReloadResponse, ClientError> {
        let site = site.to_owned();
        self.call(|mut c| {
            let request = ReloadRequest { site: site.clone() };
            async move { c.reload(request).await }
        })
        .await
    }

    /// Every lease, or those of `group`.
    pub async fn leases(&mut self, group: &str) -> Result<LeasesResponse, ClientError> {
        let group = group.to_owned();
        self.call(|mut c| {
            let request = LeasesRequest {
                group: group.clone(),
                allow_stale: false,
            };
            async move { c.leases(request).await }
        })
        .await
    }

    /// Every change of active site, oldest first; `group` empty for all groups.
    pub async fn history(&mut self, group: &str) -> Result<HistoryResponse, ClientError> {
        self.history_page(group, 0, 0).await
    }

    /// The newest `limit` entries (0: all) completed before `before_unix_ms` (0: no
    /// bound) of the history, oldest first; `group` empty for all groups.
    pub async fn history_page(
        &mut self,
        group: &str,
        limit: u32,
        before_unix_ms: u64,
    ) -> Result<HistoryResponse, ClientError> {
        let group = group.to_owned();
        self.call(|mut c| {
            let request = HistoryRequest {
                group: group.clone(),
                allow_stale: false,
                limit,
                before_unix_ms,
            };
            async move { c.history(request).await }
        })
        .await
    }

    /// Pauses automatic failover of a group (`group` empty: of every group).
    pub async fn pause(&mut self, request: PauseRequest) -> Result<PauseResponse, ClientError> {
        self.call(|mut c| {
            let request = request.clone();
            async move { c.pause(request).await }
        })
        .await
    }

    /// Ends a pause of a group (`group` empty: of every group).
    pub async fn resume(&mut self, request: ResumeRequest) -> Result<PauseResponse, ClientError> {
        self.call(|mut c| {
            let request = request.clone();
            async move { c.resume(request).await }
        })
        .await
    }

    /// The history as controller `addr` has it locally, without a quorum: possibly stale.
    pub async fn stale_history(
        &self,
        addr: &str,
        group: &str,
    ) -> Result<HistoryResponse, ClientError> {
        self.stale_history_page(addr, group, 0).await
    }

    /// Like [`AdminClient::stale_history`], only the newest `limit` entries (0: all).
    pub async fn stale_history_page(
        &self,
        addr: &str,
        group: &str,
        limit: u32,
    ) -> Result<HistoryResponse, ClientError> {
        let request = HistoryRequest {
            group: group.to_owned(),
            allow_stale: true,
            limit,
            before_unix_ms: 0,
        };
        self.once(addr, |mut c| async move { c.history(request).await })
            .await
    }

    /// The leases as controller `addr` has them locally, without a quorum: possibly
    /// stale, and without time left (only a leader knows it).
    pub async fn stale_leases(
        &self,
        addr: &str,
        group: &str,
    ) -> Result<LeasesResponse, ClientError> {
        let request = LeasesRequest {
            group: group.to_owned(),
            allow_stale: true,
        };
        self.once(addr, |mut c| async move { c.leases(request).await })
            .await
    }

    /// One call to one controller, no retry.
    async fn once<T, F, Fut>(&self, addr: &str, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(AdminServiceClient<Chan>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self
            .dialer
            .channel(addr)
            .map_err(|e| ClientError::Unreachable {
                tried: addr.to_owned(),
                last: e.to_string(),
            })?;
        match tokio::time::timeout(
            self.attempt_timeout,
            f(failover_proto::wire::admin_client(channel)),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) if is_transient(&status) => Err(ClientError::Unreachable {
                tried: addr.to_owned(),
                last: explain(addr, &status),
            }),
            Ok(Err(status)) => Err(ClientError::Refused(status)),
            Err(_) => Err(ClientError::Unreachable {
                tried: addr.to_owned(),
                last: format!("{addr}: no answer within {:?}", self.attempt_timeout),
            }),
        }
    }
}

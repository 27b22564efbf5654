//! The admin API the CLI speaks: status, promote, history.
//!
//! Any controller answers. Requests that need the leader (promote, and status and history,
//! which should reflect the leader's view) are forwarded to it once; a forwarded request
//! is always answered where it lands, so forwarding cannot loop.

use std::sync::Arc;
use std::time::Duration;

use failover_core::leader::change::{self, ChangePlan};
use failover_core::promotion;
use failover_core::{ChangeKind, Command, GroupName, GroupState, Rejection, SiteId};
use failover_proto::admin::admin_service_client::AdminServiceClient;
use failover_proto::admin::admin_service_server::AdminService;
use failover_proto::admin::{
    AllowRejoinRequest, AllowRejoinResponse, ControllerStatus, DemoteRequest, ExecutorStatus,
    GroupStatus, HistoryEntry, HistoryRequest, HistoryResponse, LeaseStatus, LeasesRequest,
    LeasesResponse, PauseRequest, PauseResponse, PromoteRequest, PromoteResponse, ReloadRequest,
    ReloadResponse, ResumeRequest, SiteStatus, StatusRequest, StatusResponse,
};
use failover_proto::types::{ExecutorState, LeaseState};
use failover_proto::wire::{
    self, group_status, history_entry, pause_entry, FORWARDED_HEADER as FORWARDED,
};
use openraft::ReadPolicy;
use tonic::{Request, Response, Status};

use super::{propose, NodeContext, ProposeError};
use crate::hooks::HookEnv;

/// How long a promote waits for the new site to become active.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a status waits for a quorum before answering from the local view. A healthy
/// leader confirms within a few heartbeats; the CLI waits a little longer than this plus
/// [`FORWARD_TIMEOUT`] for answers (docs/cli.md, "Time bounds").
const STATUS_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a follower waits for the leader's status before answering from its own view
/// (a frozen leader accepts connections and never answers).
const FORWARD_TIMEOUT: Duration = Duration::from_millis(2500);

/// Serves the admin API.
pub struct AdminServer {
    ctx: Arc<NodeContext>,
}

impl AdminServer {
    /// A server over the controller's shared context.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        AdminServer { ctx }
    }

    /// The leader's client, when this controller should forward the request instead of
    /// answering it. `Ok(None)` means: answer here.
    fn forward_target<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<AdminServiceClient<tonic::transport::Channel>>, Status> {
        if self.ctx.raft.is_leader() || request.metadata().contains_key(FORWARDED) {
            return Ok(None);
        }
        let Some((_, addr)) = self.ctx.leader() else {
            return Err(Status::unavailable(
                "no leader is elected yet; retry shortly",
            ));
        };
        let channel = self
            .ctx
            .dialer
            .channel(&addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Some(wire::admin_client(channel)))
    }
}

fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    crate::auth::forward_caller(&mut request);
    request
}

/// The gRPC status for a command the state refused.
pub fn rejection_status(rejection: &Rejection) -> Status {
    let message = rejection.to_string();
    match rejection {
        Rejection::UnknownGroup(_) => Status::not_found(message),
        Rejection::UnknownSite { .. } | Rejection::NoSites(_) => Status::invalid_argument(message),
        Rejection::AlreadyActive { .. } | Rejection::GroupExists(_) => {
            Status::already_exists(message)
        }
        Rejection::PromotionInProgress { .. }
        | Rejection::Paused { .. }
        | Rejection::AlreadyPaused { .. }
        | Rejection::NotPaused(_)
        | Rejection::NoActiveSite(_)
        | Rejection::NoPendingPromotion { .. }
        | Rejection::Standby { .. } => Status::failed_precondition(message),
        Rejection::UnknownLease { .. } => Status::not_found(message),
        Rejection::TooManyLeases { .. } => Status::resource_exhausted(message),
    }
}

impl AdminServer {
    fn local_status(&self) -> StatusResponse {
        let metrics = self.ctx.metrics();
        let leader = metrics.current_leader.unwrap_or(0);
        let now = self.ctx.clock.now();
        let controllers = self
            .ctx
            .topology
            .controllers()
            .map(|(site, c)| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&c.id).cloned().flatten())
                    .map_or(0, |id| id.index);
                let is_self = c.id == self.ctx.node_id;
                let reachable = self.ctx.reachable(&metrics, c.id, now);
                let role = if c.id == leader {
                    "leader"
                } else if metrics.heartbeat.is_none() {
                    // Not the leader: this controller cannot see the others' health.
                    if is_self {
                        "follower"
                    } else {
                        "unknown"
                    }
                } else if reachable {
                    "follower"
                } else {
                    "unreachable"
                };
                ControllerStatus {
                    id: c.id,
                    site: site.to_string(),
                    addr: c.addr.clone(),
                    role: role.to_owned(),
                    reachable,
                    matched_index: matched,
                }
            })
            .collect();
        let sites = self.site_statuses();
        let lost: Vec<&str> = sites
            .iter()
            .filter(|s| s.lost)
            .map(|s| s.name.as_str())
            .collect();
        let groups = self
            .ctx
            .view
            .read()
            .groups
            .values()
            .map(|g| GroupStatus {
                held: self.ctx.held(&g.name).unwrap_or_default(),
                lost_sites: g
                    .sites
                    .iter()
                    .filter(|s| lost.contains(&s.as_str()))
                    .map(ToString::to_string)
                    .collect(),
                ..group_status(g)
            })
            .collect();
        StatusResponse {
            leader,
            term: metrics.current_term,
            controllers,
            groups,
            answered_by: self.ctx.node_id,
            consistent: false,
            sites,
        }
    }

    fn site_statuses(&self) -> Vec<SiteStatus> {
        let now = self.ctx.clock.now();
        let observed = self
            .ctx
            .leases
            .leader_since()
            .map(|since| crate::detector::observe(&self.ctx, since, now));
        let timing = &self.ctx.topology.timing;
        let stale_after = crate::executors::stale_after(timing);
        // Lock order everywhere: the state view, then the lease manager.
        let state = self.ctx.view.read();
        self.ctx
            .topology
            .sites
            .iter()
            .map(|site| SiteStatus {
                lost: observed
                    .as_ref()
                    .is_some_and(|o| o.site_lost(&site.name, timing, now)),
                last_heard_ms: observed
                    .as_ref()
                    .and_then(|o| o.sites.get(&site.name)?.last_heard)
                    .map_or(0, |at| now.saturating_duration_since(at).as_millis() as u64),
                name: site.name.to_string(),
                executors: self
                    .ctx
                    .executors
                    .site(site.name.as_str(), now)
                    .into_iter()
                    .map(|(age, report)| {
                        let lease = held_lease(&state, &report).map(|lease| LeaseSeen {
                            fencing_value: lease.epoch.0,
                            expires_in: self
                                .ctx
                                .leases
                                .with_leader(|l| l.expires_at(lease.id))
                                .flatten()
                                .map(|at| signed_until(now, at)),
                        });
                        let stale = crate::executors::is_stale(age, stale_after);
                        let ttl = self.ctx.leases.timing().leader_expiry();
                        let view = executor_view(&report, age, stale, lease, ttl);
                        ExecutorStatus {
                            report: Some(report),
                            last_seen_ms: age.as_millis() as u64,
                            stale,
                            stale_after_ms: stale_after.as_millis() as u64,
                            forget_after_ms: crate::executors::FORGET_AFTER.as_millis() as u64,
                            state: view.state.into(),
                            lease_left_ms: view.lease_left_ms,
                            fenced_for_ms: view.fenced_for_ms,
                            fencing_value: view.fencing_value,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// Confirms leadership with a quorum and waits until the state machine has applied
    /// everything committed before this call, so the read that follows is linearizable.
    async fn linearize(&self, timeout: Duration) -> Result<(), Status> {
        let read = self.ctx.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "cannot confirm leadership: {e}"
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "no quorum confirmed leadership within {timeout:?}"
            ))),
        }
    }

    /// Waits until the group settles at `target` (`None`: no active site) at an epoch
    /// after `from_epoch`.
    async fn wait_for(
        &self,
        group: &GroupName,
        target: Option<&SiteId>,
        from_epoch: failover_core::Epoch,
    ) -> Result<GroupState, Status> {
        let mut changes = self.ctx.view.subscribe();
        let wait = async {
            loop {
                let current = self.ctx.view.read().group(group).cloned();
                let current = current.map_err(|r| rejection_status(&r))?;
                if current.epoch > from_epoch && current.pending().is_none() {
                    if current.active_site.as_ref() == target {
                        return Ok(current);
                    }
                    return Err(Status::aborted(format!(
                        "group {group} settled at {} (epoch {}) instead",
                        promotion::site_name(current.active_site.as_ref()),
                        current.epoch
                    )));
                }
                if changes.changed().await.is_err() {
                    return Err(Status::unavailable("controller is shutting down"));
                }
            }
        };
        tokio::time::timeout(PROMOTE_TIMEOUT, wait)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "group {group} did not reach {} within {PROMOTE_TIMEOUT:?}",
                    promotion::site_name(target)
                ))
            })?
    }

    /// Refuses a plain promote to a site whose executors do not report ready, when the
    /// group has executors at all (`--force` skips this), then runs its hook.
    async fn check_target(
        &self,
        group: &GroupState,
        site: &SiteId,
        force: bool,
    ) -> Result<(), Status> {
        let now = self.ctx.clock.now();
        let observed = self
            .ctx
            .leases
            .leader_since()
            .map(|since| crate::detector::observe(&self.ctx, since, now));
        change::check_ready(observed.as_ref(), &group.name, site, force)
            .map_err(|not_ready| Status::failed_precondition(not_ready.to_string()))?;
        let env = HookEnv {
            group: group.name.to_string(),
            site: site.to_string(),
            epoch: group.epoch.0,
            reason: "operator promote".into(),
        };
        let hooks = self.ctx.topology.hooks(site.as_str());
        crate::hooks::before_acquire(&hooks, &env)
            .await
            .map_err(|veto| {
                Status::failed_precondition(format!("promotion to {site} vetoed: {veto}"))
            })
    }

    /// Starts (or joins) a change of `group` to `target` and answers at once or, with
    /// `wait`, when it completed.
    async fn change(
        &self,
        group: GroupName,
        target: Option<SiteId>,
        request: ChangeRequest,
    ) -> Result<PromoteResponse, Status> {
        let started = self.ctx.clock.now();
        let current = self.ctx.view.read().group(&group).cloned();
        let current = current.map_err(|r| rejection_status(&r))?;
        match change::plan_change(&current, target.as_ref()) {
            ChangePlan::Start => {
                if let Some(site) = &target {
                    self.check_target(&current, site, request.kind == ChangeKind::ForcedPromote)
                        .await?;
                }
                let at_unix_ms = self.ctx.clock.unix_ms();
                let command = match &target {
                    Some(site) => Command::BeginPromotion {
                        group: group.clone(),
                        to: site.clone(),
                        kind: request.kind,
                        actor: request.actor,
                        reason: request.reason,
                        at_unix_ms,
                    },
                    None => Command::BeginDemotion {
                        group: group.clone(),
                        actor: request.actor,
                        reason: request.reason,
                        at_unix_ms,
                    },
                };
                propose(&self.ctx, command)
                    .await
                    .map_err(ProposeError::into_status)?;
                self.ctx.reconcile.notify_one();
            }
            ChangePlan::AlreadyThere => {
                return Ok(PromoteResponse {
                    group: Some(group_status(&current)),
                    already_active: true,
                    elapsed_ms: 0,
                    completes_within_ms: 0,
                });
            }
            ChangePlan::Join => {}
            ChangePlan::Refuse(rejection) => return Err(rejection_status(&rejection)),
        }
        if !request.wait {
            return self.started_answer(&group, started);
        }
        let done = self
            .wait_for(&group, target.as_ref(), current.epoch)
            .await?;
        Ok(PromoteResponse {
            group: Some(group_status(&done)),
            already_active: false,
            elapsed_ms: self
                .ctx
                .clock
                .now()
                .saturating_duration_since(started)
                .as_millis() as u64,
            completes_within_ms: 0,
        })
    }

    /// The answer to a change that was started and not waited for: the group now, and
    /// the latest time by which the old site's leases are certainly gone.
    fn started_answer(
        &self,
        group: &GroupName,
        started: std::time::Instant,
    ) -> Result<PromoteResponse, Status> {
        let now = self.ctx.clock.now();
        // Lock order everywhere: the state view, then the lease manager.
        let state = self.ctx.view.read();
        let view = state
            .group(group)
            .cloned()
            .map_err(|r| rejection_status(&r))?;
        let within = self
            .ctx
            .leases
            .with_leader(|l| {
                l.observe(&state, now);
                l.drain_deadline(group)
            })
            .flatten()
            .map_or(0, |deadline| {
                crate::leases::until(now, deadline).as_millis() as u64
            });
        Ok(PromoteResponse {
            group: Some(group_status(&view)),
            already_active: false,
            elapsed_ms: now.saturating_duration_since(started).as_millis() as u64,
            completes_within_ms: within,
        })
    }
}

impl AdminServer {
    /// Pauses (`paused`) or resumes automatic failover of `group` (empty: every group),
    /// one replicated command per group; groups already in that state are left alone and
    /// listed as unchanged.
    async fn set_pause(
        &self,
        group: Option<GroupName>,
        paused: bool,
        actor: String,
        reason: String,
    ) -> Result<PauseResponse, Status> {
        let names: Vec<GroupName> = {
            let state = self.ctx.view.read();
            match group {
                None => state.groups.keys().cloned().collect(),
                Some(name) => {
                    state.group(&name).map_err(|r| rejection_status(&r))?;
                    vec![name]
                }
            }
        };
        let mut unchanged = Vec::new();
        for name in &names {
            let at_unix_ms = self.ctx.clock.unix_ms();
            let command = if paused {
                Command::Pause {
                    group: name.clone(),
                    actor: actor.clone(),
                    reason: reason.clone(),
                    at_unix_ms,
                }
            } else {
                Command::Resume {
                    group: name.clone(),
                    actor: actor.clone(),
                    reason: reason.clone(),
                    at_unix_ms,
                }
            };
            match propose(&self.ctx, command).await {
                Ok(_) => {
                    tracing::info!(group = %name, %actor, %reason, paused, "automatic failover {}",
                        if paused { "paused" } else { "resumed" });
                }
                Err(ProposeError::Rejected(
                    Rejection::AlreadyPaused { .. } | Rejection::NotPaused(_),
                )) => unchanged.push(name.to_string()),
                Err(e) => return Err(e.into_status()),
            }
        }
        // A resume may let a held-back failover go at once.
        self.ctx.reconcile.notify_one();
        let state = self.ctx.view.read();
        let groups = names
            .iter()
            .filter_map(|n| state.groups.get(n))
            .map(|g| GroupStatus {
                held: self.ctx.held(&g.name).unwrap_or_default(),
                ..group_status(g)
            })
            .collect();
        Ok(PauseResponse { groups, unchanged })
    }
}

/// What the leader knows of the lease an executor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseSeen {
    /// Its fencing value (the epoch).
    fencing_value: u64,
    /// Milliseconds until the leader may treat it as expired (negative: since it may);
    /// `None` before this leader observed it.
    expires_in: Option<i64>,
}

/// An executor as `failover status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExecutorView {
    state: ExecutorState,
    lease_left_ms: u64,
    fenced_for_ms: u64,
    fencing_value: u64,
}

/// The newest lease in `state` held by the executor that sent `report`.
fn held_lease<'a>(
    state: &'a failover_core::ClusterState,
    report: &failover_proto::executor::ExecutorReport,
) -> Option<&'a failover_core::Lease> {
    let group = state.groups.get(&GroupName(report.group.clone()))?;
    let id = group.holders.get(&report.executor_id)?;
    group.leases.get(id)
}

/// Milliseconds from `now` to `at`, negative when `at` has passed.
fn signed_until(now: std::time::Instant, at: std::time::Instant) -> i64 {
    match at.checked_duration_since(now) {
        Some(left) => left.as_millis() as i64,
        None => -(now.saturating_duration_since(at).as_millis() as i64),
    }
}

/// The state of an executor as the leader knows it, from its last report (sent `age`
/// ago), whether it is stale, and its lease in the replicated state (`None` when it
/// holds none there). The report alone can mislead: a frozen executor's last report
/// says "acquired" with running workers long after its guards stopped them. So:
/// - a lease whose leader-side deadline passed means fenced, whatever the report says;
/// - an executor that claims a lease the state no longer has is fenced (the leader
///   expired the lease once its deadline passed, or it released it after its workers
///   stopped); its deadline was at most `expiry` after its last report;
/// - a stale executor holding nothing is silent;
/// - otherwise its own word (holding while its lease lives).
fn executor_view(
    report: &failover_proto::executor::ExecutorReport,
    age: Duration,
    stale: bool,
    lease: Option<LeaseSeen>,
    expiry: Duration,
) -> ExecutorView {
    // A report with an unknown lease state was refused when it arrived.
    let reported = report.lease_state();
    let claims = matches!(reported, LeaseState::Acquired | LeaseState::Draining);
    let mut view = ExecutorView {
        state: ExecutorState::Standby,
        lease_left_ms: 0,
        fenced_for_ms: 0,
        fencing_value: 0,
    };
    match lease {
        Some(lease) => {
            view.fencing_value = lease.fencing_value;
            match lease.expires_in {
                Some(left) if left <= 0 => {
                    view.state = ExecutorState::Fenced;
                    view.fenced_for_ms = left.unsigned_abs();
                }
                _ if stale => {
                    // Not observed yet by a new leader: it cannot say more than silent.
                    view.state = ExecutorState::Silent;
                }
                left => {
                    view.state = if reported == LeaseState::Draining {
                        ExecutorState::Draining
                    } else {
                        ExecutorState::Holding
                    };
                    view.lease_left_ms = left.map_or(0, |l| l as u64);
                }
            }
        }
        // Its lease is gone from the state: expired (its deadline passed) or released
        // (its workers stopped first). Either way it runs nothing.
        None if claims => {
            view.state = ExecutorState::Fenced;
            view.fencing_value = report.epoch;
            view.fenced_for_ms = age.saturating_sub(expiry).as_millis() as u64;
        }
        None if stale => view.state = ExecutorState::Silent,
        None => {
            view.state = match reported {
                LeaseState::Connecting => ExecutorState::Connecting,
                LeaseState::Lost => ExecutorState::Lost,
                LeaseState::Paused => ExecutorState::Paused,
                LeaseState::Standby
                | LeaseState::Acquired
                | LeaseState::Draining
                | LeaseState::Unspecified => ExecutorState::Standby,
            };
        }
    }
    view
}

/// Who asks for a change, why, and whether to wait for it.
struct ChangeRequest {
    kind: ChangeKind,
    actor: String,
    reason: String,
    wait: bool,
}

#[tonic::async_trait]
impl AdminService for AdminServer {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        if let Ok(Some(mut leader)) = self.forward_target(&request) {
            let forward = leader.status(forwarded(StatusRequest {}));
            if let Ok(Ok(response)) = tokio::time::timeout(FORWARD_TIMEOUT, forward).await {
                return Ok(response);
            }
        }
        let consistent =
            self.ctx.raft.is_leader() && self.linearize(STATUS_READ_TIMEOUT).await.is_ok();
        let mut status = self.local_status();
        status.consistent = consistent;
        Ok(Response::new(status))
    }

    async fn promote(
        &self,
        request: Request<PromoteRequest>,
    ) -> Result<Response<PromoteResponse>, Status> {
        // Bad input gets the same answer from every controller, before any forwarding.
        let req = wire::Promote::try_from(request.get_ref())?;
        if let Some(mut leader) = self.forward_target(&request)? {
            return leader.promote(forwarded(request.into_inner())).await;
        }
        let change = ChangeRequest {
            kind: wire::promote_kind(req.force),
            actor: crate::auth::actor(&req.actor),
            reason: req.reason,
            wait: req.wait,
        };
        let answer = self.change(req.group, Some(req.site), change).await?;
        Ok(Response::new(answer))
    }

    async fn demote(
        &self,
        request: Request<DemoteRequest>,
    ) -> Result<Response<PromoteResponse>, Status> {
        let req = wire::Demote::try_from(request.get_ref())?;
        if let Some(mut leader) = self.forward_target(&request)? {
            return leader.demote(forwarded(request.into_inner())).await;
        }
        let change = ChangeRequest {
            kind: ChangeKind::Demote,
            actor: crate::auth::actor(&req.actor),
            reason: req.reason,
            wait: req.wait,
        };
        Ok(Response::new(self.change(req.group, None, change).await?))
    }

    async fn pause(
        &self,
        request: Request<PauseRequest>,
    ) -> Result<Response<PauseResponse>, Status> {
        let req = wire::SetPause::try_from(request.get_ref())?;
        if let Some(mut leader) = self.forward_target(&request)? {
            return leader.pause(forwarded(request.into_inner())).await;
        }
        let answer = self
            .set_pause(req.group, true, crate::auth::actor(&req.actor), req.reason)
            .await?;
        Ok(Response::new(answer))
    }

    async fn resume(
        &self,
        request: Request<ResumeRequest>,
    ) -> Result<Response<PauseResponse>, Status> {
        let req = wire::SetPause::try_from(request.get_ref())?;
        if let Some(mut leader) = self.forward_target(&request)? {
            return leader.resume(forwarded(request.into_inner())).await;
        }
        let answer = self
            .set_pause(req.group, false, crate::auth::actor(&req.actor), req.reason)
            .await?;
        Ok(Response::new(answer))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let stale_ok = request.get_ref().allow_stale;
        wire::group_filter("group", &request.get_ref().group)?;
        if !stale_ok {
            if let Some(mut leader) = self.forward_target(&request)? {
                return leader.history(forwarded(request.into_inner())).await;
            }
        }
        let HistoryRequest {
            group: filter,
            limit,
            before_unix_ms,
            ..
        } = request.into_inner();
        if self.ctx.raft.is_leader() && !stale_ok {
            self.linearize(PROMOTE_TIMEOUT).await?;
        }
        // Per group, the windows in memory with the count of archived records below each:
        // every one of those is on disk once the lock was held (store::StateView).
        let windows: Vec<(GroupName, u64, u64, Vec<HistoryEntry>, Vec<HistoryEntry>)> = {
            let state = self.ctx.view.read();
            if !filter.is_empty() {
                state
                    .group(&GroupName(filter.clone()))
                    .map_err(|r| rejection_status(&r))?;
            }
            state
                .groups
                .values()
                .filter(|g| filter.is_empty() || g.name.as_str() == filter)
                .map(|g| {
                    (
                        g.name.clone(),
                        g.history_archived,
                        g.pause_history_archived,
                        g.history.iter().map(|h| history_entry(g, h)).collect(),
                        g.pause_history.iter().map(|p| pause_entry(g, p)).collect(),
                    )
                })
                .collect()
        };
        // Changes of every group, then pause events, each oldest first: the stable sort
        // below keeps that order among entries of the same millisecond.
        let mut changes = Vec::new();
        let mut pauses = Vec::new();
        for (name, archived_changes, archived_pauses, window, pause_window) in windows {
            if archived_changes + archived_pauses > 0 {
                let (old_changes, old_pauses) = self
                    .ctx
                    .view
                    .archived_history(&name, archived_changes, archived_pauses)
                    .map_err(|e| {
                        Status::internal(format!("cannot read the history of {name}: {e}"))
                    })?;
                let state = self.ctx.view.read();
                let g = state.group(&name).map_err(|r| rejection_status(&r))?;
                changes.extend(old_changes.iter().map(|h| history_entry(g, h)));
                pauses.extend(old_pauses.iter().map(|p| pause_entry(g, p)));
            }
            changes.extend(window);
            pauses.extend(pause_window);
        }
        let mut entries = changes;
        entries.append(&mut pauses);
        if before_unix_ms > 0 {
            entries.retain(|e| e.completed_at_unix_ms < before_unix_ms);
        }
        entries.sort_by_key(|e| (e.completed_at_unix_ms, e.group.clone(), e.epoch));
        if limit > 0 {
            let skip = entries.len().saturating_sub(limit as usize);
            entries.drain(..skip);
        }
        Ok(Response::new(HistoryResponse { entries }))
    }

    async fn leases(
        &self,
        request: Request<LeasesRequest>,
    ) -> Result<Response<LeasesResponse>, Status> {
        wire::group_filter("group", &request.get_ref().group)?;
        if !request.get_ref().allow_stale {
            if let Some(mut leader) = self.forward_target(&request)? {
                return leader.leases(forwarded(request.into_inner())).await;
            }
        }
        let filter = request.into_inner().group;
        let now = self.ctx.clock.now();
        let state = self.ctx.view.read();
        if !filter.is_empty() {
            state
                .group(&GroupName(filter.clone()))
                .map_err(|r| rejection_status(&r))?;
        }
        let leases = state
            .groups
            .values()
            .filter(|g| filter.is_empty() || g.name.as_str() == filter)
            .flat_map(|g| g.leases.values().map(move |l| (g, l)))
            .map(|(g, l)| LeaseStatus {
                group: g.name.to_string(),
                lease_id: l.id.0,
                site: l.site.to_string(),
                holder: l.holder.clone(),
                epoch: l.epoch.0,
                fencing_token: l.token.0,
                ttl_left_ms: self
                    .ctx
                    .leases
                    .with_leader(|leader| {
                        let last = leader.last_renewal(l.id)?;
                        let left = crate::leases::until(now, last + leader.timing().ttl);
                        Some(left.as_millis() as u64)
                    })
                    .flatten()
                    .unwrap_or(0),
            })
            .collect();
        Ok(Response::new(LeasesResponse { leases }))
    }

    async fn reload(
        &self,
        request: Request<ReloadRequest>,
    ) -> Result<Response<ReloadResponse>, Status> {
        wire::site("site", &request.get_ref().site)?;
        if let Some(mut leader) = self.forward_target(&request)? {
            return leader.reload(forwarded(request.into_inner())).await;
        }
        let site = request.into_inner().site;
        if self.ctx.topology.site(&site).is_none() {
            return Err(Status::not_found(format!("unknown site `{site}`")));
        }
        let generation = self
            .ctx
            .executors
            .request_reload(&site, self.ctx.clock.unix_ms());
        Ok(Response::new(ReloadResponse { generation }))
    }

    async fn allow_rejoin(
        &self,
        request: Request<AllowRejoinRequest>,
    ) -> Result<Response<AllowRejoinResponse>, Status> {
        if let Some(mut leader) = self.forward_target(&request)? {
            return leader.allow_rejoin(forwarded(request.into_inner())).await;
        }
        let node = request.into_inner().node_id;
        if node == self.ctx.node_id || self.ctx.topology.controller(node).is_none() {
            return Err(Status::invalid_argument(format!(
                "controller {node} cannot rejoin through controller {}",
                self.ctx.node_id
            )));
        }
        match self.ctx.raft.trigger().allow_next_revert(&node, true).await {
            Ok(Ok(())) => {
                tracing::warn!(
                    controller = node,
                    "controller rejoins with an empty log; replicating to it from the start"
                );
                Ok(Response::new(AllowRejoinResponse {
                    leader: self.ctx.node_id,
                }))
            }
            Ok(Err(e)) => Err(Status::unavailable(e.to_string())),
            Err(fatal) => Err(Status::internal(fatal.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_proto::executor::ExecutorReport;

    const EXPIRY: Duration = Duration::from_millis(3750);

    fn report(lease_state: LeaseState) -> ExecutorReport {
        ExecutorReport {
            executor_id: "e".into(),
            group: "g".into(),
            lease_state: lease_state.into(),
            epoch: 4,
            ..ExecutorReport::default()
        }
    }

    fn lease(expires_in: Option<i64>) -> Option<LeaseSeen> {
        Some(LeaseSeen {
            fencing_value: 4,
            expires_in,
        })
    }

    /// A live lease is holding with its time left; past its deadline it is fenced with
    /// the time since, whatever the (frozen) executor last reported.
    #[test]
    fn lease_deadline_decides_holding_or_fenced() {
        let ms = Duration::from_millis;
        let v = executor_view(
            &report(LeaseState::Acquired),
            ms(100),
            false,
            lease(Some(2000)),
            EXPIRY,
        );
        assert_eq!(
            (v.state, v.lease_left_ms, v.fencing_value),
            (ExecutorState::Holding, 2000, 4)
        );
        let v = executor_view(
            &report(LeaseState::Draining),
            ms(100),
            false,
            lease(Some(5)),
            EXPIRY,
        );
        assert_eq!(v.state, ExecutorState::Draining);
        let v = executor_view(
            &report(LeaseState::Acquired),
            ms(5000),
            true,
            lease(Some(-1250)),
            EXPIRY,
        );
        assert_eq!(
            (v.state, v.fenced_for_ms, v.lease_left_ms),
            (ExecutorState::Fenced, 1250, 0)
        );
        let v = executor_view(
            &report(LeaseState::Acquired),
            ms(5000),
            true,
            lease(Some(0)),
            EXPIRY,
        );
        assert_eq!(v.state, ExecutorState::Fenced);
    }

    /// Once the leader expired the lease, an executor still claiming it is fenced (the
    /// deadline was at most the expiry after its last report); a silent one holding
    /// nothing is silent, a live one without a lease standby.
    #[test]
    fn without_a_lease_a_claim_is_fenced() {
        let ms = Duration::from_millis;
        let v = executor_view(&report(LeaseState::Acquired), ms(6000), true, None, EXPIRY);
        assert_eq!(
            (v.state, v.fenced_for_ms, v.fencing_value),
            (ExecutorState::Fenced, 2250, 4)
        );
        let v = executor_view(&report(LeaseState::Standby), ms(6000), true, None, EXPIRY);
        assert_eq!(v.state, ExecutorState::Silent);
        let v = executor_view(&report(LeaseState::Standby), ms(100), false, None, EXPIRY);
        assert_eq!((v.state, v.fencing_value), (ExecutorState::Standby, 0));
        let v = executor_view(
            &report(LeaseState::Connecting),
            ms(100),
            false,
            None,
            EXPIRY,
        );
        assert_eq!(v.state, ExecutorState::Connecting);
    }
}

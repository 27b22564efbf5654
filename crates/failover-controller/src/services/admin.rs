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
    AllowRejoinRequest, AllowRejoinResponse, DemoteRequest, GroupStatus, HistoryEntry,
    HistoryRequest, HistoryResponse, LeasesRequest, LeasesResponse, PauseRequest, PauseResponse,
    PromoteRequest, PromoteResponse, ReloadRequest, ReloadResponse, ResumeRequest, StatusRequest,
    StatusResponse,
};
use failover_proto::wire::{
    self, group_status, history_entry, pause_entry, FORWARDED_HEADER as FORWARDED,
};
use openraft::ReadPolicy;
use tonic::{Request, Response, Status};

use super::{propose, status, NodeContext, ProposeError};
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
    ) -> Result<Option<AdminServiceClient<failover_proto::wire::Chan>>, Status> {
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
        | Rejection::ClusterIdSet(_)
        | Rejection::NoActiveSite(_)
        | Rejection::NoPendingPromotion { .. }
        | Rejection::Standby { .. } => Status::failed_precondition(message),
        Rejection::UnknownLease { .. } => Status::not_found(message),
        Rejection::TooManyLeases { .. } => Status::resource_exhausted(message),
    }
}

impl AdminServer {
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
        let mut status = status::local_status(&self.ctx);
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
        // below keeps that order among entries of the same millisecond. Only what the
        // answer can hold is read from the archive: per group and kind, the newest
        // `limit` records before `before_unix_ms`, less those the window already has
        // (the records of one kind complete in the order they were appended).
        let limit = limit as usize;
        let before = |at: u64| before_unix_ms == 0 || at < before_unix_ms;
        let mut changes = Vec::new();
        let mut pauses = Vec::new();
        for (name, archived_changes, archived_pauses, mut window, mut pause_window) in windows {
            window.retain(|e| before(e.completed_at_unix_ms));
            pause_window.retain(|e| before(e.completed_at_unix_ms));
            let wanted = |held: usize| {
                if limit == 0 {
                    Some(0)
                } else {
                    limit.checked_sub(held).filter(|n| *n > 0)
                }
            };
            let read_error = |e: std::io::Error| {
                Status::internal(format!("cannot read the history of {name}: {e}"))
            };
            let view = &self.ctx.view;
            let old_changes = match wanted(window.len()) {
                Some(n) if archived_changes > 0 => view
                    .archived_changes_page(&name, archived_changes, n, before_unix_ms)
                    .map_err(read_error)?,
                _ => Vec::new(),
            };
            let old_pauses = match wanted(pause_window.len()) {
                Some(n) if archived_pauses > 0 => view
                    .archived_pauses_page(&name, archived_pauses, n, before_unix_ms)
                    .map_err(read_error)?,
                _ => Vec::new(),
            };
            if !old_changes.is_empty() || !old_pauses.is_empty() {
                let state = view.read();
                let g = state.group(&name).map_err(|r| rejection_status(&r))?;
                changes.extend(old_changes.iter().map(|h| history_entry(g, h)));
                pauses.extend(old_pauses.iter().map(|p| pause_entry(g, p)));
            }
            changes.extend(window);
            pauses.extend(pause_window);
        }
        let mut entries = changes;
        entries.append(&mut pauses);
        entries.sort_by_key(|e| (e.completed_at_unix_ms, e.group.clone(), e.epoch));
        if limit > 0 {
            let skip = entries.len().saturating_sub(limit);
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
        let leases = status::lease_statuses(&self.ctx, &state, &filter, now);
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

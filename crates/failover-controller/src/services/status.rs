//! The status views the admin service answers with: controllers, groups, sites, the
//! executors of each site and the leases, built from this controller's applied state, its
//! Raft metrics, the failure detector and the executor reports. The RPC handlers in
//! [`super::admin`] decide where a request is answered; this module only presents.

use std::time::Duration;

use failover_core::{ClusterState, GroupName};
use failover_proto::admin::{
    ControllerStatus, ExecutorStatus, GroupStatus, LeaseStatus, SiteStatus, StatusResponse,
};
use failover_proto::types::{ExecutorState, LeaseState};
use failover_proto::wire::group_status;

use super::NodeContext;

/// This controller's view of the cluster, as `failover status` shows it: controllers,
/// groups, sites and their executors.
pub(crate) fn local_status(ctx: &NodeContext) -> StatusResponse {
    let metrics = ctx.metrics();
    let leader = metrics.current_leader.unwrap_or(0);
    let now = ctx.clock.now();
    let controllers = ctx
        .topology
        .controllers()
        .map(|(site, c)| {
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&c.id).cloned().flatten())
                .map_or(0, |id| id.index);
            let is_self = c.id == ctx.node_id;
            let reachable = ctx.reachable(&metrics, c.id, now);
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
    let sites = site_statuses(ctx);
    let lost: Vec<&str> = sites
        .iter()
        .filter(|s| s.lost)
        .map(|s| s.name.as_str())
        .collect();
    let groups = ctx
        .view
        .read()
        .groups
        .values()
        .map(|g| GroupStatus {
            held: ctx.held(&g.name).unwrap_or_default(),
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
        answered_by: ctx.node_id,
        consistent: false,
        sites,
        cluster_id: ctx.view.read().cluster_id.clone().unwrap_or_default(),
    }
}

/// Every site with its failure-detector verdict and its executors.
fn site_statuses(ctx: &NodeContext) -> Vec<SiteStatus> {
    let now = ctx.clock.now();
    let observed = ctx
        .leases
        .leader_since()
        .map(|since| crate::detector::observe(ctx, since, now));
    let timing = &ctx.topology.timing;
    let stale_after = crate::executors::stale_after(timing);
    // Lock order everywhere: the state view, then the lease manager.
    let state = ctx.view.read();
    ctx.topology
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
            executors: ctx
                .executors
                .site(site.name.as_str(), now)
                .into_iter()
                .map(|(age, report)| {
                    let lease = held_lease(&state, &report).map(|lease| LeaseSeen {
                        fencing_value: lease.epoch.0,
                        expires_in: ctx
                            .leases
                            .with_leader(|l| l.expires_at(lease.id))
                            .flatten()
                            .map(|at| signed_until(now, at)),
                    });
                    let stale = crate::executors::is_stale(age, stale_after);
                    let ttl = ctx.leases.timing().leader_expiry();
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

/// The live leases of the groups `filter` names (empty: every group), with the time each
/// has left as this controller's leader counts it (0 on a follower).
pub(crate) fn lease_statuses(
    ctx: &NodeContext,
    state: &ClusterState,
    filter: &str,
    now: std::time::Instant,
) -> Vec<LeaseStatus> {
    state
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
            ttl_left_ms: ctx
                .leases
                .with_leader(|leader| {
                    let last = leader.last_renewal(l.id)?;
                    let left = crate::leases::until(now, last + leader.timing().ttl);
                    Some(left.as_millis() as u64)
                })
                .flatten()
                .unwrap_or(0),
        })
        .collect()
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

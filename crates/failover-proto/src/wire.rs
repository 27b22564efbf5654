//! The one typed boundary between the wire (the generated proto types) and the core's
//! types. Every conversion in either direction lives here, so the controller, the client
//! library, the executor and the CLI never re-derive a phase from a string, never spell
//! "no site" their own way, and never carry a bare `u64` where the core has a newtype.
//!
//! Inbound messages are validated by `TryFrom`: a field that is too long, empty where it
//! is required, an enum value this build does not know, or a number outside its bound is
//! a [`WireError`] naming the field, which the services answer with `INVALID_ARGUMENT`
//! before anything is proposed. Outbound conversions cannot fail.

use std::time::Duration;

use failover_core::lease::RenewRefusal;
use failover_core::state::ChangeKind;
use failover_core::{
    Epoch, FencingToken, FencingValue, GroupName, GroupState, LeaseId, PauseEvent, Phase, SiteId,
};

use crate::{admin, executor, lease, types};

/// The channel every generated client of this workspace runs on: a tonic `Channel` that
/// carries the cluster id (and a bearer token) on every call and checks the id of every
/// answer ([`crate::pin`]). The one place the client type is chosen.
#[cfg(feature = "grpc")]
pub type Chan = crate::pin::PinnedChannel;

/// Metadata key carrying the leader's address on a not-leader answer; clients follow it.
pub const LEADER_HEADER: &str = "x-failover-leader";
/// The leader a not-leader answer names ([`LEADER_HEADER`]), if it names one.
#[cfg(feature = "grpc")]
pub fn leader_named(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Metadata key marking a request that a controller already forwarded to the leader.
pub const FORWARDED_HEADER: &str = "x-failover-forwarded";

/// Metadata key by which a lease client asks a follower to relay its keepalive stream to
/// the leader when it cannot reach the leader itself (docs/leases.md, "Relayed renewals");
/// without it a follower refuses the stream with the leader's address.
pub const RELAY_HEADER: &str = "x-failover-relay";

/// Metadata key carrying the cluster id, beside [`LEADER_HEADER`]; its home is the pinned
/// channel that sends and checks it.
#[cfg(feature = "grpc")]
pub use crate::pin::CLUSTER_HEADER;

/// Largest Raft message (both ways): snapshots travel whole, about 2,000,000 leases at
/// ~30 bytes each.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest request a controller decodes on the admin, lease and executor APIs. Every
/// request there is a handful of bounded fields (an executor report with
/// [`MAX_WORKERS`] workers is under 200 KiB), so anything larger is refused by tonic
/// with `OUT_OF_RANGE` before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest answer on the admin, lease and executor APIs (a lease listing of every lease
/// of a large cluster); clients decode up to this much.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// An admin client with the message bounds every client of this workspace uses.
#[cfg(feature = "grpc")]
pub fn admin_client(channel: Chan) -> admin::admin_service_client::AdminServiceClient<Chan> {
    admin::admin_service_client::AdminServiceClient::new(channel)
        .max_encoding_message_size(MAX_REQUEST_BYTES)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A lease client with the message bounds every client of this workspace uses.
#[cfg(feature = "grpc")]
pub fn lease_client(channel: Chan) -> lease::lease_service_client::LeaseServiceClient<Chan> {
    lease::lease_service_client::LeaseServiceClient::new(channel)
        .max_encoding_message_size(MAX_REQUEST_BYTES)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// An executor-report client with the message bounds every client of this workspace uses.
#[cfg(feature = "grpc")]
pub fn executor_client(
    channel: Chan,
) -> executor::executor_service_client::ExecutorServiceClient<Chan> {
    executor::executor_service_client::ExecutorServiceClient::new(channel)
        .max_encoding_message_size(MAX_REQUEST_BYTES)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A Raft client between controllers (snapshots travel whole).
#[cfg(feature = "grpc")]
pub fn raft_client(channel: Chan) -> crate::raft::raft_service_client::RaftServiceClient<Chan> {
    crate::raft::raft_service_client::RaftServiceClient::new(channel)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

/// Longest group, site, instance, executor or actor name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest free-text reason (promote, demote, pause), in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest free-text message in a report, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most workers one executor report may list.
pub const MAX_WORKERS: usize = 1024;
/// Longest TTL or interval a grant may carry (one day): a holder given more would keep
/// its workers past any outage the cluster can reason about.
pub const MAX_GRANT_MS: u64 = 24 * 60 * 60 * 1000;

/// An inbound message that does not satisfy the wire contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required field is empty.
    #[error("`{field}` is empty")]
    Empty {
        /// The field, as named in the proto file.
        field: &'static str,
    },
    /// A text field is longer than its bound.
    #[error("`{field}` is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A name holds a control character (names show up in logs, tables and environment
    /// variables of hooks).
    #[error("`{field}` holds a control character at byte {at}")]
    ControlCharacter {
        /// The field.
        field: &'static str,
        /// Byte offset of the first control character.
        at: usize,
    },
    /// A repeated field has more entries than its bound.
    #[error("`{field}` has {count} entries; at most {max} are allowed")]
    TooMany {
        /// The field.
        field: &'static str,
        /// How many it has.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// An enum field holds a value this build does not know.
    #[error("`{field}` holds {value}, which is not a known value")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// A required enum field is left at its UNSPECIFIED value.
    #[error("`{field}` is unspecified")]
    Unspecified {
        /// The field.
        field: &'static str,
    },
    /// A number outside its bound.
    #[error("`{field}` is {value}; it must be between {min} and {max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A oneof or message field that must be set is not.
    #[error("`{field}` is missing")]
    Missing {
        /// The field.
        field: &'static str,
    },
}

#[cfg(feature = "grpc")]
impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

// ----------------------------------------------------------------------------------------
// Fields

/// Checks a text field's length.
pub fn text(field: &'static str, value: &str, max: usize) -> Result<(), WireError> {
    if value.len() > max {
        return Err(WireError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// A required name: non-empty, at most [`MAX_NAME_BYTES`], no control characters.
pub fn name(field: &'static str, value: &str) -> Result<String, WireError> {
    if value.is_empty() {
        return Err(WireError::Empty { field });
    }
    text(field, value, MAX_NAME_BYTES)?;
    if let Some(at) = value.find(char::is_control) {
        return Err(WireError::ControlCharacter { field, at });
    }
    Ok(value.to_owned())
}

/// A required group name.
pub fn group(field: &'static str, value: &str) -> Result<GroupName, WireError> {
    name(field, value).map(GroupName)
}

/// An optional group name: empty means every group.
pub fn group_filter(field: &'static str, value: &str) -> Result<Option<GroupName>, WireError> {
    if value.is_empty() {
        return Ok(None);
    }
    group(field, value).map(Some)
}

/// A required site name.
pub fn site(field: &'static str, value: &str) -> Result<SiteId, WireError> {
    name(field, value).map(SiteId)
}

/// "No site" on the wire is the empty string, and only that: the one spelling of an
/// absent site in either direction.
pub fn optional_site(field: &'static str, value: &str) -> Result<Option<SiteId>, WireError> {
    if value.is_empty() {
        return Ok(None);
    }
    site(field, value).map(Some)
}

/// A site on the wire: its name, or empty for none.
pub fn site_to_wire(site: Option<&SiteId>) -> String {
    site.map(ToString::to_string).unwrap_or_default()
}

/// An optional free-text actor (`user@host`): bounded like a name, may be empty.
pub fn actor(field: &'static str, value: &str) -> Result<String, WireError> {
    if value.is_empty() {
        return Ok(String::new());
    }
    name(field, value)
}

/// A free-text reason, bounded by [`MAX_REASON_BYTES`].
pub fn reason(field: &'static str, value: &str) -> Result<String, WireError> {
    text(field, value, MAX_REASON_BYTES)?;
    Ok(value.to_owned())
}

/// A number that must lie in `min..=max`.
pub fn bounded(field: &'static str, value: u64, min: u64, max: u64) -> Result<u64, WireError> {
    if value < min || value > max {
        return Err(WireError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(value)
}

fn known<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E, WireError> {
    E::try_from(value).map_err(|_| WireError::UnknownEnum { field, value })
}

// ----------------------------------------------------------------------------------------
// Enums

impl From<&Phase> for types::Phase {
    fn from(phase: &Phase) -> Self {
        match phase {
            Phase::Active => types::Phase::Active,
            Phase::Demoting(_) => types::Phase::Demoting,
            Phase::NoActive => types::Phase::NoActive,
        }
    }
}

/// A required phase field.
pub fn phase(field: &'static str, value: i32) -> Result<types::Phase, WireError> {
    match known(field, value)? {
        types::Phase::Unspecified => Err(WireError::Unspecified { field }),
        p => Ok(p),
    }
}

/// The lowercase name tables and JSON show for a phase (the core's [`Phase::name`]).
pub fn phase_name(phase: types::Phase) -> &'static str {
    match phase {
        types::Phase::Active => "active",
        types::Phase::Demoting => "demoting",
        types::Phase::NoActive => "no_active",
        types::Phase::Unspecified => "unknown",
    }
}

impl From<failover_core::executor::SlotState> for types::WorkerState {
    fn from(state: failover_core::executor::SlotState) -> Self {
        use failover_core::executor::SlotState;
        match state {
            SlotState::Stopped => types::WorkerState::Stopped,
            SlotState::Backoff => types::WorkerState::Backoff,
            SlotState::Starting => types::WorkerState::Starting,
            SlotState::Running => types::WorkerState::Running,
            SlotState::Stopping => types::WorkerState::Stopping,
        }
    }
}

impl From<failover_core::executor::HealthState> for types::Health {
    fn from(health: failover_core::executor::HealthState) -> Self {
        use failover_core::executor::HealthState;
        match health {
            HealthState::Unknown => types::Health::Unknown,
            HealthState::Healthy => types::Health::Healthy,
            HealthState::Unhealthy { .. } => types::Health::Unhealthy,
        }
    }
}

impl From<&RenewRefusal> for types::RefusalReason {
    fn from(refusal: &RenewRefusal) -> Self {
        match refusal {
            RenewRefusal::Unknown(_) => types::RefusalReason::Unknown,
            RenewRefusal::Draining { .. } => types::RefusalReason::Draining,
            RenewRefusal::Expired(_) => types::RefusalReason::Expired,
            RenewRefusal::Superseded { .. } => types::RefusalReason::Superseded,
        }
    }
}

/// A required refusal reason. An unknown or unspecified one is an error the holder
/// treats as a refusal it does not understand (it stops, the safe answer).
pub fn refusal_reason(field: &'static str, value: i32) -> Result<types::RefusalReason, WireError> {
    match known(field, value)? {
        types::RefusalReason::Unspecified => Err(WireError::Unspecified { field }),
        r => Ok(r),
    }
}

/// The lowercase name logs show for a refusal reason.
pub fn refusal_name(reason: types::RefusalReason) -> &'static str {
    match reason {
        types::RefusalReason::Unspecified => "unspecified",
        types::RefusalReason::Unknown => "unknown",
        types::RefusalReason::Draining => "draining",
        types::RefusalReason::Expired => "expired",
        types::RefusalReason::Superseded => "superseded",
        types::RefusalReason::NotLeader => "not_leader",
        types::RefusalReason::Overloaded => "overloaded",
    }
}

/// The lowercase name tables and JSON show for a lease state.
pub fn lease_state_name(state: types::LeaseState) -> &'static str {
    match state {
        types::LeaseState::Unspecified => "unknown",
        types::LeaseState::Standby => "standby",
        types::LeaseState::Acquired => "acquired",
        types::LeaseState::Draining => "draining",
        types::LeaseState::Lost => "lost",
        types::LeaseState::Connecting => "connecting",
        types::LeaseState::Paused => "paused",
    }
}

/// The lowercase name tables and JSON show for an executor state.
pub fn executor_state_name(state: types::ExecutorState) -> &'static str {
    match state {
        types::ExecutorState::Unspecified => "unknown",
        types::ExecutorState::Holding => "holding",
        types::ExecutorState::Draining => "draining",
        types::ExecutorState::Standby => "standby",
        types::ExecutorState::Connecting => "connecting",
        types::ExecutorState::Silent => "silent",
        types::ExecutorState::Fenced => "fenced",
        types::ExecutorState::Lost => "lost",
        types::ExecutorState::Paused => "paused",
    }
}

/// The lowercase name tables and JSON show for a worker state.
pub fn worker_state_name(state: types::WorkerState) -> &'static str {
    match state {
        types::WorkerState::Unspecified => "unknown",
        types::WorkerState::Running => "running",
        types::WorkerState::Starting => "starting",
        types::WorkerState::Backoff => "backoff",
        types::WorkerState::Stopping => "stopping",
        types::WorkerState::Stopped => "stopped",
    }
}

/// The lowercase name tables and JSON show for a health result.
pub fn health_name(health: types::Health) -> &'static str {
    match health {
        types::Health::Unspecified | types::Health::Unknown => "unknown",
        types::Health::Healthy => "healthy",
        types::Health::Unhealthy => "unhealthy",
    }
}

// ----------------------------------------------------------------------------------------
// Group views (outbound)

/// The proto view of a group, as status and promote answers carry it. `held` and
/// `lost_sites` are the leader's observations; the caller fills them in.
pub fn group_status(group: &GroupState) -> admin::GroupStatus {
    let pause = group.pause.as_ref();
    admin::GroupStatus {
        name: group.name.to_string(),
        active_site: site_to_wire(group.active_site.as_ref()),
        epoch: group.epoch.0,
        phase: types::Phase::from(&group.phase).into(),
        promoting_to: site_to_wire(group.pending().and_then(|p| p.to.as_ref())),
        sites: group.sites.iter().map(ToString::to_string).collect(),
        held: String::new(),
        paused: pause.is_some(),
        paused_by: pause.map(|p| p.actor.clone()).unwrap_or_default(),
        paused_reason: pause.map(|p| p.reason.clone()).unwrap_or_default(),
        paused_since: pause.map_or(0, |p| p.since_unix_ms),
        active_since_unix_ms: group.history.last().map_or(0, |h| h.completed_at_unix_ms),
        last_change: group.history.last().map(|h| history_entry(group, h)),
        lost_sites: Vec::new(),
    }
}

/// The event a watcher at `site` sees for `group`: `drain` is set when its site is the
/// active one and a change is under way.
pub fn group_event(group: &GroupState, site: &str) -> lease::GroupEvent {
    let active = group.active_site.as_ref();
    lease::GroupEvent {
        group: group.name.to_string(),
        active_site: site_to_wire(active),
        epoch: group.epoch.0,
        phase: types::Phase::from(&group.phase).into(),
        drain: failover_core::leader::change::drains(group, &SiteId(site.to_owned())),
        promoting_to: site_to_wire(group.pending().and_then(|p| p.to.as_ref())),
    }
}

/// The proto view of one history entry of `group`.
pub fn history_entry(group: &GroupState, h: &failover_core::HistoryEntry) -> admin::HistoryEntry {
    admin::HistoryEntry {
        group: group.name.to_string(),
        epoch: h.epoch.0,
        from: site_to_wire(h.from.as_ref()),
        to: site_to_wire(h.to.as_ref()),
        kind: h.kind.as_str().to_owned(),
        actor: h.actor.clone(),
        reason: h.reason.clone(),
        requested_at_unix_ms: h.requested_at_unix_ms,
        completed_at_unix_ms: h.completed_at_unix_ms,
    }
}

/// A pause or resume as a history entry (kind `pause` or `resume`; no change of site).
pub fn pause_entry(group: &GroupState, event: &PauseEvent) -> admin::HistoryEntry {
    admin::HistoryEntry {
        group: group.name.to_string(),
        epoch: event.epoch.0,
        from: site_to_wire(event.active_site.as_ref()),
        to: site_to_wire(event.active_site.as_ref()),
        kind: if event.paused { "pause" } else { "resume" }.to_owned(),
        actor: event.actor.clone(),
        reason: event.reason.clone(),
        requested_at_unix_ms: event.at_unix_ms,
        completed_at_unix_ms: event.at_unix_ms,
    }
}

// ----------------------------------------------------------------------------------------
// Lease API requests (inbound on the controller)

/// A validated [`lease::AcquireRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    /// The group.
    pub group: GroupName,
    /// The asking instance's site.
    pub site: SiteId,
    /// The engine instance.
    pub instance: String,
    /// Its readiness to take over.
    pub ready: bool,
}

impl TryFrom<&lease::AcquireRequest> for Acquire {
    type Error = WireError;
    fn try_from(r: &lease::AcquireRequest) -> Result<Self, WireError> {
        Ok(Acquire {
            group: group("group", &r.group)?,
            site: site("site", &r.site)?,
            instance: name("instance", &r.instance)?,
            ready: r.ready,
        })
    }
}

/// A validated [`lease::KeepAliveRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// The lease.
    pub lease: LeaseId,
    /// Echoed back.
    pub seq: u64,
}

impl TryFrom<&lease::KeepAliveRequest> for KeepAlive {
    type Error = WireError;
    fn try_from(r: &lease::KeepAliveRequest) -> Result<Self, WireError> {
        text("group", &r.group, MAX_NAME_BYTES)?;
        Ok(KeepAlive {
            lease: LeaseId(r.lease_id),
            seq: r.seq,
        })
    }
}

/// A validated [`lease::ReleaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The group.
    pub group: GroupName,
    /// The lease.
    pub lease: LeaseId,
}

impl TryFrom<&lease::ReleaseRequest> for Release {
    type Error = WireError;
    fn try_from(r: &lease::ReleaseRequest) -> Result<Self, WireError> {
        Ok(Release {
            group: group("group", &r.group)?,
            lease: LeaseId(r.lease_id),
        })
    }
}

/// A validated [`lease::WatchRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The group.
    pub group: GroupName,
    /// The watcher's site (it gets `drain` when that site is demoted).
    pub site: SiteId,
}

impl TryFrom<&lease::WatchRequest> for Watch {
    type Error = WireError;
    fn try_from(r: &lease::WatchRequest) -> Result<Self, WireError> {
        Ok(Watch {
            group: group("group", &r.group)?,
            site: site("site", &r.site)?,
        })
    }
}

// ----------------------------------------------------------------------------------------
// Lease API answers (inbound on the client)

/// A validated [`lease::Grant`] (an acquire's grant or a renewal), with the core's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The lease.
    pub lease: LeaseId,
    /// Its TTL, counted by the holder from when it sent the request.
    pub ttl: Duration,
    /// The epoch it belongs to.
    pub epoch: Epoch,
    /// Its identity token.
    pub token: FencingToken,
    /// What stores compare (the epoch).
    pub fencing_value: FencingValue,
    /// How often to renew.
    pub keepalive_interval: Duration,
    /// The cluster's drift bound; `None` from a controller that predates the field.
    pub max_clock_drift: Option<Duration>,
    /// The cluster's ride-out margin; `None` if unknown.
    pub ride_out_margin: Option<Duration>,
}

impl TryFrom<&lease::Grant> for Granted {
    type Error = WireError;
    fn try_from(g: &lease::Grant) -> Result<Self, WireError> {
        let ms = |v: u64| Duration::from_millis(v);
        let optional = |v: u64| (v > 0).then(|| ms(v));
        Ok(Granted {
            lease: LeaseId(g.lease_id),
            ttl: ms(bounded("ttl_ms", g.ttl_ms, 1, MAX_GRANT_MS)?),
            epoch: Epoch(bounded("epoch", g.epoch, 1, u64::MAX)?),
            token: FencingToken(g.fencing_token),
            fencing_value: FencingValue(g.fencing_value),
            keepalive_interval: ms(bounded(
                "keepalive_interval_ms",
                g.keepalive_interval_ms,
                0,
                MAX_GRANT_MS,
            )?),
            max_clock_drift: optional(bounded(
                "max_clock_drift_ms",
                g.max_clock_drift_ms,
                0,
                MAX_GRANT_MS,
            )?),
            ride_out_margin: optional(bounded(
                "ride_out_margin_ms",
                g.ride_out_margin_ms,
                0,
                MAX_GRANT_MS,
            )?),
        })
    }
}

/// A validated [`lease::Standby`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyAnswer {
    /// The active site, if any.
    pub active_site: Option<SiteId>,
    /// The group's epoch.
    pub epoch: Epoch,
    /// A promotion is under way.
    pub demoting: bool,
}

impl TryFrom<&lease::Standby> for StandbyAnswer {
    type Error = WireError;
    fn try_from(s: &lease::Standby) -> Result<Self, WireError> {
        Ok(StandbyAnswer {
            active_site: optional_site("active_site", &s.active_site)?,
            epoch: Epoch(s.epoch),
            demoting: s.demoting,
        })
    }
}

/// A validated [`lease::AcquireResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireAnswer {
    /// A lease.
    Granted(Granted),
    /// The site is not active (or a promotion is under way).
    Standby(StandbyAnswer),
}

impl TryFrom<&lease::AcquireResponse> for AcquireAnswer {
    type Error = WireError;
    fn try_from(r: &lease::AcquireResponse) -> Result<Self, WireError> {
        match &r.result {
            Some(lease::acquire_response::Result::Granted(g)) => {
                Granted::try_from(g).map(AcquireAnswer::Granted)
            }
            Some(lease::acquire_response::Result::Standby(s)) => {
                StandbyAnswer::try_from(s).map(AcquireAnswer::Standby)
            }
            None => Err(WireError::Missing { field: "result" }),
        }
    }
}

/// A validated [`lease::KeepAliveResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepAliveAnswer {
    /// Renewed.
    Renewed {
        /// Echoed sequence number.
        seq: u64,
        /// The renewal.
        grant: Granted,
    },
    /// Refused.
    Refused {
        /// Echoed sequence number.
        seq: u64,
        /// The lease the refusal is about.
        lease: LeaseId,
        /// Why.
        reason: types::RefusalReason,
        /// Detail for logs.
        message: String,
    },
}

impl TryFrom<&lease::KeepAliveResponse> for KeepAliveAnswer {
    type Error = WireError;
    fn try_from(r: &lease::KeepAliveResponse) -> Result<Self, WireError> {
        match &r.result {
            Some(lease::keep_alive_response::Result::Renewed(g)) => Ok(KeepAliveAnswer::Renewed {
                seq: r.seq,
                grant: Granted::try_from(g)?,
            }),
            Some(lease::keep_alive_response::Result::Refused(f)) => {
                text("message", &f.message, MAX_MESSAGE_BYTES)?;
                Ok(KeepAliveAnswer::Refused {
                    seq: r.seq,
                    lease: LeaseId(r.lease_id),
                    reason: refusal_reason("reason", f.reason)?,
                    message: f.message.clone(),
                })
            }
            None => Err(WireError::Missing { field: "result" }),
        }
    }
}

// ----------------------------------------------------------------------------------------
// Admin API requests (inbound on the controller)

/// A validated promote request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promote {
    /// The group.
    pub group: GroupName,
    /// The site to make active.
    pub site: SiteId,
    /// Why.
    pub reason: String,
    /// Who asks.
    pub actor: String,
    /// Answer once the site is active.
    pub wait: bool,
    /// Skip the readiness check.
    pub force: bool,
}

impl TryFrom<&admin::PromoteRequest> for Promote {
    type Error = WireError;
    fn try_from(r: &admin::PromoteRequest) -> Result<Self, WireError> {
        Ok(Promote {
            group: group("group", &r.group)?,
            site: site("site", &r.site)?,
            reason: reason("reason", &r.reason)?,
            actor: actor("actor", &r.actor)?,
            wait: r.wait,
            force: r.force,
        })
    }
}

/// A validated demote request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demote {
    /// The group.
    pub group: GroupName,
    /// Why.
    pub reason: String,
    /// Who asks.
    pub actor: String,
    /// Answer once no site is active.
    pub wait: bool,
}

impl TryFrom<&admin::DemoteRequest> for Demote {
    type Error = WireError;
    fn try_from(r: &admin::DemoteRequest) -> Result<Self, WireError> {
        Ok(Demote {
            group: group("group", &r.group)?,
            reason: reason("reason", &r.reason)?,
            actor: actor("actor", &r.actor)?,
            wait: r.wait,
        })
    }
}

/// A validated pause or resume request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPause {
    /// The group, or `None` for every group.
    pub group: Option<GroupName>,
    /// Why.
    pub reason: String,
    /// Who asks.
    pub actor: String,
}

impl TryFrom<&admin::PauseRequest> for SetPause {
    type Error = WireError;
    fn try_from(r: &admin::PauseRequest) -> Result<Self, WireError> {
        Ok(SetPause {
            group: group_filter("group", &r.group)?,
            reason: reason("reason", &r.reason)?,
            actor: actor("actor", &r.actor)?,
        })
    }
}

impl TryFrom<&admin::ResumeRequest> for SetPause {
    type Error = WireError;
    fn try_from(r: &admin::ResumeRequest) -> Result<Self, WireError> {
        Ok(SetPause {
            group: group_filter("group", &r.group)?,
            reason: reason("reason", &r.reason)?,
            actor: actor("actor", &r.actor)?,
        })
    }
}

// ----------------------------------------------------------------------------------------
// Executor reports (inbound on the controller)

/// Checks an executor report's fields: names, enum values, text and list bounds. The
/// report stays a proto message (the leader keeps it as the executor sent it, for
/// status); this only refuses what must not be kept.
pub fn check_report(r: &executor::ExecutorReport) -> Result<(), WireError> {
    name("executor_id", &r.executor_id)?;
    group("group", &r.group)?;
    site("site", &r.site)?;
    if known::<types::LeaseState>("lease_state", r.lease_state)? == types::LeaseState::Unspecified {
        return Err(WireError::Unspecified {
            field: "lease_state",
        });
    }
    text("reload_message", &r.reload_message, MAX_MESSAGE_BYTES)?;
    text("message", &r.message, MAX_MESSAGE_BYTES)?;
    if r.workers.len() > MAX_WORKERS {
        return Err(WireError::TooMany {
            field: "workers",
            count: r.workers.len(),
            max: MAX_WORKERS,
        });
    }
    for w in &r.workers {
        known::<types::WorkerState>("workers.state", w.state)?;
        known::<types::Health>("workers.health", w.health)?;
    }
    Ok(())
}

/// Checks a deregistration's fields.
pub fn check_deregister(r: &executor::DeregisterRequest) -> Result<(), WireError> {
    name("executor_id", &r.executor_id)?;
    site("site", &r.site)?;
    Ok(())
}

/// The change kind of a promote request.
pub fn promote_kind(force: bool) -> ChangeKind {
    if force {
        ChangeKind::ForcedPromote
    } else {
        ChangeKind::Promote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_required() {
        let long = "g".repeat(MAX_NAME_BYTES + 1);
        let r = lease::AcquireRequest {
            group: long,
            site: "site-a".into(),
            instance: "i".into(),
            ready: false,
        };
        let e = Acquire::try_from(&r).expect_err("too long");
        assert_eq!(
            e,
            WireError::TooLong {
                field: "group",
                len: MAX_NAME_BYTES + 1,
                max: MAX_NAME_BYTES
            }
        );
        assert_eq!(
            e.to_string(),
            "`group` is 129 bytes long; at most 128 are allowed"
        );
        let r = lease::AcquireRequest {
            group: "default".into(),
            site: "site-a".into(),
            instance: String::new(),
            ready: false,
        };
        assert_eq!(
            Acquire::try_from(&r),
            Err(WireError::Empty { field: "instance" })
        );
        let r = lease::AcquireRequest {
            group: "default".into(),
            site: "site\n-a".into(),
            instance: "i".into(),
            ready: false,
        };
        assert_eq!(
            Acquire::try_from(&r),
            Err(WireError::ControlCharacter {
                field: "site",
                at: 4
            })
        );
    }

    #[test]
    fn no_site_is_the_empty_string_both_ways() {
        assert_eq!(optional_site("s", ""), Ok(None));
        assert_eq!(site_to_wire(None), "");
        let a = SiteId::from("site-a");
        assert_eq!(optional_site("s", &site_to_wire(Some(&a))), Ok(Some(a)));
    }

    #[test]
    fn unknown_and_unspecified_enums_are_refused_by_name() {
        assert_eq!(
            phase("phase", 99),
            Err(WireError::UnknownEnum {
                field: "phase",
                value: 99
            })
        );
        assert_eq!(
            phase("phase", 0),
            Err(WireError::Unspecified { field: "phase" })
        );
        assert_eq!(phase("phase", 2), Ok(types::Phase::Demoting));
        let mut report = executor::ExecutorReport {
            executor_id: "e".into(),
            group: "default".into(),
            site: "site-a".into(),
            lease_state: -7,
            ..Default::default()
        };
        assert_eq!(
            check_report(&report),
            Err(WireError::UnknownEnum {
                field: "lease_state",
                value: -7
            })
        );
        report.lease_state = types::LeaseState::Standby.into();
        assert_eq!(check_report(&report), Ok(()));
        report.workers = vec![executor::WorkerReport::default(); MAX_WORKERS + 1];
        assert!(matches!(
            check_report(&report),
            Err(WireError::TooMany {
                field: "workers",
                ..
            })
        ));
    }

    #[test]
    fn absurd_grants_are_refused() {
        let good = lease::Grant {
            lease_id: 1,
            ttl_ms: 3500,
            epoch: 2,
            fencing_token: 7,
            keepalive_interval_ms: 250,
            fencing_value: 2,
            max_clock_drift_ms: 250,
            ride_out_margin_ms: 0,
        };
        let g = Granted::try_from(&good).expect("valid");
        assert_eq!(g.ttl, Duration::from_millis(3500));
        assert_eq!(g.ride_out_margin, None);
        for (ttl, ok) in [
            (0, false),
            (1, true),
            (MAX_GRANT_MS, true),
            (u64::MAX, false),
        ] {
            let grant = lease::Grant {
                ttl_ms: ttl,
                ..good
            };
            assert_eq!(Granted::try_from(&grant).is_ok(), ok, "ttl {ttl}");
        }
        let e = Granted::try_from(&lease::Grant {
            max_clock_drift_ms: u64::MAX,
            ..good
        })
        .expect_err("drift");
        assert!(matches!(
            e,
            WireError::OutOfRange {
                field: "max_clock_drift_ms",
                ..
            }
        ));
    }

    #[test]
    fn refusal_reasons_round_trip_and_unknown_ones_are_errors() {
        let r = lease::KeepAliveResponse {
            lease_id: 3,
            seq: 9,
            result: Some(lease::keep_alive_response::Result::Refused(
                lease::Refused {
                    message: "m".into(),
                    reason: types::RefusalReason::Draining.into(),
                },
            )),
        };
        assert!(matches!(
            KeepAliveAnswer::try_from(&r),
            Ok(KeepAliveAnswer::Refused {
                reason: types::RefusalReason::Draining,
                seq: 9,
                ..
            })
        ));
        let r = lease::KeepAliveResponse {
            result: Some(lease::keep_alive_response::Result::Refused(
                lease::Refused {
                    message: String::new(),
                    reason: 42,
                },
            )),
            ..r
        };
        assert_eq!(
            KeepAliveAnswer::try_from(&r),
            Err(WireError::UnknownEnum {
                field: "reason",
                value: 42
            })
        );
    }

    #[test]
    fn reasons_are_bounded() {
        let r = admin::PromoteRequest {
            group: "default".into(),
            site: "site-b".into(),
            reason: "x".repeat(MAX_REASON_BYTES + 1),
            ..Default::default()
        };
        assert!(matches!(
            Promote::try_from(&r),
            Err(WireError::TooLong {
                field: "reason",
                ..
            })
        ));
    }
}

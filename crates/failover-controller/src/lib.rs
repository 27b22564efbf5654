//! A failover controller: one openraft node whose log carries `failover-core` commands.
//!
//! # Layout
//! - [`types`]: the openraft type configuration.
//! - [`store`]: redb-backed Raft log, vote, state machine and snapshots, and the Raft
//!   handle type over them ([`store::Raft`]).
//! - [`network`]: the Raft transport over gRPC, dialing through a caller-supplied [`Dialer`].
//! - [`context`]: what every part of a controller shares, and proposing through Raft.
//! - [`confirm`]: quorum confirmations, so `/active` answers 200 only from a controller
//!   whose leader still holds a quorum.
//! - [`detector`]: the leader's failure detector (what it heard from each site).
//! - [`hooks`]: site hooks run by the leader around a change of a site's role.
//! - [`executors`]: the leader's record of executor reports and reload requests.
//! - [`leases`]: the leader's lease soft state and the renewal batcher.
//! - [`services`]: the gRPC servers (Raft peers, admin API, lease API).
//! - [`http`]: the HTTP endpoints for load balancers and Prometheus (`/active`, `/health`,
//!   `/metrics`).
//! - [`reconcile`]: the leader's loop that drives the core's obligations (create configured
//!   groups, finish promotions).
//! - [`rejoin`]: whether a controller on an empty data dir may form the cluster, or must
//!   refuse because the cluster exists and it may have lost its vote and log.
//! - [`runtime`]: openraft's runtime, tokio with seedable randomness for the simulation.
//! - [`node`]: assembles a controller from a topology, a data dir, a listener, a dialer
//!   and a clock.
//!
//! The controller holds no rules of its own: what is allowed is decided by
//! `failover_core`; this crate moves commands into Raft and state out to clients.
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod confirm;
pub mod context;
pub mod detector;
pub mod executors;
pub mod hooks;
pub mod http;
pub mod identity;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod network;
pub mod node;
pub mod reconcile;
pub mod rejoin;
pub mod runtime;
pub mod services;
pub mod snapshot_data;
pub mod snapshot_stream;
pub mod store;
pub mod types;

pub use failover_net::{Clock, SystemClock};
pub use failover_net::{Dialer, TcpDialer};
pub use node::{Controller, ControllerError, ControllerOptions, Parts};

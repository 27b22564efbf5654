//! Clients of a failover cluster.
//!
//! # Layout
//! - [`endpoints`]: where the cluster is (`--endpoints`, `FAILOVER_ENDPOINTS`, a topology file).
//! - [`transport`], [`tls`], [`clock`]: re-exported from `failover-net` (how processes
//!   reach each other: the [`Dialer`], TLS material, the [`Clock`]).
//! - [`lease`]: a lease session that holds, renews and gives up a lease safely. Ask
//!   [`LeaseSession::holds`] before every unit of work and pass the fencing value it
//!   answers downstream; once it answers `None`, start nothing and call
//!   [`LeaseSession::release`] when running work has stopped (the session otherwise
//!   releases one stop grace later). The example is in the [`lease`] module doc.
//! - [`admin`]: the admin API with fail-over between controllers; the controller that
//!   answers forwards to the leader when it has to.
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod endpoints;
pub mod lease;

pub use admin::{AdminClient, ClientError};
pub use endpoints::Endpoints;
pub use failover_net::{clock, tls, transport};
pub use failover_net::{Clock, SystemClock};
pub use failover_net::{DialError, Dialer, TcpDialer, TlsDialer};
pub use lease::{GrantTiming, LeaseConfig, LeaseSession, LeaseState};

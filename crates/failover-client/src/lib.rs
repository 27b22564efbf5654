//! Clients of a failover cluster.
//!
//! # Layout
//! - [`endpoints`]: where the cluster is (`--endpoints`, `FAILOVER_ENDPOINTS`, a topology file).
//! - [`transport`]: the [`Dialer`] that makes channels (TCP, or a simulated network).
//! - [`tls`]: mutual-TLS material read from PEM files and reloaded when they change.
//! - [`clock`]: the clock clients and controllers read, supplied by the caller.
//! - [`lease`]: a lease session that holds, renews and gives up a lease safely. Ask
//!   [`LeaseSession::holds`] before every unit of work and pass the fencing value it
//!   answers downstream; once it answers `None`, start nothing and call
//!   [`LeaseSession::release`] when running work has stopped (the session otherwise
//!   releases one stop grace later). The example is in the [`lease`] module doc.
//! - [`admin`]: the admin API with fail-over between controllers; the controller that
//!   answers forwards to the leader when it has to.
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod clock;
pub mod endpoints;
pub mod lease;
pub mod tls;
pub mod transport;

pub use admin::{AdminClient, ClientError};
pub use clock::{Clock, SystemClock};
pub use endpoints::Endpoints;
pub use lease::{GrantTiming, LeaseConfig, LeaseSession, LeaseState};
pub use transport::{DialError, Dialer, TcpDialer, TlsDialer};

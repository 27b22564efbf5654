//! Clients of a failover cluster.
//!
//! # Layout
//! - [`endpoints`]: where the cluster is (`--endpoints`, `FAILOVER_ENDPOINTS`, a topology file).
//! - [`transport`]: the [`Dialer`] that makes channels (TCP, or a simulated network).
//! - [`admin`]: the admin API with fail-over between controllers; the controller that
//!   answers forwards to the leader when it has to.
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod endpoints;
pub mod transport;

pub use admin::{AdminClient, ClientError};
pub use endpoints::Endpoints;
pub use transport::{DialError, Dialer, TcpDialer};

//! Clients of a failover cluster.
//!
//! # Layout
//! - [`endpoints`]: where the cluster is (`--endpoints`, `FAILOVER_ENDPOINTS`, a topology file).
//! - [`admin`]: the admin API with fail-over between controllers; the controller that
//!   answers forwards to the leader when it has to.
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod endpoints;

pub use admin::{AdminClient, ClientError};
pub use endpoints::Endpoints;

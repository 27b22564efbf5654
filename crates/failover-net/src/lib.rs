//! How failover's processes reach each other.
//!
//! Controllers, clients, executors and the simulation share these pieces, and nothing
//! here knows about the cluster's API, so the controller can use them without depending
//! on the client library.
//!
//! # Layout
//! - [`transport`]: the [`Dialer`] that makes gRPC channels (TCP, mutual TLS, or a
//!   simulated network).
//! - [`tls`]: mutual-TLS material read from PEM files and reloaded when they change.
//! - [`clock`]: the clock clients and controllers read, supplied by the caller.
#![warn(missing_docs, unreachable_pub)]

pub mod clock;
pub mod tls;
pub mod transport;

pub use clock::{Clock, SystemClock};
pub use transport::{DialError, Dialer, TcpDialer, TlsDialer};

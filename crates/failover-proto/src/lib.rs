//! Generated protobuf types and tonic services, one module per proto package.
//!
//! The services, clients and [`pin`] are behind the `grpc` feature (on by default): the
//! fuzz targets decode and convert messages only, and build without tonic and its HTTP/2
//! stack.
//!
//! The modules nest as the packages do (`failover.admin.v1` → `failover::admin::v1`) so
//! cross-package references resolve; the short aliases below are what code uses.
//! [`wire`] is the one place where proto types become core types and back.

/// The proto packages as generated.
#[allow(missing_docs, clippy::all)]
pub mod failover {
    pub mod types {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/failover.types.v1.rs"));
        }
    }
    pub mod raft {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/failover.raft.v1.rs"));
        }
    }
    pub mod admin {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/failover.admin.v1.rs"));
        }
    }
    pub mod lease {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/failover.lease.v1.rs"));
        }
    }
    pub mod executor {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/failover.executor.v1.rs"));
        }
    }
}

#[cfg(feature = "grpc")]
pub mod pin;
pub mod wire;

/// Enumerations shared by the other packages (phases, refusal reasons, states).
pub use failover::types::v1 as types;

/// Raft RPCs between controllers.
pub use failover::raft::v1 as raft;

/// The operator's admin API.
pub use failover::admin::v1 as admin;

/// The lease API engines speak.
pub use failover::lease::v1 as lease;

/// What site executors report to the controllers.
pub use failover::executor::v1 as executor;

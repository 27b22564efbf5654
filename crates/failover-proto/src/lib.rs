//! Generated protobuf types and tonic services, one module per proto package.
//!
//! The modules nest as the packages do (`failover.admin.v1` → `failover::admin::v1`) so
//! cross-package references resolve; the short aliases below are what code uses.
//! [`wire`] is the one place where proto types become core types and back.

/// The proto packages as generated.
#[allow(missing_docs, clippy::all)]
pub mod failover {
    pub mod types {
        pub mod v1 {
            tonic::include_proto!("failover.types.v1");
        }
    }
    pub mod raft {
        pub mod v1 {
            tonic::include_proto!("failover.raft.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("failover.admin.v1");
        }
    }
    pub mod lease {
        pub mod v1 {
            tonic::include_proto!("failover.lease.v1");
        }
    }
    pub mod executor {
        pub mod v1 {
            tonic::include_proto!("failover.executor.v1");
        }
    }
}

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

//! Generated protobuf types and tonic services, one module per proto package.
#![allow(missing_docs, clippy::all)]

/// Raft RPCs between controllers.
pub mod raft {
    tonic::include_proto!("failover.raft.v1");
}

/// The operator's admin API.
pub mod admin {
    tonic::include_proto!("failover.admin.v1");
}

/// The lease API engines speak.
pub mod lease {
    tonic::include_proto!("failover.lease.v1");
}

//! The gRPC servers of a controller, one file per service.

pub mod admin;
pub mod executor;
pub mod lease;
pub mod raft;
pub mod status;

use tonic::Status;

pub use crate::context::{propose, NodeContext, ProposeError};

impl ProposeError {
    /// The gRPC status to answer with.
    pub fn into_status(self) -> Status {
        match self {
            ProposeError::Rejected(r) => admin::rejection_status(&r),
            ProposeError::Status(s) => s,
        }
    }
}

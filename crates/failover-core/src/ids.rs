//! Newtypes for the identifiers that would otherwise be interchangeable strings and integers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A controller's Raft node id, unique across the whole topology.
pub type NodeId = u64;

/// A site's name, as written in the topology file (`site-a`, `witness`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SiteId(pub String);

/// A failover group's name: the unit that is active at exactly one site.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupName(pub String);

/// A group's epoch: bumped on every change of active site, never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch that follows this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

macro_rules! string_id {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
        impl $t {
            /// The name as written in the topology file.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}
string_id!(SiteId);
string_id!(GroupName);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

//! Newtypes for the identifiers that would otherwise be interchangeable strings and
//! integers: sites, groups, controllers, epochs, leases, tokens and fencing values. One
//! home for all of them, so `command`, `state` and `lease` need not import each other for
//! an id.

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

/// A lease's id, unique in the cluster and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub u64);

/// A lease's token: its identity among every grant of its group, strictly increasing
/// across grants and epochs. Two holders of one epoch have different tokens, so a store
/// must not compare it (they would refuse each other); it compares the
/// [`FencingValue`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

/// The value a downstream store compares (S2): the lease's epoch. Equal for every holder
/// of one epoch, so two engine instances at the active site never refuse each other, and
/// strictly larger for every later epoch, so a store that refuses a value below the
/// highest it has seen refuses a stale site as soon as the new one has written once.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingValue(pub u64);

impl From<Epoch> for FencingValue {
    fn from(epoch: Epoch) -> Self {
        FencingValue(epoch.0)
    }
}

impl fmt::Display for FencingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FencingToken {
    /// The token after this one.
    pub fn next(self) -> FencingToken {
        FencingToken(self.0 + 1)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

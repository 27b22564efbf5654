//! Whether the leader still hears a controller, and whether it still holds a quorum.
//!
//! One rule, read by the failure detector, `failover status` and `/health`: a controller
//! is reachable when it is this one, or acknowledged a heartbeat no longer than one
//! election timeout (`election_timeout_max_ms`) ago. A leader holds a quorum while more
//! than half of the controllers (itself included) are reachable.

use std::time::Duration;

/// Whether a controller is reachable: it is this controller (`is_self`), or its last
/// acknowledged heartbeat is `acked_age` old and no older than `within`.
pub fn reachable(is_self: bool, acked_age: Option<Duration>, within: Duration) -> bool {
    is_self || acked_age.is_some_and(|age| age <= within)
}

/// How many controllers are reachable and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Reachable controllers, the leader included.
    pub heard: usize,
    /// Every voting controller.
    pub total: usize,
}

impl Quorum {
    /// Counts `reachable` verdicts, one per controller.
    pub fn count(reachable: impl IntoIterator<Item = bool>) -> Quorum {
        let mut quorum = Quorum { heard: 0, total: 0 };
        for heard in reachable {
            quorum.total += 1;
            quorum.heard += usize::from(heard);
        }
        quorum
    }

    /// Whether a strict majority is reachable.
    pub fn holds(&self) -> bool {
        self.heard * 2 > self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reachable up to and including the bound; self always; never heard is unreachable.
    #[test]
    fn reachable_up_to_the_bound() {
        let within = Duration::from_millis(500);
        assert!(reachable(true, None, within));
        assert!(!reachable(false, None, within));
        assert!(reachable(false, Some(within), within));
        assert!(!reachable(
            false,
            Some(within + Duration::from_millis(1)),
            within
        ));
    }

    /// Half is not a quorum; more than half is.
    #[test]
    fn quorum_is_a_strict_majority() {
        assert!(!Quorum::count([true, true, false, false]).holds());
        assert!(Quorum::count([true, true, true, false, false]).holds());
        assert!(!Quorum::count([true, false, false, false, false]).holds());
        assert!(!Quorum::count([]).holds());
    }
}

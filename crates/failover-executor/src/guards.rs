//! Every guard this executor started and has not yet heard end, whatever slot, reload or
//! retiring generation it belongs to.
//!
//! The lease may go back to the controllers only once no worker tree started under it can
//! still run: when this set is empty, or when every guard left in it has passed the
//! deadline it was last given (a guard kills its tree by that deadline on its own, so
//! waiting longer would only delay the next site). Slots, a reload's new workers and a
//! retiring generation come and go on their own schedules; keeping the set apart from
//! them means no path can forget a tree that is still stopping.

use std::collections::BTreeMap;
use std::time::Instant;

/// The live guards, by worker generation, with the deadline each was last given.
#[derive(Debug, Default)]
pub struct LiveGuards {
    deadlines: BTreeMap<u64, Instant>,
}

/// Why the lease may be released now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Every guard reported its tree gone.
    Confirmed,
    /// Some guards have not reported, but all are past their deadline, by which they kill
    /// their trees themselves.
    PastDeadline,
}

impl LiveGuards {
    /// A guard was started for `generation`, enforcing `deadline`.
    pub fn started(&mut self, generation: u64, deadline: Instant) {
        let previous = self.deadlines.insert(generation, deadline);
        assert!(previous.is_none(), "generation {generation} started twice");
    }

    /// The guard of `generation` was given a later deadline.
    pub fn extended(&mut self, generation: u64, deadline: Instant) {
        if let Some(at) = self.deadlines.get_mut(&generation) {
            *at = (*at).max(deadline);
        }
    }

    /// The guard of `generation` reported its tree gone (or exited).
    pub fn ended(&mut self, generation: u64) {
        self.deadlines.remove(&generation);
    }

    /// How many guards have not reported their tree gone.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// Whether no guard is live.
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// Whether, at `now`, no tree started by this executor can still run; `None` while
    /// one can.
    pub fn gone(&self, now: Instant) -> Option<Gone> {
        match self.deadlines.values().max() {
            None => Some(Gone::Confirmed),
            Some(last) if now >= *last => Some(Gone::PastDeadline),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The set is gone only when every guard ended, or when the latest deadline any
    /// guard holds has passed; an extension moves that point, and never backwards.
    #[test]
    fn gone_when_empty_or_past_every_deadline() {
        let t0 = Instant::now();
        let mut guards = LiveGuards::default();
        assert_eq!(guards.gone(t0), Some(Gone::Confirmed));
        guards.started(1, t0 + Duration::from_secs(1));
        guards.started(2, t0 + Duration::from_secs(2));
        assert_eq!(guards.gone(t0), None);
        guards.extended(1, t0 + Duration::from_secs(3));
        guards.extended(2, t0 + Duration::from_secs(1));
        assert_eq!(guards.gone(t0 + Duration::from_millis(2999)), None);
        assert_eq!(
            guards.gone(t0 + Duration::from_secs(3)),
            Some(Gone::PastDeadline)
        );
        guards.ended(1);
        assert_eq!(guards.gone(t0 + Duration::from_millis(1999)), None);
        guards.ended(2);
        guards.ended(7);
        assert_eq!(guards.len(), 0);
        assert_eq!(guards.gone(t0), Some(Gone::Confirmed));
    }
}

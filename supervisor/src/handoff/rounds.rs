//! A pre-copy's rounds, and when they stop: the convergence test of the
//! handoff's pre-copy phases ([`super::machine`]).

use crate::config::PreCopyLimits;

/// A pre-copy's rounds so far (see [`crate::handoff`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rounds {
    /// The round asked for (or being applied).
    pub round: u32,
    /// Each round's figures, in order.
    pub done: Vec<RoundFigures>,
}

/// One pre-copy round, as the workers reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundFigures {
    /// Bytes A sent (the state, for round 0; then what changed).
    pub bytes: u64,
    /// How long A's loop stopped to make it.
    pub made_ns: u64,
    /// How long B took to apply it.
    pub applied_ns: u64,
}

impl Rounds {
    /// After B applied the current round: the next round to ask for, or
    /// `None` to freeze now. Like a live migration's convergence test: a
    /// round whose making and applying together fit in the target pause
    /// says that what is left after it will too; past the round limit, or
    /// when the rounds stop shrinking, waiting longer does not help.
    pub fn next(&self, limits: &PreCopyLimits) -> Option<u32> {
        let last = self.done.last()?;
        if self.round == 0 {
            // What changed while the whole state moved, at least once.
            return (limits.max_rounds > 0).then_some(1);
        }
        if self.round >= limits.max_rounds {
            return None;
        }
        let pause = std::time::Duration::from_nanos(last.made_ns.saturating_add(last.applied_ns));
        if pause <= limits.target_pause {
            return None;
        }
        let prev = self.done.len().checked_sub(2).map(|i| self.done[i]);
        if self.round >= 2 && prev.is_some_and(|p| last.bytes >= p.bytes) {
            return None;
        }
        Some(self.round + 1)
    }
}

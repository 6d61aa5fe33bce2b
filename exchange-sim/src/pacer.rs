//! Pacing of the trade feed: `--rate` trades per second per stream.

use std::time::Duration;
use tokio::time::Instant;

/// Paces trade emission at `rate` per second per stream, in batches.
pub struct Pacer {
    rate: u64,
    base: Instant,
    emitted: u64,
}

impl Pacer {
    pub fn new(rate: u32) -> Self {
        Self {
            rate: u64::from(rate.max(1)),
            base: Instant::now(),
            emitted: 0,
        }
    }

    /// Restart the schedule (after subscribing or resuming) without a backlog.
    pub fn reset(&mut self) {
        self.base = Instant::now();
        self.emitted = 0;
    }

    /// Trades per stream due now. A backlog (slow reader) is capped at 50 ms
    /// worth: the rate drops, ids are never skipped.
    pub fn due(&mut self) -> u64 {
        let elapsed = Instant::now()
            .saturating_duration_since(self.base)
            .as_nanos();
        let due_total = u64::try_from(elapsed * u128::from(self.rate) / 1_000_000_000)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let cap = (self.rate / 20).max(1);
        let mut n = due_total.saturating_sub(self.emitted);
        if n > cap {
            self.emitted = due_total - cap;
            n = cap;
        }
        self.emitted += n;
        n
    }

    pub fn period(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / self.rate).max(Duration::from_millis(1))
    }
}

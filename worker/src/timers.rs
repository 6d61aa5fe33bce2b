//! Timers: named deadlines an app sets through its [`crate::Outbox`]
//! ([`Outbox::at`](crate::Outbox::at), [`Outbox::after`](crate::Outbox::after),
//! [`Outbox::cancel`](crate::Outbox::cancel)) and receives as
//! [`App::on_timer`](crate::App::on_timer).
//!
//! The library keeps them, not the app: they travel beside the snapshot in
//! what the library carries (`FromWorker::Carried` before each checkpoint
//! and each `Frozen`, `ToWorker::Carried` before a `Restore`), so a deadline set before a
//! handoff fires once, in whichever worker serves when it is due:
//!
//! - firing is an input like a message: it happens between two callbacks,
//!   and the timer leaves the table as the app's callback runs, so a
//!   snapshot either still holds it (not fired) or reflects its effect;
//! - a frozen worker fires nothing; a successor fires nothing before `Go`;
//!   a thawed worker carries on with its own table;
//! - after a crash the table comes from the newest checkpoint: deadlines
//!   that passed while no worker served fire at once, flagged
//!   [`Timer::late`]. (A timer the dead worker fired after that checkpoint
//!   fires again, as the state it changed is that checkpoint's too.)
//!
//! Deadlines are wall-clock milliseconds since the Unix epoch, so that they
//! mean the same in the next process.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A timer that fired, as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub key: String,
    /// When it was due (milliseconds since the Unix epoch).
    pub due_unix_ms: u64,
    /// It came due while no worker served (before this one recovered from
    /// a crash): it fires now, late.
    pub late: bool,
}

/// What a callback asked of the timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimerOp {
    Set { key: String, due_unix_ms: u64 },
    Cancel { key: String },
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The pending timers of a worker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Timers {
    pending: BTreeMap<String, u64>,
    /// Timers due before this instant fire as late (a recovery's takeover).
    late_before: Option<u64>,
}

impl Timers {
    /// From (key, due in ms since the Unix epoch) pairs.
    pub(crate) fn from_pairs(pairs: Vec<(String, u64)>) -> Timers {
        Timers {
            pending: pairs.into_iter().collect(),
            late_before: None,
        }
    }

    pub(crate) fn pairs(&self) -> Vec<(String, u64)> {
        self.pending.iter().map(|(k, &t)| (k.clone(), t)).collect()
    }

    /// Those due before `at_unix_ms` fire flagged late.
    pub(crate) fn late_before(&mut self, at_unix_ms: u64) {
        self.late_before = Some(at_unix_ms);
    }

    pub(crate) fn apply(&mut self, ops: Vec<TimerOp>) {
        for op in ops {
            match op {
                TimerOp::Set { key, due_unix_ms } => {
                    self.pending.insert(key, due_unix_ms);
                }
                TimerOp::Cancel { key } => {
                    self.pending.remove(&key);
                }
            }
        }
    }

    pub(crate) fn next_due(&self) -> Option<u64> {
        self.pending.values().min().copied()
    }

    /// Take the timers due at `now`, earliest first.
    pub(crate) fn take_due(&mut self, now: u64) -> Vec<Timer> {
        let mut due: Vec<(u64, String)> = self
            .pending
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(k, &t)| (t, k.clone()))
            .collect();
        due.sort();
        due.into_iter()
            .map(|(due_unix_ms, key)| {
                self.pending.remove(&key);
                Timer {
                    late: self.late_before.is_some_and(|l| due_unix_ms < l),
                    key,
                    due_unix_ms,
                }
            })
            .collect()
    }
}

/// Resolves when the earliest of `next` is due (pending forever without
/// one; for `select!`). Re-armed on every turn of the loop, so a timer set
/// meanwhile is seen.
pub(crate) async fn until(next: Option<u64>) {
    match next {
        Some(due) => {
            let wait = due.saturating_sub(now_unix_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await
        }
        None => std::future::pending().await,
    }
}

impl<A: crate::App> crate::serve::Worker<A> {
    /// Fire every timer that is due, earliest first, each one a callback of
    /// its own.
    pub(crate) async fn fire_due_timers(&mut self) {
        for timer in self.timers.take_due(now_unix_ms()) {
            if let Some(j) = self.source.as_mut().and_then(|s| s.journal()) {
                j.timer(&timer);
            }
            let mut out = crate::Outbox::default();
            self.app.on_timer(&timer, &mut out);
            self.write_outbox(out).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, due: u64) -> TimerOp {
        TimerOp::Set {
            key: key.into(),
            due_unix_ms: due,
        }
    }

    #[test]
    fn timers_fire_once_in_due_order_and_a_key_set_again_replaces_it() {
        let mut t = Timers::default();
        t.apply(vec![set("b", 20), set("a", 30), set("c", 10), set("a", 15)]);
        t.apply(vec![TimerOp::Cancel { key: "c".into() }]);
        assert_eq!(t.next_due(), Some(15));
        let fired: Vec<_> = t.take_due(25).into_iter().map(|x| x.key).collect();
        assert_eq!(fired, ["a", "b"]);
        assert!(t.take_due(25).is_empty(), "fired twice");
        assert!(t.pairs().is_empty());
    }

    #[test]
    fn the_table_travels_whole_and_overdue_timers_of_a_recovery_are_late() {
        let mut a = Timers::default();
        a.apply(vec![set("x", 100), set("y", 300)]);
        let mut b = Timers::from_pairs(a.pairs());
        assert_eq!(b.pairs(), a.pairs());
        b.late_before(200);
        let fired = b.take_due(400);
        assert_eq!(fired.len(), 2);
        assert!(fired[0].late && fired[0].key == "x");
        assert!(!fired[1].late, "y was due after the takeover");
    }
}

//! Depth: one order book per served symbol, shared by every connection.
//!
//! A task ([`run`]) makes one diff event per symbol every `--depth-every-ms`
//! while the feed is not paused; `/control/depth_burst` makes many at once.
//! Events go into a per-symbol log (the most recent [`RETAINED`] are kept)
//! and a watch counter wakes the connections, each of which reads the log
//! from its own cursor: every subscribed connection gets the same events
//! with the same update ids, and the REST snapshot, taken under the same
//! lock, is always at an event boundary of that sequence.

pub mod book;
pub mod feed;
pub mod rest;

use crate::state::{signalled, unix_ms, Shared};
use book::{DepthBook, DepthEvent, Snapshot};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Events kept per symbol for connections that are behind; one further
/// behind is closed (a slow consumer, as Binance would drop it).
pub const RETAINED: usize = 65_536;
/// Most diffs one `/control/depth_burst` may ask for.
pub const MAX_BURST: u64 = 50_000;

/// The stream names a symbol's diffs are served on (Binance's two diff
/// streams; here both follow `--depth-every-ms`).
pub fn stream_names(symbol_lower: &str) -> [String; 2] {
    [
        format!("{symbol_lower}@depth@100ms"),
        format!("{symbol_lower}@depth"),
    ]
}

/// Whether `stream` names a diff stream (of any symbol).
pub fn is_depth_stream(stream: &str) -> bool {
    matches!(stream.split_once('@'), Some((_, "depth" | "depth@100ms")))
}

/// A connection that fell behind the retained log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged {
    /// The oldest event still retained.
    pub oldest: u64,
}

#[derive(Debug)]
struct SymbolDepth {
    book: DepthBook,
    /// The most recent events, oldest first.
    log: VecDeque<Arc<DepthEvent>>,
    /// `u` of every event ever made, by `seq - 1` (8 bytes per event), to
    /// tell an acked `u` apart from any other number.
    final_ids: Vec<u64>,
}

impl SymbolDepth {
    fn push(&mut self, now_ms: u64) -> Arc<DepthEvent> {
        let event = Arc::new(self.book.next_event(now_ms));
        self.final_ids.push(event.last_id);
        self.log.push_back(event.clone());
        while self.log.len() > RETAINED {
            self.log.pop_front();
        }
        event
    }
}

#[derive(Debug)]
struct Slot {
    lower: String,
    upper: String,
    state: Mutex<SymbolDepth>,
}

/// The books of every served symbol.
#[derive(Debug)]
pub struct DepthMarket {
    slots: Vec<Slot>,
    published: watch::Sender<u64>,
    /// Held while the cadence checks the pause switch and steps the books,
    /// so that once `/pause` has returned no periodic event follows.
    cadence: Mutex<()>,
}

impl DepthMarket {
    /// Initial books for `symbols` (lower case) and `seed`.
    pub fn new<'a>(symbols: impl IntoIterator<Item = &'a str>, seed: u64) -> Self {
        let slots = symbols
            .into_iter()
            .map(|lower| Slot {
                lower: lower.to_owned(),
                upper: lower.to_ascii_uppercase(),
                state: Mutex::new(SymbolDepth {
                    book: DepthBook::new(lower, seed),
                    log: VecDeque::new(),
                    final_ids: Vec::new(),
                }),
            })
            .collect();
        Self {
            slots,
            published: watch::Sender::new(0),
            cadence: Mutex::new(()),
        }
    }

    fn with<R>(&self, index: usize, f: impl FnOnce(&mut SymbolDepth) -> R) -> Option<R> {
        let slot = self.slots.get(index)?;
        let mut guard = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        Some(f(&mut guard))
    }

    /// The index of `symbol` as REST spells it (`BTCUSDT`).
    pub fn index_of_symbol(&self, symbol: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.upper == symbol)
    }

    /// The index of the symbol of a diff stream name.
    pub fn index_of_stream(&self, stream: &str) -> Option<usize> {
        if !is_depth_stream(stream) {
            return None;
        }
        let symbol = stream.split('@').next()?;
        self.slots.iter().position(|s| s.lower == symbol)
    }

    /// The upper-case symbol at `index`.
    pub fn symbol(&self, index: usize) -> &str {
        self.slots.get(index).map_or("", |s| s.upper.as_str())
    }

    /// A receiver that changes whenever events are published.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    fn publish(&self) {
        self.published.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// One event for every symbol (the periodic cadence).
    pub fn step_all(&self, now_ms: u64) {
        for index in 0..self.slots.len() {
            self.with(index, |s| s.push(now_ms));
        }
        self.publish();
    }

    /// [`Self::step_all`] unless `paused()` says so, as one step against
    /// [`Self::barrier`].
    pub fn step_unless(&self, paused: impl FnOnce() -> bool, now_ms: u64) {
        let _cadence = self.cadence.lock().unwrap_or_else(PoisonError::into_inner);
        if !paused() {
            self.step_all(now_ms);
        }
    }

    /// Wait for a cadence step in progress (call after setting the pause
    /// switch: no periodic event follows then).
    pub fn barrier(&self) {
        drop(self.cadence.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// `n` events for the symbol at `index`, back to back; the first `U`
    /// and last `u`.
    pub fn burst(&self, index: usize, n: u64, now_ms: u64) -> Option<(u64, u64)> {
        let span = self.with(index, |s| {
            let mut first = None;
            let mut last = s.book.last_update_id();
            for _ in 0..n {
                let e = s.push(now_ms);
                first.get_or_insert(e.first_id);
                last = e.last_id;
            }
            (first.unwrap_or(last + 1), last)
        })?;
        self.publish();
        Some(span)
    }

    /// The best `limit` levels of each side, at an event boundary.
    pub fn snapshot(&self, index: usize, limit: usize) -> Option<Snapshot> {
        self.with(index, |s| s.book.snapshot(limit))
    }

    /// `(lastUpdateId, CRC-32 of the whole book)`.
    pub fn digest(&self, index: usize) -> Option<(u64, u32)> {
        self.with(index, |s| (s.book.last_update_id(), s.book.digest()))
    }

    /// The `seq` the next event of `index` will get: where a new
    /// subscription's cursor starts.
    pub fn next_seq(&self, index: usize) -> u64 {
        self.with(index, |s| s.book.next_seq()).unwrap_or(1)
    }

    /// Up to `max` events from `cursor` (a `seq`) on, and whether more follow.
    pub fn events_since(
        &self,
        index: usize,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<Arc<DepthEvent>>, bool), Lagged> {
        self.with(index, |s| {
            let next = s.book.next_seq();
            let oldest = next - s.log.len() as u64;
            if cursor < oldest {
                return Err(Lagged { oldest });
            }
            let skip = usize::try_from(cursor - oldest).unwrap_or(usize::MAX);
            let events: Vec<_> = s.log.iter().skip(skip).take(max).cloned().collect();
            let more = cursor + (events.len() as u64) < next;
            Ok((events, more))
        })
        .unwrap_or(Ok((Vec::new(), false)))
    }

    /// The `seq` of the event of `index` whose final update id is `u`.
    pub fn seq_of(&self, index: usize, u: u64) -> Option<u64> {
        self.with(index, |s| {
            s.final_ids.binary_search(&u).ok().map(|i| i as u64 + 1)
        })
        .flatten()
    }
}

/// Make one event per symbol every `every` while not paused, until shutdown.
pub async fn run(shared: Arc<Shared>, every: Duration) {
    let mut shutdown = shared.shutdown();
    let paused = shared.paused();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The first tick completes at once: the first diff comes one period in.
    ticker.tick().await;
    loop {
        tokio::select! {
            () = signalled(&mut shutdown) => return,
            _ = ticker.tick() => shared.depth.step_unless(|| *paused.borrow(), unix_ms()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_the_log_and_lagging_is_detected() {
        let m = DepthMarket::new(["btcusdt", "ethusdt"], 3);
        assert_eq!(m.index_of_symbol("ETHUSDT"), Some(1));
        assert_eq!(m.index_of_symbol("ethusdt"), None);
        assert_eq!(m.index_of_stream("ethusdt@depth@100ms"), Some(1));
        assert_eq!(m.index_of_stream("btcusdt@depth"), Some(0));
        assert_eq!(m.index_of_stream("btcusdt@trade"), None);
        assert_eq!(m.index_of_stream("solusdt@depth"), None);
        assert_eq!(m.next_seq(0), 1);
        m.step_all(1);
        let (first, last) = m.burst(0, 10, 2).expect("served");
        let (events, more) = m.events_since(0, 1, 4).expect("retained");
        assert!(more);
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(events[1].first_id, first);
        let (rest, more) = m.events_since(0, 5, 100).expect("retained");
        assert!(!more);
        assert_eq!(rest.last().map(|e| e.last_id), Some(last));
        assert_eq!(m.digest(0).map(|d| d.0), Some(last));
        assert_eq!(m.snapshot(0, 5).map(|s| s.bids.len()), Some(5));
        assert_eq!(m.seq_of(0, last), Some(11));
        assert_eq!(m.seq_of(0, events[0].last_id), Some(1));
        assert_eq!(m.seq_of(0, book::INITIAL_UPDATE_ID), None);
        assert_eq!(m.next_seq(1), 2);
        assert!(m.burst(5, 1, 0).is_none());
        m.burst(1, RETAINED as u64 + 1, 3);
        assert_eq!(m.events_since(1, 1, 1), Err(Lagged { oldest: 3 }));
    }
}

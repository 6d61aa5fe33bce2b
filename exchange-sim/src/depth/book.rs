//! One symbol's order book and the deterministic generator of its diffs.
//!
//! Pure (no I/O, no clock, no locking): the caller passes the event time.
//! Prices are held in cents on a grid of `spacing` cents around a mid price
//! that walks on its own seeded path (starting at the trade feed's starting
//! price); quantities in units of 1e-8. The sequence of events depends only
//! on `--seed` and the symbol: event `k` is the same whatever the timing.

use crate::feed::start_price_cents;
use crate::rng::{fnv1a, SplitMix64};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The `lastUpdateId` of the book before its first diff.
pub const INITIAL_UPDATE_ID: u64 = 1_000;
/// Levels live within this many grid steps of the mid price.
const BAND: u64 = 48;
/// A side is refilled to at least this many levels after every event.
const MIN_LEVELS: usize = 24;
/// Smallest and largest quantity of a level, in units of 1e-8.
const MIN_QTY: u64 = 100_000;
const MAX_QTY: u64 = 500_000_000;

/// Bid or ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Bid,
    Ask,
}

/// One diff event: the levels changed (`qty` 0 removes a level) and the
/// update ids it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepthEvent {
    /// Position of the event in the symbol's sequence, from 1.
    pub seq: u64,
    /// `U`: first update id in the event.
    pub first_id: u64,
    /// `u`: final update id in the event.
    pub last_id: u64,
    /// `E`: event time (Unix ms).
    pub time_ms: u64,
    /// Changed bids `(price cents, qty units)`, best (highest) first.
    pub bids: Vec<(u64, u64)>,
    /// Changed asks, best (lowest) first.
    pub asks: Vec<(u64, u64)>,
}

/// A price in cents as Binance writes it: 8 decimals (`42000.42000000`).
pub fn price_text(cents: u64) -> String {
    format!("{}.{:02}000000", cents / 100, cents % 100)
}

/// A quantity in units of 1e-8 with 8 decimals (`0.12345678`).
pub fn qty_text(units: u64) -> String {
    format!("{}.{:08}", units / 100_000_000, units % 100_000_000)
}

fn push_levels(out: &mut String, levels: &[(u64, u64)]) {
    out.push('[');
    for (i, (price, qty)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "[\"{}\",\"{}\"]", price_text(*price), qty_text(*qty));
    }
    out.push(']');
}

impl DepthEvent {
    /// The combined-stream message for `stream` (`btcusdt@depth@100ms`) of
    /// symbol `symbol` (`BTCUSDT`); `pad_to` > 0 adds a `"pad"` field so the
    /// message is about that many bytes long (`--big-every`).
    pub fn encode(&self, stream: &str, symbol: &str, pad_to: usize) -> String {
        let levels = self.bids.len() + self.asks.len();
        let mut s = String::with_capacity(160 + 36 * levels);
        let _ = write!(
            s,
            "{{\"stream\":\"{stream}\",\"data\":{{\"e\":\"depthUpdate\",\"E\":{},\"s\":\"{symbol}\",\
             \"U\":{},\"u\":{},\"b\":",
            self.time_ms, self.first_id, self.last_id
        );
        push_levels(&mut s, &self.bids);
        s.push_str(",\"a\":");
        push_levels(&mut s, &self.asks);
        s.push('}');
        crate::feed::finish_padded(&mut s, pad_to);
        s
    }
}

/// A snapshot of the top of the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The final update id of the last event applied.
    pub last_update_id: u64,
    /// Best (highest) first.
    pub bids: Vec<(u64, u64)>,
    /// Best (lowest) first.
    pub asks: Vec<(u64, u64)>,
}

impl Snapshot {
    /// `{"lastUpdateId":…,"bids":[["price","qty"],…],"asks":[…]}`.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(64 + 36 * (self.bids.len() + self.asks.len()));
        let _ = write!(s, "{{\"lastUpdateId\":{},\"bids\":", self.last_update_id);
        push_levels(&mut s, &self.bids);
        s.push_str(",\"asks\":");
        push_levels(&mut s, &self.asks);
        s.push('}');
        s
    }
}

/// The canonical text the book digest is the CRC-32 of: each bid from best
/// to worst as `"<price>:<qty>;"`, then `"|"`, then each ask from best to
/// worst the same way, amounts written as `Decimal::normalize().to_string()`.
pub fn canonical_text<'a>(
    bids: impl IntoIterator<Item = (&'a u64, &'a u64)>,
    asks: impl IntoIterator<Item = (&'a u64, &'a u64)>,
) -> String {
    let mut s = String::new();
    let level = |s: &mut String, price: u64, qty: u64| {
        let price = Decimal::from_i128_with_scale(i128::from(price), 2).normalize();
        let qty = Decimal::from_i128_with_scale(i128::from(qty), 8).normalize();
        let _ = write!(s, "{price}:{qty};");
    };
    for (p, q) in bids {
        level(&mut s, *p, *q);
    }
    s.push('|');
    for (p, q) in asks {
        level(&mut s, *p, *q);
    }
    s
}

/// One symbol's book and the generator that changes it.
#[derive(Debug, Clone)]
pub struct DepthBook {
    rng: SplitMix64,
    /// Grid step in cents.
    spacing: u64,
    /// Mid price in cents (a multiple of `spacing`).
    mid: u64,
    bids: BTreeMap<u64, u64>,
    asks: BTreeMap<u64, u64>,
    last_update_id: u64,
    next_seq: u64,
}

/// The changes of one event under construction (last write per level wins).
#[derive(Default)]
struct Changes {
    bids: BTreeMap<u64, u64>,
    asks: BTreeMap<u64, u64>,
}

impl DepthBook {
    /// The initial book of `symbol` (lower case, as in stream names) for `seed`.
    pub fn new(symbol: &str, seed: u64) -> Self {
        let start = start_price_cents(symbol);
        let spacing = (start / 100_000).max(1);
        let lowest_mid = (BAND + 2) * spacing;
        let mid = (start / spacing * spacing).max(lowest_mid);
        let mut book = Self {
            rng: SplitMix64::new(seed ^ fnv1a(format!("{symbol}@depth").as_bytes())),
            spacing,
            mid,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            last_update_id: INITIAL_UPDATE_ID,
            next_seq: 1,
        };
        for step in 1..=BAND {
            for side in [Side::Bid, Side::Ask] {
                if book.rng.range_inclusive(0, 3) > 0 {
                    let qty = book.random_qty();
                    let price = book.price_at(side, step);
                    book.side_mut(side).insert(price, qty);
                }
            }
        }
        book.refill(&mut Changes::default());
        book
    }

    fn random_qty(&mut self) -> u64 {
        self.rng.range_inclusive(MIN_QTY, MAX_QTY)
    }

    /// The price `step` grid steps from the mid on `side`.
    fn price_at(&self, side: Side, step: u64) -> u64 {
        match side {
            Side::Bid => self.mid - step * self.spacing,
            Side::Ask => self.mid + step * self.spacing,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<u64, u64> {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    /// Set a level (`qty` 0 removes it) and record the change.
    fn set(&mut self, changes: &mut Changes, side: Side, price: u64, qty: u64) {
        let (levels, changed) = match side {
            Side::Bid => (&mut self.bids, &mut changes.bids),
            Side::Ask => (&mut self.asks, &mut changes.asks),
        };
        if qty == 0 {
            levels.remove(&price);
        } else {
            levels.insert(price, qty);
        }
        changed.insert(price, qty);
    }

    /// Add levels at random free grid steps until each side has `MIN_LEVELS`.
    fn refill(&mut self, changes: &mut Changes) {
        for side in [Side::Bid, Side::Ask] {
            let len = |b: &Self| match side {
                Side::Bid => b.bids.len(),
                Side::Ask => b.asks.len(),
            };
            while len(self) < MIN_LEVELS {
                let step = self.rng.range_inclusive(1, BAND);
                let price = self.price_at(side, step);
                if !self.side_mut(side).contains_key(&price) {
                    let qty = self.random_qty();
                    self.set(changes, side, price, qty);
                }
            }
        }
    }

    /// Generate the next event at `time_ms` and apply it to the book.
    pub fn next_event(&mut self, time_ms: u64) -> DepthEvent {
        let mut changes = Changes::default();
        // The mid walks by one grid step, now and then.
        match self.rng.range_inclusive(0, 7) {
            0 if self.mid > (BAND + 2) * self.spacing => self.mid -= self.spacing,
            7 => self.mid += self.spacing,
            _ => {}
        }
        let (low, high) = (
            self.price_at(Side::Bid, BAND),
            self.price_at(Side::Ask, BAND),
        );
        let stale_bids: Vec<u64> = (self.bids.keys())
            .filter(|&&p| p >= self.mid || p < low)
            .copied()
            .collect();
        for price in stale_bids {
            self.set(&mut changes, Side::Bid, price, 0);
        }
        let stale_asks: Vec<u64> = (self.asks.keys())
            .filter(|&&p| p <= self.mid || p > high)
            .copied()
            .collect();
        for price in stale_asks {
            self.set(&mut changes, Side::Ask, price, 0);
        }
        for _ in 0..self.rng.range_inclusive(1, 4) {
            let side = if self.rng.coin() {
                Side::Bid
            } else {
                Side::Ask
            };
            // Nearer levels change more often.
            let step = self
                .rng
                .range_inclusive(1, BAND)
                .min(self.rng.range_inclusive(1, BAND));
            let price = self.price_at(side, step);
            let exists = self.side_mut(side).contains_key(&price);
            let qty = if exists && self.rng.range_inclusive(0, 2) == 0 {
                0
            } else {
                self.random_qty()
            };
            self.set(&mut changes, side, price, qty);
        }
        self.refill(&mut changes);
        let updates = (changes.bids.len() + changes.asks.len()) as u64;
        let first_id = self.last_update_id + 1;
        self.last_update_id += updates.max(1);
        let seq = self.next_seq;
        self.next_seq += 1;
        DepthEvent {
            seq,
            first_id,
            last_id: self.last_update_id,
            time_ms,
            bids: changes.bids.into_iter().rev().collect(),
            asks: changes.asks.into_iter().collect(),
        }
    }

    /// The final update id of the last event applied ([`INITIAL_UPDATE_ID`]
    /// before the first).
    pub fn last_update_id(&self) -> u64 {
        self.last_update_id
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The best `limit` levels of each side.
    pub fn snapshot(&self, limit: usize) -> Snapshot {
        Snapshot {
            last_update_id: self.last_update_id,
            bids: self
                .bids
                .iter()
                .rev()
                .take(limit)
                .map(|(p, q)| (*p, *q))
                .collect(),
            asks: self
                .asks
                .iter()
                .take(limit)
                .map(|(p, q)| (*p, *q))
                .collect(),
        }
    }

    /// The CRC-32 (IEEE) of [`canonical_text`] of the whole book.
    pub fn digest(&self) -> u32 {
        crc32fast::hash(canonical_text(self.bids.iter().rev(), self.asks.iter()).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apply `event` to a client-side book, as Binance documents.
    fn apply(bids: &mut BTreeMap<u64, u64>, asks: &mut BTreeMap<u64, u64>, e: &DepthEvent) {
        for (levels, changed) in [(bids, &e.bids), (asks, &e.asks)] {
            for &(price, qty) in changed {
                if qty == 0 {
                    levels.remove(&price);
                } else {
                    levels.insert(price, qty);
                }
            }
        }
    }

    #[test]
    fn events_are_contiguous_deterministic_and_rebuild_the_book() {
        let mut a = DepthBook::new("btcusdt", 7);
        let mut b = DepthBook::new("btcusdt", 7);
        let start = a.snapshot(usize::MAX);
        assert_eq!(start.last_update_id, INITIAL_UPDATE_ID);
        assert!(start.bids.len() >= MIN_LEVELS && start.asks.len() >= MIN_LEVELS);
        let mut bids: BTreeMap<u64, u64> = start.bids.iter().copied().collect();
        let mut asks: BTreeMap<u64, u64> = start.asks.iter().copied().collect();
        let mut last = INITIAL_UPDATE_ID;
        for seq in 1..=2_000 {
            let e = a.next_event(seq);
            assert_eq!(e, b.next_event(seq), "same seed, same events");
            assert_eq!((e.seq, e.first_id), (seq, last + 1));
            assert!(e.last_id >= e.first_id);
            assert!(!e.bids.is_empty() || !e.asks.is_empty());
            assert!(
                e.bids.windows(2).all(|w| w[0].0 > w[1].0),
                "bids best first"
            );
            assert!(
                e.asks.windows(2).all(|w| w[0].0 < w[1].0),
                "asks best first"
            );
            last = e.last_id;
            apply(&mut bids, &mut asks, &e);
            let best_bid = bids.keys().next_back().copied().unwrap_or(0);
            let best_ask = asks.keys().next().copied().unwrap_or(u64::MAX);
            assert!(best_bid < best_ask, "never crossed");
            assert!((MIN_LEVELS..=BAND as usize).contains(&bids.len()));
        }
        let whole = a.snapshot(usize::MAX);
        assert_eq!(
            whole.bids,
            bids.iter().rev().map(|(p, q)| (*p, *q)).collect::<Vec<_>>()
        );
        assert_eq!(
            whole.asks,
            asks.iter().map(|(p, q)| (*p, *q)).collect::<Vec<_>>()
        );
        assert_eq!(whole.last_update_id, last);
        let other = DepthBook::new("btcusdt", 8).next_event(1);
        assert_ne!(DepthBook::new("btcusdt", 7).next_event(1), other);
    }

    #[test]
    fn texts_and_digest_follow_the_documented_algorithm() {
        assert_eq!(price_text(4_200_042), "42000.42000000");
        assert_eq!(qty_text(12_345_678), "0.12345678");
        assert_eq!(qty_text(0), "0.00000000");
        let bids = BTreeMap::from([(10_050u64, 150_000_000u64), (10_000, 1)]);
        let asks = BTreeMap::from([(10_100u64, 100_000_000u64)]);
        let text = canonical_text(bids.iter().rev(), asks.iter());
        assert_eq!(text, "100.5:1.5;100:0.00000001;|101:1;");
        let book = DepthBook::new("ethusdt", 1);
        let text = canonical_text(book.bids.iter().rev(), book.asks.iter());
        assert_eq!(book.digest(), crc32fast::hash(text.as_bytes()));
        assert_eq!(canonical_text([], []), "|");
    }

    #[test]
    fn encoding_is_binance_shaped() {
        let e = DepthEvent {
            seq: 1,
            first_id: 1001,
            last_id: 1003,
            time_ms: 1_700_000_000_000,
            bids: vec![(4_200_000, 0), (4_199_958, 1_000_000)],
            asks: vec![],
        };
        let text = e.encode("btcusdt@depth@100ms", "BTCUSDT", 0);
        assert_eq!(
            text,
            "{\"stream\":\"btcusdt@depth@100ms\",\"data\":{\"e\":\"depthUpdate\",\
             \"E\":1700000000000,\"s\":\"BTCUSDT\",\"U\":1001,\"u\":1003,\"b\":[[\"42000.00000000\",\
             \"0.00000000\"],[\"41999.58000000\",\"0.01000000\"]],\"a\":[]}}"
        );
        let padded = e.encode("btcusdt@depth", "BTCUSDT", 5_000);
        assert_eq!(padded.len(), 5_000);
        let v: serde_json::Value = serde_json::from_str(&padded).expect("json");
        assert_eq!(v["data"]["u"], 1003);
        let snap = Snapshot {
            last_update_id: 9,
            bids: vec![(100, 1)],
            asks: vec![],
        };
        assert_eq!(
            snap.to_json(),
            r#"{"lastUpdateId":9,"bids":[["1.00000000","0.00000001"]],"asks":[]}"#
        );
    }
}

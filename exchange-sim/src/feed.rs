//! Deterministic trade generator and the JSON encoding of trades.
//!
//! Each stream of each connection gets its own generator seeded from the
//! `--seed` flag mixed with the stream name, so every connection receives the
//! same `(t, p, q, m)` sequence per stream regardless of timing.

use crate::rng::{fnv1a, SplitMix64};
use std::fmt::Write as _;

/// One generated trade. Prices are in cents, quantities in units of 1e-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trade {
    /// Trade id, contiguous from 1.
    pub id: u64,
    /// Price in hundredths (2 decimals).
    pub price_cents: u64,
    /// Quantity in hundred-millionths (8 decimals).
    pub qty_units: u64,
    /// Binance's `m` (buyer is the maker).
    pub buyer_is_maker: bool,
}

/// Generates the trades of one stream: a seeded random walk of the price.
#[derive(Debug, Clone)]
pub struct TradeGenerator {
    stream: String,
    symbol_upper: String,
    rng: SplitMix64,
    next_id: u64,
    price_cents: u64,
    last_id: Option<u64>,
}

/// Starting price of a symbol (lowercase, as in stream names), in cents.
pub fn start_price_cents(symbol: &str) -> u64 {
    match symbol {
        "btcusdt" => 4_200_000,
        "ethusdt" => 220_000,
        _ => 10_000,
    }
}

impl TradeGenerator {
    /// Generator for `stream` (`<symbol>@trade`); `last_id` ends the feed after that id.
    pub fn new(stream: &str, seed: u64, last_id: Option<u64>) -> Self {
        let symbol = stream.split('@').next().unwrap_or(stream);
        Self {
            stream: stream.to_owned(),
            symbol_upper: symbol.to_ascii_uppercase(),
            rng: SplitMix64::new(seed ^ fnv1a(stream.as_bytes())),
            next_id: 1,
            price_cents: start_price_cents(symbol),
            last_id,
        }
    }

    /// The stream name this generator feeds.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The symbol in upper case (`BTCUSDT`), as in the trades' `"s"` field.
    pub fn symbol(&self) -> &str {
        &self.symbol_upper
    }

    /// True once a finite feed has produced its last trade.
    pub fn is_finished(&self) -> bool {
        self.last_id.is_some_and(|last| self.next_id > last)
    }

    /// The next trade, or `None` when a finite feed is exhausted.
    pub fn next_trade(&mut self) -> Option<Trade> {
        if self.is_finished() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let price_cents = self.price_cents;
        // Walk by at most 0.02 % (at least one cent) for the next trade.
        let max_step = (self.price_cents / 5_000).max(1);
        let step = self.rng.range_inclusive(0, 2 * max_step);
        self.price_cents = (self.price_cents + step).saturating_sub(max_step).max(1);
        let qty_units = self.rng.range_inclusive(1_000, 50_000_000);
        let buyer_is_maker = self.rng.coin();
        Some(Trade {
            id,
            price_cents,
            qty_units,
            buyer_is_maker,
        })
    }

    /// Encode `trade` as a combined-stream message; `pad_to` > 0 adds a
    /// `"pad"` field so the message is about that many bytes long.
    pub fn encode(&self, trade: &Trade, now_ms: u64, pad_to: usize) -> String {
        let mut s = String::with_capacity(192);
        // Writing into a String cannot fail.
        let _ = write!(
            s,
            "{{\"stream\":\"{}\",\"data\":{{\"e\":\"trade\",\"E\":{now_ms},\"s\":\"{}\",\"t\":{},\
             \"p\":\"{}.{:02}\",\"q\":\"{}.{:08}\",\"T\":{now_ms},\"m\":{}}}",
            self.stream,
            self.symbol_upper,
            trade.id,
            trade.price_cents / 100,
            trade.price_cents % 100,
            trade.qty_units / 100_000_000,
            trade.qty_units % 100_000_000,
            trade.buyer_is_maker,
        );
        finish_padded(&mut s, pad_to);
        s
    }
}

/// Close the outer object of a combined-stream message `s` (everything but
/// its final `}`); `pad_to` > 0 first adds a `"pad"` field so the message is
/// about that many bytes long.
pub fn finish_padded(s: &mut String, pad_to: usize) {
    if pad_to > 0 {
        const PAD_OVERHEAD: usize = ",\"pad\":\"\"}".len();
        let pad = pad_to.saturating_sub(s.len() + PAD_OVERHEAD);
        s.reserve(pad + PAD_OVERHEAD);
        s.push_str(",\"pad\":\"");
        s.push_str(&"x".repeat(pad));
        s.push_str("\"}");
    } else {
        s.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_contiguous_and_finite_feed_ends() {
        let mut g = TradeGenerator::new("btcusdt@trade", 1, Some(3));
        let ids: Vec<u64> = std::iter::from_fn(|| g.next_trade())
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(g.is_finished());
    }

    #[test]
    fn deterministic_per_seed_and_stream() {
        let run = |seed, stream| {
            let mut g = TradeGenerator::new(stream, seed, None);
            (0..50).filter_map(|_| g.next_trade()).collect::<Vec<_>>()
        };
        assert_eq!(run(9, "btcusdt@trade"), run(9, "btcusdt@trade"));
        assert_ne!(run(9, "btcusdt@trade"), run(10, "btcusdt@trade"));
        let eth = run(9, "ethusdt@trade");
        assert_eq!(eth[0].price_cents, 220_000);
        assert_eq!(run(9, "solusdt@trade")[0].price_cents, 10_000);
    }

    #[test]
    fn encoding_is_binance_like_and_padding_hits_size() {
        let mut g = TradeGenerator::new("btcusdt@trade", 1, None);
        let t = g.next_trade().expect("infinite feed");
        let msg = g.encode(&t, 1_700_000_000_000, 0);
        let v: serde_json::Value = serde_json::from_str(&msg).expect("valid json");
        assert_eq!(v["stream"], "btcusdt@trade");
        assert_eq!(v["data"]["e"], "trade");
        assert_eq!(v["data"]["s"], "BTCUSDT");
        assert_eq!(v["data"]["t"], 1);
        assert_eq!(v["data"]["p"], "42000.00");
        assert_eq!(v["data"]["E"], 1_700_000_000_000u64);
        let q = v["data"]["q"].as_str().expect("q is a string");
        assert_eq!(q.split('.').nth(1).map(str::len), Some(8));
        let big = g.encode(&t, 1, 70_000);
        assert_eq!(big.len(), 70_000);
        let v: serde_json::Value = serde_json::from_str(&big).expect("valid json");
        assert!(v["pad"].as_str().is_some_and(|p| p.len() > 69_000));
    }
}

//! Reference prices for the order API: per symbol, the price of the most
//! recent trade the feed generated on any connection, or the generator's
//! starting price before the first trade.

use crate::feed::start_price_cents;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The latest generated trade price of every served symbol, in cents.
/// Lock-free: the feed records a price per batch it generates.
#[derive(Debug)]
pub struct ReferencePrices {
    cents: BTreeMap<String, AtomicU64>,
}

impl ReferencePrices {
    /// Starting prices for the symbols of `streams` (`<symbol>@trade`).
    pub fn new(streams: &[String]) -> Self {
        let cents = streams
            .iter()
            .map(|stream| {
                let symbol = stream.split('@').next().unwrap_or(stream);
                let start = AtomicU64::new(start_price_cents(symbol));
                (symbol.to_ascii_uppercase(), start)
            })
            .collect();
        Self { cents }
    }

    /// `symbol` (upper case) just traded at `cents`; false if not served.
    pub fn record(&self, symbol: &str, cents: u64) -> bool {
        match self.cents.get(symbol) {
            Some(slot) => {
                slot.store(cents, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The reference price of `symbol` (upper case), if served.
    pub fn get(&self, symbol: &str) -> Option<u64> {
        self.cents.get(symbol).map(|c| c.load(Ordering::Relaxed))
    }

    /// The served symbols, upper case, sorted.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.cents.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_generator_price_and_follows_records() {
        let p = ReferencePrices::new(&["btcusdt@trade".into(), "solusdt@trade".into()]);
        assert_eq!(p.symbols().collect::<Vec<_>>(), ["BTCUSDT", "SOLUSDT"]);
        assert_eq!(p.get("BTCUSDT"), Some(4_200_000));
        assert_eq!(p.get("SOLUSDT"), Some(10_000));
        assert!(p.record("BTCUSDT", 4_200_123));
        assert_eq!(p.get("BTCUSDT"), Some(4_200_123));
        assert!(!p.record("XRPUSDT", 1));
        assert_eq!(p.get("btcusdt"), None);
    }
}

//! One book per (connection, symbol): a position with average-cost
//! accounting, and the signal that trades it. All money is `Decimal`,
//! rounded to 8 places after every step so the arithmetic is exact and the
//! same on every run.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Decimal places kept for prices, quantities and PnL.
pub const DP: u32 = 8;

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }
}

/// A position: signed quantity, average entry price of what is open, and
/// realized profit and loss.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    #[serde(with = "rust_decimal::serde::str")]
    pub qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub avg_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub realized_pnl: Decimal,
    pub fills: u64,
}

impl Position {
    /// Apply a fill of `qty` (positive) at `price`.
    pub fn fill(&mut self, side: Side, qty: Decimal, price: Decimal) {
        let signed = match side {
            Side::Buy => qty,
            Side::Sell => -qty,
        };
        self.fills += 1;
        if self.qty.is_zero() || self.qty.is_sign_positive() == signed.is_sign_positive() {
            let new_qty = self.qty + signed;
            let cost = self.avg_price * self.qty.abs() + price * qty;
            self.avg_price = (cost / new_qty.abs()).round_dp(DP);
            self.qty = new_qty;
            return;
        }
        let closing = qty.min(self.qty.abs());
        let direction = if self.qty.is_sign_positive() {
            Decimal::ONE
        } else {
            Decimal::NEGATIVE_ONE
        };
        self.realized_pnl =
            (self.realized_pnl + closing * (price - self.avg_price) * direction).round_dp(DP);
        self.qty += signed;
        if self.qty.is_zero() {
            self.avg_price = Decimal::ZERO;
        } else if qty > closing {
            // Flipped through zero: what is open now was opened at `price`.
            self.avg_price = price;
        }
    }
}

/// Where the fast average sits relative to the slow one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Regime {
    Warmup,
    Above,
    Below,
}

/// Fast/slow exponential moving averages of trade prices, a crossover rule
/// and a cooldown counted in trades (not wall time, so a run is reproducible).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    #[serde(with = "rust_decimal::serde::str")]
    pub fast: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub slow: Decimal,
    pub seen: u64,
    pub regime: Regime,
    /// Trades to wait before acting on the next crossover.
    pub cooldown: u32,
}

/// Parameters of the signal.
#[derive(Debug, Clone, Copy)]
pub struct SignalParams {
    pub fast_n: u32,
    pub slow_n: u32,
    pub cooldown: u32,
}

impl Default for SignalParams {
    fn default() -> Self {
        SignalParams {
            fast_n: 8,
            slow_n: 21,
            cooldown: 25,
        }
    }
}

impl Default for Signal {
    fn default() -> Self {
        Signal {
            fast: Decimal::ZERO,
            slow: Decimal::ZERO,
            seen: 0,
            regime: Regime::Warmup,
            cooldown: 0,
        }
    }
}

fn ema(prev: Decimal, price: Decimal, n: u32, first: bool) -> Decimal {
    if first {
        return price;
    }
    let alpha = Decimal::TWO / Decimal::from(n + 1);
    (price * alpha + prev * (Decimal::ONE - alpha)).round_dp(DP)
}

impl Signal {
    /// Feed one price; returns the new regime when a crossover should be
    /// acted upon.
    pub fn update(&mut self, price: Decimal, p: SignalParams) -> Option<Regime> {
        let first = self.seen == 0;
        self.fast = ema(self.fast, price, p.fast_n, first);
        self.slow = ema(self.slow, price, p.slow_n, first);
        self.seen += 1;
        self.cooldown = self.cooldown.saturating_sub(1);
        if self.seen < u64::from(p.slow_n) {
            return None;
        }
        let now = match self.fast.cmp(&self.slow) {
            std::cmp::Ordering::Greater => Regime::Above,
            std::cmp::Ordering::Less => Regime::Below,
            std::cmp::Ordering::Equal => return None,
        };
        let previous = std::mem::replace(&mut self.regime, now);
        if previous == now || previous == Regime::Warmup || self.cooldown > 0 {
            return None;
        }
        self.cooldown = p.cooldown;
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros_free::d;

    mod rust_decimal_macros_free {
        pub fn d(s: &str) -> rust_decimal::Decimal {
            s.parse().expect("decimal literal")
        }
    }

    #[test]
    fn average_cost_accounting() {
        let mut p = Position::default();
        p.fill(Side::Buy, d("2"), d("100"));
        p.fill(Side::Buy, d("2"), d("110"));
        assert_eq!((p.qty, p.avg_price), (d("4"), d("105")));
        p.fill(Side::Sell, d("1"), d("120"));
        assert_eq!(
            (p.qty, p.avg_price, p.realized_pnl),
            (d("3"), d("105"), d("15"))
        );
        // Flip through zero: close 3 at 100 (-15), open 2 short at 100.
        p.fill(Side::Sell, d("5"), d("100"));
        assert_eq!(
            (p.qty, p.avg_price, p.realized_pnl),
            (d("-2"), d("100"), d("0"))
        );
        p.fill(Side::Buy, d("2"), d("90"));
        assert_eq!(
            (p.qty, p.avg_price, p.realized_pnl),
            (d("0"), d("0"), d("20"))
        );
        assert_eq!(p.fills, 5);
    }

    #[test]
    fn crossover_with_cooldown() {
        let params = SignalParams {
            fast_n: 2,
            slow_n: 4,
            cooldown: 3,
        };
        let mut s = Signal::default();
        let mut acted = Vec::new();
        for price in [
            "100", "100", "100", "99", "98", "99", "101", "103", "104", "100", "97", "96", "95",
        ] {
            if let Some(r) = s.update(d(price), params) {
                acted.push((price, r));
            }
        }
        assert_eq!(acted.first().map(|a| a.1), Some(Regime::Above), "{acted:?}");
        assert!(acted.iter().any(|a| a.1 == Regime::Below), "{acted:?}");
    }
}

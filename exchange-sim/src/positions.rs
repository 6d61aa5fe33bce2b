//! Net positions per symbol, booked at average cost: buying into a long (or
//! selling into a short) averages the entry price; reducing realizes
//! `(exit - entry) × qty` (sign-adjusted for shorts) and keeps the entry
//! price; going through zero realizes the whole old position and opens the
//! rest at the fill price.

use rust_decimal::Decimal;

/// One symbol's position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// Net quantity: positive long, negative short.
    pub qty: Decimal,
    /// Average entry price of the open position (zero when flat).
    pub avg_price: Decimal,
    /// PnL realized by reducing or flipping positions.
    pub realized_pnl: Decimal,
    /// Fills booked.
    pub fills: u64,
}

impl Position {
    /// The position after a fill of `signed_qty` (positive = bought,
    /// negative = sold) at `price`; `None` if the arithmetic overflows.
    pub fn after_fill(&self, signed_qty: Decimal, price: Decimal) -> Option<Self> {
        let fills = self.fills.checked_add(1)?;
        let qty = self.qty.checked_add(signed_qty)?;
        let adding =
            self.qty.is_zero() || self.qty.is_sign_negative() == signed_qty.is_sign_negative();
        if adding {
            let cost = self
                .avg_price
                .checked_mul(self.qty.abs())?
                .checked_add(price.checked_mul(signed_qty.abs())?)?;
            let avg_price = if qty.is_zero() {
                Decimal::ZERO
            } else {
                cost.checked_div(qty.abs())?
            };
            return Some(Self {
                qty,
                avg_price,
                realized_pnl: self.realized_pnl,
                fills,
            });
        }
        let closed = self.qty.abs().min(signed_qty.abs());
        let per_unit = if self.qty.is_sign_positive() {
            price.checked_sub(self.avg_price)?
        } else {
            self.avg_price.checked_sub(price)?
        };
        let realized_pnl = self
            .realized_pnl
            .checked_add(per_unit.checked_mul(closed)?)?;
        let avg_price = if qty.is_zero() {
            Decimal::ZERO
        } else if qty.is_sign_negative() == self.qty.is_sign_negative() {
            self.avg_price
        } else {
            price
        };
        Some(Self {
            qty,
            avg_price,
            realized_pnl,
            fills,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: i64) -> Decimal {
        Decimal::from(n)
    }

    fn fill(p: &Position, qty: i64, price: i64) -> Position {
        p.after_fill(d(qty), d(price)).expect("no overflow")
    }

    #[test]
    fn reduce_keeps_entry_and_realizes() {
        let p = fill(&fill(&Position::default(), 2, 100), -1, 110);
        assert_eq!(
            (p.qty, p.avg_price, p.realized_pnl, p.fills),
            (d(1), d(100), d(10), 2)
        );
    }

    #[test]
    fn adding_averages_both_ways() {
        let long = fill(&fill(&Position::default(), 1, 100), 3, 120);
        assert_eq!((long.qty, long.avg_price), (d(4), d(115)));
        let short = fill(&fill(&Position::default(), -1, 100), -1, 110);
        assert_eq!((short.qty, short.avg_price), (d(-2), d(105)));
        assert_eq!(short.realized_pnl, d(0));
    }

    #[test]
    fn flip_through_zero_and_close() {
        let p = fill(&fill(&Position::default(), 1, 100), -3, 90);
        assert_eq!((p.qty, p.avg_price, p.realized_pnl), (d(-2), d(90), d(-10)));
        let flat = fill(&p, 2, 80);
        assert_eq!(
            (flat.qty, flat.avg_price, flat.realized_pnl),
            (d(0), d(0), d(10))
        );
        let again = fill(&flat, -1, 50);
        assert_eq!((again.qty, again.avg_price, again.fills), (d(-1), d(50), 4));
    }

    #[test]
    fn overflow_is_reported_not_panicked() {
        let p = Position {
            qty: Decimal::MAX,
            avg_price: d(2),
            ..Position::default()
        };
        assert_eq!(p.after_fill(d(1), d(2)), None);
    }
}

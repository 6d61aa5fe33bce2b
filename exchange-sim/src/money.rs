//! Decimal strings in and out: strict parsing of the quantities and prices
//! clients send, and the fixed formats of every amount the API answers with
//! (quantities with 8 decimals, prices with 2 to 8).

use rust_decimal::{Decimal, RoundingStrategy};

/// Most decimals accepted in a quantity or price.
pub const MAX_DECIMALS: u32 = 8;
/// Decimals of every quantity in answers.
const QTY_DECIMALS: usize = 8;
/// Fewest decimals of a price in answers.
const MIN_PRICE_DECIMALS: u32 = 2;
/// Longest decimal string accepted.
const MAX_LEN: usize = 32;

/// Parse a strictly positive plain decimal (`123`, `0.01000000`) of at most
/// [`MAX_DECIMALS`] decimals and at most `max`. The error says what is wrong.
pub fn parse_positive(text: &str, max: Decimal) -> Result<Decimal, String> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if text.len() > MAX_LEN
        || int.is_empty()
        || !digits(int)
        || !digits(frac)
        || (text.contains('.') && frac.is_empty())
    {
        return Err(format!("{text:?} is not a plain decimal number"));
    }
    if frac.len() > MAX_DECIMALS as usize {
        return Err(format!("more than {MAX_DECIMALS} decimals in {text:?}"));
    }
    let value = Decimal::from_str_exact(text).map_err(|e| format!("{text:?}: {e}"))?;
    if value <= Decimal::ZERO {
        return Err(format!("{text:?} is not positive"));
    }
    if value > max {
        return Err(format!("{text:?} is above the maximum {max}"));
    }
    Ok(value)
}

/// A price given in cents.
pub fn from_cents(cents: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(cents), 2)
}

fn rounded(d: Decimal) -> Decimal {
    let d = d.round_dp_with_strategy(MAX_DECIMALS, RoundingStrategy::MidpointAwayFromZero);
    // Never print a negative zero.
    if d.is_zero() {
        Decimal::ZERO
    } else {
        d
    }
}

/// A quantity as answered: exactly 8 decimals (`0.01000000`, `-2.00000000`).
pub fn qty(d: Decimal) -> String {
    format!("{:.QTY_DECIMALS$}", rounded(d))
}

/// A price or amount of money as answered: 2 to 8 decimals (`42000.10`,
/// `100.00`, `33.33333333`).
pub fn price(d: Decimal) -> String {
    let d = rounded(d).normalize();
    if d.scale() < MIN_PRICE_DECIMALS {
        format!("{d:.2}")
    } else {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("valid decimal")
    }

    #[test]
    fn parsing_is_strict() {
        let max = dec("1000");
        assert_eq!(parse_positive("0.01000000", max), Ok(dec("0.01")));
        assert_eq!(parse_positive("7", max), Ok(dec("7")));
        for bad in [
            "",
            ".5",
            "5.",
            "-1",
            "+1",
            "1e3",
            "0",
            "0.000",
            "1.123456789",
            "1001",
            "1,5",
            " 1",
            "NaN",
            "١",
        ] {
            assert!(parse_positive(bad, max).is_err(), "{bad:?} accepted");
        }
        let huge = "9".repeat(40);
        assert!(parse_positive(&huge, Decimal::MAX).is_err());
    }

    #[test]
    fn formats_are_fixed() {
        assert_eq!(qty(dec("0.01")), "0.01000000");
        assert_eq!(qty(dec("-2")), "-2.00000000");
        assert_eq!(qty(-dec("0.000000001")), "0.00000000");
        assert_eq!(price(dec("42000.1")), "42000.10");
        assert_eq!(price(dec("100")), "100.00");
        assert_eq!(price(dec("100.12500000")), "100.125");
        assert_eq!(price(dec("100") / dec("3")), "33.33333333");
        assert_eq!(price(-dec("10")), "-10.00");
        assert_eq!(price(from_cents(4_200_010)), "42000.10");
        assert_eq!(price(from_cents(u64::MAX)), "184467440737095516.15");
    }
}

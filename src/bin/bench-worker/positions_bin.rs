//! Positions packed into one byte string: per position the key's distance
//! from the previous key, then each decimal in its binary form (the 96-bit
//! mantissa, zigzag, and the scale), as LEB128 varints. A typical position
//! takes about 20 bytes, against 56 as strings (or as 16-byte
//! `Decimal::serialize`), and nothing is formatted, parsed or visited field
//! by field. Decoding builds the map in one pass from the sorted keys.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserializer, Serializer};

use super::Position;

/// Longest encoding of one position: a u64 and three (u128, u8).
const MAX_POSITION: usize = 10 + 3 * (19 + 1);

/// Append `v` as LEB128 at `buf[at..]`; returns the new end.
fn put(buf: &mut [u8; MAX_POSITION], mut at: usize, v: u128) -> usize {
    // Nearly every value fits 64 bits, where the arithmetic is cheaper.
    if let Ok(mut v) = u64::try_from(v) {
        while v >= 0x80 {
            buf[at] = v as u8 | 0x80;
            v >>= 7;
            at += 1;
        }
        buf[at] = v as u8;
        return at + 1;
    }
    let mut v = v;
    while v >= 0x80 {
        buf[at] = v as u8 | 0x80;
        v >>= 7;
        at += 1;
    }
    buf[at] = v as u8;
    at + 1
}

fn put_decimal(buf: &mut [u8; MAX_POSITION], at: usize, d: Decimal) -> usize {
    let m = d.mantissa();
    let at = put(buf, at, ((m << 1) ^ (m >> 127)) as u128);
    buf[at] = d.scale() as u8;
    at + 1
}

/// Encode `m` (what `serialize` writes as one byte string).
pub fn pack(m: &BTreeMap<u64, Position>) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() * 24);
    let mut prev = 0u64;
    let mut buf = [0u8; MAX_POSITION];
    for (&k, p) in m {
        let at = put(&mut buf, 0, u128::from(k.wrapping_sub(prev)));
        prev = k;
        let at = put_decimal(&mut buf, at, p.qty);
        let at = put_decimal(&mut buf, at, p.avg_price);
        let at = put_decimal(&mut buf, at, p.realized_pnl);
        out.extend_from_slice(&buf[..at]);
    }
    out
}

/// Why packed positions do not decode.
#[derive(Debug)]
struct Bad(&'static str);

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    #[inline]
    fn byte(&mut self) -> Result<u8, Bad> {
        let b = *self.buf.get(self.at).ok_or(Bad("truncated position"))?;
        self.at += 1;
        Ok(b)
    }

    #[inline]
    fn varint(&mut self) -> Result<u128, Bad> {
        // Up to 9 bytes (63 bits) in u64 arithmetic, the rest in u128.
        let mut v = 0u64;
        for shift in (0..63).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(u128::from(v));
            }
        }
        let mut v = u128::from(v);
        for shift in (63..133).step_by(7) {
            let b = self.byte()?;
            v |= u128::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Bad("varint longer than 128 bits"))
    }

    #[inline]
    fn decimal(&mut self) -> Result<Decimal, Bad> {
        let z = self.varint()?;
        let scale = u32::from(self.byte()?);
        let bad = |_| Bad("a decimal out of range");
        match u64::try_from(z) {
            Ok(z) => {
                let m = (z >> 1) as i64 ^ -((z & 1) as i64);
                Decimal::try_new(m, scale).map_err(bad)
            }
            Err(_) => {
                let m = (z >> 1) as i128 ^ -((z & 1) as i128);
                Decimal::try_from_i128_with_scale(m, scale).map_err(bad)
            }
        }
    }
}

/// Decode what [`pack`] wrote.
pub fn unpack(bytes: &[u8]) -> Result<BTreeMap<u64, Position>, String> {
    unpack_inner(bytes).map_err(|e| e.to_string())
}

fn unpack_inner(bytes: &[u8]) -> Result<BTreeMap<u64, Position>, Bad> {
    let mut r = Reader { buf: bytes, at: 0 };
    // At least 7 bytes a position: a bounded reservation, whatever the input.
    let mut v = Vec::with_capacity(bytes.len() / 7);
    let mut key = 0u64;
    while r.at < bytes.len() {
        let step = u64::try_from(r.varint()?).map_err(|_| Bad("a key step over 64 bits"))?;
        key = key.wrapping_add(step);
        let p = Position {
            qty: r.decimal()?,
            avg_price: r.decimal()?,
            realized_pnl: r.decimal()?,
        };
        v.push((key, p));
    }
    // Sorted keys (as written): a bulk build, not a million inserts.
    Ok(v.into_iter().collect())
}

pub fn serialize<S: Serializer>(m: &BTreeMap<u64, Position>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(&pack(m))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, Position>, D::Error> {
    let bytes: &[u8] = serde::Deserialize::deserialize(d)?;
    unpack(bytes).map_err(D::Error::custom)
}

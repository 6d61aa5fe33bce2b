//! A local order book per symbol, kept the way Binance documents it for
//! `<symbol>@depth@100ms` diffs: buffer the diffs, fetch a REST snapshot
//! (`GET /api/v3/depth?symbol=S&limit=1000`), drop the diffs with
//! `u <= lastUpdateId`, apply the first one covering `lastUpdateId + 1`,
//! then each next one only if its `U` is the previous `u + 1`. Anything
//! else is a gap: counted, and repaired from a fresh snapshot, never
//! applied over.
//!
//! The books are part of the worker's snapshot (a section after the
//! schema's bytes, see [`split_section`]): a handoff continues them with no
//! gap; after a crash the next diff shows one (the dead worker consumed
//! diffs past the checkpoint), and the book resyncs.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One side's levels: price → quantity.
type Levels = BTreeMap<Decimal, Decimal>;

/// A symbol's local book.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalBook {
    /// The `u` of the last diff applied (or the snapshot's `lastUpdateId`).
    pub last_update_id: u64,
    #[serde(with = "levels_str")]
    pub bids: Levels,
    #[serde(with = "levels_str")]
    pub asks: Levels,
    /// Whether the book follows the stream (else it waits for a snapshot).
    pub synced: bool,
}

/// A diff event (`depthUpdate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Upper-case symbol (`s`).
    pub symbol: String,
    /// `U` and `u`.
    pub first: u64,
    pub last: u64,
    pub bids: Vec<(Decimal, Decimal)>,
    pub asks: Vec<(Decimal, Decimal)>,
}

/// A REST depth snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepthSnapshot {
    pub last_update_id: u64,
    pub bids: Vec<(Decimal, Decimal)>,
    pub asks: Vec<(Decimal, Decimal)>,
}

/// Every symbol's book, and what is in flight for them.
#[derive(Debug, Default)]
pub struct Books {
    pub books: BTreeMap<String, LocalBook>,
    /// Gaps found (each repaired from a snapshot).
    pub resyncs: u64,
    /// Diffs kept while a book waits for its snapshot (not handed over: a
    /// successor fetches again).
    buffered: BTreeMap<String, Vec<Diff>>,
    /// Symbols whose snapshot is being fetched.
    fetching: BTreeSet<String>,
}

/// What persists of [`Books`].
#[derive(Serialize, Deserialize)]
struct Persisted {
    books: BTreeMap<String, LocalBook>,
    resyncs: u64,
}

impl Books {
    /// A diff arrived. `Some(symbol)`: fetch that symbol's snapshot.
    pub fn on_diff(&mut self, d: Diff) -> Option<String> {
        let book = self.books.entry(d.symbol.clone()).or_default();
        if !book.synced {
            let symbol = d.symbol.clone();
            self.buffered.entry(symbol.clone()).or_default().push(d);
            return self.fetching.insert(symbol.clone()).then_some(symbol);
        }
        if d.last <= book.last_update_id {
            return None; // already in the book
        }
        if d.first <= book.last_update_id + 1 {
            apply(book, &d);
            return None;
        }
        // A gap: diffs between were never seen. Never apply over it.
        self.resyncs += 1;
        book.synced = false;
        let symbol = d.symbol.clone();
        self.buffered.insert(symbol.clone(), vec![d]);
        self.fetching.insert(symbol.clone()).then_some(symbol)
    }

    /// The snapshot of `symbol` came. `Some(symbol)`: it is too old for the
    /// buffered diffs (a gap between), fetch again.
    pub fn on_snapshot(&mut self, symbol: &str, snap: DepthSnapshot) -> Option<String> {
        self.fetching.remove(symbol);
        let book = self.books.entry(symbol.to_owned()).or_default();
        *book = LocalBook {
            last_update_id: snap.last_update_id,
            bids: snap
                .bids
                .into_iter()
                .filter(|(_, q)| !q.is_zero())
                .collect(),
            asks: snap
                .asks
                .into_iter()
                .filter(|(_, q)| !q.is_zero())
                .collect(),
            synced: true,
        };
        for d in self.buffered.remove(symbol).unwrap_or_default() {
            if d.last <= book.last_update_id {
                continue;
            }
            if d.first > book.last_update_id + 1 {
                // The snapshot is older than what the stream has moved on
                // to: a gap between. Fetch a newer one.
                book.synced = false;
                self.buffered.insert(symbol.to_owned(), vec![d]);
                self.fetching.insert(symbol.to_owned());
                return Some(symbol.to_owned());
            }
            apply(book, &d);
        }
        None
    }

    /// A fetch failed: try again on the next diff.
    pub fn fetch_failed(&mut self, symbol: &str) {
        self.fetching.remove(symbol);
    }

    pub fn encode(&self) -> Vec<u8> {
        let p = Persisted {
            books: self.books.clone(),
            resyncs: self.resyncs,
        };
        bincode::serialize(&p).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Books, String> {
        let p: Persisted = bincode::deserialize(bytes).map_err(|e| format!("order books: {e}"))?;
        Ok(Books {
            books: p.books,
            resyncs: p.resyncs,
            ..Books::default()
        })
    }
}

fn apply(book: &mut LocalBook, d: &Diff) {
    for (side, levels) in [(&mut book.bids, &d.bids), (&mut book.asks, &d.asks)] {
        for &(price, qty) in levels {
            if qty.is_zero() {
                side.remove(&price);
            } else {
                side.insert(price, qty);
            }
        }
    }
    book.last_update_id = d.last;
}

/// The digest the exchange simulator computes for its book
/// (`GET /api/v3/depth/digest`): CRC-32 of `"<price>:<qty>;"` for each bid,
/// best first, `"|"`, then each ask, best first, numbers normalized.
pub fn digest(book: &LocalBook) -> String {
    let mut text = String::new();
    for (p, q) in book.bids.iter().rev() {
        text.push_str(&format!("{}:{};", p.normalize(), q.normalize()));
    }
    text.push('|');
    for (p, q) in &book.asks {
        text.push_str(&format!("{}:{};", p.normalize(), q.normalize()));
    }
    format!("{:08x}", crc32fast::hash(text.as_bytes()))
}

/// A `depthUpdate` message: its stream and the diff; `None` for anything
/// else.
pub fn parse_diff(text: &str) -> Option<(String, Diff)> {
    #[derive(Deserialize)]
    struct Env {
        stream: String,
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        e: String,
        s: String,
        #[serde(rename = "U")]
        first: u64,
        #[serde(rename = "u")]
        last: u64,
        b: Vec<(String, String)>,
        a: Vec<(String, String)>,
    }
    if !text.contains("depthUpdate") {
        return None;
    }
    let env: Env = serde_json::from_str(text).ok()?;
    if env.data.e != "depthUpdate" {
        return None;
    }
    let levels = |v: Vec<(String, String)>| -> Option<Vec<(Decimal, Decimal)>> {
        v.into_iter()
            .map(|(p, q)| Some((p.parse().ok()?, q.parse().ok()?)))
            .collect()
    };
    Some((
        env.stream,
        Diff {
            symbol: env.data.s,
            first: env.data.first,
            last: env.data.last,
            bids: levels(env.data.b)?,
            asks: levels(env.data.a)?,
        },
    ))
}

/// A REST snapshot's JSON.
pub fn parse_snapshot(v: &serde_json::Value) -> Option<DepthSnapshot> {
    let levels = |k: &str| -> Option<Vec<(Decimal, Decimal)>> {
        v[k].as_array()?
            .iter()
            .map(|l| Some((l[0].as_str()?.parse().ok()?, l[1].as_str()?.parse().ok()?)))
            .collect()
    };
    Some(DepthSnapshot {
        last_update_id: v["lastUpdateId"].as_u64()?,
        bids: levels("bids")?,
        asks: levels("asks")?,
    })
}

/// The books ride after the schema's bytes: `section`, its length (u64 LE)
/// and this magic, so any schema's decoder gets exactly its own bytes.
const MAGIC: &[u8; 8] = b"HOBOOK01";

/// `schema_bytes` with `section` appended (nothing appended for `None`).
pub fn append_section(mut schema_bytes: Vec<u8>, section: Option<Vec<u8>>) -> Vec<u8> {
    if let Some(s) = section {
        let len = s.len() as u64;
        schema_bytes.extend_from_slice(&s);
        schema_bytes.extend_from_slice(&len.to_le_bytes());
        schema_bytes.extend_from_slice(MAGIC);
    }
    schema_bytes
}

/// Split a snapshot into the schema's bytes and the book section, if any.
pub fn split_section(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    let n = bytes.len();
    if n < 16 || &bytes[n - 8..] != MAGIC {
        return (bytes, None);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[n - 16..n - 8]);
    let len = u64::from_le_bytes(len) as usize;
    match (n - 16).checked_sub(len) {
        Some(start) => (&bytes[..start], Some(&bytes[start..n - 16])),
        None => (bytes, None),
    }
}

mod levels_str {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<Decimal, Decimal>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let v: Vec<(String, String)> = m
            .iter()
            .map(|(p, q)| (p.to_string(), q.to_string()))
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Decimal, Decimal>, D::Error> {
        let v: Vec<(String, String)> = Vec::deserialize(d)?;
        v.into_iter()
            .map(|(p, q)| {
                Ok((
                    p.parse().map_err(serde::de::Error::custom)?,
                    q.parse().map_err(serde::de::Error::custom)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn diff(first: u64, last: u64, bids: &[(&str, &str)]) -> Diff {
        Diff {
            symbol: "BTCUSDT".into(),
            first,
            last,
            bids: bids.iter().map(|(p, q)| (d(p), d(q))).collect(),
            asks: Vec::new(),
        }
    }

    fn snap(last: u64) -> DepthSnapshot {
        DepthSnapshot {
            last_update_id: last,
            bids: vec![(d("100"), d("1"))],
            asks: vec![(d("101"), d("2"))],
        }
    }

    #[test]
    fn binance_procedure_buffer_snapshot_drop_apply_and_gaps_resync() {
        let mut b = Books::default();
        assert_eq!(
            b.on_diff(diff(8, 9, &[("99", "1")])).as_deref(),
            Some("BTCUSDT")
        );
        assert_eq!(
            b.on_diff(diff(10, 12, &[("100", "0")])),
            None,
            "one fetch at a time"
        );
        assert_eq!(b.on_snapshot("BTCUSDT", snap(10)), None);
        let book = &b.books["BTCUSDT"];
        // 8..9 dropped (<= 10), 10..12 applied (covers 11): level 100 gone.
        assert_eq!((book.last_update_id, book.synced), (12, true));
        assert!(!book.bids.contains_key(&d("100")) && !book.bids.contains_key(&d("99")));
        assert_eq!(b.on_diff(diff(13, 13, &[("98", "3")])), None);
        assert_eq!(b.books["BTCUSDT"].bids[&d("98")], d("3"));
        // 14 never came: a gap, counted and refetched, not applied over.
        assert_eq!(
            b.on_diff(diff(15, 16, &[("97", "1")])).as_deref(),
            Some("BTCUSDT")
        );
        assert_eq!(b.resyncs, 1);
        assert!(!b.books["BTCUSDT"].bids.contains_key(&d("97")));
        // A snapshot older than the buffered diff: fetch again.
        assert_eq!(
            b.on_snapshot("BTCUSDT", snap(12)).as_deref(),
            Some("BTCUSDT")
        );
        assert_eq!(b.on_snapshot("BTCUSDT", snap(15)), None);
        assert_eq!(b.books["BTCUSDT"].last_update_id, 16);
    }

    #[test]
    fn digest_matches_the_simulators_text_and_books_round_trip() {
        let book = LocalBook {
            last_update_id: 1,
            bids: [(d("100.50"), d("1.5")), (d("100.00"), d("0.00000001"))]
                .into_iter()
                .collect(),
            asks: [(d("101.00"), d("1"))].into_iter().collect(),
            synced: true,
        };
        let text = "100.5:1.5;100:0.00000001;|101:1;";
        assert_eq!(
            digest(&book),
            format!("{:08x}", crc32fast::hash(text.as_bytes()))
        );
        let mut b = Books::default();
        b.books.insert("BTCUSDT".into(), book);
        b.resyncs = 3;
        let back = Books::decode(&b.encode()).unwrap();
        assert_eq!((back.books, back.resyncs), (b.books, 3));
        let bytes = append_section(vec![1, 2, 3], Some(vec![9; 5]));
        assert_eq!(
            split_section(&bytes),
            (&[1u8, 2, 3][..], Some(&[9u8; 5][..]))
        );
        assert_eq!(split_section(&[1, 2, 3]), (&[1u8, 2, 3][..], None));
    }

    #[test]
    fn a_depth_update_parses_and_anything_else_does_not() {
        let msg = r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":7,"b":[["100.00000000","0.00000000"]],"a":[["101.00000000","2.00000000"]]}}"#;
        let (stream, diff) = parse_diff(msg).unwrap();
        assert_eq!(
            (stream.as_str(), diff.first, diff.last),
            ("btcusdt@depth@100ms", 5, 7)
        );
        assert!(diff.bids[0].1.is_zero());
        assert!(parse_diff(r#"{"stream":"btcusdt@trade","data":{"e":"trade"}}"#).is_none());
        assert!(parse_diff("{not json depthUpdate").is_none());
    }
}

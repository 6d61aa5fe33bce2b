//! A snapshot written by schema 1 must keep decoding, in every later build.
//! `tests/fixtures/trading-state-v1.bin` was written by this crate's schema-1
//! code (regenerate only on purpose, with
//! `cargo test -p trading-worker -- --ignored write_v1_fixture`).

use crate::market::Trade;
use crate::schema::{self, FullState};
use crate::state::Strategy;

const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/trading-state-v1.bin");
const FIXTURE_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/trading-state-v1.bin"
);

/// A deterministic state: 2 000 trades of a zig-zag price on two symbols.
fn sample_state() -> FullState {
    let mut s = FullState::default();
    let strategy = Strategy::default();
    for i in 1..=2000u64 {
        for (sym, base) in [("BTCUSDT", 42_000i64), ("ETHUSDT", 2_200)] {
            let wave = ((i / 37) % 2) as i64 * 2 - 1; // +1/-1 every 37 trades
            let price = rust_decimal::Decimal::new((base * 100) + wave * (i as i64 % 37) * 7, 2);
            let t = Trade {
                stream: format!("{}@trade", sym.to_lowercase()),
                symbol: sym.into(),
                id: i,
                price,
                qty: rust_decimal::Decimal::new(1, 3),
                buyer_is_maker: i % 2 == 0,
            };
            s.base.apply("feed-0", &t, &strategy);
        }
    }
    s
}

#[test]
#[ignore = "writes the fixture; run on purpose only"]
fn write_v1_fixture() {
    let bytes = schema::encode(&sample_state(), 1).expect("encode");
    std::fs::write(FIXTURE_PATH, bytes).expect("write fixture");
}

#[test]
fn v1_fixture_still_decodes_and_matches() {
    let decoded = schema::decode(FIXTURE, 1).expect("the schema-1 fixture must decode");
    let expected = sample_state();
    assert_eq!(
        decoded.base, expected.base,
        "schema-1 decoding changed meaning"
    );
    assert!(decoded.base.orders_sent > 0, "fixture should hold orders");
    assert!(!decoded.base.books.is_empty());
    // Re-encoding gives the same bytes: the schema-1 codec is stable.
    assert_eq!(schema::encode(&decoded, 1).expect("encode"), FIXTURE);
}

#[test]
fn v2_reads_v1_and_writes_it_back_for_a_rollback() {
    let v1 = schema::decode(FIXTURE, 1).expect("decode");
    let mut v2 = v1.clone();
    v2.notional.insert(
        "feed-0/BTCUSDT".into(),
        rust_decimal::Decimal::new(12345, 2),
    );
    let bytes2 = schema::encode(&v2, 2).expect("encode v2");
    let back2 = schema::decode(&bytes2, 2).expect("decode v2");
    assert_eq!(back2, v2);
    let rollback = schema::encode(&back2, 1).expect("write schema 1");
    assert_eq!(schema::decode(&rollback, 1).expect("decode").base, v1.base);
    assert_eq!(
        schema::digest(&v1),
        schema::digest(&v2),
        "digest covers schema-1 fields only"
    );
}

#[test]
fn garbage_snapshots_are_errors_not_panics() {
    for bytes in [
        &b""[..],
        b"\xff\xff\xff\xff\xff",
        &FIXTURE[..FIXTURE.len() / 2],
    ] {
        assert!(schema::decode(bytes, 1).is_err());
        assert!(schema::decode(bytes, 2).is_err());
    }
    assert!(schema::decode(FIXTURE, 7).is_err());
}

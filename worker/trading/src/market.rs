//! The exchange's wire format (Binance-style combined stream) and what the
//! worker sends back.

use rust_decimal::Decimal;
use serde::Deserialize;

/// One trade, as parsed from `{"stream":..,"data":{"e":"trade",..}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    pub stream: String,
    pub symbol: String,
    pub id: u64,
    pub price: Decimal,
    pub qty: Decimal,
    pub buyer_is_maker: bool,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    stream: Option<&'a str>,
    data: Option<TradeData<'a>>,
}

#[derive(Deserialize)]
struct TradeData<'a> {
    #[serde(rename = "e")]
    event: Option<&'a str>,
    #[serde(rename = "s")]
    symbol: Option<&'a str>,
    #[serde(rename = "t")]
    id: Option<u64>,
    #[serde(rename = "p")]
    price: Option<&'a str>,
    #[serde(rename = "q")]
    qty: Option<&'a str>,
    #[serde(rename = "m", default)]
    buyer_is_maker: bool,
}

/// A trade if `text` is one; anything else (subscription answers, other
/// events, unknown shapes) is `None`: the feed may say things we ignore.
pub fn parse_trade(text: &str) -> Option<Trade> {
    let env: Envelope<'_> = serde_json::from_str(text).ok()?;
    let data = env.data?;
    if data.event != Some("trade") {
        return None;
    }
    Some(Trade {
        stream: env.stream?.to_string(),
        symbol: data.symbol?.to_string(),
        id: data.id?,
        price: data.price?.parse().ok()?,
        qty: data.qty?.parse().ok()?,
        buyer_is_maker: data.buyer_is_maker,
    })
}

/// Only `(stream, trade id)` if `text` is a trade: what a client that counts
/// and acks trades needs (the benchmark's worker and its bare client).
pub fn trade_id(text: &str) -> Option<(&str, u64)> {
    let env: Envelope<'_> = serde_json::from_str(text).ok()?;
    let data = env.data?;
    if data.event != Some("trade") {
        return None;
    }
    Some((env.stream?, data.id?))
}

/// `{"method":"SUBSCRIBE","params":["btcusdt@trade",..],"id":1}`.
pub fn subscribe(symbols: &[String], depth: bool) -> String {
    let mut params: Vec<String> = symbols
        .iter()
        .map(|s| format!("{}@trade", s.to_lowercase()))
        .collect();
    if depth {
        params.extend(
            symbols
                .iter()
                .map(|s| format!("{}@depth@100ms", s.to_lowercase())),
        );
    }
    serde_json::json!({"method": "SUBSCRIBE", "params": params, "id": 1}).to_string()
}

/// `{"method":"ack","stream":"btcusdt@depth@100ms","u":12345}`: a depth
/// diff taken in, by its final update id.
pub fn ack_diff(stream: &str, u: u64) -> String {
    serde_json::json!({"method": "ack", "stream": stream, "u": u}).to_string()
}

/// `{"method":"ack","stream":"btcusdt@trade","t":12345}`.
pub fn ack(stream: &str, id: u64) -> String {
    serde_json::json!({"method": "ack", "stream": stream, "t": id}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_id_takes_trades_only() {
        let t = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":42,"p":"1.0","q":"2.0","T":1,"m":true}}"#;
        assert_eq!(trade_id(t), Some(("btcusdt@trade", 42)));
        assert_eq!(trade_id(r#"{"result":null,"id":1}"#), None);
        assert_eq!(trade_id("not json"), None);
    }

    #[test]
    fn parses_the_contract_example_and_tolerates_the_rest() {
        let t = parse_trade(r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":12345,"p":"42000.10","q":"0.00100000","T":1700000000000,"m":true,"x":1}}"#).unwrap();
        assert_eq!(t.id, 12345);
        assert_eq!(t.price.to_string(), "42000.10");
        assert_eq!(t.symbol, "BTCUSDT");
        assert!(parse_trade(r#"{"result":null,"id":1}"#).is_none());
        assert!(parse_trade("not json").is_none());
        assert!(parse_trade(
            r#"{"stream":"x","data":{"e":"trade","t":1,"p":"bad","q":"1","s":"X"}}"#
        )
        .is_none());
    }

    #[test]
    fn subscribe_and_ack_match_the_contract() {
        assert_eq!(
            subscribe(&["btcusdt".into(), "ethusdt".into()], false),
            r#"{"id":1,"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"]}"#
        );
        assert_eq!(
            ack("btcusdt@trade", 7),
            r#"{"method":"ack","stream":"btcusdt@trade","t":7}"#
        );
    }
}

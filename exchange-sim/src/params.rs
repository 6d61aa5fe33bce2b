//! Validation of the order API's inputs: the parameters of `POST
//! /api/v3/order` (query string and form body, Binance's way, or an old
//! client's JSON body) and of `GET`/`DELETE`. Every refusal names the
//! offending parameter.

use crate::error::ApiError;
use crate::money;
use crate::orders::{NewOrder, OrderKey, OrderType, Side};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

/// Largest quantity accepted.
const MAX_QTY: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Largest price accepted.
const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Longest symbol accepted.
const MAX_SYMBOL_LEN: usize = 20;
/// Longest client order id accepted (Binance's limit).
const MAX_CLIENT_ID_LEN: usize = 36;

/// The `key=value` pairs of a query string, percent-decoded (`+` is a
/// space). Undecodable pairs are kept with what could be decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// The value of parameter `name` in `pairs`, if sent; sent twice is
/// Binance's `-1101`.
pub fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::DuplicateParam);
    }
    Ok(first.map(String::as_str))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| {
            bytes
                .get(j)
                .and_then(|&c| char::from(c).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Check a `symbol` value: upper-case letters and digits.
pub fn symbol(value: Option<&str>) -> Result<String, ApiError> {
    let s = value.unwrap_or_default();
    if s.is_empty() {
        return Err(ApiError::param("symbol", "missing"));
    }
    if s.len() > MAX_SYMBOL_LEN
        || !s
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(ApiError::param(
            "symbol",
            "must be upper-case letters and digits",
        ));
    }
    Ok(s.to_owned())
}

/// Check a client order id: 1 to 36 of `A-Z a-z 0-9 . _ : / -`.
fn client_id(name: &'static str, value: Option<&str>) -> Result<String, ApiError> {
    let s = value.unwrap_or_default();
    if s.is_empty() {
        return Err(ApiError::param(name, "missing"));
    }
    let legal = |b: u8| b.is_ascii_alphanumeric() || b".-_:/".contains(&b);
    if s.len() > MAX_CLIENT_ID_LEN || !s.bytes().all(legal) {
        return Err(ApiError::param(
            name,
            "must be 1 to 36 of A-Z a-z 0-9 . _ : / -",
        ));
    }
    Ok(s.to_owned())
}

/// A field of the JSON body that must be a string, if present.
fn string_field<'a>(
    body: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::param(name, "must be a string")),
    }
}

/// Validate the JSON body of `POST /api/v3/order` (an unsigned old client's).
pub fn new_order(body: &[u8]) -> Result<NewOrder, ApiError> {
    let body: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ApiError::Body("expected a JSON object".into())),
        Err(e) => return Err(ApiError::Body(format!("invalid JSON: {e}"))),
    };
    order_fields(|name| string_field(&body, name))
}

/// Validate the parameters of `POST /api/v3/order` sent Binance's way
/// (query string and form body, see [`crate::auth::params`]); others
/// (`timestamp`, `signature`, …) are ignored here.
pub fn new_order_form(pairs: &[(String, String)]) -> Result<NewOrder, ApiError> {
    order_fields(|name| single(pairs, name))
}

/// Validate an order's fields, each read by `field`.
fn order_fields<'a>(
    field: impl Fn(&'static str) -> Result<Option<&'a str>, ApiError>,
) -> Result<NewOrder, ApiError> {
    let symbol = symbol(field("symbol")?)?;
    let side = match field("side")? {
        Some("BUY") => Side::Buy,
        Some("SELL") => Side::Sell,
        None => return Err(ApiError::param("side", "missing")),
        Some(_) => return Err(ApiError::param("side", "must be BUY or SELL")),
    };
    let kind = match field("type")? {
        Some("MARKET") => OrderType::Market,
        Some("LIMIT") => OrderType::Limit,
        None => return Err(ApiError::param("type", "missing")),
        Some(_) => return Err(ApiError::param("type", "must be MARKET or LIMIT")),
    };
    let qty = match field("quantity")? {
        None => return Err(ApiError::param("quantity", "missing")),
        Some(text) => {
            money::parse_positive(text, MAX_QTY).map_err(|e| ApiError::param("quantity", e))?
        }
    };
    let price = field("price")?;
    let limit_price = match (kind, price) {
        (OrderType::Market, None) => None,
        (OrderType::Market, Some(_)) => return Err(ApiError::PriceNotRequired),
        (OrderType::Limit, None) => return Err(ApiError::param("price", "missing")),
        (OrderType::Limit, Some(text)) => {
            Some(money::parse_positive(text, MAX_PRICE).map_err(|e| ApiError::param("price", e))?)
        }
    };
    let client_id = client_id("newClientOrderId", field("newClientOrderId")?)?;
    Ok(NewOrder {
        symbol,
        side,
        kind,
        qty,
        limit_price,
        client_id,
    })
}

/// Validate the parameters of `GET`/`DELETE /api/v3/order` (query string
/// and form body): the symbol and the order (`origClientOrderId`, or
/// `orderId`).
pub fn order_key(pairs: &[(String, String)]) -> Result<(String, OrderKey), ApiError> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let symbol = symbol(get("symbol"))?;
    let key = match (get("origClientOrderId"), get("orderId")) {
        (Some(id), _) => OrderKey::ClientId(client_id("origClientOrderId", Some(id))?),
        (None, Some(id)) => OrderKey::OrderId(
            id.parse()
                .map_err(|_| ApiError::param("orderId", "must be a positive integer"))?,
        ),
        (None, None) => return Err(ApiError::param("origClientOrderId", "missing")),
    };
    Ok((symbol, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(e: ApiError) -> &'static str {
        match e {
            ApiError::Param { name, .. } => name,
            other => panic!("not a parameter error: {other:?}"),
        }
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(
            query_pairs("a=1&&b=x%3Ay%2f&c&d=%zz+%4"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x:y/".into()),
                ("c".into(), String::new()),
                ("d".into(), "%zz %4".into()),
            ]
        );
        assert_eq!(query_pairs("x=%FF")[0].1, "\u{FFFD}");
    }

    #[test]
    fn accepts_market_and_limit_orders() {
        let o = new_order(
            br#"{"symbol":"BTCUSDT","side":"BUY","type":"MARKET","quantity":"0.01000000","newClientOrderId":"w1-000042","timestamp":1}"#,
        )
        .expect("valid");
        assert_eq!(
            (o.side, o.kind, o.limit_price),
            (Side::Buy, OrderType::Market, None)
        );
        assert_eq!(o.qty.to_string(), "0.01000000");
        assert_eq!(o.client_id, "w1-000042");
        let o = new_order(
            br#"{"symbol":"ETHUSDT","side":"SELL","type":"LIMIT","quantity":"1","price":"2200.5","newClientOrderId":"a:b/c.d_e"}"#,
        )
        .expect("valid");
        assert_eq!(o.limit_price.map(|p| p.to_string()), Some("2200.5".into()));
    }

    #[test]
    fn refusals_name_the_field() {
        let base = r#""symbol":"BTCUSDT","side":"BUY","type":"MARKET","quantity":"1","newClientOrderId":"x""#;
        let with = |replace: &str, by: &str| {
            let body = format!("{{{}}}", base.replace(replace, by));
            new_order(body.as_bytes())
        };
        let field = |replace: &str, by: &str| name_of(with(replace, by).expect_err("refused"));
        assert_eq!(field(r#""symbol":"BTCUSDT","#, ""), "symbol");
        assert_eq!(field("BTCUSDT", "btcusdt"), "symbol");
        assert_eq!(field(r#""BUY""#, r#""buy""#), "side");
        assert_eq!(field(r#""BUY""#, "1"), "side");
        assert_eq!(field("MARKET", "STOP"), "type");
        assert_eq!(field(r#""quantity":"1""#, r#""quantity":1"#), "quantity");
        assert_eq!(field(r#""quantity":"1""#, r#""quantity":"-1""#), "quantity");
        assert_eq!(field(r#""x""#, r#""""#), "newClientOrderId");
        assert_eq!(field(r#""x""#, r#""has space""#), "newClientOrderId");
        assert_eq!(
            field(r#""x""#, &format!("{:?}", "x".repeat(37))),
            "newClientOrderId"
        );
        assert_eq!(field("MARKET", "LIMIT"), "price");
        assert_eq!(
            with(r#""quantity":"1""#, r#""quantity":"1","price":"5""#),
            Err(ApiError::PriceNotRequired)
        );
        assert!(matches!(new_order(b"[1]"), Err(ApiError::Body(_))));
        assert!(matches!(
            new_order(b"\xff\x00garbage"),
            Err(ApiError::Body(_))
        ));
        assert!(matches!(new_order(b""), Err(ApiError::Body(_))));
    }

    #[test]
    fn form_orders_are_read_like_json_ones() {
        let pairs = query_pairs(
            "symbol=BTCUSDT&side=SELL&type=LIMIT&quantity=0.5&price=41000.5\
             &newClientOrderId=w%3A1%2Fa&recvWindow=5000&timestamp=1&signature=ab",
        );
        let o = new_order_form(&pairs).expect("valid");
        assert_eq!((o.side, o.kind), (Side::Sell, OrderType::Limit));
        assert_eq!(o.client_id, "w:1/a");
        assert_eq!(o.limit_price.map(|p| p.to_string()), Some("41000.5".into()));
        let refused = |q: &str| new_order_form(&query_pairs(q)).expect_err(q);
        assert_eq!(
            name_of(refused(
                "side=BUY&type=MARKET&quantity=1&newClientOrderId=x"
            )),
            "symbol"
        );
        assert_eq!(
            refused("symbol=BTCUSDT&symbol=BTCUSDT&side=BUY"),
            ApiError::DuplicateParam
        );
        assert_eq!(
            name_of(refused(
                "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=-1&newClientOrderId=x"
            )),
            "quantity"
        );
    }

    fn order_query(query: &str) -> Result<(String, OrderKey), ApiError> {
        order_key(&query_pairs(query))
    }

    #[test]
    fn order_queries() {
        assert_eq!(
            order_query("symbol=BTCUSDT&origClientOrderId=w1%3A7"),
            Ok(("BTCUSDT".into(), OrderKey::ClientId("w1:7".into())))
        );
        assert_eq!(
            order_query("orderId=12&symbol=BTCUSDT"),
            Ok(("BTCUSDT".into(), OrderKey::OrderId(12)))
        );
        assert_eq!(
            name_of(order_query("origClientOrderId=x").expect_err("no symbol")),
            "symbol"
        );
        assert_eq!(
            name_of(order_query("symbol=BTCUSDT").expect_err("no id")),
            "origClientOrderId"
        );
        assert_eq!(
            name_of(order_query("symbol=BTCUSDT&orderId=-1").expect_err("bad")),
            "orderId"
        );
    }
}

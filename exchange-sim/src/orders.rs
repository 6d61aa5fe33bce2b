//! The order book behind the REST API: every order ever accepted, indexed by
//! order id and client order id, the positions their fills make, and the
//! counters `GET /orders/audit` reports.
//!
//! Pure bookkeeping (no I/O, no locking, no clock): callers pass the time and
//! the symbol's reference price. Orders never match each other: a `MARKET`
//! order, or a `LIMIT` order marketable against the reference price, fills
//! in full at the reference price; any other `LIMIT` order rests as `NEW`
//! until cancelled.

use crate::error::ApiError;
use crate::money;
use crate::positions::Position;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// At most this many orders (the most recent) are listed in the audit's `by_client_id`.
pub const MAX_AUDITED_ORDERS: usize = 100_000;

/// `BUY` or `SELL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "BUY",
            Self::Sell => "SELL",
        }
    }
}

/// `MARKET` or `LIMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderType {
    Market,
    Limit,
}

impl OrderType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Market => "MARKET",
            Self::Limit => "LIMIT",
        }
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    Filled,
    Canceled,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Filled => "FILLED",
            Self::Canceled => "CANCELED",
        }
    }
}

/// A validated order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Upper-case symbol.
    pub symbol: String,
    pub side: Side,
    pub kind: OrderType,
    /// Positive quantity.
    pub qty: Decimal,
    /// The limit price (`LIMIT` orders only).
    pub limit_price: Option<Decimal>,
    /// `newClientOrderId`.
    pub client_id: String,
}

/// An accepted order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Exchange order id, from 1.
    pub order_id: u64,
    pub client_id: String,
    pub symbol: String,
    pub side: Side,
    pub kind: OrderType,
    pub orig_qty: Decimal,
    pub executed_qty: Decimal,
    /// The limit price; zero for `MARKET` orders.
    pub price: Decimal,
    /// The fill price; zero while unfilled.
    pub avg_price: Decimal,
    pub status: Status,
    /// When the order was accepted (Unix ms).
    pub received_ms: u64,
    /// When the order last changed (accepted, or cancelled), Unix ms.
    pub transact_ms: u64,
}

/// How a `GET`/`DELETE` names its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// `origClientOrderId`.
    ClientId(String),
    /// `orderId`.
    OrderId(u64),
}

/// Counters of the order audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrderCounts {
    /// Orders accepted.
    pub orders: u64,
    pub filled: u64,
    pub canceled: u64,
    /// Accepted orders still `NEW`.
    pub open: u64,
    /// Placements refused because the client order id was used before.
    pub duplicate_client_ids: u64,
    /// Placements refused by `--order-reject-every`.
    pub rejected: u64,
    /// Placements refused as malformed (bad fields, unknown symbol).
    pub invalid: u64,
}

/// Every order and position.
#[derive(Debug)]
pub struct Book {
    reject_every: u64,
    /// Orders by `order_id - 1`.
    orders: Vec<Order>,
    by_client_id: HashMap<String, usize>,
    positions: BTreeMap<String, Position>,
    /// Placements that reached the reject-every check.
    attempts: u64,
    counts: OrderCounts,
}

impl Book {
    /// An empty book trading `symbols` (upper case); every `reject_every`th
    /// placement is rejected (0 = none).
    pub fn new<'a>(symbols: impl IntoIterator<Item = &'a str>, reject_every: u64) -> Self {
        Self {
            reject_every,
            orders: Vec::new(),
            by_client_id: HashMap::new(),
            positions: symbols
                .into_iter()
                .map(|s| (s.to_owned(), Position::default()))
                .collect(),
            attempts: 0,
            counts: OrderCounts::default(),
        }
    }

    /// Count a placement refused before it reached the book (malformed request).
    pub fn record_invalid(&mut self) {
        self.counts.invalid += 1;
    }

    /// Accept (and fill, if marketable at `reference`) `req` at `now_ms`.
    pub fn place(
        &mut self,
        req: NewOrder,
        reference: Decimal,
        now_ms: u64,
    ) -> Result<&Order, ApiError> {
        let Some(position) = self.positions.get(&req.symbol) else {
            self.counts.invalid += 1;
            return Err(ApiError::InvalidSymbol);
        };
        if self.by_client_id.contains_key(&req.client_id) {
            self.counts.duplicate_client_ids += 1;
            return Err(ApiError::Duplicate);
        }
        self.attempts += 1;
        if self.reject_every > 0 && self.attempts.is_multiple_of(self.reject_every) {
            self.counts.rejected += 1;
            return Err(ApiError::Rejected);
        }
        let marketable = match (req.kind, req.side, req.limit_price) {
            (OrderType::Market, _, _) | (OrderType::Limit, _, None) => true,
            (OrderType::Limit, Side::Buy, Some(limit)) => limit >= reference,
            (OrderType::Limit, Side::Sell, Some(limit)) => limit <= reference,
        };
        let (status, executed_qty, avg_price, next_position) = if marketable {
            let signed = match req.side {
                Side::Buy => req.qty,
                Side::Sell => -req.qty,
            };
            let next = position.after_fill(signed, reference).ok_or_else(|| {
                self.counts.invalid += 1;
                ApiError::param("quantity", "the position would overflow")
            })?;
            (Status::Filled, req.qty, reference, Some(next))
        } else {
            (Status::New, Decimal::ZERO, Decimal::ZERO, None)
        };
        if let Some(next) = next_position {
            self.positions.insert(req.symbol.clone(), next);
        }
        match status {
            Status::Filled => self.counts.filled += 1,
            _ => self.counts.open += 1,
        }
        self.counts.orders += 1;
        let index = self.orders.len();
        self.by_client_id.insert(req.client_id.clone(), index);
        self.orders.push(Order {
            order_id: index as u64 + 1,
            client_id: req.client_id,
            symbol: req.symbol,
            side: req.side,
            kind: req.kind,
            orig_qty: req.qty,
            executed_qty,
            price: req.limit_price.unwrap_or(Decimal::ZERO),
            avg_price,
            status,
            received_ms: now_ms,
            transact_ms: now_ms,
        });
        Ok(&self.orders[index])
    }

    fn index_of(&self, symbol: &str, key: &OrderKey) -> Result<Option<usize>, ApiError> {
        if !self.positions.contains_key(symbol) {
            return Err(ApiError::InvalidSymbol);
        }
        let index = match key {
            OrderKey::ClientId(id) => self.by_client_id.get(id).copied(),
            OrderKey::OrderId(id) => usize::try_from(*id)
                .ok()
                .and_then(|id| id.checked_sub(1))
                .filter(|&i| i < self.orders.len()),
        };
        Ok(index.filter(|&i| self.orders[i].symbol == symbol))
    }

    /// The order `key` of `symbol`.
    pub fn get(&self, symbol: &str, key: &OrderKey) -> Result<&Order, ApiError> {
        match self.index_of(symbol, key)? {
            Some(i) => Ok(&self.orders[i]),
            None => Err(ApiError::NoSuchOrder),
        }
    }

    /// Cancel the open order `key` of `symbol` at `now_ms`.
    pub fn cancel(
        &mut self,
        symbol: &str,
        key: &OrderKey,
        now_ms: u64,
    ) -> Result<&Order, ApiError> {
        let Some(i) = self.index_of(symbol, key)? else {
            return Err(ApiError::UnknownOrder);
        };
        let order = &mut self.orders[i];
        if order.status != Status::New {
            return Err(ApiError::UnknownOrder);
        }
        order.status = Status::Canceled;
        order.transact_ms = now_ms;
        self.counts.open -= 1;
        self.counts.canceled += 1;
        Ok(order)
    }

    /// Positions of every traded symbol, flat ones included.
    pub fn positions(&self) -> &BTreeMap<String, Position> {
        &self.positions
    }

    /// The counters.
    #[cfg(test)]
    pub fn counts(&self) -> &OrderCounts {
        &self.counts
    }

    /// The `GET /orders/audit` JSON.
    pub fn audit_json(&self) -> String {
        #[derive(Serialize)]
        struct Entry<'a> {
            order_id: u64,
            symbol: &'a str,
            status: &'static str,
            side: &'static str,
            #[serde(rename = "type")]
            kind: &'static str,
            qty: String,
            executed_qty: String,
            price: String,
            received_ms: u64,
        }
        #[derive(Serialize)]
        struct Audit<'a> {
            #[serde(flatten)]
            counts: &'a OrderCounts,
            by_client_id: BTreeMap<&'a str, Entry<'a>>,
            by_client_id_omitted: usize,
        }
        let by_client_id = self
            .orders
            .iter()
            .rev()
            .take(MAX_AUDITED_ORDERS)
            .map(|o| {
                let price = if o.status == Status::Filled {
                    o.avg_price
                } else {
                    o.price
                };
                let entry = Entry {
                    order_id: o.order_id,
                    symbol: &o.symbol,
                    status: o.status.as_str(),
                    side: o.side.as_str(),
                    kind: o.kind.as_str(),
                    qty: money::qty(o.orig_qty),
                    executed_qty: money::qty(o.executed_qty),
                    price: money::price(price),
                    received_ms: o.received_ms,
                };
                (o.client_id.as_str(), entry)
            })
            .collect();
        let audit = Audit {
            counts: &self.counts,
            by_client_id,
            by_client_id_omitted: self.orders.len().saturating_sub(MAX_AUDITED_ORDERS),
        };
        serde_json::to_string(&audit).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(n: i64) -> Decimal {
        Decimal::from(n)
    }

    fn order(id: &str, side: Side, qty: i64, limit: Option<i64>) -> NewOrder {
        NewOrder {
            symbol: "BTCUSDT".into(),
            side,
            kind: if limit.is_some() {
                OrderType::Limit
            } else {
                OrderType::Market
            },
            qty: dec(qty),
            limit_price: limit.map(dec),
            client_id: id.into(),
        }
    }

    #[test]
    fn market_fills_limit_rests_or_fills() {
        let mut b = Book::new(["BTCUSDT"], 0);
        let o = b
            .place(order("a", Side::Buy, 2, None), dec(100), 7)
            .expect("placed");
        assert_eq!(
            (o.order_id, o.status, o.avg_price),
            (1, Status::Filled, dec(100))
        );
        let o = b
            .place(order("b", Side::Buy, 1, Some(99)), dec(100), 8)
            .expect("placed");
        assert_eq!((o.status, o.executed_qty), (Status::New, dec(0)));
        let o = b
            .place(order("c", Side::Sell, 1, Some(95)), dec(100), 9)
            .expect("placed");
        assert_eq!(
            (o.status, o.avg_price, o.price),
            (Status::Filled, dec(100), dec(95))
        );
        let p = &b.positions()["BTCUSDT"];
        assert_eq!((p.qty, p.fills), (dec(1), 2));
        assert_eq!(
            (b.counts().orders, b.counts().filled, b.counts().open),
            (3, 2, 1)
        );
    }

    #[test]
    fn duplicates_rejections_and_unknown_symbols() {
        let mut b = Book::new(["BTCUSDT"], 2);
        assert!(b.place(order("a", Side::Buy, 1, None), dec(1), 0).is_ok());
        assert_eq!(
            b.place(order("a", Side::Buy, 1, None), dec(1), 0),
            Err(ApiError::Duplicate)
        );
        assert_eq!(
            b.place(order("b", Side::Buy, 1, None), dec(1), 0),
            Err(ApiError::Rejected)
        );
        // A rejected order never existed: its client id is still free.
        assert!(b.place(order("b", Side::Buy, 1, None), dec(1), 0).is_ok());
        let mut eth = order("c", Side::Buy, 1, None);
        eth.symbol = "ETHUSDT".into();
        assert_eq!(b.place(eth, dec(1), 0), Err(ApiError::InvalidSymbol));
        let c = b.counts();
        assert_eq!(
            (c.orders, c.duplicate_client_ids, c.rejected, c.invalid),
            (2, 1, 1, 1)
        );
    }

    #[test]
    fn get_and_cancel() {
        let mut b = Book::new(["BTCUSDT", "ETHUSDT"], 0);
        assert!(b
            .place(order("rest", Side::Buy, 1, Some(1)), dec(100), 1)
            .is_ok());
        assert!(b
            .place(order("fill", Side::Buy, 1, None), dec(100), 2)
            .is_ok());
        let by_id = b.get("BTCUSDT", &OrderKey::OrderId(2)).expect("found");
        assert_eq!(by_id.client_id, "fill");
        let key = OrderKey::ClientId("rest".into());
        assert_eq!(b.get("ETHUSDT", &key), Err(ApiError::NoSuchOrder));
        assert_eq!(b.get("XRPUSDT", &key), Err(ApiError::InvalidSymbol));
        assert_eq!(
            b.get("BTCUSDT", &OrderKey::OrderId(0)),
            Err(ApiError::NoSuchOrder)
        );
        let fill = OrderKey::ClientId("fill".into());
        assert_eq!(b.cancel("BTCUSDT", &fill, 3), Err(ApiError::UnknownOrder));
        let c = b.cancel("BTCUSDT", &key, 3).expect("cancelled");
        assert_eq!(
            (c.status, c.transact_ms, c.received_ms),
            (Status::Canceled, 3, 1)
        );
        assert_eq!(b.cancel("BTCUSDT", &key, 4), Err(ApiError::UnknownOrder));
        assert_eq!(
            b.place(order("rest", Side::Buy, 1, None), dec(1), 5),
            Err(ApiError::Duplicate)
        );
        let c = b.counts();
        assert_eq!((c.orders, c.filled, c.canceled, c.open), (2, 1, 1, 0));
    }

    #[test]
    fn audit_lists_orders_by_client_id() {
        let mut b = Book::new(["BTCUSDT"], 0);
        assert!(b
            .place(order("w1-1", Side::Sell, 1, None), dec(42), 9)
            .is_ok());
        let a: serde_json::Value = serde_json::from_str(&b.audit_json()).expect("json");
        assert_eq!(a["orders"], 1);
        assert_eq!(a["filled"], 1);
        assert_eq!(a["by_client_id_omitted"], 0);
        let e = &a["by_client_id"]["w1-1"];
        assert_eq!(e["status"], "FILLED");
        assert_eq!(e["side"], "SELL");
        assert_eq!(e["qty"], "1.00000000");
        assert_eq!(e["price"], "42.00");
        assert_eq!(e["received_ms"], 9);
    }
}

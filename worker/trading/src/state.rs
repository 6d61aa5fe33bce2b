//! The trading worker's state: per-stream cursors, one [`Book`] per
//! (connection, symbol), and orders.
//!
//! Books are keyed per connection so that each connection's run is
//! deterministic on its own, whatever the interleaving between connections;
//! the operator's view sums them per symbol.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::book::{Position, Regime, Side, Signal, SignalParams, DP};
use crate::market::Trade;
use crate::rest::OrderEvent;

/// Progress of one stream on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub last_id: u64,
    pub trades: u64,
    /// Ids skipped (the feed or a handoff lost something).
    pub gaps: u64,
    /// Ids seen again or out of order (ignored).
    pub repeats: u64,
}

/// A position and the signal that trades it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    pub symbol: String,
    pub position: Position,
    pub signal: Signal,
}

/// Where an order stands, as far as this worker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Paper trading: fills at the book's next trade price.
    Paper,
    /// Sent over REST (or about to be); the exchange's answer not yet seen.
    /// After a takeover or a crash this means *unknown*: reconcile by query.
    InFlight,
    /// Accepted by the exchange and resting.
    Accepted,
}

/// An order sent and not yet filled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub client_id: String,
    /// The book it belongs to.
    pub book: String,
    pub symbol: String,
    pub side: Side,
    #[serde(with = "rust_decimal::serde::str")]
    pub qty: Decimal,
    pub status: OrderStatus,
}

/// Everything the worker carries across a handoff (schema 1 fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Keyed by `"<connection>/<stream>"`.
    pub cursors: BTreeMap<String, Cursor>,
    /// Keyed by `"<connection>/<SYMBOL>"`.
    pub books: BTreeMap<String, Book>,
    /// Orders not yet filled, by client order id.
    pub open_orders: BTreeMap<String, Order>,
    /// Sequence of the next client order id: ids are never reused, across
    /// every generation of the worker, because the sequence is state.
    pub next_order_seq: u64,
    pub orders_sent: u64,
    pub orders_filled: u64,
    pub orders_rejected: u64,
}

/// How orders are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// Fill at the next trade price, locally: deterministic.
    Paper,
    /// Send to the exchange's REST API.
    Rest,
}

/// Trading parameters (settings, not state).
#[derive(Debug, Clone, Copy)]
pub struct Strategy {
    pub signal: SignalParams,
    /// Size of the position the signal goes long or short.
    pub lot: Decimal,
    pub execution: Execution,
    /// Place no order for now (a recovery is finding out from the exchange
    /// which ids a crashed worker used after the checkpoint): the signals
    /// go on, and a book still off its target places its order after.
    pub hold_orders: bool,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            signal: SignalParams::default(),
            lot: Decimal::new(1, 2),
            execution: Execution::Paper,
            hold_orders: false,
        }
    }
}

/// A fill, reported so that schema-2 fields can follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub book: String,
    pub side: Side,
    pub qty: Decimal,
    pub price: Decimal,
}

/// What one trade caused.
#[derive(Debug, Default)]
pub struct Applied {
    pub fills: Vec<Fill>,
    /// Orders placed; in REST mode they are `InFlight` and must be sent.
    pub placed: Vec<Order>,
}

impl State {
    /// Process one trade seen on connection `conn`: fill paper orders of
    /// that book at this price (orders fill at the next trade), update the
    /// signal, and place an order if it crossed.
    pub fn apply(&mut self, conn: &str, t: &Trade, strategy: &Strategy) -> Applied {
        let mut applied = Applied::default();
        let cursor = self
            .cursors
            .entry(format!("{conn}/{}", t.stream))
            .or_default();
        if cursor.trades > 0 && t.id <= cursor.last_id {
            cursor.repeats += 1;
            return applied;
        }
        if cursor.trades > 0 {
            cursor.gaps += t.id - cursor.last_id - 1;
        }
        cursor.last_id = t.id;
        cursor.trades += 1;

        let key = format!("{conn}/{}", t.symbol);
        applied.fills = self.fill_paper_orders(&key, t.price);
        let book = self.books.entry(key.clone()).or_insert_with(|| Book {
            symbol: t.symbol.clone(),
            ..Book::default()
        });
        let Some(regime) = book.signal.update(t.price, strategy.signal) else {
            return applied;
        };
        let target = match regime {
            Regime::Above => strategy.lot,
            Regime::Below => -strategy.lot,
            Regime::Warmup => book.position.qty,
        };
        let delta = target - book.position.qty;
        let pending = self.open_orders.values().any(|o| o.book == key);
        if delta.is_zero() || pending || strategy.hold_orders {
            return applied;
        }
        let side = if delta.is_sign_positive() {
            Side::Buy
        } else {
            Side::Sell
        };
        let client_id = crate::probe::client_id(self.next_order_seq);
        self.next_order_seq += 1;
        self.orders_sent += 1;
        let status = match strategy.execution {
            Execution::Paper => OrderStatus::Paper,
            Execution::Rest => OrderStatus::InFlight,
        };
        let order = Order {
            client_id,
            book: key,
            symbol: t.symbol.clone(),
            side,
            qty: delta.abs(),
            status,
        };
        self.open_orders
            .insert(order.client_id.clone(), order.clone());
        applied.placed.push(order);
        applied
    }

    /// Apply what the exchange said about an order. Returns the fill, if any.
    pub fn on_order_event(&mut self, event: &OrderEvent) -> Option<Fill> {
        match event {
            OrderEvent::Filled {
                client_id,
                qty,
                price,
            } => {
                let order = self.open_orders.remove(client_id)?;
                let book = self.books.get_mut(&order.book)?;
                book.position.fill(order.side, *qty, *price);
                self.orders_filled += 1;
                Some(Fill {
                    book: order.book,
                    side: order.side,
                    qty: *qty,
                    price: *price,
                })
            }
            OrderEvent::Accepted { client_id } => {
                if let Some(o) = self.open_orders.get_mut(client_id) {
                    o.status = OrderStatus::Accepted;
                }
                None
            }
            OrderEvent::Rejected { client_id, .. } => {
                if self.open_orders.remove(client_id).is_some() {
                    self.orders_rejected += 1;
                }
                None
            }
            // Still unknown: the order stays in flight for reconciliation.
            OrderEvent::NotFound { .. }
            | OrderEvent::Unknown { .. }
            | OrderEvent::Probed { .. }
            | OrderEvent::ListenKey(_)
            | OrderEvent::KeptAlive { .. }
            | OrderEvent::Depth { .. } => None,
        }
    }

    /// An order a crashed worker sent after this state's checkpoint, found
    /// on the exchange by a recovery's probe (`found` is what the exchange
    /// says of it): counted as sent, and booked on the first book of its
    /// symbol (by key; a `recovered/<SYMBOL>` book if there is none): the
    /// id does not say which book placed it, and the per-symbol positions
    /// are the exchange's again. Returns the fill, if it filled.
    pub fn adopt_found(
        &mut self,
        client_id: &str,
        symbol: &str,
        side: Side,
        found: &OrderEvent,
    ) -> Option<Fill> {
        let book = match self.books.iter().find(|(_, b)| b.symbol == symbol) {
            Some((key, _)) => key.clone(),
            None => {
                let key = format!("recovered/{symbol}");
                self.books.insert(
                    key.clone(),
                    Book {
                        symbol: symbol.to_string(),
                        ..Book::default()
                    },
                );
                key
            }
        };
        self.orders_sent += 1;
        let qty = match found {
            OrderEvent::Filled { qty, .. } => *qty,
            // Resting (a limit order): its fill comes later, by query.
            OrderEvent::Accepted { .. } => Decimal::ZERO,
            OrderEvent::Rejected { .. } => {
                self.orders_rejected += 1;
                return None;
            }
            _ => return None,
        };
        self.open_orders.insert(
            client_id.to_string(),
            Order {
                client_id: client_id.to_string(),
                book,
                symbol: symbol.to_string(),
                side,
                qty,
                status: OrderStatus::InFlight,
            },
        );
        self.on_order_event(found)
    }

    /// Orders whose status this worker does not know.
    pub fn in_flight(&self) -> impl Iterator<Item = &Order> {
        self.open_orders
            .values()
            .filter(|o| o.status == OrderStatus::InFlight)
    }

    fn fill_paper_orders(&mut self, key: &str, price: Decimal) -> Vec<Fill> {
        let ids: Vec<String> = self
            .open_orders
            .values()
            .filter(|o| o.book == key && o.status == OrderStatus::Paper)
            .map(|o| o.client_id.clone())
            .collect();
        let mut fills = Vec::new();
        for id in ids {
            let Some(order) = self.open_orders.remove(&id) else {
                continue;
            };
            if let Some(book) = self.books.get_mut(key) {
                book.position.fill(order.side, order.qty, price);
                self.orders_filled += 1;
                fills.push(Fill {
                    book: key.to_string(),
                    side: order.side,
                    qty: order.qty,
                    price,
                });
            }
        }
        fills
    }

    pub fn total_trades(&self) -> u64 {
        self.cursors.values().map(|c| c.trades).sum()
    }

    /// Positions summed per symbol over every connection's book.
    pub fn positions_by_symbol(&self) -> BTreeMap<String, Position> {
        let mut out: BTreeMap<String, Position> = BTreeMap::new();
        for book in self.books.values() {
            let p = out.entry(book.symbol.clone()).or_default();
            let cost = p.avg_price * p.qty + book.position.avg_price * book.position.qty;
            p.qty += book.position.qty;
            p.avg_price = if p.qty.is_zero() {
                Decimal::ZERO
            } else {
                (cost / p.qty).round_dp(DP)
            };
            p.realized_pnl += book.position.realized_pnl;
            p.fills += book.position.fills;
        }
        out
    }
}

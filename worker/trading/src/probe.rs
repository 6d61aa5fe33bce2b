//! After a crash: finding the orders the dead worker sent after the
//! checkpoint this state comes from.
//!
//! The state's `next_order_seq` is the checkpoint's, but the dead worker
//! went on placing orders (`hw-<seq>`, `hw-<seq+1>`, …) until it died.
//! Placed again under those ids, new orders would be refused by the
//! exchange as duplicates (`-2010`); and the dead worker's own fills would
//! be missing from the positions. So a recovering worker with `--rest`
//! first asks the exchange for each id from `next_order_seq` on, on every
//! symbol it trades (a query needs the symbol): an order found is booked
//! ([`crate::state::State::adopt_found`]) and the next id asked; the
//! search ends after [`Probing::window`] ids in a row that no symbol has
//! (an order whose request died with the worker leaves a hole, at most one
//! per book, since a book has one order pending at a time). Every id asked
//! is skipped for good: `next_order_seq` moves past it as each answer comes
//! in, so a checkpoint taken meanwhile does not ask again, nor book twice.
//! Until the search ends the strategy places nothing
//! ([`crate::state::Strategy::hold_orders`], set while [`Trader::probing`]
//! is); the signals go on.
//!
//! One order can escape it: one whose request was still on its way to the
//! exchange when its id was asked, and arrived after. The exchange then has
//! an order this state does not; its id is not used again.

use handoff_worker::Outbox;
use tracing::{info, warn};

use crate::app::{Trader, RECONCILE_RETRY};
use crate::rest::OrderEvent;

/// A recovery's search in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probing {
    /// The id being asked about.
    pub seq: u64,
    /// Symbols whose answer for `seq` has not come yet.
    pub waiting: Vec<String>,
    /// Whether any symbol has `seq`.
    pub found: bool,
    /// Ids in a row that no symbol had.
    pub misses: u64,
    /// How many such ids end the search.
    pub window: u64,
}

/// The client order id of sequence number `seq`.
pub fn client_id(seq: u64) -> String {
    format!("hw-{seq:08}")
}

impl<const S: u32> Trader<S> {
    /// Start the search (a recovery, with `--rest`): see the module docs.
    pub(crate) fn start_probing(&mut self, out: &mut Outbox<OrderEvent>) {
        if self.rest.is_none() || self.symbols.is_empty() {
            return;
        }
        let base = &self.state.base;
        let window = base.books.len().max(self.probed_symbols().len()) as u64 + 1;
        let seq = base.next_order_seq;
        info!(from = %client_id(seq), window, "recovery: asking the exchange which order ids the crashed worker used");
        self.probing = Some(Probing {
            seq,
            waiting: Vec::new(),
            found: false,
            misses: 0,
            window,
        });
        self.probe_next(out);
    }

    /// The symbols asked about each id: those this worker trades, as the
    /// exchange names them, each once.
    fn probed_symbols(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<String> =
            self.symbols.iter().map(|s| s.to_uppercase()).collect();
        set.into_iter().collect()
    }

    /// Ask every symbol about the current id.
    fn probe_next(&mut self, out: &mut Outbox<OrderEvent>) {
        let symbols = self.probed_symbols();
        let (Some(p), Some(rest)) = (self.probing.as_mut(), self.rest.clone()) else {
            return;
        };
        p.waiting = symbols;
        p.found = false;
        for symbol in &p.waiting {
            out.spawn(rest.clone().probe(client_id(p.seq), symbol.clone()));
        }
    }

    /// One symbol's answer about one id.
    pub(crate) fn on_probed(&mut self, event: OrderEvent, out: &mut Outbox<OrderEvent>) {
        let OrderEvent::Probed {
            client_id: id,
            symbol,
            side,
            found,
        } = event
        else {
            return;
        };
        let asked = self
            .probing
            .as_ref()
            .is_some_and(|p| id == client_id(p.seq) && p.waiting.contains(&symbol));
        if !asked {
            return;
        }
        let used = match (*found, side) {
            // No answer, or the query itself refused (an answer without an
            // order in it: a signature, a rate limit): ask again.
            (OrderEvent::Unknown { error, .. }, _)
            | (OrderEvent::Rejected { reason: error, .. }, None) => {
                warn!(%id, %symbol, %error, "recovery: no answer about this id; asking again");
                if let Some(rest) = self.rest.clone() {
                    out.spawn(async move {
                        tokio::time::sleep(RECONCILE_RETRY).await;
                        rest.probe(id, symbol).await
                    });
                }
                return;
            }
            (OrderEvent::NotFound { .. }, _) => false,
            (found, Some(side)) => {
                info!(%id, %symbol, ?side, ?found, "recovery: an order the crashed worker sent");
                if let Some(fill) = self.state.base.adopt_found(&id, &symbol, side, &found) {
                    self.record_fill(fill);
                }
                true
            }
            (found, None) => {
                warn!(%id, %symbol, ?found, "recovery: the exchange has this id but no side for it; its fill is not booked");
                true
            }
        };
        // Resting on the exchange (a limit order): its fill is asked for
        // like any order's whose status is not final.
        if let Some(order) = self.state.base.open_orders.get(&id).cloned() {
            self.reconcile(&order, RECONCILE_RETRY, out);
        }
        let Some(p) = self.probing.as_mut() else {
            return;
        };
        p.found |= used;
        p.waiting.retain(|s| *s != symbol);
        if !p.waiting.is_empty() {
            return;
        }
        // Every symbol has answered: this id is used up, whoever used it.
        self.state.base.next_order_seq = self.state.base.next_order_seq.max(p.seq + 1);
        p.misses = if p.found { 0 } else { p.misses + 1 };
        p.seq += 1;
        if p.misses < p.window {
            return self.probe_next(out);
        }
        info!(next = %client_id(p.seq), "recovery: the crashed worker's orders are booked; placing orders again");
        self.probing = None;
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use crate::book::Side;
    use crate::rest::OrderEvent;
    use crate::state::{Book, State};

    fn filled(id: &str, qty: i64, price: i64) -> OrderEvent {
        OrderEvent::Filled {
            client_id: id.into(),
            qty: Decimal::new(qty, 2),
            price: Decimal::new(price, 0),
        }
    }

    #[test]
    fn a_found_order_is_counted_and_booked_on_its_symbols_first_book() {
        let mut s = State::default();
        for key in ["feed-1/BTCUSDT", "feed-0/BTCUSDT", "feed-0/ETHUSDT"] {
            let symbol = key.split('/').nth(1).unwrap().to_string();
            s.books.insert(
                key.into(),
                Book {
                    symbol,
                    ..Book::default()
                },
            );
        }
        let fill = s
            .adopt_found(
                "hw-00000007",
                "BTCUSDT",
                Side::Buy,
                &filled("hw-00000007", 2, 42000),
            )
            .expect("a fill");
        assert_eq!(fill.book, "feed-0/BTCUSDT", "the first book by key");
        assert_eq!(s.books["feed-0/BTCUSDT"].position.qty, Decimal::new(2, 2));
        assert_eq!((s.orders_sent, s.orders_filled), (1, 1));
        assert!(s.open_orders.is_empty());
        // A symbol no book trades yet: a book of its own, still counted.
        let fill = s
            .adopt_found(
                "hw-00000008",
                "SOLUSDT",
                Side::Sell,
                &filled("hw-00000008", 1, 150),
            )
            .expect("a fill");
        assert_eq!(fill.book, "recovered/SOLUSDT");
        assert_eq!(
            s.books["recovered/SOLUSDT"].position.qty,
            Decimal::new(-1, 2)
        );
        // Refused by the exchange back then: counted as sent and rejected.
        let refused = OrderEvent::Rejected {
            client_id: "hw-00000009".into(),
            reason: "order REJECTED".into(),
        };
        assert!(s
            .adopt_found("hw-00000009", "BTCUSDT", Side::Buy, &refused)
            .is_none());
        assert_eq!(
            (s.orders_sent, s.orders_filled, s.orders_rejected),
            (3, 2, 1)
        );
        assert!(s.open_orders.is_empty());
    }
}

//! The trading worker as a handoff [`App`], generic over the schema its
//! build writes: `Trader<1>` is the released build, `Trader<2>` the next one
//! (one more field), so tests and the demo can upgrade into a new schema and
//! roll back out of it.

use handoff_worker::protocol::worker::{ConnInfo, RestoreMode};
use handoff_worker::{App, AppError, Message, Outbox};
use rust_decimal::Decimal;
use tracing::{info, warn};

use crate::market::{ack, parse_trade, subscribe};
use crate::rest::{OrderEvent, RestClient};
use crate::schema::{self, FullState};
use crate::state::{Execution, Fill, Order, Strategy};

/// The user-data stream's connection name.
const USER_STREAM: &str = "user";
/// Prefix of the listen key keep-alive timer (the key follows).
const KEEPALIVE: &str = "listen-key:";

fn tick_key(n: u64) -> String {
    format!("tick-{n}")
}

/// After an order's status came back unknown, how long to wait before asking
/// again: keeps a struggling exchange from being hammered while the order
/// stays recorded as in flight (and so is never sent under a new id).
pub const RECONCILE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// The app: its state and its settings. `S` is the schema this build writes.
pub struct Trader<const S: u32> {
    pub state: FullState,
    pub symbols: Vec<String>,
    pub ack: bool,
    pub strategy: Strategy,
    /// The exchange's order API, in REST mode.
    pub rest: Option<RestClient>,
    /// With `--timer-every`: a timer `tick-<n>` every so often, each one
    /// reported to the exchange on `feed-0` (see [`Trader::on_timer`]).
    pub timer_every: Option<std::time::Duration>,
    /// With `--runtime-feed`: connections this app opens itself on a fresh
    /// start (see [`Trader::on_open`]).
    pub runtime_feeds: Vec<handoff_worker::Feed>,
    /// With `--user-stream`: keep a Binance user-data stream (listen key,
    /// connection `user`, keep-alive timer) open, renewed every so often.
    pub user_stream: Option<std::time::Duration>,
    /// With `--book`: a local order book per symbol (see [`crate::depth`]).
    pub books: Option<crate::depth::Books>,
    /// Connections this worker asked for that can never be opened (a bad
    /// URL), by name, with why: shown in the summary, not state.
    pub refused: std::collections::BTreeMap<String, String>,
    /// After a crash, the search for the orders the dead worker sent after
    /// the checkpoint (see [`crate::probe`]); not state.
    pub probing: Option<crate::probe::Probing>,
}

impl<const S: u32> Trader<S> {
    pub fn new(
        symbols: Vec<String>,
        ack: bool,
        strategy: Strategy,
        rest: Option<RestClient>,
    ) -> Self {
        let mut strategy = strategy;
        strategy.execution = if rest.is_some() {
            Execution::Rest
        } else {
            Execution::Paper
        };
        Trader {
            state: FullState::default(),
            symbols,
            ack,
            strategy,
            rest,
            timer_every: None,
            runtime_feeds: Vec::new(),
            user_stream: None,
            books: None,
            refused: Default::default(),
            probing: None,
        }
    }

    pub(crate) fn record_fill(&mut self, fill: Fill) {
        *self.state.notional.entry(fill.book).or_default() += (fill.qty * fill.price).abs();
    }

    /// Send `order` (recorded as in flight already).
    fn send(&self, order: &Order, out: &mut Outbox<OrderEvent>) {
        if let Some(rest) = self.rest.clone() {
            out.spawn(rest.place(
                order.client_id.clone(),
                order.symbol.clone(),
                order.side,
                order.qty,
            ));
        }
    }

    /// Ask what became of `order`, after `delay`.
    pub(crate) fn reconcile(
        &self,
        order: &Order,
        delay: std::time::Duration,
        out: &mut Outbox<OrderEvent>,
    ) {
        if let Some(rest) = self.rest.clone() {
            let (id, symbol) = (order.client_id.clone(), order.symbol.clone());
            out.spawn(async move {
                tokio::time::sleep(delay).await;
                rest.query(id, symbol).await
            });
        }
    }

    /// The operator's view: positions per symbol (decimal strings), trades
    /// per stream, orders, and a digest of the schema-1 state.
    pub fn summary_json(&self) -> serde_json::Value {
        let positions: serde_json::Map<String, serde_json::Value> = self
            .state
            .base
            .positions_by_symbol()
            .into_iter()
            .map(|(sym, p)| {
                let mut v = serde_json::json!({
                    "qty": p.qty.normalize().to_string(),
                    "avg_price": p.avg_price.normalize().to_string(),
                    "realized_pnl": p.realized_pnl.normalize().to_string(),
                    "fills": p.fills,
                });
                if S >= 2 {
                    let notional: Decimal = self
                        .state
                        .notional
                        .iter()
                        .filter(|(k, _)| k.ends_with(&format!("/{sym}")))
                        .map(|(_, v)| *v)
                        .sum();
                    v["traded_notional"] = notional.normalize().to_string().into();
                }
                (sym, v)
            })
            .collect();
        let streams: serde_json::Map<String, serde_json::Value> = self
            .state
            .base
            .cursors
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    serde_json::json!({"trades": c.trades, "last_id": c.last_id, "gaps": c.gaps}),
                )
            })
            .collect();
        let b = &self.state.base;
        let mut summary = serde_json::json!({
            "schema": S,
            "trades_processed": b.total_trades(),
            "orders_sent": b.orders_sent,
            "orders_filled": b.orders_filled,
            "orders_rejected": b.orders_rejected,
            "open_orders": b.open_orders.len(),
            "positions": positions,
            "streams": streams,
            "digest": schema::digest(&self.state),
        });
        if let Some(books) = &self.books {
            let book: serde_json::Map<String, serde_json::Value> = books
                .books
                .iter()
                .map(|(sym, b)| {
                    let best =
                        |l: Option<(&Decimal, &Decimal)>| l.map(|(p, _)| p.normalize().to_string());
                    (
                        sym.clone(),
                        serde_json::json!({
                            "last_update_id": b.last_update_id,
                            "bids": b.bids.len(),
                            "asks": b.asks.len(),
                            "best_bid": best(b.bids.iter().next_back()),
                            "best_ask": best(b.asks.iter().next()),
                            "digest": crate::depth::digest(b),
                            "synced": b.synced,
                        }),
                    )
                })
                .collect();
            summary["book"] = book.into();
            summary["book_resyncs"] = books.resyncs.into();
        }
        if let Some(p) = &self.probing {
            // Still finding the crashed worker's orders: no order goes out
            // until this id and those after it are settled.
            summary["recovery_asking_order_id"] = crate::probe::client_id(p.seq).into();
        }
        if !self.refused.is_empty() {
            summary["refused_connections"] = serde_json::json!(self.refused);
        }
        summary
    }

    /// Fetch `symbol`'s book snapshot (an effect: only in the serving
    /// worker, settled before a freeze).
    fn fetch_depth(&self, symbol: String, out: &mut Outbox<OrderEvent>) {
        if let Some(rest) = self.rest.clone() {
            out.spawn(rest.depth(symbol));
        }
    }
}

impl<const S: u32> App for Trader<S> {
    const NAME: &'static str = "trading-worker";
    const SCHEMA: u32 = S;
    type Done = OrderEvent;

    fn reads_schemas() -> Vec<u32> {
        (1..=S).collect()
    }

    fn writes_schemas() -> Vec<u32> {
        (1..=S).collect()
    }

    fn snapshot(&self) -> Result<Vec<u8>, AppError> {
        self.snapshot_as(S)
    }

    fn snapshot_as(&self, schema: u32) -> Result<Vec<u8>, AppError> {
        if schema > S {
            return Err(AppError::new(format!(
                "this build writes schemas up to {S}, not {schema}"
            )));
        }
        let bytes = schema::encode(&self.state, schema).map_err(AppError::new)?;
        // The books ride after the schema's bytes (see `depth::split_section`).
        Ok(crate::depth::append_section(
            bytes,
            self.books.as_ref().map(crate::depth::Books::encode),
        ))
    }

    fn restore(&mut self, schema: u32, bytes: &[u8], mode: RestoreMode) -> Result<(), AppError> {
        if schema > S {
            return Err(AppError::new(format!(
                "schema {schema} is newer than this build's {S}"
            )));
        }
        let (bytes, books) = crate::depth::split_section(bytes);
        self.state = schema::decode(bytes, schema).map_err(AppError::new)?;
        if let (Some(mine), Some(section)) = (self.books.as_mut(), books) {
            *mine = crate::depth::Books::decode(section).map_err(AppError::new)?;
        }
        info!(
            ?mode,
            schema,
            trades = self.state.base.total_trades(),
            "state restored"
        );
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        Some(self.summary_json().to_string())
    }

    fn on_open(&mut self, conn: &ConnInfo, out: &mut Outbox<OrderEvent>) {
        if conn.name == USER_STREAM {
            // A user-data stream takes no subscription: its events come.
            return;
        }
        out.send(
            conn.id,
            Message::text(subscribe(&self.symbols, self.books.is_some())),
        );
        // The first connection of a fresh start (ids are never reused)
        // starts the ticks; each tick schedules the next.
        if conn.id.0 == 0 {
            if let Some(every) = self.timer_every {
                out.after(every, tick_key(0));
            }
            for f in &self.runtime_feeds {
                out.open(f.name.clone(), f.url.clone());
            }
            if let (Some(_), Some(rest)) = (self.user_stream, self.rest.clone()) {
                out.spawn(rest.listen_key());
            }
        }
    }

    fn on_closed(
        &mut self,
        conn: &ConnInfo,
        why: &handoff_worker::Closed,
        _out: &mut Outbox<OrderEvent>,
    ) {
        tracing::info!(conn = %conn.id, name = %conn.name, ?why, "connection ended");
        if let handoff_worker::Closed::Refused(reason) = why {
            self.refused.insert(conn.name.clone(), reason.clone());
        }
    }

    /// `tick-<n>`: tell the exchange (which counts each key; a tick that
    /// fired twice, or never, shows there), then set `tick-<n+1>` one
    /// period after this one was due, so deadlines do not drift.
    fn on_timer(&mut self, timer: &handoff_worker::Timer, out: &mut Outbox<OrderEvent>) {
        // The keep-alive timer's key names the listen key: it travels with
        // the library's timers, so no state of ours is needed for it.
        if let Some(key) = timer.key.strip_prefix(KEEPALIVE) {
            if let Some(rest) = self.rest.clone() {
                out.spawn(rest.keep_alive(key.to_owned()));
            }
            if let Some(every) = self.user_stream {
                out.after(every, timer.key.clone());
            }
            return;
        }
        let Some(n) = timer
            .key
            .strip_prefix("tick-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return;
        };
        let report = serde_json::json!({"method": "timer", "key": timer.key, "late": timer.late});
        out.send_named("feed-0", Message::text(report.to_string()));
        if let Some(every) = self.timer_every {
            out.at(
                timer.due_unix_ms + every.as_millis() as u64,
                tick_key(n + 1),
            );
        }
    }

    fn on_message(&mut self, conn: &ConnInfo, msg: Message, out: &mut Outbox<OrderEvent>) {
        let Message::Text(text) = msg else { return };
        if let Some(books) = self.books.as_mut() {
            if let Some((stream, diff)) = crate::depth::parse_diff(text.as_str()) {
                let u = diff.last;
                if let Some(symbol) = books.on_diff(diff) {
                    self.fetch_depth(symbol, out);
                }
                if self.ack {
                    out.send(conn.id, Message::text(crate::market::ack_diff(&stream, u)));
                }
                return;
            }
        }
        let Some(trade) = parse_trade(text.as_str()) else {
            return;
        };
        // No order while a recovery is still finding the crashed worker's.
        let strategy = Strategy {
            hold_orders: self.probing.is_some(),
            ..self.strategy
        };
        let applied = self.state.base.apply(&conn.name, &trade, &strategy);
        for fill in applied.fills {
            self.record_fill(fill);
        }
        for order in &applied.placed {
            self.send(order, out);
        }
        if self.ack {
            out.send(conn.id, Message::text(ack(&trade.stream, trade.id)));
        }
    }

    fn on_done(&mut self, event: OrderEvent, out: &mut Outbox<OrderEvent>) {
        if let Some(fill) = self.state.base.on_order_event(&event) {
            self.record_fill(fill);
        }
        match &event {
            OrderEvent::Unknown { client_id, error } => {
                warn!(%client_id, %error, "order status unknown; will query");
                if let Some(order) = self.state.base.open_orders.get(client_id).cloned() {
                    self.reconcile(&order, RECONCILE_RETRY, out);
                }
            }
            OrderEvent::NotFound { client_id } => {
                // It never reached the exchange: send it again, under the
                // same client id, so it can never be executed twice.
                if let Some(order) = self.state.base.open_orders.get(client_id).cloned() {
                    info!(%client_id, "order never arrived; sending it again");
                    self.send(&order, out);
                }
            }
            OrderEvent::Rejected { client_id, reason } => {
                warn!(%client_id, %reason, "order rejected")
            }
            OrderEvent::Filled { .. } | OrderEvent::Accepted { .. } => {}
            OrderEvent::Probed { .. } => self.on_probed(event.clone(), out),
            OrderEvent::ListenKey(Ok(key)) => {
                if let (Some(every), Some(rest)) = (self.user_stream, &self.rest) {
                    info!("user-data stream: listen key obtained; connecting");
                    out.open(USER_STREAM, rest.user_stream_url(key));
                    out.after(every, format!("{KEEPALIVE}{key}"));
                }
            }
            OrderEvent::ListenKey(Err(e)) => {
                warn!(error = %e, "no listen key; no user-data stream")
            }
            OrderEvent::Depth { symbol, result } => {
                let Some(books) = self.books.as_mut() else {
                    return;
                };
                match result {
                    Ok(snap) => {
                        if let Some(again) = books.on_snapshot(symbol, snap.clone()) {
                            self.fetch_depth(again, out);
                        }
                    }
                    Err(e) => {
                        warn!(%symbol, error = %e, "depth snapshot failed; the next diff asks again");
                        books.fetch_failed(symbol);
                    }
                }
            }
            OrderEvent::KeptAlive { result: Ok(()), .. } => {}
            OrderEvent::KeptAlive { result: Err(e), .. } => {
                warn!(error = %e, "listen key keep-alive failed")
            }
        }
    }

    fn on_takeover(&mut self, mode: RestoreMode, out: &mut Outbox<OrderEvent>) {
        let unknown: Vec<Order> = self.state.base.in_flight().cloned().collect();
        if !unknown.is_empty() {
            info!(
                ?mode,
                n = unknown.len(),
                "reconciling orders of unknown status"
            );
        }
        for order in &unknown {
            self.reconcile(order, std::time::Duration::ZERO, out);
        }
        if mode == RestoreMode::Recovery {
            self.start_probing(out);
        }
    }
}

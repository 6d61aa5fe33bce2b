//! A complete handoff-capable trading bot, the one to start from (the
//! line count in docs/workers.md is measured on this file). It subscribes to
//! `btcusdt@trade`, acks every trade, keeps a trade count, the last price
//! and its position, and every 2 s buys 0.001 BTC over REST with a client
//! order id. All of it survives an upgrade: the state is snapshotted, the
//! library hands the timer over with it, and an order's id is taken in the
//! state before the order is sent (a handoff waits for orders in flight to
//! settle), so no id is ever sent twice across handoffs. (After a crash the
//! newest checkpoint may predate an order: its id is sent again and the
//! exchange refuses it as a duplicate, so nothing fills twice.)
//!
//! ```sh
//! target/debug/exchange-sim --listen 127.0.0.1:9443 &
//! cargo run --example minimal_bot -- --feed ws://127.0.0.1:9443/ws --rest http://127.0.0.1:9443
//! ```
//!
//! Under the supervisor, `--worker target/debug/examples/minimal_bot` (see
//! docs/workers.md, "Making your own service handoff-capable"). `worker/trading/`
//! goes further: reconciling orders whose answer a crash lost, schemas, TLS.
use std::time::Duration;

use handoff_worker::protocol::worker::{ConnInfo, RestoreMode};
use handoff_worker::{App, AppError, Feed, Message, Outbox, Settings, Timer};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// Everything that must survive a handoff (snapshotted as JSON).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    trades: u64,
    last_price: Decimal,
    position: Decimal,
    orders_sent: u64,
}

struct Bot {
    state: State,
    url: String,
    http: reqwest::Client,
}

impl App for Bot {
    const NAME: &'static str = "minimal-bot";
    const SCHEMA: u32 = 1;
    type Done = reqwest::Result<Value>; // what an order effect gives back: the exchange's answer

    fn snapshot(&self) -> Result<Vec<u8>, AppError> {
        serde_json::to_vec(&self.state).map_err(AppError::new)
    }

    fn restore(&mut self, _schema: u32, bytes: &[u8], _: RestoreMode) -> Result<(), AppError> {
        self.state = serde_json::from_slice(bytes).map_err(AppError::new)?;
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        serde_json::to_string(&self.state).ok() // what `supervisorctl status` shows
    }

    fn on_open(&mut self, conn: &ConnInfo, out: &mut Outbox<Self::Done>) {
        let subscribe = r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#;
        out.send(conn.id, Message::text(subscribe));
        // Opened fresh (not handed over): arm the order timer. It then travels
        // with the state; setting it again (a lost feed reopened) only moves it.
        out.after(Duration::from_secs(2), "order");
    }

    fn on_message(&mut self, conn: &ConnInfo, msg: Message, out: &mut Outbox<Self::Done>) {
        let v: Value = serde_json::from_slice(&msg.into_data()).unwrap_or_default();
        if let (Some(stream), Some(t)) = (v["stream"].as_str(), v["data"]["t"].as_u64()) {
            self.state.trades += 1;
            let price = v["data"]["p"].as_str().unwrap_or_default();
            self.state.last_price = price.parse().unwrap_or_default();
            let ack = json!({"method": "ack", "stream": stream, "t": t}).to_string();
            out.send(conn.id, Message::text(ack));
        }
    }

    fn on_timer(&mut self, _: &Timer, out: &mut Outbox<Self::Done>) {
        out.after(Duration::from_secs(2), "order");
        self.state.orders_sent += 1; // in the state before the order leaves: never sent twice
        let order = json!({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
            "quantity": "0.001", "newClientOrderId": format!("ex-{}", self.state.orders_sent)});
        let req = self.http.post(&self.url).json(&order);
        out.spawn(async move { req.send().await?.json().await });
    }

    fn on_done(&mut self, answer: Self::Done, _: &mut Outbox<Self::Done>) {
        let answer = answer.unwrap_or_else(|e| json!({"error": e.to_string()}));
        let filled = answer["executedQty"].as_str().unwrap_or("0");
        self.state.position += filled.parse().unwrap_or(Decimal::ZERO);
        eprintln!("{answer}\n  position {} BTC", self.state.position);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init(); // logs to stdout; RUST_LOG=info shows the handoffs
    let (mut feeds, mut rest, mut args) = (vec![], None, std::env::args().skip(1));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--feed" => feeds.extend(args.next()), // NAME=URL, or a bare URL (named feed-<i>)
            "--rest" => rest = args.next(),        // the REST API's base URL
            _ => {} // what else the supervisor passes on (the testkit's --symbols S --ack)
        }
    }
    let url = format!("{}/api/v3/order", rest.ok_or("--rest URL is missing")?);
    let (state, timeout) = (State::default(), Duration::from_secs(5)); // timeout: per order
    let http = reqwest::Client::builder().timeout(timeout).build()?;
    let fresh = move || Bot { state, url, http };
    handoff_worker::run(Feed::from_specs(&feeds)?, Settings::default(), fresh).await?;
    Ok(())
}

//! The trading worker as a handoff [`App`].

use handoff_worker::protocol::worker::{ConnInfo, RestoreMode};
use handoff_worker::{App, AppError, Message, Outbox};
use tracing::info;

use crate::market::{ack, parse_trade, subscribe};
use crate::state::State;

/// Schema of [`State`] as this build writes it.
pub const SCHEMA: u32 = 1;

/// The app: its state and its settings.
pub struct Trader {
    pub state: State,
    pub symbols: Vec<String>,
    pub ack: bool,
}

impl Trader {
    pub fn new(symbols: Vec<String>, ack: bool) -> Self {
        Trader {
            state: State::default(),
            symbols,
            ack,
        }
    }
}

fn codec() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new().reject_trailing_bytes()
}

impl App for Trader {
    const NAME: &'static str = "trading-worker";
    const SCHEMA: u32 = SCHEMA;

    fn snapshot(&self) -> Result<Vec<u8>, AppError> {
        use bincode::Options;
        codec().serialize(&self.state).map_err(AppError::new)
    }

    fn restore(&mut self, schema: u32, bytes: &[u8], mode: RestoreMode) -> Result<(), AppError> {
        use bincode::Options;
        if schema != SCHEMA {
            return Err(AppError::new(format!(
                "schema {schema} is not readable by this build"
            )));
        }
        self.state = codec()
            .deserialize(bytes)
            .map_err(|e| AppError::new(format!("bad state: {e}")))?;
        info!(?mode, trades = self.state.total_trades(), "state restored");
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        Some(self.state.summary().to_string())
    }

    fn on_open(&mut self, conn: &ConnInfo, out: &mut Outbox) {
        out.send(conn.id, Message::text(subscribe(&self.symbols)));
    }

    fn on_message(&mut self, conn: &ConnInfo, msg: Message, out: &mut Outbox) {
        let Message::Text(text) = msg else { return };
        let Some(trade) = parse_trade(text.as_str()) else {
            return;
        };
        self.state.apply(&conn.name, &trade);
        if self.ack {
            out.send(conn.id, Message::text(ack(&trade.stream, trade.id)));
        }
    }
}

//! The trading worker's state, and its snapshot encoding.
//!
//! Per (connection, stream): the last trade id and how many trades were
//! processed, plus the worker's own continuity check (ids must be
//! contiguous). Money is `Decimal`, encoded as strings (bincode cannot decode
//! rust_decimal's default serde form).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::market::Trade;

/// Progress of one stream on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub last_id: u64,
    pub trades: u64,
    /// Ids skipped (the feed or a handoff lost something).
    pub gaps: u64,
    /// Ids seen again or out of order.
    pub repeats: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub last_price: Decimal,
}

/// Everything the worker carries across a handoff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Keyed by `"<connection name>/<stream>"`.
    pub cursors: BTreeMap<String, Cursor>,
}

impl State {
    /// Account for one trade seen on connection `conn`.
    pub fn apply(&mut self, conn: &str, t: &Trade) {
        let c = self
            .cursors
            .entry(format!("{conn}/{}", t.stream))
            .or_default();
        if c.trades > 0 && t.id != c.last_id + 1 {
            if t.id > c.last_id {
                c.gaps += t.id - c.last_id - 1;
            } else {
                c.repeats += 1;
                return;
            }
        }
        c.last_id = t.id;
        c.trades += 1;
        c.last_price = t.price;
    }

    pub fn total_trades(&self) -> u64 {
        self.cursors.values().map(|c| c.trades).sum()
    }

    /// The operator's view (JSON).
    pub fn summary(&self) -> serde_json::Value {
        let streams: serde_json::Map<String, serde_json::Value> = self
            .cursors
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    serde_json::json!({"trades": c.trades, "last_id": c.last_id, "gaps": c.gaps,
                        "repeats": c.repeats, "last_price": c.last_price.to_string()}),
                )
            })
            .collect();
        serde_json::json!({"trades_processed": self.total_trades(), "streams": streams})
    }
}

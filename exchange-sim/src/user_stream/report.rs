//! `executionReport` events, in Binance's shape, for the orders of the REST
//! order API.

use crate::money;
use crate::orders::{Order, OrderType, Status};
use rust_decimal::Decimal;
use serde::Serialize;

/// Binance's execution type (`x`) of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// The order was accepted (`x` `NEW`, `X` `NEW`).
    New,
    /// The order filled, in full, in one trade (`x` `TRADE`, `X` `FILLED`).
    Trade,
    /// The order was cancelled (`x` `CANCELED`, `X` `CANCELED`).
    Canceled,
}

impl Exec {
    fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Trade => "TRADE",
            Self::Canceled => "CANCELED",
        }
    }
}

/// The reports a placement makes: `NEW`, then `TRADE` if it filled.
pub fn placement(order: &Order) -> &'static [Exec] {
    if order.status == Status::Filled {
        &[Exec::New, Exec::Trade]
    } else {
        &[Exec::New]
    }
}

/// An 8-decimal amount, as every amount of the report is written.
fn amount(d: Decimal) -> String {
    money::qty(d)
}

#[derive(Serialize)]
struct Report<'a> {
    e: &'static str,
    #[serde(rename = "E")]
    event_ms: u64,
    s: &'a str,
    c: String,
    #[serde(rename = "S")]
    side: &'static str,
    o: &'static str,
    f: &'static str,
    q: String,
    p: String,
    #[serde(rename = "P")]
    stop_price: &'static str,
    #[serde(rename = "F")]
    iceberg_qty: &'static str,
    g: i64,
    #[serde(rename = "C")]
    orig_client_id: &'a str,
    x: &'static str,
    #[serde(rename = "X")]
    status: &'static str,
    r: &'static str,
    i: u64,
    l: String,
    z: String,
    #[serde(rename = "L")]
    last_price: String,
    n: &'static str,
    #[serde(rename = "N")]
    commission_asset: Option<&'static str>,
    #[serde(rename = "T")]
    transact_ms: u64,
    t: i64,
    #[serde(rename = "I")]
    execution_id: u64,
    w: bool,
    m: bool,
    #[serde(rename = "M")]
    ignore: bool,
    #[serde(rename = "O")]
    created_ms: u64,
    #[serde(rename = "Z")]
    cum_quote: String,
    #[serde(rename = "Y")]
    last_quote: String,
    #[serde(rename = "Q")]
    quote_order_qty: &'static str,
    #[serde(rename = "W", skip_serializing_if = "Option::is_none")]
    working_ms: Option<u64>,
    #[serde(rename = "V")]
    stp_mode: &'static str,
}

/// The `executionReport` of `exec` for `order` (as it stands after the
/// request), sent at `now_ms` with execution id `execution_id`.
pub fn execution_report(order: &Order, exec: Exec, execution_id: u64, now_ms: u64) -> String {
    const ZERO: &str = "0.00000000";
    let traded = exec == Exec::Trade;
    let (last_qty, last_price) = if traded {
        (order.executed_qty, order.avg_price)
    } else {
        (Decimal::ZERO, Decimal::ZERO)
    };
    let cum_qty = if exec == Exec::New {
        Decimal::ZERO
    } else {
        order.executed_qty
    };
    let quote = |q: Decimal| amount(q.checked_mul(order.avg_price).unwrap_or_default());
    let on_book = exec == Exec::New && order.status == Status::New;
    let (client_id, orig_client_id) = match exec {
        Exec::Canceled => (
            format!("cancel-{}", order.order_id),
            order.client_id.as_str(),
        ),
        _ => (order.client_id.clone(), ""),
    };
    let report = Report {
        e: "executionReport",
        event_ms: now_ms,
        s: &order.symbol,
        c: client_id,
        side: order.side.as_str(),
        o: order.kind.as_str(),
        f: "GTC",
        q: amount(order.orig_qty),
        p: amount(match order.kind {
            OrderType::Limit => order.price,
            OrderType::Market => Decimal::ZERO,
        }),
        stop_price: ZERO,
        iceberg_qty: ZERO,
        g: -1,
        orig_client_id,
        x: exec.as_str(),
        status: match exec {
            Exec::New => "NEW",
            Exec::Trade => "FILLED",
            Exec::Canceled => "CANCELED",
        },
        r: "NONE",
        i: order.order_id,
        l: amount(last_qty),
        z: amount(cum_qty),
        last_price: amount(last_price),
        n: "0",
        commission_asset: None,
        transact_ms: order.transact_ms,
        t: if traded {
            i64::try_from(order.order_id).unwrap_or(i64::MAX)
        } else {
            -1
        },
        execution_id,
        w: on_book,
        m: false,
        ignore: false,
        created_ms: order.received_ms,
        cum_quote: quote(cum_qty),
        last_quote: quote(last_qty),
        quote_order_qty: ZERO,
        working_ms: on_book.then_some(order.received_ms),
        stp_mode: "NONE",
    };
    serde_json::to_string(&report).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::Side;
    use serde_json::Value;

    fn order(status: Status, kind: OrderType) -> Order {
        let filled = status == Status::Filled;
        Order {
            order_id: 7,
            client_id: "w1-7".into(),
            symbol: "BTCUSDT".into(),
            side: Side::Buy,
            kind,
            orig_qty: Decimal::new(2, 0),
            executed_qty: if filled {
                Decimal::new(2, 0)
            } else {
                Decimal::ZERO
            },
            price: Decimal::new(41_000, 0),
            avg_price: if filled {
                Decimal::new(42_000, 0)
            } else {
                Decimal::ZERO
            },
            status,
            received_ms: 10,
            transact_ms: 11,
        }
    }

    fn json(o: &Order, exec: Exec) -> Value {
        serde_json::from_str(&execution_report(o, exec, 3, 99)).expect("json")
    }

    #[test]
    fn reports_carry_binance_fields() {
        let filled = order(Status::Filled, OrderType::Market);
        assert_eq!(placement(&filled), [Exec::New, Exec::Trade]);
        let new = json(&filled, Exec::New);
        assert_eq!(new["e"], "executionReport");
        assert_eq!(
            (new["x"].as_str(), new["X"].as_str()),
            (Some("NEW"), Some("NEW"))
        );
        assert_eq!(
            (new["c"].as_str(), new["C"].as_str()),
            (Some("w1-7"), Some(""))
        );
        assert_eq!(new["z"], "0.00000000");
        assert_eq!(new["p"], "0.00000000");
        assert_eq!(
            (new["t"].as_i64(), new["w"].as_bool()),
            (Some(-1), Some(false))
        );
        assert!(new.get("W").is_none());
        let trade = json(&filled, Exec::Trade);
        assert_eq!(trade["X"], "FILLED");
        assert_eq!(
            (trade["l"].as_str(), trade["z"].as_str()),
            (Some("2.00000000"), Some("2.00000000"))
        );
        assert_eq!(trade["L"], "42000.00000000");
        assert_eq!(trade["Z"], "84000.00000000");
        assert_eq!(trade["Y"], "84000.00000000");
        assert_eq!(
            (trade["t"].as_i64(), trade["i"].as_u64()),
            (Some(7), Some(7))
        );
        assert_eq!(
            (
                trade["E"].as_u64(),
                trade["T"].as_u64(),
                trade["O"].as_u64()
            ),
            (Some(99), Some(11), Some(10))
        );
        assert!(trade["N"].is_null());

        let resting = order(Status::New, OrderType::Limit);
        assert_eq!(placement(&resting), [Exec::New]);
        let new = json(&resting, Exec::New);
        assert_eq!(
            (new["w"].as_bool(), new["W"].as_u64()),
            (Some(true), Some(10))
        );
        assert_eq!(new["p"], "41000.00000000");
        let mut canceled = resting;
        canceled.status = Status::Canceled;
        let c = json(&canceled, Exec::Canceled);
        assert_eq!(
            (c["x"].as_str(), c["X"].as_str()),
            (Some("CANCELED"), Some("CANCELED"))
        );
        assert_eq!(
            (c["c"].as_str(), c["C"].as_str()),
            (Some("cancel-7"), Some("w1-7"))
        );
    }
}

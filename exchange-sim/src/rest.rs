//! The REST API: `POST`/`GET`/`DELETE /api/v3/order`,
//! `GET /api/v3/positions`, `GET /orders/audit`, the depth snapshot and
//! digest ([`crate::depth::rest`]) and the listen keys
//! ([`crate::user_stream::rest`]). Answers are JSON; refusals are
//! Binance-style `{"code":…,"msg":…}` (see [`ApiError`]). Placements and
//! cancellations also go to the user-data streams as `executionReport`s.
//! With `--api-key` the order and listen-key endpoints first go through
//! the [`crate::auth`] gate.
//!
//! `/api/v3/order` answers (refusals included) are held back by
//! `--order-latency-ms` after the book has been updated, so a client can time
//! out on an order the exchange already has.

use crate::auth;
use crate::depth::rest::{self as depth_rest, DEPTH_PATH, DIGEST_PATH};
use crate::error::ApiError;
use crate::http::{Head, Reply};
use crate::money;
use crate::orders::{Book, Order};
use crate::params;
use crate::state::{unix_ms, Shared};
use crate::user_stream::{self, report};
use serde::Serialize;
use std::collections::BTreeMap;

const ORDER_PATH: &str = "/api/v3/order";
const POSITIONS_PATH: &str = "/api/v3/positions";
const AUDIT_PATH: &str = "/orders/audit";

/// Whether `path` belongs to the order API.
pub fn serves(path: &str) -> bool {
    path.starts_with("/api/") || path == AUDIT_PATH
}

/// Answer an order-API request whose body is `body`.
pub async fn route(shared: &Shared, head: &Head, body: &[u8]) -> Reply {
    let answer = match head.path.as_str() {
        ORDER_PATH => {
            let answer = match head.method.as_str() {
                "POST" | "GET" | "DELETE" => {
                    let signed = shared.gate.signed(head, body, unix_ms());
                    let params = auth::params(&head.query, body);
                    signed.and_then(|()| match head.method.as_str() {
                        "POST" => place(shared, &params, body),
                        "GET" => query(shared, &params),
                        _ => cancel(shared, &params),
                    })
                }
                _ => Err(not_allowed(head)),
            };
            let latency = shared.config.order_latency;
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            answer
        }
        user_stream::rest::PATH => (shared.gate.keyed(head))
            .and_then(|()| user_stream::rest::route(shared, &head.method, &head.query, body)),
        POSITIONS_PATH | AUDIT_PATH | DEPTH_PATH | DIGEST_PATH if head.method != "GET" => {
            Err(not_allowed(head))
        }
        DEPTH_PATH => depth_rest::snapshot(shared, &head.query),
        DIGEST_PATH => depth_rest::digest(shared, &head.query),
        POSITIONS_PATH => Ok(shared.orders(positions_json)),
        AUDIT_PATH => Ok(shared.orders_audit_json()),
        other => Err(ApiError::NoSuchPath(other.to_owned())),
    };
    match answer {
        Ok(body) => Reply::json(200, body),
        Err(e) => Reply::json(e.status(), e.body()),
    }
}

fn not_allowed(head: &Head) -> ApiError {
    ApiError::Method {
        method: head.method.clone(),
        path: head.path.clone(),
    }
}

/// Place the order of `params` (query string and form body), or of `body`
/// if it is an old client's JSON.
fn place(shared: &Shared, params: &[(String, String)], body: &[u8]) -> Result<String, ApiError> {
    let parsed = if auth::is_json(body) {
        params::new_order(body)
    } else {
        params::new_order_form(params)
    };
    let reference = parsed
        .as_ref()
        .ok()
        .and_then(|req| shared.prices.get(&req.symbol))
        .map(money::from_cents)
        .unwrap_or_default();
    let now = unix_ms();
    shared.orders(|book| match parsed {
        Ok(req) => book.place(req, reference, now).map(|order| {
            (shared.users).order_events(order, report::placement(order), now);
            order_json(order)
        }),
        Err(e) => {
            book.record_invalid();
            Err(e)
        }
    })
}

fn query(shared: &Shared, params: &[(String, String)]) -> Result<String, ApiError> {
    let (symbol, key) = params::order_key(params)?;
    shared.orders(|book| book.get(&symbol, &key).map(order_json))
}

fn cancel(shared: &Shared, params: &[(String, String)]) -> Result<String, ApiError> {
    let (symbol, key) = params::order_key(params)?;
    let now = unix_ms();
    shared.orders(|book| {
        book.cancel(&symbol, &key, now).map(|order| {
            (shared.users).order_events(order, &[report::Exec::Canceled], now);
            order_json(order)
        })
    })
}

/// An order as every `/api/v3/order` endpoint answers it.
fn order_json(o: &Order) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Json<'a> {
        symbol: &'a str,
        order_id: u64,
        client_order_id: &'a str,
        status: &'static str,
        side: &'static str,
        #[serde(rename = "type")]
        kind: &'static str,
        orig_qty: String,
        executed_qty: String,
        price: String,
        avg_price: String,
        transact_time: u64,
    }
    let json = Json {
        symbol: &o.symbol,
        order_id: o.order_id,
        client_order_id: &o.client_id,
        status: o.status.as_str(),
        side: o.side.as_str(),
        kind: o.kind.as_str(),
        orig_qty: money::qty(o.orig_qty),
        executed_qty: money::qty(o.executed_qty),
        price: money::price(o.price),
        avg_price: money::price(o.avg_price),
        transact_time: o.transact_ms,
    };
    serde_json::to_string(&json).unwrap_or_default()
}

fn positions_json(book: &mut Book) -> String {
    #[derive(Serialize)]
    struct Json {
        qty: String,
        avg_price: String,
        realized_pnl: String,
        fills: u64,
    }
    let all: BTreeMap<&str, Json> = book
        .positions()
        .iter()
        .map(|(symbol, p)| {
            let json = Json {
                qty: money::qty(p.qty),
                avg_price: money::price(p.avg_price),
                realized_pnl: money::price(p.realized_pnl),
                fills: p.fills,
            };
            (symbol.as_str(), json)
        })
        .collect();
    serde_json::to_string(&all).unwrap_or_default()
}

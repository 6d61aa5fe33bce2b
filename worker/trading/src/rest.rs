//! Orders over REST, Binance-style: place by client order id, query by
//! client order id. Every call turns into an [`OrderEvent`] for the app; a
//! call that fails or times out leaves the order's status unknown, and the
//! app reconciles it with a query (never by sending a new id).

use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::book::Side;

/// What became of an order, as learned from the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Filled {
        client_id: String,
        qty: Decimal,
        price: Decimal,
    },
    /// Accepted and resting (a limit order); nothing filled yet.
    Accepted {
        client_id: String,
    },
    Rejected {
        client_id: String,
        reason: String,
    },
    /// The exchange has no such order: it never arrived.
    NotFound {
        client_id: String,
    },
    /// No answer (network error, timeout, a 5xx): status unknown.
    Unknown {
        client_id: String,
        error: String,
    },
    /// A user-data stream's listen key (`POST /api/v3/userDataStream`).
    ListenKey(Result<String, String>),
    /// The answer to a listen key's keep-alive (`PUT`).
    KeptAlive {
        key: String,
        result: Result<(), String>,
    },
    /// A symbol's order book snapshot (`GET /api/v3/depth`).
    Depth {
        symbol: String,
        result: Result<crate::depth::DepthSnapshot, String>,
    },
}

/// Why the REST client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RestSetupError {
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("HTTP client: {0}")]
    Client(reqwest::Error),
}

/// A REST client for one exchange.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
}

#[derive(Deserialize)]
struct OrderAnswer {
    status: Option<String>,
    #[serde(rename = "executedQty")]
    executed_qty: Option<String>,
    #[serde(rename = "avgPrice")]
    avg_price: Option<String>,
    price: Option<String>,
    msg: Option<String>,
    code: Option<i64>,
}

/// Binance's "order does not exist" code.
const UNKNOWN_ORDER: i64 = -2013;

impl RestClient {
    /// `base` like `http://127.0.0.1:9443`; `timeout` bounds every call (past
    /// it the order's status is unknown and it is reconciled by a query).
    pub fn new(
        base: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<RestClient, RestSetupError> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(path) = ca_file {
            let bad = |reason: String| RestSetupError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(RestSetupError::Client)?;
        Ok(RestClient {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Place a market order.
    pub async fn place(
        self,
        client_id: String,
        symbol: String,
        side: Side,
        qty: Decimal,
    ) -> OrderEvent {
        let body = serde_json::json!({
            "symbol": symbol, "side": side.as_str(), "type": "MARKET",
            "quantity": qty.to_string(), "newClientOrderId": client_id,
        });
        let sent = self
            .http
            .post(format!("{}/api/v3/order", self.base))
            .json(&body)
            .send()
            .await;
        Self::interpret(client_id, sent).await
    }

    /// `symbol`'s order book snapshot, 1000 levels deep (Binance's
    /// documented procedure for a local book).
    pub async fn depth(self, symbol: String) -> OrderEvent {
        let sent = self
            .http
            .get(format!("{}/api/v3/depth", self.base))
            .query(&[("symbol", symbol.as_str()), ("limit", "1000")])
            .send()
            .await;
        let result = async {
            let resp = sent.map_err(|e| e.to_string())?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("HTTP {status}: {v}"));
            }
            crate::depth::parse_snapshot(&v).ok_or_else(|| format!("not a depth snapshot: {v}"))
        };
        OrderEvent::Depth {
            result: result.await,
            symbol,
        }
    }

    /// A listen key for a user-data stream.
    pub async fn listen_key(self) -> OrderEvent {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "listenKey")]
            listen_key: String,
        }
        let sent = self
            .http
            .post(format!("{}/api/v3/userDataStream", self.base))
            .send()
            .await;
        let key = async {
            let resp = sent.map_err(|e| e.to_string())?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!(
                    "HTTP {status}: {}",
                    resp.text().await.unwrap_or_default()
                ));
            }
            let a: Answer = resp.json().await.map_err(|e| e.to_string())?;
            Ok(a.listen_key)
        };
        OrderEvent::ListenKey(key.await)
    }

    /// Keep listen key `key` alive (Binance: within every 60 min).
    pub async fn keep_alive(self, key: String) -> OrderEvent {
        let sent = self
            .http
            .put(format!("{}/api/v3/userDataStream", self.base))
            .query(&[("listenKey", key.as_str())])
            .send()
            .await;
        let result = match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!(
                "HTTP {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        };
        OrderEvent::KeptAlive { key, result }
    }

    /// The websocket URL of the user-data stream of `key`
    /// (`ws[s]://host/ws/<key>` beside the REST API).
    pub fn user_stream_url(&self, key: &str) -> String {
        let ws = match self.base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}"),
            Some((_, rest)) => format!("ws://{rest}"),
            None => format!("ws://{}", self.base),
        };
        format!("{ws}/ws/{key}")
    }

    /// Ask what became of `client_id`.
    pub async fn query(self, client_id: String, symbol: String) -> OrderEvent {
        let sent = self
            .http
            .get(format!("{}/api/v3/order", self.base))
            .query(&[
                ("symbol", symbol.as_str()),
                ("origClientOrderId", client_id.as_str()),
            ])
            .send()
            .await;
        Self::interpret(client_id, sent).await
    }

    async fn interpret(
        client_id: String,
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> OrderEvent {
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return OrderEvent::Unknown {
                    client_id,
                    error: e.to_string(),
                }
            }
        };
        let status = resp.status();
        let answer: OrderAnswer = match resp.json().await {
            Ok(a) => a,
            Err(e) => {
                return OrderEvent::Unknown {
                    client_id,
                    error: format!("HTTP {status}: unreadable answer: {e}"),
                }
            }
        };
        if status.is_server_error() {
            let error = format!("HTTP {status}: {}", answer.msg.unwrap_or_default());
            return OrderEvent::Unknown { client_id, error };
        }
        if !status.is_success() {
            if answer.code == Some(UNKNOWN_ORDER) {
                return OrderEvent::NotFound { client_id };
            }
            let reason = format!(
                "HTTP {status} {}: {}",
                answer.code.unwrap_or(0),
                answer.msg.unwrap_or_default()
            );
            return OrderEvent::Rejected { client_id, reason };
        }
        let dec = |s: &Option<String>| s.as_deref().and_then(|v| v.parse::<Decimal>().ok());
        match answer.status.as_deref() {
            Some("FILLED") => {
                let price = dec(&answer.avg_price)
                    .filter(|p| !p.is_zero())
                    .or_else(|| dec(&answer.price));
                match (dec(&answer.executed_qty), price) {
                    (Some(qty), Some(price)) => OrderEvent::Filled {
                        client_id,
                        qty,
                        price,
                    },
                    _ => OrderEvent::Unknown {
                        client_id,
                        error: "FILLED without quantity or price".into(),
                    },
                }
            }
            Some("NEW") | Some("PARTIALLY_FILLED") => OrderEvent::Accepted { client_id },
            Some(other) => OrderEvent::Rejected {
                client_id,
                reason: format!("order {other}"),
            },
            None => OrderEvent::Unknown {
                client_id,
                error: "answer without a status".into(),
            },
        }
    }
}

//! Orders over REST, Binance-style: place by client order id, query by
//! client order id. Every call turns into an [`OrderEvent`] for the app; a
//! call that fails or times out leaves the order's status unknown, and the
//! app reconciles it with a query (never by sending a new id).
//!
//! Order parameters go as Binance reads them: in the query string of a
//! `GET`, in an `application/x-www-form-urlencoded` body of a `POST`. With a
//! [`Signer`] ([`RestClient::signed`]) they are signed ([`crate::signing`])
//! and listen-key calls carry the API key; an exchange's refusal of a key or
//! a signature is a rejection like any other (the same request would be
//! refused again), its reason naming the likely fix.

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::book::Side;
use crate::signing::{self, Signer, API_KEY_HEADER};

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
    /// What a recovery's probe ([`RestClient::probe`]) found of
    /// `client_id` on `symbol`: the order's side (when the exchange has
    /// it), and what became of it, as for a query (`Filled`, `Accepted`,
    /// `Rejected`, `NotFound`, `Unknown`).
    Probed {
        client_id: String,
        symbol: String,
        side: Option<Side>,
        found: Box<OrderEvent>,
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
    /// Signs order calls and gives listen-key calls their API key.
    signer: Option<Arc<Signer>>,
}

#[derive(Deserialize)]
struct OrderAnswer {
    status: Option<String>,
    side: Option<String>,
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
            signer: None,
        })
    }

    /// Sign every order call with `signer`, and send its API key with every
    /// listen-key call.
    pub fn signed(mut self, signer: Signer) -> RestClient {
        self.signer = Some(Arc::new(signer));
        self
    }

    /// Whether order calls are signed.
    pub fn is_signed(&self) -> bool {
        self.signer.is_some()
    }

    /// A call to `/api/v3/order` with `params`: in the query string of a
    /// `GET` or `DELETE`, in the form body of a `POST`; signed, if this
    /// client signs, over exactly the text sent.
    fn order_call(
        &self,
        method: reqwest::Method,
        params: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut text = signing::encode_params(params);
        if let Some(signer) = &self.signer {
            text = signer.sign(&text, unix_ms());
        }
        let url = format!("{}/api/v3/order", self.base);
        let call = if method == reqwest::Method::POST {
            self.http
                .post(url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(text)
        } else {
            self.http.request(method, format!("{url}?{text}"))
        };
        self.with_key(call)
    }

    /// `call` with the API key header, if this client has a key.
    fn with_key(&self, call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.signer {
            Some(signer) => call.header(API_KEY_HEADER, signer.api_key()),
            None => call,
        }
    }

    /// Place a market order.
    pub async fn place(
        self,
        client_id: String,
        symbol: String,
        side: Side,
        qty: Decimal,
    ) -> OrderEvent {
        let qty = qty.to_string();
        let params = [
            ("symbol", symbol.as_str()),
            ("side", side.as_str()),
            ("type", "MARKET"),
            ("quantity", qty.as_str()),
            ("newClientOrderId", client_id.as_str()),
        ];
        let sent = self.order_call(reqwest::Method::POST, &params).send().await;
        Self::interpret(client_id, sent, self.is_signed()).await
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
            .with_key(
                self.http
                    .post(format!("{}/api/v3/userDataStream", self.base)),
            )
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
        let call = self
            .http
            .put(format!("{}/api/v3/userDataStream", self.base))
            .query(&[("listenKey", key.as_str())]);
        let sent = self.with_key(call).send().await;
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
        let params = [
            ("symbol", symbol.as_str()),
            ("origClientOrderId", client_id.as_str()),
        ];
        let sent = self.order_call(reqwest::Method::GET, &params).send().await;
        Self::interpret(client_id, sent, self.is_signed()).await
    }

    /// A recovery's probe: whether the exchange has an order `client_id` on
    /// `symbol` (an id a crashed worker may have used after the checkpoint
    /// this state comes from), and if so its side and what became of it.
    pub async fn probe(self, client_id: String, symbol: String) -> OrderEvent {
        let params = [
            ("symbol", symbol.as_str()),
            ("origClientOrderId", client_id.as_str()),
        ];
        let sent = self.order_call(reqwest::Method::GET, &params).send().await;
        let (found, side) =
            Self::interpret_with_side(client_id.clone(), sent, self.is_signed()).await;
        OrderEvent::Probed {
            client_id,
            symbol,
            side,
            found: Box::new(found),
        }
    }

    /// What an answer of `/api/v3/order` says of `client_id`'s order;
    /// `signed`: whether the request was.
    async fn interpret(
        client_id: String,
        sent: Result<reqwest::Response, reqwest::Error>,
        signed: bool,
    ) -> OrderEvent {
        Self::interpret_with_side(client_id, sent, signed).await.0
    }

    /// [`Self::interpret`], and the order's side as the exchange recorded
    /// it (when it has the order).
    async fn interpret_with_side(
        client_id: String,
        sent: Result<reqwest::Response, reqwest::Error>,
        signed: bool,
    ) -> (OrderEvent, Option<Side>) {
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let error = e.to_string();
                return (OrderEvent::Unknown { client_id, error }, None);
            }
        };
        let status = resp.status();
        let answer: OrderAnswer = match resp.json().await {
            Ok(a) => a,
            Err(e) => {
                let error = format!("HTTP {status}: unreadable answer: {e}");
                return (OrderEvent::Unknown { client_id, error }, None);
            }
        };
        let side = match answer.side.as_deref() {
            Some("BUY") => Some(Side::Buy),
            Some("SELL") => Some(Side::Sell),
            _ => None,
        };
        (Self::event_of(client_id, status, answer, signed), side)
    }

    fn event_of(
        client_id: String,
        status: reqwest::StatusCode,
        answer: OrderAnswer,
        signed: bool,
    ) -> OrderEvent {
        if status.is_server_error() {
            let error = format!("HTTP {status}: {}", answer.msg.unwrap_or_default());
            return OrderEvent::Unknown { client_id, error };
        }
        if !status.is_success() {
            if answer.code == Some(UNKNOWN_ORDER) {
                return OrderEvent::NotFound { client_id };
            }
            let code = answer.code.unwrap_or(0);
            let mut reason = format!("HTTP {status} {code}: {}", answer.msg.unwrap_or_default());
            if let Some(hint) = signing::hint(code, signed) {
                reason = format!("{reason} ({hint})");
            }
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

/// Milliseconds since the Unix epoch (0 if the clock is before it): a
/// signed request's `timestamp`.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;

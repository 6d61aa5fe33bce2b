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

    /// What an answer of `/api/v3/order` says of `client_id`'s order;
    /// `signed`: whether the request was.
    async fn interpret(
        client_id: String,
        sent: Result<reqwest::Response, reqwest::Error>,
        signed: bool,
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
mod tests {
    use super::*;
    use crate::signing::{hmac_sha256_hex, Credentials};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request as a server saw it: the request line, the headers (names
    /// lower case), the body.
    #[derive(Debug)]
    struct Seen {
        line: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            let found = self.headers.iter().find(|(n, _)| n == name);
            found.map(|(_, v)| v.as_str())
        }
    }

    /// A server that answers each request on its own connection with
    /// `status` and `body`, and hands over what it saw.
    async fn server(
        status: u16,
        body: &'static str,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let seen = loop {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let mut lines = head.lines();
                    let line = lines.next().unwrap_or_default().to_owned();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let len = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break Seen {
                            line,
                            headers,
                            body: rest.to_owned(),
                        };
                    }
                };
                let _ = tx.send(seen);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), rx)
    }

    fn client(base: &str, signed: bool) -> RestClient {
        let c = RestClient::new(base, Duration::from_secs(5), None).expect("client");
        if !signed {
            return c;
        }
        let keys = Credentials::new("the-key", b"the-secret", "test").expect("keys");
        c.signed(Signer::new(keys, 7000))
    }

    /// `text` without its trailing `&signature=…`, and that signature.
    fn split_signature(text: &str) -> (&str, &str) {
        text.rsplit_once("&signature=").expect("signed")
    }

    const FILLED: &str = r#"{"status":"FILLED","executedQty":"0.01","avgPrice":"42000.5"}"#;

    #[tokio::test]
    async fn signed_orders_carry_the_key_and_a_signature_of_the_text_sent() {
        let (base, mut seen) = server(200, FILLED).await;
        let rest = client(&base, true);
        let qty = Decimal::new(1, 2);
        let placed = rest
            .clone()
            .place("w:1/a".into(), "BTCUSDT".into(), Side::Buy, qty)
            .await;
        assert!(matches!(placed, OrderEvent::Filled { .. }), "{placed:?}");
        let post = seen.recv().await.expect("POST");
        assert_eq!(post.line, "POST /api/v3/order HTTP/1.1");
        assert_eq!(post.header("x-mbx-apikey"), Some("the-key"));
        assert_eq!(
            post.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let (payload, signature) = split_signature(&post.body);
        let (params, timestamp) = payload.rsplit_once("&timestamp=").expect("timestamp");
        assert_eq!(
            params,
            "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01\
             &newClientOrderId=w%3A1%2Fa&recvWindow=7000"
        );
        let age = unix_ms().saturating_sub(timestamp.parse().expect("ms"));
        assert!(age < 5_000, "timestamp {timestamp} is {age} ms old");
        assert_eq!(
            signature,
            hmac_sha256_hex(b"the-secret", payload.as_bytes())
        );

        let queried = rest.clone().query("w:1/a".into(), "BTCUSDT".into()).await;
        assert!(matches!(queried, OrderEvent::Filled { .. }), "{queried:?}");
        let get = seen.recv().await.expect("GET");
        let target = get.line.split(' ').nth(1).expect("target");
        let query = target.strip_prefix("/api/v3/order?").expect("query");
        let (payload, signature) = split_signature(query);
        assert!(
            payload.starts_with("symbol=BTCUSDT&origClientOrderId=w%3A1%2Fa&recvWindow=7000&"),
            "{payload}"
        );
        assert_eq!(
            signature,
            hmac_sha256_hex(b"the-secret", payload.as_bytes())
        );
        assert_eq!(get.header("x-mbx-apikey"), Some("the-key"));
        assert_eq!(get.body, "");

        // Listen keys (USER_STREAM): the key, no signature.
        let _ = rest.clone().listen_key().await;
        let post = seen.recv().await.expect("listen key");
        assert_eq!(post.line, "POST /api/v3/userDataStream HTTP/1.1");
        assert_eq!(post.header("x-mbx-apikey"), Some("the-key"));
        let _ = rest.keep_alive("k".into()).await;
        let put = seen.recv().await.expect("keep-alive");
        assert_eq!(put.line, "PUT /api/v3/userDataStream?listenKey=k HTTP/1.1");
        assert_eq!(put.header("x-mbx-apikey"), Some("the-key"));
    }

    #[tokio::test]
    async fn without_keys_orders_go_unsigned_in_the_same_shape() {
        let (base, mut seen) = server(200, FILLED).await;
        let rest = client(&base, false);
        let _ = rest
            .clone()
            .place("w1".into(), "ETHUSDT".into(), Side::Sell, Decimal::ONE)
            .await;
        let post = seen.recv().await.expect("POST");
        assert_eq!(post.header("x-mbx-apikey"), None);
        assert_eq!(
            post.body,
            "symbol=ETHUSDT&side=SELL&type=MARKET&quantity=1&newClientOrderId=w1"
        );
        let _ = rest.query("w1".into(), "ETHUSDT".into()).await;
        let get = seen.recv().await.expect("GET");
        assert_eq!(
            get.line,
            "GET /api/v3/order?symbol=ETHUSDT&origClientOrderId=w1 HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn refused_keys_and_signatures_are_rejections_naming_the_fix() {
        for (status, body, signed, hint) in [
            (
                401,
                r#"{"code":-2014,"msg":"API-key format invalid."}"#,
                false,
                "HANDOFF_API_KEY",
            ),
            (
                401,
                r#"{"code":-2015,"msg":"Invalid API-key, IP, or permissions for action."}"#,
                true,
                "API key",
            ),
            (
                400,
                r#"{"code":-1022,"msg":"Signature for this request is not valid."}"#,
                true,
                "secret",
            ),
            (
                400,
                r#"{"code":-1021,"msg":"Timestamp for this request is outside of the recvWindow."}"#,
                true,
                "clock",
            ),
        ] {
            let (base, _seen) = server(status, body).await;
            let event = client(&base, signed)
                .place("w1".into(), "BTCUSDT".into(), Side::Buy, Decimal::ONE)
                .await;
            let OrderEvent::Rejected { reason, .. } = &event else {
                panic!("{body}: not a rejection: {event:?}");
            };
            assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
            assert!(reason.contains(hint), "{reason}");
            assert!(!reason.contains("the-secret"), "{reason}");
        }
    }
}

//! Helpers: start a simulator in-process, talk to it over real sockets.

use crate::http_client::HttpConn;
use clap::Parser;
use exchange_sim::{Args, Sim, SimHandle};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for any single wait in the tests.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Start a simulator on 127.0.0.1:0 with extra flags.
pub async fn start(flags: &[&str]) -> (SocketAddr, SimHandle) {
    let mut argv = vec!["exchange-sim", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(flags);
    let sim = Sim::bind(Args::parse_from(argv)).await.expect("bind");
    let (addr, handle) = (sim.local_addr(), sim.handle());
    tokio::spawn(sim.serve());
    (addr, handle)
}

/// Send raw request bytes on a fresh connection; returns the (first)
/// response's status and body.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut conn = HttpConn::connect(addr).await;
    conn.send_raw(request).await;
    let response = conn.read_response().await;
    (response.status, response.body)
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: sim\r\n\r\n");
    http_raw(addr, req.as_bytes()).await
}

/// `GET /audit[?wait_acked_ms=N]` as JSON.
pub async fn audit(addr: SocketAddr, wait_ms: Option<u64>) -> Value {
    let path = match wait_ms {
        Some(ms) => format!("/audit?wait_acked_ms={ms}"),
        None => "/audit".to_owned(),
    };
    let (status, body) = http_get(addr, &path).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("audit is JSON")
}

/// Poll `/audit` (each poll a real round trip, no sleeping) until `pred` holds.
pub async fn audit_until(addr: SocketAddr, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let a = audit(addr, None).await;
        if pred(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "audit never matched: {a}");
        tokio::task::yield_now().await;
    }
}

/// The audit record of connection `id`.
pub fn conn(audit: &Value, id: u64) -> &Value {
    audit["connections"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("no connection {id} in {audit}"))
}

/// Connect with tokio-tungstenite and subscribe; returns the socket and the
/// subscription answer.
pub async fn subscribe(addr: SocketAddr, path: &str, streams: &[&str]) -> (Ws, Value) {
    let (mut ws, _) = connect_async(format!("ws://{addr}{path}"))
        .await
        .expect("websocket connect");
    let answer = send_subscribe(&mut ws, streams).await;
    (ws, answer)
}

/// Subscribe on an open websocket; returns the subscription answer.
pub async fn send_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    streams: &[&str],
) -> Value {
    let req = serde_json::json!({"method": "SUBSCRIBE", "params": streams, "id": 1});
    ws.send(Message::text(req.to_string()))
        .await
        .expect("send subscribe");
    next_json(ws).await
}

/// The next text message as JSON (control frames are handled by tungstenite).
pub async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    let text = next_text(ws).await;
    serde_json::from_str(&text).expect("message is JSON")
}

pub async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("valid websocket message");
        match msg {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// A trade as the determinism claim sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub stream: String,
    pub t: u64,
    pub p: String,
    pub q: String,
    pub m: bool,
}

pub fn tick(msg: &Value) -> Tick {
    let d = &msg["data"];
    Tick {
        stream: msg["stream"].as_str().expect("stream").to_owned(),
        t: d["t"].as_u64().expect("t"),
        p: d["p"].as_str().expect("p").to_owned(),
        q: d["q"].as_str().expect("q").to_owned(),
        m: d["m"].as_bool().expect("m"),
    }
}

pub async fn ack<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    stream: &str,
    t: u64,
) {
    let msg = format!(r#"{{"method":"ack","stream":"{stream}","t":{t}}}"#);
    ws.send(Message::text(msg)).await.expect("send ack");
}

//! Wire-level behaviour: fragments with interleaved pings, protocol
//! violations from hostile clients, subscription errors, close handshakes.

use crate::raw::RawClient;
use crate::support::{ack, audit_until, conn, next_json, start, subscribe, tick, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const SUB_BTC: &str = r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_arrive_between_fragments_and_writes_split_frames() {
    let (addr, _sim) = start(&[
        "--rate",
        "2000",
        "--trades",
        "60",
        "--fragment-every",
        "1",
        "--ping-every",
        "1",
        "--max-chunk",
        "5",
    ])
    .await;
    let mut c = RawClient::connect(addr, "/ws").await;
    c.send_text(SUB_BTC).await;
    let (answer, _, _) = c.message().await;
    assert_eq!(answer, r#"{"result":null,"id":1}"#);
    let mut interleaved_pings = 0;
    for t in 1..=60 {
        let (text, between, fragments) = c.message().await;
        assert!((2..=4).contains(&fragments), "every message fragmented");
        interleaved_pings += between.iter().filter(|f| f.opcode == 9).count();
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(tick(&v).t, t);
    }
    assert!(
        interleaved_pings >= 25,
        "only {interleaved_pings} pings between fragments"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_and_malformed_clients_are_recorded_and_isolated() {
    let (addr, _sim) = start(&["--rate", "1000"]).await;
    // A well-behaved client keeps being served throughout.
    let (mut good, _) = subscribe(addr, "/ws", &["ethusdt@trade"]).await;

    // Connection 2 sends an unmasked (but otherwise valid) subscribe.
    let mut unmasked = RawClient::connect(addr, "/ws").await;
    unmasked.send(0x81, SUB_BTC.as_bytes(), None).await;
    let (answer, _, _) = unmasked.message().await;
    assert_eq!(answer, r#"{"result":null,"id":1}"#);

    // Connection 3 sends a frame with reserved bits set, then junk.
    let mut bad = RawClient::connect(addr, "/ws").await;
    bad.send(0xF1, b"{}", Some([1, 2, 3, 4])).await;
    bad.send(0x81, SUB_BTC.as_bytes(), Some([1, 2, 3, 4])).await;

    // Connection 4 sends invalid UTF-8; connection 5 invalid JSON.
    let mut utf8 = RawClient::connect(addr, "/ws").await;
    utf8.send(0x81, &[0xC3, 0x28], Some([9, 9, 9, 9])).await;
    let mut json = RawClient::connect(addr, "/ws").await;
    json.send_text("{not json").await;

    let a = audit_until(addr, |a| a["totals"]["malformed"] == 3).await;
    assert_eq!(a["totals"]["unmasked"], 1, "{a}");
    assert_eq!(conn(&a, 2)["unmasked"], 1);
    for id in [3, 4, 5] {
        let c = conn(&a, id);
        assert_eq!(c["malformed"], 1, "{c}");
        assert!(c["closed_by"].is_null(), "socket stays open: {c}");
        assert!(!c["errors"].as_array().expect("errors").is_empty(), "{c}");
    }
    assert!(conn(&a, 3)["subscribed"]
        .as_array()
        .expect("list")
        .is_empty());

    // The good client is unaffected.
    for t in 1..=30 {
        let got = tick(&next_json(&mut good).await);
        assert_eq!(got.t, t);
        ack(&mut good, "ethusdt@trade", t).await;
    }
    let a = audit_until(addr, |a| {
        conn(a, 1)["streams"]["ethusdt@trade"]["acked"] == 30
    })
    .await;
    let g = &conn(&a, 1)["streams"]["ethusdt@trade"];
    assert_eq!(
        (g["gaps"].as_u64(), g["duplicates"].as_u64()),
        (Some(0), Some(0))
    );

    // A client going away is noticed, even after it was desynchronised.
    drop(bad);
    audit_until(addr, |a| conn(a, 3)["closed_by"] == "eof").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_streams_are_refused_and_close_frames_recorded() {
    let (addr, _sim) = start(&["--symbols", "btcusdt"]).await;
    let (mut ws, answer) = subscribe(addr, "/ws", &["ethusdt@trade"]).await;
    assert_eq!(
        answer,
        serde_json::json!({"error": {"code": 2, "msg": "unknown stream ethusdt@trade"}, "id": 1})
    );
    ws.send(Message::text(r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#))
        .await
        .expect("send");
    ws.close(None).await.expect("close");
    // The server echoes the close frame, then the stream ends.
    let end = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(end.is_ok());
    let a = audit_until(addr, |a| a["totals"]["closed"] == 1).await;
    let c = conn(&a, 1);
    assert_eq!(c["closed_by"], "close_frame");
    assert_eq!(c["other_messages"], 1);
    assert!(c["subscribed"].as_array().expect("list").is_empty());
    assert_eq!(a["connections_open"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_going_away() {
    let (addr, sim) = start(&["--rate", "500"]).await;
    let (mut ws, _) = subscribe(addr, "/ws", &["btcusdt@trade"]).await;
    next_json(&mut ws).await;
    sim.shutdown();
    let close = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("close in time");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    let a: Value = serde_json::from_str(&sim.audit_json()).expect("json");
    assert_eq!(conn(&a, 1)["closed_by"], "shutdown");
}

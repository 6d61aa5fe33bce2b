//! Connection lifetime: `--max-conn-age-ms`, `/control/server_shutdown`,
//! timed pings and the pong timeout.

use crate::http_client::HttpConn;
use crate::raw::RawClient;
use crate::support::{
    audit_until, conn, http_get, next_json, start, subscribe, tick, Ws, PATIENCE,
};
use crate::user_stream::{close_code, new_listen_key, user_ws};
use futures_util::StreamExt;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Read until the close frame; the text messages before it, and its code.
async fn until_close(ws: &mut Ws) -> (Vec<Value>, u16) {
    let mut texts = Vec::new();
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("valid message");
        match msg {
            Message::Text(t) => texts.push(serde_json::from_str(t.as_str()).expect("json")),
            Message::Close(frame) => {
                return (texts, frame.map_or(1005, |f| u16::from(f.code)));
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conn_age_closes_market_and_user_streams() {
    let (addr, _sim) = start(&["--max-conn-age-ms", "300", "--rate", "100"]).await;
    let opened = Instant::now();
    let (mut market, _) = subscribe(addr, "/ws", &["btcusdt@trade"]).await;
    let mut c = HttpConn::connect(addr).await;
    let key = new_listen_key(&mut c).await;
    let mut user = user_ws(addr, &key).await;
    let (texts, code) = until_close(&mut market).await;
    assert!(opened.elapsed() >= Duration::from_millis(300));
    assert_eq!(code, 1001);
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(
            tick(t).t,
            i as u64 + 1,
            "only trades on a market stream: {t}"
        );
    }
    let (texts, code) = until_close(&mut user).await;
    assert_eq!(code, 1001);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(texts[0]["e"], "serverShutdown");
    assert!(texts[0]["E"].as_u64().is_some());
    let a = audit_until(addr, |a| a["connections_open"] == 0).await;
    for id in [1, 2] {
        assert_eq!(conn(&a, id)["closed_by"], "max_age", "{a}");
    }
    // New connections get their own full age.
    let (mut again, _) = subscribe(addr, "/ws", &["ethusdt@trade"]).await;
    assert_eq!(tick(&next_json(&mut again).await).t, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_closes_every_websocket_and_serving_goes_on() {
    let (addr, _sim) = start(&["--rate", "100"]).await;
    let (mut market, _) = subscribe(addr, "/ws", &["btcusdt@trade", "btcusdt@depth"]).await;
    let mut c = HttpConn::connect(addr).await;
    let key = new_listen_key(&mut c).await;
    let mut user = user_ws(addr, &key).await;
    next_json(&mut market).await;
    let r = c
        .request("POST", "/control/server_shutdown", Some(""))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), serde_json::json!({"ok": true, "connections": 2}));
    let (texts, code) = until_close(&mut market).await;
    assert_eq!(code, 1001);
    let last = texts.last().expect("the event");
    assert_eq!(last["stream"], "!serverShutdown", "{texts:?}");
    assert_eq!(last["data"]["e"], "serverShutdown");
    let (texts, code) = until_close(&mut user).await;
    assert_eq!((texts.len(), code), (1, 1001), "{texts:?}");
    assert_eq!(texts[0]["e"], "serverShutdown");
    let a = audit_until(addr, |a| a["connections_open"] == 0).await;
    assert_eq!(conn(&a, 1)["closed_by"], "server_shutdown");
    assert_eq!(conn(&a, 2)["closed_by"], "server_shutdown");
    // The simulator serves on: new streams, the same key, GET works too.
    let (mut again, _) = subscribe(addr, "/ws", &["btcusdt@trade"]).await;
    assert_eq!(tick(&next_json(&mut again).await).t, 1);
    let mut user = user_ws(addr, &key).await;
    assert_eq!(http_get(addr, "/control/server_shutdown").await.0, 200);
    assert_eq!(close_code_after_event(&mut user).await, 1001);
}

/// The `serverShutdown` event, then the close frame's code.
async fn close_code_after_event(ws: &mut Ws) -> u16 {
    assert_eq!(next_json(ws).await["e"], "serverShutdown");
    close_code(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_pings_keep_answering_clients_and_close_silent_ones() {
    let (addr, _sim) = start(&[
        "--ping-every-ms",
        "20",
        "--pong-timeout-ms",
        "500",
        "--rate",
        "50",
    ])
    .await;
    // Connection 1 answers pings (tungstenite does, as it reads).
    let (mut good, _) = subscribe(addr, "/ws", &["btcusdt@trade"]).await;
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = good.next().await {} });
    // Connection 2 answers every ping with an unsolicited pong: no echo.
    let mut silent = RawClient::connect(addr, "/ws").await;
    let started = Instant::now();
    let mut pings = 0;
    let close = loop {
        let f = silent.frame().await;
        match f.opcode {
            9 => {
                pings += 1;
                silent.send(0x8A, b"", Some([1, 2, 3, 4])).await;
            }
            8 => break f,
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(pings >= 5, "{pings} pings");
    assert_eq!(close.payload.get(..2), Some(&1008u16.to_be_bytes()[..]));
    let a = audit_until(addr, |a| {
        conn(a, 2)["closed_by"] == "pong_timeout"
            && conn(a, 1)["pongs_received"].as_u64() >= Some(30)
    })
    .await;
    // 30 echoed pings span more than the pong timeout: the answering
    // connection lives on.
    let good = conn(&a, 1);
    assert!(good["closed_by"].is_null(), "{a}");
    assert!(good["pings_sent"].as_u64() >= Some(30), "{a}");
    assert!(conn(&a, 2)["pongs_received"].as_u64() >= Some(5), "{a}");
    reader.abort();
}

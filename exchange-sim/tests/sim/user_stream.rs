//! User-data streams: listen keys issued, kept alive, closed and expired;
//! `executionReport`s for the orders of the REST API.

use crate::http_client::HttpConn;
use crate::support::{audit_until, conn, http_raw, next_json, start, Ws, PATIENCE};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const KEYS: &str = "/api/v3/userDataStream";
const ORDER: &str = "/api/v3/order";

/// `POST /api/v3/userDataStream`: a new listen key.
pub async fn new_listen_key(c: &mut HttpConn) -> String {
    let r = c.request("POST", KEYS, Some("")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let key = v["listenKey"].as_str().expect("listenKey").to_owned();
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
    assert!(
        key.len() == 60 && key.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{key}"
    );
    key
}

/// A websocket on the user-data stream of `key`.
pub async fn user_ws(addr: SocketAddr, key: &str) -> Ws {
    let (ws, _) = connect_async(format!("ws://{addr}/ws/{key}"))
        .await
        .expect("user-data websocket");
    ws
}

/// The close frame's code, skipping nothing else: the next message must be it.
pub async fn close_code(ws: &mut Ws) -> u16 {
    let msg = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("close in time")
        .expect("stream open")
        .expect("valid message");
    match msg {
        Message::Close(Some(frame)) => u16::from(frame.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

fn order(kind: &str, price: Option<&str>, id: &str) -> String {
    let mut o = json!({"symbol": "BTCUSDT", "side": "BUY", "type": kind,
                       "quantity": "0.50000000", "newClientOrderId": id});
    if let Some(p) = price {
        o["price"] = p.into();
    }
    o.to_string()
}

fn report<'a>(v: &'a Value, x: &str, status: &str) -> &'a Value {
    assert_eq!(v["e"], "executionReport", "{v}");
    assert_eq!(
        (v["x"].as_str(), v["X"].as_str()),
        (Some(x), Some(status)),
        "{v}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_reports_follow_the_order_api() {
    let (addr, _sim) = start(&[]).await;
    let mut c = HttpConn::connect(addr).await;
    let key = new_listen_key(&mut c).await;
    let mut ws = user_ws(addr, &key).await;
    let mut other = user_ws(addr, &key).await;

    let placed = c.post(ORDER, &order("MARKET", None, "m-1")).await.json();
    let new = next_json(&mut ws).await;
    let new = report(&new, "NEW", "NEW");
    assert_eq!(
        (new["s"].as_str(), new["c"].as_str(), new["S"].as_str()),
        (Some("BTCUSDT"), Some("m-1"), Some("BUY"))
    );
    assert_eq!(
        (new["o"].as_str(), new["q"].as_str(), new["z"].as_str()),
        (Some("MARKET"), Some("0.50000000"), Some("0.00000000"))
    );
    assert_eq!(new["i"], placed["orderId"]);
    assert_eq!(new["t"], -1);
    let fill = next_json(&mut ws).await;
    let fill = report(&fill, "TRADE", "FILLED");
    assert_eq!(
        (fill["l"].as_str(), fill["z"].as_str()),
        (Some("0.50000000"), Some("0.50000000"))
    );
    assert_eq!(fill["L"], "42000.00000000");
    assert_eq!(fill["Z"], "21000.00000000");
    assert_eq!((fill["n"].as_str(), fill["N"].is_null()), (Some("0"), true));
    assert_eq!(fill["T"], placed["transactTime"]);
    assert!(fill["E"].as_u64().is_some_and(|e| e > 1_600_000_000_000));
    assert_eq!(fill["t"], placed["orderId"]);
    for field in [
        "f", "p", "P", "F", "g", "C", "r", "I", "w", "m", "M", "O", "Y", "Q", "V",
    ] {
        assert!(fill.get(field).is_some(), "no {field} in {fill}");
    }
    // Every stream of the key gets the same events.
    assert_eq!(&next_json(&mut other).await, new);
    assert_eq!(&next_json(&mut other).await, fill);

    // Refused placements make no report; a resting LIMIT and its cancel do.
    assert_eq!(
        c.post(ORDER, &order("MARKET", None, "m-1")).await.status,
        400
    );
    assert_eq!(c.post(ORDER, "{nonsense").await.status, 400);
    c.post(ORDER, &order("LIMIT", Some("100.5"), "rest-1"))
        .await;
    let rest = next_json(&mut ws).await;
    let rest = report(&rest, "NEW", "NEW");
    assert_eq!(
        (rest["c"].as_str(), rest["p"].as_str()),
        (Some("rest-1"), Some("100.50000000"))
    );
    assert_eq!(rest["w"], true);
    assert_eq!(rest["W"], rest["O"]);
    let cancel = format!("{ORDER}?symbol=BTCUSDT&origClientOrderId=rest-1");
    assert_eq!(c.request("DELETE", &cancel, None).await.status, 200);
    let gone = next_json(&mut ws).await;
    let gone = report(&gone, "CANCELED", "CANCELED");
    assert_eq!(gone["C"], "rest-1");
    assert_eq!(gone["i"], rest["i"]);
    assert_eq!(&next_json(&mut other).await, rest);
    assert_eq!(&next_json(&mut other).await, gone);

    // Keep-alives: {} and counted; unknown keys are -1125.
    let keep = format!("{KEYS}?listenKey={key}");
    for _ in 0..2 {
        let r = c.request("PUT", &keep, None).await;
        assert_eq!((r.status, r.body.as_str()), (200, "{}"), "{r:?}");
    }
    let unknown = format!("{KEYS}?listenKey={}", "A".repeat(60));
    c.request("PUT", &unknown, None).await.refusal(400, -1125);
    c.request("PUT", &format!("{KEYS}?listenKey=short"), None)
        .await
        .refusal(400, -1125);
    c.request("PUT", KEYS, None).await.refusal(400, -1102);
    c.request("DELETE", &unknown, None)
        .await
        .refusal(400, -1125);
    c.get(KEYS).await.refusal(405, -1000);
    let form = format!("listenKey={key}");
    assert_eq!(
        c.request("PUT", KEYS, Some(&form)).await.status,
        200,
        "form-encoded body"
    );
    let a = audit_until(addr, |a| a["listen_keys"][&key]["events_sent"] == 8).await;
    let k = &a["listen_keys"][&key];
    assert_eq!(
        (k["keepalives"].as_u64(), k["streams_opened"].as_u64()),
        (Some(3), Some(2)),
        "{a}"
    );
    assert!(k["closed_by"].is_null(), "{a}");
    let c1 = conn(&a, 1);
    assert_eq!(
        (c1["listen_key"].as_str(), c1["user_events_sent"].as_u64()),
        (Some(key.as_str()), Some(4)),
        "{a}"
    );

    // DELETE closes the streams; the key is gone.
    let r = c.request("DELETE", &keep, None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"), "{r:?}");
    assert_eq!(close_code(&mut ws).await, 1000);
    assert_eq!(close_code(&mut other).await, 1000);
    c.request("PUT", &keep, None).await.refusal(400, -1125);
    let a = audit_until(addr, |a| conn(a, 2)["closed_by"] == "listen_key_closed").await;
    assert_eq!(a["listen_keys"][&key]["closed_by"], "deleted", "{a}");
    // A websocket on a dead key is refused before the upgrade.
    let upgrade = format!(
        "GET /ws/{key} HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let (status, body) = http_raw(addr, upgrade.as_bytes()).await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["code"],
        -1125,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_keys_expire_without_keepalives() {
    let (addr, _sim) = start(&["--listen-key-ttl-ms", "1000"]).await;
    let mut c = HttpConn::connect(addr).await;
    let idle = new_listen_key(&mut c).await;
    let key = new_listen_key(&mut c).await;
    let mut ws = user_ws(addr, &key).await;
    let r = c
        .request("PUT", &format!("{KEYS}?listenKey={key}"), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let expired = next_json(&mut ws).await;
    assert_eq!(expired["e"], "listenKeyExpired", "{expired}");
    assert_eq!(expired["listenKey"].as_str(), Some(key.as_str()));
    assert!(expired["E"].as_u64().is_some());
    assert_eq!(close_code(&mut ws).await, 1000);
    c.request("PUT", &format!("{KEYS}?listenKey={key}"), None)
        .await
        .refusal(400, -1125);
    let a = audit_until(addr, |a| {
        a["listen_keys"][&idle]["closed_by"] == "expired" && conn(a, 1)["closed_by"].is_string()
    })
    .await;
    let k = &a["listen_keys"][&key];
    assert_eq!(
        (k["closed_by"].as_str(), k["keepalives"].as_u64()),
        (Some("expired"), Some(1)),
        "{a}"
    );
    assert_eq!(conn(&a, 1)["closed_by"], "listen_key_expired", "{a}");
}

//! HTTP/1.1 transport of the order API: keep-alive, pipelining, bad input.

use crate::http_client::HttpConn;
use crate::support::{http_get, http_raw, start};
use serde_json::json;

const ORDER: &str = "/api/v3/order";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_share_one_connection() {
    let (addr, _sim) = start(&[]).await;
    let mut c = HttpConn::connect(addr).await;
    for i in 0..20 {
        let id = format!("ka-{i}");
        let body = json!({"symbol": "ETHUSDT", "side": "BUY", "type": "MARKET",
                          "quantity": "0.1", "newClientOrderId": id});
        let placed = c.post(ORDER, &body.to_string()).await;
        assert_eq!((placed.status, placed.close), (200, false), "{placed:?}");
        assert!(placed.head.contains("Connection: keep-alive"), "{placed:?}");
        let got = c
            .get(&format!("{ORDER}?symbol=ETHUSDT&origClientOrderId={id}"))
            .await;
        assert_eq!(got.json()["orderId"], i + 1);
        assert_eq!(
            c.get("/api/v3/positions").await.json()["ETHUSDT"]["fills"],
            i + 1
        );
    }
    // Control endpoints and refusals keep the connection too.
    assert_eq!(c.get("/health").await.status, 200);
    assert_eq!(c.get("/nope").await.status, 404);
    assert_eq!(c.post(ORDER, "nonsense").await.status, 400);
    assert_eq!(c.get("/orders/audit").await.json()["orders"], 20);

    // Pipelined: two requests in one write, two answers in order.
    c.send_raw(b"GET /health HTTP/1.1\r\n\r\nGET /orders/audit HTTP/1.1\r\n\r\n")
        .await;
    assert_eq!(c.read_response().await.body, r#"{"ok":true}"#);
    assert_eq!(c.read_response().await.json()["filled"], 20);

    // Expect: 100-continue gets an interim answer before the body is sent.
    let body = r#"{"symbol":"BTCUSDT","side":"SELL","type":"MARKET","quantity":"1","newClientOrderId":"cont"}"#;
    let head = format!(
        "POST {ORDER} HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send_raw(head.as_bytes()).await;
    assert_eq!(c.read_response().await.status, 100);
    c.send_raw(body.as_bytes()).await;
    assert_eq!(c.read_response().await.json()["status"], "FILLED");

    // `Connection: close` is honoured.
    c.send_raw(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await;
    let last = c.read_response().await;
    assert_eq!((last.status, last.close), (200, true));
    assert!(c.closed_by_server().await);

    // HTTP/1.0 closes unless asked to keep alive.
    let mut old = HttpConn::connect(addr).await;
    old.send_raw(b"GET /health HTTP/1.0\r\n\r\n").await;
    assert!(old.read_response().await.close);
    assert!(old.closed_by_server().await);
    let mut old_ka = HttpConn::connect(addr).await;
    old_ka
        .send_raw(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert!(!old_ka.read_response().await.close);
    old_ka
        .send_raw(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(old_ka.read_response().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_4xx_and_never_kills_the_server() {
    let (addr, _sim) = start(&[]).await;
    let mut c = HttpConn::connect(addr).await;
    let missing = [
        (
            "symbol",
            r#"{"side":"BUY","type":"MARKET","quantity":"1","newClientOrderId":"g"}"#,
        ),
        (
            "side",
            r#"{"symbol":"BTCUSDT","type":"MARKET","quantity":"1","newClientOrderId":"g"}"#,
        ),
        (
            "type",
            r#"{"symbol":"BTCUSDT","side":"BUY","quantity":"1","newClientOrderId":"g"}"#,
        ),
        (
            "quantity",
            r#"{"symbol":"BTCUSDT","side":"BUY","type":"MARKET","newClientOrderId":"g"}"#,
        ),
        (
            "quantity",
            r#"{"symbol":"BTCUSDT","side":"BUY","type":"MARKET","quantity":0.1,"newClientOrderId":"g"}"#,
        ),
        (
            "quantity",
            r#"{"symbol":"BTCUSDT","side":"BUY","type":"MARKET","quantity":"1e9999","newClientOrderId":"g"}"#,
        ),
        (
            "price",
            r#"{"symbol":"BTCUSDT","side":"BUY","type":"LIMIT","quantity":"1","newClientOrderId":"g"}"#,
        ),
        (
            "newClientOrderId",
            r#"{"symbol":"BTCUSDT","side":"BUY","type":"MARKET","quantity":"1"}"#,
        ),
    ];
    for (field, body) in missing {
        let msg = c.post(ORDER, body).await.refusal(400, -1102);
        assert!(msg.contains(&format!("'{field}'")), "{field}: {msg}");
    }
    let garbage = ["", "not json", "[]", "null", "{\"symbol\":", "\u{0}\u{7f}"];
    for body in garbage {
        c.post(ORDER, body).await.refusal(400, -1102);
    }
    // Deterministic pseudo-random bytes as bodies and query strings.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    const RANDOM: usize = 64;
    for len in 0..RANDOM {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let mut req =
            format!("POST {ORDER} HTTP/1.1\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        req.extend_from_slice(&bytes);
        c.send_raw(&req).await;
        assert_eq!(c.read_response().await.status, 400);
        let query: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        let r = c
            .get(&format!("{ORDER}?symbol=BTCUSDT&origClientOrderId={query}"))
            .await;
        assert!(r.status == 400 || r.status == 404, "{r:?}");
        assert!(r.json()["code"].is_i64());
    }
    c.get(ORDER).await.refusal(400, -1102);
    c.get(&format!("{ORDER}?symbol=BTCUSDT&orderId=x"))
        .await
        .refusal(400, -1102);
    c.request("PUT", ORDER, Some("{}"))
        .await
        .refusal(405, -1000);
    c.post("/api/v3/positions", "{}").await.refusal(405, -1000);
    c.request("DELETE", "/orders/audit", None)
        .await
        .refusal(405, -1000);
    c.get("/api/v3/account").await.refusal(404, -1000);
    c.get("/api/v3/order/extra").await.refusal(404, -1000);
    // Every malformed placement is counted; queries are not placements.
    let invalid = missing.len() + garbage.len() + RANDOM;
    assert_eq!(c.get("/orders/audit").await.json()["invalid"], invalid);
    assert_eq!(c.get("/orders/audit").await.json()["orders"], 0);

    // Framing the server will not read: answered 400, then closed.
    for raw in [
        &b"POST /api/v3/order HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /api/v3/order HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
        b"POST /api/v3/order HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n",
    ] {
        let mut bad = HttpConn::connect(addr).await;
        bad.send_raw(raw).await;
        let r = bad.read_response().await;
        assert_eq!((r.status, r.close), (400, true), "{r:?}");
        assert!(bad.closed_by_server().await);
    }
    assert_eq!(http_raw(addr, b"GET /health HTTP/1.1\r\n\r\n").await.0, 200);
    assert_eq!(http_get(addr, "/health").await.0, 200);
}

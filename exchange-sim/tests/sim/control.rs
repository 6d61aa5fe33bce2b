//! The HTTP endpoints on the websocket port.

use crate::support::{http_get, http_raw};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_bad_requests() {
    let (addr, serve) = exchange_sim::bind(exchange_sim::Args::default())
        .await
        .expect("bind");
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    tokio::spawn(serve);
    assert_eq!(
        http_get(addr, "/health").await,
        (200, r#"{"ok":true}"#.to_owned())
    );
    let (status, body) = http_get(addr, "/nope").await;
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");
    assert_eq!(http_get(addr, "/audit?wait_acked_ms=soon").await.0, 400);
    let (status, body) = http_get(addr, "/audit").await;
    assert_eq!(status, 200);
    let a: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(a["connections_total"], 0);
    assert_eq!(a["connections_open"], 0);
    assert_eq!(a["totals"]["sent"], 0);
    assert_eq!(
        http_raw(addr, b"POST /pause HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .await
            .0,
        405
    );
    assert_eq!(
        http_raw(addr, b"\x16\x03\x01 definitely not http\r\n\r\n")
            .await
            .0,
        400
    );
    let no_key = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    assert_eq!(http_raw(addr, no_key).await.0, 400);
    // Still alive after all that.
    assert_eq!(http_get(addr, "/health").await.0, 200);
}

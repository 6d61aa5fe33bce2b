//! The REST client against a stand-in exchange: what it signs and sends,
//! and how it reads refusals.

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

//! A tiny HTTP/1.1 client: requests one at a time over one kept-alive TCP
//! connection, responses framed by `Content-Length`.

use crate::support::PATIENCE;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The server announced `Connection: close`.
    pub close: bool,
    /// The raw head (status line and headers).
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// Assert a Binance-style refusal and return its message.
    #[track_caller]
    pub fn refusal(&self, status: u16, code: i64) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let v = self.json();
        assert_eq!(v["code"], code, "{self:?}");
        v["msg"].as_str().expect("msg is a string").to_owned()
    }
}

pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send request");
    }

    /// Send `method path` with an optional JSON body and read the response.
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: sim\r\n");
        if let Some(body) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        self.send_raw(req.as_bytes()).await;
        self.read_response().await
    }

    pub async fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, None).await
    }

    pub async fn post(&mut self, path: &str, body: &str) -> Response {
        self.request("POST", path, Some(body)).await
    }

    /// Read more bytes; false on EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Read one response.
    pub async fn read_response(&mut self) -> Response {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill().await,
                "connection closed before a response head"
            );
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).expect("ASCII head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length").map_or(0, |v| v.parse().expect("length"));
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed inside a body");
        }
        let body = String::from_utf8(self.buf.drain(..len).collect()).expect("UTF-8 body");
        Response {
            status,
            close,
            head,
            body,
        }
    }

    /// True once the server has closed the connection (after any buffered bytes).
    pub async fn closed_by_server(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

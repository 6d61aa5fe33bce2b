//! A hand-rolled websocket client that can break the rules and sees every frame.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One server frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawClient {
    /// Connect and complete the upgrade handshake.
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send upgrade");
        let mut client = Self {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            client.fill().await;
        };
        let head = String::from_utf8_lossy(&client.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        client.buf.drain(..end);
        client
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(super::support::PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("bytes in time")
            .expect("read");
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Send a frame; `mask: None` sends it unmasked (a protocol violation).
    pub async fn send(&mut self, first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) {
        let mut out = vec![first_byte];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        self.stream.write_all(&out).await.expect("send frame");
    }

    /// A masked, final text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send(0x81, text.as_bytes(), Some([7, 1, 9, 3])).await;
    }

    /// Read one server frame (server frames must be unmasked).
    pub async fn frame(&mut self) -> Frame {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frame is masked");
                let (len, hdr) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let frame = Frame {
                        fin: self.buf[0] & 0x80 != 0,
                        opcode: self.buf[0] & 0x0f,
                        payload: self.buf[hdr..hdr + len].to_vec(),
                    };
                    self.buf.drain(..hdr + len);
                    return frame;
                }
            }
            self.fill().await;
        }
    }

    /// Read frames until a complete text message; returns it and the control
    /// frames that arrived while it was being assembled (between fragments).
    pub async fn message(&mut self) -> (String, Vec<Frame>, usize) {
        let mut data = Vec::new();
        let mut interleaved = Vec::new();
        let mut fragments = 0;
        loop {
            let f = self.frame().await;
            match f.opcode {
                1 | 0 => {
                    assert_eq!(f.opcode == 1, fragments == 0, "bad fragment sequence");
                    fragments += 1;
                    data.extend_from_slice(&f.payload);
                    if f.fin {
                        let text = String::from_utf8(data).expect("utf-8 text");
                        return (text, interleaved, fragments);
                    }
                }
                9 | 10 if fragments > 0 => interleaved.push(f),
                9 | 10 => {}
                other => panic!("unexpected opcode {other}"),
            }
        }
    }
}

//! Incoming side: parsing client frames, reassembling messages, and the
//! per-connection read loop that feeds the audit (requests are interpreted in
//! [`crate::requests`]).
//!
//! Everything here treats the client as hostile: no input can panic, and a
//! protocol error only desynchronises (and stops parsing) its own connection.

use crate::audit::TLS_ERROR_PREFIX;
use crate::lifetime::Pongs;
use crate::requests::{interpret, Request};
use crate::state::{signalled, unix_ms, Shared};
use crate::tls;
use std::io;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

/// Largest client frame payload or reassembled message accepted.
pub const MAX_MESSAGE: usize = 1 << 20;

/// One complete client frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (validated: 0, 1, 2, 8, 9 or 10).
    pub opcode: u8,
    /// Whether the client masked the frame (clients must).
    pub masked: bool,
    /// Payload after unmasking.
    pub payload: Vec<u8>,
}

/// Parse one frame from the front of `buf`: `Ok(None)` if more bytes are
/// needed, otherwise the frame and the number of bytes it occupied.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(RawFrame, usize)>, String> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(format!("reserved bits set (first byte {b0:#04x})"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Err(format!("bad opcode {opcode}"));
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut offset) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err("bad header: 64-bit length with the top bit set".into());
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= 8 {
        if !fin {
            return Err(format!(
                "bad header: fragmented control frame (opcode {opcode})"
            ));
        }
        if len > 125 {
            return Err(format!("bad header: control frame payload of {len} bytes"));
        }
    }
    let len = match usize::try_from(len) {
        Ok(len) if len <= MAX_MESSAGE => len,
        _ => return Err(format!("oversize frame: {len} bytes > {MAX_MESSAGE}")),
    };
    let mask = if masked {
        let Some(key) = buf.get(offset..offset + 4) else {
            return Ok(None);
        };
        offset += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let Some(data) = buf.get(offset..offset + len) else {
        return Ok(None);
    };
    let mut payload = data.to_vec();
    if let Some(key) = mask {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    let frame = RawFrame {
        fin,
        opcode,
        masked,
        payload,
    };
    Ok(Some((frame, offset + len)))
}

/// A complete client message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (UTF-8 validated).
    Text(String),
    /// A binary message (ignored apart from counting).
    Binary(usize),
    /// A ping with its payload.
    Ping(Vec<u8>),
    /// A pong with its payload.
    Pong(Vec<u8>),
    /// A close frame with its status code, if any.
    Close(Option<u16>),
}

/// Reassembles fragmented client messages.
#[derive(Debug, Default)]
pub struct Assembler {
    partial: Option<(bool, Vec<u8>)>,
}

impl Assembler {
    /// Feed one frame; returns a complete message or control frame, if any.
    pub fn push(&mut self, frame: RawFrame) -> Result<Option<Incoming>, String> {
        match frame.opcode {
            8 => {
                let code = frame
                    .payload
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]));
                Ok(Some(Incoming::Close(code)))
            }
            9 => Ok(Some(Incoming::Ping(frame.payload))),
            10 => Ok(Some(Incoming::Pong(frame.payload))),
            0 => {
                let Some((is_text, mut data)) = self.partial.take() else {
                    return Err("continuation frame without a message in progress".into());
                };
                if data.len() + frame.payload.len() > MAX_MESSAGE {
                    return Err(format!("oversize message: more than {MAX_MESSAGE} bytes"));
                }
                data.extend_from_slice(&frame.payload);
                if frame.fin {
                    finish(is_text, data).map(Some)
                } else {
                    self.partial = Some((is_text, data));
                    Ok(None)
                }
            }
            opcode => {
                if self.partial.is_some() {
                    return Err("new data frame while a fragmented message is in progress".into());
                }
                let is_text = opcode == 1;
                if frame.fin {
                    finish(is_text, frame.payload).map(Some)
                } else {
                    self.partial = Some((is_text, frame.payload));
                    Ok(None)
                }
            }
        }
    }
}

fn finish(is_text: bool, data: Vec<u8>) -> Result<Incoming, String> {
    if !is_text {
        return Ok(Incoming::Binary(data.len()));
    }
    String::from_utf8(data)
        .map(Incoming::Text)
        .map_err(|e| format!("bad UTF-8 in text message: {e}"))
}

/// Requests from the reader to the connection's writer.
#[derive(Debug)]
pub enum Command {
    /// Send `response`, then start feeding `streams`.
    Subscribe {
        /// Streams to add.
        streams: Vec<String>,
        /// Text message to send first.
        response: String,
    },
    /// Send a text message.
    Reply(String),
    /// Answer a ping.
    Pong(Vec<u8>),
    /// Echo a close frame and stop.
    Close(Option<u16>),
}

/// Why a connection's read side ended. Over TLS, a clean end is
/// `close_notify` (seen as EOF); a bad record, a fatal alert or a bare TCP
/// FIN is a TLS failure.
fn close_reason(e: &io::Error, tls: bool) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "reset".into(),
        _ => match tls.then(|| tls::failure(e)).flatten() {
            Some(why) => format!("{TLS_ERROR_PREFIX} {why}"),
            None => format!("error: {e}"),
        },
    }
}

/// The read half of a connection.
struct Source<R> {
    rd: R,
    /// Whether `rd` is TLS.
    tls: bool,
}

/// Read result: bytes, EOF, error, or shutdown.
enum Read {
    Bytes,
    Closed(String),
    Shutdown,
}

async fn read_more<R: AsyncRead + Unpin>(
    src: &mut Source<R>,
    buf: &mut Vec<u8>,
    shutdown: &mut watch::Receiver<bool>,
) -> Read {
    buf.reserve(64 * 1024);
    tokio::select! {
        r = src.rd.read_buf(buf) => match r {
            Ok(0) => Read::Closed("eof".into()),
            Ok(_) => Read::Bytes,
            Err(e) => Read::Closed(close_reason(&e, src.tls)),
        },
        () = signalled(shutdown) => Read::Shutdown,
    }
}

/// The read loop of connection `id`: parse frames from `initial` and then the
/// stream (`tls` if it is TLS) until the client closes, the stream
/// desynchronises, or shutdown.
pub async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    id: u64,
    rd: R,
    initial: Vec<u8>,
    tx: mpsc::Sender<Command>,
    tls: bool,
    pongs: &Pongs,
) {
    let mut rd = Source { rd, tls };
    let mut shutdown = shared.shutdown();
    let mut buf = initial;
    let mut assembler = Assembler::default();
    let reason = 'conn: loop {
        let mut used = 0;
        loop {
            let rest = buf.get(used..).unwrap_or_default();
            let frame = match parse_frame(rest) {
                Ok(Some((frame, n))) => {
                    used += n;
                    frame
                }
                Ok(None) => break,
                Err(e) => break 'conn desynchronised(shared, id, &e, &mut rd, &mut shutdown).await,
            };
            match handle_frame(shared, id, &mut assembler, frame, (&tx, pongs)).await {
                Ok(None) => {}
                Ok(Some(reason)) => break 'conn Some(reason),
                Err(e) => break 'conn desynchronised(shared, id, &e, &mut rd, &mut shutdown).await,
            }
        }
        buf.drain(..used);
        match read_more(&mut rd, &mut buf, &mut shutdown).await {
            Read::Bytes => {}
            Read::Closed(reason) => break Some(reason),
            Read::Shutdown => break None,
        }
    };
    if let Some(reason) = reason {
        shared.audit(|a| a.close(id, &reason));
        shared.notify_progress();
    }
}

/// After a protocol error: record it, then only drain (and discard) bytes to
/// notice when the client goes away. The socket stays open.
async fn desynchronised<R: AsyncRead + Unpin>(
    shared: &Shared,
    id: u64,
    error: &str,
    rd: &mut Source<R>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<String> {
    tracing::warn!(conn = id, "malformed client input: {error}");
    shared.audit(|a| a.malformed(id, error.to_owned()));
    shared.notify_progress();
    let mut sink = Vec::new();
    loop {
        sink.clear();
        match read_more(rd, &mut sink, shutdown).await {
            Read::Bytes => {}
            Read::Closed(reason) => return Some(reason),
            Read::Shutdown => return None,
        }
    }
}

/// Account for one frame; `Ok(Some(reason))` ends the connection.
async fn handle_frame(
    shared: &Shared,
    id: u64,
    assembler: &mut Assembler,
    frame: RawFrame,
    (tx, pongs): (&mpsc::Sender<Command>, &Pongs),
) -> Result<Option<String>, String> {
    let masked = frame.masked;
    shared.audit(|a| {
        if let Some(c) = a.conn(id) {
            c.frames_received += 1;
            c.unmasked += u64::from(!masked);
        }
    });
    // Send errors mean the writer is gone (socket broken); keep auditing acks.
    match assembler.push(frame)? {
        None => {}
        Some(Incoming::Ping(payload)) => {
            let _ = tx.send(Command::Pong(payload)).await;
        }
        Some(Incoming::Pong(payload)) => {
            pongs.received(&payload);
            shared.audit(|a| {
                if let Some(c) = a.conn(id) {
                    c.pongs_received += 1;
                }
            });
        }
        Some(Incoming::Close(code)) => {
            let _ = tx.send(Command::Close(code)).await;
            return Ok(Some("close_frame".into()));
        }
        Some(Incoming::Binary(_)) => shared.audit(|a| {
            if let Some(c) = a.conn(id) {
                c.other_messages += 1;
            }
        }),
        Some(Incoming::Text(text)) => match interpret(&text, &shared.config.all_streams)? {
            Request::Ack { stream, t } => {
                shared.audit(|a| a.ack(id, &stream, t, Instant::now(), unix_ms()));
                shared.notify_progress();
            }
            Request::DepthAck { stream, u } => {
                let depth = &shared.depth;
                let seq = (depth.index_of_stream(&stream)).and_then(|i| depth.seq_of(i, u));
                shared.audit(|a| a.depth_ack(id, &stream, (seq, u), Instant::now(), unix_ms()));
                shared.notify_progress();
            }
            Request::Subscribe { streams, response } => {
                shared.audit(|a| a.subscribe(id, &streams));
                let _ = tx.send(Command::Subscribe { streams, response }).await;
            }
            Request::Rejected { response } => {
                let _ = tx.send(Command::Reply(response)).await;
            }
            Request::Timer { key } => shared.audit(|a| a.timer(key)),
            Request::Other(error) => shared.audit(|a| {
                if let Some(c) = a.conn(id) {
                    c.other_messages += 1;
                    if let Some(e) = error {
                        c.push_error(e);
                    }
                }
            }),
        },
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    #[test]
    fn parses_masked_frames_incrementally() {
        let bytes = masked_frame(0x81, b"hello");
        for cut in 0..bytes.len() {
            assert_eq!(parse_frame(&bytes[..cut]), Ok(None));
        }
        let (frame, n) = parse_frame(&bytes).expect("valid").expect("complete");
        assert_eq!(n, bytes.len());
        assert!(frame.fin && frame.masked);
        assert_eq!(frame.payload, b"hello");
        let big = vec![b'a'; 70_000];
        let bytes = masked_frame(0x82, &big);
        let (frame, _) = parse_frame(&bytes).expect("valid").expect("complete");
        assert_eq!(frame.payload.len(), 70_000);
    }

    #[test]
    fn rejects_protocol_violations_without_panicking() {
        assert!(parse_frame(&[0xC1, 0x80]).is_err(), "rsv1");
        assert!(parse_frame(&[0x83, 0x80]).is_err(), "opcode 3");
        assert!(parse_frame(&[0x09, 0x80]).is_err(), "fragmented ping");
        assert!(parse_frame(&[0x89, 0xFE, 0, 200]).is_err(), "long ping");
        let mut oversize = vec![0x82, 0xFF];
        oversize.extend_from_slice(&(2u64 << 20).to_be_bytes());
        assert!(parse_frame(&oversize).is_err());
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_frame(&huge).is_err());
        let (unmasked, _) = parse_frame(&[0x81, 0x02, b'h', b'i'])
            .expect("valid")
            .expect("complete");
        assert!(!unmasked.masked);
        assert_eq!(unmasked.payload, b"hi");
    }

    #[test]
    fn assembles_fragments_and_checks_sequence_and_utf8() {
        let frag = |fin, opcode, p: &[u8]| RawFrame {
            fin,
            opcode,
            masked: true,
            payload: p.to_vec(),
        };
        let mut a = Assembler::default();
        assert_eq!(a.push(frag(false, 1, b"he")), Ok(None));
        assert_eq!(
            a.push(frag(true, 9, b"p")),
            Ok(Some(Incoming::Ping(b"p".to_vec())))
        );
        assert_eq!(a.push(frag(false, 0, b"l")), Ok(None));
        assert_eq!(
            a.push(frag(true, 0, b"lo")),
            Ok(Some(Incoming::Text("hello".into())))
        );
        assert!(a.push(frag(true, 0, b"x")).is_err());
        let mut a = Assembler::default();
        assert_eq!(a.push(frag(false, 1, b"x")), Ok(None));
        assert!(a.push(frag(true, 1, b"y")).is_err());
        assert!(Assembler::default().push(frag(true, 1, &[0xff])).is_err());
        assert_eq!(
            Assembler::default().push(frag(true, 8, &[3, 232])),
            Ok(Some(Incoming::Close(Some(1000))))
        );
    }
}

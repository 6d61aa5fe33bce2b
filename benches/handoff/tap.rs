//! The feed's view of the ack stream: a transparent TCP relay between the
//! worker and the exchange simulator that timestamps every read carrying an
//! ack from the worker.
//!
//! The simulator's audit keeps, per connection, only the *largest* silence
//! between two acks (`max_ack_gap_us`), so it cannot give one figure per
//! upgrade. The relay keeps the arrival time of every ack-carrying read, so
//! for each upgrade the harness can take the silence that contains the new
//! worker's first message: the last ack of the old worker to the first of
//! the new one, as the exchange side of the socket sees it.
//!
//! It runs on its own thread with a single-threaded tokio runtime and does
//! nothing but copy bytes (one extra loopback hop each way) and parse the
//! client's websocket frame headers.
//!
//! Section 9 (`coldnet.rs`) puts a network on the path ([`Net`]): the relay
//! then holds every byte for a one-way delay in each direction (the delay
//! line is `delay.rs`: the relay already sits on the path and reads every
//! ack, so the delay is an option of it rather than a second relay and a
//! second loopback hop). Its instants are then taken where the exchange
//! would see the bytes: when a chunk leaves the delay line towards the
//! simulator, not when it was read from the worker. The relay's own clock
//! is the instrument, not kernel receive timestamps: with a delay the
//! instant that matters is the release, which only the relay knows, and
//! the relay's thread does nothing else (the timestamps of sections 1 and
//! 8 are taken the same way).
//!
//! Over `wss://` the relay sees ciphertext and cannot read the frames. It
//! counts the worker's TLS records instead (their 5-byte headers are in
//! the clear): over TLS 1.3 (the harness pins it) the worker's first three
//! application-data records are its `Finished`, the websocket upgrade
//! request and the SUBSCRIBE, and every later one is an ack, since the
//! worker sends nothing else steadily (the simulator sends no pings and
//! no KeyUpdates unless asked to). A read completing such a record is an
//! "ack-carrying read", the third one the SUBSCRIBE.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use handoff_protocol::monotonic_ns;
use tokio::net::{TcpListener, TcpStream};

use crate::delay::{self, Line, Release};

/// Ack-carrying reads remembered (the oldest are forgotten first).
const MAX_ACK_READS: usize = 4_000_000;

/// The path the relay emulates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Net {
    /// One-way delay, each direction (zero: loopback).
    pub delay: Duration,
    /// The feed is `wss://` (TLS 1.3): ack reads are told by record count.
    pub tls: bool,
}

/// One relayed connection. Instants are where the exchange sees the bytes
/// (after the delay line, if any).
#[derive(Debug, Clone, Default)]
pub struct ConnRec {
    /// When the worker's SUBSCRIBE frame went through.
    pub subscribed_ns: Option<u64>,
    /// When the worker's side closed (EOF or reset).
    pub closed_ns: Option<u64>,
    pub acks: u64,
    pub first_ack_ns: Option<u64>,
    pub last_ack_ns: Option<u64>,
}

#[derive(Debug, Default)]
struct Log {
    /// Times of reads that carried at least one ack, over all connections,
    /// in increasing order (their release from the delay line, if any).
    ack_reads: VecDeque<u64>,
    conns: Vec<ConnRec>,
}

/// A running relay. Dropping it leaves the thread to die with the process.
#[derive(Clone)]
pub struct Tap {
    pub addr: SocketAddr,
    pub net: Net,
    log: Arc<Mutex<Log>>,
    line: Option<Line>,
}

impl Tap {
    /// Listen on an ephemeral loopback port and relay every connection to
    /// `upstream` over the path `net`.
    pub fn start(upstream: SocketAddr, net: Net) -> std::io::Result<Tap> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let log = Arc::new(Mutex::new(Log::default()));
        let thread_log = log.clone();
        let line = if net.delay.is_zero() {
            None
        } else {
            Some(Line::start(net.delay)?)
        };
        let thread_line = line.clone();
        std::thread::Builder::new()
            .name("tap".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tap runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tap listener");
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let log = thread_log.clone();
                        tokio::spawn(relay(client, upstream, log, net.tls, thread_line.clone()));
                    }
                });
            })?;
        Ok(Tap {
            addr,
            net,
            log,
            line,
        })
    }

    /// The feed's URL through the relay: `ws://ADDR/ws`, or with TLS
    /// `wss://localhost:PORT/ws` (the name the simulator's certificate
    /// carries).
    pub fn url(&self) -> String {
        if self.net.tls {
            format!("wss://localhost:{}/ws", self.addr.port())
        } else {
            format!("ws://{}/ws", self.addr)
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Log) -> R) -> R {
        f(&mut self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The silence in the aggregate ack stream between `from` and `to`: the
    /// last ack read at or before `from` and the first at or after `to`, once
    /// both are known. Taking `from` as the old worker's freeze (it writes
    /// nothing after) and `to` as the new worker's first message (it writes
    /// nothing before) brackets the handoff even if this relay falls behind.
    pub fn silence(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        self.with(|l| {
            let i = l.ack_reads.partition_point(|&x| x <= from);
            let before = *l.ack_reads.get(i.checked_sub(1)?)?;
            let j = l.ack_reads.partition_point(|&x| x < to);
            let after = *l.ack_reads.get(j)?;
            Some((before, after))
        })
    }

    /// The ack-carrying reads from the last one at or before `from` to the
    /// first one at or after `to` (an end with none beyond it yet is left
    /// out), in increasing order: every silence of the ack stream that
    /// overlaps `from..to`, whole.
    pub fn ack_reads_around(&self, from: u64, to: u64) -> Vec<u64> {
        self.with(|l| {
            let i = l
                .ack_reads
                .partition_point(|&x| x <= from)
                .saturating_sub(1);
            let j = (l.ack_reads.partition_point(|&x| x < to) + 1).min(l.ack_reads.len());
            l.ack_reads.range(i..j.max(i)).copied().collect()
        })
    }

    /// The longest silence of the aggregate ack stream among the ack reads
    /// from the last one at or before `from` to the first one at or after
    /// `to`, once that one is known: `(start, end)`.
    pub fn longest_gap(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        self.with(|l| {
            if *l.ack_reads.back()? < to {
                return None;
            }
            let i = l
                .ack_reads
                .partition_point(|&x| x <= from)
                .saturating_sub(1);
            let j = (l.ack_reads.partition_point(|&x| x < to) + 1).min(l.ack_reads.len());
            let reads: Vec<u64> = l.ack_reads.range(i..j).copied().collect();
            reads
                .windows(2)
                .map(|w| (w[0], w[1]))
                .max_by_key(|&(a, b)| b - a)
        })
    }

    /// How late each chunk left the delay line so far, in µs (none without
    /// a delay).
    pub fn lateness_us(&self) -> Vec<f64> {
        self.line.as_ref().map_or_else(Vec::new, Line::lateness_us)
    }

    /// A copy of the per-connection records, in accept order.
    pub fn conns(&self) -> Vec<ConnRec> {
        self.with(|l| l.conns.clone())
    }
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    log: Arc<Mutex<Log>>,
    tls: bool,
    line: Option<Line>,
) {
    let accepted = monotonic_ns();
    let idx = {
        let mut l = log.lock().unwrap_or_else(PoisonError::into_inner);
        l.conns.push(ConnRec::default());
        l.conns.len() - 1
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (c_rd, c_wr) = client.into_split();
    let (s_rd, s_wr) = server.into_split();
    // The client's first bytes wait for the round trip of the TCP handshake
    // that the local accept skipped (see `delay.rs`).
    let handshake_ns = 2 * line.as_ref().map_or(0, Line::delay_ns);
    let down = delay::copy(s_rd, c_wr, line.clone(), 0, |_| (), |_, _| {});
    let mut parser = if tls {
        Parser::Tls(ClientRecords::default())
    } else {
        Parser::Ws(ClientFrames::default())
    };
    let up = delay::copy(
        c_rd,
        s_wr,
        line,
        accepted + handshake_ns,
        move |bytes| parser.feed(bytes),
        move |released: Release<Seen>, at| {
            if matches!(&released, Release::Data(s) if s.acks == 0 && !s.subscribe) {
                return;
            }
            let mut guard = log.lock().unwrap_or_else(PoisonError::into_inner);
            let l = &mut *guard;
            let seen = match released {
                Release::End => {
                    l.conns[idx].closed_ns = Some(at);
                    return;
                }
                Release::Data(seen) => seen,
            };
            if seen.acks > 0 {
                let t = l.ack_reads.back().map_or(at, |&b| b.max(at));
                l.ack_reads.push_back(t);
                if l.ack_reads.len() > MAX_ACK_READS {
                    l.ack_reads.pop_front();
                }
            }
            let c = &mut l.conns[idx];
            if seen.subscribe && c.subscribed_ns.is_none() {
                c.subscribed_ns = Some(at);
            }
            if seen.acks > 0 {
                c.acks += seen.acks;
                c.first_ack_ns.get_or_insert(at);
                c.last_ack_ns = Some(at);
            }
        },
    );
    tokio::join!(down, up);
}

/// What one read of client bytes contained.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    acks: u64,
    subscribe: bool,
}

/// The client's side of a connection, parsed as it is read.
enum Parser {
    Ws(ClientFrames),
    Tls(ClientRecords),
}

impl Parser {
    fn feed(&mut self, bytes: &[u8]) -> Seen {
        match self {
            Parser::Ws(p) => p.feed(bytes),
            Parser::Tls(p) => p.feed(bytes),
        }
    }
}

/// Incremental parser of the client's TLS 1.3 records (headers only):
/// application-data records 1–3 are the `Finished`, the websocket upgrade
/// request and the SUBSCRIBE; each later one is an ack.
#[derive(Debug, Default)]
struct ClientRecords {
    header: [u8; 5],
    header_len: usize,
    /// Content type of the record being read, and its body bytes still due.
    kind: u8,
    body_left: usize,
    app_records: u64,
}

/// TLS content type of application data (every record of TLS 1.3 after
/// the client's first flight).
const APPLICATION_DATA: u8 = 23;

impl ClientRecords {
    fn feed(&mut self, mut bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        while !bytes.is_empty() {
            if self.header_len < 5 {
                let take = (5 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len == 5 {
                    self.kind = self.header[0];
                    self.body_left =
                        usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                }
            } else {
                let take = self.body_left.min(bytes.len());
                self.body_left -= take;
                bytes = &bytes[take..];
            }
            if self.header_len == 5 && self.body_left == 0 {
                self.header_len = 0;
                if self.kind == APPLICATION_DATA {
                    self.app_records += 1;
                    match self.app_records {
                        3 => seen.subscribe = true,
                        n if n > 3 => seen.acks += 1,
                        _ => {}
                    }
                }
            }
        }
        seen
    }
}

/// Incremental parser of the client's side of a websocket connection: the
/// HTTP upgrade request, then masked frames. Only text frames holding
/// `"method":"ack"` or `"SUBSCRIBE"` near their start are told apart.
#[derive(Debug, Default)]
struct ClientFrames {
    handshake_done: bool,
    pending: Vec<u8>,
}

impl ClientFrames {
    fn feed(&mut self, bytes: &[u8]) -> Seen {
        self.pending.extend_from_slice(bytes);
        let mut seen = Seen::default();
        let mut pos = 0;
        if !self.handshake_done {
            match self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    self.handshake_done = true;
                    pos = end + 4;
                }
                None => return seen,
            }
        }
        while let Some((opcode, payload_at, len, mask)) = header(&self.pending[pos..]) {
            let start = pos + payload_at;
            let Some(end) = start.checked_add(len).filter(|&e| e <= self.pending.len()) else {
                break;
            };
            if opcode == 1 {
                // Unmask the start of the text: enough for the method.
                let head: Vec<u8> = self.pending[start..end.min(start + 64)]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4])
                    .collect();
                if contains(&head, br#""method":"ack""#) {
                    seen.acks += 1;
                } else if contains(&head, br#""SUBSCRIBE""#) {
                    seen.subscribe = true;
                }
            }
            pos = end;
        }
        self.pending.drain(..pos);
        seen
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `(opcode, payload offset, payload length, mask)` of a complete frame
/// header at the start of `b`.
fn header(b: &[u8]) -> Option<(u8, usize, usize, [u8; 4])> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => {
            let raw: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(raw)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    let mut mask = [0u8; 4];
    if masked {
        mask.copy_from_slice(b.get(at..at + 4)?);
        at += 4;
    }
    Some((opcode, at, len, mask))
}

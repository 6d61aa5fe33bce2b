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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use handoff_protocol::monotonic_ns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Ack-carrying reads remembered (the oldest are forgotten first).
const MAX_ACK_READS: usize = 4_000_000;

/// One relayed connection.
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
    /// in increasing order.
    ack_reads: VecDeque<u64>,
    conns: Vec<ConnRec>,
}

/// A running relay. Dropping it leaves the thread to die with the process.
#[derive(Clone)]
pub struct Tap {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Tap {
    /// Listen on an ephemeral loopback port and relay every connection to
    /// `upstream`.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Tap> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let log = Arc::new(Mutex::new(Log::default()));
        let thread_log = log.clone();
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
                        tokio::spawn(relay(client, upstream, log));
                    }
                });
            })?;
        Ok(Tap { addr, log })
    }

    /// `ws://ADDR/ws` through the relay.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
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

    /// A copy of the per-connection records, in accept order.
    pub fn conns(&self) -> Vec<ConnRec> {
        self.with(|l| l.conns.clone())
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, log: Arc<Mutex<Log>>) {
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
    let (mut c_rd, mut c_wr) = client.into_split();
    let (mut s_rd, mut s_wr) = server.into_split();
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if c_wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = c_wr.shutdown().await;
    };
    let up_log = log.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut parser = ClientFrames::default();
        loop {
            match c_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = monotonic_ns();
                    let seen = parser.feed(&buf[..n]);
                    if seen.acks > 0 || seen.subscribe {
                        let mut guard = up_log.lock().unwrap_or_else(PoisonError::into_inner);
                        let l = &mut *guard;
                        if seen.acks > 0 {
                            let t = l.ack_reads.back().map_or(now, |&b| b.max(now));
                            l.ack_reads.push_back(t);
                            if l.ack_reads.len() > MAX_ACK_READS {
                                l.ack_reads.pop_front();
                            }
                        }
                        let c = &mut l.conns[idx];
                        if seen.subscribe && c.subscribed_ns.is_none() {
                            c.subscribed_ns = Some(now);
                        }
                        if seen.acks > 0 {
                            c.acks += seen.acks;
                            c.first_ack_ns.get_or_insert(now);
                            c.last_ack_ns = Some(now);
                        }
                    }
                    if s_wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        {
            let mut l = up_log.lock().unwrap_or_else(PoisonError::into_inner);
            l.conns[idx].closed_ns = Some(monotonic_ns());
        }
        let _ = s_wr.shutdown().await;
    };
    tokio::join!(down, up);
}

/// What one read of client bytes contained.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    acks: u64,
    subscribe: bool,
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

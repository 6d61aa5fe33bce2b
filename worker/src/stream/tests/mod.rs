//! Real TCP on 127.0.0.1: a raw server writes websocket frames itself, in
//! random chunk sizes; the client is tokio-tungstenite over `HandoffStream`.
//! This module holds what the tests share: the deterministic random source,
//! the server's plan of frames, the fake server's handshake and pong reader,
//! and connected socket pairs.

use super::*;

use std::collections::HashSet;
use std::io::Cursor;

use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::Message;

mod boundaries;
mod errors;
mod handover;

type Ws = WebSocketStream<HandoffStream>;

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<HandoffStream>();
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.range(1, 100) <= percent
    }
    /// Chunk sizes that split frames everywhere, headers included.
    fn chunk(&mut self) -> usize {
        match self.range(1, 100) {
            1..=70 => self.range(1, 64),
            71..=95 => self.range(1, 2048),
            _ => self.range(1, 32 * 1024),
        }
    }
}

fn frame_bytes(frame: Frame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.format(&mut out).expect("format into a Vec");
    out
}

/// One complete text frame, "hello world": the tests cut it where they need.
fn hello_frame() -> Vec<u8> {
    frame_bytes(Frame::message(
        b"hello world".to_vec(),
        OpCode::Data(Data::Text),
        true,
    ))
}

/// What the server sends: frames back to back, and where it stops until the
/// client says go (inside big frames, to force a handover mid-frame).
struct Plan {
    bytes: Vec<u8>,
    pauses: Vec<usize>,
    paused_msgs: HashSet<usize>,
    messages: Vec<String>,
    pings: usize,
    fragmented: usize,
    big: usize,
}

fn make_plan(seed: u64, n: usize, frag_percent: usize, big_percent: usize) -> Plan {
    let mut rng = Rng(seed);
    let mut plan = Plan {
        bytes: Vec::new(),
        pauses: Vec::new(),
        paused_msgs: HashSet::new(),
        messages: Vec::new(),
        pings: 0,
        fragmented: 0,
        big: 0,
    };
    let ping = |plan: &mut Plan| {
        let payload = plan.pings.to_string();
        plan.bytes
            .extend(frame_bytes(Frame::ping(payload.into_bytes())));
        plan.pings += 1;
    };
    for i in 0..n {
        if rng.chance(5) {
            ping(&mut plan);
        }
        let roll = rng.range(1, 100);
        let big = roll <= big_percent;
        let len = if big {
            rng.range(65_000, 75_000)
        } else {
            rng.range(2, 300)
        };
        let mut text = format!("{i}:");
        while text.len() < len {
            text.push(char::from(b'a' + rng.range(0, 25) as u8));
        }
        // Split points (ASCII, so any byte offset is a char boundary).
        let pieces = if big {
            if rng.chance(33) {
                2
            } else {
                1
            }
        } else if roll <= big_percent + frag_percent {
            rng.range(2, 4)
        } else {
            1
        };
        let mut cuts: Vec<usize> = (1..pieces).map(|_| rng.range(0, text.len())).collect();
        cuts.sort_unstable();
        cuts.insert(0, 0);
        cuts.push(text.len());
        plan.fragmented += usize::from(pieces > 1);
        plan.big += usize::from(big);
        for p in 0..pieces {
            if p > 0 && rng.chance(60) {
                ping(&mut plan);
            }
            let chunk = text.as_bytes()[cuts[p]..cuts[p + 1]].to_vec();
            let opcode = if p == 0 { Data::Text } else { Data::Continue };
            let bytes = frame_bytes(Frame::message(
                chunk.clone(),
                OpCode::Data(opcode),
                p + 1 == pieces,
            ));
            let header = bytes.len() - chunk.len();
            if bytes.len() > DEFAULT_WHOLE_FRAME_MAX
                && !plan.paused_msgs.contains(&i)
                && rng.chance(50)
            {
                let start = plan.bytes.len() + header;
                plan.pauses
                    .push(rng.range(start + 1, start + chunk.len() - 1));
                plan.paused_msgs.insert(i);
            }
            plan.bytes.extend(bytes);
        }
        plan.messages.push(text);
    }
    plan
}

/// Accept one client, answer its handshake, and return the socket halves.
async fn accept_ws(
    listener: &TcpListener,
) -> (OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf, String) {
    let (tcp, _) = listener.accept().await.expect("accept");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut rd, wr) = tcp.into_split();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(rd.read(&mut byte).await.expect("read request"), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ascii request");
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .expect("Sec-WebSocket-Key");
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        tungstenite::handshake::derive_accept_key(key.as_bytes())
    );
    (rd, wr, response)
}

/// Read the client's frames until EOF: every one must be a masked, final pong
/// answering the pings in order. Returns how many.
async fn count_pongs(mut rd: OwnedReadHalf) -> usize {
    let mut buf = Vec::new();
    let mut pongs = 0;
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = rd.read(&mut chunk).await.expect("server read");
        if n == 0 {
            assert!(buf.is_empty(), "client stopped mid-frame");
            return pongs;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let mut cursor = Cursor::new(&buf[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor).expect("client header")
            else {
                break;
            };
            let start = cursor.position() as usize;
            let end = start + len as usize;
            if buf.len() < end {
                break;
            }
            let mask = header.mask.expect("client frames must be masked");
            assert!(header.is_final && !header.rsv1 && !header.rsv2 && !header.rsv3);
            assert_eq!(header.opcode, OpCode::Control(Control::Pong));
            let payload: Vec<u8> = buf[start..end]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(payload, pongs.to_string().as_bytes(), "pong out of order");
            pongs += 1;
            buf.drain(..end);
        }
    }
}

/// Checks one delivered message against the plan.
fn check(msg: Message, plan: &Plan, next_msg: &mut usize, next_ping: &mut usize) {
    match msg {
        Message::Text(t) => {
            assert_eq!(t.as_str(), plan.messages[*next_msg], "message {next_msg}");
            *next_msg += 1;
        }
        Message::Ping(p) => {
            assert_eq!(&p[..], next_ping.to_string().as_bytes(), "ping order");
            *next_ping += 1;
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A connected pair; the client side already past any handshake.
async fn raw_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let server = accepted.expect("accept").0;
    server.set_nodelay(true).expect("nodelay");
    (client.expect("connect"), server)
}

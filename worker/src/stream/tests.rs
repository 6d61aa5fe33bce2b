//! Real TCP on 127.0.0.1: a raw server writes websocket frames itself, in
//! random chunk sizes; the client is tokio-tungstenite over `HandoffStream`.

use super::*;

use std::collections::HashSet;
use std::future::poll_fn;
use std::io::Cursor;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::{client_async, WebSocketStream};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::Role;
use tungstenite::Message;

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

#[derive(Debug, Default)]
struct Stats {
    handovers: usize,
    nonempty_leftovers: usize,
    half_assembled: usize,
    mid_frame: usize,
    stalls: u64,
}

async fn hand_over(mut ws: Ws, stats: &mut Stats) -> Ws {
    ws.flush().await.expect("flush queued pong");
    let s = ws.get_ref();
    let left = s.leftovers();
    stats.handovers += 1;
    stats.nonempty_leftovers += usize::from(!left.is_empty());
    stats.half_assembled += usize::from(!s.st.replay.is_empty());
    stats.mid_frame += usize::from(!s.kernel_at_frame_boundary());
    stats.stalls += s.st.stalls;
    let fd = s.tcp().as_fd().try_clone_to_owned().expect("dup");
    drop(ws); // sends nothing, closes only our descriptor
    let stream = HandoffStream::resume_fd(fd, left).expect("resume_fd");
    WebSocketStream::from_raw_socket(stream, Role::Client, None).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_handovers_lose_and_duplicate_nothing() {
    tokio::time::timeout(Duration::from_secs(60), handovers_body())
        .await
        .expect("test timed out");
}

async fn handovers_body() {
    const N: usize = 5000;
    // STREAM_TEST_SEED=<n> varies plan, chunking and handover points (soak).
    let seed = std::env::var("STREAM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x5eed_1234);
    let plan = Arc::new(make_plan(seed, N, 15, 1));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (go_tx, mut go_rx) = mpsc::unbounded_channel::<()>();

    let server_plan = Arc::clone(&plan);
    let server = tokio::spawn(async move {
        let plan = server_plan;
        let (rd, mut wr, response) = accept_ws(&listener).await;
        let pongs = tokio::spawn(count_pongs(rd));
        let mut rng = Rng(seed ^ 99);
        // Frames in the same write as the 101: the handshake must not eat them.
        let mut pos = 2000.min(plan.pauses.first().copied().unwrap_or(usize::MAX));
        let mut first = response.into_bytes();
        first.extend_from_slice(&plan.bytes[..pos]);
        wr.write_all(&first).await.expect("write");
        let mut pauses = plan.pauses.iter().copied().peekable();
        while pos < plan.bytes.len() {
            let stop = pauses.peek().copied().unwrap_or(plan.bytes.len());
            let end = (pos + rng.chunk()).min(stop);
            wr.write_all(&plan.bytes[pos..end]).await.expect("write");
            wr.flush().await.expect("flush");
            pos = end;
            if pauses.peek() == Some(&pos) {
                pauses.next();
                go_rx.recv().await.expect("go");
            }
        }
        let pongs = pongs.await.expect("pong reader");
        drop(wr);
        pongs
    });

    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut ws, _) = client_async("ws://localhost/", HandoffStream::new_client(tcp))
        .await
        .expect("handshake");

    let mut rng = Rng(seed ^ 7);
    let mut stats = Stats::default();
    let (mut next_msg, mut next_ping) = (0, 0);
    let mut until_handover = 1; // first handover right after the first message
    let mut paused_done = HashSet::new();
    while next_msg < N {
        if plan.paused_msgs.contains(&next_msg) && paused_done.insert(next_msg) {
            // The server stops inside a big frame of this message: poll until
            // that frame is partly read, then hand over mid-frame.
            // (Re-poll on every wake-up: it may come from the stall timer.)
            loop {
                let item = poll_fn(|cx| match ws.poll_next_unpin(cx) {
                    Poll::Ready(item) => Poll::Ready(Some(item)),
                    Poll::Pending if !ws.get_ref().kernel_at_frame_boundary() => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                })
                .await;
                match item {
                    Some(Some(Ok(msg))) => check(msg, &plan, &mut next_msg, &mut next_ping),
                    Some(other) => panic!("stream failed: {other:?}"),
                    None => break,
                }
            }
            ws = hand_over(ws, &mut stats).await;
            go_tx.send(()).expect("server gone");
            continue;
        }
        let msg = ws.next().await.expect("stream ended").expect("ws error");
        check(msg, &plan, &mut next_msg, &mut next_ping);
        until_handover -= 1;
        if until_handover == 0 {
            ws = hand_over(ws, &mut stats).await;
            until_handover = rng.range(1, 4);
        }
    }
    ws.flush().await.expect("flush");
    drop(ws);
    let pongs = server.await.expect("server");

    println!(
        "{N} messages ({} fragmented, {} big), {} pings, {stats:?}",
        plan.fragmented, plan.big, plan.pings
    );
    assert_eq!(next_ping, plan.pings);
    assert_eq!(pongs, plan.pings, "every ping answered exactly once");
    assert!(stats.handovers >= 1000, "{stats:?}");
    assert!(stats.half_assembled > 0, "{stats:?}");
    assert!(stats.nonempty_leftovers >= stats.half_assembled);
    assert!(stats.mid_frame > 0, "{stats:?}");
    assert_eq!(stats.mid_frame, plan.pauses.len());
}

#[tokio::test]
async fn frames_sent_with_the_101_survive_a_handover() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (rd, mut wr, response) = accept_ws(&listener).await;
        let mut bytes = response.into_bytes();
        for i in 0..3 {
            bytes.extend(frame_bytes(Frame::message(
                format!("m{i}").into_bytes(),
                OpCode::Data(Data::Text),
                true,
            )));
        }
        wr.write_all(&bytes).await.expect("write");
        count_pongs(rd).await
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut ws, _) = client_async("ws://localhost/", HandoffStream::new_client(tcp))
        .await
        .expect("handshake");
    let first = ws.next().await.expect("open").expect("message");
    assert_eq!(first, Message::text("m0"));
    let mut stats = Stats::default();
    ws = hand_over(ws, &mut stats).await;
    for i in 1..3 {
        let msg = ws.next().await.expect("open").expect("message");
        assert_eq!(msg, Message::text(format!("m{i}")));
        assert!(ws.get_ref().kernel_at_frame_boundary());
    }
    drop(ws);
    assert_eq!(server.await.expect("server"), 0);
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

#[tokio::test]
async fn kernel_stays_at_a_frame_boundary_between_small_messages() {
    let plan = make_plan(42, 2000, 20, 0);
    let (client, mut server) = raw_pair().await;
    let bytes = plan.bytes.clone();
    let writer = tokio::spawn(async move {
        let mut rng = Rng(3);
        let mut pos = 0;
        while pos < bytes.len() {
            let end = (pos + rng.chunk()).min(bytes.len());
            server.write_all(&bytes[pos..end]).await.expect("write");
            pos = end;
        }
        server
    });
    let mut ws = WebSocketStream::from_raw_socket(
        HandoffStream::resume(client, Vec::new()),
        Role::Client,
        None,
    )
    .await;
    let (mut next_msg, mut next_ping) = (0, 0);
    while next_msg < plan.messages.len() {
        let msg = ws.next().await.expect("open").expect("message");
        check(msg, &plan, &mut next_msg, &mut next_ping);
        assert!(ws.get_ref().kernel_at_frame_boundary());
    }
    assert_eq!(next_ping, plan.pings);
    eprintln!("stalls: {}", ws.get_ref().st.stalls);
    drop(writer.await.expect("writer"));
}

#[tokio::test]
async fn each_read_yields_at_most_one_frame() {
    let (client, mut server) = raw_pair().await;
    let frames = [
        frame_bytes(Frame::message(
            b"ab".to_vec(),
            OpCode::Data(Data::Text),
            false,
        )),
        frame_bytes(Frame::ping(b"p".to_vec())),
        frame_bytes(Frame::message(
            b"cd".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )),
        frame_bytes(Frame::message(
            vec![7; 300],
            OpCode::Data(Data::Binary),
            true,
        )),
    ];
    server.write_all(&frames.concat()).await.expect("write");
    let mut stream = HandoffStream::resume(client, Vec::new());
    let mut buf = vec![0u8; 4096];
    for (i, frame) in frames.iter().enumerate() {
        let n = stream.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], &frame[..], "frame {i}");
        // Only the first fragment is replayed; the ping never is.
        let replay = if i < 2 { frames[0].clone() } else { Vec::new() };
        assert_eq!(stream.st.replay, replay, "after frame {i}");
        let rest = if i < 3 {
            frames[i + 1..].concat()
        } else {
            Vec::new()
        };
        assert_eq!(stream.leftovers(), [replay, rest].concat());
    }
    // A small buffer gets the frame piecewise, never past its end.
    server.write_all(&frames.concat()).await.expect("write");
    let mut got = Vec::new();
    while got.len() < frames[0].len() {
        let n = stream.read(&mut buf[..3]).await.expect("read");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, frames[0]);
}

#[tokio::test]
async fn leftovers_ending_mid_frame_resume_streaming() {
    let (client, mut server) = raw_pair().await;
    let big = frame_bytes(Frame::message(
        vec![1; 100],
        OpCode::Data(Data::Binary),
        true,
    ));
    let small = frame_bytes(Frame::message(
        b"x".to_vec(),
        OpCode::Data(Data::Text),
        true,
    ));
    // The previous owner had read 3 bytes (part of the header) of the frame.
    server.write_all(&big[3..]).await.expect("write");
    server.write_all(&small).await.expect("write");
    let stream = HandoffStream::resume(client, big[..3].to_vec()).with_limits(16, 1000);
    assert!(!stream.kernel_at_frame_boundary());
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    let msg = ws.next().await.expect("open").expect("message");
    assert_eq!(msg, Message::binary(vec![1; 100]));
    assert!(ws.get_ref().kernel_at_frame_boundary());
    let msg = ws.next().await.expect("open").expect("message");
    assert_eq!(msg, Message::text("x"));
}

#[tokio::test]
async fn after_a_crash_the_next_owner_parses_from_the_kernel() {
    let (client, mut server) = raw_pair().await;
    let msg = |s: &str| {
        frame_bytes(Frame::message(
            s.as_bytes().to_vec(),
            OpCode::Data(Data::Text),
            true,
        ))
    };
    server
        .write_all(&[msg("a"), msg("b")].concat())
        .await
        .expect("write");
    let mut ws = WebSocketStream::from_raw_socket(
        HandoffStream::resume(client, Vec::new()),
        Role::Client,
        None,
    )
    .await;
    assert_eq!(
        ws.next().await.expect("open").expect("a"),
        Message::text("a")
    );
    let fd = ws
        .get_ref()
        .tcp()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup");
    drop(ws); // crash: leftovers ("b", already taken from the kernel) are lost
    let rest = msg("c");
    let writer = tokio::spawn(async move {
        for byte in rest {
            server.write_all(&[byte]).await.expect("write");
        }
        server
    });
    let stream = HandoffStream::resume_fd(fd, Vec::new()).expect("resume");
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    assert_eq!(
        ws.next().await.expect("open").expect("c"),
        Message::text("c")
    );
    drop(writer.await.expect("writer"));
}

async fn first_error(bytes: Vec<u8>) -> io::Error {
    let (client, mut server) = raw_pair().await;
    server.write_all(&bytes).await.expect("write");
    let mut ws = WebSocketStream::from_raw_socket(
        HandoffStream::resume(client, Vec::new()),
        Role::Client,
        None,
    )
    .await;
    loop {
        match ws.next().await.expect("open") {
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) => return e,
            Err(e) => panic!("expected an io error, got {e}"),
        }
    }
}

#[tokio::test]
async fn malformed_headers_are_invalid_data() {
    let ok = frame_bytes(Frame::message(
        b"ok".to_vec(),
        OpCode::Data(Data::Text),
        true,
    ));
    // Reserved opcode 3.
    let err = first_error([ok.clone(), vec![0x83, 0x00]].concat()).await;
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    // Reserved control opcode 0xB, masked, 64-bit length.
    let err = first_error([vec![0x8B, 0xFF], vec![0; 12]].concat()).await;
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    // Too large.
    let mut huge = vec![0x82, 127];
    huge.extend_from_slice(&70_000_000u64.to_be_bytes());
    let err = first_error([ok, huge].concat()).await;
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(
        err.to_string(),
        "websocket frame of 70000000 bytes exceeds the 67108864-byte limit"
    );
    let mut max = vec![0x82, 127];
    max.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(first_error(max).await.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn garbage_never_panics() {
    let mut rng = Rng(0xfeed);
    for _ in 0..100 {
        let (client, mut server) = raw_pair().await;
        let garbage: Vec<u8> = (0..rng.range(0, 64)).map(|_| rng.next() as u8).collect();
        server.write_all(&garbage).await.expect("write");
        drop(server);
        let mut stream = HandoffStream::resume(client, Vec::new()).with_limits(8, 1 << 20);
        let mut buf = [0u8; 16];
        // Ends in a clean EOF or an error, never a panic or a hang.
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            assert!(n <= buf.len());
        }
    }
}

#[tokio::test]
async fn oversized_handshake_response_is_invalid_data() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (_rd, mut wr, _) = accept_ws(&listener).await;
        let mut head = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
        head.resize(HANDSHAKE_MAX + 10, b'x');
        wr.write_all(&head).await.expect("write");
        (_rd, wr)
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let err = client_async("ws://localhost/", HandoffStream::new_client(tcp))
        .await
        .expect_err("must fail");
    match err {
        tungstenite::Error::Io(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
        other => panic!("expected io error, got {other}"),
    }
    drop(server.await.expect("server"));
}

/// Polls `stream` until a read is pending with the kernel mid-frame.
async fn pending_mid_frame(stream: &mut HandoffStream) {
    let mut buf = [0u8; 64];
    poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Ready(r) => panic!("read completed: {r:?} {:?}", rb.filled()),
            Poll::Pending if stream.kernel_at_frame_boundary() => Poll::Pending,
            Poll::Pending => Poll::Ready(()),
        }
    })
    .await;
}

#[tokio::test]
async fn a_stalled_frame_is_taken_out_and_survives_a_handover() {
    let (client, mut server) = raw_pair().await;
    let frame = frame_bytes(Frame::message(
        b"hello world".to_vec(),
        OpCode::Data(Data::Text),
        true,
    ));
    server.write_all(&frame[..5]).await.expect("write");
    let mut stream =
        HandoffStream::resume(client, Vec::new()).with_stall_timeout(Duration::from_millis(1));
    // The 5 bytes wait in the kernel until the stall timer takes them out.
    pending_mid_frame(&mut stream).await;
    assert_eq!(stream.st.stalls, 1);
    let left = stream.leftovers();
    assert_eq!(left, frame[..5]);
    let fd = stream.tcp().as_fd().try_clone_to_owned().expect("dup");
    drop(stream);
    server.write_all(&frame[5..]).await.expect("write");
    let stream = HandoffStream::resume_fd(fd, left).expect("resume");
    assert!(!stream.kernel_at_frame_boundary());
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    let msg = ws.next().await.expect("open").expect("message");
    assert_eq!(msg, Message::text("hello world"));
    assert!(ws.get_ref().kernel_at_frame_boundary());
}

#[tokio::test]
async fn end_of_stream_inside_a_frame_is_an_error_not_a_spin() {
    let (client, mut server) = raw_pair().await;
    let frame = frame_bytes(Frame::message(
        b"hello world".to_vec(),
        OpCode::Data(Data::Text),
        true,
    ));
    server.write_all(&frame[..5]).await.expect("write");
    drop(server);
    // No stall timer to rescue it: the wake-up without new bytes must.
    let stream =
        HandoffStream::resume(client, Vec::new()).with_stall_timeout(Duration::from_secs(3600));
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    match next.expect("hung at end of stream").expect("an item") {
        Err(tungstenite::Error::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("expected UnexpectedEof, got {other:?}"),
    }

    // Same during the handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (_rd, mut wr, _) = accept_ws(&listener).await;
        wr.write_all(b"HTTP/1.1 101 Swi").await.expect("write");
        wr.shutdown().await.expect("shutdown");
        _rd
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let stream = HandoffStream::new_client(tcp).with_stall_timeout(Duration::from_secs(3600));
    let handshake = client_async("ws://localhost/", stream);
    let result = tokio::time::timeout(Duration::from_secs(10), handshake).await;
    assert!(result.expect("hung in handshake").is_err());
    drop(server.await.expect("server"));
}

#[test]
fn frame_extent_never_reads_past_a_frame() {
    let mut frame = Vec::new();
    let mut header = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    };
    header.is_final = false;
    header.format(70_000, &mut frame).expect("header");
    frame.resize(frame.len() + 70_000, 9);
    let next = frame_bytes(Frame::ping(b"x".to_vec()));
    let both = [frame.clone(), next].concat();
    for cut in 0..frame.len() {
        match frame::frame_extent(&both[..cut], usize::MAX).expect("valid") {
            frame::Extent::Partial { missing, .. } => {
                assert!(missing >= 1 && cut + missing <= frame.len())
            }
            other => panic!("prefix of {cut} bytes parsed as {other:?}"),
        }
    }
    assert_eq!(
        frame::frame_extent(&both, usize::MAX).expect("valid"),
        frame::Extent::Complete {
            len: frame.len(),
            data: true,
            fin: false
        }
    );
    assert!(frame::ends_mid_frame(&both[..frame.len() + 1]));
    assert!(!frame::ends_mid_frame(&both));
}

#[test]
fn head_end_is_found_across_any_split() {
    let head = b"HTTP/1.1 101 OK\r\nA: \r\r\n\r\n";
    for cut in 0..head.len() {
        let mut state = 0;
        let mut found = None;
        for (i, &b) in head[..cut].iter().chain(&head[cut..]).enumerate() {
            state = frame::head_match(state, b);
            if state == frame::HEAD_END.len() && found.is_none() {
                found = Some(i + 1);
            }
        }
        assert_eq!(found, Some(head.len()));
    }
}

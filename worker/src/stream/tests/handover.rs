//! Handovers: thousands of them at random points of a random feed, frames
//! that came with the `101`, leftovers that end mid-frame, a stalled frame
//! taken out and handed on, and a crash (no leftovers) with the next owner
//! reading on from the kernel.

use super::*;

use std::future::poll_fn;
use std::os::fd::AsFd;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::client_async;
use tungstenite::protocol::Role;

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
    let frame = hello_frame();
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

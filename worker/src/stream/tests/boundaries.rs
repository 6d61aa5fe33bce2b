//! Where the stream leaves tungstenite and the kernel: at most one frame per
//! read, the replay of a half-assembled message, the kernel at a frame
//! boundary between messages, and the frame and HTTP-head boundaries found
//! in any split of the bytes.

use super::*;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tungstenite::protocol::Role;

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

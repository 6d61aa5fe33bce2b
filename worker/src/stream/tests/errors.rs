//! What the stream refuses and how it ends: malformed and oversized frame
//! headers, an oversized handshake response, garbage, and the end of stream
//! in the middle of a frame or of the handshake.

use super::*;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::client_async;
use tungstenite::protocol::Role;

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

#[tokio::test]
async fn end_of_stream_inside_a_frame_is_an_error_not_a_spin() {
    let (client, mut server) = raw_pair().await;
    let frame = hello_frame();
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

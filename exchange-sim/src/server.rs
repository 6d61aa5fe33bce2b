//! Accepting sockets, reading HTTP/1.1 requests (keep-alive, `Content-Length`
//! bodies) and telling websocket upgrades from plain requests.

use crate::connection;
use crate::http::{self, Head, Reply};
use crate::state::{signalled, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How long a client may take to send its first request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may idle between requests (longer than
/// the 90 s idle timeout of reqwest's pool, so the client always closes first).
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(120);
/// How long connections get to say goodbye on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Accept connections until shutdown is signalled, then give them a short
/// grace period to send their close frames.
pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut tasks = JoinSet::new();
    let mut shutdown = shared.shutdown();
    loop {
        tokio::select! {
            () = signalled(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tasks.spawn(handle_socket(shared.clone(), stream, peer));
                }
                Err(e) => {
                    // Per-connection failures (aborted handshakes) and resource
                    // exhaustion (EMFILE) are transient: back off and go on.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!("connection task failed: {e}");
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
}

/// Serve one socket: HTTP requests one after the other while the client
/// keeps the connection alive, until one of them upgrades to a websocket.
async fn handle_socket(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
    }
    let mut shutdown = shared.shutdown();
    // Bytes read past the current request (pipelining, early websocket frames).
    let mut buf = Vec::with_capacity(1024);
    let mut first = true;
    loop {
        // The first request must come promptly; an idle keep-alive connection
        // is closed silently after a while, or on shutdown.
        let limit = if first { HEAD_TIMEOUT } else { KEEP_ALIVE_IDLE };
        let read = tokio::select! {
            read = tokio::time::timeout(limit, read_head(&mut stream, &mut buf)) => read,
            () = signalled(&mut shutdown), if !first => return,
        };
        let head = match read {
            Ok(Ok(Some(head))) => head,
            // Closed between requests: nothing to answer.
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "bad request: {e}");
                respond_and_close(&mut stream, &Reply::bad_request(&e)).await;
                return;
            }
            Err(_) if first => {
                let reply = Reply::bad_request("request head timed out");
                respond_and_close(&mut stream, &reply).await;
                return;
            }
            Err(_) => return,
        };
        first = false;
        match &head.upgrade {
            Some(Some(key)) => {
                // Registered before answering, so ids follow handshake order.
                let id = shared.audit(|a| a.open(peer.to_string(), head.path.clone()));
                if let Err(e) = stream.write_all(&http::upgrade_response(key)).await {
                    tracing::debug!(%peer, "upgrade answer failed: {e}");
                    shared.audit(|a| a.close(id, &format!("error: handshake: {e}")));
                    return;
                }
                connection::serve(shared, id, stream, peer, buf).await;
                return;
            }
            Some(None) => {
                let reply = Reply::bad_request("websocket upgrade without Sec-WebSocket-Key");
                respond_and_close(&mut stream, &reply).await;
                return;
            }
            None => {}
        }
        let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(&mut stream, &mut buf, &head))
            .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "bad request body: {e}");
                respond_and_close(&mut stream, &Reply::bad_request(&e)).await;
                return;
            }
            Err(_) => {
                let reply = Reply::bad_request("request body timed out");
                respond_and_close(&mut stream, &reply).await;
                return;
            }
        };
        let reply = http::route(&shared, &head, &body).await;
        if !head.keep_alive {
            respond_and_close(&mut stream, &reply).await;
            return;
        }
        if let Err(e) = stream.write_all(&reply.render(true)).await {
            tracing::debug!(%peer, "answer failed: {e}");
            return;
        }
    }
}

/// Read until `buf` holds a complete head; consume it from `buf` and return
/// it. `None` if the peer closed before sending a byte of it.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Head>, String> {
    loop {
        if let Some((head, len)) = http::parse_head(buf)? {
            buf.drain(..len);
            return Ok(Some(head));
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err("connection closed inside the request head".into()),
            Ok(_) => {}
            // A reset between requests is a hang-up too.
            Err(_) if buf.is_empty() => return Ok(None),
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// Read the `Content-Length` body of `head` (after `100 Continue` if asked
/// for); consume it from `buf` and return it.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &Head,
) -> Result<Vec<u8>, String> {
    let len = head.content_length;
    if head.expect_continue && buf.len() < len {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|e| format!("write failed: {e}"))?;
    }
    while buf.len() < len {
        buf.reserve(len - buf.len());
        match stream.read_buf(buf).await {
            Ok(0) => return Err("connection closed inside the request body".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    Ok(buf.drain(..len).collect())
}

/// Answer with `Connection: close` and close our side.
async fn respond_and_close(stream: &mut TcpStream, reply: &Reply) {
    if stream.write_all(&reply.render(false)).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

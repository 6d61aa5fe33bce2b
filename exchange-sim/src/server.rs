//! Accepting sockets and telling websocket upgrades from plain HTTP requests.

use crate::connection;
use crate::http::{self, Head};
use crate::state::{signalled, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Read the request head, then serve a websocket or answer HTTP.
async fn handle_socket(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let (head, leftover) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(parsed))) => parsed,
        // Closed before sending a request: nothing to answer.
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad request: {e}");
            respond(&mut stream, &http::bad_request(&e)).await;
            return;
        }
        Err(_) => {
            respond(&mut stream, &http::bad_request("request head timed out")).await;
            return;
        }
    };
    match &head.upgrade {
        Some(Some(key)) => {
            // Registered before answering, so ids follow handshake order.
            let id = shared.audit(|a| a.open(peer.to_string(), head.path.clone()));
            if let Err(e) = stream.write_all(&http::upgrade_response(key)).await {
                tracing::debug!(%peer, "upgrade answer failed: {e}");
                shared.audit(|a| a.close(id, &format!("error: handshake: {e}")));
                return;
            }
            connection::serve(shared, id, stream, peer, leftover).await;
        }
        Some(None) => {
            let answer = http::bad_request("websocket upgrade without Sec-WebSocket-Key");
            respond(&mut stream, &answer).await;
        }
        None => {
            let answer = http::route(&shared, &head).await;
            respond(&mut stream, &answer).await;
        }
    }
}

/// Read until a complete head; returns it with any bytes that followed it.
async fn read_head(stream: &mut TcpStream) -> Result<Option<(Head, Vec<u8>)>, String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some((head, len)) = http::parse_head(&buf)? {
            let leftover = buf.split_off(len);
            return Ok(Some((head, leftover)));
        }
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err("connection closed inside the request head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

async fn respond(stream: &mut TcpStream, bytes: &[u8]) {
    if stream.write_all(bytes).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

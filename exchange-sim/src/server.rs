//! Accepting sockets, telling TLS from plain connections by their first
//! byte, reading HTTP/1.1 requests (keep-alive, `Content-Length` bodies) and
//! telling websocket upgrades (market data, or a user-data stream on
//! `/ws/<listenKey>`) from plain requests.

use crate::audit::Audit;
use crate::connection::{self, Transport, UserSide};
use crate::error::ApiError;
use crate::http::{self, Head, Reply};
use crate::state::{signalled, Shared};
use crate::tls::{KeyUpdates, TlsConn, TlsInfo, TlsVersion};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The content type of a TLS handshake record: the first byte of every
/// ClientHello, and never the first byte of an HTTP request.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// How long a client may take to send its first byte, and then its first
/// request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to complete the TLS handshake once it started it.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Serve one socket: TLS first if its first byte opens a TLS handshake
/// (and `--tls` is on), then HTTP.
async fn handle_socket(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
    }
    let Some(tls) = shared.tls.clone() else {
        serve_http(shared, stream, peer, None).await;
        return;
    };
    let mut first_byte = [0u8; 1];
    match tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first_byte)).await {
        Ok(Ok(n)) if n > 0 && first_byte[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(n)) if n > 0 => {
            serve_http(shared, stream, peer, None).await;
            return;
        }
        // Closed or reset before a byte: nothing to answer.
        Ok(_) => return,
        Err(_) => {
            let reply = Reply::bad_request("request head timed out");
            respond_and_close(&mut stream, &reply).await;
            return;
        }
    }
    let accepted = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => TlsConn::new(stream),
        Ok(Err(e)) => {
            tracing::warn!(%peer, "TLS handshake failed: {e}");
            shared.audit(|a| a.tls_handshake(false));
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake timed out");
            shared.audit(|a| a.tls_handshake(false));
            return;
        }
    };
    shared.audit(|a| a.tls_handshake(true));
    let info = TlsInfo::of(stream.connection());
    tracing::debug!(%peer, ?info, "TLS handshake done");
    let every = tls.key_update_every();
    let key_updates =
        (every > 0 && info.version == TlsVersion::V1_3).then(|| (stream.key_updates(), every));
    let side = TlsSide { info, key_updates };
    serve_http(shared, stream, peer, Some(side)).await;
}

/// What a TLS stream brings to [`serve_http`].
struct TlsSide {
    info: TlsInfo,
    key_updates: Option<(Arc<KeyUpdates>, u64)>,
}

/// Why a request could not be read.
enum ReadFailure {
    /// Malformed or cut short: answer 400 and close.
    Bad(String),
    /// The TLS layer failed: nothing can be answered.
    Tls(String),
}

impl From<String> for ReadFailure {
    fn from(msg: String) -> Self {
        Self::Bad(msg)
    }
}

/// A read error in the middle of a request.
fn read_failure(e: &io::Error, tls: bool) -> ReadFailure {
    match tls.then(|| crate::tls::failure(e)).flatten() {
        Some(why) => ReadFailure::Tls(why),
        None => ReadFailure::Bad(format!("read failed: {e}")),
    }
}

/// Serve HTTP requests one after the other while the client keeps the
/// connection alive, until one of them upgrades to a websocket.
async fn serve_http<S>(shared: Arc<Shared>, mut stream: S, peer: SocketAddr, tls: Option<TlsSide>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let is_tls = tls.is_some();
    let mut shutdown = shared.shutdown();
    // Bytes read past the current request (pipelining, early websocket frames).
    let mut buf = Vec::with_capacity(1024);
    let mut first = true;
    loop {
        // The first request must come promptly; an idle keep-alive connection
        // is closed silently after a while, or on shutdown.
        let limit = if first { HEAD_TIMEOUT } else { KEEP_ALIVE_IDLE };
        let read = tokio::select! {
            read = tokio::time::timeout(limit, read_head(&mut stream, &mut buf, is_tls)) => read,
            () = signalled(&mut shutdown), if !first => return,
        };
        let head = match read {
            Ok(Ok(Some(head))) => head,
            // Closed between requests: nothing to answer.
            Ok(Ok(None)) => return,
            Ok(Err(ReadFailure::Bad(e))) => {
                tracing::debug!(%peer, "bad request: {e}");
                respond_and_close(&mut stream, &Reply::bad_request(&e)).await;
                return;
            }
            Ok(Err(ReadFailure::Tls(e))) => {
                tls_failed(&shared, peer, &e);
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
                // A user-data stream needs a live listen key: attached before
                // the answer, so that no event placed after it is missed.
                let user = match user_stream_key(&head.path) {
                    None => None,
                    Some(listen_key) => {
                        match shared.users.attach(listen_key, tokio::time::Instant::now()) {
                            Some(events) => Some(UserSide {
                                key: listen_key.to_owned(),
                                events,
                            }),
                            None => {
                                let e = ApiError::InvalidListenKey;
                                let reply = Reply::json(e.status(), e.body());
                                respond_and_close(&mut stream, &reply).await;
                                return;
                            }
                        }
                    }
                };
                // Registered before answering, so ids follow handshake order.
                let info = tls.as_ref().map(|t| t.info.clone());
                let id = shared.audit(|a| {
                    let id = a.open(peer.to_string(), head.path.clone());
                    if let Some(info) = info {
                        a.set_tls(id, info);
                    }
                    if let Some(user) = &user {
                        a.set_listen_key(id, &user.key);
                    }
                    id
                });
                let answer = http::upgrade_response(key);
                let sent = match stream.write_all(&answer).await {
                    Ok(()) => stream.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    tracing::debug!(%peer, "upgrade answer failed: {e}");
                    shared.audit(|a| a.close(id, &format!("error: handshake: {e}")));
                    return;
                }
                let transport = Transport {
                    tls: is_tls,
                    key_updates: tls.and_then(|t| t.key_updates),
                };
                connection::serve(shared, id, stream, peer, buf, transport, user).await;
                return;
            }
            Some(None) => {
                let reply = Reply::bad_request("websocket upgrade without Sec-WebSocket-Key");
                respond_and_close(&mut stream, &reply).await;
                return;
            }
            None => {}
        }
        let body = match tokio::time::timeout(
            BODY_TIMEOUT,
            read_body(&mut stream, &mut buf, &head, is_tls),
        )
        .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(ReadFailure::Bad(e))) => {
                tracing::debug!(%peer, "bad request body: {e}");
                respond_and_close(&mut stream, &Reply::bad_request(&e)).await;
                return;
            }
            Ok(Err(ReadFailure::Tls(e))) => {
                tls_failed(&shared, peer, &e);
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
        let sent = match stream.write_all(&reply.render(true)).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::debug!(%peer, "answer failed: {e}");
            return;
        }
    }
}

/// The listen key of a user-data stream path: `/ws/<listenKey>` (any
/// segment without `@` or `/`; market-data paths are `/ws`, `/stream`, `/`).
fn user_stream_key(path: &str) -> Option<&str> {
    let key = path.strip_prefix("/ws/")?;
    (!key.is_empty() && !key.contains(['@', '/'])).then_some(key)
}

/// An HTTP request cut short by a TLS failure.
fn tls_failed(shared: &Shared, peer: SocketAddr, error: &str) {
    tracing::info!(%peer, "TLS failure in an HTTP request: {error}");
    shared.audit(Audit::tls_error);
}

/// Read until `buf` holds a complete head; consume it from `buf` and return
/// it. `None` if the peer closed before sending a byte of it.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    tls: bool,
) -> Result<Option<Head>, ReadFailure> {
    loop {
        if let Some((head, len)) = http::parse_head(buf)? {
            buf.drain(..len);
            return Ok(Some(head));
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err("connection closed inside the request head"
                    .to_owned()
                    .into())
            }
            Ok(_) => {}
            // A bad record or a fatal alert is a failure even between requests.
            Err(e) if tls && crate::tls::is_protocol_error(&e) => {
                return Err(read_failure(&e, tls))
            }
            // A reset (or, over TLS, a FIN without close_notify) between
            // requests is a hang-up too: HTTP clients close idle pooled
            // connections that way.
            Err(_) if buf.is_empty() => return Ok(None),
            Err(e) => return Err(read_failure(&e, tls)),
        }
    }
}

/// Read the `Content-Length` body of `head` (after `100 Continue` if asked
/// for); consume it from `buf` and return it.
async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: &Head,
    tls: bool,
) -> Result<Vec<u8>, ReadFailure> {
    let len = head.content_length;
    if head.expect_continue && buf.len() < len {
        let sent = match stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        sent.map_err(|e| format!("write failed: {e}"))?;
    }
    while buf.len() < len {
        buf.reserve(len - buf.len());
        match stream.read_buf(buf).await {
            Ok(0) => {
                return Err("connection closed inside the request body"
                    .to_owned()
                    .into())
            }
            Ok(_) => {}
            Err(e) => return Err(read_failure(&e, tls)),
        }
    }
    Ok(buf.drain(..len).collect())
}

/// Answer with `Connection: close` and close our side (over TLS with
/// `close_notify`).
async fn respond_and_close<S: AsyncWrite + Unpin>(stream: &mut S, reply: &Reply) {
    if stream.write_all(&reply.render(false)).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::user_stream_key;

    #[test]
    fn user_stream_paths() {
        assert_eq!(user_stream_key("/ws/abc"), Some("abc"));
        for market in [
            "/ws",
            "/ws/",
            "/stream",
            "/",
            "/ws/btcusdt@trade",
            "/ws/a/b",
            "/x/abc",
        ] {
            assert_eq!(user_stream_key(market), None, "{market}");
        }
    }
}

//! A websocket connection the runtime can hand over: a tokio-tungstenite
//! stream over a [`HandoffStream`], plus its registered identity. `ws://`
//! runs over plain TCP, `wss://` over TLS ([`crate::tls`]).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handoff_protocol::tls::TlsSession;
use handoff_protocol::worker::{ConnId, ConnInfo, ConnKind};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tracing::info;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::settings::Settings;
use crate::stream::HandoffStream;
use crate::tls::io::TlsIo;
use crate::tls::{self, TlsError};

/// How much tungstenite reserves (and zero-fills) for each read. Its default,
/// 128 KiB, is meant for bulk reads straight from a socket; here every read
/// is served from memory and yields at most (the rest of) one frame, so the
/// reservation is only a `memset` per read: 128 KiB cost a third of the
/// steady-state throughput, and 512 bytes against 8 KiB is another 3–5 %
/// (interleaved A/B). A large frame simply takes more reads from memory.
const TUNGSTENITE_READ_CHUNK: usize = 512;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(TUNGSTENITE_READ_CHUNK)
}

/// A feed the app wants connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// Stable name (e.g. `feed-0`), used to match handed-over connections.
    pub name: String,
    /// `ws://host:port/path` or `wss://host:port/path`.
    pub url: String,
}

/// Where a feed's URL points: what [`Conn::open`] connects to.
struct Target {
    request: tungstenite::handshake::client::Request,
    kind: ConnKind,
    host: String,
    /// `host:port`, the port defaulted from the scheme.
    addr: String,
}

impl Feed {
    /// The URL taken apart, or why no connection can ever be opened to it
    /// ([`ConnError::BadUrl`]): not a URL, not `ws://` or `wss://`, no host.
    fn target(&self) -> Result<Target, ConnError> {
        let bad = |reason: String| ConnError::BadUrl {
            name: self.name.clone(),
            url: self.url.clone(),
            reason,
        };
        let request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| bad(e.to_string()))?;
        let uri = request.uri();
        let (kind, default_port) =
            scheme(uri).ok_or_else(|| bad("only ws:// and wss:// URLs are supported".into()))?;
        let host = uri.host().ok_or_else(|| bad("no host".into()))?.to_string();
        let port = uri.port_u16().unwrap_or(default_port);
        let addr = format!("{host}:{port}");
        Ok(Target {
            request,
            kind,
            host,
            addr,
        })
    }

    /// Whether a connection can ever be opened to this URL: `Err` says
    /// why not ([`ConnError::BadUrl`]), without touching the network.
    pub fn check_url(&self) -> Result<(), ConnError> {
        self.target().map(|_| ())
    }

    /// Whether the feed is `wss://`: its connection holds TLS keys.
    pub fn is_tls(&self) -> bool {
        let request = self.url.as_str().into_client_request();
        request
            .is_ok_and(|r| scheme(r.uri()).is_some_and(|(kind, _)| kind == ConnKind::WebSocketTls))
    }
}

/// The connection kind and default port of a feed URL's scheme; `None`
/// for anything but `ws` and `wss`.
fn scheme(uri: &tungstenite::http::Uri) -> Option<(ConnKind, u16)> {
    match uri.scheme_str() {
        Some("ws") => Some((ConnKind::WebSocket, 80)),
        Some("wss") => Some((ConnKind::WebSocketTls, 443)),
        _ => None,
    }
}

/// Resolve `addr` (`host:port`) and connect to the first address that
/// answers; the error names the host and each address tried.
async fn connect(name: &str, addr: &str) -> Result<TcpStream, ConnError> {
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| ConnError::Resolve {
            name: name.to_owned(),
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in &resolved {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    let tried: Vec<String> = resolved.iter().map(ToString::to_string).collect();
    let shown = match tried.as_slice() {
        [one] if one == addr => addr.to_owned(),
        _ => format!("{addr} ({})", tried.join(", ")),
    };
    Err(ConnError::Connect {
        name: name.to_owned(),
        addr: shown,
        source: last,
    })
}

/// Why a connection could not be opened or resumed.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("feed {name}: invalid URL {url:?}: {reason}")]
    BadUrl {
        name: String,
        url: String,
        reason: String,
    },
    #[error("feed {name}: cannot resolve {addr}: {source}")]
    Resolve {
        name: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// `addr` as given, then the addresses it resolved to that were tried.
    #[error("feed {name}: cannot connect to {addr}: {source}")]
    Connect {
        name: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("feed {name}: websocket handshake with {url} failed: {source}")]
    Handshake {
        name: String,
        url: String,
        #[source]
        source: tungstenite::Error,
    },
    #[error("feed {name}: TLS with {url}: {source}")]
    Tls {
        name: String,
        url: String,
        #[source]
        source: TlsError,
    },
    #[error("feed {name}: connect timed out after {after:?}")]
    Timeout { name: String, after: Duration },
    #[error("{info}: cannot adopt handed-over descriptor: {source}")]
    Adopt {
        info: String,
        #[source]
        source: std::io::Error,
    },
}

/// One live connection.
pub struct Conn {
    pub info: ConnInfo,
    pub ws: WebSocketStream<HandoffStream>,
}

impl Conn {
    /// Close with a close frame, then read (and drop) what the peer still
    /// sends until its own close frame ends the stream, for at most
    /// `limit`. The socket is drained when it is dropped, so neither this
    /// process nor the supervisor's duplicate closing it can reset the
    /// connection under the peer's feet (a close with unread data sends a
    /// RST, which can discard our close frame before the peer reads it).
    /// Returns whether the handshake completed.
    pub async fn close_handshake(&mut self, limit: Duration) -> bool {
        let handshake = async {
            if self.ws.close(None).await.is_err() {
                return false;
            }
            let mut peer_closed = false;
            while let Some(msg) = self.ws.next().await {
                match msg {
                    Ok(tungstenite::Message::Close(_)) => peer_closed = true,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            peer_closed
        };
        tokio::time::timeout(limit, handshake)
            .await
            .unwrap_or(false)
    }

    /// Open `feed` from scratch: TCP connect, TLS handshake for `wss://`
    /// (trusting the public roots and the certificates in
    /// `settings.ca_file`; records then protected by the kernel or here, as
    /// `settings.kernel_tls` and the kernel allow), and websocket handshake,
    /// all within `settings.connect_timeout`.
    pub async fn open(id: ConnId, feed: &Feed, settings: &Settings) -> Result<Conn, ConnError> {
        let timeout = settings.connect_timeout;
        let ca_file = settings.ca_file.as_deref();
        let name = feed.name.clone();
        let Target {
            request,
            kind,
            host,
            addr,
        } = feed.target()?;
        let open = async {
            let mut tcp = connect(&name, &addr).await?;
            let _ = tcp.set_nodelay(true);
            let peer = tcp
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| addr.clone());
            let stream = match kind {
                ConnKind::WebSocket => HandoffStream::new_client(tcp),
                ConnKind::WebSocketTls => {
                    let tls_err = |source| ConnError::Tls {
                        name: name.clone(),
                        url: feed.url.clone(),
                        source,
                    };
                    let server = host.trim_matches(['[', ']']);
                    let (session, early, negotiated) =
                        tls::handshake::handshake(&mut tcp, server, ca_file)
                            .await
                            .map_err(tls_err)?;
                    let path = tls::kernel::choose(
                        settings.kernel_tls,
                        tls::kernel_tls(),
                        negotiated.version,
                        negotiated.cipher,
                    )
                    .map_err(tls_err)?;
                    let io = TlsIo::take_over(tcp.as_fd(), &session, &path).map_err(tls_err)?;
                    drop(session);
                    match &path {
                        tls::Path::Kernel => {
                            info!(feed = %name, ?negotiated, "TLS session established; records protected by the kernel (kernel TLS)")
                        }
                        tls::Path::UserSpace(why) => {
                            info!(feed = %name, ?negotiated, why = %why, "TLS session established; records protected in user space")
                        }
                    }
                    HandoffStream::new_client_tls(tcp, io, early)
                        .map_err(|e| tls_err(TlsError::Io(e)))?
                }
            };
            let (ws, _response) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
                    .await
                    .map_err(|source| ConnError::Handshake {
                        name: name.clone(),
                        url: feed.url.clone(),
                        source,
                    })?;
            let info = ConnInfo {
                id,
                name: name.clone(),
                kind,
                url: feed.url.clone(),
                peer,
            };
            Ok(Conn { info, ws })
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ConnError::Timeout {
                name: name.clone(),
                after: timeout,
            })?
    }

    /// Adopt a handed-over connection: its descriptor, the bytes the
    /// previous owner had read but not consumed and, for `wss://`, the TLS
    /// session to continue.
    pub async fn resume(
        info: ConnInfo,
        fd: OwnedFd,
        leftovers: Vec<u8>,
        tls: Option<&TlsSession>,
    ) -> Result<Conn, ConnError> {
        let adopt = |source| ConnError::Adopt {
            info: format!("{} ({})", info.id, info.name),
            source,
        };
        let stream = match (info.kind, tls) {
            (ConnKind::WebSocket, None) => {
                HandoffStream::resume_fd(fd, leftovers).map_err(adopt)?
            }
            (ConnKind::WebSocketTls, Some(session)) => {
                HandoffStream::resume_tls_fd(fd, leftovers, session)
                    .map_err(|e| adopt(std::io::Error::from(e)))?
            }
            (kind, session) => {
                return Err(adopt(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "a {kind:?} connection handed over {} TLS session",
                        if session.is_some() {
                            "with a"
                        } else {
                            "without its"
                        }
                    ),
                )))
            }
        };
        let ws = WebSocketStream::from_raw_socket(stream, Role::Client, Some(ws_config())).await;
        Ok(Conn { info, ws })
    }

    /// Write out everything queued (pending pongs included).
    pub async fn flush(&mut self) -> Result<(), tungstenite::Error> {
        self.ws.flush().await
    }

    /// The TLS session to hand over with the descriptor (`None` for plain
    /// TCP). Call after [`flush`](Self::flush).
    pub fn tls_session(&self) -> Result<Option<TlsSession>, TlsError> {
        self.ws.get_ref().tls_session()
    }

    /// Give up or take back the right to write TLS records (see
    /// [`HandoffStream::set_tls_writer`]).
    pub fn set_tls_writer(&mut self, writer: tls::Writer) {
        self.ws.get_mut().set_tls_writer(writer);
    }

    /// Bytes taken from the kernel and not yet consumed as messages.
    pub fn leftovers(&self) -> Vec<u8> {
        self.ws.get_ref().leftovers()
    }
}

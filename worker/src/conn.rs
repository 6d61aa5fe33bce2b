//! A websocket connection the runtime can hand over: a tokio-tungstenite
//! stream over a [`HandoffStream`], plus its registered identity.

use std::os::fd::OwnedFd;
use std::time::Duration;

use futures_util::SinkExt;
use handoff_protocol::worker::{ConnId, ConnInfo, ConnKind};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::Role;

use crate::stream::HandoffStream;

/// A feed the app wants connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// Stable name (e.g. `feed-0`), used to match handed-over connections.
    pub name: String,
    /// `ws://host:port/path`.
    pub url: String,
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
    /// Open `feed` from scratch: TCP connect and websocket handshake.
    pub async fn open(id: ConnId, feed: &Feed, timeout: Duration) -> Result<Conn, ConnError> {
        let name = feed.name.clone();
        let bad = |reason: String| ConnError::BadUrl {
            name: name.clone(),
            url: feed.url.clone(),
            reason,
        };
        let request = feed
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| bad(e.to_string()))?;
        let uri = request.uri();
        if uri.scheme_str() != Some("ws") {
            return Err(bad("only ws:// URLs are supported".into()));
        }
        let host = uri.host().ok_or_else(|| bad("no host".into()))?.to_string();
        let port = uri.port_u16().unwrap_or(80);
        let addr = format!("{host}:{port}");
        let open = async {
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|source| ConnError::Connect {
                    name: name.clone(),
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let peer = tcp
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| addr.clone());
            let (ws, _response) =
                tokio_tungstenite::client_async(request, HandoffStream::new_client(tcp))
                    .await
                    .map_err(|source| ConnError::Handshake {
                        name: name.clone(),
                        url: feed.url.clone(),
                        source,
                    })?;
            let info = ConnInfo {
                id,
                name: name.clone(),
                kind: ConnKind::WebSocket,
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

    /// Adopt a handed-over connection: its descriptor and the bytes the
    /// previous owner had read but not consumed.
    pub async fn resume(
        info: ConnInfo,
        fd: OwnedFd,
        leftovers: Vec<u8>,
    ) -> Result<Conn, ConnError> {
        let stream =
            HandoffStream::resume_fd(fd, leftovers).map_err(|source| ConnError::Adopt {
                info: format!("{} ({})", info.id, info.name),
                source,
            })?;
        let ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
        Ok(Conn { info, ws })
    }

    /// Write out everything queued (pending pongs included).
    pub async fn flush(&mut self) -> Result<(), tungstenite::Error> {
        self.ws.flush().await
    }

    /// Bytes taken from the kernel and not yet consumed as messages.
    pub fn leftovers(&self) -> Vec<u8> {
        self.ws.get_ref().leftovers()
    }
}

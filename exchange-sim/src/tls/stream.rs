//! The server side of one TLS connection: tokio-rustls' stream plus the
//! ability to roll the traffic keys from the writer loop.
//!
//! After `tokio::io::split` the writer only holds a `WriteHalf`, so it cannot
//! reach the rustls [`ServerConnection`](tokio_rustls::rustls::ServerConnection)
//! itself. It asks through a shared [`KeyUpdates`] instead, and the next
//! `poll_write` or `poll_flush` of [`TlsConn`] calls
//! `refresh_traffic_keys()` before touching any data: the KeyUpdate record
//! (sealed with the old keys, `update_requested`) goes out ahead of
//! everything written afterwards, which is sealed with the new keys.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Key updates asked for by the writer and performed by [`TlsConn`].
#[derive(Debug, Default)]
pub struct KeyUpdates {
    requested: AtomicBool,
    sent: AtomicU64,
}

impl KeyUpdates {
    /// Ask for a key update before the next write or flush.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// Key updates sent since the previous call.
    pub fn take_sent(&self) -> u64 {
        self.sent.swap(0, Ordering::AcqRel)
    }
}

/// A server TLS stream that performs requested key updates.
#[derive(Debug)]
pub struct TlsConn<IO = TcpStream> {
    inner: TlsStream<IO>,
    key_updates: Arc<KeyUpdates>,
}

impl<IO> TlsConn<IO> {
    /// Wrap an established stream.
    pub fn new(inner: TlsStream<IO>) -> Self {
        Self {
            inner,
            key_updates: Arc::default(),
        }
    }

    /// The handle the writer loop asks for key updates through.
    pub fn key_updates(&self) -> Arc<KeyUpdates> {
        self.key_updates.clone()
    }

    /// The rustls connection (negotiated version, suite, …).
    pub fn connection(&self) -> &tokio_rustls::rustls::ServerConnection {
        self.inner.get_ref().1
    }

    fn perform_key_update(&mut self) {
        if !self.key_updates.requested.swap(false, Ordering::AcqRel) {
            return;
        }
        match self.inner.get_mut().1.refresh_traffic_keys() {
            Ok(()) => {
                self.key_updates.sent.fetch_add(1, Ordering::AcqRel);
            }
            // TLS 1.2, or the connection already failed: nothing to roll.
            Err(e) => tracing::debug!("key update not sent: {e}"),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.perform_key_update();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.perform_key_update();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

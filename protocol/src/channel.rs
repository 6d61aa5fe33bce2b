//! [`Channel<Tx, Rx>`]: a typed, async endpoint over a Unix stream socket.
//!
//! The type parameters fix the direction: the supervisor's end of a worker
//! socket is a `Channel<ToWorker, FromWorker>` and the worker's end a
//! `Channel<FromWorker, ToWorker>`, so sending the wrong family of message is a
//! compile error.
//!
//! [`Channel::recv`] is cancel-safe: everything read so far is kept in the
//! channel, so it can sit in a `tokio::select!`. [`Channel::send`] is not: a
//! frame is written whole or the channel is broken.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::fds::{recv_with_fds, send_with_fds};
use crate::frame::{self, FrameError, Header, HEADER_LEN, MAX_FDS};

/// Why a channel failed. After any error but [`ChannelError::Frame`] on
/// `send`, the channel is unusable (its byte stream is no longer in sync).
#[derive(Debug, Error)]
pub enum ChannelError {
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer closed the connection in the middle of a frame ({have} of {need} bytes)")]
    TornFrame { have: usize, need: usize },
    #[error("frame declares {declared} descriptors but {received} arrived")]
    MissingFds { declared: usize, received: usize },
    #[error("{count} descriptors arrived that no frame declared; they were closed")]
    UnexpectedFds { count: usize },
}

/// Read size when no frame is in progress (large enough for small messages in
/// one call, small enough not to matter per idle connection).
const READ_CHUNK: usize = 16 * 1024;

/// One end of a framed, typed Unix-socket conversation. See the module docs.
pub struct Channel<Tx, Rx> {
    sock: UnixStream,
    max_frame: usize,
    buf: Vec<u8>,
    filled: usize,
    fds: VecDeque<OwnedFd>,
    _dir: PhantomData<fn(Tx) -> Rx>,
}

impl<Tx: Serialize, Rx: DeserializeOwned> Channel<Tx, Rx> {
    /// Wrap a connected socket; frames larger than `max_frame` are refused in
    /// both directions.
    pub fn new(sock: UnixStream, max_frame: usize) -> Self {
        Channel {
            sock,
            max_frame,
            buf: Vec::new(),
            filled: 0,
            fds: VecDeque::new(),
            _dir: PhantomData,
        }
    }

    /// Wrap a descriptor (e.g. one inherited from the supervisor). Must be
    /// called within a tokio runtime.
    pub fn from_fd(fd: OwnedFd, max_frame: usize) -> io::Result<Self> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        Ok(Self::new(UnixStream::from_std(std)?, max_frame))
    }

    /// The underlying socket (for peer credentials and the like).
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Send one message, with `fds` attached.
    pub async fn send(&mut self, msg: &Tx, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let bytes = frame::encode(msg, fds.len(), self.max_frame)?;
        let mut off = 0;
        while off < bytes.len() {
            let attach: &[BorrowedFd<'_>] = if off == 0 { fds } else { &[] };
            let n = self
                .sock
                .async_io(Interest::WRITABLE, || {
                    send_with_fds(self.sock.as_fd(), &bytes[off..], attach)
                })
                .await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            off += n;
        }
        Ok(())
    }

    /// Receive the next message and the descriptors it declared. `Ok(None)` is a
    /// clean close at a frame boundary; a close inside a frame is an error.
    pub async fn recv(&mut self) -> Result<Option<(Rx, Vec<OwnedFd>)>, ChannelError> {
        loop {
            if let Some(done) = self.try_take_frame()? {
                return Ok(Some(done));
            }
            let want = self.bytes_wanted()?;
            if self.buf.len() < self.filled + want {
                self.buf.resize(self.filled + want, 0);
            }
            let (filled, sock) = (self.filled, &self.sock);
            let buf = &mut self.buf[filled..filled + want];
            let got = sock
                .async_io(Interest::READABLE, || recv_with_fds(sock.as_fd(), buf))
                .await?;
            self.fds.extend(got.fds);
            if self.fds.len() > 2 * MAX_FDS {
                let count = self.fds.len();
                self.fds.clear();
                return Err(ChannelError::UnexpectedFds { count });
            }
            if got.bytes == 0 {
                return self.on_eof();
            }
            self.filled += got.bytes;
        }
    }

    /// How many bytes to ask the kernel for: the rest of the current frame
    /// (validated header) or a chunk when between frames.
    fn bytes_wanted(&self) -> Result<usize, ChannelError> {
        if self.filled < HEADER_LEN {
            return Ok(READ_CHUNK);
        }
        let header = self.header()?;
        Ok((HEADER_LEN + header.len).saturating_sub(self.filled).max(1))
    }

    fn header(&self) -> Result<Header, ChannelError> {
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&self.buf[..HEADER_LEN]);
        Ok(Header::parse(&head, self.max_frame)?)
    }

    fn try_take_frame(&mut self) -> Result<Option<(Rx, Vec<OwnedFd>)>, ChannelError> {
        if self.filled < HEADER_LEN {
            return Ok(None);
        }
        let header = self.header()?;
        let end = HEADER_LEN + header.len;
        if self.filled < end {
            return Ok(None);
        }
        if self.fds.len() < header.n_fds {
            let received = self.fds.len();
            self.fds.clear();
            return Err(ChannelError::MissingFds {
                declared: header.n_fds,
                received,
            });
        }
        let fds: Vec<OwnedFd> = self.fds.drain(..header.n_fds).collect();
        let decoded = frame::decode::<Rx>(&self.buf[HEADER_LEN..end]);
        self.buf.copy_within(end..self.filled, 0);
        self.filled -= end;
        if self.filled == 0 {
            self.buf.truncate(READ_CHUNK.max(HEADER_LEN));
            self.buf.shrink_to(READ_CHUNK);
            if !self.fds.is_empty() {
                // Nothing of a later frame has arrived, so these came with this
                // frame's bytes without being declared.
                let count = self.fds.len();
                self.fds.clear();
                return Err(ChannelError::UnexpectedFds { count });
            }
        }
        Ok(Some((decoded?, fds)))
    }

    fn on_eof(&mut self) -> Result<Option<(Rx, Vec<OwnedFd>)>, ChannelError> {
        if self.filled == 0 {
            return Ok(None);
        }
        let need = if self.filled >= HEADER_LEN {
            HEADER_LEN + self.header()?.len
        } else {
            HEADER_LEN
        };
        Err(ChannelError::TornFrame {
            have: self.filled,
            need,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{FromWorker, ToWorker};
    use tokio::io::AsyncWriteExt;

    fn pair() -> (Channel<ToWorker, FromWorker>, Channel<FromWorker, ToWorker>) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            Channel::new(a, frame::MAX_CTL_FRAME),
            Channel::new(b, frame::MAX_CTL_FRAME),
        )
    }

    #[tokio::test]
    async fn messages_and_fds_cross() {
        let (mut sup, mut wrk) = pair();
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        sup.send(&ToWorker::Freeze { schema: None }, &[])
            .await
            .unwrap();
        sup.send(&ToWorker::Go, &[x.as_fd(), x.as_fd()])
            .await
            .unwrap();
        let (m1, f1) = wrk.recv().await.unwrap().unwrap();
        assert!(matches!(m1, ToWorker::Freeze { .. }));
        assert!(f1.is_empty());
        let (m2, f2) = wrk.recv().await.unwrap().unwrap();
        assert!(matches!(m2, ToWorker::Go));
        assert_eq!(f2.len(), 2);
        drop(sup);
        assert!(wrk.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn torn_frame_is_an_error_not_a_close() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx: Channel<ToWorker, FromWorker> = Channel::new(b, 1024);
        let mut a = a;
        let bytes = frame::encode(&FromWorker::Ready, 0, 1024).unwrap();
        a.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            rx.recv().await,
            Err(ChannelError::TornFrame { .. })
        ));
    }

    #[tokio::test]
    async fn undeclared_fds_are_refused_and_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx: Channel<ToWorker, FromWorker> = Channel::new(b, 1024);
        let bytes = frame::encode(&FromWorker::Ready, 0, 1024).unwrap();
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        let std_a = a.into_std().unwrap();
        send_with_fds(std_a.as_fd(), &bytes, &[x.as_fd()]).unwrap();
        assert!(matches!(
            rx.recv().await,
            Err(ChannelError::UnexpectedFds { count: 1 })
        ));
    }

    #[tokio::test]
    async fn oversized_prefix_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut rx: Channel<ToWorker, FromWorker> = Channel::new(b, 1024);
        let mut head = Vec::from(frame::MAGIC);
        head.extend_from_slice(&0u16.to_be_bytes());
        head.extend_from_slice(&(u32::MAX).to_be_bytes());
        a.write_all(&head).await.unwrap();
        assert!(matches!(
            rx.recv().await,
            Err(ChannelError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever bytes a peer writes, `recv` yields messages, a clean
        /// close or an error: it never panics and never hangs.
        #[test]
        fn random_streams_never_panic_or_hang(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            with_header in proptest::bool::ANY,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (mut a, b) = UnixStream::pair().unwrap();
                let mut rx: Channel<ToWorker, FromWorker> = Channel::new(b, 1024);
                let mut data = Vec::new();
                if with_header {
                    data.extend_from_slice(&frame::MAGIC);
                }
                data.extend_from_slice(&bytes);
                a.write_all(&data).await.unwrap();
                drop(a);
                let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while let Ok(Some(_)) = rx.recv().await {}
                })
                .await;
                assert!(outcome.is_ok(), "recv hung on {} bytes", data.len());
            });
        }
    }
}

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

use bytes::{BufMut, BytesMut};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UnixStream;
use zeroize::Zeroize;

use crate::fds::{recv_with_fds, send_with_fds};
use crate::frame::{self, FrameError, Header, Message, HEADER_LEN, MAX_FDS};

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

/// Size of the buffer that takes headers and small frames (large enough for
/// small messages in one call, small enough not to matter per idle
/// connection). A frame that does not fit gets a buffer of its own, sized
/// from its validated header and never zero-filled.
const READ_CHUNK: usize = 16 * 1024;

/// Send buffer asked of the kernel for every channel socket (it caps the
/// request at `net.core.wmem_max`): a snapshot of a few MiB then goes out
/// in one call instead of waiting for the reader chunk by chunk. It costs
/// memory only while data is queued.
const SEND_BUFFER: usize = 4 << 20;

/// A frame too large for the small buffer, being read into its own.
struct Large {
    header: Header,
    payload: BytesMut,
}

/// A frame dropped half-read (a torn frame, a channel dropped) is wiped too.
impl Drop for Large {
    fn drop(&mut self) {
        self.payload.as_mut().zeroize();
    }
}

/// One end of a framed, typed Unix-socket conversation. See the module docs.
pub struct Channel<Tx, Rx> {
    sock: UnixStream,
    max_frame: usize,
    /// Headers and small frames (`READ_CHUNK` bytes once allocated).
    buf: Vec<u8>,
    filled: usize,
    large: Option<Large>,
    fds: VecDeque<OwnedFd>,
    _dir: PhantomData<fn(Tx) -> Rx>,
}

impl<Tx: Message, Rx: Message> Channel<Tx, Rx> {
    /// Wrap a connected socket; frames larger than `max_frame` are refused in
    /// both directions.
    pub fn new(sock: UnixStream, max_frame: usize) -> Self {
        // Best effort: with the default buffer everything still works, in
        // more round trips.
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
        Channel {
            sock,
            max_frame,
            buf: Vec::new(),
            filled: 0,
            large: None,
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

    /// Send one message, with `fds` attached to its first bytes. Large byte
    /// strings (snapshots) are written from their own memory, not copied
    /// into a frame buffer first ([`frame::encode_parts`]).
    pub async fn send(&mut self, msg: &Tx, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let frame = frame::encode_parts(msg, fds.len(), self.max_frame)?;
        let mut attach = fds;
        for part in frame.parts() {
            let mut off = 0;
            while off < part.len() {
                let n = self
                    .sock
                    .async_io(Interest::WRITABLE, || {
                        send_with_fds(self.sock.as_fd(), &part[off..], attach)
                    })
                    .await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                }
                attach = &[];
                off += n;
            }
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
            if let Some(large) = self.large.as_mut() {
                // The rest of a large payload, straight into its own buffer.
                // Only the frame's first bytes carry descriptors (they came
                // with the header), so a plain read is enough here; it never
                // reads past the frame.
                let rest = large.header.len - large.payload.len();
                let n = loop {
                    self.sock.readable().await?;
                    match self
                        .sock
                        .try_read_buf(&mut (&mut large.payload).limit(rest))
                    {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e.into()),
                    }
                };
                if n == 0 {
                    return Err(ChannelError::TornFrame {
                        have: HEADER_LEN + large.payload.len(),
                        need: HEADER_LEN + large.header.len,
                    });
                }
                continue;
            }
            if self.buf.is_empty() {
                self.buf = vec![0; READ_CHUNK];
            }
            let (filled, sock) = (self.filled, &self.sock);
            let buf = &mut self.buf[filled..];
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

    fn header(&self) -> Result<Header, ChannelError> {
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&self.buf[..HEADER_LEN]);
        Ok(Header::parse(&head, self.max_frame)?)
    }

    fn take_fds(&mut self, header: &Header) -> Result<Vec<OwnedFd>, ChannelError> {
        if self.fds.len() < header.n_fds {
            let received = self.fds.len();
            self.fds.clear();
            return Err(ChannelError::MissingFds {
                declared: header.n_fds,
                received,
            });
        }
        Ok(self.fds.drain(..header.n_fds).collect())
    }

    /// Nothing of a later frame has arrived, so descriptors still queued
    /// came with this frame's bytes without being declared.
    fn check_no_stray_fds(&mut self) -> Result<(), ChannelError> {
        if self.filled == 0 && !self.fds.is_empty() {
            let count = self.fds.len();
            self.fds.clear();
            return Err(ChannelError::UnexpectedFds { count });
        }
        Ok(())
    }

    fn try_take_frame(&mut self) -> Result<Option<(Rx, Vec<OwnedFd>)>, ChannelError> {
        if let Some(large) = &self.large {
            if large.payload.len() < large.header.len {
                return Ok(None);
            }
            let header = large.header;
            let fds = self.take_fds(&header)?;
            let payload = self
                .large
                .take()
                .map(|mut l| std::mem::take(&mut l.payload))
                .unwrap_or_default();
            // The message's snapshot (if any) stays in this buffer: no copy.
            // The rest of it is wiped.
            let decoded = frame::decode_shared::<Rx>(&header, payload);
            self.check_no_stray_fds()?;
            return Ok(Some((decoded?, fds)));
        }
        if self.filled < HEADER_LEN {
            return Ok(None);
        }
        let header = self.header()?;
        let end = HEADER_LEN + header.len;
        if end > self.buf.len() {
            // Too large for the small buffer (which holds nothing but the
            // start of this frame): continue in a buffer of its own, sized
            // from the validated header.
            let mut payload = BytesMut::with_capacity(header.len);
            payload.extend_from_slice(&self.buf[HEADER_LEN..self.filled]);
            self.filled = 0;
            self.large = Some(Large { header, payload });
            return self.try_take_frame();
        }
        if self.filled < end {
            return Ok(None);
        }
        let fds = self.take_fds(&header)?;
        let decoded = frame::decode::<Rx>(&header, &self.buf[HEADER_LEN..end]);
        self.buf.copy_within(end..self.filled, 0);
        let was = self.filled;
        self.filled -= end;
        // What is left of the frame behind the live bytes is wiped: it may
        // have held a handed-over TLS session.
        self.buf[self.filled..was].zeroize();
        self.check_no_stray_fds()?;
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
        pair_of(frame::MAX_CTL_FRAME)
    }

    fn pair_of(max: usize) -> (Channel<ToWorker, FromWorker>, Channel<FromWorker, ToWorker>) {
        let (a, b) = UnixStream::pair().unwrap();
        (Channel::new(a, max), Channel::new(b, max))
    }

    #[tokio::test]
    async fn messages_and_fds_cross() {
        let (mut sup, mut wrk) = pair();
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        sup.send(
            &ToWorker::Freeze {
                schema: None,
                catch_up: false,
            },
            &[],
        )
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

    /// A handed-over TLS session's bytes do not stay behind in the receive
    /// buffer once its frame is decoded.
    #[tokio::test]
    async fn a_received_tls_session_is_wiped_from_the_buffer() {
        use crate::worker::{ConnId, ConnInfo, ConnKind, ConnRestore, Restore, RestoreMode};
        let key = [0xA5u8; 32];
        let restore = ToWorker::Restore(Restore {
            mode: RestoreMode::Handoff,
            snapshot: None,
            conns: vec![ConnRestore {
                info: ConnInfo {
                    id: ConnId(0),
                    name: "feed-0".into(),
                    kind: ConnKind::WebSocketTls,
                    url: "wss://x".into(),
                    peer: "x".into(),
                },
                leftovers: Vec::new(),
                tls: Some(crate::tls::session_of(0xA5)),
            }],
            digest: None,
        });
        let (mut sup, mut wrk) = pair();
        // Sent together, so the second frame is read with the first and
        // moves to the front of the buffer.
        sup.send(&restore, &[]).await.unwrap();
        sup.send(&ToWorker::Go, &[]).await.unwrap();
        let (got, _) = wrk.recv().await.unwrap().unwrap();
        assert_eq!(got, restore);
        let left = wrk.buf.windows(key.len()).any(|w| w == key);
        assert!(!left, "the session's key is still in the receive buffer");
        let (go, _) = wrk.recv().await.unwrap().unwrap();
        assert!(matches!(go, ToWorker::Go));
    }

    #[tokio::test]
    async fn large_frames_cross_with_their_fds_between_small_ones() {
        use crate::worker::{ConnId, ConnInfo, ConnKind, ConnRestore, Restore, RestoreMode};
        let (mut sup, mut wrk) = pair_of(frame::MAX_WORKER_FRAME);
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        let state: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let restore = ToWorker::Restore(Restore {
            mode: RestoreMode::Handoff,
            snapshot: Some(crate::Snapshot::seal("bot", 1, state)),
            conns: vec![ConnRestore {
                info: ConnInfo {
                    id: ConnId(0),
                    name: "feed-0".into(),
                    kind: ConnKind::WebSocket,
                    url: "ws://x".into(),
                    peer: "x".into(),
                },
                leftovers: vec![1; 20_000],
                tls: None,
            }],
            digest: None,
        });
        let sent = restore.clone();
        let writer = tokio::spawn(async move {
            sup.send(&ToWorker::Thaw, &[]).await.unwrap();
            sup.send(&sent, &[x.as_fd()]).await.unwrap();
            sup.send(&ToWorker::Go, &[x.as_fd()]).await.unwrap();
            sup
        });
        let (m1, f1) = wrk.recv().await.unwrap().unwrap();
        assert!(matches!(m1, ToWorker::Thaw) && f1.is_empty());
        let (m2, f2) = wrk.recv().await.unwrap().unwrap();
        assert_eq!(m2, restore);
        assert_eq!(f2.len(), 1);
        let (m3, f3) = wrk.recv().await.unwrap().unwrap();
        assert!(matches!(m3, ToWorker::Go));
        assert_eq!(f3.len(), 1);
        drop(writer.await.unwrap());
        assert!(wrk.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn torn_large_frame_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx: Channel<ToWorker, FromWorker> = Channel::new(b, frame::MAX_WORKER_FRAME);
        let msg = FromWorker::Checkpoint(crate::worker::Checkpoint {
            snapshot: crate::Snapshot::seal("bot", 1, vec![5; 200_000]),
            summary: None,
            taken_at_ns: 1,
        });
        let bytes = frame::encode(&msg, 0, frame::MAX_WORKER_FRAME).unwrap();
        let mut a = a;
        let writer = tokio::spawn(async move {
            a.write_all(&bytes[..bytes.len() - 10]).await.unwrap();
        });
        let r = rx.recv().await;
        writer.await.unwrap();
        assert!(matches!(r, Err(ChannelError::TornFrame { .. })), "{r:?}");
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

//! The byte stream below tokio-tungstenite that makes a websocket connection
//! transferable between processes at any message boundary.
//!
//! [`HandoffStream`] wraps the connection's `TcpStream` and is what
//! tokio-tungstenite reads from. It exists because tungstenite offers no way to
//! take bytes back out of its internal read buffer: if tungstenite ever held
//! bytes of the *next* frame when a message is delivered, those bytes would be
//! lost on handover. So this stream controls exactly what tungstenite sees.
//!
//! # The invariant
//!
//! Whenever the application holds control between two reads (a message was
//! just delivered, or a `next()` future returned `Pending` and was dropped):
//!
//! 1. **tungstenite's read buffer is empty.** Each `poll_read` hands over at
//!    most the rest of *one* websocket frame, and a frame is only handed over
//!    once it is entirely in memory here, so tungstenite's buffered reads never
//!    run past the frame it is assembling, and it never waits in the middle of
//!    a frame. It has consumed the last byte of every frame it was given
//!    before it returns anything.
//! 2. **Every byte read from the kernel is accounted for here**, as
//!    [`leftovers()`](HandoffStream::leftovers) `= replay ++ unfed`:
//!    - `unfed`: bytes taken from the kernel but not handed to tungstenite yet
//!      (whole frames, or the beginning of one frame being read piecemeal,
//!      see 3);
//!    - `replay`: the raw bytes of the *data* frames (text / binary /
//!      continuation) handed to tungstenite since the last data frame with
//!      FIN=1, i.e. the fragments of a message tungstenite is half-way through
//!      assembling. Control frames (ping / pong / close) are never recorded:
//!      they are complete on their own and were already acted upon (a replayed
//!      ping would be answered twice).
//!
//!    A new [`HandoffStream::resume`] fed with those leftovers makes a fresh
//!    tungstenite reassemble the same half-built message and continue exactly
//!    where the previous one stopped: nothing lost, nothing duplicated.
//! 3. **The kernel's read position sits on a frame boundary**
//!    ([`kernel_at_frame_boundary`](HandoffStream::kernel_at_frame_boundary)),
//!    so that if the owning process crashes (no chance to pass leftovers on)
//!    the next owner can still parse the connection from the kernel (losing
//!    only what this process had taken out). Frames are taken from the kernel
//!    whole: peek (`MSG_PEEK`), parse the headers, then `recv` exactly the
//!    bytes of the complete frames in the peeked window. The exception is a
//!    frame read piecemeal: one larger than `whole_frame_max` (default
//!    [`DEFAULT_WHOLE_FRAME_MAX`]; the kernel's receive window may never hold
//!    it whole), or a stalled one (see "Stalls"). Its bytes go to `unfed` as
//!    they arrive (still not to tungstenite until complete) and the reading
//!    never goes past its end. While it is partly read the kernel is
//!    mid-frame, and a crash tears that connection; a planned handover still
//!    works, since the partial frame is part of the leftovers and the next
//!    stream finishes reading it. Piecemeal reading only starts when no
//!    complete frame is left to feed and always ends with its frame, so right
//!    after `next()` has yielded a message the kernel is always at a boundary:
//!    it is mid-frame only while a read is pending.
//!
//! # Readiness
//!
//! A peek never consumes data, so it never clears tokio's readiness. When the
//! peeked window holds no complete frame yet, the read closure run under
//! [`TcpStream::try_io`] returns `WouldBlock`, which clears the readiness
//! observed *before* the peek; tokio's readiness tick guarantees that bytes
//! arriving after that observation wake the task again. No busy loop, no lost
//! wake-up.
//!
//! # Stalls
//!
//! Leaving an incomplete frame in the kernel is only safe while more bytes can
//! still arrive. Two situations break that, and in both the incomplete prefix
//! is taken out and the frame read piecemeal, exactly like a big frame:
//!
//! - **The kernel stops accepting data.** Receive-buffer accounting is by
//!   `skb` truesize, not bytes, and a partly consumed `skb` stays charged in
//!   full until its last byte is read. A few hundred bytes of frame prefix can
//!   so pin ~100 KiB of receive memory, close the TCP window, and deadlock
//!   (observed on loopback with ~130 bytes pinning ~100 KiB). Hence a timer:
//!   a prefix left waiting longer than the stall timeout
//!   ([`DEFAULT_STALL_TIMEOUT`]) is taken out.
//! - **A wake-up brings no new byte.** tokio keeps a socket whose peer has
//!   shut down readable forever, so waiting again would spin; the prefix is
//!   taken and the next `recv` sees the end of stream.
//!
//! The timer needs a tokio runtime with time enabled.
//!
//! # Handshake
//!
//! [`HandoffStream::new_client`] starts in handshake mode: it takes from the
//! kernel only the HTTP response head (through the `\r\n\r\n`, at most
//! [`HANDSHAKE_MAX`] bytes), because tungstenite's handshake would otherwise
//! swallow frames sent in the same segment as the `101` response. After that it
//! switches to frame mode by itself.
//!
//! # Shared descriptor
//!
//! `O_NONBLOCK` and the other file-status flags belong to the open file
//! description, shared by every process holding the socket. This module only
//! ever turns `O_NONBLOCK` on, never off, and every `recv` also passes
//! `MSG_DONTWAIT`, so it cannot block even if someone else cleared the flag.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

mod frame;
mod recv;
#[cfg(test)]
mod tests;
mod tls;

use crate::tls::io::TlsIo;

use frame::{ends_mid_frame, frame_extent, Extent};
pub(crate) use recv::sys_recv;

/// Frames up to this many bytes (header included) are only ever taken from the
/// kernel whole.
pub const DEFAULT_WHOLE_FRAME_MAX: usize = 32 * 1024;
/// Upper bound for `whole_frame_max` (it sizes the peek buffer).
pub const WHOLE_FRAME_MAX_CAP: usize = 1024 * 1024;
/// Frames whose payload exceeds this many bytes are refused (`InvalidData`).
pub const DEFAULT_FRAME_MAX: usize = 64 * 1024 * 1024;
/// Longest HTTP response head accepted during the handshake.
pub const HANDSHAKE_MAX: usize = 16 * 1024;
/// How long an incomplete frame may wait in the kernel before it is taken
/// out and read piecemeal (see "Stalls" in the module docs).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_millis(10);

/// Why the stream refused the bytes it read. Surfaces as an [`io::Error`] of
/// kind [`io::ErrorKind::InvalidData`] whose inner error is this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// A frame header announces a payload above the hard limit.
    FrameTooLarge { size: u64, limit: usize },
    /// A frame header tungstenite cannot parse (e.g. a reserved opcode).
    MalformedHeader(String),
    /// No `\r\n\r\n` within the first `limit` bytes of the HTTP response.
    HandshakeTooLarge { limit: usize },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameTooLarge { size, limit } => write!(
                f,
                "websocket frame of {size} bytes exceeds the {limit}-byte limit"
            ),
            Self::MalformedHeader(why) => write!(f, "malformed websocket frame header: {why}"),
            Self::HandshakeTooLarge { limit } => write!(
                f,
                "HTTP handshake response head exceeds {limit} bytes without a blank line"
            ),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the HTTP response head; nothing taken from the kernel beyond it.
    Handshake,
    /// Reading websocket frames.
    Frames,
}

/// The frame tungstenite is currently being fed (whole in `unfed`).
#[derive(Debug, Clone, Copy)]
struct Feeding {
    /// Index in `unfed` of the frame's first byte.
    start: usize,
    /// Index in `unfed` one past the frame's last byte.
    end: usize,
    data: bool,
    fin: bool,
}

/// See the [module documentation](self).
pub struct HandoffStream {
    tcp: TcpStream,
    /// Armed while an incomplete frame waits in the kernel (see "Stalls").
    stall_timer: Option<Pin<Box<Sleep>>>,
    stall_timeout: Duration,
    st: State,
}

/// Everything but the socket, so that it can be borrowed mutably inside
/// `TcpStream::try_io`.
struct State {
    mode: Mode,
    /// Bytes taken from the kernel; `unfed[fed..]` not yet given to tungstenite.
    unfed: Vec<u8>,
    fed: usize,
    /// Handshake bytes at `unfed[fed..fed + raw]`, fed verbatim (no framing).
    raw: usize,
    current: Option<Feeding>,
    /// Data frames of the message tungstenite is assembling.
    replay: Vec<u8>,
    /// `unfed` ends in the middle of a frame whose rest is still in the kernel.
    mid_frame: bool,
    /// Length of the incomplete prefix last left waiting in the kernel.
    waiting_on: Option<usize>,
    /// Take the incomplete prefix in view out of the kernel (stall fallback).
    take_prefix: bool,
    /// Handshake: bytes of the head taken so far and `\r\n\r\n` match state.
    head_len: usize,
    head_match: usize,
    /// How many incomplete prefixes were taken out by the stall fallback.
    stalls: u64,
    whole_frame_max: usize,
    frame_max: usize,
    peek_buf: Vec<u8>,
    /// For a `wss://` connection: the TLS record layer between the socket
    /// and `unfed`, which then holds plaintext (see [`tls`]).
    tls: Option<Box<TlsIo>>,
    /// Read before waiting for readiness: kernel TLS, just adopted or after
    /// a read that returned data (see [`tls`]).
    read_first: bool,
}

impl fmt::Debug for HandoffStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffStream")
            .field("tcp", &self.tcp)
            .field("mode", &self.st.mode)
            .field("unfed", &(self.st.unfed.len() - self.st.fed))
            .field("replay", &self.st.replay.len())
            .field("mid_frame", &self.st.mid_frame)
            .field("stalls", &self.st.stalls)
            .finish_non_exhaustive()
    }
}

impl HandoffStream {
    fn build(tcp: TcpStream, mode: Mode, unfed: Vec<u8>) -> Self {
        Self {
            tcp,
            stall_timer: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            st: State {
                mode,
                mid_frame: ends_mid_frame(&unfed),
                unfed,
                fed: 0,
                raw: 0,
                current: None,
                replay: Vec::new(),
                waiting_on: None,
                take_prefix: false,
                head_len: 0,
                head_match: 0,
                stalls: 0,
                whole_frame_max: DEFAULT_WHOLE_FRAME_MAX,
                frame_max: DEFAULT_FRAME_MAX,
                peek_buf: Vec::new(),
                tls: None,
                read_first: false,
            },
        }
    }

    /// A fresh connection before the websocket handshake (handshake mode).
    pub fn new_client(tcp: TcpStream) -> Self {
        Self::build(tcp, Mode::Handshake, Vec::new())
    }

    /// Resume a connection handed over mid-stream: `leftovers` (from
    /// [`leftovers()`](Self::leftovers) of the previous owner, or empty after a
    /// crash) are fed first. Frame mode.
    pub fn resume(tcp: TcpStream, leftovers: Vec<u8>) -> Self {
        Self::build(tcp, Mode::Frames, leftovers)
    }

    /// Same as [`resume`](Self::resume) from an owned descriptor. Turns
    /// `O_NONBLOCK` on (never off: the flag is shared with every other holder
    /// of the socket). Must be called inside a tokio runtime.
    pub fn resume_fd(fd: OwnedFd, leftovers: Vec<u8>) -> io::Result<Self> {
        let std_tcp = std::net::TcpStream::from(fd);
        std_tcp.set_nonblocking(true)?;
        Ok(Self::resume(TcpStream::from_std(std_tcp)?, leftovers))
    }

    /// Set the largest frame (header included) taken from the kernel only
    /// whole (capped at [`WHOLE_FRAME_MAX_CAP`]), and the largest frame
    /// payload accepted at all.
    pub fn with_limits(mut self, whole_frame_max: usize, frame_max: usize) -> Self {
        self.st.whole_frame_max = whole_frame_max.min(WHOLE_FRAME_MAX_CAP);
        self.st.frame_max = frame_max;
        self
    }

    /// Set how long an incomplete frame may wait in the kernel before it is
    /// taken out and read like a big frame (see "Stalls" in the module docs).
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// `replay ++ unfed`: everything taken from the kernel that tungstenite
    /// has not turned into a delivered message. Exact whenever the application
    /// holds control between messages (tungstenite's buffer is then empty by
    /// construction). Hand it to [`resume`](Self::resume) of the next owner.
    pub fn leftovers(&self) -> Vec<u8> {
        let st = &self.st;
        let from = st.current.map_or(st.fed, |c| c.start);
        let mut out = Vec::with_capacity(st.replay.len() + st.unfed.len() - from);
        out.extend_from_slice(&st.replay);
        out.extend_from_slice(&st.unfed[from..]);
        out
    }

    /// Whether the kernel's read position is at a frame boundary, i.e. a new
    /// owner starting from the descriptor alone would parse the connection
    /// correctly. Always true when `next()` has just returned a message; false
    /// only while a read is pending on a frame taken out piecemeal (bigger
    /// than `whole_frame_max`, or stalled).
    pub fn kernel_at_frame_boundary(&self) -> bool {
        !self.st.mid_frame
    }

    /// The underlying socket (e.g. to duplicate its descriptor for handover).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Take more bytes from the kernel into `unfed`. Called only when `unfed`
    /// holds no complete frame to feed. Ready(Ok(false)) = end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        self.st.compact();
        loop {
            if let Some(timer) = self.stall_timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    self.stall_timer = None;
                    self.st.take_prefix = true;
                }
            }
            let ready = match self.tcp.poll_read_ready(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => true,
                Poll::Pending if self.st.take_prefix || self.st.read_first => false,
                Poll::Pending => return Poll::Pending,
            };
            let fd = self.tcp.as_fd();
            let st = &mut self.st;
            // A stalled prefix is taken without readiness: it is known to be
            // there, and readiness is already cleared for whatever comes next.
            let stepped = if ready {
                self.tcp.try_io(Interest::READABLE, || st.step(fd))
            } else {
                st.step(fd)
            };
            // Kernel TLS: a read that returned data may have opened a
            // KeyUpdate ahead, which makes the socket unreadable to epoll
            // until it is read: read on until the kernel says WouldBlock
            // before waiting for readiness again (see `tls`).
            self.st.read_first = matches!(stepped, Ok(true)) && self.st.kernel_tls();
            match stepped {
                Ok(got_bytes) => {
                    self.stall_timer = None;
                    let st = &mut self.st;
                    st.take_prefix = false;
                    st.mid_frame = ends_mid_frame(&st.unfed[st.raw..]);
                    if !got_bytes && st.mid_frame {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in the middle of a websocket frame",
                        )));
                    }
                    return Poll::Ready(Ok(got_bytes));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.st.waiting_on.is_some() && self.stall_timer.is_none() {
                        self.stall_timer = Some(Box::pin(tokio::time::sleep(self.stall_timeout)));
                    }
                    if !ready {
                        return Poll::Pending; // read readiness was polled: registered
                    }
                    // Readiness was cleared by `try_io`: poll it again to register.
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl State {
    /// Give tungstenite up to the rest of the current frame from `unfed`.
    /// Returns false when `unfed` holds no complete frame to give.
    fn feed(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        if self.raw > 0 {
            let n = self.raw.min(buf.remaining());
            buf.put_slice(&self.unfed[self.fed..self.fed + n]);
            self.fed += n;
            self.raw -= n;
            return Ok(true);
        }
        let cur = match self.current {
            Some(cur) => cur,
            None => match frame_extent(&self.unfed[self.fed..], self.frame_max)? {
                Extent::Complete { len, data, fin } => {
                    let cur = Feeding {
                        start: self.fed,
                        end: self.fed + len,
                        data,
                        fin,
                    };
                    self.current = Some(cur);
                    cur
                }
                Extent::Partial { .. } => return Ok(false),
            },
        };
        let n = (cur.end - self.fed).min(buf.remaining());
        buf.put_slice(&self.unfed[self.fed..self.fed + n]);
        self.fed += n;
        if self.fed == cur.end {
            self.current = None;
            if cur.data {
                if cur.fin {
                    self.replay.clear();
                } else {
                    self.replay
                        .extend_from_slice(&self.unfed[cur.start..cur.end]);
                }
            }
            if self.fed == self.unfed.len() {
                self.unfed.clear();
                self.fed = 0;
            }
        }
        Ok(true)
    }

    /// Drop the fed bytes (only the incomplete tail remains).
    fn compact(&mut self) {
        if self.fed > 0 {
            self.unfed.drain(..self.fed);
            self.fed = 0;
        }
    }
}

impl AsyncRead for HandoffStream {
    /// Never yields more than the rest of the current frame per call, and
    /// never part of a frame that is not whole in memory.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.st.feed(buf)? {
                return Poll::Ready(Ok(()));
            }
            let filled = ready!(this.poll_fill(cx))?;
            // A KeyUpdate answer sealed while reading goes out now.
            this.poll_write_tls_backlog(cx);
            if !filled {
                return Poll::Ready(Ok(())); // end of stream, at a frame boundary
            }
        }
    }
}

impl AsyncWrite for HandoffStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.st.tls.is_some() {
            return this.poll_write_tls(cx, buf);
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.st.tls.is_some() {
            let buf = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return this.poll_write_tls(cx, buf);
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.st.tls.is_none() && self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain_tls(cx, 0))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_close_notify(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl AsFd for HandoffStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }
}

impl AsRawFd for HandoffStream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}

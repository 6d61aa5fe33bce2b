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
//! Whenever tungstenite hands a message to the application (and whenever a read
//! returns `Pending`), all of the following hold:
//!
//! 1. **tungstenite's read buffer is empty.** Each `poll_read` hands over at
//!    most the rest of *one* websocket frame, and a frame is only handed over
//!    once it is entirely in memory here, so tungstenite's own buffered reads
//!    can never run past the frame it is assembling, and it never has to wait
//!    for the middle of a frame. The last byte of every frame it has been given
//!    has been consumed by the time it returns anything.
//! 2. **Every byte read from the kernel is accounted for here**, as
//!    [`leftovers()`](HandoffStream::leftovers) `= replay ++ unfed`:
//!    - `unfed`: bytes taken from the kernel but not handed to tungstenite yet
//!      (whole frames, or the beginning of one big frame, see 3);
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
//!    the next owner can still parse the connection from the kernel. Frames are
//!    taken from the kernel whole: peek (`MSG_PEEK`), parse the headers, then
//!    `recv` exactly the bytes of the complete frames in the peeked window. The
//!    one exception is a frame larger than `whole_frame_max` (default
//!    [`DEFAULT_WHOLE_FRAME_MAX`]): the kernel's receive window may never hold
//!    it whole, so it is read as it arrives (into `unfed`; it is still not
//!    given to tungstenite until complete). While such a frame is partly read
//!    the kernel is mid-frame: a crash then tears that connection, but a
//!    planned handover still works because the partial frame is part of the
//!    leftovers, and the next stream finishes reading it.
//!
//! Because of (1) and (2), `leftovers()` is exact at any point where the
//! application holds control between two `next()` calls, including after a
//! `next()` future was cancelled.
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
use std::io::{self, Cursor};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::frame::FrameHeader;

#[cfg(test)]
mod tests;

/// Frames up to this many bytes (header included) are only ever taken from the
/// kernel whole.
pub const DEFAULT_WHOLE_FRAME_MAX: usize = 32 * 1024;
/// Frames whose payload exceeds this many bytes are refused (`InvalidData`).
pub const DEFAULT_FRAME_MAX: usize = 64 * 1024 * 1024;
/// Longest HTTP response head accepted during the handshake.
pub const HANDSHAKE_MAX: usize = 16 * 1024;
/// Longest possible websocket frame header.
const MAX_HEADER_LEN: usize = 14;
/// Most bytes taken from the kernel by one `recv` while streaming a big frame.
const STREAM_CHUNK: usize = 64 * 1024;

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
    whole_frame_max: usize,
    frame_max: usize,
    peek_buf: Vec<u8>,
}

impl fmt::Debug for HandoffStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffStream")
            .field("tcp", &self.tcp)
            .field("mode", &self.mode)
            .field("unfed", &(self.unfed.len() - self.fed))
            .field("replay", &self.replay.len())
            .field("mid_frame", &self.mid_frame)
            .finish_non_exhaustive()
    }
}

impl HandoffStream {
    fn build(tcp: TcpStream, mode: Mode, unfed: Vec<u8>) -> Self {
        let mid_frame = ends_mid_frame(&unfed);
        Self {
            tcp,
            mode,
            unfed,
            fed: 0,
            raw: 0,
            current: None,
            replay: Vec::new(),
            mid_frame,
            whole_frame_max: DEFAULT_WHOLE_FRAME_MAX,
            frame_max: DEFAULT_FRAME_MAX,
            peek_buf: Vec::new(),
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
    /// whole, and the largest frame payload accepted at all.
    pub fn with_limits(mut self, whole_frame_max: usize, frame_max: usize) -> Self {
        self.whole_frame_max = whole_frame_max;
        self.frame_max = frame_max;
        self
    }

    /// `replay ++ unfed`: everything taken from the kernel that tungstenite
    /// has not turned into a delivered message. Exact whenever the application
    /// holds control between messages (tungstenite's buffer is then empty by
    /// construction). Hand it to [`resume`](Self::resume) of the next owner.
    pub fn leftovers(&self) -> Vec<u8> {
        let from = self.current.map_or(self.fed, |c| c.start);
        let mut out = Vec::with_capacity(self.replay.len() + self.unfed.len() - from);
        out.extend_from_slice(&self.replay);
        out.extend_from_slice(&self.unfed[from..]);
        out
    }

    /// Whether the kernel's read position is at a frame boundary, i.e. a new
    /// owner starting from the descriptor alone would parse the connection
    /// correctly. False only while a frame bigger than `whole_frame_max` is
    /// partly read.
    pub fn kernel_at_frame_boundary(&self) -> bool {
        !self.mid_frame
    }

    /// The underlying socket (e.g. to duplicate its descriptor for handover).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Give tungstenite up to the rest of the current frame from `unfed`.
    /// Returns false when `unfed` holds no complete frame to give.
    fn feed(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        if self.raw > 0 {
            let n = self.raw.min(buf.remaining());
            buf.put_slice(&self.unfed[self.fed..self.fed + n]);
            self.fed += n;
            self.raw -= n;
            self.compact_if_drained();
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
            self.compact_if_drained();
        }
        Ok(true)
    }

    fn compact_if_drained(&mut self) {
        if self.fed == self.unfed.len() && self.current.is_none() {
            self.unfed.clear();
            self.fed = 0;
        }
    }

    /// Take more bytes from the kernel into `unfed`. Called only when `unfed`
    /// holds no complete frame to feed. Ready(Ok(false)) = end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.fed > 0 {
            self.unfed.drain(..self.fed);
            self.fed = 0;
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            let fd = self.tcp.as_raw_fd();
            let mut reader = Reader {
                fd,
                mode: &mut self.mode,
                unfed: &mut self.unfed,
                raw: &mut self.raw,
                peek_buf: &mut self.peek_buf,
                whole_frame_max: self.whole_frame_max,
                frame_max: self.frame_max,
            };
            match self.tcp.try_io(Interest::READABLE, || reader.step()) {
                Ok(got_bytes) => {
                    self.mid_frame = ends_mid_frame(&self.unfed[self.raw..]);
                    if !got_bytes && self.mid_frame {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in the middle of a websocket frame",
                        )));
                    }
                    return Poll::Ready(Ok(got_bytes));
                }
                // Readiness was cleared by `try_io`: poll it again to register.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// One non-blocking read step on the socket, run under `try_io`.
struct Reader<'a> {
    fd: RawFd,
    mode: &'a mut Mode,
    unfed: &'a mut Vec<u8>,
    raw: &'a mut usize,
    peek_buf: &'a mut Vec<u8>,
    whole_frame_max: usize,
    frame_max: usize,
}

impl Reader<'_> {
    /// Ok(true): bytes were appended to `unfed`; Ok(false): end of stream;
    /// Err(WouldBlock): nothing usable yet (readiness gets cleared).
    fn step(&mut self) -> io::Result<bool> {
        match *self.mode {
            Mode::Handshake => self.step_handshake(),
            Mode::Frames if self.unfed.is_empty() => self.step_whole_frames(),
            Mode::Frames => self.step_streaming(),
        }
    }

    fn peek(&mut self, window: usize) -> io::Result<usize> {
        if self.peek_buf.len() < window {
            self.peek_buf.resize(window, 0);
        }
        sys_recv(self.fd, &mut self.peek_buf[..window], MsgFlags::MSG_PEEK)
    }

    /// `recv` up to `want` bytes onto the end of `unfed`.
    fn take(&mut self, want: usize) -> io::Result<usize> {
        let old = self.unfed.len();
        self.unfed.resize(old + want, 0);
        let got = sys_recv(self.fd, &mut self.unfed[old..], MsgFlags::empty());
        self.unfed.truncate(old + *got.as_ref().unwrap_or(&0));
        got
    }

    fn step_handshake(&mut self) -> io::Result<bool> {
        let n = self.peek(HANDSHAKE_MAX)?;
        if n == 0 {
            return Ok(false);
        }
        let Some(end) = self.peek_buf[..n]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
        else {
            if n >= HANDSHAKE_MAX {
                return Err(StreamError::HandshakeTooLarge {
                    limit: HANDSHAKE_MAX,
                }
                .into());
            }
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let got = self.take(end)?;
        if got == 0 {
            return Ok(false);
        }
        *self.raw += got;
        if got == end {
            *self.mode = Mode::Frames;
        }
        Ok(true)
    }

    /// Kernel at a frame boundary: take only the complete frames in view.
    fn step_whole_frames(&mut self) -> io::Result<bool> {
        let n = self.peek(self.whole_frame_max.saturating_add(MAX_HEADER_LEN))?;
        if n == 0 {
            return Ok(false);
        }
        let mut whole = 0;
        loop {
            match frame_extent(&self.peek_buf[whole..n], self.frame_max) {
                Ok(Extent::Complete { len, .. }) => whole += len,
                // A big frame at the front: start streaming it.
                Ok(Extent::Partial {
                    total: Some(total), ..
                }) if whole == 0 && total > self.whole_frame_max => {
                    whole = n;
                    break;
                }
                Ok(Extent::Partial { .. }) => break,
                // Deliver the good frames first; the error comes next time.
                Err(_) if whole > 0 => break,
                Err(e) => return Err(e),
            }
        }
        if whole == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(self.take(whole)? > 0)
    }

    /// Kernel mid-frame (`unfed` is a frame's beginning): read on, but never
    /// past that frame's end (or its header's end while that is incomplete).
    fn step_streaming(&mut self) -> io::Result<bool> {
        let missing = match frame_extent(self.unfed, self.frame_max)? {
            Extent::Partial { missing, .. } => missing,
            // Unreachable: a complete frame would have been fed first.
            Extent::Complete { .. } => return Ok(true),
        };
        Ok(self.take(missing.min(STREAM_CHUNK))? > 0)
    }
}

fn sys_recv(fd: RawFd, buf: &mut [u8], flags: MsgFlags) -> io::Result<usize> {
    loop {
        match recv(fd, buf, flags | MsgFlags::MSG_DONTWAIT) {
            Err(Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// `buf` starts with a whole frame of `len` bytes.
    Complete { len: usize, data: bool, fin: bool },
    /// `buf` is a strict prefix of a frame; `missing` bytes more complete the
    /// frame, or only its header if that is incomplete (`total` unknown).
    Partial {
        missing: usize,
        total: Option<usize>,
    },
}

/// Locate the end of the frame starting at `buf[0]`.
fn frame_extent(buf: &[u8], frame_max: usize) -> io::Result<Extent> {
    let mut cursor = Cursor::new(buf);
    let (header, payload) = match FrameHeader::parse(&mut cursor) {
        Err(e) => return Err(StreamError::MalformedHeader(e.to_string()).into()),
        Ok(None) => {
            let header_len: usize = match buf {
                [_, second, ..] => {
                    let ext = match second & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    2 + ext + if second & 0x80 != 0 { 4 } else { 0 }
                }
                _ => 2,
            };
            return Ok(Extent::Partial {
                missing: header_len.saturating_sub(buf.len()).max(1),
                total: None,
            });
        }
        Ok(Some(parsed)) => parsed,
    };
    let too_large = StreamError::FrameTooLarge {
        size: payload,
        limit: frame_max,
    };
    if payload > frame_max as u64 {
        return Err(too_large.into());
    }
    let total = usize::try_from(payload)
        .ok()
        .and_then(|p| p.checked_add(cursor.position() as usize))
        .ok_or(too_large)?;
    Ok(if total <= buf.len() {
        Extent::Complete {
            len: total,
            data: matches!(header.opcode, OpCode::Data(_)),
            fin: header.is_final,
        }
    } else {
        Extent::Partial {
            missing: total - buf.len(),
            total: Some(total),
        }
    })
}

/// Whether `buf` (a sequence of frames) ends inside a frame.
fn ends_mid_frame(mut buf: &[u8]) -> bool {
    loop {
        if buf.is_empty() {
            return false;
        }
        match frame_extent(buf, usize::MAX) {
            Ok(Extent::Complete { len, .. }) => buf = &buf[len..],
            Ok(Extent::Partial { .. }) | Err(_) => return true,
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
            if this.feed(buf)? {
                return Poll::Ready(Ok(()));
            }
            if !ready!(this.poll_fill(cx))? {
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
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
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

//! Taking bytes out of the kernel, never more than the stream may hold: one
//! non-blocking read step per mode (the HTTP response head, complete frames
//! only, the rest of one frame piecemeal), the stall fallback that takes an
//! incomplete prefix out (see "Stalls" in the [module docs](super)), and the
//! `recv` every read of the socket goes through.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use super::frame::{frame_extent, head_match, Extent, HEAD_END};
use super::{Mode, State, StreamError, HANDSHAKE_MAX};

/// Longest possible websocket frame header.
const MAX_HEADER_LEN: usize = 14;
/// Most bytes taken from the kernel by one `recv` while streaming a big frame.
const STREAM_CHUNK: usize = 64 * 1024;

impl State {
    /// One non-blocking read step on the socket, run under `try_io`.
    /// Ok(true): bytes were appended to `unfed`; Ok(false): end of stream;
    /// Err(WouldBlock): nothing usable yet (readiness gets cleared).
    pub(super) fn step(&mut self, sock: BorrowedFd<'_>) -> io::Result<bool> {
        if self.tls.is_some() {
            return self.step_tls(sock);
        }
        let fd = sock.as_raw_fd();
        match self.mode {
            Mode::Handshake => self.step_handshake(fd),
            Mode::Frames if self.unfed.is_empty() => self.step_whole_frames(fd),
            Mode::Frames => self.step_streaming(fd),
        }
    }

    fn peek(&mut self, fd: RawFd, window: usize) -> io::Result<usize> {
        if self.peek_buf.len() < window {
            self.peek_buf.resize(window, 0);
        }
        sys_recv(fd, &mut self.peek_buf[..window], MsgFlags::MSG_PEEK)
    }

    /// `recv` up to `want` bytes onto the end of `unfed`.
    fn take(&mut self, fd: RawFd, want: usize) -> io::Result<usize> {
        self.waiting_on = None;
        let old = self.unfed.len();
        self.unfed.resize(old + want, 0);
        let got = sys_recv(fd, &mut self.unfed[old..], MsgFlags::empty());
        self.unfed.truncate(old + *got.as_ref().unwrap_or(&0));
        got
    }

    /// An incomplete prefix of `n` bytes is in view: wait for more (leaving it
    /// in the kernel), or take it if waiting is stalled. A wake-up that brought
    /// no new byte means end of stream (tokio keeps a closed socket readable)
    /// or a spurious event; either way waiting longer would spin.
    fn wait_or_take(&mut self, n: usize) -> io::Result<usize> {
        if self.take_prefix || self.waiting_on == Some(n) {
            self.stalls += 1;
            return Ok(n);
        }
        self.waiting_on = Some(n);
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn step_handshake(&mut self, fd: RawFd) -> io::Result<bool> {
        let n = self.peek(fd, HANDSHAKE_MAX - self.head_len)?;
        if n == 0 {
            return Ok(false);
        }
        let mut state = self.head_match;
        let end = self.peek_buf[..n].iter().position(|&b| {
            state = head_match(state, b);
            state == HEAD_END.len()
        });
        let want = match end {
            Some(i) => i + 1,
            None if self.head_len + n >= HANDSHAKE_MAX => {
                return Err(StreamError::HandshakeTooLarge {
                    limit: HANDSHAKE_MAX,
                }
                .into())
            }
            None => self.wait_or_take(n)?,
        };
        let got = self.take(fd, want)?;
        let old = self.unfed.len() - got;
        for &b in &self.unfed[old..] {
            self.head_match = head_match(self.head_match, b);
        }
        self.head_len += got;
        self.raw += got;
        if self.head_match == HEAD_END.len() {
            self.mode = Mode::Frames;
        }
        Ok(got > 0)
    }

    /// Kernel at a frame boundary: take only the complete frames in view.
    fn step_whole_frames(&mut self, fd: RawFd) -> io::Result<bool> {
        let n = self.peek(fd, self.whole_frame_max.saturating_add(MAX_HEADER_LEN))?;
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
            whole = self.wait_or_take(n)?;
        }
        Ok(self.take(fd, whole)? > 0)
    }

    /// Kernel mid-frame (`unfed` is a frame's beginning): read on, but never
    /// past that frame's end (or its header's end while that is incomplete).
    fn step_streaming(&mut self, fd: RawFd) -> io::Result<bool> {
        let missing = match frame_extent(&self.unfed, self.frame_max)? {
            Extent::Partial { missing, .. } => missing,
            // Unreachable: a complete frame would have been fed first.
            Extent::Complete { .. } => return Ok(true),
        };
        Ok(self.take(fd, missing.min(STREAM_CHUNK))? > 0)
    }
}

pub(crate) fn sys_recv(fd: RawFd, buf: &mut [u8], flags: MsgFlags) -> io::Result<usize> {
    loop {
        match recv(fd, buf, flags | MsgFlags::MSG_DONTWAIT) {
            Err(Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

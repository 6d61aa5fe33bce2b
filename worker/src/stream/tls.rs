//! [`HandoffStream`] over TLS: the record layer ([`TlsIo`]) sits between the
//! socket and `unfed`, which then holds plaintext. Everything the module
//! docs say of frames holds for the plaintext: tungstenite is fed whole
//! frames only, and `leftovers = replay ++ unfed`. The ciphertext of an
//! incomplete record and the session's keys and sequence numbers travel
//! beside the leftovers ([`HandoffStream::tls_session`]).
//!
//! Under kernel TLS the kernel opens the records and `unfed` is filled
//! straight from it; writes go to the socket as plaintext, after any
//! control record (a KeyUpdate answer) the kernel has not taken yet.
//!
//! Kernel TLS and readiness: a `recvmsg` returns records of one content
//! type only, and the kernel may already have opened the next record when
//! it stops. If that record is a KeyUpdate, the kernel reports the socket
//! unreadable until the KeyUpdate has been read and the new key installed,
//! and new data does not change that. So after a read that returned data,
//! and on a socket just adopted from another process, the stream reads
//! again before it waits for readiness: only a `WouldBlock` means there is
//! nothing to read (`State::read_first`).
//!
//! The kernel read position is not kept on a record boundary after the
//! handshake: a TLS session is never continued after a crash (its sequence
//! numbers are unknown), only after a planned freeze, which hands the partial
//! record over.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use handoff_protocol::tls::{Records, TlsSession};
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

use super::frame::{head_match, HEAD_END};
use super::{HandoffStream, Mode, State, StreamError, HANDSHAKE_MAX};
use crate::tls::io::{TlsIo, Writer, OUT_HIGH_WATER};
use crate::tls::TlsError;

impl HandoffStream {
    /// A fresh `wss://` connection whose TLS handshake is done (`early`: any
    /// plaintext rustls had already decrypted), before the websocket
    /// handshake.
    pub(crate) fn new_client_tls(tcp: TcpStream, tls: TlsIo, early: Vec<u8>) -> io::Result<Self> {
        let mut s = Self::build(tcp, Mode::Handshake, Vec::new());
        s.st.tls = Some(Box::new(tls));
        s.st.unfed = early;
        s.st.scan_head(0)?;
        Ok(s)
    }

    /// Continue a handed-over `wss://` connection: its descriptor, plaintext
    /// leftovers and TLS session.
    pub(crate) fn resume_tls_fd(
        fd: OwnedFd,
        leftovers: Vec<u8>,
        session: &TlsSession,
    ) -> Result<Self, TlsError> {
        let mut s = Self::resume_fd(fd, leftovers).map_err(TlsError::Io)?;
        let tls = TlsIo::resume(s.tcp.as_fd(), session)?;
        // Kernel TLS: the previous owner's last read may have opened a
        // KeyUpdate ahead (see the module docs): read before waiting.
        s.st.read_first = tls.records() == Records::Kernel;
        s.st.tls = Some(Box::new(tls));
        Ok(s)
    }

    /// Who protects this connection's records (`None` for plain TCP).
    pub fn tls_records(&self) -> Option<Records> {
        self.st.tls.as_ref().map(|t| t.records())
    }

    /// The TLS session to hand over (`None` for plain TCP). Fails while
    /// sealed records still wait to be written: flush first.
    pub fn tls_session(&self) -> Result<Option<TlsSession>, TlsError> {
        self.st.tls.as_ref().map(|t| t.export()).transpose()
    }

    /// Give up ([`Writer::HandedOver`]) or take back ([`Writer::Live`]) the
    /// right to write records. Given up when the session is handed over, so
    /// that this process can never seal a record under a sequence number
    /// its successor uses; taken back when the handoff is abandoned (the
    /// successor never wrote).
    pub fn set_tls_writer(&mut self, writer: Writer) {
        if let Some(t) = self.st.tls.as_mut() {
            t.set_writer(writer);
        }
    }

    pub(super) fn poll_write_tls(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain_tls(cx, OUT_HIGH_WATER))?;
        let Some(tls) = self.st.tls.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
        };
        if tls.kernel().is_some() {
            // The kernel seals; control records went out first (drained
            // above, whatever the limit).
            tls.check_writer()?;
            return Pin::new(&mut self.tcp).poll_write(cx, buf);
        }
        let n = tls.seal_data(buf)?;
        // Start writing now; what the socket does not take waits for the
        // next write or flush.
        let _ = self.poll_drain_tls(cx, 0)?;
        Poll::Ready(Ok(n))
    }

    /// Write sealed records until at most `limit` bytes wait (under kernel
    /// TLS: hand every waiting control record to the kernel).
    pub(super) fn poll_drain_tls(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<io::Result<()>> {
        let Some(tls) = self.st.tls.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if let Some(k) = tls.kernel() {
            while k.control_pending() {
                ready!(self.tcp.poll_write_ready(cx))?;
                let sock = self.tcp.as_fd();
                match self.tcp.try_io(Interest::WRITABLE, || k.send_control(sock)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            return Poll::Ready(Ok(()));
        }
        while tls.unwritten().len() > limit {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, tls.unwritten()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            tls.wrote(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Records sealed while reading (a KeyUpdate answer): write what the
    /// socket takes now, without waiting.
    pub(super) fn poll_write_tls_backlog(&mut self, cx: &mut Context<'_>) {
        let _ = self.poll_drain_tls(cx, 0);
    }

    /// A clean end of the session: `close_notify`, written out.
    pub(super) fn poll_close_notify(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(tls) = self.st.tls.as_mut() {
            if tls.writer() == Writer::Live {
                tls.seal_close_notify()?;
            }
        }
        self.poll_drain_tls(cx, 0)
    }
}

impl State {
    /// Whether the kernel protects this connection's records.
    pub(super) fn kernel_tls(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.records() == Records::Kernel)
    }

    /// Read and open records; application data lands in `unfed`.
    pub(super) fn step_tls(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        let Some(tls) = self.tls.as_mut() else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let old = self.unfed.len();
        let more = tls.recv(fd, &mut self.unfed)?;
        if self.mode == Mode::Handshake {
            self.scan_head(old)?;
        }
        Ok(more)
    }

    /// Handshake mode over TLS: the plaintext from `unfed[from..]` belongs
    /// to the HTTP response head up to its blank line, fed verbatim; what
    /// follows is websocket frames.
    pub(super) fn scan_head(&mut self, from: usize) -> io::Result<()> {
        for i in from..self.unfed.len() {
            self.head_match = head_match(self.head_match, self.unfed[i]);
            self.head_len += 1;
            self.raw += 1;
            if self.head_match == HEAD_END.len() {
                self.mode = Mode::Frames;
                return Ok(());
            }
            if self.head_len >= HANDSHAKE_MAX {
                return Err(StreamError::HandshakeTooLarge {
                    limit: HANDSHAKE_MAX,
                }
                .into());
            }
        }
        Ok(())
    }
}

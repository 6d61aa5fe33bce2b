//! A TLS connection's state between the socket and the websocket framing:
//! the record layer (in user space: ciphertext taken from the kernel and
//! sealed records waiting to be written; or in the kernel, see
//! [`super::kernel_io`]), post-handshake messages (KeyUpdate,
//! NewSessionTicket), alerts, and who may write.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use handoff_protocol::tls::{Records, TlsSession, TlsVersion};
use nix::sys::socket::MsgFlags;

use super::kernel::{self, KernelTls, Path};
use super::kernel_io::KernelRecords;
use super::record::{
    Opened, RecordLayer, ALERT, APPLICATION_DATA, HANDSHAKE, HEADER_LEN, MAX_CIPHERTEXT,
    MAX_PLAINTEXT,
};
use super::TlsError;
use crate::stream::sys_recv;

/// Ciphertext read from the kernel at most per `recv`.
const READ_CHUNK: usize = 64 * 1024;
/// Longest post-handshake message accepted (a NewSessionTicket is far
/// smaller).
const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;
/// Sealed bytes waiting for the socket above which writes wait (back
/// pressure towards tungstenite).
pub(crate) const OUT_HIGH_WATER: usize = 256 * 1024;

const HS_HELLO_REQUEST: u8 = 0;
const HS_NEW_SESSION_TICKET: u8 = 4;
pub(crate) const HS_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;
const ALERT_LEVEL_WARNING: u8 = 1;
const CLOSE_NOTIFY: [u8; 2] = [ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY];

/// Who may write records on this connection. A record sealed by two
/// processes under the same sequence number reuses a nonce, so exactly one
/// may: the session's state is handed over only together with the right to
/// write, and comes back only when the handoff is abandoned. (Under kernel
/// TLS the kernel numbers the records of every holder of the socket, but
/// the same rule keeps two processes from interleaving their messages.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// This process writes.
    Live,
    /// The session was handed over: nothing more is sealed here.
    HandedOver,
}

/// Whether the peer may still send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Open,
    /// `close_notify` received: the peer sends nothing more.
    Closed,
}

/// Records protected here, with ring.
struct UserRecords {
    layer: RecordLayer,
    /// `cin[..cin_len]`: ciphertext from the kernel not yet opened (always
    /// less than one record once processed).
    cin: Vec<u8>,
    cin_len: usize,
    /// Sealed records; `out[out_pos..]` not yet written to the socket.
    out: Vec<u8>,
    out_pos: usize,
}

enum Layer {
    User(Box<UserRecords>),
    Kernel(KernelRecords),
}

pub(crate) struct TlsIo {
    layer: Layer,
    /// A post-handshake message split over records.
    hs: Vec<u8>,
    writer: Writer,
    reading: Reading,
    /// KeyUpdates received so far (for logs and tests).
    pub(crate) key_updates: u64,
    /// NewSessionTickets received (and dropped) so far.
    pub(crate) tickets: u64,
}

impl TlsIo {
    fn with(layer: Layer, hs: Vec<u8>) -> Self {
        TlsIo {
            layer,
            hs,
            writer: Writer::Live,
            reading: Reading::Open,
            key_updates: 0,
            tickets: 0,
        }
    }

    /// Records protected in user space, from `session`'s keys.
    pub(crate) fn user(session: &TlsSession) -> Result<Self, TlsError> {
        Ok(Self::user_layer(RecordLayer::new(session)?))
    }

    pub(crate) fn user_layer(layer: RecordLayer) -> Self {
        Self::with(
            Layer::User(Box::new(UserRecords {
                layer,
                cin: vec![0; READ_CHUNK + HEADER_LEN + MAX_CIPHERTEXT],
                cin_len: 0,
                out: Vec::new(),
                out_pos: 0,
            })),
            Vec::new(),
        )
    }

    /// A session just negotiated on `sock`: install it into the kernel where
    /// `path` (from [`kernel::choose`]) says so, else keep it here.
    pub(crate) fn take_over(
        sock: BorrowedFd<'_>,
        session: &TlsSession,
        path: &Path,
    ) -> Result<Self, TlsError> {
        let rekey = match (kernel::kernel_tls(), path) {
            (KernelTls::Available { rekey, .. }, Path::Kernel) => *rekey,
            _ => return Self::user(session),
        };
        kernel::install(sock, session)?;
        let records = KernelRecords::new(session, rekey);
        Ok(Self::with(Layer::Kernel(records), Vec::new()))
    }

    /// Continue a handed-over session on `sock`.
    pub(crate) fn resume(sock: BorrowedFd<'_>, session: &TlsSession) -> Result<Self, TlsError> {
        handoff_protocol::tls::keep_keys_out_of_core_dumps().map_err(TlsError::Undumpable)?;
        session.verify()?;
        if session.pending.len() > HEADER_LEN + MAX_CIPHERTEXT {
            return Err(TlsError::BadSession(format!(
                "{} bytes of pending ciphertext (more than a record)",
                session.pending.len()
            )));
        }
        let installed = kernel::installed(sock).map_err(TlsError::Io)?;
        let io = match session.records {
            Records::UserSpace if installed => {
                return Err(TlsError::BadSession(
                    "a user-space session on a socket with kernel TLS".into(),
                ))
            }
            Records::UserSpace => {
                let mut io = Self::user(session)?;
                if let Layer::User(u) = &mut io.layer {
                    u.cin[..session.pending.len()].copy_from_slice(&session.pending);
                    u.cin_len = session.pending.len();
                }
                io
            }
            // Never trust the manifest alone here: writing to a socket
            // without kernel TLS would send plaintext.
            Records::Kernel if !installed => {
                return Err(TlsError::BadSession(
                    "the session says kernel TLS but the socket has none".into(),
                ))
            }
            Records::Kernel => {
                if !session.pending.is_empty() {
                    return Err(TlsError::BadSession(
                        "ciphertext handed over beside a kernel TLS socket".into(),
                    ));
                }
                let rekey = match kernel::kernel_tls() {
                    KernelTls::Available { rekey, .. } => *rekey,
                    KernelTls::Absent(_) => kernel::Rekey::Unsupported,
                };
                Self::with(
                    Layer::Kernel(KernelRecords::adopt(session, rekey)?),
                    Vec::new(),
                )
            }
        };
        Ok(TlsIo {
            hs: session.pending_handshake.clone(),
            ..io
        })
    }

    /// The session to hand over. Every sealed record must have reached the
    /// kernel: a record left here would be lost, and re-sealing it later
    /// would reuse its nonce.
    pub(crate) fn export(&self) -> Result<TlsSession, TlsError> {
        match &self.layer {
            Layer::User(u) => {
                if u.out_pos < u.out.len() {
                    return Err(TlsError::Unflushed {
                        bytes: u.out.len() - u.out_pos,
                    });
                }
                Ok(u.layer.export(u.cin[..u.cin_len].to_vec(), self.hs.clone()))
            }
            Layer::Kernel(k) => k.export(self.hs.clone()),
        }
    }

    /// Who protects the records.
    pub(crate) fn records(&self) -> Records {
        match self.layer {
            Layer::User(_) => Records::UserSpace,
            Layer::Kernel(_) => Records::Kernel,
        }
    }

    pub(crate) fn set_writer(&mut self, writer: Writer) {
        self.writer = writer;
    }

    pub(crate) fn writer(&self) -> Writer {
        self.writer
    }

    /// Sequence numbers of the next record to send and to receive.
    #[cfg(test)]
    pub(crate) fn seqs(&self) -> (u64, u64) {
        match &self.layer {
            Layer::User(u) => u.layer.seqs(),
            Layer::Kernel(_) => (0, 0),
        }
    }

    fn version(&self) -> TlsVersion {
        match &self.layer {
            Layer::User(u) => u.layer.version(),
            Layer::Kernel(k) => k.version(),
        }
    }

    /// Take what the kernel has and append the application data to
    /// `plain`. Ok(true): plaintext was appended; Ok(false): end of stream
    /// (`close_notify`, or TCP end between records); `WouldBlock`: nothing
    /// new.
    pub(crate) fn recv(&mut self, sock: BorrowedFd<'_>, plain: &mut Vec<u8>) -> io::Result<bool> {
        if matches!(self.layer, Layer::Kernel(_)) {
            return self.recv_kernel(sock, plain);
        }
        loop {
            if self.reading == Reading::Closed {
                return Ok(false);
            }
            let Layer::User(u) = &mut self.layer else {
                return Err(io::ErrorKind::Unsupported.into()); // checked above
            };
            let n = sys_recv(sock.as_raw_fd(), &mut u.cin[u.cin_len..], MsgFlags::empty())?;
            if n == 0 {
                if u.cin_len > 0 {
                    return Err(TlsError::TruncatedRecord.into());
                }
                return Ok(false);
            }
            u.cin_len += n;
            let before = plain.len();
            self.process(plain)?;
            if plain.len() > before {
                return Ok(true);
            }
        }
    }

    /// Kernel TLS: application data is read straight into `plain`; other
    /// records come one at a time with their content type.
    fn recv_kernel(&mut self, sock: BorrowedFd<'_>, plain: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            if self.reading == Reading::Closed {
                return Ok(false);
            }
            let Layer::Kernel(k) = &mut self.layer else {
                return Err(io::ErrorKind::Unsupported.into());
            };
            let old = plain.len();
            plain.resize(old + READ_CHUNK, 0);
            let got = k.recv(sock.as_raw_fd(), &mut plain[old..]);
            tracing::trace!(?got, "kernel TLS: recvmsg");
            let (n, typ) = match got {
                Ok(got) => got,
                Err(e) => {
                    plain.truncate(old);
                    return Err(e);
                }
            };
            if n == 0 {
                plain.truncate(old);
                if !self.hs.is_empty() {
                    return Err(TlsError::TruncatedRecord.into());
                }
                return Ok(false);
            }
            if typ == APPLICATION_DATA {
                plain.truncate(old + n);
                if !self.hs.is_empty() {
                    return Err(TlsError::MalformedHandshake(
                        "application data inside a fragmented handshake message".into(),
                    )
                    .into());
                }
                return Ok(true);
            }
            let body = plain[old..old + n].to_vec();
            plain.truncate(old);
            tracing::debug!(typ, len = n, "kernel TLS: control record");
            self.control_record(Some(sock), typ, &body)?;
        }
    }

    /// A record that is not application data, opened.
    fn control_record(
        &mut self,
        sock: Option<BorrowedFd<'_>>,
        typ: u8,
        body: &[u8],
    ) -> Result<(), TlsError> {
        match typ {
            HANDSHAKE => self.handshake_bytes(sock, body),
            ALERT => {
                self.reading = alert(self.version(), body)?;
                Ok(())
            }
            other => Err(TlsError::UnexpectedRecord(other)),
        }
    }

    /// Open the complete records in `cin` (user space).
    fn process(&mut self, plain: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut pos = 0;
        loop {
            let Layer::User(u) = &mut self.layer else {
                return Err(TlsError::BadSession("no user-space record layer".into()));
            };
            if self.reading != Reading::Open || u.cin_len - pos < HEADER_LEN {
                break;
            }
            let header: [u8; HEADER_LEN] = u.cin[pos..pos + HEADER_LEN]
                .try_into()
                .map_err(|_| TlsError::TruncatedRecord)?;
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len > MAX_CIPHERTEXT {
                return Err(TlsError::RecordOverflow(len));
            }
            if u.cin_len - pos < HEADER_LEN + len {
                break;
            }
            let body = pos + HEADER_LEN..pos + HEADER_LEN + len;
            let Opened { typ, plaintext } = u.layer.open(header, &mut u.cin[body.clone()])?;
            let data = body.start + plaintext.start..body.start + plaintext.end;
            pos = body.end;
            if typ == APPLICATION_DATA {
                if !self.hs.is_empty() {
                    return Err(TlsError::MalformedHandshake(
                        "application data inside a fragmented handshake message".into(),
                    ));
                }
                plain.extend_from_slice(&u.cin[data]);
            } else {
                let bytes = u.cin[data].to_vec();
                // User space needs no descriptor for control records.
                self.control_record(None, typ, &bytes)?;
            }
        }
        if let Layer::User(u) = &mut self.layer {
            u.cin.copy_within(pos..u.cin_len, 0);
            u.cin_len -= pos;
        }
        Ok(())
    }

    fn handshake_bytes(
        &mut self,
        sock: Option<BorrowedFd<'_>>,
        bytes: &[u8],
    ) -> Result<(), TlsError> {
        self.hs.extend_from_slice(bytes);
        loop {
            if self.hs.len() < 4 {
                return Ok(());
            }
            let len = usize::from(self.hs[1]) << 16
                | usize::from(self.hs[2]) << 8
                | usize::from(self.hs[3]);
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(TlsError::MalformedHandshake(format!(
                    "post-handshake message of {len} bytes"
                )));
            }
            if self.hs.len() < 4 + len {
                return Ok(());
            }
            let msg: Vec<u8> = self.hs.drain(..4 + len).collect();
            match msg[0] {
                // Session resumption is off: tickets are not kept.
                HS_NEW_SESSION_TICKET => self.tickets += 1,
                // No renegotiation (RFC 5746 lets a client ignore it).
                HS_HELLO_REQUEST => {}
                HS_KEY_UPDATE => self.key_update(sock, &msg[4..])?,
                other => return Err(TlsError::UnexpectedHandshake(other)),
            }
        }
    }

    /// RFC 8446 §4.6.3: switch the receiving keys; answer a request with our
    /// own KeyUpdate (sealed under the old sending keys), then switch those.
    fn key_update(&mut self, sock: Option<BorrowedFd<'_>>, body: &[u8]) -> Result<(), TlsError> {
        let requested = match body {
            [0] => false,
            [1] => true,
            _ => return Err(TlsError::MalformedHandshake("bad KeyUpdate".into())),
        };
        if !self.hs.is_empty() {
            return Err(TlsError::MalformedHandshake(
                "KeyUpdate not at the end of its record".into(),
            ));
        }
        if requested && self.writer != Writer::Live {
            return Err(TlsError::HandedOver);
        }
        match (&mut self.layer, sock) {
            (Layer::User(u), _) => {
                u.layer.update_rx()?;
                if requested {
                    let mut out = std::mem::take(&mut u.out);
                    let sealed = u
                        .layer
                        .seal(HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0], &mut out);
                    u.out = out;
                    sealed?;
                    u.layer.update_tx()?;
                }
            }
            (Layer::Kernel(k), Some(sock)) => k.key_update(sock, requested)?,
            (Layer::Kernel(_), None) => {
                return Err(TlsError::BadSession("kernel TLS without its socket".into()))
            }
        }
        self.key_updates += 1;
        Ok(())
    }

    /// Seal up to one record of application data; returns how much of `data`
    /// was taken. User space only: under kernel TLS the plaintext is written
    /// to the socket as it is.
    pub(crate) fn seal_data(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        if self.writer != Writer::Live {
            return Err(TlsError::HandedOver);
        }
        let Layer::User(u) = &mut self.layer else {
            return Err(TlsError::BadSession(
                "kernel TLS seals its own records".into(),
            ));
        };
        let n = data.len().min(MAX_PLAINTEXT);
        u.compact_out();
        u.layer.seal(APPLICATION_DATA, &data[..n], &mut u.out)?;
        Ok(n)
    }

    /// Whether this process may write application data now (kernel TLS).
    pub(crate) fn check_writer(&self) -> Result<(), TlsError> {
        match self.writer {
            Writer::Live => Ok(()),
            Writer::HandedOver => Err(TlsError::HandedOver),
        }
    }

    /// Seal (or, under kernel TLS, queue) a `close_notify` alert: a clean
    /// end of the session.
    pub(crate) fn seal_close_notify(&mut self) -> Result<(), TlsError> {
        self.check_writer()?;
        match &mut self.layer {
            Layer::User(u) => {
                u.compact_out();
                u.layer.seal(ALERT, &CLOSE_NOTIFY, &mut u.out)
            }
            Layer::Kernel(k) => {
                k.queue_close_notify(CLOSE_NOTIFY);
                Ok(())
            }
        }
    }

    /// Sealed bytes not yet written (user space; always empty under kernel
    /// TLS, whose control records wait in [`Self::kernel`]).
    pub(crate) fn unwritten(&self) -> &[u8] {
        match &self.layer {
            Layer::User(u) => &u.out[u.out_pos..],
            Layer::Kernel(_) => &[],
        }
    }

    pub(crate) fn wrote(&mut self, n: usize) {
        if let Layer::User(u) = &mut self.layer {
            u.out_pos += n;
            u.compact_out();
        }
    }

    /// The kernel's record layer, if it has this session.
    pub(crate) fn kernel(&mut self) -> Option<&mut KernelRecords> {
        match &mut self.layer {
            Layer::Kernel(k) => Some(k),
            Layer::User(_) => None,
        }
    }
}

impl UserRecords {
    fn compact_out(&mut self) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }
}

/// What an alert from the server means for reading: `close_notify` ends it;
/// `user_canceled` and TLS 1.2 warnings are ignored; anything else is fatal.
fn alert(version: TlsVersion, body: &[u8]) -> Result<Reading, TlsError> {
    let [level, description] = body else {
        return Err(TlsError::MalformedHandshake(format!(
            "alert of {} bytes",
            body.len()
        )));
    };
    match *description {
        ALERT_CLOSE_NOTIFY => Ok(Reading::Closed),
        ALERT_USER_CANCELED => Ok(Reading::Open),
        _ if *level == ALERT_LEVEL_WARNING && version == TlsVersion::Tls12 => Ok(Reading::Open),
        d => Err(TlsError::PeerAlert(d)),
    }
}

#[cfg(test)]
#[path = "io_tests.rs"]
mod tests;

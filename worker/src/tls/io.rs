//! A TLS connection's state between the socket and the websocket framing:
//! ciphertext taken from the kernel, post-handshake messages (KeyUpdate,
//! NewSessionTicket), alerts, sealed records waiting to be written, and who
//! may write.

use std::io;
use std::os::fd::RawFd;

use handoff_protocol::tls::{TlsSession, TlsVersion};
use nix::sys::socket::MsgFlags;

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
const HS_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;
const ALERT_LEVEL_WARNING: u8 = 1;

/// Who may write records on this connection. A record sealed by two
/// processes under the same sequence number reuses a nonce, so exactly one
/// may: the session's state is handed over only together with the right to
/// write, and comes back only when the handoff is abandoned.
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

pub(crate) struct TlsIo {
    layer: RecordLayer,
    /// `cin[..cin_len]`: ciphertext from the kernel not yet opened (always
    /// less than one record once processed).
    cin: Vec<u8>,
    cin_len: usize,
    /// A post-handshake message split over records.
    hs: Vec<u8>,
    /// Sealed records; `out[out_pos..]` not yet written to the socket.
    out: Vec<u8>,
    out_pos: usize,
    writer: Writer,
    reading: Reading,
    /// KeyUpdates received so far (for logs and tests).
    pub(crate) key_updates: u64,
    /// NewSessionTickets received (and dropped) so far.
    pub(crate) tickets: u64,
}

impl TlsIo {
    pub(crate) fn new(layer: RecordLayer) -> Self {
        TlsIo {
            layer,
            cin: vec![0; READ_CHUNK + HEADER_LEN + MAX_CIPHERTEXT],
            cin_len: 0,
            hs: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            writer: Writer::Live,
            reading: Reading::Open,
            key_updates: 0,
            tickets: 0,
        }
    }

    /// Continue a handed-over session.
    pub(crate) fn resume(session: &TlsSession) -> Result<Self, TlsError> {
        session.verify()?;
        if session.pending.len() > HEADER_LEN + MAX_CIPHERTEXT {
            return Err(TlsError::BadSession(format!(
                "{} bytes of pending ciphertext (more than a record)",
                session.pending.len()
            )));
        }
        let mut io = TlsIo::new(RecordLayer::new(session)?);
        io.cin[..session.pending.len()].copy_from_slice(&session.pending);
        io.cin_len = session.pending.len();
        io.hs = session.pending_handshake.clone();
        Ok(io)
    }

    /// The session to hand over. Every sealed record must have reached the
    /// kernel: a record left here would be lost, and re-sealing it later
    /// would reuse its nonce.
    pub(crate) fn export(&self) -> Result<TlsSession, TlsError> {
        if self.out_pos < self.out.len() {
            return Err(TlsError::Unflushed {
                bytes: self.out.len() - self.out_pos,
            });
        }
        Ok(self
            .layer
            .export(self.cin[..self.cin_len].to_vec(), self.hs.clone()))
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
        self.layer.seqs()
    }

    /// Take what the kernel has, open every complete record and append the
    /// application data to `plain`. Ok(true): plaintext was appended;
    /// Ok(false): end of stream (`close_notify`, or TCP end between records);
    /// `WouldBlock`: nothing new.
    pub(crate) fn recv(&mut self, fd: RawFd, plain: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            if self.reading == Reading::Closed {
                return Ok(false);
            }
            let n = sys_recv(fd, &mut self.cin[self.cin_len..], MsgFlags::empty())?;
            if n == 0 {
                if self.cin_len > 0 {
                    return Err(TlsError::TruncatedRecord.into());
                }
                return Ok(false);
            }
            self.cin_len += n;
            let before = plain.len();
            self.process(plain)?;
            if plain.len() > before {
                return Ok(true);
            }
        }
    }

    /// Open the complete records in `cin`.
    fn process(&mut self, plain: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut pos = 0;
        while self.reading == Reading::Open && self.cin_len - pos >= HEADER_LEN {
            let header: [u8; HEADER_LEN] = self.cin[pos..pos + HEADER_LEN]
                .try_into()
                .map_err(|_| TlsError::TruncatedRecord)?;
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len > MAX_CIPHERTEXT {
                return Err(TlsError::RecordOverflow(len));
            }
            if self.cin_len - pos < HEADER_LEN + len {
                break;
            }
            let body = pos + HEADER_LEN..pos + HEADER_LEN + len;
            let Opened { typ, plaintext } = self.layer.open(header, &mut self.cin[body.clone()])?;
            let data = body.start + plaintext.start..body.start + plaintext.end;
            pos = body.end;
            match typ {
                APPLICATION_DATA => {
                    if !self.hs.is_empty() {
                        return Err(TlsError::MalformedHandshake(
                            "application data inside a fragmented handshake message".into(),
                        ));
                    }
                    plain.extend_from_slice(&self.cin[data]);
                }
                HANDSHAKE => {
                    let bytes = self.cin[data].to_vec();
                    self.handshake_bytes(&bytes)?;
                }
                ALERT => self.reading = alert(self.layer.version(), &self.cin[data])?,
                other => return Err(TlsError::UnexpectedRecord(other)),
            }
        }
        self.cin.copy_within(pos..self.cin_len, 0);
        self.cin_len -= pos;
        Ok(())
    }

    fn handshake_bytes(&mut self, bytes: &[u8]) -> Result<(), TlsError> {
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
                HS_KEY_UPDATE => self.key_update(&msg[4..])?,
                other => return Err(TlsError::UnexpectedHandshake(other)),
            }
        }
    }

    /// RFC 8446 §4.6.3: switch the receiving keys; answer a request with our
    /// own KeyUpdate (sealed under the old sending keys), then switch those.
    fn key_update(&mut self, body: &[u8]) -> Result<(), TlsError> {
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
        self.layer.update_rx()?;
        self.key_updates += 1;
        if requested {
            if self.writer != Writer::Live {
                return Err(TlsError::HandedOver);
            }
            let mut out = std::mem::take(&mut self.out);
            let sealed = self
                .layer
                .seal(HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0], &mut out);
            self.out = out;
            sealed?;
            self.layer.update_tx()?;
        }
        Ok(())
    }

    /// Seal up to one record of application data; returns how much of `data`
    /// was taken.
    pub(crate) fn seal_data(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        if self.writer != Writer::Live {
            return Err(TlsError::HandedOver);
        }
        let n = data.len().min(MAX_PLAINTEXT);
        self.compact_out();
        self.layer
            .seal(APPLICATION_DATA, &data[..n], &mut self.out)?;
        Ok(n)
    }

    /// Seal a `close_notify` alert (a clean end of the session).
    pub(crate) fn seal_close_notify(&mut self) -> Result<(), TlsError> {
        if self.writer != Writer::Live {
            return Err(TlsError::HandedOver);
        }
        self.compact_out();
        self.layer.seal(
            ALERT,
            &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY],
            &mut self.out,
        )
    }

    fn compact_out(&mut self) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Sealed bytes not yet written.
    pub(crate) fn unwritten(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    pub(crate) fn wrote(&mut self, n: usize) {
        self.out_pos += n;
        self.compact_out();
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
mod tests {
    use super::*;
    use handoff_protocol::tls::{Secret, TlsCipher, TlsDirection, TlsHash};
    use rand::{Rng, SeedableRng};

    fn layer(version: TlsVersion, cipher: TlsCipher) -> RecordLayer {
        let key_len = if cipher == TlsCipher::Aes128Gcm {
            16
        } else {
            32
        };
        let dir = |b: u8| TlsDirection {
            seq: 0,
            key: Secret::new(vec![b; key_len]),
            iv: Secret::new(vec![b; 12]),
            traffic_secret: Secret::new(vec![b; 32]),
        };
        RecordLayer::new(&TlsSession {
            version,
            cipher,
            hash: TlsHash::Sha256,
            tx: dir(1),
            rx: dir(2),
            pending: Vec::new(),
            pending_handshake: Vec::new(),
            checksum: 0,
        })
        .unwrap()
    }

    /// Whatever a peer sends, the record layer answers with an error or
    /// plaintext, never a panic: random bytes, and random bytes behind
    /// well-formed record headers of every content type and length.
    #[test]
    fn garbage_from_the_peer_is_an_error_never_a_panic() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
            for cipher in [
                TlsCipher::Aes128Gcm,
                TlsCipher::Aes256Gcm,
                TlsCipher::Chacha20Poly1305,
            ] {
                for _ in 0..300 {
                    let mut io = TlsIo::new(layer(version, cipher));
                    let len = rng.gen_range(0..300usize);
                    let mut input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    if rng.gen_bool(0.7) && input.len() >= HEADER_LEN {
                        let body = (input.len() - HEADER_LEN) as u16;
                        input[0] = rng.gen_range(20..25);
                        input[3..5].copy_from_slice(&body.to_be_bytes());
                    }
                    io.cin[..input.len()].copy_from_slice(&input);
                    io.cin_len = input.len();
                    let mut plain = Vec::new();
                    let _ = io.process(&mut plain);
                    assert!(plain.is_empty(), "garbage authenticated as data");
                }
            }
        }
    }

    /// A record sealed by one side opens on the other; flipping any byte of
    /// it fails authentication.
    #[test]
    fn sealed_records_open_and_tampering_is_caught() {
        for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
            for cipher in [
                TlsCipher::Aes128Gcm,
                TlsCipher::Aes256Gcm,
                TlsCipher::Chacha20Poly1305,
            ] {
                let mut writer = layer(version, cipher);
                // The reader's receiving keys are the writer's sending keys.
                let mut session = writer.export(Vec::new(), Vec::new());
                std::mem::swap(&mut session.tx, &mut session.rx);
                let mut out = Vec::new();
                writer.seal(APPLICATION_DATA, b"hello", &mut out).unwrap();
                for flip in [HEADER_LEN, out.len() - 1] {
                    let mut bad = out.clone();
                    bad[flip] ^= 1;
                    let mut reader = TlsIo::new(RecordLayer::new(&session.clone().seal()).unwrap());
                    reader.cin[..bad.len()].copy_from_slice(&bad);
                    reader.cin_len = bad.len();
                    let err = reader.process(&mut Vec::new()).unwrap_err();
                    assert!(matches!(err, TlsError::BadRecordMac { .. }), "{err}");
                }
                let mut reader = TlsIo::new(RecordLayer::new(&session.seal()).unwrap());
                reader.cin[..out.len()].copy_from_slice(&out);
                reader.cin_len = out.len();
                let mut plain = Vec::new();
                reader.process(&mut plain).unwrap();
                assert_eq!(plain, b"hello", "{version:?} {cipher:?}");
            }
        }
    }
}

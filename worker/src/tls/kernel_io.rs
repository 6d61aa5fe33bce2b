//! The record layer of a session the kernel protects: what user space still
//! does once `TLS_TX`/`TLS_RX` are installed. The kernel opens and seals
//! records; records that are not application data reach this process with
//! their content type (post-handshake messages, alerts), and control records
//! it sends (a KeyUpdate answer, `close_notify`) go out through a control
//! message. A TLS 1.3 KeyUpdate re-derives the keys from the traffic
//! secrets kept here and installs them ([`kernel::rekey`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use handoff_protocol::tls::{
    Records, Secret, TlsCipher, TlsDirection, TlsHash, TlsSession, TlsVersion,
};

use super::kernel::{self, Rekey, Side};
use super::record::{next_traffic_secret, traffic_keys};
use super::TlsError;

/// A control record the kernel has not taken yet, and what follows it.
struct Control {
    typ: u8,
    body: Vec<u8>,
    then: AfterSend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterSend {
    Nothing,
    /// Our KeyUpdate went out under the old key: switch the sending key.
    UpdateTx,
}

pub(crate) struct KernelRecords {
    version: TlsVersion,
    cipher: TlsCipher,
    hash: TlsHash,
    /// TLS 1.3 application traffic secrets (empty for TLS 1.2).
    tx_secret: Secret,
    rx_secret: Secret,
    rekey: Rekey,
    /// In order; application data waits until this is empty, so that it is
    /// sealed after (and under the key that follows) every control record.
    control: VecDeque<Control>,
}

impl KernelRecords {
    /// Kernel TLS just installed from `session` (its keys now live in the
    /// socket; only the traffic secrets are kept).
    pub(crate) fn new(session: &TlsSession, rekey: Rekey) -> Self {
        KernelRecords {
            version: session.version,
            cipher: session.cipher,
            hash: session.hash,
            tx_secret: session.tx.traffic_secret.clone(),
            rx_secret: session.rx.traffic_secret.clone(),
            rekey,
            control: VecDeque::new(),
        }
    }

    /// A handed-over kernel TLS session: it must hold no record keys (the
    /// socket has them) and, for TLS 1.3, both traffic secrets at the
    /// hash's length, without which the next KeyUpdate would install wrong
    /// keys.
    pub(crate) fn adopt(session: &TlsSession, rekey: Rekey) -> Result<Self, TlsError> {
        let bad = |why: String| Err(TlsError::BadSession(format!("kernel TLS session: {why}")));
        for (name, d) in [("sending", &session.tx), ("receiving", &session.rx)] {
            if !d.key.is_empty() || !d.iv.is_empty() {
                return bad(format!("{name} record keys handed over beside the socket"));
            }
            let want = match (session.version, session.hash) {
                (TlsVersion::Tls12, _) => 0,
                (TlsVersion::Tls13, TlsHash::Sha256) => 32,
                (TlsVersion::Tls13, TlsHash::Sha384) => 48,
            };
            if d.traffic_secret.len() != want {
                return bad(format!(
                    "{name} traffic secret of {} bytes, not {want}",
                    d.traffic_secret.len()
                ));
            }
        }
        Ok(Self::new(session, rekey))
    }

    pub(crate) fn version(&self) -> TlsVersion {
        self.version
    }

    /// The session to hand over: no record keys (the descriptor has them),
    /// the traffic secrets, and `hs`, a post-handshake message in pieces.
    pub(crate) fn export(&self, hs: Vec<u8>) -> Result<TlsSession, TlsError> {
        if !self.control.is_empty() {
            let bytes = self.control.iter().map(|c| c.body.len()).sum();
            return Err(TlsError::Unflushed { bytes });
        }
        let dir = |secret: &Secret| TlsDirection {
            seq: 0,
            key: Secret::default(),
            iv: Secret::default(),
            traffic_secret: secret.clone(),
        };
        Ok(TlsSession {
            version: self.version,
            cipher: self.cipher,
            hash: self.hash,
            records: Records::Kernel,
            tx: dir(&self.tx_secret),
            rx: dir(&self.rx_secret),
            pending: Vec::new(),
            pending_handshake: hs,
            checksum: 0,
        }
        .seal())
    }

    /// Read what the kernel opened into `buf`: (bytes, content type).
    pub(crate) fn recv(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
        kernel::recv(fd, buf).map_err(|e| match e.raw_os_error() {
            // The kernel's words for a record it refused to open.
            Some(code) if code == nix::libc::EBADMSG => {
                TlsError::KernelRecord("bad_record_mac or a malformed record (EBADMSG)".into())
                    .into()
            }
            Some(code) if code == nix::libc::EMSGSIZE => {
                TlsError::KernelRecord("record_overflow (EMSGSIZE)".into()).into()
            }
            Some(code) if code == nix::libc::EINVAL => {
                TlsError::KernelRecord("wrong protocol version in a record (EINVAL)".into()).into()
            }
            Some(code) if code == nix::libc::EKEYEXPIRED => TlsError::KernelRecord(
                "records after a KeyUpdate whose key was not installed (EKEYEXPIRED)".into(),
            )
            .into(),
            _ => e,
        })
    }

    /// The server updated its sending key: install the next receiving key,
    /// and queue our own KeyUpdate if it asked for one.
    pub(crate) fn key_update(
        &mut self,
        sock: BorrowedFd<'_>,
        requested: bool,
    ) -> Result<(), TlsError> {
        if self.version != TlsVersion::Tls13 {
            return Err(TlsError::UnexpectedHandshake(super::io::HS_KEY_UPDATE));
        }
        if self.rekey == Rekey::Unsupported {
            return Err(TlsError::KernelCannotRekey);
        }
        self.rx_secret = self.next(Side::Rx, sock, &self.rx_secret)?;
        tracing::debug!(requested, "kernel TLS: the server's KeyUpdate followed");
        if requested {
            self.control.push_back(Control {
                typ: super::record::HANDSHAKE,
                body: vec![super::io::HS_KEY_UPDATE, 0, 0, 1, 0],
                then: AfterSend::UpdateTx,
            });
        }
        Ok(())
    }

    /// Derive the next generation from `secret`, install it, return it.
    fn next(&self, side: Side, sock: BorrowedFd<'_>, secret: &Secret) -> Result<Secret, TlsError> {
        let next = Secret::new(next_traffic_secret(self.hash, secret.expose()));
        let (key, iv) = traffic_keys(self.cipher, self.hash, next.expose());
        let keys = TlsDirection {
            seq: 0,
            key: Secret::new(key),
            iv: Secret::new(iv),
            traffic_secret: Secret::default(),
        };
        kernel::rekey(sock, side, self.version, self.cipher, &keys)?;
        Ok(next)
    }

    pub(crate) fn queue_close_notify(&mut self, alert: [u8; 2]) {
        self.control.push_back(Control {
            typ: super::record::ALERT,
            body: alert.to_vec(),
            then: AfterSend::Nothing,
        });
    }

    pub(crate) fn control_pending(&self) -> bool {
        !self.control.is_empty()
    }

    /// Hand the next control record to the kernel (`WouldBlock` if the
    /// socket is full), then switch keys if it was our KeyUpdate.
    pub(crate) fn send_control(&mut self, sock: BorrowedFd<'_>) -> io::Result<()> {
        let Some(next) = self.control.front() else {
            return Ok(());
        };
        kernel::send_control(sock, next.typ, &next.body)?;
        let then = next.then;
        self.control.pop_front();
        if then == AfterSend::UpdateTx {
            self.tx_secret = self.next(Side::Tx, sock, &self.tx_secret)?;
            tracing::debug!("kernel TLS: our KeyUpdate sent, sending key updated");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(key: usize, secret: usize) -> TlsSession {
        let dir = || TlsDirection {
            seq: 0,
            key: Secret::new(vec![1; key]),
            iv: Secret::new(vec![2; key.min(12)]),
            traffic_secret: Secret::new(vec![3; secret]),
        };
        TlsSession {
            version: TlsVersion::Tls13,
            cipher: TlsCipher::Aes128Gcm,
            hash: TlsHash::Sha256,
            records: Records::Kernel,
            tx: dir(),
            rx: dir(),
            pending: Vec::new(),
            pending_handshake: Vec::new(),
            checksum: 0,
        }
    }

    /// A manifest that says kernel TLS carries only the traffic secrets;
    /// record keys beside it, or a secret of the wrong size, are refused.
    #[test]
    fn a_handed_over_kernel_session_holds_exactly_the_traffic_secrets() {
        assert!(KernelRecords::adopt(&session(0, 32), Rekey::Supported).is_ok());
        let err = KernelRecords::adopt(&session(16, 32), Rekey::Supported).err();
        assert!(format!("{err:?}").contains("record keys"), "{err:?}");
        let err = KernelRecords::adopt(&session(0, 0), Rekey::Supported).err();
        assert!(format!("{err:?}").contains("traffic secret"), "{err:?}");
        let err = KernelRecords::adopt(&session(0, 48), Rekey::Supported).err();
        assert!(format!("{err:?}").contains("not 32"), "{err:?}");
    }
}

//! The TLS session state of a connection handed over mid-session.
//!
//! A descriptor carries a TCP connection, not the TLS session on top of it:
//! the record keys and sequence numbers live in the owning process. A frozen
//! worker hands them over in [`TlsSession`], next to the connection's
//! leftovers, and the successor continues the same session: no new handshake.
//!
//! These are live secrets. They travel only over the inherited socketpair
//! (never in a checkpoint, so never on disk), their `Debug` output is
//! redacted, they are zeroed when dropped, and a CRC-32 over every field
//! ([`TlsSession::seal`] / [`TlsSession::verify`]) catches a corrupted manifest
//! before a single record is decrypted with a wrong key. A process that
//! holds them keeps them out of core dumps
//! ([`keep_keys_out_of_core_dumps`]).
//!
//! Where the kernel protects the records ([`Records::Kernel`]: kernel TLS
//! installed on the socket), the descriptor itself carries the keys and
//! sequence numbers, so the session holds no record keys at all: only what
//! the kernel cannot keep, the TLS 1.3 traffic secrets from which a KeyUpdate
//! derives the next keys.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroize;

/// Bytes that must not leak: redacted in `Debug`, zeroed on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Secret(#[serde(with = "serde_bytes")] Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Keep this process's memory, which holds live TLS keys, out of core dumps
/// and away from debuggers of the same user (`PR_SET_DUMPABLE` 0): the
/// kernel then writes no core file for it, and refuses `ptrace` and
/// `/proc/PID/mem` to any process without `CAP_SYS_PTRACE` (root can still
/// attach, with `gcore` say). An `execve` resets it, so every process that
/// takes keys calls this itself, before it has them.
pub fn keep_keys_out_of_core_dumps() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

/// The protocol version the session was negotiated at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The record protection (AEAD) of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsCipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// TLS 1.3's traffic-secret hash (for KeyUpdate): SHA-384 for AES-256-GCM,
/// SHA-256 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsHash {
    Sha256,
    Sha384,
}

/// Who protects the session's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Records {
    /// The owning process (keys and sequence numbers in [`TlsDirection`]).
    UserSpace,
    /// The kernel (`TCP_ULP` "tls" with `TLS_TX`/`TLS_RX` installed on the
    /// socket): the descriptor carries keys and sequence numbers, and the
    /// directions hold only the TLS 1.3 traffic secrets (`seq` 0, `key`
    /// and `iv` empty).
    Kernel,
}

/// One direction of the record layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsDirection {
    /// Sequence number of the next record in this direction.
    pub seq: u64,
    pub key: Secret,
    /// The static IV (TLS 1.3, ChaCha20 in 1.2) or the 4-byte salt followed by
    /// the explicit-nonce base (AES-GCM in 1.2).
    pub iv: Secret,
    /// TLS 1.3: the current application traffic secret, from which KeyUpdate
    /// derives the next one. Empty for TLS 1.2 (no KeyUpdate).
    pub traffic_secret: Secret,
}

/// Everything a successor needs to continue a TLS session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSession {
    pub version: TlsVersion,
    pub cipher: TlsCipher,
    pub hash: TlsHash,
    /// Who protects the records: this manifest or the socket.
    pub records: Records,
    /// Client → server.
    pub tx: TlsDirection,
    /// Server → client.
    pub rx: TlsDirection,
    /// Ciphertext of an incomplete record taken from the kernel.
    #[serde(with = "serde_bytes")]
    pub pending: Vec<u8>,
    /// Plaintext of a post-handshake message (KeyUpdate, NewSessionTicket)
    /// whose rest is in records not yet received.
    #[serde(with = "serde_bytes")]
    pub pending_handshake: Vec<u8>,
    /// CRC-32 of all the above, set by [`TlsSession::seal`].
    pub checksum: u32,
}

/// A handed-over session that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TlsSessionError {
    #[error("TLS session state is corrupt (checksum {expected:#010x}, computed {actual:#010x})")]
    Checksum { expected: u32, actual: u32 },
}

impl TlsSession {
    fn crc(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&[
            self.version as u8,
            self.cipher as u8,
            self.hash as u8,
            self.records as u8,
        ]);
        for d in [&self.tx, &self.rx] {
            h.update(&d.seq.to_be_bytes());
            for part in [&d.key, &d.iv, &d.traffic_secret] {
                h.update(&(part.len() as u64).to_be_bytes());
                h.update(part.expose());
            }
        }
        for part in [&self.pending, &self.pending_handshake] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize()
    }

    /// Compute and store the checksum.
    pub fn seal(mut self) -> Self {
        self.checksum = self.crc();
        self
    }

    /// Check the checksum set by [`TlsSession::seal`].
    pub fn verify(&self) -> Result<(), TlsSessionError> {
        let actual = self.crc();
        if actual == self.checksum {
            Ok(())
        } else {
            Err(TlsSessionError::Checksum {
                expected: self.checksum,
                actual,
            })
        }
    }
}

/// A sealed TLS 1.3 session whose keys, IVs and traffic secrets are all
/// `byte`, to look for in memory.
#[cfg(test)]
pub(crate) fn session_of(byte: u8) -> TlsSession {
    let dir = || TlsDirection {
        seq: 1,
        key: Secret::new(vec![byte; 32]),
        iv: Secret::new(vec![byte; 12]),
        traffic_secret: Secret::new(vec![byte; 32]),
    };
    TlsSession {
        version: TlsVersion::Tls13,
        cipher: TlsCipher::Aes256Gcm,
        hash: TlsHash::Sha384,
        records: Records::UserSpace,
        tx: dir(),
        rx: dir(),
        pending: Vec::new(),
        pending_handshake: Vec::new(),
        checksum: 0,
    }
    .seal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> TlsSession {
        let dir = |seq, b| TlsDirection {
            seq,
            key: Secret::new(vec![b; 16]),
            iv: Secret::new(vec![b + 1; 12]),
            traffic_secret: Secret::new(vec![b + 2; 32]),
        };
        TlsSession {
            version: TlsVersion::Tls13,
            cipher: TlsCipher::Aes128Gcm,
            hash: TlsHash::Sha256,
            records: Records::UserSpace,
            tx: dir(7, 1),
            rx: dir(9, 5),
            pending: vec![23, 3, 3],
            pending_handshake: Vec::new(),
            checksum: 0,
        }
        .seal()
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let s = format!("{:?}", session());
        assert!(s.contains("redacted"), "{s}");
        assert!(!s.contains("[1, 1,"), "{s}");
    }

    #[test]
    fn any_changed_field_fails_the_checksum() {
        let good = session();
        good.verify().unwrap();
        let mut s = good.clone();
        s.rx.seq += 1;
        assert!(s.verify().is_err());
        let mut s = good.clone();
        s.tx.key = Secret::new(vec![2; 16]);
        assert!(s.verify().is_err());
        let mut s = good.clone();
        s.records = Records::Kernel;
        assert!(s.verify().is_err());
        let mut s = good;
        s.pending.push(0);
        assert!(s.verify().is_err());
    }
}

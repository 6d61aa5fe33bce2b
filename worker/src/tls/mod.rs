//! `wss://`: TLS connections that move between processes mid-session.
//!
//! A descriptor carries the TCP connection, not the TLS session: the record
//! keys and sequence numbers live in the process. So:
//!
//! 1. **Handshake** ([`handshake`]): rustls (ring provider, TLS 1.3 and 1.2,
//!    AEAD suites only; roots from `webpki-roots` plus an optional CA file,
//!    [`config`]) is fed whole records only, and stops being fed at its
//!    `Finished`. Its keys, sequence numbers and (TLS 1.3) traffic secrets
//!    are then extracted. Before it starts, as before a handed-over session
//!    is taken over, the process makes itself non-dumpable
//!    ([`handoff_protocol::tls::keep_keys_out_of_core_dumps`]).
//! 2. **Record layer** ([`record`]): from then on every owner of the
//!    connection, the first worker included, protects records itself: AES-128-GCM,
//!    AES-256-GCM and ChaCha20-Poly1305 over `ring`, TLS 1.3's KeyUpdate in both
//!    directions, NewSessionTicket (ignored: no resumption), alerts and
//!    `close_notify` (`io::TlsIo`, under [`crate::stream::HandoffStream`]).
//! 3. **Handoff**: at a freeze, after every sealed record has reached the
//!    kernel, the session ([`handoff_protocol::tls::TlsSession`]) goes to
//!    the supervisor with the connection's leftovers, and this process stops
//!    writing ([`Writer::HandedOver`]); a thaw gives the right back. The
//!    successor continues the same session: no new handshake, the server
//!    sees nothing.
//! 4. **Crash**: a dead worker may have sealed records past any sequence
//!    number known outside it, so its TLS sessions are never continued; the
//!    recovering worker closes those connections (TCP FIN) and connects
//!    again, resubscribing. A nonce is never reused.
//!
//! **Kernel TLS** ([`kernel`], `kernel_io`): where this kernel offers it
//! and the operator's [`KernelTlsMode`] allows, step 2 is the kernel's: the
//! keys and sequence numbers are installed into the socket right after the
//! handshake, the descriptor then carries them, and a handoff moves only the
//! TLS 1.3 traffic secrets beside it. Each connection logs which record layer
//! it got, and why (see docs/tls.md).

pub mod config;
pub mod handshake;
pub(crate) mod io;
pub mod kernel;
pub(crate) mod kernel_io;
pub mod record;

#[cfg(test)]
mod tests;

use handoff_protocol::tls::TlsSessionError;
use thiserror::Error;

pub use handshake::Negotiated;
pub use io::Writer;
pub use kernel::{kernel_tls, KernelTls, KernelTlsMode, Path};

/// A TLS failure on one connection.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS handshake: {0}")]
    Handshake(rustls::Error),
    #[error("TLS I/O: {0}")]
    Io(std::io::Error),
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("unsupported TLS parameters: {0}")]
    Unsupported(String),
    #[error("cannot keep TLS keys out of core dumps (PR_SET_DUMPABLE): {0}")]
    Undumpable(nix::Error),
    #[error("unusable TLS session state: {0}")]
    BadSession(String),
    #[error(transparent)]
    Corrupt(#[from] TlsSessionError),
    #[error("TLS record {seq} failed authentication (bad_record_mac)")]
    BadRecordMac { seq: u64 },
    #[error("unexpected TLS record of content type {0}")]
    UnexpectedRecord(u8),
    #[error("TLS 1.3 record without a content type")]
    EmptyInnerPlaintext,
    #[error("TLS record of {0} bytes exceeds the limit (record_overflow)")]
    RecordOverflow(usize),
    #[error("TLS sequence numbers exhausted")]
    SequenceExhausted,
    #[error("TLS record could not be sealed")]
    Seal,
    #[error("the server sent TLS alert {0}")]
    PeerAlert(u8),
    #[error("unexpected post-handshake message type {0}")]
    UnexpectedHandshake(u8),
    #[error("malformed post-handshake message: {0}")]
    MalformedHandshake(String),
    #[error("TLS stream ended in the middle of a record")]
    TruncatedRecord,
    #[error("this process handed the TLS session over and may not write on it")]
    HandedOver,
    #[error("{bytes} bytes of sealed TLS records not yet written")]
    Unflushed { bytes: usize },
    #[error("kernel TLS is required (--kernel-tls require) but {0}")]
    KernelRequired(String),
    #[error("kernel TLS: setting {step:?} failed: {errno}")]
    KernelInstall {
        step: kernel::Step,
        errno: nix::errno::Errno,
    },
    #[error("the server updated its TLS 1.3 key, and this kernel cannot install the next one (it cannot rekey): the connection is opened again")]
    KernelCannotRekey,
    #[error("kernel TLS refused a record: {0}")]
    KernelRecord(String),
}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Io(e) => e,
            e => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }
    }
}

/// Where the kernel lists the upper-layer protocols TCP sockets can take
/// (`tls` once the module is loaded; see [`kernel::kernel_tls`]).
pub const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

#[cfg(test)]
mod detection_tests {
    use super::kernel::{choose, kernel_tls, KernelTls, KernelTlsMode, Path, Rekey};
    use handoff_protocol::tls::{TlsCipher, TlsVersion};

    #[test]
    fn the_record_layer_follows_the_mode_and_the_kernel() {
        let v13 = TlsVersion::Tls13;
        let v12 = TlsVersion::Tls12;
        let aes = TlsCipher::Aes128Gcm;
        let chacha = TlsCipher::Chacha20Poly1305;
        let suites = vec![(v13, aes), (v12, aes)];
        let absent = KernelTls::Absent("no tls ULP".into());
        let old = KernelTls::Available {
            rekey: Rekey::Unsupported,
            suites: suites.clone(),
        };
        let new = KernelTls::Available {
            rekey: Rekey::Supported,
            suites,
        };
        let user = |p: Result<Path, _>| matches!(p, Ok(Path::UserSpace(_)));
        let kernel = |p: Result<Path, _>| matches!(p, Ok(Path::Kernel));
        assert!(user(choose(KernelTlsMode::Off, &new, v13, aes)));
        assert!(user(choose(KernelTlsMode::Auto, &absent, v12, aes)));
        assert!(choose(KernelTlsMode::Require, &absent, v12, aes).is_err());
        // A cipher the kernel lacks stays here, or is refused.
        assert!(user(choose(KernelTlsMode::Auto, &new, v13, chacha)));
        assert!(choose(KernelTlsMode::Require, &new, v13, chacha).is_err());
        // A kernel that cannot rekey could not follow a TLS 1.3 KeyUpdate.
        assert!(user(choose(KernelTlsMode::Auto, &old, v13, aes)));
        assert!(kernel(choose(KernelTlsMode::Auto, &old, v12, aes)));
        assert!(kernel(choose(KernelTlsMode::Require, &old, v13, aes)));
        assert!(kernel(choose(KernelTlsMode::Auto, &new, v13, aes)));
        assert_eq!("require".parse(), Ok(KernelTlsMode::Require));
        assert!("on".parse::<KernelTlsMode>().is_err());
        // This machine: say which path it takes.
        let here = kernel_tls();
        eprintln!(
            "kernel TLS here: {here:?}; TLS 1.3 under --kernel-tls auto: {:?}",
            choose(KernelTlsMode::Auto, here, v13, aes)
        );
    }
}

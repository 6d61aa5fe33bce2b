//! `wss://`: TLS connections that move between processes mid-session.
//!
//! A descriptor carries the TCP connection, not the TLS session: the record
//! keys and sequence numbers live in the process. So:
//!
//! 1. **Handshake** ([`handshake`]): rustls (ring provider, TLS 1.3 and 1.2,
//!    AEAD suites only; roots from `webpki-roots` plus an optional CA file,
//!    [`config`]) is fed whole records only, and stops being fed at its
//!    `Finished`. Its keys, sequence numbers and (TLS 1.3) traffic secrets
//!    are then extracted.
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
//! Kernel TLS (`TCP_ULP` "tls") would let the descriptor carry the record
//! state itself. [`kernel_tls`] reports whether this kernel offers it; this
//! build always uses the user-space record layer above (see the README).

pub mod config;
pub mod handshake;
pub(crate) mod io;
pub mod record;

#[cfg(test)]
mod tests;

use handoff_protocol::tls::TlsSessionError;
use thiserror::Error;

pub use handshake::Negotiated;
pub use io::Writer;

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
}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Io(e) => e,
            e => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }
    }
}

/// Whether this kernel offers kernel TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelTls {
    /// `tls` is among `/proc/sys/net/ipv4/tcp_available_ulp`.
    Available,
    /// It is not (the module is not loaded or not built); the file's content
    /// or the reason it could not be read.
    Absent(String),
}

/// Where the kernel says which upper-layer protocols TCP sockets can take.
pub const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Read [`AVAILABLE_ULP`].
pub fn kernel_tls() -> KernelTls {
    match std::fs::read_to_string(AVAILABLE_ULP) {
        Ok(ulps) => kernel_tls_in(&ulps),
        Err(e) => KernelTls::Absent(format!("{AVAILABLE_ULP}: {e}")),
    }
}

/// What the content of [`AVAILABLE_ULP`] says.
fn kernel_tls_in(ulps: &str) -> KernelTls {
    if ulps.split_whitespace().any(|u| u == "tls") {
        KernelTls::Available
    } else {
        KernelTls::Absent(format!("{AVAILABLE_ULP}: {:?}", ulps.trim()))
    }
}

#[cfg(test)]
mod detection_tests {
    use super::*;

    #[test]
    fn tls_must_be_listed_as_a_whole_word() {
        assert_eq!(kernel_tls_in("mptcp tls\n"), KernelTls::Available);
        assert!(matches!(kernel_tls_in("mptcp\n"), KernelTls::Absent(_)));
        assert!(matches!(
            kernel_tls_in("espintcp tlsx"),
            KernelTls::Absent(_)
        ));
        // This machine: say which path it takes.
        eprintln!(
            "kernel TLS here: {:?}; records are protected in user space",
            kernel_tls()
        );
    }
}

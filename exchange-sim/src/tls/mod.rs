//! wss:// and https:// on the shared port: certificate generation, the rustls
//! server configuration restricted by `--tls-versions` / `--tls-ciphers`, the
//! negotiated parameters as the audit shows them, and telling TLS failures
//! from plain socket errors.
//!
//! The server certificate's key is ECDSA P-256, so the TLS 1.2 suites are the
//! three ECDHE-ECDSA AEADs; the RSA suites of the ring provider are never
//! offered (they could not be used with this key).

mod certs;
mod stream;

pub use certs::SERVER_NAMES;
pub use stream::{KeyUpdates, TlsConn};

use crate::error::SimError;
use serde::Serialize;
use std::fmt;
use std::io;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::{
    self, CipherSuite, ProtocolVersion, ServerConfig, SupportedCipherSuite,
};
use tokio_rustls::TlsAcceptor;

/// A TLS protocol version (`--tls-versions`, and `"version"` in the audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3.
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            Self::V1_2 => &rustls::version::TLS12,
            Self::V1_3 => &rustls::version::TLS13,
        }
    }
}

/// An AEAD the server may negotiate (`--tls-ciphers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsCipher {
    /// AES-128-GCM (`TLS13_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`).
    #[value(name = "aes128gcm")]
    Aes128Gcm,
    /// AES-256-GCM (`TLS13_AES_256_GCM_SHA384`,
    /// `TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384`).
    #[value(name = "aes256gcm")]
    Aes256Gcm,
    /// ChaCha20-Poly1305 (`TLS13_CHACHA20_POLY1305_SHA256`,
    /// `TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256`).
    #[value(name = "chacha20")]
    Chacha20,
}

impl TlsCipher {
    /// The AEAD of a suite the server can use with its ECDSA key.
    fn of(suite: CipherSuite) -> Option<Self> {
        match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => Some(Self::Aes128Gcm),
            CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => Some(Self::Aes256Gcm),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Self::Chacha20),
            _ => None,
        }
    }
}

/// What was negotiated on a connection (`"tls"` in the audit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    /// `"1.2"` or `"1.3"`.
    pub version: TlsVersion,
    /// The IANA name of the suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
}

impl TlsInfo {
    /// The parameters of an established connection.
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        let version = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_2) => TlsVersion::V1_2,
            _ => TlsVersion::V1_3,
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| {
                let suite = s.suite();
                suite
                    .as_str()
                    .map_or_else(|| format!("{suite:?}"), str::to_owned)
            })
            .unwrap_or_default();
        Self { version, cipher }
    }
}

/// The TLS side of the server: built once at start.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
    ca_pem: Arc<str>,
    key_update_every: u64,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("key_update_every", &self.key_update_every)
            .finish_non_exhaustive()
    }
}

/// The ring provider's suites restricted to `versions` and `ciphers`.
fn suites(versions: &[TlsVersion], ciphers: &[TlsCipher]) -> Vec<SupportedCipherSuite> {
    ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| {
            let version = match s {
                SupportedCipherSuite::Tls12(_) => TlsVersion::V1_2,
                SupportedCipherSuite::Tls13(_) => TlsVersion::V1_3,
            };
            versions.contains(&version)
                && TlsCipher::of(s.suite()).is_some_and(|c| ciphers.contains(&c))
        })
        .collect()
}

impl TlsServer {
    /// Generate the certificates and the server configuration.
    pub fn new(
        versions: &[TlsVersion],
        ciphers: &[TlsCipher],
        key_update_every: u64,
    ) -> Result<Self, SimError> {
        if versions.is_empty() || ciphers.is_empty() {
            return Err(SimError::InvalidArgs(
                "--tls-versions and --tls-ciphers must each name at least one value".into(),
            ));
        }
        let generated = certs::generate().map_err(SimError::Certificate)?;
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: suites(versions, ciphers),
            ..ring::default_provider()
        };
        let mut protocol_versions: Vec<_> = versions.iter().map(|v| v.rustls()).collect();
        protocol_versions.dedup();
        let config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&protocol_versions)
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(generated.chain, generated.key)
            })
            .map_err(SimError::TlsConfig)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca_pem: generated.ca_pem.into(),
            key_update_every,
        })
    }

    /// The acceptor for incoming handshakes.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `--key-update-every` (0 = never).
    pub fn key_update_every(&self) -> u64 {
        self.key_update_every
    }
}

/// If `e`, from a TLS stream, is a TLS failure rather than a socket one: its
/// description (a rustls error, or the peer closing without `close_notify`).
pub fn failure(e: &io::Error) -> Option<String> {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Some(tls.to_string());
    }
    (e.kind() == io::ErrorKind::UnexpectedEof)
        .then(|| "peer closed the connection without close_notify".to_owned())
}

/// Whether `e` is a TLS protocol error (not a mere hang-up without `close_notify`).
pub fn is_protocol_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_and_cipher_combination_has_suites() {
        let versions = [TlsVersion::V1_2, TlsVersion::V1_3];
        let ciphers = [
            TlsCipher::Aes128Gcm,
            TlsCipher::Aes256Gcm,
            TlsCipher::Chacha20,
        ];
        assert_eq!(suites(&versions, &ciphers).len(), 6);
        for v in versions {
            for c in ciphers {
                let s = suites(&[v], &[c]);
                assert_eq!(s.len(), 1, "{v:?} {c:?}");
                assert_eq!(TlsCipher::of(s[0].suite()), Some(c));
            }
        }
        assert!(TlsServer::new(&[TlsVersion::V1_2], &[TlsCipher::Chacha20], 0).is_ok());
        assert!(TlsServer::new(&[], &ciphers, 0).is_err());
    }

    #[test]
    fn tls_failures_are_told_from_socket_errors() {
        let decrypt = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(failure(&decrypt).is_some_and(|t| t.contains("decrypt")));
        assert!(is_protocol_error(&decrypt));
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(failure(&eof).is_some_and(|t| t.contains("close_notify")));
        assert!(!is_protocol_error(&eof));
        assert_eq!(
            failure(&io::Error::from(io::ErrorKind::ConnectionReset)),
            None
        );
    }
}

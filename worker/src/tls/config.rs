//! The rustls client configuration of a `wss://` connection: trusted roots
//! (the Mozilla set of `webpki-roots`, plus `--ca-file` for a private CA),
//! TLS 1.3 and 1.2 with AEAD suites only, secret extraction on, session
//! resumption off (no ticket outlives its connection).

use std::path::Path;
use std::sync::{Arc, Mutex};

use handoff_protocol::tls::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, KeyLog, RootCertStore};

use super::TlsError;

/// The TLS 1.3 application traffic secrets of one handshake, as rustls
/// derives them (its `KeyLog` hook). They stay in this process's memory,
/// then in the handed-over session: never a file, never a log line.
#[derive(Default)]
pub(crate) struct TrafficSecrets {
    inner: Mutex<(Option<Secret>, Option<Secret>)>,
}

impl std::fmt::Debug for TrafficSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficSecrets(<redacted>)")
    }
}

impl KeyLog for TrafficSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let Ok(mut s) = self.inner.lock() else {
            return;
        };
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => s.0 = Some(Secret::new(secret.to_vec())),
            "SERVER_TRAFFIC_SECRET_0" => s.1 = Some(Secret::new(secret.to_vec())),
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
}

impl TrafficSecrets {
    /// (client, server) application traffic secrets, once both are known.
    pub(crate) fn take(&self) -> Option<(Secret, Secret)> {
        let mut s = self.inner.lock().ok()?;
        match (s.0.take(), s.1.take()) {
            (Some(c), Some(s)) => Some((c, s)),
            _ => None,
        }
    }
}

/// The roots a `wss://` server certificate is checked against.
pub(crate) fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let bad = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no PEM certificate in it".into()));
        }
    }
    Ok(roots)
}

/// A configuration for one connection, whose traffic secrets land in
/// `secrets`.
pub(crate) fn client_config(
    roots: RootCertStore,
    secrets: Arc<TrafficSecrets>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Handshake)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    config.resumption = rustls::client::Resumption::disabled();
    config.key_log = secrets;
    // The websocket handshake is HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

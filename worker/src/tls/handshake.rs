//! The TLS handshake of a new `wss://` connection, by rustls, fed whole
//! records only, then the move of its keys into our `RecordLayer`.
//!
//! rustls buffers whatever it is given and offers no way to take ciphertext
//! back out. So during the handshake only whole records are taken from the
//! kernel (peek the header, wait for the record, `recv` exactly it), one at a
//! time, and feeding stops the moment the handshake is complete: records
//! after the server's `Finished` (tickets, the first application data) stay
//! in the kernel for the record layer, which every owner of the connection
//! runs from then on.

use std::io::{self, Read};
use std::sync::Arc;

use handoff_protocol::tls::{
    Records, Secret, TlsCipher, TlsDirection, TlsHash, TlsSession, TlsVersion,
};
use nix::sys::socket::MsgFlags;
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, ClientConnection, ConnectionTrafficSecrets, ProtocolVersion};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::config::{client_config, roots, TrafficSecrets};
#[cfg(doc)]
use super::io::TlsIo;
use super::record::{traffic_keys, HEADER_LEN, MAX_CIPHERTEXT};
use super::TlsError;
use crate::stream::sys_recv;
use std::os::fd::AsRawFd;

/// What was negotiated, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: TlsVersion,
    pub cipher: TlsCipher,
}

/// Run the handshake on `tcp` with `host` (SNI and certificate name).
/// Returns the session (keys, sequence numbers, traffic secrets: for
/// [`TlsIo::take_over`]) and any application data rustls had already
/// decrypted (none in practice: feeding stops at `Finished`). The kernel's
/// read position is then right after the server's `Finished` record.
pub(crate) async fn handshake(
    tcp: &mut TcpStream,
    host: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<(TlsSession, Vec<u8>, Negotiated), TlsError> {
    handoff_protocol::tls::keep_keys_out_of_core_dumps().map_err(TlsError::Undumpable)?;
    let secrets = Arc::new(TrafficSecrets::default());
    let config = client_config(roots(ca_file)?, secrets.clone())?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::ServerName(host.to_string()))?;
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(TlsError::Handshake)?;
    loop {
        write_pending(&mut conn, tcp).await?;
        if !conn.is_handshaking() {
            break;
        }
        let record = read_record(tcp).await?;
        conn.read_tls(&mut &record[..]).map_err(TlsError::Io)?;
        if let Err(e) = conn.process_new_packets() {
            // Let the peer know why (rustls queued an alert).
            let _ = write_pending(&mut conn, tcp).await;
            return Err(TlsError::Handshake(e));
        }
    }
    let mut early = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => early.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(TlsError::Io(e)),
        }
    }
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
        Some(ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
        other => return Err(TlsError::Unsupported(format!("protocol {other:?}"))),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .ok_or_else(|| TlsError::Unsupported("no cipher suite negotiated".into()))?
        .suite();
    let hash = match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => TlsHash::Sha384,
        _ => TlsHash::Sha256,
    };
    let extracted = conn
        .dangerous_extract_secrets()
        .map_err(TlsError::Handshake)?;
    let (cipher, tx_key, tx_iv) = split(extracted.tx.1)?;
    let (_, rx_key, rx_iv) = split(extracted.rx.1)?;
    let (tx_secret, rx_secret) = match version {
        TlsVersion::Tls12 => (Secret::default(), Secret::default()),
        TlsVersion::Tls13 => {
            let (client, server) = secrets.take().ok_or_else(|| {
                TlsError::BadSession("rustls did not expose the traffic secrets".into())
            })?;
            // The keys in use must be generation 0 of those secrets: else a
            // KeyUpdate would derive the wrong next keys.
            for (secret, key, iv) in [(&client, &tx_key, &tx_iv), (&server, &rx_key, &rx_iv)] {
                let (k, i) = traffic_keys(cipher, hash, secret.expose());
                if k != key.expose() || i != iv.expose() {
                    return Err(TlsError::BadSession(
                        "traffic secret does not match the record keys".into(),
                    ));
                }
            }
            (client, server)
        }
    };
    let session = TlsSession {
        version,
        cipher,
        hash,
        records: Records::UserSpace,
        tx: TlsDirection {
            seq: extracted.tx.0,
            key: tx_key,
            iv: tx_iv,
            traffic_secret: tx_secret,
        },
        rx: TlsDirection {
            seq: extracted.rx.0,
            key: rx_key,
            iv: rx_iv,
            traffic_secret: rx_secret,
        },
        pending: Vec::new(),
        pending_handshake: Vec::new(),
        checksum: 0,
    };
    Ok((session, early, Negotiated { version, cipher }))
}

fn split(s: ConnectionTrafficSecrets) -> Result<(TlsCipher, Secret, Secret), TlsError> {
    let secret = |b: &[u8]| Secret::new(b.to_vec());
    Ok(match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (
            TlsCipher::Aes128Gcm,
            secret(key.as_ref()),
            secret(iv.as_ref()),
        ),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (
            TlsCipher::Aes256Gcm,
            secret(key.as_ref()),
            secret(iv.as_ref()),
        ),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (
            TlsCipher::Chacha20Poly1305,
            secret(key.as_ref()),
            secret(iv.as_ref()),
        ),
        other => {
            return Err(TlsError::Unsupported(format!(
                "record protection {:?}",
                std::mem::discriminant(&other)
            )))
        }
    })
}

async fn write_pending(conn: &mut ClientConnection, tcp: &mut TcpStream) -> Result<(), TlsError> {
    while conn.wants_write() {
        let mut buf = Vec::new();
        conn.write_tls(&mut buf).map_err(TlsError::Io)?;
        tcp.write_all(&buf).await.map_err(TlsError::Io)?;
    }
    Ok(())
}

/// Take exactly one whole record from the kernel.
async fn read_record(tcp: &TcpStream) -> Result<Vec<u8>, TlsError> {
    let fd = tcp.as_raw_fd();
    let mut buf = vec![0u8; HEADER_LEN + MAX_CIPHERTEXT];
    loop {
        tcp.readable().await.map_err(TlsError::Io)?;
        let got = tcp.try_io(Interest::READABLE, || {
            let n = sys_recv(fd, &mut buf, MsgFlags::MSG_PEEK)?;
            if n == 0 {
                return Ok(None);
            }
            if n < HEADER_LEN {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if len > MAX_CIPHERTEXT {
                return Err(io::Error::from(TlsError::RecordOverflow(len)));
            }
            if n < HEADER_LEN + len {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = sys_recv(fd, &mut buf[..HEADER_LEN + len], MsgFlags::empty())?;
            Ok(Some(buf[..n].to_vec()))
        });
        match got {
            Ok(Some(record)) => return Ok(record),
            Ok(None) => return Err(TlsError::TruncatedRecord),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(TlsError::Io(e)),
        }
    }
}

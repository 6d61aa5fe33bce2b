//! The record layer against rustls itself: every version and cipher, a
//! server-requested KeyUpdate in both directions, tickets arriving right
//! after the handshake, `close_notify`, and the session exported, serialized
//! and resumed (a handoff) at each of those points. rustls on the server
//! side authenticates every record we seal, so a wrong key, nonce or
//! sequence number fails the test.
//!
//! The same exchanges run with the kernel protecting the records (kernel
//! TLS) where this kernel offers it, and are skipped with a message where
//! it does not (`scripts/ktls-vm` runs them on a kernel that does).

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;

use handoff_protocol::tls::{Records, TlsCipher, TlsSession, TlsVersion};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{CipherSuite, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};

use super::handshake::handshake;
use super::io::{TlsIo, Writer};
use super::kernel::{kernel_tls, KernelTls, Path, Rekey};
use super::TlsError;

struct Pki {
    _dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Pki {
        _dir: dir,
        ca_file,
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

fn server_config(pki: &Pki, version: TlsVersion, cipher: TlsCipher) -> Arc<ServerConfig> {
    let wanted: &[CipherSuite] = match (version, cipher) {
        (TlsVersion::Tls13, TlsCipher::Aes128Gcm) => &[CipherSuite::TLS13_AES_128_GCM_SHA256],
        (TlsVersion::Tls13, TlsCipher::Aes256Gcm) => &[CipherSuite::TLS13_AES_256_GCM_SHA384],
        (TlsVersion::Tls13, TlsCipher::Chacha20Poly1305) => {
            &[CipherSuite::TLS13_CHACHA20_POLY1305_SHA256]
        }
        (TlsVersion::Tls12, TlsCipher::Aes128Gcm) => {
            &[CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
        }
        (TlsVersion::Tls12, TlsCipher::Aes256Gcm) => {
            &[CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]
        }
        (TlsVersion::Tls12, TlsCipher::Chacha20Poly1305) => {
            &[CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]
        }
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| wanted.contains(&s.suite()));
    let v: &'static SupportedProtocolVersion = match version {
        TlsVersion::Tls13 => &rustls::version::TLS13,
        TlsVersion::Tls12 => &rustls::version::TLS12,
    };
    let config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[v])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    Arc::new(config)
}

/// A rustls server on a loopback port, offering only `version` and `cipher`.
async fn listen(
    pki: &Pki,
    version: TlsVersion,
    cipher: TlsCipher,
) -> (TcpListener, std::net::SocketAddr, tokio_rustls::TlsAcceptor) {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(pki, version, cipher));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr, acceptor)
}

/// A TLS 1.3 AES-128-GCM server that takes one connection, sends `greeting`
/// and reads to the end: whatever the client writes must be a valid record,
/// or rustls errors.
async fn serve_one(
    pki: &Pki,
    greeting: &'static [u8],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (listener, addr, acceptor) = listen(pki, TlsVersion::Tls13, TlsCipher::Aes128Gcm).await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        tls.write_all(greeting).await.unwrap();
        tls.flush().await.unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
    });
    (addr, server)
}

/// Read through `io` until `plain` holds `want` bytes; Ok(false) at end of
/// stream.
async fn read_until(
    tcp: &TcpStream,
    io: &mut TlsIo,
    plain: &mut Vec<u8>,
    want: usize,
) -> io::Result<bool> {
    while plain.len() < want {
        tcp.readable().await?;
        match tcp.try_io(Interest::READABLE, || io.recv(tcp.as_fd(), plain)) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

async fn send(tcp: &mut TcpStream, io: &mut TlsIo, data: &[u8]) {
    if io.kernel().is_some() {
        // Control records first, then the plaintext: the kernel seals it.
        flush(tcp, io).await;
        io.check_writer().unwrap();
        tcp.write_all(data).await.unwrap();
        return;
    }
    let mut rest = data;
    while !rest.is_empty() {
        let n = io.seal_data(rest).unwrap();
        rest = &rest[n..];
    }
    flush(tcp, io).await;
}

async fn flush(tcp: &mut TcpStream, io: &mut TlsIo) {
    if let Some(k) = io.kernel() {
        while k.control_pending() {
            tcp.writable().await.unwrap();
            let sock = tcp.as_fd();
            match tcp.try_io(Interest::WRITABLE, || k.send_control(sock)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("control record: {e}"),
            }
        }
        return;
    }
    let out = io.unwritten().to_vec();
    tcp.write_all(&out).await.unwrap();
    io.wrote(out.len());
}

/// A handoff in miniature: the session leaves as bytes, the old state is
/// dropped, a new record layer continues from the bytes. A kernel TLS
/// session carries no record keys: the socket has them.
fn hand_over(io: TlsIo, tcp: &TcpStream) -> TlsIo {
    let session = io.export().unwrap();
    if session.records == Records::Kernel {
        assert!(session.tx.key.is_empty() && session.rx.key.is_empty());
        assert!(session.tx.iv.is_empty() && session.rx.iv.is_empty());
    }
    let wire = bincode::serialize(&session).unwrap();
    drop(io);
    let session: TlsSession = bincode::deserialize(&wire).unwrap();
    TlsIo::resume(tcp.as_fd(), &session).unwrap()
}

/// Say that a test part is skipped, once per test process, and past the
/// harness's output capture (writing to the descriptor, not through
/// `eprintln!`), so that a plain `cargo test` shows it.
fn say_skipped(what: &str) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
    });
}

/// The record layer for a session just negotiated: user space, or the
/// kernel (`None`, with a message, where this kernel has no TLS).
fn take_over(tcp: &TcpStream, session: &TlsSession, records: Records) -> Option<TlsIo> {
    let path = match records {
        Records::UserSpace => Path::UserSpace("test".into()),
        Records::Kernel => match kernel_tls() {
            KernelTls::Available { suites, .. }
                if suites.contains(&(session.version, session.cipher)) =>
            {
                Path::Kernel
            }
            other => {
                say_skipped(&format!(
                    "the kernel TLS parts of tls::tests (first {:?} {:?}): {other:?}",
                    session.version, session.cipher
                ));
                return None;
            }
        },
    };
    let io = TlsIo::take_over(tcp.as_fd(), session, &path).unwrap();
    assert_eq!(io.records(), records);
    Some(io)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum HandOver {
    Never,
    /// Before a single post-handshake record was read (tickets in flight).
    AfterHandshake,
    /// After the KeyUpdate was received and answered.
    AfterKeyUpdate,
}

async fn exchange(version: TlsVersion, cipher: TlsCipher, at: HandOver, records: Records) {
    let pki = pki();
    let (listener, addr, acceptor) = listen(&pki, version, cipher).await;
    let big = vec![b'x'; 40_000];
    let big2 = big.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        tls.write_all(b"hello-1").await.unwrap();
        tls.flush().await.unwrap();
        if version == TlsVersion::Tls13 {
            tls.get_mut().1.refresh_traffic_keys().unwrap();
        }
        tls.write_all(b"hello-2").await.unwrap();
        tls.write_all(&big2).await.unwrap();
        tls.flush().await.unwrap();
        let mut got = [0u8; 8];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"client-1", "read under the client's updated key");
        tls.write_all(b"hello-3").await.unwrap();
        tls.flush().await.unwrap();
        let mut got = vec![0u8; 8 + 40_000];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..8], b"client-2");
        tls.write_all(b"bye").await.unwrap();
        tls.shutdown().await.unwrap();
    });

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (session, early, negotiated) = handshake(&mut tcp, "localhost", Some(&pki.ca_file))
        .await
        .unwrap();
    assert!(early.is_empty());
    assert_eq!((negotiated.version, negotiated.cipher), (version, cipher));
    let Some(mut io) = take_over(&tcp, &session, records) else {
        server.abort();
        return;
    };
    if at == HandOver::AfterHandshake {
        io = hand_over(io, &tcp);
    }
    let mut plain = Vec::new();
    let first = 14 + big.len();
    let cannot_rekey = matches!(
        kernel_tls(),
        KernelTls::Available {
            rekey: Rekey::Unsupported,
            ..
        }
    );
    if records == Records::Kernel && version == TlsVersion::Tls13 && cannot_rekey {
        // The server's KeyUpdate cannot be followed by this kernel: the
        // connection ends with that reason, never with misread records.
        let err = read_until(&tcp, &mut io, &mut plain, first)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot rekey"), "{err}");
        assert_eq!(plain, b"hello-1", "everything before the KeyUpdate");
        server.abort();
        return;
    }
    assert!(read_until(&tcp, &mut io, &mut plain, first).await.unwrap());
    assert_eq!(&plain[..14], b"hello-1hello-2");
    assert_eq!(&plain[14..first], &big[..]);
    if version == TlsVersion::Tls13 {
        assert_eq!(io.key_updates, 1, "the server's KeyUpdate was seen");
        assert_eq!(
            io.tickets, 2,
            "rustls sends two tickets after the handshake"
        );
    }
    // Our KeyUpdate answer (sealed while reading) goes out before client-1.
    send(&mut tcp, &mut io, b"client-1").await;
    if version == TlsVersion::Tls13 && records == Records::UserSpace {
        // Our KeyUpdate went out under the old key; client-1 is record 0
        // of the new one.
        assert_eq!(io.seqs().0, 1, "the KeyUpdate was answered");
    }
    if at == HandOver::AfterKeyUpdate {
        io = hand_over(io, &tcp);
    }
    assert!(read_until(&tcp, &mut io, &mut plain, first + 7)
        .await
        .unwrap());
    assert_eq!(&plain[first..], b"hello-3");
    let mut msg = b"client-2".to_vec();
    msg.extend_from_slice(&big);
    send(&mut tcp, &mut io, &msg).await;
    let ended = !read_until(&tcp, &mut io, &mut plain, usize::MAX)
        .await
        .unwrap();
    assert!(ended, "close_notify ends the stream");
    assert_eq!(&plain[first + 7..], b"bye");
    server.await.unwrap();
}

const ALL: [(TlsVersion, TlsCipher); 6] = [
    (TlsVersion::Tls13, TlsCipher::Aes128Gcm),
    (TlsVersion::Tls13, TlsCipher::Aes256Gcm),
    (TlsVersion::Tls13, TlsCipher::Chacha20Poly1305),
    (TlsVersion::Tls12, TlsCipher::Aes128Gcm),
    (TlsVersion::Tls12, TlsCipher::Aes256Gcm),
    (TlsVersion::Tls12, TlsCipher::Chacha20Poly1305),
];

/// Every version and cipher, records protected in user space and then by
/// the kernel (skipped with a message where it has no TLS).
async fn every_suite_and_record_layer(at: HandOver) {
    for records in [Records::UserSpace, Records::Kernel] {
        for (v, c) in ALL {
            exchange(v, c, at, records).await;
        }
    }
}

#[tokio::test]
async fn every_version_and_cipher_talks_to_rustls() {
    every_suite_and_record_layer(HandOver::Never).await;
}

#[tokio::test]
async fn a_session_handed_over_right_after_the_handshake_continues() {
    every_suite_and_record_layer(HandOver::AfterHandshake).await;
}

#[tokio::test]
async fn a_session_handed_over_after_a_key_update_continues() {
    every_suite_and_record_layer(HandOver::AfterKeyUpdate).await;
}

/// A process stops being dumpable (no core file, no same-user `ptrace`)
/// before it holds keys: before a handshake, and before it takes over a
/// handed-over session. Other tests here only ever clear the flag, so this
/// one cannot fail through them; it can only miss a mutation they hide.
#[tokio::test]
async fn a_process_that_holds_tls_keys_is_not_dumpable() {
    use nix::sys::prctl::{get_dumpable, set_dumpable};
    let pki = pki();
    let (addr, server) = serve_one(&pki, b"").await;
    set_dumpable(true).unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (session, _, _) = handshake(&mut tcp, "localhost", Some(&pki.ca_file))
        .await
        .unwrap();
    assert!(!get_dumpable().unwrap(), "dumpable after a handshake");
    let io = take_over(&tcp, &session, Records::UserSpace).unwrap();
    set_dumpable(true).unwrap();
    let _successor = hand_over(io, &tcp);
    assert!(
        !get_dumpable().unwrap(),
        "dumpable after taking over a session"
    );
    drop(tcp);
    server.await.unwrap();
}

#[tokio::test]
async fn a_handed_over_session_is_fenced_and_corruption_is_caught() {
    let pki = pki();
    let (addr, server) = serve_one(&pki, b"hi").await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (session, _, _) = handshake(&mut tcp, "localhost", Some(&pki.ca_file))
        .await
        .unwrap();
    let mut io = take_over(&tcp, &session, Records::UserSpace).unwrap();
    io.set_writer(Writer::HandedOver);
    assert!(matches!(io.seal_data(b"x"), Err(TlsError::HandedOver)));
    assert!(matches!(io.seal_close_notify(), Err(TlsError::HandedOver)));
    io.set_writer(Writer::Live);
    io.seal_data(b"x").unwrap();

    // A sealed record not yet written cannot be handed over.
    assert!(matches!(io.export(), Err(TlsError::Unflushed { .. })));
    flush(&mut tcp, &mut io).await;
    let mut session = io.export().unwrap();
    session.rx.seq += 1;
    assert!(matches!(
        TlsIo::resume(tcp.as_fd(), &session),
        Err(TlsError::Corrupt(_))
    ));
    // A manifest claiming kernel TLS for a socket without it is refused:
    // writing to it would send plaintext.
    let mut kernel = session.clone();
    kernel.records = Records::Kernel;
    let err = TlsIo::resume(tcp.as_fd(), &kernel.seal()).err().unwrap();
    assert!(err.to_string().contains("has none"), "{err}");

    // A record opened with the wrong sequence number fails authentication.
    let mut wrong = TlsIo::resume(tcp.as_fd(), &session.seal()).unwrap();
    let mut plain = Vec::new();
    let err = read_until(&tcp, &mut wrong, &mut plain, 2)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad_record_mac"), "{err}");
    drop(tcp);
    server.await.unwrap();
}

#[tokio::test]
async fn an_unknown_ca_is_refused_at_connect() {
    let pki = pki();
    let other = pki_other_ca();
    let (listener, addr, acceptor) = listen(&pki, TlsVersion::Tls13, TlsCipher::Aes128Gcm).await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        assert!(acceptor.accept(tcp).await.is_err());
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let err = handshake(&mut tcp, "localhost", Some(&other.ca_file))
        .await
        .expect_err("an untrusted certificate must be refused");
    assert!(err.to_string().contains("certificate"), "{err}");
    drop(tcp);
    server.await.unwrap();

    let missing = other.ca_file.with_file_name("absent.pem");
    let err = super::config::roots(Some(&missing)).err().unwrap();
    assert!(matches!(err, TlsError::CaFile { .. }), "{err}");
    let empty = other.ca_file.with_file_name("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = super::config::roots(Some(&empty)).err().unwrap();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

fn pki_other_ca() -> Pki {
    pki()
}

//! wss:// and https:// on the shared port (`--tls`): every version and
//! AEAD, server-side restrictions, KeyUpdates under load, TLS failures, and
//! plain clients next to TLS ones.

use crate::support::{
    ack, audit, audit_until, conn, next_json, send_subscribe, start, subscribe, tick, PATIENCE,
};
use exchange_sim::SimHandle;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{
    version, CipherSuite, ClientConfig, RootCertStore, SupportedProtocolVersion,
};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A simulator serving TLS, and the CA it wrote to `--tls-ca-out`.
struct TlsSim {
    addr: SocketAddr,
    _handle: SimHandle,
    roots: RootCertStore,
    _dir: TempDir,
}

async fn start_tls(flags: &[&str]) -> TlsSim {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    let ca_arg = ca.to_str().expect("UTF-8 temp path").to_owned();
    let mut argv = vec!["--tls", "--tls-ca-out", &ca_arg];
    argv.extend_from_slice(flags);
    let (addr, handle) = start(&argv).await;
    // Written before `bind` returned, and the same text the handle gives.
    let pem = std::fs::read(&ca).expect("CA certificate written");
    assert_eq!(
        handle.tls_ca_pem().map(String::into_bytes),
        Some(pem.clone())
    );
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.expect("PEM certificate"))
            .expect("trusted CA");
    }
    assert_eq!(roots.len(), 1);
    TlsSim {
        addr,
        _handle: handle,
        roots,
        _dir: dir,
    }
}

/// A client config offering only `versions` and (if given) `suites`.
fn client(
    roots: &RootCertStore,
    versions: &[&'static SupportedProtocolVersion],
    suites: Option<&[CipherSuite]>,
) -> Arc<ClientConfig> {
    let mut provider = ring::default_provider();
    if let Some(suites) = suites {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("client versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let connect = TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(PATIENCE, connect)
        .await
        .expect("handshake in time")
}

/// Upgrade `stream` to a websocket and subscribe to `streams`.
async fn ws_subscribe<S>(
    stream: S,
    addr: SocketAddr,
    streams: &[&str],
) -> (WebSocketStream<S>, Value)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("websocket upgrade over TLS");
    let answer = send_subscribe(&mut ws, streams).await;
    (ws, answer)
}

/// Read and ack trades 1..=last of a single subscribed stream.
async fn read_and_ack<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, last: u64) {
    for t in 1..=last {
        let msg = next_json(ws).await;
        let got = tick(&msg);
        assert_eq!(got.t, t, "contiguous ids on {}", got.stream);
        ack(ws, &got.stream, got.t).await;
    }
}

/// Close the websocket and wait for the server's close and hang-up.
async fn close(ws: &mut Wss) {
    ws.close(None).await.expect("send close");
    while let Some(msg) = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("close answered in time")
    {
        if msg.is_err() {
            break;
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; the raw response.
async fn http_over<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("send");
    stream.flush().await.expect("flush");
    let mut resp = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut resp))
        .await
        .expect("answer in time")
        .expect("read answer");
    String::from_utf8(resp).expect("ASCII answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_and_cipher_feeds_a_wss_client() {
    let sim = start_tls(&[
        "--rate",
        "3000",
        "--trades",
        "40",
        "--symbols",
        "btcusdt",
        "--fragment-every",
        "3",
        "--ping-every",
        "4",
        "--max-chunk",
        "64",
    ])
    .await;
    let cases = [
        (
            &version::TLS13,
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            "1.3",
        ),
        (
            &version::TLS13,
            CipherSuite::TLS13_AES_256_GCM_SHA384,
            "1.3",
        ),
        (
            &version::TLS13,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            "1.3",
        ),
        (
            &version::TLS12,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            "1.2",
        ),
        (
            &version::TLS12,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            "1.2",
        ),
        (
            &version::TLS12,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            "1.2",
        ),
    ];
    // The certificate is valid for all of its names.
    let names = ["localhost", "127.0.0.1"];
    for (i, (v, suite, _)) in cases.iter().enumerate() {
        let config = client(&sim.roots, &[*v], Some(&[*suite]));
        let stream = tls_connect(sim.addr, config, names[i % 2])
            .await
            .expect("TLS handshake");
        let (mut ws, answer) = ws_subscribe(stream, sim.addr, &["btcusdt@trade"]).await;
        assert_eq!(answer, serde_json::json!({"result": null, "id": 1}));
        read_and_ack(&mut ws, 40).await;
        close(&mut ws).await;
    }

    // A plain websocket client and plain HTTP still work on the same port.
    let (mut plain, _) = subscribe(sim.addr, "/ws", &["btcusdt@trade"]).await;
    read_and_ack(&mut plain, 40).await;

    // So does HTTPS.
    let config = client(&sim.roots, &[&version::TLS13, &version::TLS12], None);
    let stream = tls_connect(sim.addr, config, "localhost")
        .await
        .expect("TLS");
    let resp = http_over(stream, "/health").await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with(r#"{"ok":true}"#), "{resp}");

    let a = audit(sim.addr, Some(5_000)).await;
    for (i, (_, suite, v)) in cases.iter().enumerate() {
        let c = conn(&a, i as u64 + 1);
        let expected = serde_json::json!({"version": v, "cipher": suite.as_str().expect("named")});
        assert_eq!(c["tls"], expected, "{c}");
        assert_eq!(c["closed_by"], "close_frame", "{c}");
        assert_eq!(c["streams"]["btcusdt@trade"]["acked"], 40, "{c}");
        assert_eq!(c["tls_key_updates"], 0, "{c}");
    }
    let c = conn(&a, 7);
    assert!(c["tls"].is_null(), "plain connection: {c}");
    let t = &a["totals"];
    assert_eq!(t["tls_handshakes"], 7, "{a}");
    assert_eq!(t["tls_handshake_failures"], 0, "{a}");
    assert_eq!(t["tls_errors"], 0, "{a}");
    assert_eq!(t["tls_key_updates"], 0, "{a}");
    assert_eq!(t["acked"], 280, "{a}");
    assert_eq!(t["unacked"], 0, "{a}");
    assert_eq!(t["malformed"], 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_flags_decide_what_is_negotiated() {
    let sim = start_tls(&[
        "--rate",
        "2000",
        "--trades",
        "20",
        "--symbols",
        "ethusdt",
        "--tls-versions",
        "1.2",
        "--tls-ciphers",
        "chacha20",
        "--key-update-every",
        "1",
    ])
    .await;
    // A client offering everything gets what the server allows.
    let all = client(&sim.roots, &[&version::TLS13, &version::TLS12], None);
    let stream = tls_connect(sim.addr, all, "localhost").await.expect("TLS");
    let (mut ws, _) = ws_subscribe(stream, sim.addr, &["ethusdt@trade"]).await;
    read_and_ack(&mut ws, 20).await;
    close(&mut ws).await;

    // One offering only TLS 1.3, or only AES, gets no connection.
    let only13 = client(&sim.roots, &[&version::TLS13], None);
    assert!(tls_connect(sim.addr, only13, "localhost").await.is_err());
    let aes = [
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ];
    let only_aes = client(&sim.roots, &[&version::TLS12], Some(&aes));
    assert!(tls_connect(sim.addr, only_aes, "localhost").await.is_err());

    let a = audit_until(sim.addr, |a| a["totals"]["tls_handshake_failures"] == 2).await;
    let c = conn(&a, 1);
    let expected = serde_json::json!({
        "version": "1.2",
        "cipher": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    });
    assert_eq!(c["tls"], expected, "{c}");
    // TLS 1.2 has no KeyUpdate: `--key-update-every` does not apply.
    assert_eq!(a["totals"]["tls_key_updates"], 0, "{a}");
    assert_eq!(a["totals"]["tls_handshakes"], 1, "{a}");
    assert_eq!(a["totals"]["tls_errors"], 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_updates_roll_while_trades_flow() {
    let sim = start_tls(&[
        "--rate",
        "3000",
        "--trades",
        "300",
        "--symbols",
        "btcusdt",
        "--key-update-every",
        "5",
        "--max-chunk",
        "200",
        "--ping-every",
        "7",
    ])
    .await;
    let config = client(&sim.roots, &[&version::TLS13], None);
    let stream = tls_connect(sim.addr, config, "localhost")
        .await
        .expect("TLS");
    let (mut ws, _) = ws_subscribe(stream, sim.addr, &["btcusdt@trade"]).await;
    // The client (rustls) answers each KeyUpdate with its own, sealed with
    // its next keys; the acks that follow must still decrypt.
    read_and_ack(&mut ws, 300).await;
    // 301 messages (the SUBSCRIBE answer, then 300 trades): a KeyUpdate after
    // every 5th.
    let a = audit_until(sim.addr, |a| {
        a["totals"]["tls_key_updates"] == 60 && a["totals"]["unacked"] == 0
    })
    .await;
    let c = conn(&a, 1);
    assert_eq!(c["tls"]["version"], "1.3", "{c}");
    assert_eq!(c["tls_key_updates"], 60, "{c}");
    assert!(c["closed_by"].is_null(), "{c}");
    assert_eq!(c["streams"]["btcusdt@trade"]["acked"], 300, "{c}");
    assert_eq!(a["totals"]["tls_errors"], 0, "{a}");
    assert_eq!(a["totals"]["malformed"], 0, "{a}");
    // Still talking after the last update.
    ws.send(Message::Ping(b"still there".to_vec().into()))
        .await
        .expect("ping");
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("pong in time")
            .expect("open")
            .expect("valid");
        if let Message::Pong(p) = msg {
            assert_eq!(&p[..], b"still there");
            break;
        }
    }
    close(&mut ws).await;
    let a = audit_until(sim.addr, |a| conn(a, 1)["closed_by"] == "close_frame").await;
    assert_eq!(a["totals"]["tls_errors"], 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_audited_and_isolated() {
    let sim = start_tls(&["--rate", "500", "--symbols", "btcusdt"]).await;
    // A plain client is served throughout.
    let (mut plain, _) = subscribe(sim.addr, "/ws", &["btcusdt@trade"]).await;
    let config = client(&sim.roots, &[&version::TLS13], None);

    // A ClientHello that is garbage: logged and closed, nothing else.
    let mut raw = TcpStream::connect(sim.addr).await.expect("connect");
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .expect("send garbage");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut sink))
        .await
        .expect("closed in time");
    audit_until(sim.addr, |a| a["totals"]["tls_handshake_failures"] == 1).await;

    // Connection 2: a forged record after the upgrade (bad_record_mac).
    let stream = tls_connect(sim.addr, config.clone(), "localhost")
        .await
        .expect("TLS");
    let (mut forged, _) = ws_subscribe(stream, sim.addr, &["btcusdt@trade"]).await;
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend_from_slice(&[0x5a; 32]);
    let tcp = forged.get_mut().get_mut().0;
    tcp.write_all(&record).await.expect("send forged record");

    // Connection 3: a TCP FIN without close_notify, mid-feed.
    let stream = tls_connect(sim.addr, config.clone(), "localhost")
        .await
        .expect("TLS");
    let (mut cut, _) = ws_subscribe(stream, sim.addr, &["btcusdt@trade"]).await;
    cut.get_mut().get_mut().0.shutdown().await.expect("FIN");

    // Connection 4: close_notify without a websocket close: a clean EOF.
    let stream = tls_connect(sim.addr, config, "localhost")
        .await
        .expect("TLS");
    let (mut polite, _) = ws_subscribe(stream, sim.addr, &["btcusdt@trade"]).await;
    polite.get_mut().shutdown().await.expect("close_notify");

    let a = audit_until(sim.addr, |a| {
        (2..=4).all(|id| !conn(a, id)["closed_by"].is_null())
    })
    .await;
    let reason = |id| {
        conn(&a, id)["closed_by"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(reason(2).starts_with("error: tls:"), "{a}");
    assert!(reason(2).contains("decrypt"), "{a}");
    assert!(reason(3).starts_with("error: tls:"), "{a}");
    assert!(reason(3).contains("close_notify"), "{a}");
    assert_eq!(reason(4), "eof", "{a}");
    let t = &a["totals"];
    assert_eq!(t["tls_errors"], 2, "{a}");
    assert_eq!(t["tls_handshakes"], 3, "{a}");
    assert_eq!(t["tls_handshake_failures"], 1, "{a}");
    assert!(conn(&a, 1)["closed_by"].is_null(), "{a}");

    // The plain client never noticed.
    let msg = next_json(&mut plain).await;
    assert_eq!(msg["stream"], "btcusdt@trade");
    drop((forged, cut, polite));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_a_client_hello_is_a_bad_request() {
    let (addr, _sim) = start(&[]).await;
    // No CA needed: the handshake fails before a certificate is seen (the
    // server answers the ClientHello with an HTTP 400).
    let config = client(
        &RootCertStore::empty(),
        &[&version::TLS13, &version::TLS12],
        None,
    );
    assert!(tls_connect(addr, config, "localhost").await.is_err());
    let a = audit(addr, None).await;
    assert_eq!(a["totals"]["tls_handshakes"], 0, "{a}");
    assert_eq!(a["totals"]["tls_handshake_failures"], 0, "{a}");
    assert_eq!(a["connections_total"], 0, "{a}");
}

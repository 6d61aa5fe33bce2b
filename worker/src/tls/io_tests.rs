//! The record layer's own tests: garbage from the peer, tampering.

use super::*;
use handoff_protocol::tls::{Secret, TlsCipher, TlsDirection, TlsHash};
use rand::{Rng, SeedableRng};

/// Ciphertext as if just read from the kernel.
fn fill(io: &mut TlsIo, bytes: &[u8]) {
    let Layer::User(u) = &mut io.layer else {
        panic!("user-space layer expected");
    };
    u.cin[..bytes.len()].copy_from_slice(bytes);
    u.cin_len = bytes.len();
}

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
        records: Records::UserSpace,
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
                let mut io = TlsIo::user_layer(layer(version, cipher));
                let len = rng.gen_range(0..300usize);
                let mut input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                if rng.gen_bool(0.7) && input.len() >= HEADER_LEN {
                    let body = (input.len() - HEADER_LEN) as u16;
                    input[0] = rng.gen_range(20..25);
                    input[3..5].copy_from_slice(&body.to_be_bytes());
                }
                fill(&mut io, &input);
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
                let mut reader =
                    TlsIo::user_layer(RecordLayer::new(&session.clone().seal()).unwrap());
                fill(&mut reader, &bad);
                let err = reader.process(&mut Vec::new()).unwrap_err();
                assert!(matches!(err, TlsError::BadRecordMac { .. }), "{err}");
            }
            let mut reader = TlsIo::user_layer(RecordLayer::new(&session.seal()).unwrap());
            fill(&mut reader, &out);
            let mut plain = Vec::new();
            reader.process(&mut plain).unwrap();
            assert_eq!(plain, b"hello", "{version:?} {cipher:?}");
        }
    }
}

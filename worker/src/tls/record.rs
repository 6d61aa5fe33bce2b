//! The TLS record layer that carries a session on after its handshake: AEAD
//! protection of records (TLS 1.3 and TLS 1.2 AEAD suites) over `ring`, and
//! TLS 1.3's KeyUpdate key schedule.
//!
//! rustls does the handshake; from then on, in every process that owns the
//! connection, records are protected here. So the first worker and every
//! successor run the same code on the same state ([`TlsSession`]), and a
//! handoff is only a copy of that state.
//!
//! Nonces are never reused: a direction's sequence number only grows, a
//! record is sealed only while `RecordLayer` is the connection's writer
//! (the stream fences it once the session is handed over), and sealing
//! refuses to wrap the counter.

use std::ops::Range;

use handoff_protocol::tls::{
    Records, Secret, TlsCipher, TlsDirection, TlsHash, TlsSession, TlsVersion,
};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use super::TlsError;

/// Record content types.
pub(crate) const ALERT: u8 = 21;
pub(crate) const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;

/// Record header length.
pub(crate) const HEADER_LEN: usize = 5;
/// Largest plaintext in one record (2^14).
pub(crate) const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest record payload accepted: TLS 1.2's bound (2^14 + 2048), which
/// also covers TLS 1.3's (2^14 + 256).
pub(crate) const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 2048;
const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM: the explicit part of the nonce, sent with each record.
const EXPLICIT_NONCE_LEN: usize = 8;

/// One direction: keys in use and the sequence number of its next record.
struct Direction {
    seq: u64,
    key: LessSafeKey,
    key_bytes: Secret,
    iv: [u8; aead::NONCE_LEN],
    /// TLS 1.3 application traffic secret (empty for TLS 1.2).
    secret: Secret,
}

impl Direction {
    fn new(cipher: TlsCipher, d: &TlsDirection) -> Result<Self, TlsError> {
        let alg = algorithm(cipher);
        if d.key.len() != alg.key_len() {
            return Err(TlsError::BadSession(format!(
                "{cipher:?} key of {} bytes",
                d.key.len()
            )));
        }
        let iv: [u8; aead::NONCE_LEN] =
            d.iv.expose()
                .try_into()
                .map_err(|_| TlsError::BadSession(format!("IV of {} bytes", d.iv.len())))?;
        let key = UnboundKey::new(alg, d.key.expose())
            .map_err(|_| TlsError::BadSession("key rejected by the cipher".into()))?;
        Ok(Direction {
            seq: d.seq,
            key: LessSafeKey::new(key),
            key_bytes: d.key.clone(),
            iv,
            secret: d.traffic_secret.clone(),
        })
    }

    fn export(&self) -> TlsDirection {
        TlsDirection {
            seq: self.seq,
            key: self.key_bytes.clone(),
            iv: Secret::new(self.iv.to_vec()),
            traffic_secret: self.secret.clone(),
        }
    }

    /// iv XOR the sequence number, left-padded (RFC 8446 §5.3; rustls uses
    /// the same construction for every TLS 1.2 AEAD).
    fn nonce(&self, seq: u64) -> [u8; aead::NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Take the next sequence number; refuse to wrap (a wrapped counter
    /// repeats nonces).
    fn next_seq(&mut self) -> Result<u64, TlsError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(TlsError::SequenceExhausted)?;
        Ok(seq)
    }
}

fn algorithm(cipher: TlsCipher) -> &'static aead::Algorithm {
    match cipher {
        TlsCipher::Aes128Gcm => &aead::AES_128_GCM,
        TlsCipher::Aes256Gcm => &aead::AES_256_GCM,
        TlsCipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
    }
}

/// `ring::hkdf` output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", len) of RFC 8446 §7.1.
pub(crate) fn expand_label(hash: TlsHash, secret: &[u8], label: &[u8], len: usize) -> Vec<u8> {
    let alg = match hash {
        TlsHash::Sha256 => hkdf::HKDF_SHA256,
        TlsHash::Sha384 => hkdf::HKDF_SHA384,
    };
    let prk = hkdf::Prk::new_less_safe(alg, secret);
    let out_len = (len as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let context_len = [0u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &context_len];
    let mut out = vec![0; len];
    // Lengths here are fixed and far below HKDF's 255 × hash limit.
    if let Ok(okm) = prk.expand(&info, Len(len)) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// The record protection state of one connection.
pub(crate) struct RecordLayer {
    version: TlsVersion,
    cipher: TlsCipher,
    hash: TlsHash,
    tx: Direction,
    rx: Direction,
}

/// A record opened by [`RecordLayer::open`]: its real content type and where
/// its plaintext sits in the buffer given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opened {
    pub typ: u8,
    pub plaintext: Range<usize>,
}

impl RecordLayer {
    pub(crate) fn new(s: &TlsSession) -> Result<Self, TlsError> {
        if s.version == TlsVersion::Tls13
            && (s.tx.traffic_secret.is_empty() || s.rx.traffic_secret.is_empty())
        {
            return Err(TlsError::BadSession(
                "TLS 1.3 session without traffic secrets".into(),
            ));
        }
        Ok(RecordLayer {
            version: s.version,
            cipher: s.cipher,
            hash: s.hash,
            tx: Direction::new(s.cipher, &s.tx)?,
            rx: Direction::new(s.cipher, &s.rx)?,
        })
    }

    /// The state to hand over (with the connection's unprocessed bytes).
    pub(crate) fn export(&self, pending: Vec<u8>, pending_handshake: Vec<u8>) -> TlsSession {
        TlsSession {
            version: self.version,
            cipher: self.cipher,
            hash: self.hash,
            records: Records::UserSpace,
            tx: self.tx.export(),
            rx: self.rx.export(),
            pending,
            pending_handshake,
            checksum: 0,
        }
        .seal()
    }

    pub(crate) fn version(&self) -> TlsVersion {
        self.version
    }

    /// Sequence numbers of the next record to send and to receive.
    #[cfg(test)]
    pub(crate) fn seqs(&self) -> (u64, u64) {
        (self.tx.seq, self.rx.seq)
    }

    /// Decrypt the record whose header is `header` and whose payload is
    /// `payload`, in place.
    pub(crate) fn open(
        &mut self,
        header: [u8; HEADER_LEN],
        payload: &mut [u8],
    ) -> Result<Opened, TlsError> {
        let outer = header[0];
        let seq = self.rx.seq;
        let opened = match self.version {
            TlsVersion::Tls13 => {
                if outer != APPLICATION_DATA {
                    return Err(TlsError::UnexpectedRecord(outer));
                }
                let nonce = Nonce::assume_unique_for_key(self.rx.nonce(seq));
                let plain = self
                    .rx
                    .key
                    .open_in_place(nonce, Aad::from(header), payload)
                    .map_err(|_| TlsError::BadRecordMac { seq })?;
                // TLSInnerPlaintext: content, type, zero padding.
                let end = plain
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or(TlsError::EmptyInnerPlaintext)?;
                let typ = plain[end];
                Opened {
                    typ,
                    plaintext: 0..end,
                }
            }
            TlsVersion::Tls12 => {
                let (nonce, body) = match self.cipher {
                    TlsCipher::Chacha20Poly1305 => (self.rx.nonce(seq), 0),
                    TlsCipher::Aes128Gcm | TlsCipher::Aes256Gcm => {
                        if payload.len() < EXPLICIT_NONCE_LEN + TAG_LEN {
                            return Err(TlsError::BadRecordMac { seq });
                        }
                        let mut n = [0; aead::NONCE_LEN];
                        n[..4].copy_from_slice(&self.rx.iv[..4]);
                        n[4..].copy_from_slice(&payload[..EXPLICIT_NONCE_LEN]);
                        (n, EXPLICIT_NONCE_LEN)
                    }
                };
                let len = payload.len().saturating_sub(body + TAG_LEN);
                let aad = tls12_aad(seq, outer, len);
                let nonce = Nonce::assume_unique_for_key(nonce);
                let plain = self
                    .rx
                    .key
                    .open_in_place(nonce, Aad::from(aad), &mut payload[body..])
                    .map_err(|_| TlsError::BadRecordMac { seq })?;
                Opened {
                    typ: outer,
                    plaintext: body..body + plain.len(),
                }
            }
        };
        if opened.plaintext.len() > MAX_PLAINTEXT {
            return Err(TlsError::RecordOverflow(opened.plaintext.len()));
        }
        self.rx.next_seq()?;
        Ok(opened)
    }

    /// Append one record of type `typ` carrying `plaintext` (at most
    /// [`MAX_PLAINTEXT`] bytes) to `out`.
    pub(crate) fn seal(
        &mut self,
        typ: u8,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        debug_assert!(plaintext.len() <= MAX_PLAINTEXT);
        let seq = self.tx.next_seq()?;
        let start = out.len();
        match self.version {
            TlsVersion::Tls13 => {
                let len = plaintext.len() + 1 + TAG_LEN;
                let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
                out.extend_from_slice(&header);
                out.extend_from_slice(plaintext);
                out.push(typ);
                let mut body = out.split_off(start + HEADER_LEN);
                let nonce = Nonce::assume_unique_for_key(self.tx.nonce(seq));
                self.tx
                    .key
                    .seal_in_place_append_tag(nonce, Aad::from(header), &mut body)
                    .map_err(|_| TlsError::Seal)?;
                out.extend_from_slice(&body);
            }
            TlsVersion::Tls12 => {
                let nonce = self.tx.nonce(seq);
                let explicit = match self.cipher {
                    TlsCipher::Chacha20Poly1305 => 0,
                    TlsCipher::Aes128Gcm | TlsCipher::Aes256Gcm => EXPLICIT_NONCE_LEN,
                };
                let len = explicit + plaintext.len() + TAG_LEN;
                out.extend_from_slice(&[typ, 3, 3, (len >> 8) as u8, len as u8]);
                out.extend_from_slice(&nonce[aead::NONCE_LEN - explicit..]);
                let mut body = plaintext.to_vec();
                let aad = tls12_aad(seq, typ, plaintext.len());
                self.tx
                    .key
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut body,
                    )
                    .map_err(|_| TlsError::Seal)?;
                out.extend_from_slice(&body);
            }
        }
        Ok(())
    }

    /// TLS 1.3 KeyUpdate of the receiving direction: the peer sent one.
    pub(crate) fn update_rx(&mut self) -> Result<(), TlsError> {
        self.rx = self.next_generation(&self.rx)?;
        Ok(())
    }

    /// TLS 1.3 KeyUpdate of the sending direction (after our KeyUpdate went
    /// out under the old key).
    pub(crate) fn update_tx(&mut self) -> Result<(), TlsError> {
        self.tx = self.next_generation(&self.tx)?;
        Ok(())
    }

    fn next_generation(&self, d: &Direction) -> Result<Direction, TlsError> {
        if self.version != TlsVersion::Tls13 {
            return Err(TlsError::UnexpectedRecord(HANDSHAKE));
        }
        let secret = next_traffic_secret(self.hash, d.secret.expose());
        let (key, iv) = traffic_keys(self.cipher, self.hash, &secret);
        Direction::new(
            self.cipher,
            &TlsDirection {
                seq: 0,
                key: Secret::new(key),
                iv: Secret::new(iv),
                traffic_secret: Secret::new(secret),
            },
        )
    }
}

/// The record key and IV of a TLS 1.3 traffic secret (RFC 8446 §7.3).
/// RFC 8446 §7.2: the application traffic secret after a KeyUpdate.
pub(crate) fn next_traffic_secret(hash: TlsHash, secret: &[u8]) -> Vec<u8> {
    let hash_len = match hash {
        TlsHash::Sha256 => 32,
        TlsHash::Sha384 => 48,
    };
    expand_label(hash, secret, b"traffic upd", hash_len)
}

pub(crate) fn traffic_keys(cipher: TlsCipher, hash: TlsHash, secret: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = expand_label(hash, secret, b"key", algorithm(cipher).key_len());
    let iv = expand_label(hash, secret, b"iv", aead::NONCE_LEN);
    (key, iv)
}

/// TLS 1.2 additional data: seq_num ‖ type ‖ version ‖ length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11] = (len >> 8) as u8;
    aad[12] = len as u8;
    aad
}

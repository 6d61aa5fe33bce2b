//! The frame: an 8-byte header and a bincode payload, which for a message
//! that carries a snapshot is followed by the snapshot's bytes as they are.
//!
//! ```text
//! 0      2        4                8
//! | magic | n_fds  | payload length | payload ...
//!   "HF"    u16 BE   u32 BE           message
//!   "HB"                              message length (u32 BE) | message | blob
//! ```
//!
//! `n_fds` descriptors travel with the frame as `SCM_RIGHTS` ancillary data
//! attached to its first bytes. The header is validated as soon as its 8 bytes
//! are in: a wrong magic, too many descriptors or a length over the channel's
//! limit is refused before the payload is read or any buffer is sized for it.
//!
//! # The blob
//!
//! A [`Message`] may hold one large byte string, a snapshot's, that its
//! serde encoding leaves out (the message's snapshot fields are encoded
//! with [`crate::snapshot::envelope`]): it is the frame's *blob*, written
//! after the encoded message from its own memory ([`Encoded`]) and, on the
//! receiving side, a slice of the received buffer rather than a copy
//! ([`decode_shared`]). The message part of a received frame is wiped once
//! decoded: beside a snapshot, a frame may carry a handed-over TLS session,
//! whose bytes must not stay in memory for as long as the snapshot does.

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;
use zeroize::Zeroize;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// First two bytes of every frame without a blob: garbage on a socket is
/// recognised at once.
pub const MAGIC: [u8; 2] = *b"HF";
/// First two bytes of a frame whose message is followed by a blob.
pub const MAGIC_BLOB: [u8; 2] = *b"HB";
/// Bytes of the message length that starts a blob frame's payload.
const MESSAGE_LEN: usize = 4;
/// Most descriptors one frame may carry (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 253;
/// Largest frame on the supervisor ⇄ worker channel: a snapshot travels in one
/// frame, so this bounds the state a worker can hand over.
pub const MAX_WORKER_FRAME: usize = 1 << 30;
/// Largest frame on the control socket, in either direction.
pub const MAX_CTL_FRAME: usize = 4 << 20;
/// Blobs at least this long are written from their own memory rather than
/// copied into the frame buffer (below it a copy is cheaper than another
/// system call).
pub const SPLICE_MIN: usize = 16 * 1024;

/// Why a frame could not be built or read.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error(
        "bad frame magic {found:02x?} (expected \"HF\" or \"HB\"): the peer does not speak this protocol"
    )]
    BadMagic { found: [u8; 2] },
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("frame declares {n_fds} descriptors, more than the {max} allowed")]
    TooManyFds { n_fds: usize, max: usize },
    #[error("cannot encode message: {0}")]
    Encode(#[source] bincode::Error),
    #[error("cannot decode a {what} message: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },
    #[error("a blob frame's message length {len} runs past its {payload}-byte payload")]
    MessageLength { len: usize, payload: usize },
    #[error("the frame carries a blob, but its {what} message has no snapshot to put it in")]
    UnexpectedBlob { what: &'static str },
    #[error("the {what} message carries a snapshot, but the frame has no blob for its bytes")]
    MissingBlob { what: &'static str },
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub n_fds: usize,
    pub len: usize,
    /// The payload is the message length, the message and a blob.
    pub blob: bool,
}

impl Header {
    /// Parse and validate a header against `max_len` and [`MAX_FDS`].
    pub fn parse(bytes: &[u8; HEADER_LEN], max_len: usize) -> Result<Header, FrameError> {
        let found = [bytes[0], bytes[1]];
        let blob = match found {
            MAGIC => false,
            MAGIC_BLOB => true,
            _ => return Err(FrameError::BadMagic { found }),
        };
        let n_fds = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if n_fds > MAX_FDS {
            return Err(FrameError::TooManyFds {
                n_fds,
                max: MAX_FDS,
            });
        }
        if len > max_len {
            return Err(FrameError::TooLarge { len, max: max_len });
        }
        Ok(Header { n_fds, len, blob })
    }
}

/// A message a frame carries. A message may hold one snapshot whose bytes
/// its serde encoding leaves out: they travel as the frame's blob (see the
/// module docs). Messages without one keep the defaults.
pub trait Message: Serialize + DeserializeOwned {
    /// The bytes that follow the encoded message, if it has a snapshot.
    fn blob(&self) -> Option<&Bytes> {
        None
    }

    /// Where a received blob goes: the snapshot's bytes, if it has one.
    fn blob_mut(&mut self) -> Option<&mut Bytes> {
        None
    }
}

/// The message type's short name, for errors.
fn what<T>() -> &'static str {
    std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("protocol")
}

fn options(limit: usize) -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(limit as u64)
        .reject_trailing_bytes()
}

/// The encoded message's length and the payload's, refused when the payload
/// or `n_fds` exceeds the limits.
fn checked_len<T: Message>(
    msg: &T,
    n_fds: usize,
    max_len: usize,
) -> Result<(usize, usize), FrameError> {
    use bincode::Options;
    if n_fds > MAX_FDS {
        return Err(FrameError::TooManyFds {
            n_fds,
            max: MAX_FDS,
        });
    }
    let message = options(max_len)
        .serialized_size(msg)
        .map_err(FrameError::Encode)? as usize;
    let len = message + msg.blob().map_or(0, |b| MESSAGE_LEN + b.len());
    if len > max_len || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    Ok((message, len))
}

/// Encode `msg` as one whole frame (header, payload, blob) declaring `n_fds`.
pub fn encode<T: Message>(msg: &T, n_fds: usize, max_len: usize) -> Result<Vec<u8>, FrameError> {
    Ok(encode_parts(msg, n_fds, max_len)?.parts().concat())
}

/// A frame in two parts: `head` (header, message, and a small blob) and a
/// large blob, sent from the message's own memory. Writing the parts in
/// order puts the frame on the wire without copying a snapshot into a frame
/// buffer first.
#[derive(Debug)]
pub struct Encoded {
    head: Vec<u8>,
    blob: Option<Bytes>,
}

/// The frame's own bytes are wiped once it is sent: they may hold a handed-
/// over TLS session's keys ([`crate::tls`]). The blob is the caller's (a
/// snapshot), not a copy, and is left alone.
impl Drop for Encoded {
    fn drop(&mut self) {
        self.head.zeroize();
    }
}

impl Encoded {
    /// The frame's bytes, in order (empty parts left out).
    pub fn parts(&self) -> Vec<&[u8]> {
        [Some(&self.head[..]), self.blob.as_deref()]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.blob.as_ref().map_or(0, Bytes::len)
    }

    /// Whether the frame is empty (it never is: the header is there).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encode `msg` as a frame whose blob, if large, is not copied: see
/// [`Encoded`].
pub fn encode_parts<T: Message>(
    msg: &T,
    n_fds: usize,
    max_len: usize,
) -> Result<Encoded, FrameError> {
    use bincode::Options;
    let (message, len) = checked_len(msg, n_fds, max_len)?;
    let blob = msg.blob();
    let copied = blob.filter(|b| b.len() < SPLICE_MIN).map_or(0, Bytes::len);
    let mut head = Vec::with_capacity(HEADER_LEN + MESSAGE_LEN + message + copied);
    head.extend_from_slice(if blob.is_some() { &MAGIC_BLOB } else { &MAGIC });
    head.extend_from_slice(&(n_fds as u16).to_be_bytes());
    head.extend_from_slice(&(len as u32).to_be_bytes());
    if blob.is_some() {
        head.extend_from_slice(&(message as u32).to_be_bytes());
    }
    let mut encoded = Encoded { head, blob: None };
    options(max_len)
        .serialize_into(&mut encoded.head, msg)
        .map_err(FrameError::Encode)?;
    match blob {
        Some(b) if b.len() >= SPLICE_MIN => encoded.blob = Some(b.clone()),
        Some(b) => encoded.head.extend_from_slice(b),
        None => {}
    }
    Ok(encoded)
}

/// A blob frame's payload split into its message and its blob.
fn split_blob(payload: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let len = payload
        .get(..MESSAGE_LEN)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(FrameError::MessageLength {
            len: MESSAGE_LEN,
            payload: payload.len(),
        })?;
    let end = MESSAGE_LEN
        .checked_add(len)
        .filter(|end| *end <= payload.len())
        .ok_or(FrameError::MessageLength {
            len,
            payload: payload.len(),
        })?;
    Ok((&payload[MESSAGE_LEN..end], &payload[end..]))
}

/// Put the received `blob` where `msg` keeps its snapshot's bytes.
fn attach<T: Message>(mut msg: T, blob: Bytes) -> Result<T, FrameError> {
    match msg.blob_mut() {
        Some(slot) => {
            *slot = blob;
            Ok(msg)
        }
        None => Err(FrameError::UnexpectedBlob { what: what::<T>() }),
    }
}

/// Decode the payload of a frame with `header`, copying its blob (if any).
pub fn decode<T: Message>(header: &Header, payload: &[u8]) -> Result<T, FrameError> {
    if !header.blob {
        let msg = decode_message::<T>(payload)?;
        if msg.blob().is_some() {
            return Err(FrameError::MissingBlob { what: what::<T>() });
        }
        return Ok(msg);
    }
    let (message, blob) = split_blob(payload)?;
    attach(decode_message::<T>(message)?, Bytes::copy_from_slice(blob))
}

/// Decode the payload of a frame with `header`, its blob (the snapshot's
/// bytes) left where it is, a slice of `payload`, and everything else in
/// `payload` wiped.
pub fn decode_shared<T: Message>(header: &Header, payload: BytesMut) -> Result<T, FrameError> {
    decode_wiping(header, payload).map(|(msg, _wiped)| msg)
}

/// [`decode_shared`], also returning the wiped message part of the payload.
fn decode_wiping<T: Message>(
    header: &Header,
    mut payload: BytesMut,
) -> Result<(T, BytesMut), FrameError> {
    if !header.blob {
        let msg = decode::<T>(header, &payload);
        payload.as_mut().zeroize();
        return msg.map(|m| (m, payload));
    }
    let message_len = match split_blob(&payload) {
        Ok((message, _)) => MESSAGE_LEN + message.len(),
        Err(e) => {
            payload.as_mut().zeroize();
            return Err(e);
        }
    };
    let mut message = payload.split_to(message_len);
    let msg = decode_message::<T>(&message[MESSAGE_LEN..]);
    message.as_mut().zeroize();
    Ok((attach(msg?, payload.freeze())?, message))
}

/// Decode an encoded message (without its blob) as a `T`.
fn decode_message<T: DeserializeOwned>(message: &[u8]) -> Result<T, FrameError> {
    use bincode::Options;
    options(message.len())
        .deserialize(message)
        .map_err(|source| FrameError::Decode {
            what: what::<T>(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{ConnId, ConnLeftovers, FromWorker, Frozen, ToWorker};

    fn header_of(frame: &[u8]) -> Header {
        Header::parse(frame[..HEADER_LEN].try_into().unwrap(), MAX_WORKER_FRAME).unwrap()
    }

    #[test]
    fn round_trip() {
        let msg = ToWorker::Freeze {
            schema: None,
            catch_up: false,
        };
        let bytes = encode(&msg, 0, MAX_CTL_FRAME).unwrap();
        let h = header_of(&bytes);
        assert_eq!(h.len, bytes.len() - HEADER_LEN);
        assert!(!h.blob);
        let back: ToWorker = decode(&h, &bytes[HEADER_LEN..]).unwrap();
        assert!(matches!(back, ToWorker::Freeze { .. }));
    }

    #[test]
    fn oversized_length_refused_from_header_alone() {
        let mut h = [0u8; HEADER_LEN];
        h[..2].copy_from_slice(&MAGIC);
        h[4..].copy_from_slice(&u32::MAX.to_be_bytes());
        match Header::parse(&h, MAX_CTL_FRAME) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, MAX_CTL_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn garbage_and_wrong_kinds_are_errors() {
        assert!(matches!(
            Header::parse(b"GET / HT", MAX_CTL_FRAME),
            Err(FrameError::BadMagic { .. })
        ));
        // A variant index out of range.
        let plain = Header {
            n_fds: 0,
            len: 4,
            blob: false,
        };
        let r: Result<FromWorker, _> = decode(&plain, &[0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(r, Err(FrameError::Decode { .. })));
    }

    fn frozen_with(state: usize) -> FromWorker {
        FromWorker::Frozen(Frozen {
            snapshot: crate::Snapshot::seal("bot", 1, (0..state).map(|i| (i * 7) as u8).collect()),
            conns: vec![ConnLeftovers {
                id: ConnId(3),
                leftovers: vec![9; 40_000],
                tls: None,
            }],
            frozen_at_ns: 42,
            summary: Some("{}".into()),
            digest: None,
        })
    }

    #[test]
    fn a_snapshot_follows_its_message_as_the_blob_and_comes_back_shared() {
        for state in [0, 10, SPLICE_MIN - 1, SPLICE_MIN, 300_000] {
            let msg = frozen_with(state);
            let parts = encode_parts(&msg, 2, MAX_WORKER_FRAME).unwrap();
            let whole = encode(&msg, 2, MAX_WORKER_FRAME).unwrap();
            assert_eq!(parts.parts().concat(), whole, "state of {state} bytes");
            assert_eq!(parts.parts().len(), if state >= SPLICE_MIN { 2 } else { 1 });
            let h = header_of(&whole);
            assert!(h.blob && h.n_fds == 2 && h.len == whole.len() - HEADER_LEN);
            // The blob is the snapshot's bytes as they are, at the end.
            let FromWorker::Frozen(f) = &msg else {
                unreachable!()
            };
            assert!(whole.ends_with(&f.snapshot.bytes));
            // Copied or shared, the same message comes back.
            assert_eq!(decode::<FromWorker>(&h, &whole[HEADER_LEN..]).unwrap(), msg);
            let payload = BytesMut::from(&whole[HEADER_LEN..]);
            let frame = payload.as_ptr_range();
            let back = decode_shared::<FromWorker>(&h, payload).unwrap();
            assert_eq!(back, msg, "state of {state} bytes");
            if let FromWorker::Frozen(f) = back {
                if state > 0 {
                    assert!(frame.contains(&f.snapshot.bytes.as_ptr()), "not shared");
                }
            }
        }
    }

    /// A frame carries a snapshot and the TLS sessions of the frozen worker:
    /// once decoded, the snapshot is a slice of it, and the rest is zeros.
    #[test]
    fn a_decoded_frame_keeps_its_snapshot_and_wipes_the_rest() {
        let key = [0xA5u8; 32];
        let has_key = |b: &[u8]| b.windows(key.len()).any(|w| w == key);
        let state: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let conn = |id| ConnLeftovers {
            id: ConnId(id),
            leftovers: vec![id as u8; 20_000],
            tls: Some(crate::tls::session_of(0xA5)),
        };
        let msg = FromWorker::Frozen(Frozen {
            snapshot: crate::Snapshot::seal("bot", 1, state.clone()),
            conns: vec![conn(1), conn(2)],
            frozen_at_ns: 42,
            summary: Some("{}".into()),
            digest: None,
        });
        let whole = encode(&msg, 0, MAX_WORKER_FRAME).unwrap();
        assert!(has_key(&whole), "the sessions are in the frame as sent");
        let payload = BytesMut::from(&whole[HEADER_LEN..]);
        let (back, wiped) = decode_wiping::<FromWorker>(&header_of(&whole), payload).unwrap();
        assert_eq!(back, msg);
        assert!(wiped.len() > 40_000, "the message part: {}", wiped.len());
        assert!(
            wiped.iter().all(|b| *b == 0),
            "the message part is not wiped"
        );
    }

    #[test]
    fn a_blob_where_none_belongs_or_none_where_one_does_is_refused() {
        // A Frozen message in a frame without a blob.
        let FromWorker::Frozen(f) = frozen_with(10) else {
            unreachable!()
        };
        let plain = {
            use bincode::Options;
            options(MAX_WORKER_FRAME)
                .serialize(&FromWorker::Frozen(f))
                .unwrap()
        };
        let h = Header {
            n_fds: 0,
            len: plain.len(),
            blob: false,
        };
        assert!(matches!(
            decode::<FromWorker>(&h, &plain),
            Err(FrameError::MissingBlob { .. })
        ));
        // A Ready message followed by a blob.
        let ready = encode(&FromWorker::Ready, 0, 1024).unwrap();
        let mut payload = (ready.len() as u32 - HEADER_LEN as u32)
            .to_be_bytes()
            .to_vec();
        payload.extend_from_slice(&ready[HEADER_LEN..]);
        payload.extend_from_slice(b"stray");
        let h = Header {
            n_fds: 0,
            len: payload.len(),
            blob: true,
        };
        assert!(matches!(
            decode_shared::<FromWorker>(&h, BytesMut::from(&payload[..])),
            Err(FrameError::UnexpectedBlob { .. })
        ));
        // A message length past the payload.
        let bad = [0, 0, 1, 0, 1, 2];
        let h = Header {
            n_fds: 0,
            len: bad.len(),
            blob: true,
        };
        assert!(matches!(
            decode::<FromWorker>(&h, &bad),
            Err(FrameError::MessageLength {
                len: 256,
                payload: 6
            })
        ));
    }

    proptest::proptest! {
        /// A frame with a snapshot, bent anywhere: decoding it is an error
        /// or a message, never a panic.
        #[test]
        fn bent_blob_frames_never_panic(
            cuts in proptest::collection::vec((0usize..1 << 20, proptest::num::u8::ANY), 1..8),
            keep in 0usize..1 << 20,
        ) {
            let whole = encode(&frozen_with(SPLICE_MIN + 100), 0, MAX_WORKER_FRAME).unwrap();
            let mut payload = whole[HEADER_LEN..].to_vec();
            for (at, byte) in cuts {
                let at = at % payload.len();
                payload[at] = byte;
            }
            payload.truncate(keep % (payload.len() + 1));
            let h = Header { n_fds: 0, len: payload.len(), blob: true };
            let _ = decode_shared::<FromWorker>(&h, BytesMut::from(&payload[..]));
            let _ = decode::<ToWorker>(&h, &payload);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), blob: bool) {
            let h = Header { n_fds: 0, len: bytes.len(), blob };
            let _ = decode::<FromWorker>(&h, &bytes);
            let _ = decode::<ToWorker>(&h, &bytes);
            let _ = decode::<crate::ctl::CtlRequest>(&h, &bytes);
            let _ = decode::<crate::ctl::CtlResponse>(&h, &bytes);
            if bytes.len() >= HEADER_LEN {
                let _ = Header::parse(bytes[..HEADER_LEN].try_into().unwrap(), MAX_CTL_FRAME);
            }
        }
    }
}

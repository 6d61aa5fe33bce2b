//! The frame: an 8-byte header and a bincode payload.
//!
//! ```text
//! 0      2        4                8
//! | magic | n_fds  | payload length | payload ...
//!   "HF"    u16 BE   u32 BE
//! ```
//!
//! `n_fds` descriptors travel with the frame as `SCM_RIGHTS` ancillary data
//! attached to its first bytes. The header is validated as soon as its 8 bytes
//! are in: a wrong magic, too many descriptors or a length over the channel's
//! limit is refused before the payload is read or any buffer is sized for it.

use std::cell::RefCell;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// First two bytes of every frame: garbage on a socket is recognised at once.
pub const MAGIC: [u8; 2] = *b"HF";
/// Most descriptors one frame may carry (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 253;
/// Largest frame on the supervisor ⇄ worker channel: a snapshot travels in one
/// frame, so this bounds the state a worker can hand over.
pub const MAX_WORKER_FRAME: usize = 1 << 30;
/// Largest frame on the control socket, in either direction.
pub const MAX_CTL_FRAME: usize = 4 << 20;

/// Why a frame could not be built or read.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error(
        "bad frame magic {found:02x?} (expected \"HF\"): the peer does not speak this protocol"
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
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub n_fds: usize,
    pub len: usize,
}

impl Header {
    /// Parse and validate a header against `max_len` and [`MAX_FDS`].
    pub fn parse(bytes: &[u8; HEADER_LEN], max_len: usize) -> Result<Header, FrameError> {
        let found = [bytes[0], bytes[1]];
        if found != MAGIC {
            return Err(FrameError::BadMagic { found });
        }
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
        Ok(Header { n_fds, len })
    }
}

fn options(limit: usize) -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(limit as u64)
        .reject_trailing_bytes()
}

/// The payload length of `msg`, refused when it or `n_fds` exceeds the limits.
fn checked_len<T: Serialize>(msg: &T, n_fds: usize, max_len: usize) -> Result<usize, FrameError> {
    use bincode::Options;
    if n_fds > MAX_FDS {
        return Err(FrameError::TooManyFds {
            n_fds,
            max: MAX_FDS,
        });
    }
    let len = options(max_len)
        .serialized_size(msg)
        .map_err(FrameError::Encode)? as usize;
    if len > max_len || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    Ok(len)
}

/// Encode `msg` as one whole frame (header and payload) declaring `n_fds`.
pub fn encode<T: Serialize>(msg: &T, n_fds: usize, max_len: usize) -> Result<Vec<u8>, FrameError> {
    use bincode::Options;
    let len = checked_len(msg, n_fds, max_len)?;
    let opts = options(max_len);
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(n_fds as u16).to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    opts.serialize_into(&mut out, msg)
        .map_err(FrameError::Encode)?;
    Ok(out)
}

/// A frame encoded in parts: `head` is the frame without the contents of its
/// large byte strings (their length prefixes are in place), and each splice
/// says where in `head` one string's bytes belong. Writing the parts in
/// order ([`Encoded::parts`]) puts the same bytes on the wire as
/// [`encode`], without copying a snapshot into a frame buffer first.
#[derive(Debug)]
pub struct Encoded {
    head: Vec<u8>,
    splices: Vec<(usize, Bytes)>,
}

/// The frame's own bytes are wiped once it is sent: they may hold a handed-
/// over TLS session's keys ([`crate::tls`]). The spliced parts are the
/// caller's (snapshots), not copies, and are left alone.
impl Drop for Encoded {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.head);
    }
}

impl Encoded {
    /// The frame's bytes, in order (empty parts left out).
    pub fn parts(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(2 * self.splices.len() + 1);
        let mut at = 0;
        for (off, b) in &self.splices {
            out.push(&self.head[at..*off]);
            out.push(&b[..]);
            at = *off;
        }
        out.push(&self.head[at..]);
        out.retain(|p| !p.is_empty());
        out
    }

    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.splices.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    /// Whether the frame is empty (it never is: the header is there).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Byte strings at least this long are spliced into a frame rather than
/// copied (below it a copy is cheaper than another system call).
pub const SPLICE_MIN: usize = 16 * 1024;

thread_local! {
    /// Set while [`encode_parts`] serializes: large [`Bytes`] fields are
    /// recorded here instead of being copied into the frame.
    static SPLICES: RefCell<Option<Splicer>> = const { RefCell::new(None) };
    /// Set while [`decode_shared`] deserializes: [`Bytes`] fields become
    /// slices of this buffer instead of copies.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

#[derive(Debug, Default)]
struct Splicer {
    /// Payload bytes written so far (spliced ones included).
    written: usize,
    splices: Vec<(usize, Bytes)>,
}

/// A `Write` that appends to a `Vec` and counts what the splicer must know.
struct CountingWriter<'a>(&'a mut Vec<u8>);

impl std::io::Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        SPLICES.with(|s| {
            if let Some(s) = s.borrow_mut().as_mut() {
                s.written += buf.len();
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Like [`encode`], but large [`Bytes`] fields (those serialized through
/// [`shared_bytes`]) are not copied into the frame: see [`Encoded`].
pub fn encode_parts<T: Serialize>(
    msg: &T,
    n_fds: usize,
    max_len: usize,
) -> Result<Encoded, FrameError> {
    use bincode::Options;
    let len = checked_len(msg, n_fds, max_len)?;
    let mut head = Vec::with_capacity(HEADER_LEN + len.min(SPLICE_MIN));
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&(n_fds as u16).to_be_bytes());
    head.extend_from_slice(&(len as u32).to_be_bytes());
    SPLICES.with(|s| *s.borrow_mut() = Some(Splicer::default()));
    // Without a limit: with one, bincode would size the message again
    // first, running the splicing serializer on a pass that writes nothing
    // (the size was checked above).
    let result = bincode::DefaultOptions::new()
        .reject_trailing_bytes()
        .serialize_into(CountingWriter(&mut head), msg);
    let splicer = SPLICES.with(|s| s.borrow_mut().take()).unwrap_or_default();
    result.map_err(FrameError::Encode)?;
    // Offsets in the payload become offsets in `head`: the spliced bytes
    // before each one are not in `head`.
    let mut skipped = 0;
    let splices = splicer
        .splices
        .into_iter()
        .map(|(at, b)| {
            let off = HEADER_LEN + at - skipped;
            skipped += b.len();
            (off, b)
        })
        .collect();
    Ok(Encoded { head, splices })
}

/// Decode a payload held in `payload` as a `T`; its [`Bytes`] fields (those
/// deserialized through [`shared_bytes`]) share `payload`'s memory instead
/// of being copied out of it.
pub fn decode_shared<T: DeserializeOwned>(payload: &Bytes) -> Result<T, FrameError> {
    SOURCE.with(|s| *s.borrow_mut() = Some(payload.clone()));
    let decoded = decode(payload);
    SOURCE.with(|s| *s.borrow_mut() = None);
    decoded
}

/// `#[serde(with = "shared_bytes")]` for a [`Bytes`] field: the same encoding
/// as `Bytes`' own (a length and the bytes), but inside [`encode_parts`] a
/// large value is spliced into the frame instead of copied, and inside
/// [`decode_shared`] the value is a slice of the received frame.
pub mod shared_bytes {
    use super::{Bytes, SOURCE, SPLICES, SPLICE_MIN};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        let spliced = b.len() >= SPLICE_MIN
            && SPLICES.with(|sp| {
                sp.borrow_mut().as_mut().is_some_and(|sp| {
                    // The length prefix goes out first: the bytes follow it.
                    sp.splices.push((usize::MAX, b.clone()));
                    true
                })
            });
        if !spliced {
            return s.serialize_bytes(b);
        }
        // bincode writes a byte string's length exactly as it writes a u64
        // (fixint or varint alike), then the bytes.
        let ok = s.serialize_u64(b.len() as u64)?;
        SPLICES.with(|sp| {
            if let Some(sp) = sp.borrow_mut().as_mut() {
                let at = sp.written;
                if let Some(last) = sp.splices.last_mut() {
                    last.0 = at;
                }
                sp.written += b.len();
            }
        });
        Ok(ok)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_bytes(Visitor)
    }

    struct Visitor;

    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            let shared = SOURCE.with(|s| {
                s.borrow().as_ref().and_then(|src| {
                    let range = src.as_ptr_range();
                    let inside = range.start <= v.as_ptr() && v.as_ptr_range().end <= range.end;
                    inside.then(|| src.slice_ref(v))
                })
            });
            Ok(shared.unwrap_or_else(|| Bytes::copy_from_slice(v)))
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(Bytes::from(v))
        }
    }
}

/// Decode a payload (the bytes after the header) as a `T`.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    use bincode::Options;
    options(payload.len())
        .deserialize(payload)
        .map_err(|source| FrameError::Decode {
            what: std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("protocol"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{FromWorker, ToWorker};

    #[test]
    fn round_trip() {
        let msg = ToWorker::Freeze { schema: None };
        let bytes = encode(&msg, 0, MAX_CTL_FRAME).unwrap();
        let h = Header::parse(bytes[..HEADER_LEN].try_into().unwrap(), MAX_CTL_FRAME).unwrap();
        assert_eq!(h.len, bytes.len() - HEADER_LEN);
        let back: ToWorker = decode(&bytes[HEADER_LEN..]).unwrap();
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
        let bytes = encode(&ToWorker::Go, 0, MAX_CTL_FRAME).unwrap();
        // A supervisor→worker message read as worker→supervisor either decodes
        // to some variant or fails; here the variant index is out of range.
        let r: Result<FromWorker, _> = decode(&[0xff, 0xff, 0xff, 0x0f]);
        assert!(r.is_err());
        let _ = bytes;
    }

    fn frozen_with(state: usize) -> FromWorker {
        use crate::worker::{ConnId, ConnLeftovers, Frozen};
        FromWorker::Frozen(Frozen {
            snapshot: crate::Snapshot::seal("bot", 1, (0..state).map(|i| (i * 7) as u8).collect()),
            conns: vec![ConnLeftovers {
                id: ConnId(3),
                leftovers: vec![9; 40_000],
                tls: None,
            }],
            frozen_at_ns: 42,
            summary: Some("{}".into()),
        })
    }

    #[test]
    fn spliced_frames_carry_the_same_bytes() {
        for state in [0, 10, SPLICE_MIN - 1, SPLICE_MIN, 300_000] {
            let msg = frozen_with(state);
            let whole = encode(&msg, 2, MAX_WORKER_FRAME).unwrap();
            let parts = encode_parts(&msg, 2, MAX_WORKER_FRAME).unwrap();
            assert_eq!(parts.len(), whole.len());
            assert_eq!(parts.parts().concat(), whole, "state of {state} bytes");
            let payload = Bytes::copy_from_slice(&whole[HEADER_LEN..]);
            let back: FromWorker = decode_shared(&payload).unwrap();
            assert_eq!(back, msg);
            if let FromWorker::Frozen(f) = back {
                if state > 0 {
                    let inside = payload.as_ptr_range().contains(&f.snapshot.bytes.as_ptr());
                    assert!(inside, "the snapshot was copied out of the frame");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<FromWorker>(&bytes);
            let _ = decode::<ToWorker>(&bytes);
            let _ = decode::<crate::ctl::CtlRequest>(&bytes);
            let _ = decode::<crate::ctl::CtlResponse>(&bytes);
            if bytes.len() >= HEADER_LEN {
                let _ = Header::parse(bytes[..HEADER_LEN].try_into().unwrap(), MAX_CTL_FRAME);
            }
        }
    }
}

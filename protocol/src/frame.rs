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
use std::collections::VecDeque;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
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
    /// Set while [`decode_shared`] deserializes: how [`shared_bytes`]
    /// fields are read in each of its two passes.
    static SHARING: RefCell<Option<Sharing>> = const { RefCell::new(None) };
}

/// The two passes of [`decode_shared`], as [`shared_bytes`] sees them.
#[derive(Debug)]
enum Sharing {
    /// First pass, over the whole frame: note where each byte string of
    /// [`SPLICE_MIN`] bytes or more lies in it (`frame` is the frame's
    /// address range), in the order they are read, and yield it empty;
    /// smaller ones are copied (`None`).
    Locate {
        frame: Range<usize>,
        found: Vec<Option<Range<usize>>>,
    },
    /// Second pass, over the frame without those byte strings: hand out the
    /// slices of the frame that stand for them, in the same order.
    Hand { slices: VecDeque<Option<Bytes>> },
}

/// What [`shared_bytes`] makes of a byte string read from a frame.
fn share(v: &[u8]) -> Bytes {
    SHARING.with(|sh| match sh.borrow_mut().as_mut() {
        None => Bytes::copy_from_slice(v),
        Some(Sharing::Locate { frame, found }) => {
            let at = v.as_ptr() as usize;
            let inside = frame.start <= at && at + v.len() <= frame.end;
            if inside && v.len() >= SPLICE_MIN {
                let start = at - frame.start;
                found.push(Some(start..start + v.len()));
                Bytes::new()
            } else {
                found.push(None);
                Bytes::copy_from_slice(v)
            }
        }
        Some(Sharing::Hand { slices }) => match slices.pop_front().flatten() {
            Some(slice) if v.is_empty() => slice,
            _ => Bytes::copy_from_slice(v),
        },
    })
}

/// [`share`] for a byte string already copied out of the input: kept as it
/// is outside [`decode_shared`].
fn share_owned(v: Vec<u8>) -> Bytes {
    if SHARING.with(|sh| sh.borrow().is_none()) {
        Bytes::from(v)
    } else {
        share(&v)
    }
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

/// Decode a received payload as a `T` whose large [`Bytes`] fields (those
/// deserialized through [`shared_bytes`], [`SPLICE_MIN`] bytes or more)
/// are slices of `payload` rather than copies, and wipe everything else in
/// `payload`: a frame may carry a handed-over TLS session beside a
/// snapshot, and its bytes must not stay in memory, held or freed, for as
/// long as the snapshot does.
pub fn decode_shared<T: DeserializeOwned>(payload: BytesMut) -> Result<T, FrameError> {
    decode_and_wipe(payload).map(|(msg, _frame)| msg)
}

/// [`decode_shared`], also returning what is left of the frame.
///
/// The first pass decodes the frame and notes where its large byte strings
/// lie. Where there are none, that is the message, and the whole frame is
/// wiped. Otherwise the rest of the frame is copied out (each large byte
/// string's length written as 0), wiped in place, and decoded again with
/// the slices handed in.
fn decode_and_wipe<T: DeserializeOwned>(mut payload: BytesMut) -> Result<(T, Bytes), FrameError> {
    use zeroize::Zeroize;
    let frame = payload.as_ptr_range();
    SHARING.with(|sh| {
        *sh.borrow_mut() = Some(Sharing::Locate {
            frame: frame.start as usize..frame.end as usize,
            found: Vec::new(),
        })
    });
    let first = decode::<T>(&payload);
    let found = match SHARING.with(|sh| sh.borrow_mut().take()) {
        Some(Sharing::Locate { found, .. }) => found,
        _ => Vec::new(),
    };
    let shared = first.is_ok() && found.iter().any(Option::is_some);
    if !shared {
        payload.as_mut().zeroize();
        return first.map(|msg| (msg, payload.freeze()));
    }
    drop(first);
    let Some(rest) = without_shared(&payload, &found) else {
        // Not bincode's layout after all: copy rather than share.
        let copied = decode::<T>(&payload);
        payload.as_mut().zeroize();
        return copied.map(|msg| (msg, payload.freeze()));
    };
    let mut at = 0;
    for r in found.iter().flatten() {
        payload[at..r.start].zeroize();
        at = r.end;
    }
    payload[at..].zeroize();
    let frame = payload.freeze();
    let slices = found
        .into_iter()
        .map(|r| r.map(|r| frame.slice(r)))
        .collect();
    SHARING.with(|sh| *sh.borrow_mut() = Some(Sharing::Hand { slices }));
    let second = decode::<T>(&rest);
    SHARING.with(|sh| *sh.borrow_mut() = None);
    second.map(|msg| (msg, frame))
}

/// `payload` without the byte strings at `found`, each one's length
/// prefix rewritten as an empty string's; `None` where a prefix is not
/// where it belongs (never, for bincode's own output).
/// Wiped when dropped, and sized once, so that no copy of the sessions is
/// left behind by a growing buffer.
fn without_shared(
    payload: &[u8],
    found: &[Option<Range<usize>>],
) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use bincode::Options;
    let len_bytes = |n: usize| bincode::DefaultOptions::new().serialize(&(n as u64)).ok();
    let empty = len_bytes(0)?;
    let shared: usize = found.iter().flatten().map(|r| r.len()).sum();
    let mut rest =
        zeroize::Zeroizing::new(Vec::with_capacity(payload.len().saturating_sub(shared)));
    let mut at = 0;
    for r in found.iter().flatten() {
        let prefix = len_bytes(r.len())?;
        let start = r.start.checked_sub(prefix.len()).filter(|s| *s >= at)?;
        if payload[start..r.start] != prefix[..] {
            return None;
        }
        rest.extend_from_slice(&payload[at..start]);
        rest.extend_from_slice(&empty);
        at = r.end;
    }
    rest.extend_from_slice(&payload[at..]);
    Some(rest)
}

/// `#[serde(with = "shared_bytes")]` for a [`Bytes`] field: the same encoding
/// as `Bytes`' own (a length and the bytes), but inside [`encode_parts`] a
/// large value is spliced into the frame instead of copied, and inside
/// [`decode_shared`] the value is a slice of the received frame.
pub mod shared_bytes {
    use super::{share, share_owned, Bytes, SPLICES, SPLICE_MIN};
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
            Ok(share(v))
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(share(v))
        }

        // bincode reads byte strings borrowed, so these two are not reached;
        // they go through `share` too, so that decode_shared's two passes
        // count every byte string whatever the format.
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(share_owned(v))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(share_owned(v))
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
            let payload = BytesMut::from(&whole[HEADER_LEN..]);
            let (back, frame) = decode_and_wipe::<FromWorker>(payload).unwrap();
            assert_eq!(back, msg);
            if let FromWorker::Frozen(f) = back {
                let inside = frame.as_ptr_range().contains(&f.snapshot.bytes.as_ptr());
                assert_eq!(
                    inside,
                    state >= SPLICE_MIN,
                    "state of {state} bytes: a large one is shared, a small one copied"
                );
            }
        }
    }

    /// A large frame carries a snapshot and the TLS sessions of the frozen
    /// worker: once decoded, the snapshot is still a slice of it, and
    /// nothing of the sessions is left in it.
    #[test]
    fn a_decoded_frame_keeps_its_snapshot_and_wipes_the_rest() {
        use crate::worker::{ConnId, ConnLeftovers, Frozen};
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
        });
        let whole = encode(&msg, 0, MAX_WORKER_FRAME).unwrap();
        assert!(has_key(&whole), "the sessions are in the frame as sent");
        let payload = BytesMut::from(&whole[HEADER_LEN..]);
        let (back, frame) = decode_and_wipe::<FromWorker>(payload).unwrap();
        assert_eq!(back, msg);
        assert!(!has_key(&frame), "a session's key is left in the frame");
        let FromWorker::Frozen(f) = back else {
            unreachable!("decoded as sent")
        };
        assert!(frame.as_ptr_range().contains(&f.snapshot.bytes.as_ptr()));
        // The frame now holds the snapshot's bytes and zeros, nothing else.
        let kept = frame.iter().filter(|b| **b != 0).count();
        let nonzero = state.iter().filter(|b| **b != 0).count();
        assert_eq!(kept, nonzero, "more than the snapshot is left in the frame");
    }

    proptest::proptest! {
        /// A large frame with a snapshot to share, bent anywhere: decoding
        /// and wiping it is an error or a message, never a panic.
        #[test]
        fn bent_large_frames_never_panic(
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
            let _ = decode_shared::<FromWorker>(BytesMut::from(&payload[..]));
        }

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

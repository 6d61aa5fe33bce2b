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

/// Encode `msg` as one whole frame (header and payload) declaring `n_fds`.
pub fn encode<T: Serialize>(msg: &T, n_fds: usize, max_len: usize) -> Result<Vec<u8>, FrameError> {
    use bincode::Options;
    if n_fds > MAX_FDS {
        return Err(FrameError::TooManyFds {
            n_fds,
            max: MAX_FDS,
        });
    }
    let opts = options(max_len);
    let len = opts.serialized_size(msg).map_err(FrameError::Encode)? as usize;
    if len > max_len || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(n_fds as u16).to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    opts.serialize_into(&mut out, msg)
        .map_err(FrameError::Encode)?;
    Ok(out)
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

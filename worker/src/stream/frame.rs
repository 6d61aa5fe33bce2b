//! Locating frame boundaries in raw bytes, without consuming them.

use std::io::{self, Cursor};

use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::frame::FrameHeader;

use super::StreamError;

/// The end of an HTTP head.
pub(super) const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// Advance a match of [`HEAD_END`] (bytes matched so far) by one byte.
pub(super) fn head_match(matched: usize, b: u8) -> usize {
    if matched < HEAD_END.len() && b == HEAD_END[matched] {
        matched + 1
    } else {
        usize::from(b == b'\r')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extent {
    /// `buf` starts with a whole frame of `len` bytes.
    Complete { len: usize, data: bool, fin: bool },
    /// `buf` is a strict prefix of a frame; `missing` bytes more complete the
    /// frame, or only its header if that is incomplete (`total` unknown).
    Partial {
        missing: usize,
        total: Option<usize>,
    },
}

/// Locate the end of the frame starting at `buf[0]`.
pub(super) fn frame_extent(buf: &[u8], frame_max: usize) -> io::Result<Extent> {
    let mut cursor = Cursor::new(buf);
    let (header, payload) = match FrameHeader::parse(&mut cursor) {
        Err(e) => return Err(StreamError::MalformedHeader(e.to_string()).into()),
        Ok(None) => {
            let header_len: usize = match buf {
                [_, second, ..] => {
                    let ext = match second & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    2 + ext + if second & 0x80 != 0 { 4 } else { 0 }
                }
                _ => 2,
            };
            return Ok(Extent::Partial {
                missing: header_len.saturating_sub(buf.len()).max(1),
                total: None,
            });
        }
        Ok(Some(parsed)) => parsed,
    };
    let too_large = StreamError::FrameTooLarge {
        size: payload,
        limit: frame_max,
    };
    if payload > frame_max as u64 {
        return Err(too_large.into());
    }
    let total = usize::try_from(payload)
        .ok()
        .and_then(|p| p.checked_add(cursor.position() as usize))
        .ok_or(too_large)?;
    Ok(if total <= buf.len() {
        Extent::Complete {
            len: total,
            data: matches!(header.opcode, OpCode::Data(_)),
            fin: header.is_final,
        }
    } else {
        Extent::Partial {
            missing: total - buf.len(),
            total: Some(total),
        }
    })
}

/// Whether `buf` (a sequence of frames) ends inside a frame.
pub(super) fn ends_mid_frame(mut buf: &[u8]) -> bool {
    loop {
        if buf.is_empty() {
            return false;
        }
        match frame_extent(buf, usize::MAX) {
            Ok(Extent::Complete { len, .. }) => buf = &buf[len..],
            Ok(Extent::Partial { .. }) | Err(_) => return true,
        }
    }
}

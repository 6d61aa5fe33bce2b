//! Outgoing side: encoding server frames (fragmentation, pings, padding) and
//! writing the byte stream in random chunks at arbitrary offsets.

use crate::rng::SplitMix64;
use std::io;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::Bytes;

/// The adversarial knobs that shape outgoing frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shaping {
    /// Every Nth message is fragmented (0 = never).
    pub fragment_every: u64,
    /// A ping follows every Nth message (0 = never).
    pub ping_every: u64,
    /// Every Nth message is padded (0 = never).
    pub big_every: u64,
    /// Target size of padded messages.
    pub big_size: usize,
}

/// What one call to [`Encoder::push_text`] produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Ping frames written (after the message and/or between its fragments).
    pub pings: u64,
    /// Whether the message went out fragmented.
    pub fragmented: bool,
}

/// Encodes the messages of one connection into server (unmasked) frames.
/// Messages are numbered per connection from 1; the knobs apply to numbers.
#[derive(Debug)]
pub struct Encoder {
    shaping: Shaping,
    messages: u64,
    fragmented: u64,
    pings: u64,
    rng: SplitMix64,
}

fn nth(number: u64, every: u64) -> bool {
    every > 0 && number.is_multiple_of(every)
}

fn put(frame: Frame, out: &mut Vec<u8>) -> io::Result<()> {
    frame.format(out).map_err(io::Error::other)
}

impl Encoder {
    /// An encoder whose random choices (fragment counts, cut points) follow `seed`.
    pub fn new(shaping: Shaping, seed: u64) -> Self {
        Self {
            shaping,
            messages: 0,
            fragmented: 0,
            pings: 0,
            rng: SplitMix64::new(seed),
        }
    }

    /// Messages pushed so far (the number of the latest one).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// If the next message should carry padding, the size to pad it to.
    pub fn next_pad(&self) -> usize {
        if nth(self.messages + 1, self.shaping.big_every) {
            self.shaping.big_size
        } else {
            0
        }
    }

    /// Append `text` as the next message (possibly fragmented, possibly with pings).
    pub fn push_text(&mut self, text: String, out: &mut Vec<u8>) -> io::Result<Pushed> {
        self.messages += 1;
        let number = self.messages;
        let payload = Bytes::from(text);
        let mut pushed = Pushed::default();
        if nth(number, self.shaping.fragment_every) && payload.len() >= 2 {
            self.fragmented += 1;
            pushed.fragmented = true;
            let cuts = self.cut_points(payload.len());
            // Every other fragmented message carries a ping between two of its
            // fragments (legal: control frames may interleave fragments).
            let ping_after = (self.shaping.ping_every > 0 && self.fragmented % 2 == 1)
                .then(|| self.rng.range_inclusive(0, cuts.len() as u64 - 3) as usize);
            for (i, window) in cuts.windows(2).enumerate() {
                let opcode = if i == 0 { Data::Text } else { Data::Continue };
                let is_final = i + 2 == cuts.len();
                let piece = payload.slice(window[0]..window[1]);
                put(Frame::message(piece, OpCode::Data(opcode), is_final), out)?;
                if ping_after == Some(i) && !is_final {
                    self.push_ping(out)?;
                    pushed.pings += 1;
                }
            }
        } else {
            put(Frame::message(payload, OpCode::Data(Data::Text), true), out)?;
        }
        if nth(number, self.shaping.ping_every) {
            self.push_ping(out)?;
            pushed.pings += 1;
        }
        Ok(pushed)
    }

    /// Fragment boundaries `0 = c0 < c1 < … < ck = len` with k in 2..=4.
    fn cut_points(&mut self, len: usize) -> Vec<usize> {
        let pieces = self.rng.range_inclusive(2, 4).min(len as u64) as usize;
        let mut cuts = vec![0, len];
        while cuts.len() < pieces + 1 {
            let cut = self.rng.range_inclusive(1, len as u64 - 1) as usize;
            if !cuts.contains(&cut) {
                cuts.push(cut);
            }
        }
        cuts.sort_unstable();
        cuts
    }

    /// Append a ping with payload `ping-<n>` (n counts this connection's pings).
    pub fn push_ping(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.pings += 1;
        put(
            Frame::ping(format!("ping-{}", self.pings).into_bytes()),
            out,
        )
    }

    /// Append a pong answering a client ping.
    pub fn push_pong(&mut self, payload: Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
        put(Frame::pong(payload), out)
    }

    /// Append a close frame with `code` (a disallowed code becomes 1000).
    pub fn push_close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) -> io::Result<()> {
        let code = match CloseCode::from(code) {
            c if c.is_allowed() => c,
            _ => CloseCode::Normal,
        };
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        put(Frame::close(Some(frame)), out)
    }
}

/// Writes bytes either whole or in random chunks of `1..=max_chunk` bytes,
/// flushing after each chunk so chunks become separate TCP segments (with
/// `TCP_NODELAY`) and, over TLS, separate records. Chunk boundaries ignore
/// frame boundaries.
#[derive(Debug)]
pub struct ChunkedWriter<W> {
    inner: W,
    max_chunk: usize,
    rng: SplitMix64,
}

impl<W: AsyncWrite + Unpin> ChunkedWriter<W> {
    /// Wrap `inner`; `max_chunk == 0` writes every buffer in one go.
    pub fn new(inner: W, max_chunk: usize, seed: u64) -> Self {
        Self {
            inner,
            max_chunk,
            rng: SplitMix64::new(seed),
        }
    }

    /// Write all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.max_chunk == 0 {
            self.inner.write_all(bytes).await?;
            return self.inner.flush().await;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = (self.rng.range_inclusive(1, self.max_chunk as u64) as usize).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            self.inner.write_all(chunk).await?;
            self.inner.flush().await?;
            rest = tail;
        }
        Ok(())
    }

    /// Flush what the inner writer buffers (over TLS: pending records, and a
    /// requested KeyUpdate).
    pub async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }

    /// Shut down the write direction (over TLS `close_notify`, then FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal server-frame decoder for checking the encoder's output.
    fn decode(mut bytes: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
        let mut frames = Vec::new();
        while bytes.len() >= 2 {
            let fin = bytes[0] & 0x80 != 0;
            let opcode = bytes[0] & 0x0f;
            assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
            let (len, hdr) = match bytes[1] & 0x7f {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&bytes[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                n => (n as usize, 2),
            };
            frames.push((opcode, fin, bytes[hdr..hdr + len].to_vec()));
            bytes = &bytes[hdr + len..];
        }
        assert!(bytes.is_empty());
        frames
    }

    #[test]
    fn fragments_reassemble_and_pings_interleave() {
        let shaping = Shaping {
            fragment_every: 1,
            ping_every: 1,
            ..Shaping::default()
        };
        let mut enc = Encoder::new(shaping, 3);
        let mut out = Vec::new();
        let text = "{\"hello\":\"world, this is a message\"}".to_string();
        let first = enc.push_text(text.clone(), &mut out).expect("encode");
        assert!(first.fragmented);
        assert_eq!(first.pings, 2, "one between fragments, one after");
        let frames = decode(&out);
        assert_eq!(frames[0].0, 1, "starts with a text frame");
        assert!(frames.iter().filter(|f| f.0 == 9).count() == 2);
        let data: Vec<u8> = frames
            .iter()
            .filter(|f| f.0 <= 1)
            .flat_map(|f| f.2.clone())
            .collect();
        assert_eq!(data, text.as_bytes());
        let data_frames: Vec<_> = frames.iter().filter(|f| f.0 <= 1).collect();
        assert!((2..=4).contains(&data_frames.len()));
        assert!(data_frames.iter().rev().skip(1).all(|f| !f.1));
        assert!(data_frames.last().is_some_and(|f| f.1));
        // The second fragmented message has no ping between its fragments.
        let mut out2 = Vec::new();
        let second = enc.push_text(text, &mut out2).expect("encode");
        assert_eq!(second.pings, 1);
        assert_eq!(decode(&out2).last().map(|f| f.0), Some(9));
    }

    #[test]
    fn padding_applies_to_every_nth_message() {
        let shaping = Shaping {
            big_every: 2,
            big_size: 1000,
            ..Shaping::default()
        };
        let mut enc = Encoder::new(shaping, 1);
        let mut out = Vec::new();
        assert_eq!(enc.next_pad(), 0);
        enc.push_text("{}".into(), &mut out).expect("encode");
        assert_eq!(enc.next_pad(), 1000);
    }

    #[tokio::test]
    async fn chunked_writer_preserves_bytes() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = ChunkedWriter::new(a, 7, 5);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).await.expect("write");
        drop(w);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
            .await
            .expect("read");
        assert_eq!(got, data);
    }
}

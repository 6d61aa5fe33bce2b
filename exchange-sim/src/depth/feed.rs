//! One connection's diff streams: a cursor into each symbol's event log.

use super::book::DepthEvent;
use super::{DepthMarket, Lagged};
use std::io;

/// Most events one pull takes per stream, so that a burst is written in
/// slices between which the connection still answers pings and commands.
pub const BATCH: usize = 256;

#[derive(Debug)]
struct Sub {
    stream: String,
    index: usize,
    /// The `seq` of the next event to send.
    cursor: u64,
}

/// What one pull sent on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The stream name.
    pub stream: String,
    /// The `seq` of the first event sent by this pull.
    pub first_seq: u64,
    /// Events sent.
    pub count: u64,
    /// `U` of the first event.
    pub first_u: u64,
    /// `u` of the last event.
    pub last_u: u64,
}

/// Why a pull stopped.
#[derive(Debug)]
pub enum PullError {
    /// Encoding into the write buffer failed.
    Io(io::Error),
    /// The connection is further behind than the log reaches.
    Lagged {
        /// The stream that lagged.
        stream: String,
        /// Events it missed.
        behind: u64,
    },
}

/// The diff streams a connection subscribed to.
#[derive(Debug, Default)]
pub struct DepthSubs {
    subs: Vec<Sub>,
    /// Events are known to be waiting (a pull stopped at [`BATCH`]).
    pending: bool,
}

impl DepthSubs {
    /// Start feeding `stream` from the next event on; false if it is not a
    /// diff stream of a served symbol. A stream already fed is left alone.
    pub fn add(&mut self, market: &DepthMarket, stream: &str) -> bool {
        let Some(index) = market.index_of_stream(stream) else {
            return false;
        };
        if !self.subs.iter().any(|s| s.stream == stream) {
            self.subs.push(Sub {
                stream: stream.to_owned(),
                index,
                cursor: market.next_seq(index),
            });
        }
        true
    }

    /// Whether any diff stream is fed.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Whether events are known to be waiting.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Take up to [`BATCH`] waiting events per stream, handing each to
    /// `emit(event, stream, symbol)` in order; returns what was sent.
    pub fn pull(
        &mut self,
        market: &DepthMarket,
        mut emit: impl FnMut(&DepthEvent, &str, &str) -> io::Result<()>,
    ) -> Result<Vec<Sent>, PullError> {
        let mut sent = Vec::new();
        let mut more = false;
        for sub in &mut self.subs {
            let (events, left) = match market.events_since(sub.index, sub.cursor, BATCH) {
                Ok(got) => got,
                Err(Lagged { oldest }) => {
                    return Err(PullError::Lagged {
                        stream: sub.stream.clone(),
                        behind: oldest - sub.cursor,
                    })
                }
            };
            more |= left;
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                continue;
            };
            let symbol = market.symbol(sub.index);
            for event in &events {
                emit(event, &sub.stream, symbol).map_err(PullError::Io)?;
            }
            sent.push(Sent {
                stream: sub.stream.clone(),
                first_seq: first.seq,
                count: events.len() as u64,
                first_u: first.first_id,
                last_u: last.last_id,
            });
            sub.cursor = last.seq + 1;
        }
        self.pending = more;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_in_batches_from_the_subscription_on() {
        let m = DepthMarket::new(["btcusdt"], 1);
        m.step_all(1);
        let mut subs = DepthSubs::default();
        assert!(!subs.add(&m, "btcusdt@trade"));
        assert!(!subs.add(&m, "ethusdt@depth"));
        assert!(subs.add(&m, "btcusdt@depth@100ms"));
        assert!(subs.add(&m, "btcusdt@depth@100ms"));
        m.burst(0, BATCH as u64 + 3, 2);
        let mut seen = Vec::new();
        let sent = subs
            .pull(&m, |e, stream, symbol| {
                assert_eq!((stream, symbol), ("btcusdt@depth@100ms", "BTCUSDT"));
                seen.push(e.seq);
                Ok(())
            })
            .expect("pulled");
        assert!(subs.pending());
        assert_eq!(
            sent[0].first_seq, 2,
            "the event before subscribing is not sent"
        );
        assert_eq!(sent[0].count, BATCH as u64);
        let sent = subs.pull(&m, |e, _, _| {
            seen.push(e.seq);
            Ok(())
        });
        assert_eq!(sent.map(|s| s[0].count).ok(), Some(3));
        assert!(!subs.pending());
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(seen.len(), BATCH + 3);
    }
}

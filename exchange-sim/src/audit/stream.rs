//! Per-connection, per-stream accounting: what was sent and how the acks
//! came back. Trade streams count trade ids (`t`); diff streams count diff
//! events, numbered per connection from 1, and remember their update ids.

use serde::Serialize;
use std::collections::BTreeMap;

/// At most this many ranges of missing (gapped) ids are remembered per stream;
/// the oldest are forgotten first (a late ack for them counts as a duplicate).
pub(super) const MAX_MISSING_RANGES: usize = 4096;

/// Ids skipped by the client's acks, as inclusive ranges `start -> end`.
#[derive(Debug, Default, Clone)]
pub(super) struct MissingIds {
    pub(super) ranges: BTreeMap<u64, u64>,
}

impl MissingIds {
    /// Remember `start..=end` (always above every remembered id).
    pub(super) fn insert(&mut self, start: u64, end: u64) {
        self.ranges.insert(start, end);
        while self.ranges.len() > MAX_MISSING_RANGES {
            self.ranges.pop_first();
        }
    }

    /// Forget `id`; true if it was remembered.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        let Some((&start, &end)) = self.ranges.range(..=id).next_back() else {
            return false;
        };
        if end < id {
            return false;
        }
        self.ranges.remove(&start);
        if start < id {
            self.ranges.insert(start, id - 1);
        }
        if id < end {
            self.ranges.insert(id + 1, end);
        }
        true
    }
}

/// How one ack was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The next expected id.
    InOrder,
    /// Ahead of the expected id: the ids in between are counted as gaps.
    Gap,
    /// A previously skipped id arriving late.
    Reordered,
    /// An id already acked.
    Duplicate,
    /// An id that was never sent on this connection and stream.
    Unknown,
}

/// The update ids of a diff stream (`<symbol>@depth[@100ms]`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DepthIds {
    /// `U` of the first diff sent on this connection and stream.
    pub first_u: Option<u64>,
    /// `u` of the latest diff sent.
    pub last_u: Option<u64>,
    /// `u` of the diff the ack cursor last moved to.
    pub last_acked_u: Option<u64>,
    /// The exchange-wide sequence number of the first diff sent here.
    #[serde(skip)]
    first_seq: Option<u64>,
}

/// Per-connection, per-stream accounting. On a diff stream the ids are diff
/// events numbered per connection from 1 (gaps are counted in events, not
/// update ids) and the update ids are in the `depth` fields.
#[derive(Debug, Clone, Serialize)]
pub struct StreamAudit {
    /// Trades (diffs) sent.
    pub sent: u64,
    /// Highest trade id (diff number) sent (0 before the first).
    pub last_sent: u64,
    /// Acks that advanced the ack cursor (in order, or jumping over a gap).
    pub acked: u64,
    /// Highest id the ack cursor has passed (0 before the first ack).
    pub last_acked: u64,
    /// Ids skipped by acks (cumulative; a late ack does not decrease it).
    pub gaps: u64,
    /// Acks for ids already acked.
    pub duplicates: u64,
    /// Late acks for previously skipped ids.
    pub reordered: u64,
    /// Acks for ids never sent.
    pub unknown_acks: u64,
    /// Diff streams only: `first_u`, `last_u`, `last_acked_u`.
    #[serde(flatten)]
    pub depth: Option<DepthIds>,
    #[serde(skip)]
    missing: MissingIds,
}

impl StreamAudit {
    /// A trade stream's record.
    pub(super) fn new() -> Self {
        Self {
            sent: 0,
            last_sent: 0,
            acked: 0,
            last_acked: 0,
            gaps: 0,
            duplicates: 0,
            reordered: 0,
            unknown_acks: 0,
            depth: None,
            missing: MissingIds::default(),
        }
    }

    /// The record of `stream`: a diff stream's if it names one.
    pub(super) fn for_stream(stream: &str) -> Self {
        let mut s = Self::new();
        if crate::depth::is_depth_stream(stream) {
            s.depth = Some(DepthIds::default());
        }
        s
    }

    /// Whether this is a diff stream.
    pub fn is_depth(&self) -> bool {
        self.depth.is_some()
    }

    /// Trades sent but not yet passed by the ack cursor.
    pub fn unacked(&self) -> u64 {
        self.sent.saturating_sub(self.acked + self.gaps)
    }

    /// What `wait_acked_ms` waits for: every unacked trade, and the diffs
    /// of a diff stream once the client has acked one (acking diffs is
    /// optional).
    pub(super) fn awaited(&self) -> u64 {
        if self.is_depth() && self.last_acked == 0 {
            0
        } else {
            self.unacked()
        }
    }

    /// Classify and count the ack of trade `t`.
    pub fn ack(&mut self, t: u64) -> AckOutcome {
        let expected = self.last_acked + 1;
        if t == 0 || t > self.last_sent {
            self.unknown_acks += 1;
            AckOutcome::Unknown
        } else if t == expected {
            self.acked += 1;
            self.last_acked = t;
            AckOutcome::InOrder
        } else if t > expected {
            self.gaps += t - expected;
            self.missing.insert(expected, t - 1);
            self.acked += 1;
            self.last_acked = t;
            AckOutcome::Gap
        } else if self.missing.remove(t) {
            self.reordered += 1;
            AckOutcome::Reordered
        } else {
            self.duplicates += 1;
            AckOutcome::Duplicate
        }
    }

    /// Record `count` diffs sent, the first being exchange-wide event
    /// `first_seq` with update ids from `first_u`, the last ending at `last_u`.
    pub(super) fn depth_sent(&mut self, first_seq: u64, count: u64, first_u: u64, last_u: u64) {
        let ids = self.depth.get_or_insert_with(DepthIds::default);
        ids.first_seq.get_or_insert(first_seq);
        ids.first_u.get_or_insert(first_u);
        ids.last_u = Some(last_u);
        self.sent += count;
        self.last_sent = self.sent;
    }

    /// Classify the ack of the diff whose final update id is `u`, which is
    /// exchange-wide event `seq` (`None`: no diff ends at `u`).
    pub(super) fn depth_ack(&mut self, seq: Option<u64>, u: u64) -> AckOutcome {
        let first = self.depth.as_ref().and_then(|d| d.first_seq);
        let number = match (seq, first) {
            (Some(seq), Some(first)) if seq >= first => seq - first + 1,
            _ => 0,
        };
        let outcome = self.ack(number);
        if matches!(outcome, AckOutcome::InOrder | AckOutcome::Gap) {
            if let Some(ids) = &mut self.depth {
                ids.last_acked_u = Some(u);
            }
        }
        outcome
    }
}

/// Sums over the diff streams of all connections.
#[derive(Debug, Default, Serialize)]
pub struct DepthTotals {
    pub sent: u64,
    pub acked: u64,
    pub unacked: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unknown_acks: u64,
}

impl DepthTotals {
    pub(super) fn add(&mut self, s: &StreamAudit) {
        self.sent += s.sent;
        self.acked += s.acked;
        self.unacked += s.unacked();
        self.gaps += s.gaps;
        self.duplicates += s.duplicates;
        self.reordered += s.reordered;
        self.unknown_acks += s.unknown_acks;
    }
}

//! The audit: what was sent on every connection and how the client acked it.
//!
//! Pure bookkeeping (no I/O, no locking); the simulator wraps it in a
//! mutex. Serialises to the `GET /audit` JSON.

use crate::tls::TlsInfo;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How the close reason of a connection ended by a TLS failure starts.
pub const TLS_ERROR_PREFIX: &str = "error: tls:";

/// At most this many error strings are kept per connection.
const MAX_ERRORS: usize = 16;
/// At most this many distinct stream names are tracked per connection.
const MAX_STREAMS: usize = 64;
/// At most this many ranges of missing (gapped) ids are remembered per stream;
/// the oldest are forgotten first (a late ack for them counts as a duplicate).
const MAX_MISSING_RANGES: usize = 4096;

/// Ids skipped by the client's acks, as inclusive ranges `start -> end`.
#[derive(Debug, Default, Clone)]
struct MissingIds {
    ranges: BTreeMap<u64, u64>,
}

impl MissingIds {
    /// Remember `start..=end` (always above every remembered id).
    fn insert(&mut self, start: u64, end: u64) {
        self.ranges.insert(start, end);
        while self.ranges.len() > MAX_MISSING_RANGES {
            self.ranges.pop_first();
        }
    }

    /// Forget `id`; true if it was remembered.
    fn remove(&mut self, id: u64) -> bool {
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

/// Per-connection, per-stream accounting.
#[derive(Debug, Clone, Serialize)]
pub struct StreamAudit {
    /// Trades sent.
    pub sent: u64,
    /// Highest trade id sent (0 before the first).
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
    #[serde(skip)]
    missing: MissingIds,
}

impl StreamAudit {
    fn new() -> Self {
        Self {
            sent: 0,
            last_sent: 0,
            acked: 0,
            last_acked: 0,
            gaps: 0,
            duplicates: 0,
            reordered: 0,
            unknown_acks: 0,
            missing: MissingIds::default(),
        }
    }

    /// Trades sent but not yet passed by the ack cursor.
    pub fn unacked(&self) -> u64 {
        self.sent.saturating_sub(self.acked + self.gaps)
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
}

/// Everything known about one websocket connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnAudit {
    /// Connection id, from 1 in accept order.
    pub id: u64,
    /// Peer address.
    pub peer: String,
    /// Request path of the upgrade (`/ws`, `/stream`, …).
    pub path: String,
    /// `null` while open; `close_frame`, `eof`, `reset`, `shutdown` or `error: …`
    /// (`error: tls: …` for a TLS failure: a bad record, an alert, the peer
    /// closing without `close_notify` before a websocket close).
    pub closed_by: Option<String>,
    /// `null` for a plain connection, else the negotiated version and suite.
    pub tls: Option<TlsInfo>,
    /// KeyUpdates the server sent on this connection (`--key-update-every`).
    pub tls_key_updates: u64,
    /// Streams subscribed, in subscription order.
    pub subscribed: Vec<String>,
    /// Complete client frames parsed (data and control).
    pub frames_received: u64,
    /// Protocol errors that desynchronised the stream (reading then stops).
    pub malformed: u64,
    /// Client frames without a mask.
    pub unmasked: u64,
    /// Pings sent by the server.
    pub pings_sent: u64,
    /// Pongs received from the client.
    pub pongs_received: u64,
    /// Client messages that were neither SUBSCRIBE nor a valid ack.
    pub other_messages: u64,
    /// Largest interval between two consecutive acks, excluding paused time.
    pub max_ack_gap_us: u64,
    /// Wall-clock (Unix ms) arrival of the first ack.
    pub first_ack_ms: Option<u64>,
    /// Wall-clock (Unix ms) arrival of the latest ack.
    pub last_ack_ms: Option<u64>,
    /// Error texts (bounded).
    pub errors: Vec<String>,
    /// Per-stream accounting.
    pub streams: BTreeMap<String, StreamAudit>,
    #[serde(skip)]
    reading_stopped: bool,
    #[serde(skip)]
    last_ack_active: Option<Duration>,
}

impl ConnAudit {
    /// Record an error text (bounded).
    pub fn push_error(&mut self, text: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(text);
        }
    }

    /// Whether every trade sent has been passed by the ack cursor.
    fn all_acked(&self) -> bool {
        self.streams.values().all(|s| s.unacked() == 0)
    }
}

/// Wall-time minus paused time: the clock that ack gaps are measured on.
#[derive(Debug)]
struct ActiveClock {
    start: Instant,
    paused_since: Option<Instant>,
    paused_total: Duration,
}

impl ActiveClock {
    fn now(&self, now: Instant) -> Duration {
        let current_pause = self
            .paused_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        now.saturating_duration_since(self.start)
            .saturating_sub(self.paused_total + current_pause)
    }
}

/// Sums over all connections.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub unacked: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unknown_acks: u64,
    pub malformed: u64,
    pub unmasked: u64,
    pub closed: u64,
    /// Completed TLS handshakes (websocket and plain HTTP alike).
    pub tls_handshakes: u64,
    /// TLS handshakes that failed (garbage, alerts, timeouts, hang-ups).
    pub tls_handshake_failures: u64,
    /// KeyUpdates sent.
    pub tls_key_updates: u64,
    /// Websocket connections closed by a TLS failure (`error: tls: …`), plus
    /// HTTP requests cut short by one.
    pub tls_errors: u64,
}

/// TLS events that are not tied to a websocket connection.
#[derive(Debug, Default, Clone, Copy)]
struct TlsCounters {
    handshakes: u64,
    handshake_failures: u64,
    key_updates: u64,
    errors: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    connections_total: usize,
    connections_open: usize,
    paused: bool,
    connections: Vec<&'a ConnAudit>,
    totals: Totals,
    /// Each timer key a bot reported (`{"method":"timer","key":…}`), with
    /// how many times: a timer that fires once across handoffs is 1.
    timers: &'a BTreeMap<String, u32>,
}

/// The audit of all connections since start.
#[derive(Debug)]
pub struct Audit {
    connections: BTreeMap<u64, ConnAudit>,
    next_id: u64,
    clock: ActiveClock,
    tls: TlsCounters,
    timers: BTreeMap<String, u32>,
}

impl Default for Audit {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Audit {
    /// An empty audit whose active clock starts at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            connections: BTreeMap::new(),
            next_id: 1,
            clock: ActiveClock {
                start,
                paused_since: None,
                paused_total: Duration::ZERO,
            },
            tls: TlsCounters::default(),
            timers: BTreeMap::new(),
        }
    }

    /// A bot reported that its timer `key` fired.
    pub fn timer(&mut self, key: String) {
        *self.timers.entry(key).or_default() += 1;
    }

    /// Register a new connection; returns its id.
    pub fn open(&mut self, peer: String, path: String) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.connections.insert(
            id,
            ConnAudit {
                id,
                peer,
                path,
                closed_by: None,
                tls: None,
                tls_key_updates: 0,
                subscribed: Vec::new(),
                frames_received: 0,
                malformed: 0,
                unmasked: 0,
                pings_sent: 0,
                pongs_received: 0,
                other_messages: 0,
                max_ack_gap_us: 0,
                first_ack_ms: None,
                last_ack_ms: None,
                errors: Vec::new(),
                streams: BTreeMap::new(),
                reading_stopped: false,
                last_ack_active: None,
            },
        );
        id
    }

    /// Mutable access to one connection's record.
    pub fn conn(&mut self, id: u64) -> Option<&mut ConnAudit> {
        self.connections.get_mut(&id)
    }

    /// Read access to one connection's record.
    pub fn conn_ref(&self, id: u64) -> Option<&ConnAudit> {
        self.connections.get(&id)
    }

    /// Mark a connection closed (the first reason wins; one starting with
    /// [`TLS_ERROR_PREFIX`] counts as a TLS error).
    pub fn close(&mut self, id: u64, reason: &str) {
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        if c.closed_by.is_none() {
            c.closed_by = Some(reason.to_owned());
            if reason.starts_with(TLS_ERROR_PREFIX) {
                self.tls.errors += 1;
            }
        }
    }

    /// Count a TLS handshake, completed or failed.
    pub fn tls_handshake(&mut self, completed: bool) {
        if completed {
            self.tls.handshakes += 1;
        } else {
            self.tls.handshake_failures += 1;
        }
    }

    /// Record what connection `id` negotiated.
    pub fn set_tls(&mut self, id: u64, info: TlsInfo) {
        if let Some(c) = self.conn(id) {
            c.tls = Some(info);
        }
    }

    /// Record `count` KeyUpdates sent on connection `id`.
    pub fn key_updates(&mut self, id: u64, count: u64) {
        self.tls.key_updates += count;
        if let Some(c) = self.conn(id) {
            c.tls_key_updates += count;
        }
    }

    /// Count a TLS failure outside any websocket connection (an HTTP request
    /// cut short by it).
    pub fn tls_error(&mut self) {
        self.tls.errors += 1;
    }

    /// Record a malformed frame: the connection's reader stops parsing.
    pub fn malformed(&mut self, id: u64, error: String) {
        if let Some(c) = self.conn(id) {
            c.malformed += 1;
            c.reading_stopped = true;
            c.push_error(format!("malformed: {error}"));
        }
    }

    /// Record newly subscribed streams.
    pub fn subscribe(&mut self, id: u64, streams: &[String]) {
        if let Some(c) = self.conn(id) {
            for s in streams {
                if !c.subscribed.contains(s) {
                    c.subscribed.push(s.clone());
                }
                c.streams.entry(s.clone()).or_insert_with(StreamAudit::new);
            }
        }
    }

    /// Record trades sent on `stream`: `count` more, the highest being `last_id`.
    pub fn sent(&mut self, id: u64, stream: &str, count: u64, last_id: u64) {
        if let Some(s) = self.conn(id).and_then(|c| c.streams.get_mut(stream)) {
            s.sent += count;
            s.last_sent = s.last_sent.max(last_id);
        }
    }

    /// Classify an ack received at `now` (wall clock `wall_ms`).
    pub fn ack(
        &mut self,
        id: u64,
        stream: &str,
        t: u64,
        now: Instant,
        wall_ms: u64,
    ) -> Option<AckOutcome> {
        let active = self.clock.now(now);
        let c = self.connections.get_mut(&id)?;
        if let Some(prev) = c.last_ack_active {
            let gap = u64::try_from(active.saturating_sub(prev).as_micros()).unwrap_or(u64::MAX);
            c.max_ack_gap_us = c.max_ack_gap_us.max(gap);
        }
        c.last_ack_active = Some(active);
        c.first_ack_ms.get_or_insert(wall_ms);
        c.last_ack_ms = Some(wall_ms);
        if !c.streams.contains_key(stream) {
            if c.streams.len() >= MAX_STREAMS {
                c.push_error(format!("ack for untracked stream {stream:?}"));
                return Some(AckOutcome::Unknown);
            }
            c.streams.insert(stream.to_owned(), StreamAudit::new());
        }
        c.streams.get_mut(stream).map(|s| s.ack(t))
    }

    /// Start excluding time from ack gaps (idempotent).
    pub fn pause(&mut self, now: Instant) {
        self.clock.paused_since.get_or_insert(now);
    }

    /// Stop excluding time from ack gaps (idempotent).
    pub fn resume(&mut self, now: Instant) {
        if let Some(since) = self.clock.paused_since.take() {
            self.clock.paused_total += now.saturating_duration_since(since);
        }
    }

    /// Whether every trade sent on every open, subscribed, still-readable
    /// connection has been acked (or skipped over by a later ack).
    pub fn all_acked(&self) -> bool {
        self.connections
            .values()
            .filter(|c| c.closed_by.is_none() && !c.subscribed.is_empty() && !c.reading_stopped)
            .all(ConnAudit::all_acked)
    }

    /// Sums over all connections.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            tls_handshakes: self.tls.handshakes,
            tls_handshake_failures: self.tls.handshake_failures,
            tls_key_updates: self.tls.key_updates,
            tls_errors: self.tls.errors,
            ..Totals::default()
        };
        for c in self.connections.values() {
            t.malformed += c.malformed;
            t.unmasked += c.unmasked;
            t.closed += u64::from(c.closed_by.is_some());
            for s in c.streams.values() {
                t.sent += s.sent;
                t.acked += s.acked;
                t.unacked += s.unacked();
                t.gaps += s.gaps;
                t.duplicates += s.duplicates;
                t.reordered += s.reordered;
                t.unknown_acks += s.unknown_acks;
            }
        }
        t
    }

    /// The `GET /audit` JSON document.
    pub fn to_json(&self) -> String {
        let report = Report {
            connections_total: self.connections.len(),
            connections_open: self
                .connections
                .values()
                .filter(|c| c.closed_by.is_none())
                .count(),
            paused: self.clock.paused_since.is_some(),
            connections: self.connections.values().collect(),
            totals: self.totals(),
            timers: &self.timers,
        };
        serde_json::to_string(&report)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise audit: {e}\"}}"))
    }
}

#[cfg(test)]
mod tests;

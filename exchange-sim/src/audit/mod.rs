//! The audit: what was sent on every connection and how the client acked it.
//!
//! Pure bookkeeping (no I/O, no locking); the simulator wraps it in a
//! mutex. Serialises to the `GET /audit` JSON. Per-stream accounting (trade
//! and diff streams alike) is in `stream.rs`, listen keys in
//! `listen_keys.rs`.

mod listen_keys;
mod stream;

pub use listen_keys::{ListenKeyAudit, ListenKeys};
pub use stream::{AckOutcome, DepthIds, DepthTotals, StreamAudit};

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
    /// The listen key of a user-data stream (`/ws/<listenKey>`), else `null`.
    pub listen_key: Option<String>,
    /// Events written on a user-data stream (`executionReport`s).
    pub user_events_sent: u64,
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

    /// Whether every trade sent has been passed by the ack cursor (and
    /// every diff, on diff streams the client acks).
    fn all_acked(&self) -> bool {
        self.streams.values().all(|s| s.awaited() == 0)
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

/// Sums over all connections: the trade streams' (as before diff streams
/// existed), then the diff streams' under `depth`.
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
    /// Sums over the diff streams (`<symbol>@depth[@100ms]`).
    pub depth: DepthTotals,
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
    /// Every listen key issued, by key.
    listen_keys: &'a ListenKeys,
}

/// The audit of all connections since start.
#[derive(Debug)]
pub struct Audit {
    connections: BTreeMap<u64, ConnAudit>,
    next_id: u64,
    clock: ActiveClock,
    tls: TlsCounters,
    timers: BTreeMap<String, u32>,
    /// Every listen key issued.
    pub listen_keys: ListenKeys,
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
            listen_keys: ListenKeys::default(),
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
                listen_key: None,
                user_events_sent: 0,
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
                (c.streams.entry(s.clone())).or_insert_with(|| StreamAudit::for_stream(s));
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

    /// Record `count` diffs sent on diff stream `stream`: exchange-wide
    /// events from `first_seq` on, update ids `first_u` to `last_u`.
    pub fn depth_sent(
        &mut self,
        id: u64,
        stream: &str,
        first_seq: u64,
        count: u64,
        (first_u, last_u): (u64, u64),
    ) {
        if let Some(s) = self.conn(id).and_then(|c| c.streams.get_mut(stream)) {
            s.depth_sent(first_seq, count, first_u, last_u);
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
        self.ack_with(id, stream, now, wall_ms, |s| s.ack(t))
    }

    /// Classify the ack of the diff of `stream` whose final update id is
    /// `u`, exchange-wide event `seq` (`None`: no diff ends at `u`).
    pub fn depth_ack(
        &mut self,
        id: u64,
        stream: &str,
        (seq, u): (Option<u64>, u64),
        now: Instant,
        wall_ms: u64,
    ) -> Option<AckOutcome> {
        self.ack_with(id, stream, now, wall_ms, |s| s.depth_ack(seq, u))
    }

    /// The ack timing shared by trade and diff acks, then `classify`.
    fn ack_with(
        &mut self,
        id: u64,
        stream: &str,
        now: Instant,
        wall_ms: u64,
        classify: impl FnOnce(&mut StreamAudit) -> AckOutcome,
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
            c.streams
                .insert(stream.to_owned(), StreamAudit::for_stream(stream));
        }
        c.streams.get_mut(stream).map(classify)
    }

    /// Connection `id` is the user-data stream of `key`.
    pub fn set_listen_key(&mut self, id: u64, key: &str) {
        self.listen_keys.stream_opened(key);
        if let Some(c) = self.conn(id) {
            c.listen_key = Some(key.to_owned());
        }
    }

    /// `count` events written on user-data stream `id`.
    pub fn user_events_sent(&mut self, id: u64, count: u64) {
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        c.user_events_sent += count;
        if let Some(key) = &c.listen_key {
            self.listen_keys.events_sent(key, count);
        }
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

    /// Websocket connections not closed yet.
    pub fn open_connections(&self) -> usize {
        (self.connections.values())
            .filter(|c| c.closed_by.is_none())
            .count()
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
                if s.is_depth() {
                    t.depth.add(s);
                    continue;
                }
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
            connections_open: self.open_connections(),
            paused: self.clock.paused_since.is_some(),
            connections: self.connections.values().collect(),
            totals: self.totals(),
            timers: &self.timers,
            listen_keys: &self.listen_keys,
        };
        serde_json::to_string(&report)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise audit: {e}\"}}"))
    }
}

#[cfg(test)]
mod tests;

//! The audit of listen keys: when each was issued, how often it was kept
//! alive, how it ended, and what its streams were sent.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// At most this many keys are remembered (the oldest are forgotten first).
const MAX_KEYS: usize = 10_000;

/// One listen key.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListenKeyAudit {
    /// When it was issued (Unix ms).
    pub created_ms: u64,
    /// Successful `PUT /api/v3/userDataStream` calls.
    pub keepalives: u64,
    /// When it was last kept alive (Unix ms).
    pub last_keepalive_ms: Option<u64>,
    /// `null` while alive, then `expired` or `deleted`.
    pub closed_by: Option<String>,
    /// Websockets opened on `/ws/<listenKey>`.
    pub streams_opened: u64,
    /// Events written to those websockets (`executionReport`s).
    pub events_sent: u64,
}

/// Every listen key issued (bounded).
#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
pub struct ListenKeys {
    keys: BTreeMap<String, ListenKeyAudit>,
    #[serde(skip)]
    order: VecDeque<String>,
}

impl ListenKeys {
    /// `key` was issued at `now_ms`.
    pub fn created(&mut self, key: &str, now_ms: u64) {
        let entry = ListenKeyAudit {
            created_ms: now_ms,
            ..ListenKeyAudit::default()
        };
        if self.keys.insert(key.to_owned(), entry).is_none() {
            self.order.push_back(key.to_owned());
        }
        while self.order.len() > MAX_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    /// `key` was kept alive at `now_ms`.
    pub fn kept_alive(&mut self, key: &str, now_ms: u64) {
        if let Some(k) = self.keys.get_mut(key) {
            k.keepalives += 1;
            k.last_keepalive_ms = Some(now_ms);
        }
    }

    /// `key` ended (`expired`, `deleted`); the first reason wins.
    pub fn closed(&mut self, key: &str, reason: &str) {
        if let Some(k) = self.keys.get_mut(key) {
            k.closed_by.get_or_insert_with(|| reason.to_owned());
        }
    }

    /// A websocket opened on `key`.
    pub fn stream_opened(&mut self, key: &str) {
        if let Some(k) = self.keys.get_mut(key) {
            k.streams_opened += 1;
        }
    }

    /// `count` events written on a stream of `key`.
    pub fn events_sent(&mut self, key: &str, count: u64) {
        if let Some(k) = self.keys.get_mut(key) {
            k.events_sent += count;
        }
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Option<&ListenKeyAudit> {
        self.keys.get(key)
    }
}

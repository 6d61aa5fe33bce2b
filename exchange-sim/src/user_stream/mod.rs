//! User-data streams, Binance's listen-key way: `POST /api/v3/userDataStream`
//! issues a key, `PUT` keeps it alive, `DELETE` closes it, and websockets
//! on `/ws/<listenKey>` receive an `executionReport` for every order placed,
//! filled or cancelled through the REST order API while the key is alive.
//!
//! A key not kept alive within `--listen-key-ttl-ms` expires: its streams
//! get `{"e":"listenKeyExpired",…}` and are closed, and it is forgotten
//! (`-1125` from then on). The reaper task ([`reap`]) sleeps until the
//! earliest deadline.

pub mod report;
pub mod rest;

use crate::orders::Order;
use crate::rng::SplitMix64;
use crate::state::{signalled, unix_ms, Shared};
use report::Exec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// Length of a listen key (Binance's: 60 letters and digits).
pub const KEY_LEN: usize = 60;

/// What a user-data websocket is told by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserEvent {
    /// An event to send as is (an `executionReport`).
    Report(Arc<str>),
    /// The key expired: send this `listenKeyExpired` event, then close.
    Expired(Arc<str>),
    /// The key was closed by `DELETE`: close.
    Closed,
}

#[derive(Debug)]
struct Key {
    deadline: Instant,
    streams: Vec<mpsc::UnboundedSender<UserEvent>>,
}

#[derive(Debug)]
struct Registry {
    keys: HashMap<String, Key>,
    rng: SplitMix64,
    /// The `I` (execution id) of the last report.
    execution_id: u64,
}

/// Every live listen key and its streams.
#[derive(Debug)]
pub struct UserStreams {
    ttl: Duration,
    inner: Mutex<Registry>,
    /// Wakes the reaper when a deadline may have moved.
    wake: Notify,
}

/// Whether `key` looks like a listen key this simulator issues.
pub fn well_formed(key: &str) -> bool {
    key.len() == KEY_LEN && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl UserStreams {
    /// An empty registry whose keys live `ttl` past each keep-alive; `seed`
    /// is mixed with the clock for the keys.
    pub fn new(ttl: Duration, seed: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            ttl,
            inner: Mutex::new(Registry {
                keys: HashMap::new(),
                rng: SplitMix64::new(seed ^ nanos ^ u64::from(std::process::id())),
                execution_id: 0,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issue a new key, alive until `now + ttl`.
    pub fn create(&self, now: Instant) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut reg = self.lock();
        let key = loop {
            let key: String = (0..KEY_LEN)
                .map(|_| {
                    let i = reg.rng.range_inclusive(0, ALPHABET.len() as u64 - 1) as usize;
                    char::from(ALPHABET[i])
                })
                .collect();
            if !reg.keys.contains_key(&key) {
                break key;
            }
        };
        let deadline = now + self.ttl;
        reg.keys.insert(
            key.clone(),
            Key {
                deadline,
                streams: Vec::new(),
            },
        );
        drop(reg);
        self.wake.notify_one();
        key
    }

    /// The live key `key` (one past its deadline counts as gone, even before
    /// the reaper has seen it).
    fn live<'a>(reg: &'a mut Registry, key: &str, now: Instant) -> Option<&'a mut Key> {
        reg.keys.get_mut(key).filter(|k| k.deadline > now)
    }

    /// Push `key`'s deadline to `now + ttl`.
    pub fn keep_alive(&self, key: &str, now: Instant) -> bool {
        let mut reg = self.lock();
        let Some(k) = Self::live(&mut reg, key, now) else {
            return false;
        };
        k.deadline = now + self.ttl;
        drop(reg);
        self.wake.notify_one();
        true
    }

    /// Close `key`: its streams are closed and it is forgotten.
    pub fn close(&self, key: &str, now: Instant) -> bool {
        let mut reg = self.lock();
        if Self::live(&mut reg, key, now).is_none() {
            return false;
        }
        if let Some(k) = reg.keys.remove(key) {
            for stream in k.streams {
                let _ = stream.send(UserEvent::Closed);
            }
        }
        true
    }

    /// A new stream of `key`, if the key is alive.
    pub fn attach(&self, key: &str, now: Instant) -> Option<mpsc::UnboundedReceiver<UserEvent>> {
        let mut reg = self.lock();
        let k = Self::live(&mut reg, key, now)?;
        let (tx, rx) = mpsc::unbounded_channel();
        k.streams.push(tx);
        Some(rx)
    }

    /// Send the `executionReport`s of `execs` for `order` to every stream
    /// of every live key. Call it with the order book still locked, so that
    /// reports go out in the order the book changed.
    pub fn order_events(&self, order: &Order, execs: &[Exec], now_ms: u64) {
        let now = Instant::now();
        let mut reg = self.lock();
        if !reg
            .keys
            .values()
            .any(|k| k.deadline > now && !k.streams.is_empty())
        {
            return;
        }
        for &exec in execs {
            reg.execution_id += 1;
            let text: Arc<str> =
                report::execution_report(order, exec, reg.execution_id, now_ms).into();
            for k in reg.keys.values_mut().filter(|k| k.deadline > now) {
                k.streams
                    .retain(|s| s.send(UserEvent::Report(text.clone())).is_ok());
            }
        }
    }

    /// Expire every key whose deadline is past `now`; their names.
    pub fn expire_due(&self, now: Instant, now_ms: u64) -> Vec<String> {
        let mut reg = self.lock();
        let due: Vec<String> = (reg.keys.iter())
            .filter(|(_, k)| k.deadline <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &due {
            if let Some(k) = reg.keys.remove(name) {
                let event = serde_json::json!({
                    "e": "listenKeyExpired", "E": now_ms, "listenKey": name,
                });
                let text: Arc<str> = event.to_string().into();
                for stream in k.streams {
                    let _ = stream.send(UserEvent::Expired(text.clone()));
                }
            }
        }
        due
    }

    /// The earliest deadline of any key.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().keys.values().map(|k| k.deadline).min()
    }
}

/// Expire keys at their deadlines until shutdown.
pub async fn reap(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown();
    loop {
        let expired = shared.users.expire_due(Instant::now(), unix_ms());
        if !expired.is_empty() {
            shared.audit(|a| {
                for key in &expired {
                    a.listen_keys.closed(key, "expired");
                }
            });
        }
        let next = shared.users.next_deadline();
        let far = Instant::now() + Duration::from_secs(3_600);
        tokio::select! {
            () = signalled(&mut shutdown) => return,
            () = shared.users.wake.notified() => {}
            () = tokio::time::sleep_until(next.unwrap_or(far)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::{OrderType, Side, Status};
    use rust_decimal::Decimal;

    fn order() -> Order {
        Order {
            order_id: 1,
            client_id: "a".into(),
            symbol: "BTCUSDT".into(),
            side: Side::Sell,
            kind: OrderType::Market,
            orig_qty: Decimal::ONE,
            executed_qty: Decimal::ONE,
            price: Decimal::ZERO,
            avg_price: Decimal::ONE,
            status: Status::Filled,
            received_ms: 1,
            transact_ms: 1,
        }
    }

    #[test]
    fn keys_live_until_their_deadline() {
        let ttl = Duration::from_secs(10);
        let u = UserStreams::new(ttl, 1);
        let t0 = Instant::now();
        let key = u.create(t0);
        assert!(well_formed(&key), "{key}");
        let other_key = u.create(t0);
        assert_ne!(other_key, key);
        let mut rx = u.attach(&key, t0).expect("alive");
        assert!(u.attach("nope", t0).is_none());
        u.order_events(&order(), report::placement(&order()), 5);
        let first = rx.try_recv().expect("NEW");
        let second = rx.try_recv().expect("TRADE");
        match (first, second) {
            (UserEvent::Report(a), UserEvent::Report(b)) => {
                assert!(a.contains("\"x\":\"NEW\"") && a.contains("\"I\":1"), "{a}");
                assert!(
                    b.contains("\"x\":\"TRADE\"") && b.contains("\"I\":2"),
                    "{b}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(u.keep_alive(&key, t0 + Duration::from_secs(9)));
        assert_eq!(
            u.expire_due(t0 + Duration::from_secs(11), 0),
            vec![other_key]
        );
        let late = t0 + Duration::from_secs(19);
        assert!(!u.keep_alive(&key, late), "past its deadline");
        assert!(u.attach(&key, late).is_none());
        assert_eq!(u.expire_due(late, 77), vec![key.clone()]);
        match rx.try_recv() {
            Ok(UserEvent::Expired(text)) => {
                assert!(
                    text.contains("listenKeyExpired") && text.contains(&key),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(u.next_deadline().is_none());
        let other = u.create(late);
        let mut rx = u.attach(&other, late).expect("alive");
        assert!(u.close(&other, late));
        assert_eq!(rx.try_recv(), Ok(UserEvent::Closed));
        assert!(!u.close(&other, late));
    }
}

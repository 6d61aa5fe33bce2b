//! State shared by all tasks: the audit behind a mutex, the pause switch, the
//! shutdown signal, and a progress signal that wakes `wait_acked_ms` waiters.

use crate::audit::Audit;
use crate::frames::Shaping;
use crate::Args;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Immutable configuration derived from [`Args`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Stream names served (`<symbol>@trade`).
    pub streams: Vec<String>,
    /// Trades per second per stream per connection.
    pub rate: u32,
    /// Seed of the trade sequences.
    pub seed: u64,
    /// Last trade id of each stream, if the feed is finite.
    pub last_trade: Option<u64>,
    /// Frame shaping knobs.
    pub shaping: Shaping,
    /// Maximum write chunk (0 = whole buffers).
    pub max_chunk: usize,
}

impl Config {
    /// Derive the configuration from the flags.
    pub fn from_args(args: &Args) -> Self {
        Self {
            streams: args.stream_names(),
            rate: args.rate.max(1),
            seed: args.seed,
            last_trade: args.trades,
            shaping: Shaping {
                fragment_every: args.fragment_every,
                ping_every: args.ping_every,
                big_every: args.big_every,
                big_size: args.big_size,
            },
            max_chunk: args.max_chunk,
        }
    }
}

/// Resolve once `rx` reads `true` (or its sender is gone). The guard that
/// `wait_for` returns is dropped here so callers' futures stay `Send`.
pub async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Shared state; held in an `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Config,
    audit: Mutex<Audit>,
    progress: watch::Sender<u64>,
    paused: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Shared {
    /// Fresh state for `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            audit: Mutex::new(Audit::new(Instant::now())),
            progress: watch::Sender::new(0),
            paused: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
        }
    }

    /// Run `f` with the audit locked (keep it short; never await inside).
    pub fn audit<R>(&self, f: impl FnOnce(&mut Audit) -> R) -> R {
        let mut guard = self.audit.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Wake `wait_acked` waiters (after acks, closes, malformed frames).
    pub fn notify_progress(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Stop generating trades.
    pub fn pause(&self) {
        self.audit(|a| a.pause(Instant::now()));
        self.paused.send_replace(true);
    }

    /// Resume generating trades.
    pub fn resume(&self) {
        self.audit(|a| a.resume(Instant::now()));
        self.paused.send_replace(false);
    }

    /// Receiver of the pause switch (`true` = paused).
    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// Ask every task to stop.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Receiver of the shutdown signal (`true` = shutting down).
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Wait until [`Audit::all_acked`] holds or `timeout` passes; returns whether it holds.
    pub async fn wait_all_acked(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.progress.subscribe();
        loop {
            rx.borrow_and_update();
            if self.audit(|a| a.all_acked()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Sender gone (cannot happen while `self` lives) or timed out.
                Ok(Err(_)) | Err(_) => return self.audit(|a| a.all_acked()),
            }
        }
    }

    /// The audit as JSON.
    pub fn audit_json(&self) -> String {
        self.audit(|a| a.to_json())
    }
}

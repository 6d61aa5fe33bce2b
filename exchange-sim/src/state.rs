//! State shared by all tasks: the ack audit and the order book behind
//! mutexes, the reference prices, the depth books, the listen keys, the
//! pause switch, the shutdown and kick signals, and a progress signal that
//! wakes `wait_acked_ms` waiters.

use crate::audit::Audit;
use crate::auth::Gate;
use crate::depth::DepthMarket;
use crate::frames::Shaping;
use crate::orders::Book;
use crate::prices::ReferencePrices;
use crate::tls::TlsServer;
use crate::user_stream::UserStreams;
use crate::Args;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Immutable configuration derived from [`Args`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Trade stream names served (`<symbol>@trade`).
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
    /// Delay of every `/api/v3/order` answer.
    pub order_latency: Duration,
    /// Reject every Nth order placement (0 = never).
    pub order_reject_every: u64,
    /// Every stream name a client may subscribe to: the trade streams, then
    /// the diff streams of each symbol.
    pub all_streams: Vec<String>,
    /// The served symbols, lower case, in flag order.
    pub symbols: Vec<String>,
    /// Period of the diff events of each book.
    pub depth_every: Duration,
    /// How long a listen key lives past its last keep-alive.
    pub listen_key_ttl: Duration,
    /// Websockets are closed this long after their upgrade (`None`: never).
    pub max_conn_age: Option<Duration>,
    /// Period of the timed pings (`None`: none).
    pub ping_every: Option<Duration>,
    /// How long a timed ping may stay unanswered.
    pub pong_timeout: Duration,
}

impl Config {
    /// Derive the configuration from the flags.
    pub fn from_args(args: &Args) -> Self {
        let streams = args.stream_names();
        let symbols: Vec<String> = (streams.iter())
            .map(|s| s.split('@').next().unwrap_or(s).to_owned())
            .collect();
        let mut all_streams = streams.clone();
        all_streams.extend(symbols.iter().flat_map(|s| crate::depth::stream_names(s)));
        let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Self {
            all_streams,
            symbols,
            depth_every: Duration::from_millis(args.depth_every_ms.max(1)),
            listen_key_ttl: Duration::from_millis(args.listen_key_ttl_ms.max(1)),
            max_conn_age: millis(args.max_conn_age_ms),
            ping_every: millis(args.ping_every_ms),
            pong_timeout: Duration::from_millis(args.pong_timeout_ms.max(1)),
            streams,
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
            order_latency: Duration::from_millis(args.order_latency_ms),
            order_reject_every: args.order_reject_every,
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
    orders: Mutex<Book>,
    /// Latest generated trade price per symbol.
    pub prices: ReferencePrices,
    /// The TLS side (`--tls`), if on.
    pub tls: Option<TlsServer>,
    /// The order book of every symbol, behind the diff streams.
    pub depth: DepthMarket,
    /// Listen keys and their user-data streams.
    pub users: UserStreams,
    /// API key and signature checks (`--api-key`), and their refusals.
    pub gate: Gate,
    /// Bumped by `/control/server_shutdown`: every websocket open then closes.
    kicks: watch::Sender<u64>,
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
    /// Fresh state for `config`, serving TLS too if `tls` is given,
    /// checking requests at `gate`.
    pub fn new(config: Config, tls: Option<TlsServer>, gate: Gate) -> Self {
        let prices = ReferencePrices::new(&config.streams);
        let book = Book::new(prices.symbols(), config.order_reject_every);
        let depth = DepthMarket::new(config.symbols.iter().map(String::as_str), config.seed);
        let users = UserStreams::new(config.listen_key_ttl, config.seed);
        Self {
            depth,
            users,
            gate,
            kicks: watch::Sender::new(0),
            config,
            audit: Mutex::new(Audit::new(Instant::now())),
            orders: Mutex::new(book),
            prices,
            tls,
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

    /// Run `f` with the order book locked (keep it short; never await inside).
    pub fn orders<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        let mut guard = self.orders.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Wake `wait_acked` waiters (after acks, closes, malformed frames).
    pub fn notify_progress(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Stop generating trades and diffs (`/control/depth_burst` still works).
    pub fn pause(&self) {
        self.audit(|a| a.pause(Instant::now()));
        self.paused.send_replace(true);
        self.depth.barrier();
    }

    /// Resume generating trades and diffs.
    pub fn resume(&self) {
        self.audit(|a| a.resume(Instant::now()));
        self.paused.send_replace(false);
    }

    /// Receiver of the pause switch (`true` = paused).
    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// Close every open websocket now (`serverShutdown` first), and go on
    /// serving.
    pub fn kick_all(&self) {
        self.kicks.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Receiver of the kicks: changes when every connection open must close.
    pub fn kicks(&self) -> watch::Receiver<u64> {
        self.kicks.subscribe()
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

    /// The order audit as JSON, with the requests the gate refused
    /// (`refused`, by kind).
    pub fn orders_audit_json(&self) -> String {
        let text = self.orders(|b| b.audit_json());
        match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(mut audit)) => {
                let refused = serde_json::to_value(self.gate.refusals()).unwrap_or_default();
                audit.insert("refused".into(), refused);
                serde_json::Value::Object(audit).to_string()
            }
            _ => text,
        }
    }
}

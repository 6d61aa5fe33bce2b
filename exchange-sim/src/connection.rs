//! One websocket connection: the writer loop (paced trade feed, replies,
//! pings, TLS key updates) running alongside the client reader, over a plain
//! or a TLS stream alike.

use crate::audit::TLS_ERROR_PREFIX;
use crate::client_reader::{self, Command};
use crate::feed::TradeGenerator;
use crate::frames::{ChunkedWriter, Encoder};
use crate::state::{signalled, unix_ms, Shared};
use crate::tls::{self, KeyUpdates};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

/// What a connection runs over.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// TLS: stream errors are told apart as TLS failures (`error: tls: …`).
    pub tls: bool,
    /// Where to ask for a KeyUpdate after every `.1`th message (TLS 1.3 with
    /// `--key-update-every`).
    pub key_updates: Option<(Arc<KeyUpdates>, u64)>,
}

/// Serve upgraded connection `id` (already registered in the audit) until it
/// closes. `initial` holds bytes the client sent right after its upgrade request.
pub async fn serve<S>(
    shared: Arc<Shared>,
    id: u64,
    stream: S,
    peer: SocketAddr,
    initial: Vec<u8>,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    tracing::info!(conn = id, %peer, tls = transport.tls, "websocket connection open");
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(256);
    tokio::join!(
        client_reader::read_loop(&shared, id, rd, initial, tx, transport.tls),
        write_loop(&shared, id, wr, rx, &transport),
    );
    shared.notify_progress();
    tracing::info!(conn = id, "websocket connection done");
}

/// Paces trade emission at `rate` per second per stream, in batches.
struct Pacer {
    rate: u64,
    base: Instant,
    emitted: u64,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Self {
            rate: u64::from(rate.max(1)),
            base: Instant::now(),
            emitted: 0,
        }
    }

    /// Restart the schedule (after subscribing or resuming) without a backlog.
    fn reset(&mut self) {
        self.base = Instant::now();
        self.emitted = 0;
    }

    /// Trades per stream due now. A backlog (slow reader) is capped at 50 ms
    /// worth: the rate drops, ids are never skipped.
    fn due(&mut self) -> u64 {
        let elapsed = Instant::now()
            .saturating_duration_since(self.base)
            .as_nanos();
        let due_total = u64::try_from(elapsed * u128::from(self.rate) / 1_000_000_000)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let cap = (self.rate / 20).max(1);
        let mut n = due_total.saturating_sub(self.emitted);
        if n > cap {
            self.emitted = due_total - cap;
            n = cap;
        }
        self.emitted += n;
        n
    }

    fn period(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / self.rate).max(Duration::from_millis(1))
    }
}

fn write_error_reason(e: &io::Error, tls: bool) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "reset".into(),
        _ => match tls.then(|| tls::failure(e)).flatten() {
            Some(why) => format!("{TLS_ERROR_PREFIX} write: {why}"),
            None => format!("error: write: {e}"),
        },
    }
}

/// Per-connection seed for the shaping randomness (not part of the feed).
fn shaping_seed(seed: u64, id: u64, salt: u64) -> u64 {
    seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt
}

/// What the writer does after handling one event.
enum Next {
    Continue,
    /// Flush what is buffered, shut the write side down, and stop.
    Finish,
    /// Stop without writing anything more.
    Stop,
}

struct Writer<'a> {
    shared: &'a Shared,
    id: u64,
    encoder: Encoder,
    generators: Vec<TradeGenerator>,
    pacer: Pacer,
    buf: Vec<u8>,
    pings: u64,
    /// Send a KeyUpdate after every Nth message (0 = never).
    key_update_every: u64,
    /// Offsets in `buf` after which a KeyUpdate goes out.
    key_update_marks: Vec<usize>,
}

impl Writer<'_> {
    fn push_text(&mut self, text: String) -> io::Result<()> {
        let pushed = self.encoder.push_text(text, &mut self.buf)?;
        self.pings += pushed.pings;
        let every = self.key_update_every;
        if every > 0 && self.encoder.messages().is_multiple_of(every) {
            self.key_update_marks.push(self.buf.len());
        }
        Ok(())
    }

    fn handle(&mut self, cmd: Option<Command>) -> io::Result<Next> {
        match cmd {
            // The reader is done (EOF, reset): the client is gone.
            None => return Ok(Next::Stop),
            Some(Command::Subscribe { streams, response }) => {
                self.push_text(response)?;
                let first = self.generators.is_empty();
                let cfg = &self.shared.config;
                for stream in streams {
                    if !self.generators.iter().any(|g| g.stream() == stream) {
                        let g = TradeGenerator::new(&stream, cfg.seed, cfg.last_trade);
                        self.generators.push(g);
                    }
                }
                if first {
                    self.pacer.reset();
                }
            }
            Some(Command::Reply(text)) => self.push_text(text)?,
            Some(Command::Pong(payload)) => self.encoder.push_pong(payload, &mut self.buf)?,
            Some(Command::Close(code)) => {
                let code = code.unwrap_or(1000);
                self.encoder.push_close(code, "", &mut self.buf)?;
                return Ok(Next::Finish);
            }
        }
        Ok(Next::Continue)
    }

    /// Our own shutdown: close with 1001 (going away).
    fn going_away(&mut self) -> io::Result<Next> {
        self.shared.audit(|a| a.close(self.id, "shutdown"));
        self.encoder.push_close(1001, "shutdown", &mut self.buf)?;
        Ok(Next::Finish)
    }

    fn feeding(&self) -> bool {
        self.generators.iter().any(|g| !g.is_finished())
    }

    /// Encode the trades due now; records them as sent (before they are written,
    /// so an ack can never overtake its own `sent` record) and makes the last
    /// price of each symbol its reference price for orders.
    fn produce(&mut self) -> io::Result<()> {
        let rounds = self.pacer.due();
        let now_ms = unix_ms();
        // Per generator: trades produced, last id, last price.
        let mut sent: Vec<(u64, u64, u64)> = vec![(0, 0, 0); self.generators.len()];
        for _ in 0..rounds {
            for (i, slot) in sent.iter_mut().enumerate() {
                let Some(generator) = self.generators.get_mut(i) else {
                    continue;
                };
                let Some(trade) = generator.next_trade() else {
                    continue;
                };
                let text = generator.encode(&trade, now_ms, self.encoder.next_pad());
                *slot = (slot.0 + 1, trade.id, trade.price_cents);
                self.push_text(text)?;
            }
        }
        let (id, generators) = (self.id, &self.generators);
        for (g, (count, _, price)) in generators.iter().zip(&sent) {
            if *count > 0 {
                self.shared.prices.record(g.symbol(), *price);
            }
        }
        self.shared.audit(|a| {
            for (g, (count, last, _)) in generators.iter().zip(&sent) {
                if *count > 0 {
                    a.sent(id, g.stream(), *count, *last);
                }
            }
        });
        Ok(())
    }
}

/// Write `buf`, asking for a KeyUpdate (and flushing it out) at each of
/// `marks` (increasing offsets into `buf`).
async fn write_out<W: AsyncWrite + Unpin>(
    out: &mut ChunkedWriter<W>,
    buf: &[u8],
    marks: &[usize],
    key_updates: Option<&KeyUpdates>,
) -> io::Result<()> {
    let mut start = 0;
    if let Some(key_updates) = key_updates {
        for &mark in marks {
            out.write_all(buf.get(start..mark).unwrap_or_default())
                .await?;
            key_updates.request();
            out.flush().await?;
            start = mark;
        }
    }
    match buf.get(start..) {
        Some(rest) if !rest.is_empty() => out.write_all(rest).await,
        _ => Ok(()),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    id: u64,
    wr: W,
    mut rx: mpsc::Receiver<Command>,
    transport: &Transport,
) {
    let cfg = &shared.config;
    let mut out = ChunkedWriter::new(wr, cfg.max_chunk, shaping_seed(cfg.seed, id, 1));
    let key_updates = transport.key_updates.as_ref().map(|(k, _)| k.as_ref());
    let mut w = Writer {
        shared,
        id,
        encoder: Encoder::new(cfg.shaping, shaping_seed(cfg.seed, id, 2)),
        generators: Vec::new(),
        pacer: Pacer::new(cfg.rate),
        buf: Vec::new(),
        pings: 0,
        key_update_every: transport.key_updates.as_ref().map_or(0, |(_, n)| *n),
        key_update_marks: Vec::new(),
    };
    let mut paused_rx = shared.paused();
    let mut paused = *paused_rx.borrow_and_update();
    let mut pause_switch_alive = true;
    let mut shutdown = shared.shutdown();
    let mut ticker = tokio::time::interval(w.pacer.period());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let feeding = !paused && w.feeding();
        let next = tokio::select! {
            biased;
            () = signalled(&mut shutdown) => w.going_away(),
            cmd = rx.recv() => {
                // The reader also stops on shutdown, and tokio's task budget can
                // let its hang-up win over the (biased) shutdown branch.
                if cmd.is_none() && *shutdown.borrow() {
                    w.going_away()
                } else {
                    w.handle(cmd)
                }
            }
            changed = paused_rx.changed(), if pause_switch_alive => {
                pause_switch_alive = changed.is_ok();
                if pause_switch_alive {
                    let was = paused;
                    paused = *paused_rx.borrow_and_update();
                    if was && !paused {
                        w.pacer.reset();
                    }
                }
                Ok(Next::Continue)
            }
            _ = ticker.tick(), if feeding => w.produce().map(|()| Next::Continue),
        };
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                // Encoding into memory failed: nothing sensible to send.
                shared.audit(|a| a.close(id, &format!("error: encode: {e}")));
                Next::Stop
            }
        };
        if matches!(next, Next::Stop) {
            return;
        }
        if w.pings > 0 {
            let pings = std::mem::take(&mut w.pings);
            shared.audit(|a| {
                if let Some(c) = a.conn(id) {
                    c.pings_sent += pings;
                }
            });
        }
        if !w.buf.is_empty() {
            let result = write_out(&mut out, &w.buf, &w.key_update_marks, key_updates).await;
            w.buf.clear();
            w.key_update_marks.clear();
            if let Some(sent) = key_updates.map(KeyUpdates::take_sent).filter(|n| *n > 0) {
                shared.audit(|a| a.key_updates(id, sent));
            }
            if let Err(e) = result {
                tracing::info!(conn = id, "write failed: {e}");
                shared.audit(|a| a.close(id, &write_error_reason(&e, transport.tls)));
                shared.notify_progress();
                return;
            }
        }
        if matches!(next, Next::Finish) {
            let _ = out.shutdown().await;
            return;
        }
    }
}

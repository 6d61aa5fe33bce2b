//! One websocket connection: the writer loop (paced trade feed, diff
//! streams, user-data events, replies, pings, TLS key updates, the
//! connection's lifetime) running alongside the client reader, over a plain
//! or a TLS stream alike.

use crate::audit::TLS_ERROR_PREFIX;
use crate::client_reader::{self, Command};
use crate::depth::feed::{DepthSubs, PullError};
use crate::feed::TradeGenerator;
use crate::frames::{ChunkedWriter, Encoder};
use crate::lifetime::{LifeEvent, Lifetime, Pongs};
use crate::pacer::Pacer;
use crate::state::{signalled, unix_ms, Shared};
use crate::tls::{self, KeyUpdates};
use crate::user_stream::UserEvent;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

/// How long a client may take to answer a close frame the server sent
/// (after `--max-conn-age-ms`, a pong timeout, a kick) before the socket is
/// dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Most user-data events written in one go.
const USER_BATCH: u64 = 256;

/// What a connection runs over.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// TLS: stream errors are told apart as TLS failures (`error: tls: …`).
    pub tls: bool,
    /// Where to ask for a KeyUpdate after every `.1`th message (TLS 1.3 with
    /// `--key-update-every`).
    pub key_updates: Option<(Arc<KeyUpdates>, u64)>,
}

/// The user-data side of a connection on `/ws/<listenKey>`.
#[derive(Debug)]
pub struct UserSide {
    /// The listen key.
    pub key: String,
    /// Events from the registry.
    pub events: mpsc::UnboundedReceiver<UserEvent>,
}

/// Serve upgraded connection `id` (already registered in the audit) until it
/// closes. `initial` holds bytes the client sent right after its upgrade
/// request; `user` is set on a user-data stream.
pub async fn serve<S>(
    shared: Arc<Shared>,
    id: u64,
    stream: S,
    peer: SocketAddr,
    initial: Vec<u8>,
    transport: Transport,
    user: Option<UserSide>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    tracing::info!(conn = id, %peer, tls = transport.tls, "websocket connection open");
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(256);
    let pongs = Pongs::default();
    let life = Lifetime::new(&shared.config, Instant::now(), shared.kicks());
    let reader = client_reader::read_loop(&shared, id, rd, initial, tx, transport.tls, &pongs);
    let writer = write_loop(&shared, id, wr, rx, &transport, user, (life, &pongs));
    tokio::pin!(reader, writer);
    let (mut reader_done, mut server_closed) = (false, None);
    while !reader_done || server_closed.is_none() {
        tokio::select! {
            () = &mut reader, if !reader_done => reader_done = true,
            closed = &mut writer, if server_closed.is_none() => server_closed = Some(closed),
        }
        if !reader_done && server_closed == Some(true) {
            // Our close frame is out: the client gets a moment to answer it.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
            break;
        }
    }
    shared.notify_progress();
    tracing::info!(conn = id, "websocket connection done");
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
    /// Like `Finish`, the server closing on its own account: the reader
    /// then only gets [`CLOSE_GRACE`] to see the client's answer.
    Closing,
    /// Stop without writing anything more.
    Stop,
}

struct Writer<'a> {
    shared: &'a Shared,
    id: u64,
    encoder: Encoder,
    generators: Vec<TradeGenerator>,
    depth: DepthSubs,
    /// The listen key, on a user-data stream.
    user_key: Option<String>,
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
                    if self.depth.add(&self.shared.depth, &stream) {
                        continue;
                    }
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

    /// Close on the server's account: record `reason`, then a close frame.
    fn close(&mut self, reason: &str, code: u16, text: &str) -> io::Result<Next> {
        self.shared.audit(|a| a.close(self.id, reason));
        self.encoder.push_close(code, text, &mut self.buf)?;
        Ok(Next::Closing)
    }

    /// Binance's `serverShutdown` event: raw on a user-data stream, on the
    /// `!serverShutdown` stream of a market-data (combined) connection.
    fn server_shutdown_event(&mut self) -> io::Result<()> {
        let data = format!("{{\"e\":\"serverShutdown\",\"E\":{}}}", unix_ms());
        let text = match self.user_key {
            Some(_) => data,
            None => format!("{{\"stream\":\"!serverShutdown\",\"data\":{data}}}"),
        };
        self.push_text(text)
    }

    /// What the connection's lifetime asks for.
    fn lifetime(
        &mut self,
        event: LifeEvent,
        life: &mut Lifetime,
        pongs: &Pongs,
    ) -> io::Result<Next> {
        match event {
            LifeEvent::Recheck => Ok(Next::Continue),
            LifeEvent::Ping => {
                self.encoder.push_ping(&mut self.buf)?;
                self.pings += 1;
                life.pinged(pongs);
                Ok(Next::Continue)
            }
            LifeEvent::PongTimeout => self.close(event.close_reason(), 1008, "pong timeout"),
            LifeEvent::MaxAge => {
                if self.user_key.is_some() {
                    self.server_shutdown_event()?;
                }
                self.close(event.close_reason(), 1001, "max connection age")
            }
            LifeEvent::Kicked => {
                self.server_shutdown_event()?;
                self.close(event.close_reason(), 1001, "server shutdown")
            }
        }
    }

    /// Encode the diffs waiting for this connection (a slice of them);
    /// records them as sent first, like trades.
    fn pull_depth(&mut self) -> io::Result<Next> {
        let shared = self.shared;
        let mut subs = std::mem::take(&mut self.depth);
        let pulled = subs.pull(&shared.depth, |event, stream, symbol| {
            let text = event.encode(stream, symbol, self.encoder.next_pad());
            self.push_text(text)
        });
        self.depth = subs;
        match pulled {
            Ok(sent) => {
                if !sent.is_empty() {
                    shared.audit(|a| {
                        for s in &sent {
                            a.depth_sent(
                                self.id,
                                &s.stream,
                                s.first_seq,
                                s.count,
                                (s.first_u, s.last_u),
                            );
                        }
                    });
                }
                Ok(Next::Continue)
            }
            Err(PullError::Io(e)) => Err(e),
            Err(PullError::Lagged { stream, behind }) => {
                let reason = format!("error: slow consumer: {stream} fell {behind} diffs behind");
                self.close(&reason, 1008, "slow consumer")
            }
        }
    }

    /// A user-data event, and those queued behind it.
    fn user_event(
        &mut self,
        first: Option<UserEvent>,
        events: &mut mpsc::UnboundedReceiver<UserEvent>,
    ) -> io::Result<Next> {
        let mut next = first;
        let mut sent: u64 = 0;
        let outcome = loop {
            match next {
                Some(UserEvent::Report(text)) => {
                    self.push_text(text.to_string())?;
                    sent += 1;
                }
                Some(UserEvent::Expired(text)) => {
                    self.push_text(text.to_string())?;
                    break self.close("listen_key_expired", 1000, "listenKey expired");
                }
                Some(UserEvent::Closed) | None => {
                    break self.close("listen_key_closed", 1000, "listenKey closed");
                }
            }
            if sent >= USER_BATCH {
                break Ok(Next::Continue);
            }
            match events.try_recv() {
                Ok(event) => next = Some(event),
                Err(_) => break Ok(Next::Continue),
            }
        };
        if sent > 0 {
            self.shared.audit(|a| a.user_events_sent(self.id, sent));
        }
        outcome
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

/// The writer of connection `id`; true if it ended by closing on the
/// server's account (the reader then gets [`CLOSE_GRACE`]).
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    id: u64,
    wr: W,
    mut rx: mpsc::Receiver<Command>,
    transport: &Transport,
    user: Option<UserSide>,
    (mut life, pongs): (Lifetime, &Pongs),
) -> bool {
    let cfg = &shared.config;
    let mut out = ChunkedWriter::new(wr, cfg.max_chunk, shaping_seed(cfg.seed, id, 1));
    let key_updates = transport.key_updates.as_ref().map(|(k, _)| k.as_ref());
    let (user_key, mut user_events) = match user {
        Some(u) => (Some(u.key), Some(u.events)),
        None => (None, None),
    };
    let mut w = Writer {
        shared,
        id,
        encoder: Encoder::new(cfg.shaping, shaping_seed(cfg.seed, id, 2)),
        generators: Vec::new(),
        depth: DepthSubs::default(),
        user_key,
        pacer: Pacer::new(cfg.rate),
        buf: Vec::new(),
        pings: 0,
        key_update_every: transport.key_updates.as_ref().map_or(0, |(_, n)| *n),
        key_update_marks: Vec::new(),
    };
    let mut paused_rx = shared.paused();
    let mut paused = *paused_rx.borrow_and_update();
    let mut pause_switch_alive = true;
    let mut depth_rx = shared.depth.watch();
    let mut depth_alive = true;
    let mut shutdown = shared.shutdown();
    let mut ticker = tokio::time::interval(w.pacer.period());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // A lifetime event that fired while a write was in progress.
    let mut held: Option<LifeEvent> = None;
    loop {
        let feeding = !paused && w.feeding();
        let depth_waits = depth_alive && !w.depth.is_empty() && !w.depth.pending();
        let next = if let Some(event) = held.take() {
            w.lifetime(event, &mut life, pongs)
        } else {
            tokio::select! {
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
                event = life.next(pongs, true) => w.lifetime(event, &mut life, pongs),
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
                event = recv_user(&mut user_events) => match user_events.as_mut() {
                    Some(events) => w.user_event(event, events),
                    None => Ok(Next::Continue),
                },
                changed = depth_rx.changed(), if depth_waits => match changed {
                    Ok(()) => w.pull_depth(),
                    Err(_) => {
                        depth_alive = false;
                        Ok(Next::Continue)
                    }
                },
                () = std::future::ready(()), if w.depth.pending() => w.pull_depth(),
                _ = ticker.tick(), if feeding => w.produce().map(|()| Next::Continue),
            }
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
            return false;
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
            let closing = matches!(next, Next::Finish | Next::Closing);
            let guard = (&mut life, pongs, !closing);
            let result =
                match write_guarded(&mut out, (&w.buf, &w.key_update_marks), key_updates, guard)
                    .await
                {
                    Written::Done(result, event) => {
                        held = event;
                        result
                    }
                    Written::Dropped(event) => {
                        tracing::info!(
                            conn = id,
                            "{} while a write was blocked",
                            event.close_reason()
                        );
                        shared.audit(|a| a.close(id, event.close_reason()));
                        return true;
                    }
                };
            w.buf.clear();
            w.key_update_marks.clear();
            if let Some(sent) = key_updates.map(KeyUpdates::take_sent).filter(|n| *n > 0) {
                shared.audit(|a| a.key_updates(id, sent));
            }
            if let Err(e) = result {
                tracing::info!(conn = id, "write failed: {e}");
                shared.audit(|a| a.close(id, &write_error_reason(&e, transport.tls)));
                shared.notify_progress();
                return false;
            }
        }
        if matches!(next, Next::Finish | Next::Closing) {
            let _ = out.shutdown().await;
            return matches!(next, Next::Closing);
        }
    }
}

/// How a guarded write ended.
enum Written {
    /// Written (or failed), maybe with a lifetime event that fired meanwhile.
    Done(io::Result<()>, Option<LifeEvent>),
    /// Still blocked [`CLOSE_GRACE`] after a lifetime event: give up.
    Dropped(LifeEvent),
}

/// [`write_out`], unless `guarded` is false, watched by the lifetime: a
/// client that stopped reading can block a write for good, so a deadline
/// passing meanwhile gives the write [`CLOSE_GRACE`] more, then gives up
/// (no close frame can go out then).
async fn write_guarded<W: AsyncWrite + Unpin>(
    out: &mut ChunkedWriter<W>,
    (buf, marks): (&[u8], &[usize]),
    key_updates: Option<&KeyUpdates>,
    (life, pongs, guarded): (&mut Lifetime, &Pongs, bool),
) -> Written {
    let write = write_out(out, buf, marks, key_updates);
    tokio::pin!(write);
    tokio::select! {
        biased;
        result = &mut write => Written::Done(result, None),
        event = life.fatal(pongs), if guarded => {
            match tokio::time::timeout(CLOSE_GRACE, &mut write).await {
                Ok(result) => Written::Done(result, Some(event)),
                Err(_) => Written::Dropped(event),
            }
        }
    }
}

/// The next user-data event; never resolves on a market-data connection.
async fn recv_user(events: &mut Option<mpsc::UnboundedReceiver<UserEvent>>) -> Option<UserEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

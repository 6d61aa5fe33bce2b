//! The event loop: consume messages one at a time, answer the supervisor,
//! freeze at a message boundary (`freeze.rs`), thaw or exit.

use std::future::poll_fn;
use std::task::Poll;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use handoff_protocol::monotonic_ns;
use handoff_protocol::worker::{FromWorker, ToWorker};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{interval, MissedTickBehavior};
use tracing::{debug, info, warn};
use tungstenite::Message;

use crate::app::{App, Effect, Outbox, Target};
use crate::conn::Conn;
use crate::error::WorkerError;
use crate::freeze::AfterFreeze;
use crate::link::{recv_opt, Link};
use crate::settings::Settings;
use crate::start::Ended;

/// Most messages consumed in a row without looking at the supervisor, the
/// timers or the signals: bounds how much later than otherwise a Freeze is
/// acted on (a few hundred microseconds of small messages).
const BATCH: usize = 32;

/// A successor warmed by a pre-copy takes its first checkpoint this long
/// after it starts serving, not a whole `checkpoint_interval`: until then
/// the supervisor's newest checkpoint is the one before the upgrade, and a
/// crash would go back to it. Not at once: the first messages after the
/// blackout come first (the checkpoint's `fork` stops the loop briefly).
const FIRST_CHECKPOINT_AFTER_WARM: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether the supervisor waits to hear of the first consumed message (the
/// end of a handoff's blackout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    Nothing,
    FirstMessage,
}

/// Whether new effects may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EffectGate {
    Open,
    /// Freezing: effects the app asks for wait in `deferred` (started on
    /// thaw, dropped on exit: the app recorded them in its state).
    Held,
}

/// The app, its connections and its supervisor link.
pub(crate) struct Worker<A: App> {
    pub(crate) app: A,
    pub(crate) conns: Vec<Conn>,
    pub(crate) link: Option<Link>,
    /// The supervisor's state directory (`None` when started by hand).
    pub(crate) state_dir: Option<std::path::PathBuf>,
    /// Held while this worker is the one that serves its state directory.
    pub(crate) serving: Option<handoff_protocol::lockfile::LockFile>,
    /// Listening for a new supervisor, while this worker has none.
    pub(crate) orphanage: Option<crate::orphan::Orphanage>,
    /// The generation the supervisor gave this worker.
    pub(crate) generation: u64,
    /// Restored in a handoff and not told `Go` yet.
    pub(crate) awaiting_go: bool,
    /// A supervisor connected to the orphan socket and has until then to
    /// say `Adopt`.
    pub(crate) adoption_deadline: Option<tokio::time::Instant>,
    /// The app's pending timers (see [`crate::timers`]).
    pub(crate) timers: crate::timers::Timers,
    /// The feeds this build is configured with (see [`crate::feeds`]).
    pub(crate) configured: Vec<crate::Feed>,
    /// Connections the app opened, and every connection's age (see
    /// [`crate::opened`]).
    pub(crate) opened: crate::opened::Opened,
    pub(crate) settings: Settings,
    /// The app's name and schemas, asked once.
    pub(crate) identity: crate::app::Identity,
    /// Round-robin start for fairness between connections.
    next_poll: usize,
    /// The app's requests in flight.
    pub(crate) effects: FuturesUnordered<Effect<A::Done>>,
    pub(crate) deferred: Vec<Effect<A::Done>>,
    pub(crate) gate: EffectGate,
    /// Feeds whose connection was lost, to re-open (and re-subscribe).
    pub(crate) lost: Vec<crate::conn::Feed>,
    /// Schema of checkpoints, when the supervisor asked for another one.
    pub(crate) checkpoint_schema: Option<u32>,
    /// Where periodic checkpoints are made (see [`crate::checkpoint`]).
    pub(crate) images: crate::checkpoint::Images,
    /// A pre-copy in progress, this worker its source (see
    /// [`crate::precopy`]).
    pub(crate) source: Option<crate::precopy::Source>,
    /// Warmed by a pre-copy: take a checkpoint soon after going live (the
    /// supervisor's newest is older than this state).
    pub(crate) checkpoint_soon: bool,
    /// Lowest id a new connection may take: ids are never reused by a
    /// worker, so a re-opened feed is told apart from the one it replaces.
    pub(crate) id_floor: u32,
}

impl<A: App> Worker<A> {
    pub(crate) fn new(app: A, settings: Settings, link: Option<Link>) -> Self {
        let state_dir = link.as_ref().and_then(|_| {
            std::env::var_os(handoff_protocol::state_dir::ENV_STATE_DIR).map(Into::into)
        });
        let generation = std::env::var(handoff_protocol::state_dir::ENV_GENERATION)
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        Worker {
            identity: app.identity(),
            app,
            conns: Vec::new(),
            link,
            state_dir,
            serving: None,
            orphanage: None,
            generation,
            awaiting_go: false,
            adoption_deadline: None,
            timers: Default::default(),
            configured: Vec::new(),
            opened: Default::default(),
            settings,
            next_poll: 0,
            effects: FuturesUnordered::new(),
            deferred: Vec::new(),
            gate: EffectGate::Open,
            lost: Vec::new(),
            id_floor: 0,
            checkpoint_schema: None,
            images: Default::default(),
            source: None,
            checkpoint_soon: false,
        }
    }

    /// Let the app reconcile after taking over (its effects start now: the
    /// supervisor has said Go).
    pub(crate) async fn took_over(&mut self, mode: handoff_protocol::worker::RestoreMode) {
        let mut out = Outbox::default();
        self.app.on_takeover(mode, &mut out);
        self.write_outbox(out).await;
    }

    pub(crate) fn conns(&self) -> &[Conn] {
        &self.conns
    }

    pub(crate) fn push_conn(&mut self, conn: Conn) {
        self.conns.push(conn);
    }

    pub(crate) fn adopt(&mut self, conns: Vec<Conn>) {
        self.conns.extend(conns);
    }

    /// Serve until handed over, stopped, or failed.
    pub(crate) async fn serve(&mut self, mut awaiting: Awaiting) -> Result<Ended, WorkerError> {
        let mut heartbeat = interval(self.settings.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Not at once: a successor just said Ready, and its first job after
        // Go is the first message (the end of the blackout).
        heartbeat.reset();
        let mut checkpoint = interval(self.settings.checkpoint_interval);
        checkpoint.set_missed_tick_behavior(MissedTickBehavior::Delay);
        checkpoint.reset();
        if std::mem::take(&mut self.checkpoint_soon) {
            checkpoint.reset_after(FIRST_CHECKPOINT_AFTER_WARM);
        }
        let mut reconnect = interval(self.settings.reconnect_interval);
        reconnect.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut age_check = interval(self.settings.reconnect_interval);
        age_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sigterm = signal(SignalKind::terminate()).map_err(WorkerError::Signals)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(WorkerError::Signals)?;
        if crate::fault::hit(crate::fault::FaultPoint::Serving).await
            == crate::fault::FaultAction::Garbage
        {
            if let Some(link) = self.link.as_mut() {
                let _ = link
                    .send_garbage(b"\x00\x01garbage that is no frame at all\xff")
                    .await;
            }
        }
        // Every feed is open: a start that got this far did not fail. A
        // successor says so once its first message is through (or at its
        // first heartbeat, on a quiet feed): the write wakes the
        // supervisor, which on a busy machine would take this core from
        // the first message, the end of the blackout.
        let mut serving_told = awaiting != Awaiting::FirstMessage;
        if serving_told {
            self.tell(&FromWorker::Serving).await;
        }
        loop {
            let linked = self.link.is_some();
            tokio::select! {
                biased;
                cmd = recv_opt(&mut self.link) => {
                    let cmd = match cmd {
                        Ok(Some((cmd, _fds))) => cmd,
                        Ok(None) => {
                            self.orphaned("supervisor went away");
                            continue;
                        }
                        Err(e) => {
                            self.orphaned(&format!("supervisor channel broken ({e})"));
                            continue;
                        }
                    };
                    match cmd {
                        ToWorker::Freeze { schema, catch_up } => match self.freeze(schema.unwrap_or(self.identity.schema), catch_up).await? {
                            AfterFreeze::Thawed => info!("thawed: resuming where we froze"),
                            AfterFreeze::Exit => return Ok(self.handed_over()),
                            AfterFreeze::Stop => return self.stop().await,
                        },
                        ToWorker::CheckpointNow => self.checkpoint_off_loop(true).await?,
                        ToWorker::PreCopy { round } => self.precopy_round(round).await,
                        ToWorker::PreCopyEnd => self.precopy_end(),
                        ToWorker::CheckpointIn { schema } => {
                            info!(?schema, "checkpoint schema changed");
                            self.checkpoint_schema = schema;
                        }
                        ToWorker::Stop => return self.stop().await,
                        ToWorker::Exit => return Ok(self.handed_over()),
                        ToWorker::Adopt { supervisor_pid } => self.adopted(supervisor_pid).await?,
                        ToWorker::Thaw | ToWorker::Go => debug!(?cmd, "ignored: not frozen"),
                        other => return Err(WorkerError::Unexpected { when: "serving", what: format!("{other:?}") }),
                    }
                }
                // Timers before the connections: a worker that always has a
                // message ready must still heartbeat and checkpoint, or the
                // supervisor takes it for hung (they are ready only when due).
                _ = heartbeat.tick(), if linked => {
                    if !std::mem::replace(&mut serving_told, true) {
                        self.tell(&FromWorker::Serving).await;
                    }
                    self.tell(&FromWorker::Heartbeat).await
                }
                stream = crate::orphan::accept_opt(&self.orphanage), if !linked => self.offer_adoption(stream).await,
                _ = crate::orphan::adoption_stalled(self.adoption_deadline) => self.drop_silent_adopter(),
                _ = checkpoint.tick(), if linked => self.checkpoint_off_loop(false).await?,
                res = self.images.done() => {
                    if self.image_done(res).await {
                        self.checkpoint_off_loop(true).await?;
                    }
                }
                res = crate::precopy::image_done(&mut self.source) => self.precopy_image_done(res).await,
                _ = crate::timers::until(self.timers.next_due()) => self.fire_due_timers().await,
                (idx, item) = next_message(&mut self.conns, &mut self.next_poll) => {
                    self.consume(idx, item, &mut awaiting).await?;
                    // Messages already in memory are taken without another
                    // round of the select (its timers and futures cost more
                    // than a small message), a bounded batch at a time.
                    for _ in 1..BATCH {
                        let Some((idx, item)) = next_message(&mut self.conns, &mut self.next_poll).now_or_never() else {
                            break;
                        };
                        self.consume(idx, item, &mut awaiting).await?;
                    }
                    if !serving_told && awaiting == Awaiting::Nothing {
                        serving_told = true;
                        self.tell(&FromWorker::Serving).await;
                    }
                }
                Some(done) = self.effects.next(), if !self.effects.is_empty() => self.deliver_done(done).await,
                _ = reconnect.tick(), if !self.lost.is_empty() => self.reopen_lost().await,
                _ = std::future::ready(()), if !self.opened.pending.is_empty() => self.open_pending().await,
                _ = std::future::ready(()), if !self.opened.notices.is_empty() => {
                    for out in self.tell_app_closed() {
                        self.write_outbox(out).await;
                    }
                }
                _ = age_check.tick(), if self.settings.max_conn_age.is_some() => self.rotate_aged().await,
                _ = sigterm.recv() => if self.on_stop_signal("SIGTERM") { return self.stop().await },
                _ = sigint.recv() => if self.on_stop_signal("SIGINT") { return self.stop().await },
            }
        }
    }

    /// One item from connection `idx`: a message for the app, or the end of
    /// the connection.
    async fn consume(
        &mut self,
        idx: usize,
        item: Option<Result<Message, tungstenite::Error>>,
        awaiting: &mut Awaiting,
    ) -> Result<(), WorkerError> {
        let at_ns = monotonic_ns();
        match item {
            Some(Ok(msg)) => {
                // Told before the message is processed: from here on the
                // supervisor no longer holds the predecessor's leftovers for
                // a recovery, so a crash can lose this message but never
                // have it processed twice.
                if *awaiting == Awaiting::FirstMessage {
                    *awaiting = Awaiting::Nothing;
                    self.tell(&FromWorker::FirstConsumed { at_ns }).await;
                }
                if let Some(j) = self.source.as_mut().and_then(|s| s.journal()) {
                    j.message(&self.conns[idx].info, &msg);
                }
                let mut out = Outbox::default();
                self.app.on_message(&self.conns[idx].info, msg, &mut out);
                self.write_outbox(out).await;
                Ok(())
            }
            Some(Err(e)) => self.drop_conn(idx, format!("read failed: {e}")).await,
            None => self.drop_conn(idx, "closed by the peer".into()).await,
        }
    }

    /// An effect's result, to the app (journaled first in a pre-copy).
    pub(crate) async fn deliver_done(&mut self, done: A::Done) {
        if let Some(s) = self.source.as_mut().filter(|s| s.wants_done()) {
            s.done(self.app.encode_done(&done));
        }
        let mut out = Outbox::default();
        self.app.on_done(done, &mut out);
        self.write_outbox(out).await;
    }

    /// Under a supervisor, stop signals are the supervisor's to act on (it
    /// tells this worker to stop); alone, they stop the worker.
    fn on_stop_signal(&self, name: &str) -> bool {
        if self.link.is_some() {
            info!(
                signal = name,
                "ignored: the supervisor decides when this worker stops"
            );
            false
        } else {
            info!(signal = name, "stopping");
            true
        }
    }

    /// Write what the app queued, in order. A connection whose write fails is
    /// dropped (and unregistered); the others carry on.
    pub(crate) async fn write_outbox(&mut self, out: Outbox<A::Done>) {
        match self.gate {
            EffectGate::Open => self.effects.extend(out.effects),
            EffectGate::Held => self.deferred.extend(out.effects),
        }
        self.timers.apply(out.timers);
        self.apply_conn_ops(out.conns).await;
        for (target, msg) in out.queued {
            let found = match &target {
                Target::Id(id) => self.conns.iter().position(|c| c.info.id == *id),
                Target::Name(name) => self.conns.iter().position(|c| c.info.name == *name),
            };
            let Some(idx) = found else {
                warn!(conn = ?target, "app wrote to an unknown connection; dropped");
                continue;
            };
            if let Err(e) = self.conns[idx].ws.send(msg).await {
                let _ = self.drop_conn(idx, format!("write failed: {e}")).await;
            }
        }
    }

    async fn drop_conn(&mut self, idx: usize, reason: String) -> Result<(), WorkerError> {
        let conn = self.conns.remove(idx);
        warn!(conn = %conn.info.id, name = %conn.info.name, %reason, "connection lost; it will be re-opened");
        self.lost.push(crate::conn::Feed {
            name: conn.info.name.clone(),
            url: conn.info.url.clone(),
        });
        self.opened.since.remove(&conn.info.name);
        self.tell(&FromWorker::Unregister {
            id: conn.info.id,
            reason: reason.clone(),
        })
        .await;
        self.opened
            .notices
            .push((conn.info, crate::opened::Closed::Lost(reason)));
        Ok(())
    }

    /// What the library carries beside the app's snapshot (see
    /// [`crate::carried`]).
    pub(crate) fn carried(&self) -> handoff_protocol::worker::Carried {
        crate::carried::CarriedState::of(&self.timers, &self.configured, &self.opened).encode()
    }

    /// Send `msg` to the supervisor, if there is one. A failed send means it
    /// is gone: this worker serves on as an orphan (see [`crate::orphan`]).
    pub(crate) async fn tell(&mut self, msg: &FromWorker) {
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.send(msg).await {
                self.orphaned(&format!("cannot reach the supervisor ({e})"));
            }
        }
    }

    /// Tell the supervisor why this worker cannot go on, then hand `e` back
    /// (the caller returns it and the process exits).
    pub(crate) async fn failed(&mut self, e: WorkerError) -> WorkerError {
        self.tell(&FromWorker::Failed {
            reason: e.to_string(),
        })
        .await;
        e
    }

    /// Try to re-open every lost feed; those that fail wait for the next
    /// tick of `reconnect_interval`.
    async fn reopen_lost(&mut self) {
        for feed in std::mem::take(&mut self.lost) {
            if let Err(e) = self.open_feeds(std::slice::from_ref(&feed)).await {
                self.open_failed(feed, e);
            }
        }
    }

    /// Graceful stop: a final checkpoint, close handshakes, exit.
    async fn stop(&mut self) -> Result<Ended, WorkerError> {
        self.images.abandon();
        let _ = self.send_checkpoint().await;
        for conn in &mut self.conns {
            if !conn.close_handshake(self.settings.close_timeout).await {
                warn!(conn = %conn.info.id, "close handshake timed out");
            }
        }
        Ok(Ended::Stopped)
    }
}

/// The next message from any connection, fairly. Cancel-safe: all state lives
/// in the streams. Pending forever when there are no connections.
async fn next_message(
    conns: &mut [Conn],
    next: &mut usize,
) -> (usize, Option<Result<Message, tungstenite::Error>>) {
    poll_fn(|cx| {
        let n = conns.len();
        for i in 0..n {
            let idx = (*next + i) % n;
            if let Poll::Ready(item) = conns[idx].ws.poll_next_unpin(cx) {
                *next = idx + 1;
                return Poll::Ready((idx, item));
            }
        }
        Poll::Pending
    })
    .await
}

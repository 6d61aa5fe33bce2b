//! The freeze, step 4 of a handoff: stop consuming between two messages,
//! hold new effects and settle those in flight, flush every connection,
//! take the state (the whole snapshot, or after a pre-copy only the
//! catch-up and the digest), hand the TLS sessions over with `Frozen`, then
//! wait for `Thaw` (carry on exactly where it stopped), `Exit` (a successor
//! serves: let go of `serving.lock`) or `Stop`. Nothing is read or written
//! on the connections in between.

use futures_util::StreamExt;
use handoff_protocol::worker::{ConnLeftovers, FromWorker, Frozen, ToWorker};
use handoff_protocol::{monotonic_ns, Snapshot};
use tokio::time::{interval, timeout, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::error::WorkerError;
use crate::serve::{EffectGate, Worker};
use crate::start::Ended;
use crate::tls::Writer;

/// How a freeze ended.
pub(crate) enum AfterFreeze {
    /// Abandoned upgrade (or failed freeze): carry on exactly where we were.
    Thawed,
    /// A successor is live: leave without touching the connections.
    Exit,
    /// Stop for good.
    Stop,
}

impl<A: App> Worker<A> {
    /// `Exit`: a successor serves from now on. Let go of `serving.lock` at
    /// once (the successor waits for it) and leave the connections as they
    /// are.
    pub(crate) fn handed_over(&mut self) -> Ended {
        if let Some(lock) = self.serving.take() {
            lock.hand_over();
        }
        // What is left is the process's teardown (its state freed, its
        // runtime dropped): it must not take a core from the successor or
        // the supervisor, which are about to write `Go` and take the first
        // message. The `Exit` that woke this worker placed it on the
        // supervisor's core.
        handoff_protocol::image::idle_priority();
        Ended::HandedOver
    }

    /// Step 4 of a handoff: stop consuming (we are between two messages),
    /// flush every connection, snapshot, and hand over the leftovers. Then
    /// wait to be thawed or told to exit; nothing is read or written on the
    /// connections in between.
    pub(crate) async fn freeze(
        &mut self,
        schema: u32,
        catch_up: bool,
    ) -> Result<AfterFreeze, WorkerError> {
        crate::fault::hit(crate::fault::FaultPoint::Freeze).await;
        // The frozen state supersedes a checkpoint still being written.
        self.images.abandon();
        self.gate = EffectGate::Held;
        let after = self.freeze_inner(schema, catch_up).await;
        // Whatever came of it, the pre-copy (if any) is over.
        self.precopy_end();
        match after {
            Ok(AfterFreeze::Thawed) => {
                self.gate = EffectGate::Open;
                self.effects.extend(self.deferred.drain(..));
            }
            _ if !self.deferred.is_empty() => {
                info!(
                    n = self.deferred.len(),
                    "effects never started; the state records them for the successor"
                );
                self.deferred.clear();
            }
            _ => {}
        }
        after
    }

    /// Settle the app's in-flight effects: each one's result is applied to
    /// the state before the snapshot, so none is half-known.
    async fn settle(&mut self) -> Result<(), String> {
        let limit = self.settings.freeze_settle_timeout;
        let settled = timeout(limit, async {
            while let Some(done) = self.effects.next().await {
                self.deliver_done(done).await;
            }
        })
        .await;
        settled.map_err(|_| {
            format!(
                "{} requests still in flight after {limit:?}",
                self.effects.len()
            )
        })
    }

    async fn freeze_inner(
        &mut self,
        schema: u32,
        catch_up: bool,
    ) -> Result<AfterFreeze, WorkerError> {
        let frozen_at_ns = monotonic_ns();
        let limit = self.settings.freeze_flush_timeout;
        let mut failure = self.settle().await.err();
        for conn in &mut self.conns {
            if failure.is_some() {
                break;
            }
            match timeout(limit, conn.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(format!("{}: flush failed: {e}", conn.info.id)),
                Err(_) => {
                    failure = Some(format!(
                        "{}: pending writes not flushed within {limit:?}",
                        conn.info.id
                    ))
                }
            }
        }
        // Nothing is taken of the state once the freeze has failed.
        let state = match (failure, catch_up) {
            (Some(reason), _) => Err(WorkerError::Snapshot(crate::app::AppError(reason))),
            (None, true) => self
                .final_catch_up()
                .map(|(s, d)| (s, Some(d)))
                .map_err(|e| WorkerError::Snapshot(crate::app::AppError::new(e))),
            (None, false) => self.seal(schema).map(|s| (s, None)),
        };
        let (snapshot, digest) = match state {
            Ok(s) => s,
            Err(WorkerError::Snapshot(crate::app::AppError(reason))) => {
                warn!(%reason, "cannot freeze; carrying on");
                self.tell(&FromWorker::FreezeFailed { reason }).await;
                return Ok(AfterFreeze::Thawed);
            }
            Err(e) => return Err(e),
        };
        let mut conns = Vec::with_capacity(self.conns.len());
        for c in &self.conns {
            match c.tls_session() {
                Ok(tls) => conns.push(ConnLeftovers {
                    id: c.info.id,
                    leftovers: c.leftovers(),
                    tls,
                }),
                Err(e) => {
                    let reason = format!("{}: {e}", c.info.id);
                    warn!(%reason, "cannot freeze; carrying on");
                    self.tell(&FromWorker::FreezeFailed { reason }).await;
                    return Ok(AfterFreeze::Thawed);
                }
            }
        }
        let summary = self.app.summary();
        if self.link.is_none() {
            return Ok(AfterFreeze::Thawed);
        }
        // The TLS sessions leave with the Frozen message: from here on only
        // the successor may seal records, until a Thaw gives the right back.
        for c in &mut self.conns {
            c.set_tls_writer(Writer::HandedOver);
        }
        let after = self
            .frozen(snapshot, digest, conns, frozen_at_ns, summary)
            .await;
        if matches!(after, Ok(AfterFreeze::Thawed)) {
            for c in &mut self.conns {
                c.set_tls_writer(Writer::Live);
            }
        }
        after
    }

    /// Hand the frozen state over and wait to be thawed or let go.
    async fn frozen(
        &mut self,
        snapshot: Snapshot,
        digest: Option<u64>,
        conns: Vec<ConnLeftovers>,
        frozen_at_ns: u64,
        summary: Option<String>,
    ) -> Result<AfterFreeze, WorkerError> {
        self.tell(&FromWorker::Carried(self.carried())).await;
        self.tell(&FromWorker::Frozen(Frozen {
            snapshot,
            conns,
            frozen_at_ns,
            summary,
            digest,
        }))
        .await;
        info!("frozen");
        let mut heartbeat = interval(self.settings.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let Some(link) = self.link.as_mut() else {
                // Without a supervisor no successor can go live (it waits
                // for Go from the supervisor), so serving on is the only way
                // nothing is lost.
                warn!("supervisor went away while frozen; thawing");
                return Ok(AfterFreeze::Thawed);
            };
            tokio::select! {
                cmd = link.recv() => match cmd {
                    Ok(Some((ToWorker::Thaw, _))) => return Ok(AfterFreeze::Thawed),
                    Ok(Some((ToWorker::Exit, _))) => return Ok(AfterFreeze::Exit),
                    Ok(Some((ToWorker::Stop, _))) => return Ok(AfterFreeze::Stop),
                    Ok(Some((other, _))) => debug!(?other, "ignored while frozen"),
                    Ok(None) => self.orphaned("supervisor went away while frozen"),
                    Err(e) => self.orphaned(&format!("supervisor channel broken while frozen ({e})")),
                },
                _ = heartbeat.tick() => self.tell(&FromWorker::Heartbeat).await,
            }
        }
    }
}
